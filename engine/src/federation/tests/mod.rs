//! The federation protocol against an in-memory peer: no sockets, no TLS.
//!
//! A [`FakePeer`] is a [`Transport`] whose answers a test scripts per
//! request: it can answer, refuse, lie or time out, and it records what it
//! was asked, so each test asserts on what the other side received.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use ruma::{RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{
    FederationError, OutboundRequest, RawResponse, Transport, TransportError, enc, transport::TransportFuture,
};
use crate::{Config, Engine};

/// What a scripted peer does with one request.
type Script = dyn Fn(&str, &OutboundRequest) -> Result<(u16, JsonValue), TransportError> + Send + Sync;

/// One request as the peer saw it: destination, method, path, body.
pub(super) type Seen = (String, String, String, Option<JsonValue>);

/// A peer whose every answer comes from a test's script.
pub(super) struct FakePeer {
    script: Box<Script>,
    /// Every request, as (destination, method, path, body).
    pub(super) seen: Mutex<Vec<Seen>>,
    /// Requests whose path contains the text are answered only after the wait.
    slow: Mutex<Option<(String, Duration)>>,
}

impl FakePeer {
    pub(super) fn new(
        script: impl Fn(&str, &OutboundRequest) -> Result<(u16, JsonValue), TransportError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self { script: Box::new(script), seen: Mutex::new(Vec::new()), slow: Mutex::new(None) })
    }

    /// Answers requests whose path contains `path` only after `wait`.
    pub(super) fn slow_down(&self, path: &str, wait: Duration) {
        *self.slow.lock() = Some((path.to_owned(), wait));
    }

    pub(super) fn paths(&self) -> Vec<String> {
        self.seen.lock().iter().map(|(d, m, p, _)| format!("{d} {m} {p}")).collect()
    }
}

impl Transport for FakePeer {
    fn send<'a>(&'a self, destination: &'a str, request: OutboundRequest) -> TransportFuture<'a> {
        let body = request.body.as_ref().and_then(|b| serde_json::from_slice(b).ok());
        self.seen.lock().push((
            destination.to_owned(),
            request.method.to_string(),
            request.path_and_query.clone(),
            body,
        ));
        let answer = (self.script)(destination, &request);
        let wait = self.slow.lock().as_ref().filter(|(p, _)| request.path_and_query.contains(p.as_str())).map(|s| s.1);
        Box::pin(async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            let (status, json) = answer?;
            let status = StatusCode::from_u16(status).map_err(|e| TransportError::Http(e.to_string()))?;
            Ok(RawResponse { status, headers: HeaderMap::new(), body: Bytes::from(json.to_string()) })
        })
    }
}

pub(super) fn engine(dir: &std::path::Path, peer: Arc<FakePeer>) -> Arc<Engine> {
    let mut config = Config { server_name: "us.test".into(), data_dir: dir.join("data"), ..Config::default() };
    config.storage.cache_mb = 8;
    config.storage.wal_mb = 1;
    let engine = Engine::open(config).unwrap();
    engine.federation.set_transport(peer);
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_peers_that_time_out_or_lie_fails_cleanly_and_leaves_no_room() {
    let peer = FakePeer::new(|dest, req| match dest {
        "slow.test" => Err(TransportError::Timeout),
        // Answers make_join with a template for someone else.
        "liar.test" if req.path_and_query.contains("make_join") => Ok((
            200,
            json!({ "room_version": "12", "event": {
                "type": "m.room.member", "state_key": "@mallory:liar.test", "sender": "@mallory:liar.test",
                "content": { "membership": "join" } } }),
        )),
        // Answers make_join with something that is not a template at all.
        "garbage.test" => Ok((200, json!(["not", "an", "object"]))),
        _ => Ok((404, json!({ "errcode": "M_NOT_FOUND", "error": "no" }))),
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let user = UserId::parse("@alice:us.test").unwrap();
    let room = RoomId::parse("!room:remote.test").unwrap();
    let servers = ["slow.test", "liar.test", "garbage.test"].map(String::from);
    let err = super::membership::join_remote(&engine, &user, &room, &servers).await.unwrap_err();
    let FederationError::Unreachable(reason) = &err else { panic!("unexpected error {err:?}") };
    assert!(reason.contains("garbage.test"), "the last failure is named: {reason}");
    // Every server was tried once, in order, and none got a send_join.
    let paths = peer.paths();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(paths[0].starts_with("slow.test GET /_matrix/federation/v1/make_join/"));
    assert!(paths[1].starts_with("liar.test GET"));
    assert!(paths.iter().all(|p| !p.contains("send_join")), "{paths:?}");
    assert!(engine.rooms.room_version(&room).is_err(), "a failed join leaves the room unknown here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_carries_our_x_matrix_signature_and_a_denied_server_gets_nothing() {
    let peer = FakePeer::new(|_, req| {
        assert!(req.authorization.as_deref().is_some_and(|a| a.starts_with("X-Matrix origin=\"us.test\"")));
        Ok((200, json!({ "displayname": "Bob" })))
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let answer = engine
        .remote("peer.test")
        .get("/_matrix/federation/v1/query/profile?user_id=%40bob%3Apeer.test")
        .await
        .unwrap();
    assert_eq!(answer.json["displayname"], "Bob");
    engine.policy.set("peer.test", super::policy::List::Deny).await.unwrap();
    let err = engine.remote("peer.test").get("/_matrix/federation/v1/version").await.unwrap_err();
    assert!(matches!(err, FederationError::NotAllowed(_)), "{err:?}");
    assert_eq!(peer.paths().len(), 1, "nothing reaches a denied server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transaction_stays_queued_and_is_delivered_once_the_peer_accepts() {
    let accept = Arc::new(AtomicUsize::new(0));
    let accepting = accept.clone();
    let peer = FakePeer::new(move |_, req| {
        assert!(req.path_and_query.starts_with("/_matrix/federation/v1/send/"));
        if accepting.load(Ordering::SeqCst) == 0 { Ok((500, json!({}))) } else { Ok((200, json!({ "pdus": {} }))) }
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(super::sender::run(engine.clone(), stop_rx));
    let edu = json!({ "edu_type": "m.direct_to_device", "content": { "message_id": "m1", "sender": "@a:us.test",
        "type": "m.test", "messages": { "@b:peer.test": { "D": { "x": 1 } } } } });
    super::e2ee::queue_durable_edu(&engine, ["peer.test".to_owned()], &edu).await.unwrap();
    // The peer refuses: the row stays, and a backoff is stored for it.
    let refused = wait_for(|| !peer.paths().is_empty()).await;
    assert!(refused, "the sender tried the peer");
    assert!(wait_for(|| engine.backoffs.get("peer.test").ok().flatten().is_some()).await, "backoff stored");
    assert_eq!(engine.rooms.outbound_destinations().unwrap().len(), 1, "the refused row is still queued");
    // The peer comes back and reaches us: the sender retries at once and the row goes.
    accept.store(1, Ordering::SeqCst);
    engine.federation.mark_alive("peer.test");
    assert!(wait_for(|| engine.rooms.outbound_destinations().unwrap().is_empty()).await, "delivered");
    let seen = peer.seen.lock().clone();
    let last = seen.last().and_then(|(_, _, _, b)| b.clone()).unwrap();
    assert_eq!(last["edus"][0]["content"]["message_id"], "m1", "the peer received the queued EDU");
    assert_eq!(last["origin"], "us.test");
    assert!(wait_for(|| engine.backoffs.get("peer.test").ok().flatten().is_none()).await, "backoff cleared");
    let _ = stop.send(true);
    let _ = sender.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_peer_that_lies_about_its_key_are_not_trusted() {
    // A key document whose self-signature does not verify.
    let peer = FakePeer::new(|_, _| {
        Ok((
            200,
            json!({ "server_name": "peer.test", "valid_until_ts": 4_000_000_000_000u64,
            "verify_keys": { "ed25519:k": { "key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" } },
            "old_verify_keys": {},
            "signatures": { "peer.test": { "ed25519:k": "AAAA" } } }),
        ))
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let key = engine.server_key("peer.test", "ed25519:k").await;
    assert!(!matches!(key, Ok(Some(_))), "a forged key document yields no key: {key:?}");
    assert_eq!(peer.paths(), vec!["peer.test GET /_matrix/key/v2/server".to_owned()]);
}

/// Polls `check` for up to 10 s.
pub(super) async fn wait_for(check: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_limits_is_refused_whole_and_nothing_is_fetched() {
    let peer = FakePeer::new(|_, _| Ok((500, json!({}))));
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let pdu = json!({ "room_id": "!r:peer.test", "type": "m.room.message", "content": {} });
    let txn = super::inbound::Transaction { pdus: vec![pdu; super::inbound::MAX_PDUS + 1], edus: Vec::new() };
    let err = super::inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap_err();
    assert!(matches!(err, FederationError::BadRequest(_)), "{err:?}");
    let edus = vec![json!({ "edu_type": "m.typing", "content": {} }); super::inbound::MAX_EDUS + 1];
    let txn = super::inbound::Transaction { pdus: Vec::new(), edus };
    let err = super::inbound::receive_transaction(&engine, "peer.test", "t2", txn).await.unwrap_err();
    assert!(matches!(err, FederationError::BadRequest(_)), "{err:?}");
    // At the limit, PDUs for rooms we are not in are ignored without asking the peer anything.
    let pdu = json!({ "room_id": "!r:peer.test", "type": "m.room.message", "content": {} });
    let txn = super::inbound::Transaction { pdus: vec![pdu; super::inbound::MAX_PDUS], edus: Vec::new() };
    let answer = super::inbound::receive_transaction(&engine, "peer.test", "t3", txn).await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer, json!({ "pdus": {} }));
    assert!(peer.paths().is_empty(), "{:?}", peer.paths());
}

/// A room of ours that `@bob:peer.test` joined, and `peer.test`'s signing keys (pinned).
pub(super) async fn room_with_a_remote_member(
    dir: &std::path::Path,
    peer: Arc<FakePeer>,
) -> (Arc<Engine>, crate::keys::ServerKeys, ruma::OwnedRoomId) {
    room_with_a_remote_member_and(dir, peer, |_| {}).await
}

/// [`room_with_a_remote_member`] with `tweak` applied to the configuration.
pub(super) async fn room_with_a_remote_member_and(
    dir: &std::path::Path,
    peer: Arc<FakePeer>,
    tweak: impl FnOnce(&mut Config),
) -> (Arc<Engine>, crate::keys::ServerKeys, ruma::OwnedRoomId) {
    let remote = crate::keys::ServerKeys::from_seed("peer.test".try_into().unwrap(), "r1", &[9u8; 32]).unwrap();
    let mut config = Config { server_name: "us.test".into(), data_dir: dir.join("data"), ..Config::default() };
    tweak(&mut config);
    config.storage.cache_mb = 8;
    config.storage.wal_mb = 1;
    config.federation.trusted_keys.insert(
        "peer.test".into(),
        [(remote.key_id().to_owned(), remote.public_key_b64().to_owned())].into_iter().collect(),
    );
    let engine = Engine::open(config).unwrap();
    engine.federation.set_transport(peer);
    let room = public_room_bob_joined(&engine, &remote).await;
    (engine, remote, room)
}

/// A new public room of alice's that `@bob:peer.test` (signing with `remote`) joined.
pub(super) async fn public_room_bob_joined(engine: &Engine, remote: &crate::keys::ServerKeys) -> ruma::OwnedRoomId {
    let alice = UserId::parse("@alice:us.test").unwrap();
    let create = crate::rooms::CreateRoom {
        version: Some(ruma::RoomVersionId::V12),
        preset: Some(crate::rooms::Preset::PublicChat),
        ..Default::default()
    };
    let room = engine.rooms.create_room(&alice, create).await.unwrap();
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let join = crate::rooms::NewEvent::state(
        ruma::events::TimelineEventType::RoomMember,
        bob.as_str(),
        json!({ "membership": "join" }),
    );
    let join = remote_signed(engine, remote, &room, &bob, join, None).await;
    let pdu = crate::rooms::Pdu::from_object(join, &ruma::RoomVersionId::V12.rules().unwrap()).unwrap();
    assert!(matches!(engine.rooms.append_pdu(pdu).await.unwrap(), crate::rooms::Appended::Accepted(_)));
    room
}

/// An event of `sender` built on our room's head (or on `after`), signed by `remote`.
pub(super) async fn remote_signed(
    engine: &Engine,
    remote: &crate::keys::ServerKeys,
    room: &RoomId,
    sender: &UserId,
    event: crate::rooms::NewEvent,
    after: Option<&crate::rooms::Pdu>,
) -> ruma::CanonicalJsonObject {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let mut object = engine.rooms.template(sender, room, event).await.unwrap();
    if let Some(prev) = after {
        object.insert("prev_events".into(), serde_json::from_value(json!([prev.event_id])).unwrap());
        object.insert("depth".into(), ruma::CanonicalJsonValue::Integer((prev.depth as u32 + 1).into()));
    }
    remote.hash_and_sign_event(&mut object, &rules).unwrap();
    object
}

pub(super) fn text(body: &str) -> crate::rooms::NewEvent {
    crate::rooms::NewEvent::message(
        ruma::events::TimelineEventType::RoomMessage,
        json!({ "msgtype": "m.text", "body": body }),
    )
}

/// A peer answering `get_missing_events` with the event put in the returned slot, 404 to the rest.
fn missing_events_peer() -> (Arc<FakePeer>, Arc<Mutex<Option<JsonValue>>>) {
    let missing: Arc<Mutex<Option<JsonValue>>> = Arc::default();
    let served = missing.clone();
    let peer = FakePeer::new(move |_, req| {
        if req.path_and_query.contains("get_missing_events") {
            Ok((200, json!({ "events": [served.lock().clone()] })))
        } else {
            Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
        }
    });
    (peer, missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_prev_event_is_fetched_from_the_origin_and_both_are_stored() {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let (peer, missing) = missing_events_peer();
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let first = remote_signed(&engine, &remote, &room, &bob, text("one"), None).await;
    let first_pdu = crate::rooms::Pdu::from_object(first.clone(), &rules).unwrap();
    let second = remote_signed(&engine, &remote, &room, &bob, text("two"), Some(&first_pdu)).await;
    let second_pdu = crate::rooms::Pdu::from_object(second.clone(), &rules).unwrap();
    *missing.lock() = Some(serde_json::to_value(&first).unwrap());
    // Only the second event arrives, as a peer catching up after an outage sends it.
    let txn = super::inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: Vec::new() };
    let answer = super::inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["pdus"].get(second_pdu.event_id.as_str()), Some(&json!({})), "{answer}");
    assert!(engine.rooms.meta(&first_pdu.event_id).unwrap().is_some(), "the fetched prev event is stored");
    assert!(engine.rooms.meta(&second_pdu.event_id).unwrap().is_some(), "the event itself is stored");
    let seen = peer.seen.lock().clone();
    let asked: Vec<_> = seen.iter().filter(|(_, _, p, _)| p.contains("get_missing_events")).collect();
    assert_eq!(asked.len(), 1, "{seen:?}");
    assert_eq!(asked[0].3.as_ref().unwrap()["latest_events"], json!([second_pdu.event_id]));
}

/// A peer slow to serve a gap does not hold up its transaction: the answer
/// comes at `gap_fill_wait_ms` with the event kept pending, a retransmission
/// joins the running fill (the peer is asked once), and the event is taken
/// as soon as the fill ends, with no further transaction to carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gap_fill_goes_on_in_the_background_and_the_event_is_taken_when_it_ends() {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let (peer, missing) = missing_events_peer();
    peer.slow_down("get_missing_events", Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) =
        room_with_a_remote_member_and(dir.path(), peer.clone(), |c| c.federation.gap_fill_wait_ms = 200).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Retries only when a fill ends (the period is far beyond the test).
    let retries = tokio::spawn(super::inbound::run_pending_retries(engine.clone(), Duration::from_secs(3600), stop_rx));
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let first = remote_signed(&engine, &remote, &room, &bob, text("one"), None).await;
    let first_pdu = crate::rooms::Pdu::from_object(first.clone(), &rules).unwrap();
    let second = remote_signed(&engine, &remote, &room, &bob, text("two"), Some(&first_pdu)).await;
    let second_pdu = crate::rooms::Pdu::from_object(second.clone(), &rules).unwrap();
    *missing.lock() = Some(serde_json::to_value(&first).unwrap());
    let send = |txn_id: &'static str| {
        let (engine, second) = (engine.clone(), second.clone());
        async move {
            let txn = super::inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: vec![] };
            let answer = super::inbound::receive_transaction(&engine, "peer.test", txn_id, txn).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&answer).unwrap()
        }
    };
    let answer = send("t1").await;
    let result = &answer["pdus"][second_pdu.event_id.as_str()];
    assert!(result["error"].as_str().is_some_and(|e| e.contains("kept pending")), "{answer}");
    assert_eq!(engine.gap_fills.len(), 1, "the fill goes on after the answer");
    assert!(engine.rooms.meta(&second_pdu.event_id).unwrap().is_none());
    // The peer retransmits in a new transaction: it joins the running fill.
    let answer = send("t2").await;
    assert!(answer["pdus"][second_pdu.event_id.as_str()]["error"].is_string(), "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while engine.rooms.meta(&second_pdu.event_id).unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the event was not taken after the fill ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(engine.rooms.meta(&first_pdu.event_id).unwrap().is_some(), "the fetched prev event is stored");
    assert!(engine.gap_fills.is_empty());
    assert!(engine.pending_pdus.is_empty(), "nothing is left waiting");
    let asked = peer.paths().iter().filter(|p| p.contains("get_missing_events")).count();
    assert_eq!(asked, 1, "{:?}", peer.paths());
    let _ = stop_tx.send(true);
    retries.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answering_nonsense_to_get_missing_events_is_asked_for_the_state_instead() {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let peer = FakePeer::new(|_, req| {
        if req.path_and_query.contains("get_missing_events") {
            Ok((200, json!({ "events": "not a list" })))
        } else {
            Err(TransportError::Timeout)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let first = remote_signed(&engine, &remote, &room, &bob, text("one"), None).await;
    let first_pdu = crate::rooms::Pdu::from_object(first, &rules).unwrap();
    let second = remote_signed(&engine, &remote, &room, &bob, text("two"), Some(&first_pdu)).await;
    let txn = super::inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: Vec::new() };
    // Answered (the transaction is not failed as a whole), whatever became of the event.
    super::inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let paths = peer.paths();
    assert!(
        paths.iter().any(|p| p.contains("/state_ids/") && p.contains(&enc(first_pdu.event_id.as_str()))),
        "{paths:?}"
    );
    assert!(engine.rooms.meta(&first_pdu.event_id).unwrap().is_none(), "nothing made up for the missing event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_join_answer_with_unsigned_state_is_refused_and_leaves_no_room() {
    let peer = FakePeer::new(|_, req| {
        if req.path_and_query.contains("make_join") {
            Ok((
                200,
                json!({ "room_version": "12", "event": {
                "type": "m.room.member", "state_key": "@alice:us.test", "sender": "@alice:us.test",
                "room_id": "!room:resident.test", "content": { "membership": "join" },
                "auth_events": [], "prev_events": [], "depth": 3 } }),
            ))
        } else {
            // The state is an event nobody signed.
            Ok((
                200,
                json!({ "state": [{ "type": "m.room.create", "state_key": "", "sender": "@eve:resident.test",
                "room_id": "!room:resident.test", "content": {}, "auth_events": [], "prev_events": [], "depth": 1,
                "origin_server_ts": 1, "hashes": { "sha256": "AAAA" } }], "auth_chain": [] }),
            ))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let user = UserId::parse("@alice:us.test").unwrap();
    let room = RoomId::parse("!room:resident.test").unwrap();
    let servers = ["resident.test".to_owned()];
    let err = super::membership::join_remote(&engine, &user, &room, &servers).await.unwrap_err();
    assert!(!matches!(err, FederationError::Unreachable(_)), "the bad state itself is the error: {err:?}");
    assert!(peer.paths().iter().any(|p| p.contains("send_join")), "{:?}", peer.paths());
    assert!(engine.rooms.room_version(&room).is_err(), "a refused join leaves the room unknown here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_power_level_change_in_the_state_ids_fallback_is_rejected_and_not_the_state() {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let served: Arc<Mutex<Vec<(String, JsonValue)>>> = Arc::default();
    let state_ids: Arc<Mutex<JsonValue>> = Arc::default();
    let (events, ids) = (served.clone(), state_ids.clone());
    let peer = FakePeer::new(move |_, req| {
        let path = &req.path_and_query;
        if path.contains("/state_ids/") {
            return Ok((200, ids.lock().clone()));
        }
        for (id, json) in events.lock().iter() {
            if path.ends_with(&format!("/event/{}", enc(id))) {
                return Ok((200, json!({ "origin": "peer.test", "pdus": [json] })));
            }
        }
        Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
    });
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let honest = engine.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap();
    // Bob, without power, gives himself 100; the peer reports that as the state.
    let mut levels = honest.content_value();
    levels["users"][bob.as_str()] = json!(100);
    let forged = crate::rooms::NewEvent::state("m.room.power_levels", "", levels);
    let forged = remote_signed(&engine, &remote, &room, &bob, forged, None).await;
    let forged_pdu = crate::rooms::Pdu::from_object(forged.clone(), &rules).unwrap();
    let first = remote_signed(&engine, &remote, &room, &bob, text("one"), None).await;
    let first_pdu = crate::rooms::Pdu::from_object(first.clone(), &rules).unwrap();
    let second = remote_signed(&engine, &remote, &room, &bob, text("two"), Some(&first_pdu)).await;
    let mut pdu_ids: Vec<String> =
        engine.rooms.current_state(&room).unwrap().iter().map(|p| p.event_id.to_string()).collect();
    pdu_ids.retain(|id| *id != honest.event_id.as_str());
    pdu_ids.push(forged_pdu.event_id.to_string());
    *state_ids.lock() = json!({ "pdu_ids": pdu_ids, "auth_chain_ids": [honest.event_id] });
    *served.lock() = vec![
        (forged_pdu.event_id.to_string(), serde_json::to_value(&forged).unwrap()),
        (first_pdu.event_id.to_string(), serde_json::to_value(&first).unwrap()),
    ];
    let txn = super::inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: Vec::new() };
    super::inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let first_meta = engine.rooms.meta(&first_pdu.event_id).unwrap().expect("the prev event is taken on the state");
    let levels_before = engine.rooms.state_pdu_at(first_meta.state_before, "m.room.power_levels", "").unwrap();
    assert_eq!(levels_before.map(|p| p.event_id.clone()), Some(honest.event_id.clone()), "the honest power levels");
    let forged_meta = engine.rooms.meta(&forged_pdu.event_id).unwrap().expect("the forged event is kept");
    assert_ne!(forged_meta.flags & crate::rooms::tables::REJECTED, 0, "flagged rejected");
    let current = engine.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap();
    assert_eq!(current.event_id, honest.event_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_built_on_a_rejected_event_is_judged_on_the_state_before_it_not_rejected_with_it() {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let peer = FakePeer::new(|_, _| Ok((404, json!({ "errcode": "M_NOT_FOUND" }))));
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    // Bob, without power, changes the power levels: rejected.
    let mut levels = engine.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content_value();
    levels["users"][bob.as_str()] = json!(100);
    let forged = remote_signed(
        &engine,
        &remote,
        &room,
        &bob,
        crate::rooms::NewEvent::state("m.room.power_levels", "", levels),
        None,
    )
    .await;
    let forged_pdu = crate::rooms::Pdu::from_object(forged.clone(), &rules).unwrap();
    // Then a message on top of it, which Bob may send.
    let after = remote_signed(&engine, &remote, &room, &bob, text("after"), Some(&forged_pdu)).await;
    let after_pdu = crate::rooms::Pdu::from_object(after.clone(), &rules).unwrap();
    let pdus = vec![serde_json::to_value(&forged).unwrap(), serde_json::to_value(&after).unwrap()];
    let answer = super::inbound::receive_transaction(
        &engine,
        "peer.test",
        "t1",
        super::inbound::Transaction { pdus, edus: Vec::new() },
    )
    .await
    .unwrap();
    let answer: JsonValue = serde_json::from_slice(&answer).unwrap();
    assert!(answer["pdus"][forged_pdu.event_id.as_str()]["error"].is_string(), "{answer}");
    assert_eq!(answer["pdus"][after_pdu.event_id.as_str()], json!({}), "{answer}");
    let meta = engine.rooms.meta(&after_pdu.event_id).unwrap().unwrap();
    assert!(meta.count > 0 && meta.flags == 0, "the message is in the timeline: {meta:?}");
    let levels = engine.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap();
    assert_ne!(levels.event_id, forged_pdu.event_id, "the rejected change is not the state");
}

/// One origin cannot start unbounded background work: with gaps open in more
/// rooms than [`super::inbound::MAX_GAP_FILLS_PER_ORIGIN`], only that many
/// fills run; the other events are kept pending without a fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_runs_at_most_its_share_of_gap_fills_at_once() {
    use super::inbound::MAX_GAP_FILLS_PER_ORIGIN;
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let (peer, _missing) = missing_events_peer();
    peer.slow_down("get_missing_events", Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, first_room) =
        room_with_a_remote_member_and(dir.path(), peer.clone(), |c| c.federation.gap_fill_wait_ms = 100).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let mut rooms = vec![first_room];
    while rooms.len() < MAX_GAP_FILLS_PER_ORIGIN + 2 {
        rooms.push(public_room_bob_joined(&engine, &remote).await);
    }
    // In each room an event whose prev event we never got.
    let mut pdus = Vec::new();
    for room in &rooms {
        let unseen = remote_signed(&engine, &remote, room, &bob, text("unseen"), None).await;
        let unseen = crate::rooms::Pdu::from_object(unseen, &rules).unwrap();
        let next = remote_signed(&engine, &remote, room, &bob, text("next"), Some(&unseen)).await;
        pdus.push(serde_json::to_value(&next).unwrap());
    }
    let txn = super::inbound::Transaction { pdus, edus: Vec::new() };
    let answer = super::inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let answer: JsonValue = serde_json::from_slice(&answer).unwrap();
    assert_eq!(engine.gap_fills.len(), MAX_GAP_FILLS_PER_ORIGIN, "{answer}");
    let errors: Vec<&str> = answer["pdus"].as_object().unwrap().values().filter_map(|r| r["error"].as_str()).collect();
    assert_eq!(errors.len(), rooms.len(), "{answer}");
    assert_eq!(errors.iter().filter(|e| e.contains("too many gaps")).count(), rooms.len() - MAX_GAP_FILLS_PER_ORIGIN);
    assert_eq!(engine.pending_pdus.len(), rooms.len(), "every event kept pending");
}

/// A PDU may list signatures of any number of servers; only those the spec
/// requires (the sender's) are checked, so the others' keys are never looked
/// up: a peer cannot make us contact every server it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_of_servers_the_spec_does_not_require_cost_no_key_lookup() {
    let peer = FakePeer::new(|_, _| Ok((404, json!({ "errcode": "M_NOT_FOUND" }))));
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let mut pdu = remote_signed(&engine, &remote, &room, &bob, text("many signers"), None).await;
    let Some(ruma::CanonicalJsonValue::Object(signatures)) = pdu.get_mut("signatures") else { panic!("unsigned") };
    for i in 0..50 {
        let mut by = ruma::CanonicalJsonObject::new();
        by.insert("ed25519:x".into(), ruma::CanonicalJsonValue::String("aGVsbG8".into()));
        signatures.insert(format!("signer{i}.test"), ruma::CanonicalJsonValue::Object(by));
    }
    let id = crate::rooms::Pdu::from_object(pdu.clone(), &ruma::RoomVersionId::V12.rules().unwrap()).unwrap().event_id;
    let txn = super::inbound::Transaction { pdus: vec![serde_json::to_value(&pdu).unwrap()], edus: Vec::new() };
    let answer = super::inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let answer: JsonValue = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["pdus"][id.as_str()], json!({}), "accepted on the sender's signature: {answer}");
    let asked: Vec<String> = peer.seen.lock().iter().map(|s| s.0.clone()).filter(|d| d.starts_with("signer")).collect();
    assert!(asked.is_empty(), "keys looked up for servers no rule requires: {asked:?}");
}
