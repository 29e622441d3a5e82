//! Room history behind the oldest event held here (Server-Server API
//! §"Backfilling and retrieving missing events"): where backfilling goes on,
//! how far back a gap fill asks, storing what `/backfill` returned below
//! the timeline, and answering another server's `/backfill`.

use myelin_storage::{Batch, Raw};
use ruma::RoomId;

use crate::rooms::{ArcPdu, Pdu, RoomError, Rooms, tables::*};

impl Rooms {
    /// The depth of the room's oldest timeline event: how far back a gap fill
    /// asks for missing events (`get_missing_events`' `min_depth`, as Synapse
    /// sends it). Older history is backfill's, not the gap's. 0 when unknown.
    pub fn min_timeline_depth(&self, room_id: &RoomId) -> Result<u64, RoomError> {
        let Some(short_room) = self.short_room(room_id)? else { return Ok(0) };
        let Some(row) = TIMELINE.prefix(&*self.db, &(short_room,), myelin_storage::Direction::Forward)?.next() else {
            return Ok(0);
        };
        let (_, oldest) = row?;
        Ok(self.pdu_by_short(oldest)?.map_or(0, |p| p.depth))
    }

    /// Where backfilling continues: the prev events of the room's oldest
    /// timeline event that are not in the timeline, and the events that
    /// bridged a gap on a remote's state (the history behind them was never
    /// fetched: Synapse's "backward extremities" in the middle of the room).
    /// Empty when history is complete.
    pub fn backfill_point(&self, room_id: &RoomId) -> Result<Vec<ruma::OwnedEventId>, RoomError> {
        let Some(short_room) = self.short_room(room_id)? else { return Ok(Vec::new()) };
        let mut missing = Vec::new();
        for row in HOLES.prefix(&*self.db, &(short_room,), myelin_storage::Direction::Forward)?.take(20) {
            let ((_, hole), ()) = row?;
            if let Some(id) = self.event_ids.lookup(&*self.db, hole)? {
                missing
                    .push(ruma::OwnedEventId::try_from(id.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))?);
            }
        }
        let Some(row) = TIMELINE.prefix(&*self.db, &(short_room,), myelin_storage::Direction::Forward)?.next() else {
            return Ok(missing);
        };
        let (_, oldest) = row?;
        let Some(pdu) = self.pdu_by_short(oldest)? else { return Ok(missing) };
        for prev in &pdu.prev_events {
            let stored = match self.event_ids.get(&*self.db, prev.as_str())? {
                Some(s) => META.get(&*self.db, &s)?.is_some_and(|m| m.count != 0),
                None => false,
            };
            if !stored && !missing.contains(prev) {
                missing.push(prev.clone());
            }
        }
        Ok(missing)
    }

    /// Stores history fetched with `/backfill` before the room's oldest event:
    /// counts at or below zero (newest first down), never extremities, never
    /// queued to other servers. Returns how many were new.
    pub async fn store_backfilled(&self, room_id: &RoomId, mut pdus: Vec<Pdu>) -> Result<usize, RoomError> {
        let lock = self.lock_of(room_id);
        let _guard = lock.lock().await;
        let room = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let lowest = match TIMELINE.prefix(&*self.db, &(room,), myelin_storage::Direction::Forward)?.next() {
            Some(row) => row?.0.1,
            None => 1,
        };
        let mut next = lowest.min(1) - 1;
        pdus.sort_by_key(|p| std::cmp::Reverse(p.depth));
        let mut batch = Batch::new();
        let mut stored = 0;
        for pdu in pdus {
            if pdu.room_id != room_id {
                continue;
            }
            let short = self.event_ids.get_or_create(&self.db, &mut batch, pdu.event_id.as_str())?;
            let held = META.get(&*self.db, &short)?;
            if held.as_ref().is_some_and(|m| m.count != 0) {
                continue;
            }
            // Held outside the timeline (a gap's edge, a join's state): it
            // enters the timeline keeping the states and verdict it has.
            let (flags, state_before, state_after) =
                held.as_ref().map_or((0, 0, 0), |m| (m.flags & !OUTLIER, m.state_before, m.state_after));
            PDUS.put(&mut batch, &short, &Raw(pdu.to_bytes()))?;
            META.put(
                &mut batch,
                &short,
                &EventMeta { room, depth: pdu.depth, count: next, flags, state_before, state_after },
            )?;
            if held.is_some() {
                // Only a held outlier can be a hole: no tombstone for the rest.
                HOLES.delete(&mut batch, &(room, short));
            }
            TIMELINE.put(&mut batch, &(room, next), &short)?;
            for prev in &pdu.prev_events {
                if let Some(p) = self.event_ids.get(&*self.db, prev.as_str())? {
                    EDGES.put(&mut batch, &(p, short), &())?;
                }
            }
            self.index_relations(&mut batch, &pdu, short, next, room)?;
            self.index_search(&mut batch, &pdu, short, next, room)?;
            next -= 1;
            stored += 1;
        }
        self.db.commit(batch).await?;
        Ok(stored)
    }

    /// Events from `from` backwards through prev events, at most `limit`, newest first (`/backfill`).
    pub fn backfill_from(&self, from: &[ruma::OwnedEventId], limit: usize) -> Result<Vec<ArcPdu>, RoomError> {
        let mut seen = std::collections::HashSet::new();
        let mut queue: std::collections::BinaryHeap<(u64, ruma::OwnedEventId)> = std::collections::BinaryHeap::new();
        for id in from {
            if let Some(p) = self.pdu(id)? {
                queue.push((p.depth, id.clone()));
            }
        }
        let mut out = Vec::new();
        while let Some((_, id)) = queue.pop() {
            if out.len() >= limit || !seen.insert(id.clone()) {
                continue;
            }
            let Some(p) = self.pdu(&id)? else { continue };
            for prev in &p.prev_events {
                if let Some(pp) = self.pdu(prev)? {
                    queue.push((pp.depth, prev.clone()));
                }
            }
            out.push(p);
        }
        Ok(out)
    }
}
