//! Synapse admin API §"Purge History API":
//! `POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]` starts a purge
//! of the room's history before a point and answers `{"purge_id": …}` at
//! once; `GET /_synapse/admin/v1/purge_history_status/{purgeId}` answers
//! `{"status": "active" | "complete" | "failed"}` (with `error` when failed).
//!
//! The point is `eventId` in the path, else `purge_up_to_event_id`, else
//! `purge_up_to_ts` (ms) in the body; `delete_local_events` (default false)
//! also deletes this server's users' events. What is deleted is the engine's
//! rule (`myelin_engine::rooms::purge`): events below the point's depth, never
//! state, never the newest event. One purge per room at a time (400, as
//! Synapse). Statuses are kept in memory, the newest [`KEPT_PURGES`]; a
//! restart forgets them, and a purge cut off by one finishes when started again.

use std::{collections::VecDeque, sync::Arc};

use myelin_engine::rooms::purge::{PurgeRefused, PurgeUpTo};
use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{audit, bad_request, require_admin};
use crate::{
    error::ApiError,
    http_util::{ok_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// How many purge statuses are kept.
pub const KEPT_PURGES: usize = 1000;

/// The body of `POST purge_history`.
#[derive(Deserialize, Default)]
struct PurgeBody {
    #[serde(default)]
    delete_local_events: bool,
    purge_up_to_event_id: Option<String>,
    purge_up_to_ts: Option<u64>,
}

/// Where a purge is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Active,
    Complete,
    Failed(String),
}

/// The answer of `POST v1/purge_history/…`: the purge started.
#[derive(Serialize)]
struct PurgeStarted<'a> {
    purge_id: &'a str,
}

/// The answer of `GET v1/purge_history_status/{purge_id}`.
#[derive(Serialize)]
struct PurgeStatus<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Clone)]
struct Purge {
    id: String,
    room: OwnedRoomId,
    status: Status,
}

/// The recent purges and their statuses.
#[derive(Default)]
pub struct Purges {
    recent: parking_lot::Mutex<VecDeque<Purge>>,
}

impl Purges {
    /// Records a new active purge of `room`, unless one is active there already.
    fn start(&self, id: &str, room: &RoomId) -> Result<(), ApiError> {
        let mut recent = self.recent.lock();
        if recent.iter().any(|p| p.room == room && p.status == Status::Active) {
            return Err(bad_request(format!("History purge already in progress for {room}")));
        }
        if recent.len() >= KEPT_PURGES
            && let Some(i) = recent.iter().position(|p| p.status != Status::Active)
        {
            recent.remove(i);
        }
        recent.push_back(Purge { id: id.to_owned(), room: room.to_owned(), status: Status::Active });
        Ok(())
    }

    fn finish(&self, id: &str, status: Status) {
        if let Some(p) = self.recent.lock().iter_mut().find(|p| p.id == id) {
            p.status = status;
        }
    }
}

fn refused(e: PurgeRefused, event: Option<&OwnedEventId>) -> ApiError {
    match e {
        PurgeRefused::NoSuchEvent => {
            ApiError::not_found(format!("Could not find event {}", event.map_or("", |e| e.as_str())))
        }
        PurgeRefused::WrongRoom => bad_request("Event is for wrong room."),
        PurgeRefused::NothingBefore => {
            ApiError::new(http::StatusCode::BAD_REQUEST, "M_NOT_FOUND", "there is no event to be purged")
        }
        PurgeRefused::Room(e) => e.into(),
    }
}

/// POST /_synapse/admin/v1/purge_history/{roomId} and …/{roomId}/{eventId}
pub fn purge_history(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let raw_room = req.param("room_id")?;
        let room =
            RoomId::parse(raw_room).map_err(|_| ApiError::invalid_param(format!("Invalid room id: {raw_room}")))?;
        let body: PurgeBody = parse_json_or_empty(&req.body)?;
        let event = match req.param("event_id").ok().map(str::to_owned).or(body.purge_up_to_event_id) {
            Some(raw) => Some(
                OwnedEventId::try_from(raw.as_str())
                    .map_err(|_| ApiError::invalid_param(format!("Invalid event id: {raw}")))?,
            ),
            None => None,
        };
        let upto = match (&event, body.purge_up_to_ts) {
            (Some(id), _) => PurgeUpTo::Event(id.clone()),
            (None, Some(ts)) => PurgeUpTo::Ts(ts),
            (None, None) => return Err(ApiError::bad_json("must specify purge_up_to_event_id or purge_up_to_ts")),
        };
        // An unknown room is the engine's UnknownRoom: 404 M_NOT_FOUND.
        let depth = cx.engine.rooms.purge_depth(&room, &upto).map_err(|e| refused(e, event.as_ref()))?;
        let id = super::rooms::random_id()?;
        cx.deletions.purges.start(&id, &room)?;
        audit(&me, "purge_history", room.as_str());
        let (engine, purges, task_id) = (cx.engine.clone(), Arc::clone(&cx.deletions.purges), id.clone());
        let delete_local = body.delete_local_events;
        let span = tracing::info_span!("purge_history", room = %room, purge_id = %id);
        tokio::spawn(
            async move {
                let outcome = engine.rooms.purge_history(&room, depth, delete_local).await;
                let status = match outcome {
                    Ok(_) => Status::Complete,
                    Err(e) => {
                        tracing::warn!(error = %e, "history purge failed");
                        Status::Failed(e.to_string())
                    }
                };
                purges.finish(&task_id, status);
            }
            .instrument(span),
        );
        Ok(ok_json(&PurgeStarted { purge_id: &id }))
    })
}

/// GET /_synapse/admin/v1/purge_history_status/{purgeId}
pub fn purge_status(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let id = req.param("purge_id")?;
        let recent = cx.deletions.purges.recent.lock();
        let found = recent
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| ApiError::not_found(format!("purge id '{id}' not found")))?;
        Ok(ok_json(&match &found.status {
            Status::Active => PurgeStatus { status: "active", error: None },
            Status::Complete => PurgeStatus { status: "complete", error: None },
            Status::Failed(e) => PurgeStatus { status: "failed", error: Some(e.as_str()) },
        }))
    })
}
