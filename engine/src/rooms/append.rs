//! The append path: a local send, the state before an event and its
//! authorization, and the one batch that stores an event and moves the room's head.

use std::sync::Arc;

use myelin_storage::{Batch, Raw};
use ruma::{
    EventId, OwnedEventId, OwnedServerName, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res,
};

use super::{
    ArcPdu, Before, Head, NewEvent, Pdu, RoomError, Rooms, StateRef, membership_of, resolve, state_key_string,
    tables::*,
};

impl Rooms {
    /// Sends an event as a local user on top of the room's forward extremities.
    pub async fn send(&self, sender: &UserId, room_id: &RoomId, event: NewEvent) -> Result<ArcPdu, RoomError> {
        self.send_for_txn(sender, room_id, event, None).await
    }

    /// [`Rooms::send`] for a client transaction: the `(device, transaction id) → event`
    /// row is written in the event's own batch, so a retried request finds the event
    /// exactly when it exists, and the send costs one durable write, not two.
    pub async fn send_for_txn(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<(&str, &str)>,
    ) -> Result<ArcPdu, RoomError> {
        let lock = self.lock_of(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(room_id).await?);
        }
        let head = guard.as_mut().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let prev: Vec<OwnedEventId> = head.extremities.iter().rev().take(20).map(|(_, id)| id.clone()).collect();
        let state = StateRef::Stored(head.state);
        let pdu = self.build(head, sender, &event, prev, &state)?;
        let txn_row = txn.map(|(device, id)| (sender.to_string(), device.to_owned(), id.to_owned()));
        let (pdu, pending) = self.append_with(head, pdu, Before::FromPrevs, txn_row, false)?;
        drop(guard);
        self.settle(room_id, pending).await?;
        Ok(pdu)
    }

    /// Waits until an appended event's batch is durable. If the write failed, the
    /// room's in-memory head ran ahead of storage: it is dropped, to be reloaded.
    pub async fn settle(&self, room_id: &RoomId, pending: myelin_storage::Pending) -> Result<(), RoomError> {
        if let Err(e) = pending.durable().await {
            tracing::error!(room_id = %room_id, error = %e, "an appended event was not stored; reloading the room");
            *self.lock_of(room_id).lock().await = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends an event as a local user on explicit `prev_events` (which may fork the DAG).
    pub async fn send_at(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<ArcPdu, RoomError> {
        let lock = self.lock_of(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(room_id).await?);
        }
        let head = guard.as_mut().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let before = self.state_before(head, &prev_events)?;
        let pdu = self.build(head, sender, &event, prev_events, &before)?;
        let (pdu, pending) = self.append_locked(head, pdu)?;
        drop(guard);
        self.settle(room_id, pending).await?;
        Ok(pdu)
    }

    /// The state before an event with these prev events.
    pub(super) fn state_before(&self, head: &Head, prev_events: &[OwnedEventId]) -> Result<StateRef, RoomError> {
        if prev_events.is_empty() {
            return Ok(StateRef::Empty);
        }
        let mut ext: Vec<&EventId> = head.extremities.iter().map(|(_, id)| id.as_ref()).collect();
        let mut prevs: Vec<&EventId> = prev_events.iter().map(AsRef::as_ref).collect();
        ext.sort();
        prevs.sort();
        if ext == prevs && head.state != 0 {
            return Ok(StateRef::Stored(head.state));
        }
        let mut afters = Vec::with_capacity(prev_events.len());
        for prev in prev_events {
            let meta = self.meta(prev)?.ok_or_else(|| RoomError::UnknownEvent(prev.to_string()))?;
            afters.push(meta.state_after);
        }
        self.resolve_states(&head.rules, &afters, &resolve::Overlay::default())
    }

    /// Checks the authorization rules against the auth events and `state`.
    ///
    /// For a message-like event (no state key, not a redaction) the rules that
    /// read the state ask only whether the sender is joined and whether the
    /// sender's power reaches the level of the event's type: once passed for a
    /// stored snapshot, sender and type, that outcome is remembered (ruma parses
    /// the power levels on every check, a room's senders repeat). The rules on the
    /// event's own auth events are always checked.
    pub(super) fn authorize(&self, rules: &RoomVersionRules, pdu: &Pdu, state: &StateRef) -> Result<(), RoomError> {
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
            self.pdu(id).ok().flatten()
        })
        .map_err(RoomError::Forbidden)?;
        if pdu.kind == TimelineEventType::RoomCreate {
            return Ok(());
        }
        if matches!(state, StateRef::Empty) {
            return Err(RoomError::Forbidden("event has no state to be authorized against".into()));
        }
        let remembered = match state {
            StateRef::Stored(snapshot) if pdu.state_key.is_none() && pdu.kind != TimelineEventType::RoomRedaction => {
                Some((*snapshot, pdu.sender.clone(), pdu.kind.clone()))
            }
            _ => None,
        };
        if let Some(key) = &remembered
            && self.authorized.lock().get(key).is_some()
        {
            return Ok(());
        }
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
            self.state_pdu(state, &kind.to_string(), key).ok().flatten()
        })
        .map_err(RoomError::Forbidden)?;
        if let Some(key) = remembered {
            self.authorized.lock().put(key, ());
        }
        Ok(())
    }

    pub(super) fn append_locked(
        &self,
        head: &mut Head,
        pdu: Pdu,
    ) -> Result<(ArcPdu, myelin_storage::Pending), RoomError> {
        self.append_with(head, pdu, Before::FromPrevs, None, false)
    }

    /// Appends an authorized event under the room lock and hands its batch to the
    /// writer; the head moves at once, so the next event of the room can be
    /// appended while this one's batch waits for its group commit. The caller
    /// acknowledges the event only after awaiting the returned [`Pending`]
    /// (outside the lock: `settle`). Until then the event's metadata and PDU
    /// are served from `unsettled`, and its new ids from the interners' pending
    /// maps; the writer stores batches in order, so a later batch never lands
    /// without the earlier one it builds on (unless that write failed, when
    /// `settle` drops the head to be reloaded from storage).
    ///
    /// [`Pending`]: myelin_storage::Pending
    pub(super) fn append_with(
        &self,
        head: &mut Head,
        pdu: Pdu,
        before: Before,
        client_txn: Option<(String, String, String)>,
        more_follow: bool,
    ) -> Result<(ArcPdu, myelin_storage::Pending), RoomError> {
        self.append_in(Batch::new(), head, pdu, before, client_txn, more_follow)
    }

    /// [`Rooms::append_with`] adding to `batch`, which may already hold rows that
    /// must be written with the event or not at all (a remote join's state).
    pub(super) fn append_in(
        &self,
        mut batch: Batch,
        head: &mut Head,
        pdu: Pdu,
        before: Before,
        client_txn: Option<(String, String, String)>,
        more_follow: bool,
    ) -> Result<(ArcPdu, myelin_storage::Pending), RoomError> {
        let staged = self.stage(&mut batch, head, pdu, before, client_txn)?;
        if more_follow {
            batch.more_follow();
        }
        let pending = match self.db.submit_pending(batch) {
            Ok(p) => p,
            Err(e) => {
                self.unstage(&[staged.short]);
                return Err(e.into());
            }
        };
        Ok((self.apply(head, staged), pending))
    }

    /// Writes an event into `batch` (steps 1–5 of the append) without handing
    /// the batch over or moving the head; [`Rooms::apply`] moves the head once
    /// the caller knows the batch is handed over (or, for a room being created
    /// in one batch, at once, on a head that is dropped if the batch never is).
    /// From here until the batch is durable the event is served from `unsettled`.
    /// Of the head it sets only the room's short id, when `pdu` is the create event.
    pub(super) fn stage(
        &self,
        batch: &mut Batch,
        head: &mut Head,
        pdu: Pdu,
        before: Before,
        client_txn: Option<(String, String, String)>,
    ) -> Result<Staged, RoomError> {
        let is_create = pdu.kind == TimelineEventType::RoomCreate;
        let tolerate_gaps = matches!(before, Before::Given(_));
        if is_create && head.state != 0 {
            return Err(RoomError::Forbidden("the room already has a create event".into()));
        }
        if !is_create && pdu.prev_events.is_empty() {
            return Err(RoomError::BadEvent("event has no prev_events".into()));
        }
        // 1. The state before the event; 2. authorization against auth events and that state.
        let state_before = match before {
            Before::FromPrevs => {
                let state = self.state_before(head, &pdu.prev_events)?;
                self.authorize(&head.rules, &pdu, &state)?;
                state
            }
            Before::Given(state) => {
                self.authorize(&head.rules, &pdu, &state)?;
                state
            }
            Before::Authorized(state) => state,
        };
        // 3. Ids and the state after.
        let short = self.event_ids.get_or_create(&self.db, batch, pdu.event_id.as_str())?;
        if self.meta_of_short(short)?.is_some() {
            return Err(RoomError::InUse(format!("event {} is already stored", pdu.event_id)));
        }
        if is_create {
            head.short = self.room_ids.get_or_create(&self.db, batch, pdu.room_id.as_str())?;
        }
        let mut hint = None;
        if let Some(first) = pdu.prev_events.first() {
            hint = self.meta(first)?.map(|m| m.state_after);
        }
        let state_before = self.materialize(batch, &state_before, hint)?;
        let state_before = (state_before != 0).then_some(state_before);
        let mut overlay_key = None;
        let state_after = match &pdu.state_key {
            Some(key) => {
                let kind = pdu.kind.to_string();
                let ssk = self.state_keys.get_or_create(&self.db, batch, &state_key_string(&kind, key))?;
                overlay_key = Some((ssk, (kind, key.clone())));
                self.states.store_changed(batch, state_before, &[(ssk, short)])?
            }
            None => state_before.unwrap_or(0),
        };
        let pdu = Arc::new(pdu);
        // 4. New extremities and the room's current state.
        let mut prev_shorts = Vec::with_capacity(pdu.prev_events.len());
        for prev in &pdu.prev_events {
            match self.event_ids.get(&*self.db, prev.as_str())? {
                Some(s) if self.meta_of_short(s)?.is_some() => prev_shorts.push(s),
                _ if tolerate_gaps => {}
                _ => return Err(RoomError::UnknownEvent(prev.to_string())),
            }
        }
        let mut extremities: Vec<(u64, OwnedEventId)> =
            head.extremities.iter().filter(|(s, _)| !prev_shorts.contains(s)).cloned().collect();
        extremities.push((short, pdu.event_id.clone()));
        let current = if extremities.len() == 1 {
            state_after
        } else {
            let mut afters = Vec::with_capacity(extremities.len());
            for (s, _) in &extremities {
                let after =
                    if *s == short { state_after } else { self.meta_of_short(*s)?.map_or(0, |m| m.state_after) };
                afters.push(after);
            }
            let overlay = resolve::Overlay { event: Some((short, pdu.clone())), state_key: overlay_key };
            let resolved = self.resolve_states(&head.rules, &afters, &overlay)?;
            self.materialize(batch, &resolved, Some(state_after))?
        };
        // 5. The batch.
        let count = self.stream.next_in(batch) as i64;
        let room = head.short;
        PDUS.put(batch, &short, &Raw(pdu.to_bytes()))?;
        let meta =
            EventMeta { room, depth: pdu.depth, count, flags: 0, state_before: state_before.unwrap_or(0), state_after };
        META.put(batch, &short, &meta)?;
        TIMELINE.put(batch, &(room, count), &short)?;
        self.newest.raise(pdu.room_id.clone(), count);
        if let Some(key) = &client_txn {
            crate::users::TXNS.put(batch, key, &pdu.event_id.to_string())?;
            EVENT_TXNS.put(batch, &short, &SentWith { device: key.1.clone(), txn: key.2.clone() })?;
        }
        for prev in &prev_shorts {
            EDGES.put(batch, &(*prev, short), &())?;
            EXTREMITIES.delete(batch, &(room, *prev));
        }
        EXTREMITIES.put(batch, &(room, short), &())?;
        let depth = head.depth.max(pdu.depth);
        ROOMS.put(batch, &room, &RoomInfo { version: head.version.to_string(), state: current, depth })?;
        let servers = if current == head.state {
            head.servers.clone()
        } else if current == state_after && extremities.len() == 1 {
            // No resolution: only this event changed the state.
            self.servers_after(head, &pdu, state_before)?
        } else {
            self.joined_servers(current, Some((short, &pdu)))?
        };
        self.note_member_changes(batch, head, &pdu, &servers, current != state_after);
        // Imported history was delivered once, by the server it comes from.
        let importing = self.is_importing();
        if !importing {
            self.queue_for_push(batch, &pdu, short, count as u64, &servers);
        }
        let mut destinations: Vec<OwnedServerName> = servers.keys().cloned().collect();
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        {
            // A member who just left or was kicked still hears about it.
            destinations.push(user.server_name().to_owned());
        }
        destinations.extend(head.servers.keys().cloned());
        destinations.sort();
        destinations.dedup();
        self.index_relations(batch, &pdu, short, count, room)?;
        self.index_search(batch, &pdu, short, count, room)?;
        if !importing {
            self.queue_for_appservices(batch, &pdu, short, count as u64, state_after)?;
        }
        // The local user index /sync reads.
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && target.server_name() == self.server_name
            && let Some(membership) = membership_of(&pdu)
        {
            MEMBERSHIPS.put(batch, &(target.to_string(), room), &Membership { membership, count, event: short })?;
            self.bump_memberships_when_durable(batch, target.to_string());
        }
        // Each server sends its own events; we never forward another server's.
        if !importing && pdu.sender.server_name() == self.server_name {
            self.queue_rows(batch, destinations.iter().map(|d| d.as_str()), count as u64, &OutboundItem::Pdu(short))?;
        }
        // 6. Hand the batch over and move the head (durability is awaited by the caller).
        // The event is readable from memory until the write is visible; the hook runs
        // after that, so there is no moment when it is in neither place.
        self.unsettled.lock().insert(short, (meta, pdu.clone()));
        let unsettled = self.unsettled.clone();
        batch.on_durable(move || {
            unsettled.lock().remove(&short);
        });
        Ok(Staged { pdu, short, is_create, extremities, current, depth, servers })
    }

    /// Moves the generations the remote device-list cache trusts, once the
    /// event is durable (a fetch that begins after that sees the new state).
    fn note_member_changes(
        &self,
        batch: &mut Batch,
        head: &Head,
        pdu: &ArcPdu,
        servers: &std::collections::BTreeMap<OwnedServerName, usize>,
        resolved: bool,
    ) {
        let ours_before = head.servers.contains_key(&self.server_name);
        let ours_after = servers.contains_key(&self.server_name);
        let gens = self.member_gens.clone();
        if resolved || ours_before != ours_after {
            // A resolution may change anyone's membership; our server joining
            // or leaving starts or ends sharing the room with all its members.
            batch.on_durable(move || gens.bump_all());
        } else if pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && target.server_name() != self.server_name
        {
            batch.on_durable(move || gens.bump(target.as_str()));
        }
    }

    /// Moves the room's head past a staged event.
    pub(super) fn apply(&self, head: &mut Head, staged: Staged) -> ArcPdu {
        let Staged { pdu, short, is_create, extremities, current, depth, servers } = staged;
        if is_create {
            self.versions.lock().insert(head.short, head.rules.clone());
        }
        head.extremities = extremities;
        head.state = current;
        head.depth = depth;
        head.servers = servers;
        self.pdus.lock().put(short, pdu.clone());
        tracing::debug!(room_id = %head.room_id, event_id = %pdu.event_id, "appended");
        pdu
    }

    /// Forgets staged events whose batch will never be written.
    pub(super) fn unstage(&self, shorts: &[u64]) {
        let mut unsettled = self.unsettled.lock();
        let mut pdus = self.pdus.lock();
        for short in shorts {
            unsettled.remove(short);
            pdus.pop(short);
        }
    }
}

/// An event written into a batch whose head move is still to be applied.
pub(super) struct Staged {
    pub(super) pdu: ArcPdu,
    pub(super) short: u64,
    is_create: bool,
    extremities: Vec<(u64, OwnedEventId)>,
    current: u64,
    depth: u64,
    servers: std::collections::BTreeMap<OwnedServerName, usize>,
}
