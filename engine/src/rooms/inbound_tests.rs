//! Events from another server: verification, acceptance, rejection, soft-failure.

use myelin_storage::{Direction, StorageOptions, StreamCounter};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, RoomVersionId, UserId, events::TimelineEventType,
    signatures::Verified,
};
use serde_json::json;

use super::*;
use crate::keys::ServerKeys;

pub(super) struct Net {
    _dir: tempfile::TempDir,
    pub(super) rooms: Rooms,
    pub(super) remote: ServerKeys,
    db: Arc<Db>,
}

pub(super) fn net() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("db"), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap();
    let keys = Arc::new(ServerKeys::load_or_generate(dir.path(), "test".try_into().unwrap()).unwrap());
    let stream = StreamCounter::load(&db, "stream").unwrap();
    let rooms = Rooms::open(db.clone(), "test".try_into().unwrap(), keys, stream).unwrap();
    let remote = ServerKeys::from_seed("remote.example".try_into().unwrap(), "r1", &[7u8; 32]).unwrap();
    rooms.add_server_key("remote.example", remote.key_id(), remote.public_key_b64()).unwrap();
    Net { _dir: dir, rooms, remote, db }
}

pub(super) async fn public_room(n: &Net) -> OwnedRoomId {
    let alice = UserId::parse("@alice:test").unwrap();
    let req = CreateRoom { version: Some(RoomVersionId::V12), preset: Some(Preset::PublicChat), ..Default::default() };
    n.rooms.create_room(&alice, req).await.unwrap()
}

/// What the remote server would send: our template, signed by it.
pub(super) async fn remote_event(n: &Net, room: &OwnedRoomId, sender: &str, event: NewEvent) -> CanonicalJsonObject {
    let sender = UserId::parse(sender).unwrap();
    let mut object = n.rooms.template(&sender, room, event).await.unwrap();
    n.remote.hash_and_sign_event(&mut object, &RoomVersionId::V12.rules().unwrap()).unwrap();
    object
}

pub(super) fn parse(object: CanonicalJsonObject) -> Pdu {
    Pdu::from_object(object, &RoomVersionId::V12.rules().unwrap()).unwrap()
}

pub(super) fn join(user: &str) -> NewEvent {
    NewEvent::state(TimelineEventType::RoomMember, user, json!({ "membership": "join" }))
}

pub(super) fn text(body: &str) -> NewEvent {
    NewEvent::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": body }))
}

#[tokio::test]
async fn signatures_and_hashes_are_checked_before_anything_else() {
    let n = net();
    let room = public_room(&n).await;
    let rules = RoomVersionId::V12.rules().unwrap();
    let object = remote_event(&n, &room, "@zoe:remote.example", join("@zoe:remote.example")).await;
    assert_eq!(n.rooms.verify(&object, &rules).unwrap(), Verified::All);

    let mut tampered = object.clone();
    tampered.insert("content".into(), serde_json::from_value(json!({ "membership": "join", "x": 1 })).unwrap());
    assert_eq!(n.rooms.verify(&tampered, &rules).unwrap(), Verified::Signatures, "hash mismatch: redact");

    let mut forged = object.clone();
    forged.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(1u32.into()));
    assert!(n.rooms.verify(&forged, &rules).is_err(), "signature over changed essential fields must fail");

    let stranger = remote_event(&n, &room, "@zoe:unknown.example", join("@zoe:unknown.example")).await;
    assert!(n.rooms.verify(&stranger, &rules).is_err(), "no key for the sender's server");
}

#[tokio::test]
async fn a_remote_join_is_accepted_and_routes_our_next_events_there() {
    let n = net();
    let room = public_room(&n).await;
    let object = remote_event(&n, &room, "@zoe:remote.example", join("@zoe:remote.example")).await;
    let outcome = n.rooms.append_pdu(parse(object)).await.unwrap();
    let Appended::Accepted(joined) = outcome else { panic!("expected acceptance, got {outcome:?}") };
    assert_eq!(
        n.rooms.state_event(&room, "m.room.member", "@zoe:remote.example").unwrap().unwrap().event_id,
        joined.event_id
    );
    let dest = n.rooms.servers.get(&*n.db, "remote.example").unwrap();
    let queued = |n: &Net| match dest.or_else(|| n.rooms.servers.get(&*n.db, "remote.example").unwrap()) {
        Some(d) => OUTBOUND.prefix(&*n.db, &(d,), Direction::Forward).unwrap().count(),
        None => 0,
    };
    assert_eq!(queued(&n), 0, "the remote's own event is not sent back to it");
    let alice = UserId::parse("@alice:test").unwrap();
    n.rooms.send(&alice, &room, text("welcome")).await.unwrap();
    assert_eq!(queued(&n), 1, "our message goes to the server that joined");
}

#[tokio::test]
async fn an_unauthorized_remote_event_is_stored_as_rejected_and_never_shown() {
    let n = net();
    let room = public_room(&n).await;
    let before = n.rooms.extremities(&room).unwrap();
    let object = remote_event(&n, &room, "@yan:remote.example", text("I never joined")).await;
    let pdu = parse(object);
    let id = pdu.event_id.clone();
    let outcome = n.rooms.append_pdu(pdu).await.unwrap();
    assert!(matches!(outcome, Appended::Rejected(_)), "{outcome:?}");
    let meta = n.rooms.meta(&id).unwrap().unwrap();
    assert_eq!(meta.flags & REJECTED, REJECTED);
    assert_eq!(meta.count, 0);
    assert!(n.rooms.pdu(&id).unwrap().unwrap().rejected);
    assert!(n.rooms.timeline(&room, None, Direction::Forward, 100).unwrap().iter().all(|(_, p)| p.event_id != id));
    assert_eq!(n.rooms.extremities(&room).unwrap(), before);
}

#[tokio::test]
async fn an_event_allowed_by_its_past_but_not_the_present_is_soft_failed() {
    let n = net();
    let room = public_room(&n).await;
    let zoe = "@zoe:remote.example";
    let joined = remote_event(&n, &room, zoe, join(zoe)).await;
    assert!(matches!(n.rooms.append_pdu(parse(joined)).await.unwrap(), Appended::Accepted(_)));
    // Zoe's server prepares a message while she is still a member...
    let message = remote_event(&n, &room, zoe, text("sent before I saw the ban")).await;
    // ...and meanwhile alice bans her.
    let alice = UserId::parse("@alice:test").unwrap();
    let ban = NewEvent::state(TimelineEventType::RoomMember, zoe, json!({ "membership": "ban" }));
    let ban = n.rooms.send(&alice, &room, ban).await.unwrap();
    let pdu = parse(message);
    let id = pdu.event_id.clone();
    let outcome = n.rooms.append_pdu(pdu).await.unwrap();
    assert!(matches!(outcome, Appended::SoftFailed(_)), "{outcome:?}");
    let meta = n.rooms.meta(&id).unwrap().unwrap();
    assert_eq!(meta.flags & SOFT_FAILED, SOFT_FAILED);
    assert_ne!(meta.state_before, 0, "a soft-failed event keeps its place in the DAG");
    assert!(n.rooms.timeline(&room, None, Direction::Forward, 100).unwrap().iter().all(|(_, p)| p.event_id != id));
    assert_eq!(n.rooms.extremities(&room).unwrap(), vec![ban.event_id.clone()], "never an extremity");
    // The same event again is a duplicate, not a second copy.
    let again = parse(n.rooms.pdu(&id).unwrap().unwrap().json.as_ref().clone());
    assert!(matches!(n.rooms.append_pdu(again).await, Err(RoomError::InUse(_))));
}

#[tokio::test]
async fn outliers_are_stored_without_a_place_in_the_dag() {
    let n = net();
    let room = public_room(&n).await;
    let object = remote_event(&n, &room, "@zoe:remote.example", join("@zoe:remote.example")).await;
    let pdu = parse(object);
    let id = pdu.event_id.clone();
    n.rooms.store_outlier(pdu).await.unwrap();
    let meta = n.rooms.meta(&id).unwrap().unwrap();
    assert_eq!((meta.flags, meta.count, meta.state_before), (OUTLIER, 0, 0));
    assert!(n.rooms.state_event(&room, "m.room.member", "@zoe:remote.example").unwrap().is_none());
    assert_eq!(n.rooms.pdu(&id).unwrap().unwrap().event_id, id);
}

/// `joined_servers_now` follows a remote join and leave, whether it is read
/// from the room's loaded head or, while the room lock is held, from the copy
/// kept per state snapshot.
#[tokio::test]
async fn joined_servers_now_follows_joins_and_leaves_from_either_source() {
    let n = net();
    let room = public_room(&n).await;
    let servers = |n: &Net| {
        let mut s = n.rooms.joined_servers_now(&room).unwrap();
        s.sort();
        s
    };
    let busy = |n: &Net| {
        let lock = n.rooms.lock_of(&room);
        let _held = lock.try_lock().unwrap();
        let mut s = n.rooms.joined_servers_now(&room).unwrap();
        s.sort();
        s
    };
    assert_eq!(servers(&n), ["test"]);
    assert_eq!(busy(&n), ["test"]);
    let object = remote_event(&n, &room, "@zoe:remote.example", join("@zoe:remote.example")).await;
    assert!(matches!(n.rooms.append_pdu(parse(object)).await.unwrap(), Appended::Accepted(_)));
    assert_eq!(busy(&n), ["remote.example", "test"], "a copy kept for the old state is not used");
    assert_eq!(servers(&n), ["remote.example", "test"]);
    let leave = NewEvent::state(TimelineEventType::RoomMember, "@zoe:remote.example", json!({ "membership": "leave" }));
    let object = remote_event(&n, &room, "@zoe:remote.example", leave).await;
    assert!(matches!(n.rooms.append_pdu(parse(object)).await.unwrap(), Appended::Accepted(_)));
    assert_eq!(servers(&n), ["test"]);
    assert_eq!(busy(&n), ["test"]);
}
