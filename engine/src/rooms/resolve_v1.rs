//! State resolution v1, the algorithm of room version 1.
//!
//! Room Version 1 §"State resolution": "The resolved state is built up in a
//! number of passes; here we use R to refer to the results of the resolution
//! so far. Start by setting R to the union of the states to be resolved,
//! excluding any conflicting events. First we resolve conflicts between
//! `m.room.power_levels` events. […] Sort the list by ascending depth then
//! descending sha1(event_id). Add the first event in the list to R. For each
//! subsequent event in the list, check that the event would be allowed by the
//! authorization rules for a room in state R. If the event would be allowed,
//! then update R with the event and continue with the next event in the list.
//! If it would not be allowed, stop […]. Repeat the above process for
//! conflicts between `m.room.join_rules` events. Repeat the above process for
//! conflicts between `m.room.member` events. […] for all other conflicts, just
//! pick the event with the highest depth and lowest sha1(event_id) that passes
//! authentication in R and add it to R."
//!
//! Where the text leaves a choice, this follows Synapse (the server most v1
//! rooms live on): a key that only some of the states hold is not a
//! conflict (its one value is kept); authorization "in R" means the
//! state-dependent auth rules against R (signatures and hashes were checked
//! when the events were received); and when no candidate for an ordinary key
//! passes, the last one in that order (the lowest depth) is taken. ruma
//! implements only v2, which is why this module exists (issue #27).

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::AuthorizationRules,
    state_res::{self, StateMap},
};

use super::ArcPdu;

/// A state key: the event type and the `state_key`.
type Key = (StateEventType, String);

/// Why a v1 resolution could not be made.
#[derive(Debug, thiserror::Error)]
#[error("state resolution v1: {0}")]
pub(super) struct ResolveV1Error(String);

/// sha1(event_id); its bytes order as its hex digest does.
fn sha1(id: &EventId) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, id.as_bytes()).as_ref().to_vec()
}

/// Resolves `states` (the states after each fork tip) in a version 1 room.
///
/// `fetch` yields a conflicting event by id; one that cannot be had is an error
/// (the caller holds every event of the states it resolves).
pub(super) fn resolve(
    rules: &AuthorizationRules,
    states: &[StateMap<OwnedEventId>],
    fetch: impl Fn(&EventId) -> Option<ArcPdu>,
) -> Result<StateMap<OwnedEventId>, ResolveV1Error> {
    let mut resolved: StateMap<OwnedEventId> = StateMap::new();
    // BTreeMap: the passes below visit keys in one order on every server.
    let mut conflicted: BTreeMap<Key, BTreeSet<OwnedEventId>> = BTreeMap::new();
    for state in states {
        for (key, id) in state {
            if let Some(ids) = conflicted.get_mut(key) {
                ids.insert(id.clone());
            } else if let Some(kept) = resolved.get(key) {
                if kept != id {
                    let ids = BTreeSet::from([kept.clone(), id.clone()]);
                    resolved.remove(key);
                    conflicted.insert(key.clone(), ids);
                }
            } else {
                resolved.insert(key.clone(), id.clone());
            }
        }
    }
    let load = |ids: &BTreeSet<OwnedEventId>| -> Result<Vec<ArcPdu>, ResolveV1Error> {
        ids.iter()
            .map(|id| fetch(id).ok_or_else(|| ResolveV1Error(format!("conflicting event {id} is not held"))))
            .collect()
    };
    let allowed = |event: &ArcPdu, state: &StateMap<OwnedEventId>| {
        state_res::check_state_dependent_auth_rules(rules, event.clone(), |kind: &StateEventType, key: &str| {
            state.get(&(kind.clone(), key.to_owned())).and_then(|id| fetch(id))
        })
        .is_ok()
    };
    // The three passes over the events that decide authorization, in the spec's order.
    for kind in [StateEventType::RoomPowerLevels, StateEventType::RoomJoinRules, StateEventType::RoomMember] {
        let keys: Vec<Key> = conflicted.keys().filter(|(k, _)| *k == kind).cloned().collect();
        for key in keys {
            let Some(ids) = conflicted.remove(&key) else { continue };
            let mut events = load(&ids)?;
            // Ascending depth, then descending sha1(event_id).
            events.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| sha1(&b.event_id).cmp(&sha1(&a.event_id))));
            let mut events = events.into_iter();
            let Some(first) = events.next() else { continue };
            resolved.insert(key.clone(), first.event_id.clone());
            for event in events {
                if !allowed(&event, &resolved) {
                    break;
                }
                resolved.insert(key.clone(), event.event_id.clone());
            }
        }
    }
    // Every other conflict: the highest depth, then lowest sha1, that R allows.
    for (key, ids) in std::mem::take(&mut conflicted) {
        let mut events = load(&ids)?;
        events.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| sha1(&a.event_id).cmp(&sha1(&b.event_id))));
        let pick = events.iter().find(|e| allowed(e, &resolved)).or_else(|| events.last());
        if let Some(pick) = pick {
            resolved.insert(key, pick.event_id.clone());
        }
    }
    Ok(resolved)
}
