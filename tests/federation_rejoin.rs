//! Joining again a room this server still holds but that no user of ours is
//! joined to any more: our copy stopped when the last one left (nobody sends
//! us the room's events), so the join must go through a resident server
//! (Server-Server API §"Joining Rooms"), not be appended on the stale copy.

use http::Method;
use myelin_suite::{enc, federation_pair, wait_for_text};
use serde_json::json;

async fn wait_until_left(alice: &myelin_suite::Client, room: &str, user: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let m = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room))).await;
        if m["joined"].get(user).is_none() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{user}'s leave never reached the room's server");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_after_our_last_user_left_sees_what_changed_meanwhile_and_obeys_it() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "hello bob").await;
    wait_for_text(&bob, &room, "hello bob").await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
    wait_until_left(&alice, &room, &bob.user_id).await;

    // While B is out, the room moves on: B hears nothing of it.
    alice
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)), json!({ "topic": "moved on" }))
        .await;
    alice.send_text(&room, "while you were away").await;

    // Bob joins again: the join goes through A, so B has the room as it is now.
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let topic = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room))).await;
    assert_eq!(topic["topic"], "moved on", "B's state after the rejoin is the room's current state");
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
    assert!(members["joined"].get(&bob.user_id).is_some(), "A has bob joined when his join returns: {members}");
    alice.send_text(&room, "welcome back").await;
    wait_for_text(&bob, &room, "welcome back").await;

    // Out again, and the room becomes invite-only meanwhile: B's stale copy
    // says public, but the join must be refused.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
    wait_until_left(&alice, &room, &bob.user_id).await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&room)),
            json!({ "join_rule": "invite" }),
        )
        .await;
    let r = bob
        .request(Method::POST, &format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), Some(json!({})))
        .await;
    assert_eq!(r.status, http::StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&r.body));
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
    assert!(members["joined"].get(&bob.user_id).is_none(), "{members}");
    a.stop().await;
    b.stop().await;
}
