//! History purges: what goes, what stays, and that the room lives on.

use myelin_storage::Direction;
use ruma::{OwnedEventId, OwnedRoomId, UserId, events::TimelineEventType};
use serde_json::json;

use super::inbound_tests::{Net, join, net, parse, public_room, remote_event, text};
use super::purge::{PurgeRefused, PurgeUpTo, Purged};
use super::*;

async fn from_zoe(n: &Net, room: &OwnedRoomId, event: NewEvent) -> OwnedEventId {
    let object = remote_event(n, room, "@zoe:remote.example", event).await;
    match n.rooms.append_pdu(parse(object)).await.unwrap() {
        Appended::Accepted(p) => p.event_id.clone(),
        other => panic!("zoe's event was not accepted: {other:?}"),
    }
}

async fn from_alice(n: &Net, room: &OwnedRoomId, event: NewEvent) -> OwnedEventId {
    let alice = UserId::parse("@alice:test").unwrap();
    n.rooms.send(&alice, room, event).await.unwrap().event_id.clone()
}

fn redaction_of(target: &OwnedEventId) -> NewEvent {
    NewEvent { redacts: Some(target.clone()), ..NewEvent::message(TimelineEventType::RoomRedaction, json!({})) }
}

fn bodies(n: &Net, room: &OwnedRoomId) -> Vec<String> {
    let page = n.rooms.timeline(room, None, Direction::Forward, 1000).unwrap();
    page.iter().filter_map(|(_, p)| p.content_value()["body"].as_str().map(str::to_owned)).collect()
}

fn held(n: &Net, id: &OwnedEventId) -> bool {
    n.rooms.pdu(id).unwrap().is_some()
}

async fn purge(n: &Net, room: &OwnedRoomId, upto: PurgeUpTo, delete_local: bool) -> Purged {
    let depth = n.rooms.purge_depth(room, &upto).unwrap();
    n.rooms.purge_history(room, depth, delete_local).await.unwrap()
}

#[tokio::test]
async fn a_purge_deletes_remote_messages_before_the_point_and_keeps_state_local_events_and_the_room() {
    let n = net();
    let room = public_room(&n).await;
    let zoe_join = from_zoe(&n, &room, join("@zoe:remote.example")).await;
    let local_one = from_alice(&n, &room, text("local one")).await;
    let banana_object = remote_event(&n, &room, "@zoe:remote.example", text("remote banana")).await;
    let banana = parse(banana_object.clone()).event_id;
    n.rooms.append_pdu(parse(banana_object.clone())).await.unwrap();
    let reaction = from_zoe(
        &n,
        &room,
        NewEvent::message(
            TimelineEventType::Reaction,
            json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": local_one, "key": "👍" } }),
        ),
    )
    .await;
    let doomed = from_zoe(&n, &room, text("remote two")).await;
    let doomed_redaction = from_zoe(&n, &room, redaction_of(&doomed)).await;
    // Zoe redacts her own join: the target is state and stays, so must its redaction.
    let join_redaction = from_zoe(&n, &room, redaction_of(&zoe_join)).await;
    let topic = from_alice(&n, &room, NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": "t" }))).await;
    let boundary = from_alice(&n, &room, text("boundary")).await;
    let after = from_zoe(&n, &room, text("after")).await;

    let short_room = n.rooms.short_room(&room).unwrap().unwrap();
    let local_short = n.rooms.short_event(&local_one).unwrap().unwrap();
    assert_eq!(n.rooms.relations_of(local_short).unwrap().len(), 1);
    assert_eq!(n.rooms.search_room(short_room, "banana").unwrap().len(), 1);
    let state_before: Vec<_> = n.rooms.current_state(&room).unwrap().iter().map(|p| p.event_id.clone()).collect();
    assert_eq!(bodies(&n, &room), ["local one", "remote banana", "remote two", "boundary", "after"]);

    let done = purge(&n, &room, PurgeUpTo::Event(boundary.clone()), false).await;
    assert_eq!(done.deleted, 4, "banana, the reaction, 'remote two' and its redaction: {done:?}");
    assert_eq!(done.kept_local, 1, "{done:?}");

    assert_eq!(bodies(&n, &room), ["local one", "boundary", "after"], "remote messages before the point are gone");
    for gone in [&banana, &reaction, &doomed, &doomed_redaction] {
        assert!(!held(&n, gone), "{gone} should be purged");
        let meta = n.rooms.meta(gone).unwrap().unwrap();
        assert!(meta.flags & PURGED != 0, "{gone} is marked purged");
    }
    for kept in [&zoe_join, &join_redaction, &topic, &local_one, &boundary, &after] {
        assert!(held(&n, kept), "{kept} should stay");
    }
    let join_short = n.rooms.short_event(&zoe_join).unwrap().unwrap();
    assert!(n.rooms.redaction_of(join_short).unwrap().is_some(), "zoe's join is still served redacted");
    assert!(n.rooms.relations_of(local_short).unwrap().is_empty(), "the purged reaction is no longer bundled");
    assert!(n.rooms.search_room(short_room, "banana").unwrap().is_empty(), "purged words are not found");
    let timeline = n.rooms.timeline(&room, None, Direction::Forward, 1000).unwrap();
    assert!(timeline.iter().all(|(_, p)| p.state_key.is_none()), "state before the point left the timeline");
    let state_after: Vec<_> = n.rooms.current_state(&room).unwrap().iter().map(|p| p.event_id.clone()).collect();
    assert_eq!(state_after, state_before, "the room's state is untouched");

    // The room goes on, and a purged event sent again is not taken back.
    from_alice(&n, &room, text("later")).await;
    let again = n.rooms.append_pdu(parse(banana_object)).await;
    assert!(matches!(again, Err(RoomError::InUse(_))), "zoe's server sends it again: it is held: {again:?}");
    assert!(!held(&n, &banana), "a purged event is not stored again");
    assert_eq!(bodies(&n, &room), ["local one", "boundary", "after", "later"]);
    assert!(n.rooms.backfill_point(&room).unwrap().is_empty(), "purged history is not backfilled again");

    // A second purge with delete_local_events takes what the first kept, never the newest.
    let done = purge(&n, &room, PurgeUpTo::Event(n.rooms.extremities(&room).unwrap()[0].clone()), true).await;
    assert_eq!(done.deleted, 3, "local one, boundary, after: {done:?}");
    assert_eq!(bodies(&n, &room), ["later"]);
    assert!(!held(&n, &local_one) && held(&n, &topic) && held(&n, &zoe_join));
}

#[tokio::test]
async fn a_purge_point_must_be_an_event_of_the_room_or_a_time_after_one() {
    let n = net();
    let room = public_room(&n).await;
    let other = public_room(&n).await;
    let first = n.rooms.timeline(&room, None, Direction::Forward, 1).unwrap()[0].1.origin_server_ts.get();
    let in_other = n.rooms.extremities(&other).unwrap()[0].clone();
    assert!(matches!(n.rooms.purge_depth(&room, &PurgeUpTo::Event(in_other)), Err(PurgeRefused::WrongRoom)));
    let unknown: OwnedEventId = "$nope:test".try_into().unwrap();
    assert!(matches!(n.rooms.purge_depth(&room, &PurgeUpTo::Event(unknown)), Err(PurgeRefused::NoSuchEvent)));
    let before_all = u64::from(first);
    assert!(matches!(n.rooms.purge_depth(&room, &PurgeUpTo::Ts(before_all)), Err(PurgeRefused::NothingBefore)));
    let newest = n.rooms.pdu(&n.rooms.extremities(&room).unwrap()[0]).unwrap().unwrap();
    let depth = n.rooms.purge_depth(&room, &PurgeUpTo::Ts(u64::MAX)).unwrap();
    assert_eq!(depth, newest.depth, "the last event before the time is the point");
    // Everything below the newest goes, yet the room is still there to send to.
    let done = n.rooms.purge_history(&room, depth + 10, true).await.unwrap();
    assert_eq!(done.deleted, 0, "a fresh room has only state, which stays: {done:?}");
    from_alice(&n, &room, text("still here")).await;
    assert_eq!(bodies(&n, &room), ["still here"]);
}
