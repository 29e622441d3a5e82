//! State resolution where the DAG forks.
//!
//! Room Versions §"State resolution" (v2): "The room state S(E) before E is
//! the resolution of the set of states {S′(E1), S′(E2), …} after the
//! prev_events {E1, E2, …} of E." Room version 12 uses v2.1, which also
//! considers the *conflicted state subgraph*: the events that lie on an
//! auth-event path from one conflicted state event to another.
//!
//! The v2 algorithm is ruma's (`ruma::state_res::resolve`), fed from our
//! snapshot store; this module is the only place that calls it, so it can be
//! replaced by our own implementation later. Room version 1 resolves with
//! our own v1 (`resolve_v1`).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use super::{ArcPdu, RoomError, Rooms, StateRef};

/// The event being appended, not stored yet, as resolution must see it.
#[derive(Default)]
pub(super) struct Overlay {
    /// Its short id, event id and parsed form.
    pub event: Option<(u64, ArcPdu)>,
    /// Its short state key and `(type, state_key)`, if it is a state event.
    pub state_key: Option<(u64, (String, String))>,
}

impl Rooms {
    fn state_key_parts(&self, ssk: u64, overlay: &Overlay) -> Result<(String, String), RoomError> {
        if let Some((k, parts)) = &overlay.state_key
            && *k == ssk
        {
            return Ok(parts.clone());
        }
        let text = self
            .state_keys
            .lookup(&*self.db, ssk)?
            .ok_or_else(|| RoomError::BadEvent(format!("state key {ssk} has no stored name")))?;
        serde_json::from_str(&text).map_err(|e| RoomError::BadEvent(format!("stored state key: {e}")))
    }

    fn event_id_of_short(&self, short: u64, overlay: &Overlay) -> Result<OwnedEventId, RoomError> {
        if let Some((s, pdu)) = &overlay.event
            && *s == short
        {
            return Ok(pdu.event_id.clone());
        }
        let text =
            self.event_ids.lookup(&*self.db, short)?.ok_or_else(|| RoomError::UnknownEvent(short.to_string()))?;
        EventId::parse(text.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))
    }

    /// Resolves the states `snapshots` (the states after each fork tip).
    ///
    /// Equal or single states need no resolution and come back as stored
    /// snapshots; otherwise the resolved state comes back unstored.
    pub(super) fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        snapshots: &[u64],
        overlay: &Overlay,
    ) -> Result<StateRef, RoomError> {
        let mut unique: Vec<u64> = snapshots.iter().copied().filter(|s| *s != 0).collect();
        unique.sort_unstable();
        unique.dedup();
        match unique.len() {
            0 => return Ok(StateRef::Empty),
            1 => return Ok(StateRef::Stored(unique[0])),
            _ => {}
        }
        let started = std::time::Instant::now();
        let mut key_of: HashMap<(StateEventType, String), u64> = HashMap::new();
        let mut short_of: HashMap<OwnedEventId, u64> = HashMap::new();
        let mut maps: Vec<StateMap<OwnedEventId>> = Vec::with_capacity(unique.len());
        for snapshot in &unique {
            let full = self.states.load(*snapshot)?;
            let mut map = StateMap::with_capacity(full.len());
            for (ssk, ev) in full.iter() {
                let (kind, key) = self.state_key_parts(*ssk, overlay)?;
                let event_id = self.event_id_of_short(*ev, overlay)?;
                let skey = (StateEventType::from(kind), key);
                key_of.insert(skey.clone(), *ssk);
                short_of.insert(event_id.clone(), *ev);
                map.insert(skey, event_id);
            }
            maps.push(map);
        }
        let fetch = |id: &EventId| self.pdu_with(id, overlay).ok().flatten();
        let resolved = match &rules.state_res {
            StateResolutionVersion::V2(v2) => {
                let mut chains = Vec::with_capacity(maps.len());
                for map in &maps {
                    chains.push(self.auth_chain(map.values(), overlay)?);
                }
                state_res::resolve(
                    &rules.authorization,
                    v2,
                    maps.iter(),
                    chains,
                    fetch,
                    |conflicted: &StateMap<Vec<OwnedEventId>>| self.conflicted_subgraph(conflicted, overlay).ok(),
                )
                .map_err(|e| RoomError::Resolution(e.to_string()))?
            }
            _ => super::resolve_v1::resolve(&rules.authorization, &maps, fetch)
                .map_err(|e| RoomError::Resolution(e.to_string()))?,
        };
        let mut full = Vec::with_capacity(resolved.len());
        for (skey, event_id) in resolved {
            let (Some(ssk), Some(ev)) = (key_of.get(&skey), short_of.get(&event_id)) else {
                return Err(RoomError::Resolution(format!("resolved to unknown event {event_id}")));
            };
            full.push((*ssk, *ev));
        }
        full.sort_unstable();
        metrics::histogram!("myelin_rooms_state_resolution_seconds").record(started.elapsed().as_secs_f64());
        Ok(StateRef::Full(Arc::new(full)))
    }

    fn pdu_with(&self, id: &EventId, overlay: &Overlay) -> Result<Option<ArcPdu>, RoomError> {
        if let Some((_, pdu)) = &overlay.event
            && pdu.event_id == id
        {
            return Ok(Some(pdu.clone()));
        }
        self.pdu(id)
    }

    /// The union of the auth chains of `events` (their auth events, recursively; not the events themselves).
    pub(super) fn auth_chain<'a>(
        &self,
        events: impl Iterator<Item = &'a OwnedEventId>,
        overlay: &Overlay,
    ) -> Result<EventIdSet<OwnedEventId>, RoomError> {
        let mut chain = EventIdSet::new();
        let mut todo: Vec<OwnedEventId> = Vec::new();
        for id in events {
            let pdu = self.pdu_with(id, overlay)?.ok_or_else(|| RoomError::UnknownEvent(id.to_string()))?;
            todo.extend(pdu.auth_events.iter().cloned());
        }
        while let Some(id) = todo.pop() {
            if chain.contains(&id) {
                continue;
            }
            let pdu = self.pdu_with(&id, overlay)?.ok_or_else(|| RoomError::UnknownEvent(id.to_string()))?;
            todo.extend(pdu.auth_events.iter().filter(|a| !chain.contains(a)).cloned());
            chain.insert(id);
        }
        Ok(chain)
    }

    /// Events on an auth path between two conflicted state events (v2.1):
    /// ancestors of some conflicted event that have a conflicted event as ancestor-or-self.
    fn conflicted_subgraph(
        &self,
        conflicted: &StateMap<Vec<OwnedEventId>>,
        overlay: &Overlay,
    ) -> Result<EventIdSet<OwnedEventId>, RoomError> {
        let conflicted_ids: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        // Every event reachable from a conflicted event through auth_events (self included).
        let mut reachable: HashSet<OwnedEventId> = HashSet::new();
        let mut todo: Vec<OwnedEventId> = conflicted_ids.iter().cloned().collect();
        while let Some(id) = todo.pop() {
            if !reachable.insert(id.clone()) {
                continue;
            }
            if let Some(pdu) = self.pdu_with(&id, overlay)? {
                todo.extend(pdu.auth_events.iter().cloned());
            }
        }
        // Which of those reach a conflicted event (memoised depth-first search).
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        for id in &reachable {
            self.reaches_conflicted(id, &conflicted_ids, &mut reaches, overlay)?;
        }
        Ok(reaches.into_iter().filter(|(_, r)| *r).map(|(id, _)| id).collect())
    }

    fn reaches_conflicted(
        &self,
        start: &OwnedEventId,
        conflicted: &HashSet<OwnedEventId>,
        memo: &mut HashMap<OwnedEventId, bool>,
        overlay: &Overlay,
    ) -> Result<bool, RoomError> {
        // Iterative post-order walk, so deep auth chains cannot overflow the stack.
        let mut stack: Vec<(OwnedEventId, bool)> = vec![(start.clone(), false)];
        // Guards against cycles, which only crafted v1/v2 events could form.
        let mut visiting: HashSet<OwnedEventId> = HashSet::new();
        while let Some((id, expanded)) = stack.pop() {
            if memo.contains_key(&id) || (!expanded && !visiting.insert(id.clone())) {
                continue;
            }
            let pdu = self.pdu_with(&id, overlay)?;
            let parents: Vec<OwnedEventId> = pdu.map(|p| p.auth_events.clone()).unwrap_or_default();
            if expanded {
                let hit = conflicted.contains(&id) || parents.iter().any(|p| memo.get(p).copied().unwrap_or(false));
                memo.insert(id, hit);
            } else {
                stack.push((id.clone(), true));
                for p in parents {
                    if !memo.contains_key(&p) {
                        stack.push((p, false));
                    }
                }
            }
        }
        Ok(memo.get(start).copied().unwrap_or(false))
    }
}
