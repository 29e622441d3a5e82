//! Rooms engine tests: real RocksDB in a temp dir, our real signing key.

use std::sync::Arc;

use myelin_storage::{Db, Direction, StorageOptions, StreamCounter};
use ruma::{OwnedUserId, RoomId, RoomVersionId, UserId, events::TimelineEventType};
use serde_json::json;

use super::*;
use crate::keys::ServerKeys;

struct Fixture {
    dir: tempfile::TempDir,
    db: Arc<Db>,
    keys: Arc<ServerKeys>,
    rooms: Rooms,
}

fn open_in(dir: tempfile::TempDir) -> Fixture {
    let db = Db::open(&dir.path().join("db"), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap();
    let keys = Arc::new(ServerKeys::load_or_generate(dir.path(), "test".try_into().unwrap()).unwrap());
    let stream = StreamCounter::load(&db, "stream").unwrap();
    let rooms = Rooms::open(db.clone(), "test".try_into().unwrap(), keys.clone(), stream).unwrap();
    Fixture { dir, db, keys, rooms }
}

fn fixture() -> Fixture {
    open_in(tempfile::tempdir().unwrap())
}

fn reopen(f: Fixture) -> Fixture {
    let Fixture { dir, db, rooms, keys } = f;
    drop(rooms);
    drop(keys);
    db.shutdown();
    drop(db);
    open_in(dir)
}

fn user(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:test")).unwrap()
}

fn member_of(target: &UserId, state: &str) -> NewEvent {
    NewEvent::state(TimelineEventType::RoomMember, target.as_str(), json!({ "membership": state }))
}

fn join(u: &UserId) -> NewEvent {
    member_of(u, "join")
}

fn message(body: &str) -> NewEvent {
    NewEvent::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": body }))
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, RoomError>) -> String {
    match r {
        Err(RoomError::Forbidden(m)) => m,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

async fn public_room(f: &Fixture, version: RoomVersionId) -> ruma::OwnedRoomId {
    f.rooms
        .create_room(
            &user("alice"),
            CreateRoom { version: Some(version), preset: Some(Preset::PublicChat), ..Default::default() },
        )
        .await
        .unwrap()
}

async fn room_with_join_rule(f: &Fixture, rule: serde_json::Value) -> ruma::OwnedRoomId {
    let initial_state = vec![NewEvent::state(TimelineEventType::RoomJoinRules, "", rule)];
    f.rooms.create_room(&user("alice"), CreateRoom { initial_state, ..Default::default() }).await.unwrap()
}

#[tokio::test]
async fn creating_rooms_in_v10_v11_v12_yields_the_spec_sequence() {
    let f = fixture();
    for version in [RoomVersionId::V1, RoomVersionId::V2, RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let alice = user("alice");
        let room = f
            .rooms
            .create_room(
                &alice,
                CreateRoom {
                    version: Some(version.clone()),
                    preset: Some(Preset::PrivateChat),
                    name: Some("Ops".into()),
                    topic: Some("incidents".into()),
                    invite: vec![user("bob")],
                    is_direct: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let timeline = f.rooms.timeline(&room, None, Direction::Forward, 100).unwrap();
        let kinds: Vec<String> = timeline.iter().map(|(_, p)| p.kind.to_string()).collect();
        assert_eq!(
            kinds,
            [
                "m.room.create",
                "m.room.member",
                "m.room.power_levels",
                "m.room.join_rules",
                "m.room.history_visibility",
                "m.room.guest_access",
                "m.room.name",
                "m.room.topic",
                "m.room.member"
            ],
            "room version {version}"
        );
        let create = &timeline[0].1;
        if version == RoomVersionId::V12 {
            assert_eq!(room.as_str(), format!("!{}", &create.event_id.as_str()[1..]), "v12 room id is the create hash");
            assert!(!create.json.contains_key("room_id"));
        } else {
            assert!(room.as_str().ends_with(":test"));
        }
        let pl = f.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content_value();
        let creator_listed = pl["users"].get(alice.as_str()).is_some();
        assert_eq!(creator_listed, version != RoomVersionId::V12, "v12 creators are privileged, not listed");
        let invite = f.rooms.state_event(&room, "m.room.member", "@bob:test").unwrap().unwrap();
        assert_eq!(invite.content_value(), json!({ "membership": "invite", "is_direct": true }));
        // Every event is hashed and signed by us and verifies.
        let rules = version.rules().unwrap();
        for (_, pdu) in &timeline {
            let verified = ruma::signatures::verify_event(&f.keys.public_key_map(), &pdu.json, &rules).unwrap();
            assert_eq!(verified, ruma::signatures::Verified::All);
            assert_eq!(pdu::event_id_of(&pdu.json, &rules).unwrap(), pdu.event_id);
        }
        assert_eq!(f.rooms.current_state(&room).unwrap().len(), 9);
    }
}

#[tokio::test]
async fn creating_in_an_unsupported_version_is_refused() {
    let f = fixture();
    let r = f
        .rooms
        .create_room(
            &user("alice"),
            CreateRoom { version: Some(RoomVersionId::try_from("org.example.99").unwrap()), ..Default::default() },
        )
        .await;
    assert!(matches!(r, Err(RoomError::UnsupportedVersion(_))));
    let r = f.rooms.create_room(&UserId::parse("@mallory:elsewhere").unwrap(), CreateRoom::default()).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn power_levels_gate_state_events() {
    let f = fixture();
    for version in [RoomVersionId::V10, RoomVersionId::V12] {
        let room = public_room(&f, version).await;
        let (alice, bob) = (user("alice"), user("bob"));
        f.rooms.send(&bob, &room, join(&bob)).await.unwrap();
        let name = NewEvent::state(TimelineEventType::RoomName, "", json!({ "name": "bob's" }));
        forbidden(f.rooms.send(&bob, &room, name.clone()).await);
        let mut pl = f.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content_value();
        pl["users"][bob.as_str()] = json!(50);
        f.rooms.send(&alice, &room, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl)).await.unwrap();
        f.rooms.send(&bob, &room, name).await.unwrap();
        // 50 is not enough for power levels (100).
        let mut pl = f.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content_value();
        pl["users"][bob.as_str()] = json!(100);
        forbidden(f.rooms.send(&bob, &room, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl)).await);
        // Messages need membership.
        forbidden(f.rooms.send(&user("carol"), &room, message("hi")).await);
        f.rooms.send(&bob, &room, message("hi")).await.unwrap();
    }
}

/// A message's authorization remembered for one state is not used once the
/// state changes: a higher level for messages, a kick.
#[tokio::test]
async fn a_remembered_message_authorization_ends_with_its_state() {
    let f = fixture();
    let room = public_room(&f, RoomVersionId::V12).await;
    let (alice, bob) = (user("alice"), user("bob"));
    f.rooms.send(&bob, &room, join(&bob)).await.unwrap();
    f.rooms.send(&bob, &room, message("one")).await.unwrap();
    f.rooms.send(&bob, &room, message("two")).await.unwrap();
    assert!(!f.rooms.authorized.lock().is_empty(), "the outcome was remembered");
    let mut pl = f.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content_value();
    pl["events"]["m.room.message"] = json!(50);
    f.rooms.send(&alice, &room, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl.clone())).await.unwrap();
    forbidden(f.rooms.send(&bob, &room, message("three")).await);
    pl["users"][bob.as_str()] = json!(50);
    f.rooms.send(&alice, &room, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl)).await.unwrap();
    f.rooms.send(&bob, &room, message("four")).await.unwrap();
    f.rooms.send(&alice, &room, member_of(&bob, "leave")).await.unwrap();
    forbidden(f.rooms.send(&bob, &room, message("five")).await);
}

#[tokio::test]
async fn banned_user_cannot_rejoin_and_kicks_need_power() {
    let f = fixture();
    let room = public_room(&f, RoomVersionId::V11).await;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    f.rooms.send(&bob, &room, join(&bob)).await.unwrap();
    f.rooms.send(&carol, &room, join(&carol)).await.unwrap();
    forbidden(f.rooms.send(&bob, &room, member_of(&carol, "leave")).await);
    f.rooms.send(&alice, &room, member_of(&bob, "ban")).await.unwrap();
    forbidden(f.rooms.send(&bob, &room, join(&bob)).await);
    forbidden(f.rooms.send(&bob, &room, message("still here?")).await);
    f.rooms.send(&alice, &room, member_of(&bob, "leave")).await.unwrap();
    f.rooms.send(&bob, &room, join(&bob)).await.unwrap();
}

#[tokio::test]
async fn join_rules_public_invite_knock_restricted() {
    let f = fixture();
    let (alice, bob) = (user("alice"), user("bob"));
    // invite-only
    let private = f.rooms.create_room(&alice, CreateRoom::default()).await.unwrap();
    forbidden(f.rooms.send(&bob, &private, join(&bob)).await);
    f.rooms.send(&alice, &private, member_of(&bob, "invite")).await.unwrap();
    f.rooms.send(&bob, &private, join(&bob)).await.unwrap();
    // an invited user may decline
    let carol = user("carol");
    f.rooms.send(&alice, &private, member_of(&carol, "invite")).await.unwrap();
    f.rooms.send(&carol, &private, member_of(&carol, "leave")).await.unwrap();
    forbidden(f.rooms.send(&carol, &private, join(&carol)).await);

    // knock
    let knock_room = room_with_join_rule(&f, json!({ "join_rule": "knock" })).await;
    let dave = user("dave");
    forbidden(f.rooms.send(&dave, &knock_room, join(&dave)).await);
    f.rooms.send(&dave, &knock_room, member_of(&dave, "knock")).await.unwrap();
    forbidden(f.rooms.send(&dave, &private, member_of(&dave, "knock")).await);

    // restricted: only members of the allowed room may join (authorised by a member with invite power)
    let allowed = public_room(&f, RoomVersionId::V12).await;
    let restricted = room_with_join_rule(
        &f,
        json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": allowed }] }),
    )
    .await;
    let erin = user("erin");
    forbidden(f.rooms.send(&erin, &restricted, join(&erin)).await);
    let via = NewEvent::state(
        TimelineEventType::RoomMember,
        erin.as_str(),
        json!({ "membership": "join", "join_authorised_via_users_server": alice }),
    );
    f.rooms.send(&erin, &restricted, via).await.unwrap();
}

#[tokio::test]
async fn redaction_follows_the_room_version() {
    // (version, field kept?) for fields whose fate changed across versions.
    let member_via = json!({ "membership": "join", "join_authorised_via_users_server": "@a:test", "displayname": "A" });
    let create_extra = json!({ "room_version": "x", "m.federate": true, "extra": 1 });
    let pl = json!({ "ban": 50, "invite": 0, "users": {}, "extra": 1 });
    let cases: &[(RoomVersionId, bool, bool, bool)] = &[
        // version, keeps join_authorised_via_users_server, keeps all create content, keeps PL invite
        (RoomVersionId::V6, false, false, false),
        (RoomVersionId::V8, false, false, false),
        (RoomVersionId::V9, true, false, false),
        (RoomVersionId::V10, true, false, false),
        (RoomVersionId::V11, true, true, true),
        (RoomVersionId::V12, true, true, true),
    ];
    for (version, keeps_via, keeps_create, keeps_invite) in cases {
        let rules = version.rules().unwrap();
        let redact = |kind: &str, content: &serde_json::Value| {
            let object: ruma::CanonicalJsonObject = serde_json::from_value(json!({
                "type": kind, "room_id": "!r:test", "sender": "@a:test", "content": content,
                "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [], "state_key": "",
                "hashes": { "sha256": "x" }, "signatures": {}, "unsigned": { "age": 1 }
            }))
            .unwrap();
            let pdu = Pdu::parse("$x".try_into().unwrap(), object, &rules).unwrap();
            serde_json::to_value(pdu.redacted_json(&rules).unwrap()).unwrap()
        };
        let m = redact("m.room.member", &member_via);
        assert_eq!(m["content"].get("join_authorised_via_users_server").is_some(), *keeps_via, "{version}");
        assert!(m["content"].get("displayname").is_none(), "{version}");
        assert!(m.get("unsigned").is_none(), "{version}");
        let c = redact("m.room.create", &create_extra);
        assert_eq!(c["content"].get("extra").is_some(), *keeps_create, "{version}");
        let p = redact("m.room.power_levels", &pl);
        assert_eq!(p["content"].get("invite").is_some(), *keeps_invite, "{version}");
        assert!(p["content"].get("extra").is_none() && p["content"].get("ban").is_some(), "{version}");
        let msg = redact("m.room.message", &json!({ "body": "secret" }));
        assert_eq!(msg["content"], json!({}), "{version}");
    }
}

#[test]
fn event_ids_are_the_reference_hash_with_the_versions_alphabet() {
    // An independent computation: SHA-256 over the redacted event minus signatures/unsigned.
    use base64::Engine as _;
    let object: ruma::CanonicalJsonObject = serde_json::from_value(json!({
        "type": "m.room.message", "room_id": "!r:test", "sender": "@a:test",
        "content": { "body": "this content is not part of the reference hash" },
        "origin_server_ts": 1, "depth": 2, "prev_events": ["$p"], "auth_events": ["$a"],
        "hashes": { "sha256": "abc" }, "signatures": { "test": { "ed25519:x": "sig" } },
        "unsigned": { "age": 5 }
    }))
    .unwrap();
    let mut essential = object.clone();
    essential.remove("signatures");
    essential.remove("unsigned");
    essential.insert("content".into(), ruma::CanonicalJsonValue::Object(Default::default()));
    let canonical = ruma::CanonicalJsonValue::Object(essential).to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    for (version, engine) in [
        (RoomVersionId::V3, base64::engine::general_purpose::STANDARD_NO_PAD),
        (RoomVersionId::V4, base64::engine::general_purpose::URL_SAFE_NO_PAD),
        (RoomVersionId::V11, base64::engine::general_purpose::URL_SAFE_NO_PAD),
    ] {
        let rules = version.rules().unwrap();
        let id = pdu::event_id_of(&object, &rules).unwrap();
        assert_eq!(id.as_str(), format!("${}", engine.encode(digest.as_ref())), "{version}");
    }
    // v1/v2 take the id from the event.
    let mut v1 = object.clone();
    v1.insert("event_id".into(), ruma::CanonicalJsonValue::String("$abc:test".into()));
    assert_eq!(pdu::event_id_of(&v1, &RoomVersionId::V1.rules().unwrap()).unwrap().as_str(), "$abc:test");
    assert!(pdu::event_id_of(&object, &RoomVersionId::V2.rules().unwrap()).is_err());
}

#[tokio::test]
async fn a_fork_with_conflicting_power_levels_resolves_by_the_versions_algorithm() {
    for version in [RoomVersionId::V1, RoomVersionId::V2, RoomVersionId::V10, RoomVersionId::V12] {
        let f = fixture();
        let room = public_room(&f, version.clone()).await;
        let (alice, bob) = (user("alice"), user("bob"));
        f.rooms.send(&bob, &room, join(&bob)).await.unwrap();
        let mut pl = f.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content_value();
        pl["users"][bob.as_str()] = json!(50);
        let promote = f
            .rooms
            .send(&alice, &room, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl.clone()))
            .await
            .unwrap();
        let fork_point = vec![promote.event_id.clone()];

        // Branch A: alice demotes bob. Branch B, concurrently: bob (still 50 there) sets the topic.
        let mut demoted = pl.clone();
        demoted["users"][bob.as_str()] = json!(0);
        let a = f
            .rooms
            .send_at(
                &alice,
                &room,
                NewEvent::state(TimelineEventType::RoomPowerLevels, "", demoted),
                fork_point.clone(),
            )
            .await
            .unwrap();
        let topic = NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": "bob was here" }));
        let b = f.rooms.send_at(&bob, &room, topic, fork_point).await.unwrap();
        let mut ext = f.rooms.extremities(&room).unwrap();
        ext.sort();
        let mut want = vec![a.event_id.clone(), b.event_id.clone()];
        want.sort();
        assert_eq!(ext, want, "{version}: two forward extremities");

        // The resolved state: alice's power levels win. From v2 bob's topic fails
        // against them; v1 resolves only conflicts, and nothing conflicts with the
        // topic, so it stays (the state reset v2 was made to fix).
        let current_pl = f.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap();
        assert_eq!(current_pl.event_id, a.event_id, "{version}");
        let topic = f.rooms.state_event(&room, "m.room.topic", "").unwrap().map(|t| t.event_id.clone());
        if version == RoomVersionId::V1 {
            assert_eq!(topic, Some(b.event_id.clone()), "v1 keeps the unconflicted topic");
        } else {
            assert!(topic.is_none(), "{version}: bob's topic must lose");
        }

        // Bob is now powerless; alice's next event merges the fork.
        forbidden(
            f.rooms
                .send(&bob, &room, NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": "again" })))
                .await,
        );
        let merge = f.rooms.send(&alice, &room, message("merged")).await.unwrap();
        assert_eq!(merge.prev_events.len(), 2, "{version}");
        assert_eq!(f.rooms.extremities(&room).unwrap(), vec![merge.event_id.clone()]);
    }
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let f = fixture();
    let room = public_room(&f, RoomVersionId::V12).await;
    let bob = user("bob");
    f.rooms.send(&bob, &room, join(&bob)).await.unwrap();
    for i in 0..20 {
        f.rooms.send(&bob, &room, message(&format!("m{i}"))).await.unwrap();
    }
    let state: Vec<_> = f.rooms.current_state(&room).unwrap().iter().map(|p| p.event_id.clone()).collect();
    let ext = f.rooms.extremities(&room).unwrap();
    let timeline: Vec<_> = f.rooms.timeline(&room, None, Direction::Forward, 1000).unwrap();

    let f = reopen(f);
    let state2: Vec<_> = f.rooms.current_state(&room).unwrap().iter().map(|p| p.event_id.clone()).collect();
    assert_eq!(state, state2);
    assert_eq!(ext, f.rooms.extremities(&room).unwrap());
    let timeline2 = f.rooms.timeline(&room, None, Direction::Forward, 1000).unwrap();
    assert_eq!(timeline.len(), timeline2.len());
    for ((c1, p1), (c2, p2)) in timeline.iter().zip(&timeline2) {
        assert_eq!((c1, &p1.event_id), (c2, &p2.event_id));
    }
    // The head reloads and appends continue from the stored extremity.
    let next = f.rooms.send(&bob, &room, message("after restart")).await.unwrap();
    assert_eq!(next.prev_events, ext);
    assert!(f.rooms.meta(&next.event_id).unwrap().unwrap().count > timeline.last().unwrap().0);
}

#[tokio::test]
async fn timeline_pages_in_both_directions() {
    let f = fixture();
    let room = public_room(&f, RoomVersionId::V12).await;
    let alice = user("alice");
    for i in 0..10 {
        f.rooms.send(&alice, &room, message(&format!("m{i}"))).await.unwrap();
    }
    let latest = f.rooms.timeline(&room, None, Direction::Reverse, 3).unwrap();
    let bodies = |v: &[(i64, ArcPdu)]| -> Vec<String> {
        v.iter().map(|(_, p)| p.content_value()["body"].as_str().unwrap_or("").to_owned()).collect()
    };
    assert_eq!(bodies(&latest), ["m9", "m8", "m7"]);
    let older = f.rooms.timeline(&room, Some(latest[2].0), Direction::Reverse, 2).unwrap();
    assert_eq!(bodies(&older), ["m6", "m5"]);
    let newer = f.rooms.timeline(&room, Some(older[1].0), Direction::Forward, 2).unwrap();
    assert_eq!(bodies(&newer), ["m6", "m7"]);
}

#[tokio::test]
async fn events_for_remote_members_are_queued_per_destination() {
    let f = fixture();
    let room = public_room(&f, RoomVersionId::V12).await;
    let alice = user("alice");
    let remote = UserId::parse("@zoe:remote.example").unwrap();
    let invite = f.rooms.send(&alice, &room, member_of(&remote, "invite")).await.unwrap();
    let short_dest = f.rooms.servers.get(&*f.db, "remote.example").unwrap().expect("destination interned");
    let queued: Vec<_> =
        tables::OUTBOUND.prefix(&*f.db, &(short_dest,), Direction::Forward).unwrap().map(|r| r.unwrap()).collect();
    let short_invite = f.rooms.event_ids.get(&*f.db, invite.event_id.as_str()).unwrap().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1, tables::OutboundItem::Pdu(short_invite));
    // Nothing is queued for ourselves, and a plain message has no remote joined member to go to.
    assert!(f.rooms.servers.get(&*f.db, "test").unwrap().is_none());
    f.rooms.send(&alice, &room, message("local only")).await.unwrap();
    let after = tables::OUTBOUND.prefix(&*f.db, &(short_dest,), Direction::Forward).unwrap().count();
    assert_eq!(after, 1);
    let _: &RoomId = &room;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_room_build_on_each_other_before_they_are_durable() {
    let f = Arc::new(fixture());
    let room = public_room(&f, RoomVersionId::V12).await;
    // New members join and speak at once: each message is authorized against a
    // join whose batch may still be waiting for its group commit.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (f, room) = (f.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let u = user(&format!("u{i}"));
            f.rooms.send(&u, &room, join(&u)).await.unwrap();
            for j in 0..5 {
                f.rooms.send(&u, &room, message(&format!("{i}/{j}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(f.rooms.extremities(&room).unwrap().len(), 1, "one linear chain");
    let events = f.rooms.timeline(&room, None, Direction::Forward, 1000).unwrap();
    let bodies = events.iter().filter(|(_, p)| p.kind == TimelineEventType::RoomMessage).count();
    assert_eq!(bodies, 200);
    // Every event's prev event is the one before it in the timeline.
    for pair in events.windows(2) {
        assert_eq!(pair[1].1.prev_events, vec![pair[0].1.event_id.clone()]);
    }
    // And all of it survives a restart.
    let f = Arc::try_unwrap(f).ok().expect("tasks are done");
    let f = reopen(f);
    let again = f.rooms.timeline(&room, None, Direction::Forward, 1000).unwrap();
    assert_eq!(again.len(), events.len());
    assert!(f.rooms.unsettled.lock().is_empty(), "nothing left unsettled after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rooms_created_at_once_get_distinct_ids() {
    let f = Arc::new(fixture());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move { f.rooms.create_room(&user("alice"), CreateRoom::default()).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("every creation succeeds"));
    }
    assert_eq!(ids.len(), 10);
}
