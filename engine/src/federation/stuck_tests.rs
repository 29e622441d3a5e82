//! A peer that cannot fill a gap does not wedge the room (issue #22 §1): an
//! event whose prev events nobody serves is held back, while the same peer's
//! later events that reference events we hold are taken as they arrive.

use ruma::UserId;
use serde_json::{Value as JsonValue, json};

use super::{
    inbound::{Transaction, receive_transaction},
    tests::{FakePeer, remote_signed, room_with_a_remote_member_and, text},
};
use crate::rooms::Pdu;

fn answer_for(answer: &[u8], id: &ruma::EventId) -> JsonValue {
    let answer: JsonValue = serde_json::from_slice(answer).unwrap();
    answer["pdus"][id.as_str()].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_gap_cannot_be_filled_does_not_stop_the_peers_later_events() {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    // The peer serves no missing events and no state: the gap stays open.
    let peer = FakePeer::new(|_, req| {
        if req.path_and_query.contains("get_missing_events") {
            Ok((200, json!({ "events": [] })))
        } else {
            Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (engine, remote, room) =
        room_with_a_remote_member_and(dir.path(), peer.clone(), |c| c.federation.gap_fill_wait_ms = 300).await;
    let bob = UserId::parse("@bob:peer.test").unwrap();
    let lost = remote_signed(&engine, &remote, &room, &bob, text("lost"), None).await;
    let lost = Pdu::from_object(lost, &rules).unwrap();
    let stuck = remote_signed(&engine, &remote, &room, &bob, text("stuck"), Some(&lost)).await;
    let stuck = Pdu::from_object(stuck, &rules).unwrap();
    let txn = Transaction { pdus: vec![serde_json::to_value(&*stuck.json).unwrap()], edus: Vec::new() };
    let answer = receive_transaction(&engine, "peer.test", "t1", txn).await.unwrap();
    assert!(engine.rooms.meta(&stuck.event_id).unwrap().is_none(), "an event on an unfilled gap was stored");
    assert!(engine.rooms.meta(&lost.event_id).unwrap().is_none(), "nothing made up for the lost event");
    let first = answer_for(&answer, &stuck.event_id);
    assert!(first.is_object(), "the stuck event has an answer: {first}");

    // The peer goes on: events on what we hold are taken at once, one after another.
    let mut after = None;
    for (n, body) in ["later", "and later"].into_iter().enumerate() {
        let event = remote_signed(&engine, &remote, &room, &bob, text(body), after.as_ref()).await;
        let event = Pdu::from_object(event, &rules).unwrap();
        let txn = Transaction { pdus: vec![serde_json::to_value(&*event.json).unwrap()], edus: Vec::new() };
        let answer = receive_transaction(&engine, "peer.test", &format!("t{}", n + 2), txn).await.unwrap();
        assert_eq!(answer_for(&answer, &event.event_id), json!({}), "{body:?} was not taken");
        assert!(engine.rooms.meta(&event.event_id).unwrap().is_some(), "{body:?} is not stored");
        after = Some(event);
    }
    let head = engine.rooms.extremities(&room).unwrap();
    assert!(head.iter().any(|id| *id == after.as_ref().unwrap().event_id), "the room did not move on: {head:?}");

    // The stuck event is retried, or dropped with a logged reason, never left
    // in between: it is pending or its answer names the reason.
    let pending = !engine.pending_pdus.is_empty() || !engine.gap_fills.is_empty();
    let reason = first.get("error").and_then(JsonValue::as_str).is_some();
    assert!(pending || reason, "the stuck event is neither retried nor refused with a reason: {first}");
}
