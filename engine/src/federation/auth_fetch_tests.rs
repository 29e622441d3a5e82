//! Missing auth events are fetched; a PDU whose auth events cannot be fetched
//! yet is kept pending, never rejected for it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use parking_lot::Mutex;
use ruma::{CanonicalJsonValue, UserId};
use serde_json::{Value as JsonValue, json};

use super::{
    enc,
    inbound::{Transaction, receive_transaction},
    tests::{FakePeer, remote_signed, room_with_a_remote_member, text},
};
use crate::{
    Engine,
    rooms::{NewEvent, Pdu, tables},
};

/// Bob's new membership (a display name change) that we never received, and a
/// message of his whose auth events name it instead of the membership we hold:
/// as his server sends it when the transaction with the change was lost.
async fn message_citing_an_unseen_membership(
    engine: &Engine,
    remote: &crate::keys::ServerKeys,
    room: &ruma::RoomId,
) -> (ruma::CanonicalJsonObject, Pdu, JsonValue, Pdu) {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let held = engine.rooms.state_event(room, "m.room.member", bob.as_str()).unwrap().unwrap();
    let change = NewEvent::state(
        ruma::events::TimelineEventType::RoomMember,
        bob.as_str(),
        json!({ "membership": "join", "displayname": "Bob Two" }),
    );
    let change = remote_signed(engine, remote, room, &bob, change, None).await;
    let change_pdu = Pdu::from_object(change.clone(), &rules).unwrap();
    let mut message = engine.rooms.template(&bob, room, text("hello")).await.unwrap();
    let Some(CanonicalJsonValue::Array(auth)) = message.get_mut("auth_events") else { panic!("no auth events") };
    for a in auth.iter_mut() {
        if *a == CanonicalJsonValue::String(held.event_id.to_string()) {
            *a = CanonicalJsonValue::String(change_pdu.event_id.to_string());
        }
    }
    remote.hash_and_sign_event(&mut message, &rules).unwrap();
    let message_pdu = Pdu::from_object(message.clone(), &rules).unwrap();
    assert!(message_pdu.auth_events.contains(&change_pdu.event_id));
    (change, change_pdu, serde_json::to_value(&message).unwrap(), message_pdu)
}

/// A peer that serves `/event/{id}` for the events in `served` while `serving` is set.
fn serving_peer(served: Arc<Mutex<Vec<(String, JsonValue)>>>, serving: Arc<AtomicBool>) -> Arc<FakePeer> {
    FakePeer::new(move |_, req| {
        if serving.load(Ordering::SeqCst) {
            for (id, json) in served.lock().iter() {
                if req.path_and_query.ends_with(&format!("/event/{}", enc(id))) {
                    return Ok((200, json!({ "origin": "peer.test", "pdus": [json] })));
                }
            }
        }
        Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
    })
}

async fn send(engine: &Engine, txn_id: &str, pdus: Vec<JsonValue>) -> JsonValue {
    let txn = Transaction { pdus, edus: Vec::new() };
    let answer = receive_transaction(engine, "peer.test", txn_id, txn).await.unwrap();
    serde_json::from_slice(&answer).unwrap()
}

/// A room where the peer sent a message citing an auth event it cannot serve
/// yet (until `serving` is set): the message answered with an error and kept pending.
struct Kept {
    engine: Arc<Engine>,
    remote: crate::keys::ServerKeys,
    room: ruma::OwnedRoomId,
    peer: Arc<FakePeer>,
    serving: Arc<AtomicBool>,
    change_pdu: Pdu,
    message: Pdu,
}

async fn kept_pending(dir: &std::path::Path) -> Kept {
    let served: Arc<Mutex<Vec<(String, JsonValue)>>> = Arc::default();
    let serving = Arc::new(AtomicBool::new(false));
    let peer = serving_peer(served.clone(), serving.clone());
    let (engine, remote, room) = room_with_a_remote_member(dir, peer.clone()).await;
    let (change, change_pdu, json, message) = message_citing_an_unseen_membership(&engine, &remote, &room).await;
    served.lock().push((change_pdu.event_id.to_string(), serde_json::to_value(&change).unwrap()));
    // The peer cannot serve the auth event: the message is neither stored nor rejected.
    let answer = send(&engine, "t1", vec![json]).await;
    assert!(answer["pdus"][message.event_id.as_str()]["error"].is_string(), "{answer}");
    Kept { engine, remote, room, peer, serving, change_pdu, message }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdu_whose_auth_event_we_lack_is_accepted_after_the_auth_event_is_fetched() {
    let served: Arc<Mutex<Vec<(String, JsonValue)>>> = Arc::default();
    let peer = serving_peer(served.clone(), Arc::new(AtomicBool::new(true)));
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let (change, change_pdu, json, message) = message_citing_an_unseen_membership(&engine, &remote, &room).await;
    served.lock().push((change_pdu.event_id.to_string(), serde_json::to_value(&change).unwrap()));
    let answer = send(&engine, "t1", vec![json]).await;
    assert_eq!(answer["pdus"][message.event_id.as_str()], json!({}), "{answer}");
    let paths = peer.paths();
    assert!(paths.iter().any(|p| p.ends_with(&format!("/event/{}", enc(change_pdu.event_id.as_str())))), "{paths:?}");
    let fetched = engine.rooms.meta(&change_pdu.event_id).unwrap().expect("the auth event is stored");
    assert_eq!(fetched.flags, tables::OUTLIER, "as an outlier that passed the auth rules");
    let meta = engine.rooms.meta(&message.event_id).unwrap().expect("the message is stored");
    assert!(meta.count > 0 && meta.flags == 0, "in the timeline: {meta:?}");
    assert_eq!(engine.pending_pdus.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdu_whose_auth_event_cannot_be_fetched_is_kept_pending_not_rejected_and_accepted_later() {
    let dir = tempfile::tempdir().unwrap();
    let Kept { engine, remote, room, serving, change_pdu, message, .. } = kept_pending(dir.path()).await;
    assert!(engine.rooms.meta(&message.event_id).unwrap().is_none(), "not stored, so not rejected for good");
    assert!(engine.rooms.meta(&change_pdu.event_id).unwrap().is_none());
    assert_eq!(engine.pending_pdus.len(), 1, "kept pending");
    // The peer's next transaction (anything, here a later message) retries it.
    serving.store(true, Ordering::SeqCst);
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let later = remote_signed(&engine, &remote, &room, &bob, text("later"), None).await;
    let answer = send(&engine, "t2", vec![serde_json::to_value(&later).unwrap()]).await;
    assert_eq!(answer["pdus"].as_object().map(|m| m.len()), Some(1), "{answer}");
    let meta = engine.rooms.meta(&message.event_id).unwrap().expect("accepted once the peer could serve");
    assert_eq!(meta.flags, 0, "{meta:?}");
    assert!(meta.count > 0, "in the timeline");
    assert_eq!(engine.pending_pdus.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_fetched_to_fill_a_gap_gets_its_missing_auth_events_fetched_too() {
    // The message citing the unseen membership arrives only through
    // get_missing_events, behind a later message that names it as prev event.
    let served: Arc<Mutex<Vec<(String, JsonValue)>>> = Arc::default();
    let gap: Arc<Mutex<Vec<JsonValue>>> = Arc::default();
    let (served_by_peer, gap_by_peer) = (served.clone(), gap.clone());
    let peer = FakePeer::new(move |_, req| {
        if req.path_and_query.contains("get_missing_events") {
            return Ok((200, json!({ "events": gap_by_peer.lock().clone() })));
        }
        for (id, json) in served_by_peer.lock().iter() {
            if req.path_and_query.ends_with(&format!("/event/{}", enc(id))) {
                return Ok((200, json!({ "origin": "peer.test", "pdus": [json] })));
            }
        }
        Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
    });
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let (change, change_pdu, message_json, message) =
        message_citing_an_unseen_membership(&engine, &remote, &room).await;
    served.lock().push((change_pdu.event_id.to_string(), serde_json::to_value(&change).unwrap()));
    gap.lock().push(message_json);
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let mut later = engine.rooms.template(&bob, &room, text("after the gap")).await.unwrap();
    later.insert(
        "prev_events".into(),
        CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(message.event_id.to_string())]),
    );
    later.insert("depth".into(), CanonicalJsonValue::Integer(ruma::Int::try_from(message.depth + 1).unwrap()));
    remote.hash_and_sign_event(&mut later, &rules).unwrap();
    let later_pdu = Pdu::from_object(later.clone(), &rules).unwrap();

    let answer = send(&engine, "t1", vec![serde_json::to_value(&later).unwrap()]).await;
    assert_eq!(answer["pdus"][later_pdu.event_id.as_str()], json!({}), "{answer}");
    let paths = peer.paths();
    assert!(paths.iter().any(|p| p.ends_with(&format!("/event/{}", enc(change_pdu.event_id.as_str())))), "{paths:?}");
    let meta = engine.rooms.meta(&message.event_id).unwrap().expect("the gap event is stored");
    assert_eq!(meta.flags, 0, "accepted into the timeline, not rejected: {meta:?}");
    let meta = engine.rooms.meta(&later_pdu.event_id).unwrap().expect("the new event is stored");
    assert_eq!(meta.flags, 0, "{meta:?}");
    assert_eq!(engine.pending_pdus.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_pdu_survives_a_restart_and_is_accepted_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let Kept { engine, remote, room, peer, serving, message, .. } = kept_pending(dir.path()).await;
    assert_eq!(engine.pending_pdus.len(), 1, "kept pending");

    // Restarted: the waiting PDU is read back, not forgotten.
    let config = (*engine.config).clone();
    engine.shutdown();
    drop(engine);
    let engine = Engine::open(config).unwrap();
    engine.federation.set_transport(peer.clone());
    assert_eq!(engine.pending_pdus.per_origin(), vec![("peer.test".to_owned(), 1)], "read back after the restart");

    serving.store(true, Ordering::SeqCst);
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let later = remote_signed(&engine, &remote, &room, &bob, text("later"), None).await;
    let answer = send(&engine, "t2", vec![serde_json::to_value(&later).unwrap()]).await;
    assert_eq!(answer["pdus"].as_object().map(|m| m.len()), Some(1), "{answer}");
    let meta = engine.rooms.meta(&message.event_id).unwrap().expect("accepted after the restart");
    assert_eq!(meta.flags, 0, "{meta:?}");
    assert_eq!(engine.pending_pdus.len(), 0);

    // Settled: a second restart finds nothing waiting.
    let config = (*engine.config).clone();
    engine.shutdown();
    drop(engine);
    let engine = Engine::open(config).unwrap();
    assert!(engine.pending_pdus.is_empty(), "the settled PDU was removed from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_missing_auth_events_come_in_one_event_auth_request() {
    let chain: Arc<Mutex<Vec<JsonValue>>> = Arc::default();
    let served = chain.clone();
    let peer = FakePeer::new(move |_, req| {
        if req.path_and_query.contains("/event_auth/") {
            return Ok((200, json!({ "auth_chain": served.lock().clone() })));
        }
        Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
    });
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    // Two auth events we never received: a power-level change of alice's and a
    // membership change of bob's; /event serves neither.
    let alice = UserId::parse("@alice:us.test").unwrap();
    let mut levels: JsonValue = serde_json::from_str(
        engine.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap().content.get(),
    )
    .unwrap();
    levels["events_default"] = json!(0);
    levels["state_default"] = json!(51);
    let levels = NewEvent::state(ruma::events::TimelineEventType::RoomPowerLevels, "", levels);
    let levels = remote_signed(&engine, &engine.keys, &room, &alice, levels, None).await;
    let levels_pdu = Pdu::from_object(levels.clone(), &rules).unwrap();
    let (change, change_pdu, _, _) = message_citing_an_unseen_membership(&engine, &remote, &room).await;
    let held_levels = engine.rooms.state_event(&room, "m.room.power_levels", "").unwrap().unwrap();
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let held_member = engine.rooms.state_event(&room, "m.room.member", bob.as_str()).unwrap().unwrap();
    let mut message = engine.rooms.template(&bob, &room, text("cites two")).await.unwrap();
    let Some(CanonicalJsonValue::Array(auth)) = message.get_mut("auth_events") else { panic!("no auth events") };
    for a in auth.iter_mut() {
        if *a == CanonicalJsonValue::String(held_levels.event_id.to_string()) {
            *a = CanonicalJsonValue::String(levels_pdu.event_id.to_string());
        } else if *a == CanonicalJsonValue::String(held_member.event_id.to_string()) {
            *a = CanonicalJsonValue::String(change_pdu.event_id.to_string());
        }
    }
    remote.hash_and_sign_event(&mut message, &rules).unwrap();
    let message_pdu = Pdu::from_object(message.clone(), &rules).unwrap();
    assert!(
        message_pdu.auth_events.contains(&levels_pdu.event_id)
            && message_pdu.auth_events.contains(&change_pdu.event_id)
    );
    // The chain as a resident serves it: what we hold too, and the two we lack.
    let create = engine.rooms.state_event(&room, "m.room.create", "").unwrap().unwrap();
    *chain.lock() = vec![
        serde_json::to_value(&*create.json).unwrap(),
        serde_json::to_value(&levels).unwrap(),
        serde_json::to_value(&change).unwrap(),
    ];

    let answer = send(&engine, "t1", vec![serde_json::to_value(&message).unwrap()]).await;
    assert_eq!(answer["pdus"][message_pdu.event_id.as_str()], json!({}), "{answer}");
    let paths = peer.paths();
    assert_eq!(paths.iter().filter(|p| p.contains("/event_auth/")).count(), 1, "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("/event/")), "nothing asked one by one: {paths:?}");
    for id in [&levels_pdu.event_id, &change_pdu.event_id] {
        let meta = engine.rooms.meta(id).unwrap().expect("the auth event is stored");
        assert_eq!(meta.flags, tables::OUTLIER, "as an outlier that passed the auth rules");
    }
    assert_eq!(engine.rooms.meta(&message_pdu.event_id).unwrap().expect("stored").flags, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_origins_pending_pdu_is_retried_without_a_new_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let Kept { engine, serving, message, .. } = kept_pending(dir.path()).await;
    assert_eq!(engine.pending_pdus.len(), 1);
    // The peer can serve now but sends nothing more: the retry task alone brings the event in.
    serving.store(true, Ordering::SeqCst);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let every = std::time::Duration::from_millis(50);
    let task = tokio::spawn(super::inbound::run_pending_retries(engine.clone(), every, stop_rx));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.rooms.meta(&message.event_id).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the pending event was never retried");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(engine.rooms.meta(&message.event_id).unwrap().unwrap().flags, 0);
    assert_eq!(engine.pending_pdus.len(), 0);
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

/// A peer slow to serve an event's auth events does not hold up its
/// transaction past `federation.gap_fill_wait_ms`: the event is answered as
/// kept pending, and taken once the peer can serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_auth_event_fetch_is_cut_at_the_transactions_deadline_and_the_event_kept_pending() {
    let served: Arc<Mutex<Vec<(String, JsonValue)>>> = Arc::default();
    let peer = serving_peer(served.clone(), Arc::new(AtomicBool::new(true)));
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) =
        super::tests::room_with_a_remote_member_and(dir.path(), peer.clone(), |c| c.federation.gap_fill_wait_ms = 200)
            .await;
    let (change, change_pdu, json, message) = message_citing_an_unseen_membership(&engine, &remote, &room).await;
    served.lock().push((change_pdu.event_id.to_string(), serde_json::to_value(&change).unwrap()));
    peer.slow_down("/event/", std::time::Duration::from_secs(3));
    let answer = send(&engine, "t1", vec![json]).await;
    let error = answer["pdus"][message.event_id.as_str()]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("kept pending"), "{answer}");
    assert!(engine.rooms.meta(&message.event_id).unwrap().is_none());
    assert_eq!(engine.pending_pdus.len(), 1, "kept pending");
    // The peer is quick again: its next transaction brings the event in.
    peer.slow_down("/nothing/", std::time::Duration::ZERO);
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let later = remote_signed(&engine, &remote, &room, &bob, text("later"), None).await;
    send(&engine, "t2", vec![serde_json::to_value(&later).unwrap()]).await;
    let meta = engine.rooms.meta(&message.event_id).unwrap().expect("accepted once the peer answered in time");
    assert_eq!(meta.flags, 0, "{meta:?}");
    assert_eq!(engine.pending_pdus.len(), 0);
}
