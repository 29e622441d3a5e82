//! The outbound queue settles: refused transactions, per-PDU errors, parking.
//!
//! Against the scripted in-memory peer of [`super::tests`], with the sender's
//! backoff shortened to milliseconds so that bounded retries finish quickly.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ruma::UserId;
use serde_json::{Value as JsonValue, json};

use super::{
    TransportError,
    queue_status::{DestinationState, queue_status},
    sender::{self, Timings},
    tests::{
        FakePeer, public_room_bob_joined, room_with_a_remote_member, room_with_a_remote_member_and, text, wait_for,
    },
};
use crate::{Config, Engine};

/// An engine for `us.test` over `peer`, parking after `park_after_s`, with fast retries.
fn engine(dir: &std::path::Path, peer: Arc<FakePeer>, park_after_s: u64) -> Arc<Engine> {
    let mut config = Config { server_name: "us.test".into(), data_dir: dir.join("data"), ..Config::default() };
    config.storage.cache_mb = 8;
    config.storage.wal_mb = 1;
    config.federation.park_after_s = park_after_s;
    let engine = Engine::open(config).unwrap();
    engine.federation.set_transport(peer);
    fast(&engine);
    engine
}

fn fast(engine: &Engine) {
    engine.federation.set_sender_timings(Timings {
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        parked_check: Duration::from_millis(50),
    });
}

/// A to-device EDU whose message id names it.
fn to_device(id: &str) -> JsonValue {
    json!({ "edu_type": "m.direct_to_device", "content": { "message_id": id, "sender": "@a:us.test",
        "type": "m.test", "messages": { "@b:peer.test": { "D": { "x": 1 } } } } })
}

/// The message ids of the to-device EDUs in a transaction body.
fn message_ids(body: &Option<JsonValue>) -> Vec<String> {
    let edus = body.as_ref().and_then(|b| b.get("edus")).and_then(JsonValue::as_array).cloned().unwrap_or_default();
    edus.iter().filter_map(|e| e.get("content")?.get("message_id")?.as_str().map(str::to_owned)).collect()
}

fn sends(peer: &FakePeer) -> Vec<(String, Option<JsonValue>)> {
    peer.seen
        .lock()
        .iter()
        .filter(|(_, _, p, _)| p.starts_with("/_matrix/federation/v1/send/"))
        .map(|(_, _, p, b)| (p.clone(), b.clone()))
        .collect()
}

/// A peer that cannot be reached until the flag is set, then answers every transaction 200.
fn down_peer() -> (Arc<FakePeer>, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(false));
    let answering = up.clone();
    let peer = FakePeer::new(move |_, _| {
        if answering.load(Ordering::SeqCst) {
            Ok((200, json!({ "pdus": {} })))
        } else {
            Err(TransportError::Connect("refused".into()))
        }
    });
    (peer, up)
}

fn state_of(engine: &Engine, destination: &str) -> Option<DestinationState> {
    queue_status(engine).ok()?.into_iter().find(|d| d.destination == destination).map(|d| d.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_refuses_one_transaction_with_400_still_receives_the_next_events() {
    // The peer refuses every transaction carrying the message "bad" as a whole.
    let peer = FakePeer::new(|_, req| {
        let body: Option<JsonValue> = req.body.as_ref().and_then(|b| serde_json::from_slice(b).ok());
        if message_ids(&body).iter().any(|m| m == "bad") {
            Ok((400, json!({ "errcode": "M_BAD_JSON", "error": "no" })))
        } else {
            Ok((200, json!({ "pdus": {} })))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone(), 86_400);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sender::run(engine.clone(), stop_rx));
    super::e2ee::queue_durable_edu(&engine, ["peer.test".to_owned()], &to_device("bad")).await.unwrap();
    assert!(wait_for(|| !sends(&peer).is_empty()).await, "the sender tried the peer");
    super::e2ee::queue_durable_edu(&engine, ["peer.test".to_owned()], &to_device("good")).await.unwrap();
    assert!(
        wait_for(|| sends(&peer).iter().any(|(_, b)| message_ids(b) == ["good"])).await,
        "the next event reaches the peer: {:?}",
        peer.paths()
    );
    assert!(wait_for(|| engine.rooms.outbound_destinations().unwrap().is_empty()).await, "the queue is empty");
    let sent = sends(&peer);
    let refused: Vec<_> = sent.iter().filter(|(_, b)| message_ids(b).contains(&"bad".to_owned())).collect();
    assert_eq!(refused.len(), sender::MAX_REFUSALS as usize, "bounded retries: {sent:?}");
    assert!(refused.iter().all(|(p, _)| *p == refused[0].0), "each retry is the same transaction");
    assert!(refused.iter().all(|(_, b)| message_ids(b) == ["bad"]), "the refused batch is not grown on retry");
    assert_eq!(state_of(&engine, "peer.test"), None, "nothing waits for the destination");
    assert!(engine.backoffs.get("peer.test").unwrap().is_none(), "a destination that answers is not backed off");
    let _ = stop.send(true);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_answers_200_with_a_pdu_error_gets_the_next_transaction() {
    let peer = FakePeer::new(|_, req| {
        let body: JsonValue = req.body.as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        // Every PDU is refused on its own: the transaction itself is answered.
        let mut pdus = serde_json::Map::new();
        for p in body.get("pdus").and_then(JsonValue::as_array).into_iter().flatten() {
            let id = p.get("event_id").and_then(JsonValue::as_str).unwrap_or("$unknown").to_owned();
            pdus.insert(id, json!({ "error": "not today" }));
        }
        Ok((200, json!({ "pdus": pdus })))
    });
    let dir = tempfile::tempdir().unwrap();
    let (engine, _remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    fast(&engine);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sender::run(engine.clone(), stop_rx));
    let alice = UserId::parse("@alice:us.test").unwrap();
    engine.rooms.send(&alice, &room, text("one")).await.unwrap();
    assert!(wait_for(|| sends(&peer).len() == 1).await, "{:?}", peer.paths());
    assert!(wait_for(|| engine.rooms.outbound_destinations().unwrap().is_empty()).await, "counted as delivered");
    engine.rooms.send(&alice, &room, text("two")).await.unwrap();
    assert!(wait_for(|| sends(&peer).len() == 2).await, "{:?}", peer.paths());
    let sent = sends(&peer);
    let bodies: Vec<String> = sent
        .iter()
        .flat_map(|(_, b)| {
            b.as_ref().and_then(|b| b.get("pdus")).and_then(JsonValue::as_array).cloned().unwrap_or_default()
        })
        .filter_map(|p| p.get("content")?.get("body")?.as_str().map(str::to_owned))
        .collect();
    assert_eq!(bodies, ["one", "two"], "each event once, none retried");
    assert!(wait_for(|| engine.rooms.outbound_destinations().unwrap().is_empty()).await);
    let _ = stop.send(true);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_unreachable_past_park_after_is_parked_and_resumes_when_it_shows_life() {
    let (peer, up) = down_peer();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone(), 1);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sender::run(engine.clone(), stop_rx));
    super::e2ee::queue_durable_edu(&engine, ["peer.test".to_owned()], &to_device("m1")).await.unwrap();
    assert!(wait_for(|| state_of(&engine, "peer.test") == Some(DestinationState::Backoff)).await);
    assert!(wait_for(|| state_of(&engine, "peer.test") == Some(DestinationState::Parked)).await, "parked");
    let tries = sends(&peer).len();
    assert!(tries > 3, "retried until parked: {tries}");
    // Parked: no retries, also when more is queued, and nothing dropped.
    super::e2ee::queue_durable_edu(&engine, ["peer.test".to_owned()], &to_device("m2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sends(&peer).len(), tries, "no retries while parked");
    let status = queue_status(&engine).unwrap();
    let dest = status.iter().find(|d| d.destination == "peer.test").unwrap();
    assert_eq!((dest.depth, dest.state), (2, DestinationState::Parked), "{status:?}");
    assert!(engine.backoffs.get("peer.test").unwrap().is_some_and(|b| b.parked), "parked is stored");
    // A restart tries a parked destination once, then parks it again.
    let _ = stop.send(true);
    let _ = task.await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sender::run(engine.clone(), stop_rx));
    assert!(wait_for(|| sends(&peer).len() == tries + 1).await, "tried once at start-up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sends(&peer).len(), tries + 1, "and parked again");
    assert_eq!(state_of(&engine, "peer.test"), Some(DestinationState::Parked));
    // It reaches us: it is tried at once and gets everything that waited.
    up.store(true, Ordering::SeqCst);
    engine.federation.mark_alive("peer.test");
    assert!(wait_for(|| engine.rooms.outbound_destinations().unwrap().is_empty()).await, "delivered");
    let delivered: Vec<String> = sends(&peer).iter().flat_map(|(_, b)| message_ids(b)).collect();
    assert!(delivered.ends_with(&["m1".to_owned(), "m2".to_owned()]), "{delivered:?}");
    assert!(wait_for(|| engine.backoffs.get("peer.test").ok().flatten().is_none()).await, "backoff cleared");
    assert_eq!(state_of(&engine, "peer.test"), None);
    let _ = stop.send(true);
    let _ = task.await;
}

/// A device-list update EDU for `@alice:us.test`'s device `device`, numbered `n`.
fn device_list_update(device: &str, n: u64) -> JsonValue {
    json!({ "edu_type": "m.device_list_update", "content": { "user_id": "@alice:us.test",
        "device_id": device, "stream_id": n, "prev_id": [], "deleted": false } })
}

/// The message bodies of the PDUs in transaction bodies.
fn pdu_bodies<'a>(bodies: impl Iterator<Item = &'a Option<JsonValue>>) -> Vec<String> {
    bodies
        .flat_map(|b| b.as_ref().and_then(|b| b.get("pdus")).and_then(JsonValue::as_array).cloned().unwrap_or_default())
        .filter_map(|p| p.get("content")?.get("body")?.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_away_past_its_queue_bound_gets_the_newest_event_per_room_and_can_fetch_the_rest() {
    let (peer, up) = down_peer();
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room_a) = room_with_a_remote_member_and(dir.path(), peer.clone(), |c| {
        c.federation.park_after_s = 1;
        c.federation.max_queue_per_destination = 10;
    })
    .await;
    fast(&engine);
    let room_b = public_room_bob_joined(&engine, &remote).await;
    let alice = UserId::parse("@alice:us.test").unwrap();

    // While peer.test is away: 15 messages in each room, a device updated three
    // times, another once, and 3 to-device messages; 26 rows over a bound of 10.
    // All are queued before the sender starts, so its first failed try sees all
    // 26 (a try in the middle would compact a prefix and leave the rest under
    // the bound).
    let dests = || ["peer.test".to_owned()];
    let mut newest_a = None;
    for i in 0..15 {
        newest_a = Some(engine.rooms.send(&alice, &room_a, text(&format!("a{i}"))).await.unwrap());
        engine.rooms.send(&alice, &room_b, text(&format!("b{i}"))).await.unwrap();
        if i < 3 {
            super::e2ee::queue_durable_edu(&engine, dests(), &device_list_update("D1", i)).await.unwrap();
            super::e2ee::queue_durable_edu(&engine, dests(), &to_device(&format!("m{i}"))).await.unwrap();
        }
    }
    super::e2ee::queue_durable_edu(&engine, dests(), &device_list_update("D2", 9)).await.unwrap();
    let newest_a = newest_a.unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sender::run(engine.clone(), stop_rx));
    // Compacted, parked or not: the newest message per room, the newest update
    // per device, every to-device message (3 of the 1,000 kept).
    let depth = || {
        queue_status(&engine).ok().and_then(|s| s.into_iter().find(|d| d.destination == "peer.test")).map(|d| d.depth)
    };
    assert!(wait_for(|| state_of(&engine, "peer.test") == Some(DestinationState::Parked)).await, "parked");
    assert!(wait_for(|| depth() == Some(2 + 2 + 3)).await, "compacted: {:?}", depth());

    // It returns: what it is sent is what was kept, in queue order.
    let tries = sends(&peer).len();
    up.store(true, Ordering::SeqCst);
    engine.federation.mark_alive("peer.test");
    assert!(wait_for(|| engine.rooms.outbound_destinations().unwrap().is_empty()).await, "delivered");
    let after: Vec<(String, Option<JsonValue>)> = sends(&peer).into_iter().skip(tries).collect();
    assert_eq!(pdu_bodies(after.iter().map(|(_, b)| b)), ["a14", "b14"]);
    let edus: Vec<JsonValue> = after
        .iter()
        .flat_map(|(_, b)| {
            b.as_ref().and_then(|b| b.get("edus")).and_then(JsonValue::as_array).cloned().unwrap_or_default()
        })
        .collect();
    let updates: Vec<(String, u64)> = edus
        .iter()
        .filter(|e| e["edu_type"] == "m.device_list_update")
        .map(|e| (e["content"]["device_id"].as_str().unwrap().to_owned(), e["content"]["stream_id"].as_u64().unwrap()))
        .collect();
    assert_eq!(updates, [("D1".to_owned(), 2), ("D2".to_owned(), 9)]);
    let delivered: Vec<String> = after.iter().flat_map(|(_, b)| message_ids(b)).collect();
    assert_eq!(delivered, ["m0", "m1", "m2"]);

    // And the events left out are there for it to fetch, as for any gap.
    let ask: super::serve::MissingEventsRequest = serde_json::from_value(json!({
        "limit": 100, "earliest_events": [], "latest_events": [newest_a.event_id],
    }))
    .unwrap();
    let fetched = super::serve::missing_events(&engine, "peer.test", &room_a, &ask).unwrap();
    let mut bodies: Vec<String> =
        fetched.events.iter().filter_map(|p| p["content"]["body"].as_str().map(str::to_owned)).collect();
    bodies.sort_by_key(|b| b[1..].parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(bodies, (0..14).map(|i| format!("a{i}")).collect::<Vec<_>>());
    let _ = stop.send(true);
    let _ = task.await;
}
