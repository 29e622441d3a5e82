//! Rooms left on the first `/sync`: a user kicked or banned before she ever
//! synced learns of it from `rooms.leave` (as Synapse shows it); a room she
//! left herself shows only with the filter's `include_leave`.

use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

async fn joined_then(alice: &Client, bob: &Client, action: &str) -> String {
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": bob.user_id })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    alice.send_text(&room, &format!("before the {action}")).await;
    match action {
        "leave" => {
            bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
        }
        _ => {
            alice
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/{action}", enc(&room)),
                    json!({ "user_id": bob.user_id, "reason": "test" }),
                )
                .await;
        }
    }
    alice.send_text(&room, &format!("after the {action}")).await;
    room
}

fn leave_timeline(sync: &Value, room: &str) -> Option<Vec<Value>> {
    sync["rooms"]["leave"][room]["timeline"]["events"].as_array().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_or_ban_before_the_first_sync_shows_in_rooms_leave() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let kicked = joined_then(&alice, &bob, "kick").await;
    let banned = joined_then(&alice, &bob, "ban").await;
    let left = joined_then(&alice, &bob, "leave").await;

    let first = bob.sync(None, 0).await;
    for (room, membership) in [(&kicked, "leave"), (&banned, "ban")] {
        let timeline =
            leave_timeline(&first, room).unwrap_or_else(|| panic!("{membership}: not in rooms.leave: {first}"));
        let last = timeline.last().unwrap();
        assert_eq!(last["type"], "m.room.member", "{membership}: the timeline ends with the leave event");
        assert_eq!(last["state_key"], bob.user_id.as_str());
        assert_eq!(last["content"]["membership"], membership);
        assert_eq!(last["sender"], alice.user_id.as_str());
        let bodies: Vec<&str> = timeline.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
        assert!(bodies.contains(&"before the kick") || bodies.contains(&"before the ban"), "{bodies:?}");
        assert!(!bodies.iter().any(|b| b.starts_with("after")), "nothing after the leave: {bodies:?}");
        assert!(first["rooms"]["join"].get(room.as_str()).is_none());
    }
    assert!(first["rooms"]["leave"].get(left.as_str()).is_none(), "a voluntary leave needs include_leave: {first}");

    // With include_leave, the voluntary leave is there too.
    let filter = enc(&json!({ "room": { "include_leave": true } }).to_string());
    let with = bob.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={filter}")).await;
    let timeline = leave_timeline(&with, &left).unwrap_or_else(|| panic!("include_leave: {with}"));
    assert_eq!(timeline.last().unwrap()["sender"], bob.user_id.as_str());
    assert!(leave_timeline(&with, &kicked).is_some() && leave_timeline(&with, &banned).is_some());

    // An incremental sync from there does not repeat them.
    let next = bob.sync(first["next_batch"].as_str(), 0).await;
    assert!(next["rooms"]["leave"].get(kicked.as_str()).is_none(), "{next}");
    s.stop().await;
}
