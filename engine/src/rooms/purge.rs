//! Purging a room's old history (Synapse admin API §"Purge History API",
//! `POST /_synapse/admin/v1/purge_history/{roomId}`), to reclaim disk.
//!
//! What goes is Synapse's rule: every event of the room whose depth is below
//! the purge point's (the point itself and the events at its depth stay),
//! except state events (the room's state is always preserved) and, unless
//! `delete_local_events`, events sent by this server's users (they may be the
//! only copy). The room's newest event and its forward extremities never go,
//! so the room can always be appended to.
//!
//! The DAG is append-only everywhere else, so a purge removes bodies, not
//! edges: a purged event loses its PDU, its timeline row and every index row
//! naming it (search words, its relation under its target, the relations and
//! the redaction listed under it, the thread it roots, its transaction id);
//! its metadata stays, flagged [`PURGED`], with its depth and the state
//! snapshots after it, so state resolution over old prev events, the
//! "already have it" checks on receipt and `/backfill`'s walk keep working.
//! Such an event is unknown to clients and other servers from then on (404),
//! and is not fetched again: a `/backfill` answer holding it is ignored, since
//! its metadata says it is here.
//!
//! A state event before the point leaves the timeline but keeps its body
//! (Synapse makes it an outlier). A redaction whose target stays keeps its
//! body too (out of the timeline): without it the target would be served
//! unredacted. Differs from Synapse: a local event kept because
//! `delete_local_events` is false stays in the timeline (Synapse hides it),
//! so a later purge with `delete_local_events` can still find and delete it.
//!
//! The purge runs in chunks of [`PURGE_CHUNK`] timeline rows, each one batch
//! under the room's lock: a cut-off purge leaves a purged prefix, and
//! running it again finishes it.

use std::collections::HashSet;

use myelin_storage::{Batch, Direction};
use ruma::{EventId, RoomId};

use super::{ArcPdu, RoomError, Rooms, tables::*};

/// Timeline rows read and decided per batch.
pub const PURGE_CHUNK: usize = 512;

/// Where a history purge stops.
#[derive(Debug, Clone)]
pub enum PurgeUpTo {
    /// Events below this event's depth go.
    Event(ruma::OwnedEventId),
    /// Events below the depth of the room's last event sent before this time (ms) go.
    Ts(u64),
}

/// What a purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    /// Events whose bodies were deleted.
    pub deleted: usize,
    /// State events (and redactions of kept events) that left the timeline but were kept.
    pub hidden: usize,
    /// Local events that stayed because `delete_local_events` was false.
    pub kept_local: usize,
}

/// Why a purge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PurgeRefused {
    /// The purge point names no event held here.
    #[error("event not found")]
    NoSuchEvent,
    /// The purge point is an event of another room.
    #[error("event is for wrong room")]
    WrongRoom,
    /// No event of the room was sent before the time given.
    #[error("there is no event to be purged")]
    NothingBefore,
    /// Storage or the room failed.
    #[error(transparent)]
    Room(#[from] RoomError),
}

impl Rooms {
    /// The depth below which a purge of `room_id` up to `upto` deletes; checked
    /// before the purge is started so a bad point gets a clear answer at once.
    pub fn purge_depth(&self, room_id: &RoomId, upto: &PurgeUpTo) -> Result<u64, PurgeRefused> {
        let room = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        match upto {
            PurgeUpTo::Event(id) => {
                let pdu = self.pdu(id)?.ok_or(PurgeRefused::NoSuchEvent)?;
                if pdu.room_id != room_id {
                    return Err(PurgeRefused::WrongRoom);
                }
                Ok(pdu.depth)
            }
            PurgeUpTo::Ts(ts) => {
                // Synapse: the room's last event (in stream order) before the first
                // event sent at or after `ts`.
                let mut last = None;
                for row in TIMELINE.prefix(&*self.db, &(room,), Direction::Forward).map_err(RoomError::from)? {
                    let (_, short) = row.map_err(RoomError::from)?;
                    let Some(pdu) = self.pdu_by_short(short)? else { continue };
                    if u64::from(pdu.origin_server_ts.get()) >= *ts {
                        break;
                    }
                    last = Some(pdu.depth);
                }
                last.ok_or(PurgeRefused::NothingBefore)
            }
        }
    }

    /// Purges the history of `room_id` below `depth` (see the module doc).
    pub async fn purge_history(&self, room_id: &RoomId, depth: u64, delete_local: bool) -> Result<Purged, RoomError> {
        let room = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let mut done = Purged::default();
        let mut after = i64::MIN;
        loop {
            let lock = self.lock_of(room_id);
            let _guard = lock.lock().await;
            // Read under the lock: the newest event and the extremities cannot move meanwhile.
            let newest = self.newest_position(room_id)?;
            let extremities: HashSet<u64> = EXTREMITIES
                .prefix(&*self.db, &(room,), Direction::Forward)?
                .map(|row| row.map(|((_, e), ())| e))
                .collect::<Result<_, _>>()?;
            let rows: Vec<(i64, u64)> = TIMELINE
                .range(
                    &*self.db,
                    (std::ops::Bound::Excluded((room, after)), std::ops::Bound::Excluded((room, newest))),
                    Direction::Forward,
                )?
                .take(PURGE_CHUNK)
                .map(|row| row.map(|((_, count), short)| (count, short)))
                .collect::<Result<_, _>>()?;
            let Some(&(last, _)) = rows.last() else { break };
            after = last;
            // Whether a timeline event's body goes in this purge (for a redaction:
            // before asking whether its target stays).
            let goes = |short: u64, meta: &EventMeta, pdu: &ArcPdu| {
                meta.room == room
                    && meta.depth < depth
                    && meta.count < newest
                    && !extremities.contains(&short)
                    && pdu.state_key.is_none()
                    && (delete_local || pdu.sender.server_name() != &*self.server_name)
            };
            let mut batch = Batch::new();
            let mut evicted = Vec::new();
            for (count, short) in rows {
                let Some(meta) = self.meta_of_short(short)? else { continue };
                if meta.depth >= depth || extremities.contains(&short) {
                    continue;
                }
                let Some(pdu) = self.pdu_by_short(short)? else {
                    // A row without a body (never left by a purge, which deletes both
                    // in one batch): nothing to show, so the row goes.
                    TIMELINE.delete(&mut batch, &(room, count));
                    continue;
                };
                if pdu.state_key.is_some() {
                    TIMELINE.delete(&mut batch, &(room, count));
                    done.hidden += 1;
                    continue;
                }
                if !goes(short, &meta, &pdu) {
                    done.kept_local += 1;
                    continue;
                }
                if let Some(target) = &pdu.redacts
                    && self.redaction_target_stays(target, &goes)?
                {
                    TIMELINE.delete(&mut batch, &(room, count));
                    done.hidden += 1;
                    continue;
                }
                TIMELINE.delete(&mut batch, &(room, count));
                PDUS.delete(&mut batch, &short);
                EVENT_TXNS.delete(&mut batch, &short);
                META.put(&mut batch, &short, &EventMeta { flags: meta.flags | PURGED, ..meta })?;
                self.unindex_relations(&mut batch, &pdu, short, count, room)?;
                self.unindex_search(&mut batch, &pdu, count, room);
                evicted.push(short);
                done.deleted += 1;
            }
            self.db.commit(batch).await?;
            // After the write, so no read after this finds the body. A read racing the
            // write may still cache it again; it is in no timeline or index any more,
            // so only a lookup by id finds it until the cache ages it out.
            let mut cache = self.pdus.lock();
            for short in evicted {
                cache.pop(&short);
            }
        }
        tracing::info!(room = %room_id, depth, deleted = done.deleted, hidden = done.hidden, kept_local = done.kept_local, "history purged");
        Ok(done)
    }

    /// Whether the target of a redaction keeps its body through this purge
    /// (then the redaction must stay, or the target would be served unredacted).
    fn redaction_target_stays(
        &self,
        target: &EventId,
        goes: &impl Fn(u64, &EventMeta, &ArcPdu) -> bool,
    ) -> Result<bool, RoomError> {
        let Some(short) = self.short_event(target)? else { return Ok(false) };
        let Some(pdu) = self.pdu_by_short(short)? else { return Ok(false) };
        let Some(meta) = self.meta_of_short(short)? else { return Ok(false) };
        if meta.count == 0 || TIMELINE.get(&*self.db, &(meta.room, meta.count))? != Some(short) {
            return Ok(true); // out of the timeline: this purge does not reach it
        }
        Ok(!goes(short, &meta, &pdu))
    }
}
