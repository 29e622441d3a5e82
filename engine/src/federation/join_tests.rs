//! Joining a room through a hostile resident server (issue #26).
//!
//! The resident is a real engine (`resident.test`) holding the room; a
//! [`FakePeer`] serves its `make_join` template and a `send_join` answer the
//! test composes from the resident's state, with forged events the resident
//! signed slipped in. The joining server (`us.test`) pins the resident's key.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomVersionId, UserId,
    events::TimelineEventType, room_version_rules::RoomVersionRules,
};
use serde_json::{Value as JsonValue, json};

use super::{TransportError, tests::FakePeer};
use crate::{
    Config, Engine,
    rooms::{CreateRoom, NewEvent, Pdu, Preset},
};

fn user(id: &str) -> OwnedUserId {
    UserId::parse(id).unwrap()
}

fn rules() -> RoomVersionRules {
    RoomVersionId::V12.rules().unwrap()
}

fn member(user: &str, membership: &str) -> NewEvent {
    NewEvent::state(TimelineEventType::RoomMember, user, json!({ "membership": membership }))
}

fn json_of(p: &Pdu) -> JsonValue {
    serde_json::to_value(&*p.json).unwrap()
}

/// A public v12 room on `resident.test`, created by `@creator`, joined by `@mallory`.
struct Resident {
    engine: Arc<Engine>,
    room: OwnedRoomId,
    _dir: tempfile::TempDir,
}

impl Resident {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config { server_name: "resident.test".into(), data_dir: dir.path().join("data"), ..Config::default() };
        config.storage.cache_mb = 8;
        config.storage.wal_mb = 1;
        let engine = Engine::open(config).unwrap();
        let create =
            CreateRoom { version: Some(RoomVersionId::V12), preset: Some(Preset::PublicChat), ..Default::default() };
        let room = engine.rooms.create_room(&user("@creator:resident.test"), create).await.unwrap();
        let mallory = user("@mallory:resident.test");
        engine.rooms.send(&mallory, &room, member(mallory.as_str(), "join")).await.unwrap();
        Self { engine, room, _dir: dir }
    }

    /// An event of `sender` on the resident's head that the resident never
    /// stored, edited by `edit`, then hashed and signed by the resident.
    async fn forge(&self, sender: &str, event: NewEvent, edit: impl FnOnce(&mut CanonicalJsonObject)) -> Pdu {
        let mut object = self.engine.rooms.template(&user(sender), &self.room, event).await.unwrap();
        edit(&mut object);
        self.engine.keys.hash_and_sign_event(&mut object, &rules()).unwrap();
        Pdu::from_object(object, &rules()).unwrap()
    }

    /// `make_join` for `@alice:us.test`, as the resident answers it now.
    async fn make_join(&self) -> JsonValue {
        let alice = user("@alice:us.test");
        serde_json::to_value(
            super::serve::make_membership(&self.engine, "us.test", &self.room, &alice, "join", &["12".to_owned()])
                .await
                .unwrap(),
        )
        .unwrap()
    }

    /// A `send_join` answer: the resident's current state without the events
    /// `drop` names, plus `extra`; the auth chain of the honest state (and the
    /// honest state itself, so nothing a forged event cites is missing).
    fn send_join(&self, drop: &[&Pdu], extra: &[&Pdu]) -> JsonValue {
        let state = self.engine.rooms.current_state(&self.room).unwrap();
        let ids: Vec<_> = state.iter().map(|p| p.event_id.clone()).collect();
        let chain = self.engine.rooms.auth_chain_events(&ids).unwrap();
        let dropped = |p: &Pdu| drop.iter().any(|d| d.event_id == p.event_id);
        let answer_state: Vec<JsonValue> =
            state.iter().filter(|p| !dropped(p)).map(|p| json_of(p)).chain(extra.iter().map(|p| json_of(p))).collect();
        let answer_chain: Vec<JsonValue> = chain.iter().chain(state.iter()).map(|p| json_of(p)).collect();
        json!({ "origin": "resident.test", "state": answer_state, "auth_chain": answer_chain })
    }

    fn state_event(&self, kind: &str, key: &str) -> Arc<Pdu> {
        self.engine.rooms.state_event(&self.room, kind, key).unwrap().unwrap()
    }
}

/// `us.test`, pinning the resident's key, talking to `peer`.
fn joiner(dir: &std::path::Path, resident: &Resident, peer: Arc<FakePeer>) -> Arc<Engine> {
    let mut config = Config { server_name: "us.test".into(), data_dir: dir.join("data"), ..Config::default() };
    config.storage.cache_mb = 8;
    config.storage.wal_mb = 1;
    let keys = &resident.engine.keys;
    config.federation.trusted_keys.insert(
        "resident.test".into(),
        [(keys.key_id().to_owned(), keys.public_key_b64().to_owned())].into_iter().collect(),
    );
    let engine = Engine::open(config).unwrap();
    engine.federation.set_transport(peer);
    engine
}

/// A peer answering `make_join` with `template` and `send_join` with `answer`.
fn scripted(template: JsonValue, answer: JsonValue) -> Arc<FakePeer> {
    FakePeer::new(move |_, req| {
        if req.path_and_query.contains("/make_join/") {
            Ok((200, template.clone()))
        } else if req.path_and_query.contains("/send_join/") {
            Ok((200, answer.clone()))
        } else {
            Err(TransportError::Timeout)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_in_a_send_join_answer_is_rejected_and_the_room_state_is_the_honest_one() {
    let resident = Resident::start().await;
    let honest_levels = resident.state_event("m.room.power_levels", "");
    let mallory_join = resident.state_event("m.room.member", "@mallory:resident.test");
    // (a) Mallory, without power, raises herself to 100; her auth events are the real ones.
    let mut levels = honest_levels.content_value();
    levels["users"]["@mallory:resident.test"] = json!(100);
    let forged_levels =
        resident.forge("@mallory:resident.test", NewEvent::state("m.room.power_levels", "", levels), |_| {}).await;
    assert_eq!(forged_levels.auth_events.len(), 2, "power levels and Mallory's join: {:?}", forged_levels.auth_events);
    // (b) Eve's join cites an auth event that exists nowhere.
    let eve = "@eve:resident.test";
    let eve_join = resident
        .forge(eve, member(eve, "join"), |object| {
            let Some(CanonicalJsonValue::Array(auth)) = object.get_mut("auth_events") else { panic!() };
            auth.push(CanonicalJsonValue::String("$notanywhereAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()));
        })
        .await;
    // (b) Grace's join cites the forged power levels, a rejected event.
    let grace = "@grace:resident.test";
    let grace_join = resident
        .forge(grace, member(grace, "join"), |object| {
            let Some(CanonicalJsonValue::Array(auth)) = object.get_mut("auth_events") else { panic!() };
            for id in auth.iter_mut() {
                if *id == CanonicalJsonValue::String(honest_levels.event_id.to_string()) {
                    *id = CanonicalJsonValue::String(forged_levels.event_id.to_string());
                }
            }
        })
        .await;
    assert!(grace_join.auth_events.contains(&forged_levels.event_id));
    // (b) Mallory's leave, reported instead of her join, cites a missing auth event.
    let mallory = "@mallory:resident.test";
    let mallory_leave = resident
        .forge(mallory, member(mallory, "leave"), |object| {
            let Some(CanonicalJsonValue::Array(auth)) = object.get_mut("auth_events") else { panic!() };
            auth.push(CanonicalJsonValue::String("$notanywhereAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()));
        })
        .await;
    let answer =
        resident.send_join(&[&honest_levels, &mallory_join], &[&forged_levels, &eve_join, &grace_join, &mallory_leave]);
    let peer = scripted(resident.make_join().await, answer);
    let dir = tempfile::tempdir().unwrap();
    let engine = joiner(dir.path(), &resident, peer.clone());
    let alice = user("@alice:us.test");
    super::membership::join_remote(&engine, &alice, &resident.room, &["resident.test".to_owned()]).await.unwrap();

    let state = |kind: &str, key: &str| engine.rooms.state_event(&resident.room, kind, key).unwrap();
    let levels = state("m.room.power_levels", "").expect("the room has power levels");
    assert_eq!(levels.event_id, honest_levels.event_id, "the power levels are the honest ones");
    assert_eq!(
        state("m.room.member", mallory).unwrap().event_id,
        mallory_join.event_id,
        "the unverifiable leave falls back to the join it replaced"
    );
    assert!(state("m.room.member", eve).is_none(), "a join with a missing auth event is not in the state");
    assert!(state("m.room.member", grace).is_none(), "a join citing a rejected event is not in the state");
    assert_eq!(
        state("m.room.member", alice.as_str()).unwrap().content_value()["membership"],
        "join",
        "our join went through against the honest state"
    );
    let current: Vec<_> =
        engine.rooms.current_state(&resident.room).unwrap().iter().map(|p| p.event_id.clone()).collect();
    for forged in [&forged_levels, &eve_join, &grace_join, &mallory_leave] {
        assert!(!current.contains(&forged.event_id), "{} is in the state", forged.event_id);
    }
    // The forged events the chain could be checked for are kept, flagged rejected.
    let flags = |p: &Pdu| engine.rooms.meta(&p.event_id).unwrap().map(|m| m.flags);
    assert_eq!(flags(&forged_levels), Some(crate::rooms::tables::OUTLIER | crate::rooms::tables::REJECTED));
    assert_eq!(flags(&grace_join), Some(crate::rooms::tables::OUTLIER | crate::rooms::tables::REJECTED));
    assert_eq!(flags(&eve_join), None, "an event whose auth events are missing is not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_returned_state_forbids_leaves_nothing_and_a_retry_through_an_honest_resident_succeeds() {
    let resident = Resident::start().await;
    // The honest answers, before the ban.
    let honest_template = resident.make_join().await;
    let honest_answer = resident.send_join(&[], &[]);
    // The lying answers: the state where Alice is banned (a valid ban by the creator).
    let creator = user("@creator:resident.test");
    resident.engine.rooms.send(&creator, &resident.room, member("@alice:us.test", "ban")).await.unwrap();
    let banned_template = resident.make_join().await;
    let banned_answer = resident.send_join(&[], &[]);
    let honest = Arc::new(AtomicBool::new(false));
    let is_honest = honest.clone();
    let peer = FakePeer::new(move |_, req| {
        let (template, answer) = if is_honest.load(Ordering::SeqCst) {
            (&honest_template, &honest_answer)
        } else {
            (&banned_template, &banned_answer)
        };
        if req.path_and_query.contains("/make_join/") {
            Ok((200, template.clone()))
        } else if req.path_and_query.contains("/send_join/") {
            Ok((200, answer.clone()))
        } else {
            Err(TransportError::Timeout)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = joiner(dir.path(), &resident, peer.clone());
    let alice = user("@alice:us.test");
    let servers = ["resident.test".to_owned()];
    let err = super::membership::join_remote(&engine, &alice, &resident.room, &servers).await.unwrap_err();
    assert!(err.to_string().contains("ban"), "the ban is the reason: {err}");
    assert!(engine.rooms.room_version(&resident.room).is_err(), "a failed join leaves the room unknown here");
    assert!(!engine.rooms.is_local_room(&resident.room));
    assert!(engine.rooms.membership(alice.as_str(), &resident.room).unwrap().is_none());
    // The same room through an honest answer: the join goes through.
    honest.store(true, Ordering::SeqCst);
    super::membership::join_remote(&engine, &alice, &resident.room, &servers).await.unwrap();
    let mine = engine.rooms.state_event(&resident.room, "m.room.member", alice.as_str()).unwrap().unwrap();
    assert_eq!(mine.content_value()["membership"], "join");
    assert_eq!(engine.rooms.membership(alice.as_str(), &resident.room).unwrap().unwrap().membership, "join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_resident_sent_while_we_joined_is_kept_and_visible_after_the_join() {
    let resident = Resident::start().await;
    let template = resident.make_join().await;
    let answer = resident.send_join(&[], &[]);
    // While our join is under way, Mallory speaks on the head our join also builds on.
    let mallory = user("@mallory:resident.test");
    let body = json!({ "msgtype": "m.text", "body": "said while you joined" });
    let said =
        resident.engine.rooms.send(&mallory, &resident.room, NewEvent::message("m.room.message", body)).await.unwrap();
    let head = said.prev_events.clone();
    assert_eq!(template["event"]["prev_events"], json!(head), "both build on the same head");
    // The resident answers /state_ids at that head as it holds it.
    let at = resident.engine.rooms.meta(&head[0]).unwrap().unwrap();
    let state = resident.engine.rooms.state_at(at.state_before).unwrap();
    let ids: Vec<_> = state.iter().map(|p| p.event_id.clone()).collect();
    let chain = resident.engine.rooms.auth_chain_events(&ids).unwrap();
    let state_ids = json!({
        "pdu_ids": ids,
        "auth_chain_ids": chain.iter().map(|p| p.event_id.clone()).collect::<Vec<_>>(),
    });
    let peer = FakePeer::new(move |_, req| {
        let path = &req.path_and_query;
        if path.contains("/make_join/") {
            Ok((200, template.clone()))
        } else if path.contains("/send_join/") {
            Ok((200, answer.clone()))
        } else if path.contains("/state_ids/") {
            Ok((200, state_ids.clone()))
        } else {
            Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = joiner(dir.path(), &resident, peer.clone());
    let alice = user("@alice:us.test");
    super::membership::join_remote(&engine, &alice, &resident.room, &["resident.test".to_owned()]).await.unwrap();
    // The message arrives after our join; its prev event is an outlier of the join's state.
    let pdus = vec![json_of(&said)];
    let answer = super::inbound::receive_transaction(
        &engine,
        "resident.test",
        "t1",
        super::inbound::Transaction { pdus, edus: Vec::new() },
    )
    .await
    .unwrap();
    let answer: JsonValue = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["pdus"][said.event_id.as_str()], json!({}), "{answer}");
    let meta = engine.rooms.meta(&said.event_id).unwrap().unwrap();
    assert!(meta.count > 0 && meta.flags == 0, "the message is in our timeline: {meta:?}");
}
