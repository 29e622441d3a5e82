//! Importing another server's room history: judged here, delivered nowhere.

use myelin_storage::Direction;
use ruma::{OwnedRoomId, RoomVersionId, UserId};

use super::import::Imported;
use super::inbound_tests::{Net, join, net, parse, public_room, remote_event, text};
use super::*;

/// A public room on `n` with a member from `remote.example` and a message of ours after.
async fn room_with_a_remote_member(n: &Net) -> (OwnedRoomId, Vec<ArcPdu>) {
    let room = public_room(n).await;
    let joined = remote_event(n, &room, "@zed:remote.example", join("@zed:remote.example")).await;
    assert!(matches!(n.rooms.append_pdu(parse(joined)).await.unwrap(), Appended::Accepted(_)));
    let alice = UserId::parse("@alice:test").unwrap();
    n.rooms.send(&alice, &room, text("hello zed")).await.unwrap();
    let events = n.rooms.timeline(&room, None, Direction::Forward, 100).unwrap().into_iter().map(|(_, p)| p).collect();
    (room, events)
}

fn state_ids(n: &Net, room: &OwnedRoomId) -> Vec<String> {
    let mut ids: Vec<String> = n.rooms.current_state(room).unwrap().iter().map(|p| p.event_id.to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn imported_history_gets_the_same_state_and_is_queued_to_no_server() {
    let from = net();
    let (room, events) = room_with_a_remote_member(&from).await;
    assert!(
        !from.rooms.outbound_destinations().unwrap().is_empty(),
        "the source queued alice's message to zed's server"
    );

    let to = net();
    to.rooms.begin_import();
    for pdu in &events {
        let imported = to.rooms.import_event(&RoomVersionId::V12, (**pdu).clone()).await.unwrap();
        assert!(matches!(imported, Imported::Timeline(_)), "{}", pdu.event_id);
    }
    assert_eq!(state_ids(&to, &room), state_ids(&from, &room));
    let here: Vec<_> = to.rooms.timeline(&room, None, Direction::Forward, 100).unwrap();
    assert_eq!(here.len(), events.len());
    assert!(to.rooms.outbound_destinations().unwrap().is_empty(), "imported history is not sent again");
    // Twice: refused, nothing doubled.
    assert!(matches!(to.rooms.import_event(&RoomVersionId::V12, (*events[3]).clone()).await, Err(RoomError::InUse(_))));

    // An event the auth rules here refuse (a stranger speaking) is rejected, whatever the source said.
    let stranger = remote_event(&from, &room, "@eve:remote.example", text("not a member")).await;
    let imported = to.rooms.import_event(&RoomVersionId::V12, parse(stranger)).await.unwrap();
    assert!(matches!(imported, Imported::Rejected(_)), "{imported:?}");
}

#[tokio::test]
async fn an_event_whose_prev_events_are_missing_enters_on_the_state_before_it() {
    let from = net();
    let (room, events) = room_with_a_remote_member(&from).await;
    let last = events.last().unwrap();
    let before = from.rooms.state_at(from.rooms.snapshot_before(&last.event_id).unwrap()).unwrap();
    let state: Vec<Pdu> = before.iter().map(|p| (**p).clone()).collect();
    let chain: Vec<Pdu> = events[..events.len() - 1].iter().map(|p| (**p).clone()).collect();

    let to = net();
    to.rooms.begin_import();
    let imported = to.rooms.import_gap(&RoomVersionId::V12, (**last).clone(), state, chain).await.unwrap();
    assert!(matches!(imported, Imported::Timeline(_)), "{imported:?}");
    assert_eq!(state_ids(&to, &room), state_ids(&from, &room));
    let timeline = to.rooms.timeline(&room, None, Direction::Forward, 100).unwrap();
    assert_eq!(timeline.len(), 1, "only the gap's event is in the timeline; the state is held outside it");
    assert!(to.rooms.outbound_destinations().unwrap().is_empty());
    // What comes next builds on it.
    assert!(to.rooms.holds_with_state(&last.event_id).unwrap());
}
