//! Reading rooms: events by id, state at a snapshot or now, extremities and
//! the timeline. Reads go through the caches (parsed events, state layers)
//! and never take the room lock.

use myelin_storage::{Batch, Direction, Raw};
use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId};

use super::{ArcPdu, Pdu, RoomError, Rooms, StateRef, resolve, state, state_key_string, tables::*};
use std::sync::Arc;

impl Rooms {
    /// The version of a known room.
    pub fn room_version(&self, room_id: &RoomId) -> Result<RoomVersionId, RoomError> {
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let info = ROOMS.get(&*self.db, &short)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        RoomVersionId::try_from(info.version.as_str()).map_err(|e| RoomError::UnsupportedVersion(e.to_string()))
    }

    /// A stored event by short id (parsed once, then cached).
    pub fn pdu_by_short(&self, short: u64) -> Result<Option<ArcPdu>, RoomError> {
        if let Some(p) = self.pdus.lock().get(&short) {
            return Ok(Some(p.clone()));
        }
        if let Some((_, p)) = self.unsettled.lock().get(&short) {
            return Ok(Some(p.clone()));
        }
        let Some(meta) = META.get(&*self.db, &short)? else { return Ok(None) };
        let Some(Raw(bytes)) = PDUS.get(&*self.db, &short)? else { return Ok(None) };
        let Some(id) = self.event_ids.lookup(&*self.db, short)? else { return Ok(None) };
        let event_id = EventId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(format!("stored id: {e}")))?;
        let rules = self.rules_of_short_room(meta.room)?;
        let mut pdu = Pdu::from_bytes(event_id, &bytes, &rules)?;
        pdu.rejected = meta.flags & REJECTED != 0;
        let pdu = Arc::new(pdu);
        self.pdus.lock().put(short, pdu.clone());
        Ok(Some(pdu))
    }

    /// A stored event by id.
    pub fn pdu(&self, event_id: &EventId) -> Result<Option<ArcPdu>, RoomError> {
        match self.event_ids.get(&*self.db, event_id.as_str())? {
            Some(short) => self.pdu_by_short(short),
            None => Ok(None),
        }
    }

    /// Stored metadata of an event.
    pub fn meta(&self, event_id: &EventId) -> Result<Option<EventMeta>, RoomError> {
        match self.event_ids.get(&*self.db, event_id.as_str())? {
            Some(short) => self.meta_of_short(short),
            None => Ok(None),
        }
    }

    pub(super) fn short_state_key(&self, kind: &str, state_key: &str) -> Result<Option<u64>, RoomError> {
        Ok(self.state_keys.get(&*self.db, &state_key_string(kind, state_key))?)
    }

    /// The event for `(kind, state_key)` in snapshot `snapshot`.
    pub fn state_pdu_at(&self, snapshot: u64, kind: &str, state_key: &str) -> Result<Option<ArcPdu>, RoomError> {
        if snapshot == 0 {
            return Ok(None);
        }
        let Some(ssk) = self.short_state_key(kind, state_key)? else { return Ok(None) };
        match self.states.get(snapshot, ssk)? {
            Some(short) => self.pdu_by_short(short),
            None => Ok(None),
        }
    }

    /// Resolves stored snapshots as a fork merge would (the public face of
    /// [`resolve`](self::resolve)); returns the resolved sorted entries.
    pub fn resolve_snapshots(&self, room_id: &RoomId, snapshots: &[u64]) -> Result<state::FullState, RoomError> {
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let rules = self.rules_of_short_room(short)?;
        match self.resolve_states(&rules, snapshots, &resolve::Overlay::default())? {
            StateRef::Empty => Ok(Vec::new()),
            StateRef::Stored(id) => Ok((*self.states.load(id)?).clone()),
            StateRef::Full(full) => Ok((*full).clone()),
        }
    }

    /// The event for `(kind, state_key)` in a state that may not be stored yet.
    pub(super) fn state_pdu(&self, state: &StateRef, kind: &str, state_key: &str) -> Result<Option<ArcPdu>, RoomError> {
        match state {
            StateRef::Empty => Ok(None),
            StateRef::Stored(id) => self.state_pdu_at(*id, kind, state_key),
            StateRef::Full(full) => {
                let Some(ssk) = self.short_state_key(kind, state_key)? else { return Ok(None) };
                match full.binary_search_by_key(&ssk, |e| e.0) {
                    Ok(i) => self.pdu_by_short(full[i].1),
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// Stores a state inside `batch` if it is not stored yet; 0 for no state.
    pub(super) fn materialize(&self, batch: &mut Batch, state: &StateRef, hint: Option<u64>) -> Result<u64, RoomError> {
        match state {
            StateRef::Empty => Ok(0),
            StateRef::Stored(id) => Ok(*id),
            StateRef::Full(full) => self.states.store(batch, (**full).clone(), hint.filter(|h| *h != 0)),
        }
    }

    /// All events of snapshot `snapshot`.
    pub fn state_at(&self, snapshot: u64) -> Result<Vec<ArcPdu>, RoomError> {
        if snapshot == 0 {
            return Ok(Vec::new());
        }
        let full = self.states.load(snapshot)?;
        let mut out = Vec::with_capacity(full.len());
        for (_, short) in full.iter() {
            if let Some(p) = self.pdu_by_short(*short)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The current-state snapshot of a room.
    pub fn current_snapshot(&self, room_id: &RoomId) -> Result<u64, RoomError> {
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        Ok(ROOMS.get(&*self.db, &short)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?.state)
    }

    /// The current state event `(kind, state_key)` of a room.
    pub fn state_event(&self, room_id: &RoomId, kind: &str, state_key: &str) -> Result<Option<ArcPdu>, RoomError> {
        self.state_pdu_at(self.current_snapshot(room_id)?, kind, state_key)
    }

    /// The whole current state of a room.
    pub fn current_state(&self, room_id: &RoomId) -> Result<Vec<ArcPdu>, RoomError> {
        self.state_at(self.current_snapshot(room_id)?)
    }

    /// The room's current snapshot, and the events of its current state that are not in
    /// snapshot `from` (added or replaced since; all of them when `from` is 0).
    pub fn state_changed_since(&self, room_id: &RoomId, from: u64) -> Result<(u64, Vec<ArcPdu>), RoomError> {
        let current = self.current_snapshot(room_id)?;
        if from == current {
            return Ok((current, Vec::new()));
        }
        if from == 0 {
            return Ok((current, self.state_at(current)?));
        }
        let (old, new) = (self.states.load(from)?, self.states.load(current)?);
        let (added, _removed) = state::diff(&old, &new);
        let mut out = Vec::with_capacity(added.len());
        for (_, short) in added {
            if let Some(p) = self.pdu_by_short(short)? {
                out.push(p);
            }
        }
        Ok((current, out))
    }

    /// The state after the room's last timeline event at or before position `pos`
    /// (0: none yet). `/sync` compares it with the state at the start of a timeline.
    pub fn snapshot_at_position(&self, room_id: &RoomId, pos: i64) -> Result<u64, RoomError> {
        use std::ops::Bound::Included;
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let mut rows =
            TIMELINE.range(&*self.db, (Included((short, i64::MIN)), Included((short, pos))), Direction::Reverse)?;
        let Some(row) = rows.next() else { return Ok(0) };
        let (_, ev) = row?;
        Ok(self.meta_of_short(ev)?.map_or(0, |m| m.state_after))
    }

    /// The state before a stored event (0: none or unknown, as for outliers).
    pub fn snapshot_before(&self, event_id: &EventId) -> Result<u64, RoomError> {
        Ok(self.meta(event_id)?.map_or(0, |m| m.state_before))
    }

    /// The events of snapshot `to` that are not in snapshot `from` (added or replaced).
    pub fn state_added(&self, from: u64, to: u64) -> Result<Vec<ArcPdu>, RoomError> {
        if from == to {
            return Ok(Vec::new());
        }
        if from == 0 {
            return self.state_at(to);
        }
        let old = self.states.load(from)?;
        let new = if to == 0 { Arc::new(Vec::new()) } else { self.states.load(to)? };
        let (added, _removed) = state::diff(&old, &new);
        let mut out = Vec::with_capacity(added.len());
        for (_, short) in added {
            if let Some(p) = self.pdu_by_short(short)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The room's forward extremities.
    pub fn extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>, RoomError> {
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let mut out = Vec::new();
        for row in EXTREMITIES.prefix(&*self.db, &(short,), Direction::Forward)? {
            let ((_, ev), ()) = row?;
            if let Some(id) = self.event_ids.lookup(&*self.db, ev)? {
                out.push(EventId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` timeline events from position `from` (exclusive) in `dir`.
    pub fn timeline(
        &self,
        room_id: &RoomId,
        from: Option<i64>,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(i64, ArcPdu)>, RoomError> {
        use std::ops::Bound::{Excluded, Included};
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let iter = match (dir, from) {
            (_, None) => TIMELINE.prefix(&*self.db, &(short,), dir)?,
            (Direction::Forward, Some(f)) => {
                TIMELINE.range(&*self.db, (Excluded((short, f)), Included((short, i64::MAX))), dir)?
            }
            (Direction::Reverse, Some(f)) => {
                TIMELINE.range(&*self.db, (Included((short, i64::MIN)), Excluded((short, f))), dir)?
            }
        };
        let mut out = Vec::new();
        for row in iter.take(limit) {
            let ((_, count), ev) = row?;
            if let Some(p) = self.pdu_by_short(ev)? {
                out.push((count, p));
            }
        }
        Ok(out)
    }

    /// The rooms a local user has a membership in, with that membership.
    pub fn rooms_of(&self, user_id: &str) -> Result<Vec<(ruma::OwnedRoomId, Membership)>, RoomError> {
        let mut out = Vec::new();
        for row in MEMBERSHIPS.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let ((_, short_room), membership) = row?;
            if let Some(id) = self.room_ids.lookup(&*self.db, short_room)? {
                out.push((RoomId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))?, membership));
            }
        }
        Ok(out)
    }

    /// A local user's membership in one room.
    pub fn membership(&self, user_id: &str, room_id: &RoomId) -> Result<Option<Membership>, RoomError> {
        match self.short_room(room_id)? {
            Some(short) => Ok(MEMBERSHIPS.get(&*self.db, &(user_id.to_owned(), short))?),
            None => Ok(None),
        }
    }

    /// Whether the room's timeline has nothing after position `since`, known without
    /// reading it: the first call per room and process reads the newest position once;
    /// appends raise it before their batch is handed over, so it is never below an
    /// event a reader can see. An unknown room answers false.
    pub fn quiet_since(&self, room_id: &RoomId, since: i64) -> Result<bool, RoomError> {
        self.newest.none_after(room_id, since, || {
            // A room not stored here is never quiet (the mark stays above any token).
            let Some(short) = self.short_room(room_id)? else { return Ok(i64::MAX) };
            Ok(match TIMELINE.prefix(&*self.db, &(short,), Direction::Reverse)?.next() {
                Some(row) => row?.0.1,
                None => 0,
            })
        })
    }

    /// Whether `event_id` (as a peer or client wrote it) names an event of
    /// `room_id` held here; anything unparsable or of another room is not.
    pub fn holds_event_in(&self, room_id: &RoomId, event_id: &str) -> bool {
        EventId::parse(event_id).ok().and_then(|id| self.pdu(&id).ok().flatten()).is_some_and(|p| p.room_id == room_id)
    }

    /// The position of the room's newest timeline event (0: none; an unknown room: 0).
    pub fn newest_position(&self, room_id: &RoomId) -> Result<i64, RoomError> {
        let Some(short) = self.short_room(room_id)? else { return Ok(0) };
        Ok(match TIMELINE.prefix(&*self.db, &(short,), Direction::Reverse)?.next() {
            Some(row) => row?.0.1,
            None => 0,
        })
    }

    /// Timeline events with positions in `(after, upto]`, oldest first, at most the newest `limit`;
    /// the flag says whether older ones in the range were left out.
    pub fn timeline_between(
        &self,
        room_id: &RoomId,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<(Vec<(i64, ArcPdu)>, bool), RoomError> {
        use std::ops::Bound::{Excluded, Included};
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let iter =
            TIMELINE.range(&*self.db, (Excluded((short, after)), Included((short, upto))), Direction::Reverse)?;
        let mut out = Vec::new();
        let mut limited = false;
        for row in iter {
            let ((_, count), ev) = row?;
            if out.len() == limit {
                limited = true;
                break;
            }
            if let Some(p) = self.pdu_by_short(ev)? {
                out.push((count, p));
            }
        }
        out.reverse();
        Ok((out, limited))
    }

    /// The short id of a stored event.
    pub fn short_event(&self, event_id: &EventId) -> Result<Option<u64>, RoomError> {
        Ok(self.event_ids.get(&*self.db, event_id.as_str())?)
    }

    /// Every room this server has, by id.
    pub fn all_rooms(&self) -> Result<Vec<ruma::OwnedRoomId>, RoomError> {
        let mut out = Vec::new();
        for row in ROOMS.iter(&*self.db, Direction::Forward)? {
            let (short, _) = row?;
            if let Some(id) = self.room_ids.lookup(&*self.db, short)? {
                out.push(RoomId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// Destinations with queued items: `(short server id, server name)`.
    ///
    /// One seek per destination, not a scan of the queue: a destination that
    /// has been down for hours may have a long queue, and this runs on every
    /// wake. Delivered rows are deletions RocksDB would step over one by one
    /// until compaction drops them, so a destination's rows are read from its
    /// floor (see [`Rooms::outbound_delivered`]).
    pub fn outbound_destinations(&self) -> Result<Vec<(u64, String)>, RoomError> {
        use std::ops::Bound::{self, Excluded, Included};
        type Span = (Bound<(u64, u64)>, Bound<(u64, u64)>);
        // The destination of the first queued row in a key range.
        let first_dest = |range: Span| -> Result<Option<u64>, RoomError> {
            match OUTBOUND.range(&*self.db, range, Direction::Forward)?.next() {
                Some(row) => Ok(Some(row?.0.0)),
                None => Ok(None),
            }
        };
        let floors = self.outbound_floors.lock().clone();
        let mut out: Vec<(u64, String)> = Vec::new();
        let mut from = 0u64;
        loop {
            // Destinations before the next one with a known floor, then that one alone
            // from its floor (an unbounded read from there would step over the next
            // floored destination's deletions).
            let dest = match floors.range(from..).next().map(|(&d, &f)| (d, f)) {
                Some((d, f)) => match first_dest((Included((from, 0)), Excluded((d, 0))))? {
                    Some(dest) => Some(dest),
                    None if first_dest((Included((d, f)), Included((d, u64::MAX))))?.is_some() => Some(d),
                    None => match d.checked_add(1) {
                        Some(n) => {
                            from = n;
                            continue;
                        }
                        None => break,
                    },
                },
                None => first_dest((Included((from, 0)), Included((u64::MAX, u64::MAX))))?,
            };
            let Some(dest) = dest else { break };
            if let Some(name) = self.servers.lookup(&*self.db, dest)? {
                out.push((dest, name));
            }
            match dest.checked_add(1) {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// Names `destinations` as having new queued rows once `batch` is visible, and
    /// wakes the federation sender then (before, it could read the queue too early).
    pub(crate) fn announce_queued(&self, batch: &mut Batch, destinations: Vec<String>) {
        if destinations.is_empty() {
            return;
        }
        let ready = self.ready_destinations.clone();
        batch.on_durable(move || {
            ready.0.lock().extend(destinations);
            ready.1.notify_one();
        });
    }

    /// Destinations with rows queued since the last call.
    pub fn take_outbound_ready(&self) -> Vec<String> {
        std::mem::take(&mut *self.ready_destinations.0.lock()).into_iter().collect()
    }

    /// Resolves once rows were queued for some destination since the last
    /// [`Rooms::take_outbound_ready`] (or at once, if that was missed while not waiting).
    pub async fn outbound_ready(&self) {
        self.ready_destinations.1.notified().await;
    }

    /// Where a destination's live rows start, as far as this process knows.
    pub(super) fn outbound_floor(&self, dest: u64) -> u64 {
        self.outbound_floors.lock().get(&dest).copied().unwrap_or(0)
    }

    /// How many items wait for a destination, counting at most `cap`.
    pub fn outbound_depth(&self, dest: u64, cap: usize) -> Result<usize, RoomError> {
        let mut n = 0;
        let from = self.outbound_floor(dest);
        for row in OUTBOUND.range(&*self.db, (dest, from)..=(dest, u64::MAX), Direction::Forward)?.take(cap) {
            row?;
            n += 1;
        }
        Ok(n)
    }

    /// The next transaction's worth of queued items for a destination, oldest first:
    /// at most `max_pdus` PDUs and `max_edus` EDUs, stopping at the first item that
    /// does not fit (so delivery stays in queue order).
    pub fn outbound_batch(&self, dest: u64, max_pdus: usize, max_edus: usize) -> Result<OutboundBatch, RoomError> {
        // Read before the rows: every row at or below a visible position is in the read.
        let visible = self.stream.current();
        let mut out = OutboundBatch::default();
        let mut stopped_at = None;
        let from = self.outbound_floor(dest);
        for row in OUTBOUND.range(&*self.db, (dest, from)..=(dest, u64::MAX), Direction::Forward)? {
            let ((_, seq), item) = row?;
            match item {
                OutboundItem::Pdu(short) => {
                    if out.pdus.len() >= max_pdus {
                        stopped_at = Some(seq);
                        break;
                    }
                    match PDUS.get(&*self.db, &short)? {
                        Some(Raw(bytes)) => out.pdus.push((seq, bytes)),
                        // Nothing to send any more: drop the row with the delivered ones.
                        None => out.stale.push(seq),
                    }
                }
                OutboundItem::Edu(bytes) => {
                    if out.edus.len() >= max_edus {
                        stopped_at = Some(seq);
                        break;
                    }
                    match serde_json::from_slice(&bytes) {
                        Ok(json) => out.edus.push((seq, json)),
                        Err(_) => out.stale.push(seq),
                    }
                }
            }
        }
        // A row above `visible` may still be in flight with a smaller position than
        // one read here, so the floor never passes `visible`.
        let limit = visible.saturating_add(1);
        out.floor = stopped_at.map_or(limit, |s| s.min(limit)).max(from);
        Ok(out)
    }

    /// Removes a delivered batch's rows from a destination's queue (after its 200)
    /// and moves the destination's floor up to the batch's.
    ///
    /// Not synced: a crash that loses the deletion sends the rows again, and the
    /// receiver already has those events (and their transaction's EDUs are
    /// idempotent or deduplicated by message id). A flush here would cost every
    /// delivered transaction a disk sync that the next event's write then waits on.
    pub async fn outbound_delivered(&self, dest: u64, delivered: &OutboundBatch) -> Result<(), RoomError> {
        let mut batch = Batch::new();
        for seq in delivered.seqs() {
            OUTBOUND.delete(&mut batch, &(dest, seq));
        }
        self.db.commit_unsynced(batch).await?;
        let mut floors = self.outbound_floors.lock();
        let floor = floors.entry(dest).or_insert(0);
        *floor = (*floor).max(delivered.floor);
        Ok(())
    }

    /// Adds `item` at queue position `seq` for each of `destinations` but this
    /// server to `batch`, and wakes the sender for them once it is visible.
    pub(crate) fn queue_rows<D: AsRef<str>>(
        &self,
        batch: &mut Batch,
        destinations: impl IntoIterator<Item = D>,
        seq: u64,
        item: &OutboundItem,
    ) -> Result<(), RoomError> {
        let mut queued_to = Vec::new();
        for dest in destinations {
            let dest = dest.as_ref();
            if dest == self.server_name.as_str() {
                continue;
            }
            let short = self.servers.get_or_create(&self.db, batch, dest)?;
            OUTBOUND.put(batch, &(short, seq), item)?;
            queued_to.push(dest.to_owned());
        }
        self.announce_queued(batch, queued_to);
        Ok(())
    }

    /// Queues an EDU durably for each of `destinations`; it is sent with their next transaction.
    pub async fn queue_edu(&self, destinations: &[String], edu: &serde_json::Value) -> Result<(), RoomError> {
        let bytes = serde_json::to_vec(edu).map_err(|e| RoomError::BadEvent(e.to_string()))?;
        let mut batch = Batch::new();
        let seq = self.stream.next_in(&mut batch);
        self.queue_rows(&mut batch, destinations, seq, &OutboundItem::Edu(bytes))?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Servers with joined members in the room now.
    ///
    /// Computing it reads every state event (a 2,000-member room: 2,000 reads),
    /// and typing, presence and `send_join` ask for it far more often than the
    /// state changes: it comes from the room's loaded head when that is free and
    /// at the current state, else from a per-room copy kept for the state
    /// snapshot it was computed at.
    pub fn joined_servers_now(&self, room_id: &RoomId) -> Result<Vec<String>, RoomError> {
        let snapshot = self.current_snapshot(room_id)?;
        // A loaded head keeps its servers up to date with every append.
        if let Ok(guard) = self.lock_of(room_id).try_lock()
            && let Some(head) = guard.as_ref()
            && head.state == snapshot
        {
            return Ok(head.servers.keys().map(|s| s.to_string()).collect());
        }
        if let Some((at, servers)) = self.servers_at.lock().get(room_id)
            && *at == snapshot
        {
            return Ok(servers.clone());
        }
        let servers: Vec<String> = self.joined_servers(snapshot, None)?.into_keys().map(|s| s.to_string()).collect();
        self.servers_at.lock().put(room_id.to_owned(), (snapshot, servers.clone()));
        Ok(servers)
    }

    /// Events between `earliest` (exclusive) and `latest` (exclusive), walking prev events back
    /// from `latest`, at most `limit`, oldest first (`get_missing_events`).
    pub fn missing_events(
        &self,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<ArcPdu>, RoomError> {
        let stop: std::collections::HashSet<OwnedEventId> = earliest.iter().cloned().collect();
        let mut seen: std::collections::HashSet<OwnedEventId> = latest.iter().cloned().collect();
        let mut frontier: Vec<OwnedEventId> = Vec::new();
        for id in latest {
            if let Some(p) = self.pdu(id)? {
                frontier.extend(p.prev_events.iter().cloned());
            }
        }
        let mut out = Vec::new();
        while let Some(id) = frontier.pop() {
            if out.len() >= limit || stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(p) = self.pdu(&id)? else { continue };
            frontier.extend(p.prev_events.iter().cloned());
            out.push(p);
        }
        out.sort_by_key(|p| p.depth);
        Ok(out)
    }

    /// The events of the auth chains of `ids` (their auth events, recursively).
    pub fn auth_chain_events(&self, ids: &[OwnedEventId]) -> Result<Vec<ArcPdu>, RoomError> {
        let chain = self.auth_chain(ids.iter(), &resolve::Overlay::default())?;
        let mut out = Vec::new();
        for id in chain.iter() {
            if let Some(p) = self.pdu(id)? {
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.depth);
        Ok(out)
    }

    /// The short id of a server name, if it was ever queued to.
    pub fn server_short(&self, server: &str) -> Result<Option<u64>, RoomError> {
        Ok(self.servers.get(&*self.db, server)?)
    }
}
