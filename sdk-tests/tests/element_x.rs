//! Element X's engine against a real Myelin: the `matrix-sdk` and `matrix-sdk-ui`
//! crates (the room list and timelines of Element X) sync through simplified
//! sliding sync with a `myelin serve` started from the workspace build.
//! Encryption is in `element_x_e2ee.rs` and `element_x_keys.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use matrix_sdk::RoomState;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_room_list_timeline_invites_unread_and_restart() {
    let mut server = Server::start().await;
    let alice_web = register(&server, "alice").await;
    let bob = register(&server, "bob").await;

    // Alice (on another client) has three rooms; the newest message is in `c`.
    let a = create(&alice_web, "a").await;
    let b = create(&alice_web, "b").await;
    let c = create(&alice_web, "c").await;
    for n in 0..30 {
        say(&a, &format!("history {n}")).await;
    }
    say(&b, "in b").await;
    say(&c, "in c").await;
    let rooms = vec![a.room_id().to_owned(), b.room_id().to_owned(), c.room_id().to_owned()];
    a.invite_user_by_id(bob.user_id().unwrap()).await.expect("invite bob");
    let bob_a = bob.join_room_by_id(a.room_id()).await.expect("bob joins a");

    // Element X logs in and syncs: the room list holds the three, most recent first.
    let ex = login(&server, "alice").await;
    let sync = start_sync(&ex).await;
    let shown = shown_rooms(&sync).await;
    eventually("three joined rooms", || {
        rooms.iter().all(|r| ex.get_room(r).is_some_and(|r| r.state() == RoomState::Joined))
    })
    .await;
    // Bob's join is newer than the messages but does not bump; `c` stays on top.
    let newest_first = vec![rooms[2].clone(), rooms[1].clone(), rooms[0].clone()];
    eventually("recency c, b, a", || by_recency(&ex, &rooms) == newest_first).await;
    assert_eq!(ex.get_room(&rooms[2]).unwrap().name().as_deref(), Some("c"));
    // The room list shows them in that order.
    eventually("the room list shows c, b, a", || snapshot(&shown) == newest_first).await;

    // A message from another client moves its room to the top, and arrives in the timeline.
    let timeline_a = ex.get_room(&rooms[0]).unwrap().timeline().await.expect("timeline");
    say(&bob_a, "bob was here").await;
    eventually("room a on top", || by_recency(&ex, &rooms)[0] == rooms[0]).await;
    let moved = vec![rooms[0].clone(), rooms[2].clone(), rooms[1].clone()];
    eventually("the room list shows a, c, b", || snapshot(&shown) == moved).await;
    wait_for_text(&timeline_a, "bob was here").await;
    // Unread: one notifying message from bob.
    eventually("one unread in a", || {
        ex.get_room(&rooms[0]).is_some_and(|r| r.unread_notification_counts().notification_count == 1)
    })
    .await;

    // The timeline paginates back to the room's first message.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !texts(&timeline_a).await.iter().any(|t| t == "history 0") {
        assert!(Instant::now() < deadline, "paging back did not reach history 0: {:?}", texts(&timeline_a).await);
        timeline_a.paginate_backwards(20).await.expect("paginate");
    }
    let got = texts(&timeline_a).await;
    let history: Vec<&String> = got.iter().filter(|t| t.starts_with("history ")).collect();
    assert_eq!(history.len(), 30, "each message once, in order: {got:?}");
    assert_eq!(history[0], "history 0");

    // An invite appears, and is accepted.
    let d = bob
        .create_room(assign!(create_room::v3::Request::new(), {
            name: Some("from bob".to_owned()),
            invite: vec![UserId::parse("@alice:localhost").unwrap()],
        }))
        .await
        .expect("bob creates d");
    let d_id = d.room_id().to_owned();
    eventually("invite to d", || ex.get_room(&d_id).is_some_and(|r| r.state() == RoomState::Invited)).await;
    eventually("the invite heads the room list", || snapshot(&shown).first() == Some(&d_id)).await;
    ex.get_room(&d_id).unwrap().join().await.expect("accept the invite");
    eventually("joined d", || ex.get_room(&d_id).is_some_and(|r| r.state() == RoomState::Joined)).await;
    say(&d, "welcome").await;
    let timeline_d = ex.get_room(&d_id).unwrap().timeline().await.expect("timeline d");
    wait_for_text(&timeline_d, "welcome").await;

    // A server restart: the connection's position is gone (M_UNKNOWN_POS); the SDK starts
    // again and keeps receiving.
    server = server.restart().await;
    let bob = login(&server, "bob").await;
    let bob_d = bob.get_room(&d_id);
    let bob_d = match bob_d {
        Some(r) => r,
        None => bob.join_room_by_id(&d_id).await.expect("bob's room d"),
    };
    say(&bob_d, "after the restart").await;
    wait_for_text(&timeline_d, "after the restart").await;
    eventually("room d on top", || {
        let mut all = rooms.clone();
        all.push(d_id.clone());
        by_recency(&ex, &all)[0] == d_id
    })
    .await;
    drop(server);
}
