//! A room state another server reports (a `send_join` answer, `/state_ids`
//! at an event), checked before any of it is believed.
//!
//! Server-Server API §"Checks performed on receipt of a PDU": "Whenever a
//! server receives an event from a remote server, the receiving server must
//! ensure that the event: 1. Is a valid event, otherwise it is dropped.
//! 2. Passes signature checks, otherwise it is dropped. 3. Passes hash
//! checks, otherwise it is redacted before being processed further.
//! 4. Passes authorization rules based on the event's auth events, otherwise
//! it is rejected. …" and §"Authorization rules": "If there are entries
//! which were themselves rejected under the checks performed on receipt of
//! a PDU, reject."
//!
//! Steps 1–3 ran in the federation layer before the events get here
//! (`pdu_check`). This module runs step 4 on every event of the state and
//! of its auth chain, in dependency order (an event after all of its auth
//! events, so the create event first), the way Synapse treats outliers:
//! ruma's state-independent rules with the event's auth events as they were
//! judged here, then the state-dependent rules against the state those auth
//! events form (in room version 12 plus the create event the room id names).
//! The state at these events is not known (their prev events are not here),
//! so steps 5 and 6 cannot run on them; the event that builds on the state
//! (our join, the event of a gap) is then authorized against the result in
//! full.
//!
//! Outcomes, per event:
//! - passes: stored as an outlier;
//! - fails: stored flagged `OUTLIER | REJECTED` (kept so that an event citing
//!   it is rejected in turn, as the rule above says), never in a state;
//! - an auth event is neither in the answer nor stored here, or the auth
//!   events form a loop: dropped, not stored. It is not known to be wrong,
//!   only incomplete (a later fetch may bring the missing event), so it is
//!   not marked rejected for good.
//! - an event that names another room's create event as its own
//!   (pre-v12: another `m.room.create` than the state's) is rejected.
//!
//! The state kept: each reported `(type, state_key)` whose event passed. A
//! key whose event was rejected or dropped takes the state before that event
//! for the key when the event's own auth events say it: its auth event of
//! the same `(type, state_key)`, if that passed (followed further back while
//! that one failed too). The auth events selection algorithm puts exactly
//! the current power levels, sender and target memberships and join rules
//! before an event among its auth events, so a forged power-level change or
//! membership falls back to the one it replaced; any other key is left out.
//! This is a choice where the spec is silent (it does not say what the
//! joining server keeps of a state it cannot verify in full); it never puts
//! into the state an event that failed, and never invents one.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use myelin_storage::{Batch, Raw};
use ruma::{
    EventId, OwnedEventId, RoomId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res,
};

use super::{ArcPdu, Pdu, RoomError, Rooms, tables::*};

/// A reported state after the checks: what to store and what the state is.
pub(super) struct CheckedState {
    /// Events not stored here yet, in dependency order, `rejected` set on those that failed.
    pub events: Vec<ArcPdu>,
    /// The state kept, by `(type, state_key)`.
    pub state: BTreeMap<(String, String), ArcPdu>,
    /// How many events failed the auth rules.
    pub rejected: usize,
    /// How many events were dropped (auth events missing, or a loop).
    pub dropped: usize,
}

impl Rooms {
    /// Runs the authorization rules on every event of a reported `state` and
    /// its `auth_chain` (both already checked for signatures and hashes), in
    /// dependency order; see the module doc for what is kept.
    pub(super) fn check_remote_state(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        state: &[Pdu],
        auth_chain: &[Pdu],
    ) -> Result<CheckedState, RoomError> {
        // Every event offered, once; those of other rooms are not ours to judge.
        let mut waiting: HashMap<OwnedEventId, &Pdu> = HashMap::new();
        for p in auth_chain.iter().chain(state) {
            if p.room_id == room_id && self.meta(&p.event_id)?.is_none() {
                waiting.entry(p.event_id.clone()).or_insert(p);
            }
        }
        let create_id = self.create_event_id(rules, room_id, state)?;
        let mut judged: HashMap<OwnedEventId, ArcPdu> = HashMap::new();
        let mut out = CheckedState { events: Vec::new(), state: BTreeMap::new(), rejected: 0, dropped: 0 };
        while !waiting.is_empty() {
            // Those whose auth events are all judged (or were never offered).
            let mut ready: Vec<&Pdu> =
                waiting.values().copied().filter(|p| p.auth_events.iter().all(|a| !waiting.contains_key(a))).collect();
            if ready.is_empty() {
                tracing::warn!(room_id = %room_id, events = waiting.len(), "auth events form a loop; dropping them");
                out.dropped += waiting.len();
                break;
            }
            ready.sort_by(|a, b| (a.depth, &a.event_id).cmp(&(b.depth, &b.event_id)));
            for p in ready {
                waiting.remove(&p.event_id);
                let lookup = |id: &EventId| judged.get(id).cloned().or_else(|| self.pdu(id).ok().flatten());
                // In v12 the create event the room id names is an auth event too.
                let room_create = match &create_id {
                    Some(c) if rules.authorization.room_create_event_id_as_room_id && p.event_id != *c => Some(c),
                    _ => None,
                };
                if let Some(missing) = p.auth_events.iter().chain(room_create).find(|a| lookup(a).is_none()) {
                    tracing::info!(room_id = %room_id, event_id = %p.event_id, auth_event = %missing,
                        "dropping a reported event whose auth event is missing");
                    out.dropped += 1;
                    continue;
                }
                let mut checked = p.clone();
                if let Err(reason) = self.check_on_auth_events(rules, p, create_id.as_deref(), &lookup) {
                    tracing::info!(room_id = %room_id, event_id = %p.event_id, reason,
                        "rejected a reported event that fails the auth rules against its auth events");
                    checked.rejected = true;
                    out.rejected += 1;
                }
                let checked = Arc::new(checked);
                judged.insert(checked.event_id.clone(), checked.clone());
                out.events.push(checked);
            }
        }
        // The state kept.
        let lookup = |id: &EventId| judged.get(id).cloned().or_else(|| self.pdu(id).ok().flatten());
        for p in state.iter().filter(|p| p.room_id == room_id) {
            let Some(key) = &p.state_key else { continue };
            let slot = (p.kind.to_string(), key.clone());
            if out.state.contains_key(&slot) {
                continue; // a key reported twice: the first stands
            }
            if let Some(kept) = self.honest_for_key(p, &slot, &lookup) {
                out.state.insert(slot, kept);
            }
        }
        Ok(out)
    }

    /// The room's create event: in v12 the one the room id names, before it
    /// the `m.room.create` of the reported state.
    fn create_event_id(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        state: &[Pdu],
    ) -> Result<Option<OwnedEventId>, RoomError> {
        if rules.authorization.room_create_event_id_as_room_id {
            // The room id is `!` + the create event's reference hash; its event id is `$` + the same.
            return EventId::parse(format!("${}", room_id.strip_sigil()))
                .map(Some)
                .map_err(|e| RoomError::BadEvent(format!("room id {room_id}: {e}")));
        }
        Ok(state
            .iter()
            .find(|p| {
                p.room_id == room_id && p.kind == TimelineEventType::RoomCreate && p.state_key.as_deref() == Some("")
            })
            .map(|p| p.event_id.clone()))
    }

    /// Step 4 for one event whose auth events are all at hand (`lookup`).
    fn check_on_auth_events(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        create_id: Option<&EventId>,
        lookup: &impl Fn(&EventId) -> Option<ArcPdu>,
    ) -> Result<(), String> {
        if pdu.kind == TimelineEventType::RoomCreate {
            if create_id.is_some_and(|c| c != pdu.event_id) {
                return Err("a second create event for the room".into());
            }
            return state_res::check_state_independent_auth_rules(&rules.authorization, pdu, lookup);
        }
        let auth: Vec<ArcPdu> = pdu.auth_events.iter().filter_map(|a| lookup(a)).collect();
        if auth.iter().any(|a| a.kind == TimelineEventType::RoomCreate && Some(&*a.event_id) != create_id) {
            return Err("its auth events name another create event than the room's".into());
        }
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, lookup)?;
        let create = match create_id {
            Some(id) if rules.authorization.room_create_event_id_as_room_id => lookup(id),
            _ => None,
        };
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
            let kind = kind.to_string();
            if kind == "m.room.create"
                && let Some(c) = &create
            {
                return Some(c.clone());
            }
            auth.iter().find(|a| a.kind.to_string() == kind && a.state_key.as_deref() == Some(key)).cloned()
        })
    }

    /// What the state holds for `slot`, reported as `p`: `p` if it passed,
    /// else the state before it for that key as its auth events give it.
    fn honest_for_key(
        &self,
        p: &Pdu,
        slot: &(String, String),
        lookup: &impl Fn(&EventId) -> Option<ArcPdu>,
    ) -> Option<ArcPdu> {
        let mut seen = HashSet::new();
        // Not judged at all (dropped): as untrusted as a rejected one.
        let mut current = lookup(&p.event_id).unwrap_or_else(|| Arc::new(Pdu { rejected: true, ..p.clone() }));
        while current.rejected {
            if !seen.insert(current.event_id.clone()) {
                return None;
            }
            current = current
                .auth_events
                .iter()
                .filter_map(|a| lookup(a))
                .find(|a| a.kind.to_string() == slot.0 && a.state_key.as_deref() == Some(slot.1.as_str()))?;
        }
        Some(current)
    }

    /// Adds the checked events (as outliers, failed ones flagged rejected)
    /// and the kept state (as a snapshot, whose id it returns) to `batch`.
    /// Until the batch is durable the events are served from memory, so the
    /// event built on this state can be authorized before the write; the
    /// caller calls [`Rooms::forget_staged`] if the batch is never written.
    pub(super) fn stage_checked_state(
        &self,
        batch: &mut Batch,
        room: u64,
        checked: &CheckedState,
    ) -> Result<u64, RoomError> {
        self.stage_checked_events(batch, room, checked)?;
        let mut entries = Vec::with_capacity(checked.state.len());
        for ((kind, key), p) in &checked.state {
            let ssk = self.state_keys.get_or_create(&self.db, batch, &super::state_key_string(kind, key))?;
            let short = self.event_ids.get_or_create(&self.db, batch, p.event_id.as_str())?;
            entries.push((ssk, short));
        }
        entries.sort_unstable();
        let snapshot = self.states.store(batch, entries, None)?;
        Ok(snapshot)
    }

    /// Stores auth events fetched for an event that cites them (Server-Server
    /// API §"Checks performed on receipt of a PDU", step 4 needs them): each
    /// goes through the auth rules against its own auth events, in dependency
    /// order, like a reported state's ([`Rooms::check_remote_state`]), and is
    /// stored as an outlier, flagged rejected when it fails; one whose own auth
    /// events are missing is not stored. Returns how many were stored.
    pub async fn store_auth_events(&self, room_id: &RoomId, events: &[Pdu]) -> Result<usize, RoomError> {
        let rules = super::version::rules(&self.room_version(room_id)?)?;
        // Before v12 the create event is found in the state handed over: give it ours.
        let create: Vec<Pdu> = match self.state_event(room_id, "m.room.create", "")? {
            Some(c) if !rules.authorization.room_create_event_id_as_room_id => vec![(*c).clone()],
            _ => Vec::new(),
        };
        let checked = self.check_remote_state(&rules, room_id, &create, events)?;
        super::inbound::log_checked(room_id, &checked);
        if checked.events.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        let room = self.room_ids.get_or_create(&self.db, &mut batch, room_id.as_str())?;
        self.stage_checked_events(&mut batch, room, &checked)?;
        if let Err(e) = self.db.commit(batch).await {
            self.forget_staged(&checked);
            return Err(e.into());
        }
        Ok(checked.events.len())
    }

    /// The outlier half of [`Rooms::stage_checked_state`]: the checked events, no state.
    fn stage_checked_events(&self, batch: &mut Batch, room: u64, checked: &CheckedState) -> Result<(), RoomError> {
        let mut staged = Vec::with_capacity(checked.events.len());
        for p in &checked.events {
            let short = self.event_ids.get_or_create(&self.db, batch, p.event_id.as_str())?;
            if self.meta_of_short(short)?.is_some() {
                continue;
            }
            let flags = if p.rejected { OUTLIER | REJECTED } else { OUTLIER };
            let meta = EventMeta { room, depth: p.depth, count: 0, flags, state_before: 0, state_after: 0 };
            PDUS.put(batch, &short, &Raw(p.to_bytes()))?;
            META.put(batch, &short, &meta)?;
            self.unsettled.lock().insert(short, (meta, p.clone()));
            staged.push(short);
        }
        let unsettled = self.unsettled.clone();
        let shorts = staged.clone();
        batch.on_durable(move || {
            let mut map = unsettled.lock();
            for s in &shorts {
                map.remove(s);
            }
        });
        Ok(())
    }

    /// Forgets what [`Rooms::stage_checked_state`] served from memory, for a batch never written.
    pub(super) fn forget_staged(&self, checked: &CheckedState) {
        let mut map = self.unsettled.lock();
        for p in &checked.events {
            if let Ok(Some(short)) = self.event_ids.get(&*self.db, p.event_id.as_str())
                && map.get(&short).is_some_and(|(m, _)| m.count == 0)
            {
                map.remove(&short);
            }
        }
    }
}
