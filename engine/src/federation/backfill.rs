//! Backfill as a client (Server-Server API §"Backfilling and retrieving
//! missing events"): when `/messages` pages past the oldest event held
//! here, a server in the room is asked for the history before it
//! (`GET /backfill/{roomId}?v=…&limit=…`); what comes back is checked and
//! stored as history, not as new timeline.

use ruma::RoomId;
use serde::Deserialize;
use serde_json::Value as JsonValue;

use super::{FederationError, enc, pdu_check::checked_pdu};
use crate::Engine;

/// A `/backfill` answer.
#[derive(Debug, Deserialize)]
struct BackfillAnswer {
    #[serde(default)]
    pdus: Vec<JsonValue>,
}

/// Fetches up to `limit` events of history before the room's oldest local
/// event from a server in the room; returns how many were stored.
pub async fn backfill_room(engine: &Engine, room: &RoomId, limit: usize) -> Result<usize, FederationError> {
    let from = engine.rooms.backfill_point(room)?;
    if from.is_empty() {
        return Ok(0);
    }
    let version = engine.rooms.room_version(room)?;
    let ours = engine.server_name.as_str();
    let servers: Vec<String> = engine.rooms.joined_servers_now(room)?.into_iter().filter(|s| s != ours).collect();
    let vs: String = from.iter().map(|v| format!("v={}", enc(v.as_str()))).collect::<Vec<_>>().join("&");
    let path = format!("/_matrix/federation/v1/backfill/{}?{vs}&limit={limit}", enc(room.as_str()));
    for server in servers {
        let resp = match engine.remote(&server).get(&path).await {
            Ok(r) if r.status.is_success() => r,
            Ok(r) => {
                tracing::debug!(%server, status = %r.status, "backfill refused");
                continue;
            }
            Err(e) => {
                tracing::debug!(%server, error = %e, "backfill failed");
                continue;
            }
        };
        let Ok(answer) = resp.parse::<BackfillAnswer>(&server) else { continue };
        let mut pdus = Vec::new();
        for json in &answer.pdus {
            match checked_pdu(engine, json, &version).await {
                Ok(p) => pdus.push(p),
                Err(e) => tracing::info!(error = %e, "dropping a backfilled event that fails its checks"),
            }
        }
        return Ok(engine.rooms.store_backfilled(room, pdus).await?);
    }
    Ok(0)
}
