//! Inbound transactions against the scripted peer: the limits, gap filling
//! (`get_missing_events`, the `/state_ids` fallback, fills in the
//! background and their bounds), rejected events and the signatures checked.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use ruma::UserId;
use serde_json::{Value as JsonValue, json};

use super::{
    FakePeer, engine, public_room_bob_joined, remote_signed, room_with_a_remote_member, room_with_a_remote_member_and,
    text,
};
use crate::federation::{FederationError, TransportError, enc, inbound};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_limits_is_refused_whole_and_nothing_is_fetched() {
    let peer = FakePeer::new(|_, _| Ok((500, json!({}))));
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer.clone());
    let pdu = json!({ "room_id": "!r:peer.test", "type": "m.room.message", "content": {} });
    let txn = inbound::Transaction { pdus: vec![pdu; inbound::MAX_PDUS + 1], edus: Vec::new() };
    let err = inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap_err();
    assert!(matches!(err, FederationError::BadRequest(_)), "{err:?}");
    let edus = vec![json!({ "edu_type": "m.typing", "content": {} }); inbound::MAX_EDUS + 1];
    let txn = inbound::Transaction { pdus: Vec::new(), edus };
    let err = inbound::receive_transaction(&engine, "peer.test", "t2", txn).await.unwrap_err();
    assert!(matches!(err, FederationError::BadRequest(_)), "{err:?}");
    // At the limit, PDUs for rooms we are not in are ignored without asking the peer anything.
    let pdu = json!({ "room_id": "!r:peer.test", "type": "m.room.message", "content": {} });
    let txn = inbound::Transaction { pdus: vec![pdu; inbound::MAX_PDUS], edus: Vec::new() };
    let answer = inbound::receive_transaction(&engine, "peer.test", "t3", txn).await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer, json!({ "pdus": {} }));
    assert!(peer.paths().is_empty(), "{:?}", peer.paths());
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
    let txn = inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: Vec::new() };
    let answer = inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
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
    let retries = tokio::spawn(inbound::run_pending_retries(engine.clone(), Duration::from_secs(3600), stop_rx));
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let first = remote_signed(&engine, &remote, &room, &bob, text("one"), None).await;
    let first_pdu = crate::rooms::Pdu::from_object(first.clone(), &rules).unwrap();
    let second = remote_signed(&engine, &remote, &room, &bob, text("two"), Some(&first_pdu)).await;
    let second_pdu = crate::rooms::Pdu::from_object(second.clone(), &rules).unwrap();
    *missing.lock() = Some(serde_json::to_value(&first).unwrap());
    let send = |txn_id: &'static str| {
        let (engine, second) = (engine.clone(), second.clone());
        async move {
            let txn = inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: vec![] };
            let answer = inbound::receive_transaction(&engine, "peer.test", txn_id, txn).await.unwrap();
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
    let txn = inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: Vec::new() };
    // Answered (the transaction is not failed as a whole), whatever became of the event.
    inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let paths = peer.paths();
    assert!(
        paths.iter().any(|p| p.contains("/state_ids/") && p.contains(&enc(first_pdu.event_id.as_str()))),
        "{paths:?}"
    );
    assert!(engine.rooms.meta(&first_pdu.event_id).unwrap().is_none(), "nothing made up for the missing event");
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
    let txn = inbound::Transaction { pdus: vec![serde_json::to_value(&second).unwrap()], edus: Vec::new() };
    inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
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
    let answer =
        inbound::receive_transaction(&engine, "peer.test", "t1", inbound::Transaction { pdus, edus: Vec::new() })
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
/// rooms than [`inbound::MAX_GAP_FILLS_PER_ORIGIN`], only that many
/// fills run; the other events are kept pending without a fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_runs_at_most_its_share_of_gap_fills_at_once() {
    use inbound::MAX_GAP_FILLS_PER_ORIGIN;
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
    let txn = inbound::Transaction { pdus, edus: Vec::new() };
    let answer = inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
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
    let txn = inbound::Transaction { pdus: vec![serde_json::to_value(&pdu).unwrap()], edus: Vec::new() };
    let answer = inbound::receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    let answer: JsonValue = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["pdus"][id.as_str()], json!({}), "accepted on the sender's signature: {answer}");
    let asked: Vec<String> = peer.seen.lock().iter().map(|s| s.0.clone()).filter(|d| d.starts_with("signer")).collect();
    assert!(asked.is_empty(), "keys looked up for servers no rule requires: {asked:?}");
}
