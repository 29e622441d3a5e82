//! What Synapse had not yet delivered to other servers, queued again here
//! (`myelin import synapse`, issue #23 §2 "the federation state … so peers
//! resume without a re-join").
//!
//! Synapse keeps, per destination, `last_successful_stream_ordering` (the
//! newest event it got through) and, per destination and room, the newest
//! event it meant to send there (`destination_rooms`); its federation sender's
//! place in the event stream is `federation_stream_position` (`events`). A
//! room of ours whose destination is behind, or whose newest local event the
//! sender never reached, gets that newest local event queued for each server
//! with members in the room now: the way Synapse itself catches a destination
//! up (and Myelin's queue compaction, `engine::rooms::catch_up`), since the
//! destination fetches the prev events it lacks with `/get_missing_events`.
//! To-device messages still in Synapse's outbox (`device_federation_outbox`:
//! rows are deleted once delivered) are queued as they are. A destination
//! that already has an event ignores it, so queueing one twice is harmless
//! and a second run does no harm. Device-list updates Synapse had not sent
//! are not carried: the destination asks `/user/devices` at the next update
//! whose `prev_id` it does not know.

use std::collections::HashMap;

use myelin_engine::Engine;
use ruma::{EventId, RoomId};
use rusqlite::Connection;

use crate::{
    Failure,
    import_synapse::{engine_err, sql},
};

/// What was queued again.
#[derive(Debug, Default)]
pub(crate) struct OutboxReport {
    /// `(room, destination)` pairs given the room's newest local event.
    pub pdus: usize,
    /// To-device EDUs queued.
    pub to_device: usize,
}

fn table_exists(db: &Connection, table: &str) -> Result<bool, Failure> {
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))
        .map_err(sql)?;
    Ok(n > 0)
}

/// Queues for other servers what Synapse had not delivered to them.
pub(crate) async fn import(engine: &Engine, db: &Connection, server: &str) -> Result<OutboxReport, Failure> {
    let mut report = OutboxReport::default();
    // The sender's place in the event stream; unknown: assume it reached nothing.
    let sender_at: i64 = if table_exists(db, "federation_stream_position")? {
        db.query_row("SELECT MIN(stream_id) FROM federation_stream_position WHERE type = 'events'", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .map_err(sql)?
        .unwrap_or(0)
    } else {
        0
    };
    let mut delivered: HashMap<String, Option<i64>> = HashMap::new();
    let mut meant: HashMap<(String, String), i64> = HashMap::new();
    if table_exists(db, "destinations")? {
        let mut stmt =
            db.prepare("SELECT destination, last_successful_stream_ordering FROM destinations").map_err(sql)?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))).map_err(sql)? {
            let (dest, at) = row.map_err(sql)?;
            delivered.insert(dest, at);
        }
    }
    if table_exists(db, "destination_rooms")? {
        let mut stmt =
            db.prepare("SELECT destination, room_id, stream_ordering FROM destination_rooms").map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
            .map_err(sql)?;
        for row in rows {
            let (dest, room, at) = row.map_err(sql)?;
            meant.insert((dest, room), at);
        }
    }
    // Per room, our newest event in its timeline.
    let suffix = format!("%:{server}");
    let mut stmt = db
        .prepare(
            "SELECT e.room_id, e.event_id, e.stream_ordering FROM events e \
             JOIN (SELECT room_id, MAX(stream_ordering) AS newest FROM events \
                   WHERE sender LIKE ?1 AND NOT COALESCE(outlier, 0) AND stream_ordering > 0 GROUP BY room_id) n \
             ON n.room_id = e.room_id AND n.newest = e.stream_ordering",
        )
        .map_err(sql)?;
    let newest: Vec<(String, String, i64)> = stmt
        .query_map([&suffix], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    for (room, event, at) in newest {
        let (Ok(room_id), Ok(event_id)) = (RoomId::parse(room.as_str()), EventId::parse(event.as_str())) else {
            continue;
        };
        if engine.rooms.short_room(&room_id).map_err(engine_err)?.is_none() {
            continue; // a room left out of the import
        }
        let servers = engine.rooms.joined_servers_now(&room_id).map_err(engine_err)?;
        let behind: Vec<String> = servers
            .into_iter()
            .filter(|d| d != server)
            .filter(|d| {
                let never_reached = at > sender_at;
                let missed = match (meant.get(&(d.clone(), room.clone())), delivered.get(d)) {
                    (Some(m), Some(Some(ok))) => m > ok,
                    (Some(_), _) => true,
                    (None, _) => false,
                };
                never_reached || missed
            })
            .collect();
        if behind.is_empty() {
            continue;
        }
        if engine.rooms.queue_imported(&event_id, &behind).await.map_err(engine_err)? {
            report.pdus += behind.len();
        }
    }
    if table_exists(db, "device_federation_outbox")? {
        let mut stmt = db
            .prepare("SELECT destination, messages_json FROM device_federation_outbox ORDER BY stream_id")
            .map_err(sql)?;
        let rows: Vec<(String, String)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
        for (dest, content) in rows {
            let Ok(content) = serde_json::from_str::<serde_json::Value>(&content) else { continue };
            if !content.is_object() {
                continue;
            }
            let edu = serde_json::json!({ "edu_type": "m.direct_to_device", "content": content });
            engine.rooms.queue_edu(&[dest], &edu).await.map_err(engine_err)?;
            report.to_device += 1;
        }
    }
    Ok(report)
}
