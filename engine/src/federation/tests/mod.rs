//! The federation protocol against an in-memory peer: no sockets, no TLS.
//!
//! A [`FakePeer`] is a [`Transport`] whose answers a test scripts per
//! request: it can answer, refuse, lie or time out, and it records what it
//! was asked, so each test asserts on what the other side received.
//! Inbound transactions are tested in `transactions`.

mod transactions;

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

use super::{FederationError, OutboundRequest, RawResponse, Transport, TransportError, transport::TransportFuture};
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
