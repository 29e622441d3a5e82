//! State resolution v1 on small forked rooms: the order of the passes, the
//! sort orders, and the authorization "in R" that decides each step.

use std::{collections::HashMap, sync::Arc};

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomVersionId, events::StateEventType, state_res::StateMap};
use serde_json::{Value as JsonValue, json};

use super::{ArcPdu, Pdu, resolve_v1};

/// Events of one version 1 room, by id.
#[derive(Default)]
struct Room {
    events: HashMap<OwnedEventId, ArcPdu>,
}

impl Room {
    /// Adds a state event; returns its id.
    fn state(&mut self, id: &str, kind: &str, key: &str, sender: &str, content: JsonValue, depth: u64) -> OwnedEventId {
        let object: CanonicalJsonObject = serde_json::from_value(json!({
            "event_id": format!("${id}:x.test"),
            "room_id": "!r:x.test",
            "type": kind,
            "state_key": key,
            "sender": sender,
            "origin": "x.test",
            "origin_server_ts": 1_000 + depth,
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": depth,
            "hashes": { "sha256": "x" },
            "signatures": {},
        }))
        .unwrap();
        let pdu = Pdu::from_object(object, &RoomVersionId::V1.rules().unwrap()).unwrap();
        let id = pdu.event_id.clone();
        self.events.insert(id.clone(), Arc::new(pdu));
        id
    }

    /// A room created by @a with @m (power 50) and @u (power 0) joined; its state.
    fn base(&mut self) -> StateMap<OwnedEventId> {
        let mut s = StateMap::new();
        let create = self.state("create", "m.room.create", "", "@a:x.test", json!({ "creator": "@a:x.test" }), 1);
        s.insert((StateEventType::RoomCreate, String::new()), create);
        let ja = self.state("ja", "m.room.member", "@a:x.test", "@a:x.test", json!({ "membership": "join" }), 2);
        s.insert((StateEventType::RoomMember, "@a:x.test".into()), ja);
        let pl = self.state("pl0", "m.room.power_levels", "", "@a:x.test", power(50), 3);
        s.insert((StateEventType::RoomPowerLevels, String::new()), pl);
        let jr = self.state("jr", "m.room.join_rules", "", "@a:x.test", json!({ "join_rule": "public" }), 4);
        s.insert((StateEventType::RoomJoinRules, String::new()), jr);
        for (id, user) in [("jm", "@m:x.test"), ("ju", "@u:x.test")] {
            let j = self.state(id, "m.room.member", user, user, json!({ "membership": "join" }), 5);
            s.insert((StateEventType::RoomMember, user.into()), j);
        }
        s
    }

    fn resolve(&self, states: &[StateMap<OwnedEventId>]) -> StateMap<OwnedEventId> {
        let rules = RoomVersionId::V1.rules().unwrap();
        resolve_v1::resolve(&rules.authorization, states, |id: &EventId| self.events.get(id).cloned()).unwrap()
    }
}

/// Power levels with @a at 100 and @m at `m`; state, bans and kicks need 50.
fn power(m: i64) -> JsonValue {
    json!({
        "users": { "@a:x.test": 100, "@m:x.test": m },
        "users_default": 0, "state_default": 50, "events_default": 0,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0, "events": {},
    })
}

fn with(base: &StateMap<OwnedEventId>, kind: StateEventType, key: &str, id: &OwnedEventId) -> StateMap<OwnedEventId> {
    let mut s = base.clone();
    s.insert((kind, key.to_owned()), id.clone());
    s
}

fn sha1_hex(id: &OwnedEventId) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, id.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

const PL: StateEventType = StateEventType::RoomPowerLevels;

#[test]
fn a_later_power_levels_event_wins_only_if_the_earlier_one_allows_it() {
    let mut room = Room::default();
    let base = room.base();
    // One branch: @a demotes @m to 0 (depth 6). The other: @m, still at 50 there,
    // changes power levels (depth 7), which the demotion no longer allows.
    let demote = room.state("demote", "m.room.power_levels", "", "@a:x.test", power(0), 6);
    let by_m = room.state("by_m", "m.room.power_levels", "", "@m:x.test", power(50), 7);
    let got = room.resolve(&[with(&base, PL, "", &demote), with(&base, PL, "", &by_m)]);
    assert_eq!(got[&(PL, String::new())], demote, "by_m is not allowed in R holding the demotion");

    // The same fork with @a's change at depth 7: allowed after the demotion, so it wins.
    let by_a = room.state("by_a", "m.room.power_levels", "", "@a:x.test", power(25), 7);
    let got = room.resolve(&[with(&base, PL, "", &by_a), with(&base, PL, "", &demote)]);
    assert_eq!(got[&(PL, String::new())], by_a, "ascending depth: the later one, allowed, replaces the first");
}

#[test]
fn member_conflicts_are_resolved_against_the_resolved_power_levels() {
    let mut room = Room::default();
    let base = room.base();
    let demote = room.state("demote", "m.room.power_levels", "", "@a:x.test", power(0), 6);
    // In the other branch @m (power 50 there) bans @u.
    let ban = room.state("ban", "m.room.member", "@u:x.test", "@m:x.test", json!({ "membership": "ban" }), 7);
    let member = (StateEventType::RoomMember, "@u:x.test".to_owned());
    let got = room.resolve(&[with(&base, PL, "", &demote), with(&base, StateEventType::RoomMember, "@u:x.test", &ban)]);
    assert_eq!(got[&member], base[&member], "the ban is not allowed once the demotion is resolved");
    // Keys only one state holds differently are conflicts; the rest is kept as it was.
    assert_eq!(got[&(PL, String::new())], demote);
    assert_eq!(
        got[&(StateEventType::RoomJoinRules, String::new())],
        base[&(StateEventType::RoomJoinRules, String::new())]
    );

    // Without the demotion the ban stands.
    let got = room.resolve(&[base.clone(), with(&base, StateEventType::RoomMember, "@u:x.test", &ban)]);
    assert_eq!(got[&member], ban);
}

#[test]
fn other_conflicts_take_the_highest_depth_that_passes_then_the_lowest_sha1() {
    let mut room = Room::default();
    let base = room.base();
    let topic = (StateEventType::RoomTopic, String::new());
    // @u (power 0) may not set the topic: the deeper event loses to @a's.
    let by_u = room.state("t_u", "m.room.topic", "", "@u:x.test", json!({ "topic": "u" }), 9);
    let by_a = room.state("t_a", "m.room.topic", "", "@a:x.test", json!({ "topic": "a" }), 6);
    let got = room.resolve(&[
        with(&base, StateEventType::RoomTopic, "", &by_u),
        with(&base, StateEventType::RoomTopic, "", &by_a),
    ]);
    assert_eq!(got[&topic], by_a);

    // Two allowed at the same depth: the lower sha1(event_id).
    let one = room.state("t_1", "m.room.topic", "", "@a:x.test", json!({ "topic": "1" }), 8);
    let two = room.state("t_2", "m.room.topic", "", "@m:x.test", json!({ "topic": "2" }), 8);
    let deeper_but_refused = room.state("t_3", "m.room.topic", "", "@u:x.test", json!({ "topic": "3" }), 9);
    let want = if sha1_hex(&one) < sha1_hex(&two) { &one } else { &two };
    let got = room.resolve(&[
        with(&base, StateEventType::RoomTopic, "", &one),
        with(&base, StateEventType::RoomTopic, "", &two),
        with(&base, StateEventType::RoomTopic, "", &deeper_but_refused),
    ]);
    assert_eq!(&got[&topic], want);
}

#[test]
fn a_key_only_some_states_hold_is_not_a_conflict() {
    let mut room = Room::default();
    let base = room.base();
    let name = room.state("name", "m.room.name", "", "@u:x.test", json!({ "name": "n" }), 7);
    // @u could not set the name, but nothing conflicts with it, so it is kept unchecked.
    let got = room.resolve(&[base.clone(), with(&base, StateEventType::RoomName, "", &name)]);
    assert_eq!(got[&(StateEventType::RoomName, String::new())], name);
    assert_eq!(got.len(), base.len() + 1);
}
