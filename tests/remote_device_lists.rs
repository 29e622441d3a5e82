//! A remote user's device list, fetched once while this server shares a room
//! with them, is served from the cache (as Synapse does) until something says
//! it may have changed: a device-list update EDU, their membership changing,
//! or this server joining or leaving a room. Each step checks which it was by
//! stopping the user's server: a cached answer names no failure, a query that
//! must ask again names the stopped server in `failures`.

use myelin_suite::{TestServer, device_keys, enc, federation_pair, signed_put, sync_until, wait_for_text};
use serde_json::{Value, json};

async fn query(alice: &myelin_suite::Client, user: &str) -> Value {
    alice.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { user: [] }, "timeout": 3000 })).await
}

/// Asks with `b` stopped; whether the answer came from the cache (and it still lists `device`).
async fn answered_from_cache(b: &mut TestServer, alice: &myelin_suite::Client, user: &str, device: &str) -> bool {
    b.halt().await;
    let q = query(alice, user).await;
    let cached = q["failures"] == json!({});
    assert!(q["device_keys"][user].get(device).is_some(), "the device is listed either way: {q}");
    cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_remote_device_list_is_served_from_cache_until_it_may_have_changed() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "hello bob").await;
    wait_for_text(&bob, &room, "hello bob").await;
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap_or_default().to_owned();
    bob.post(
        "/_matrix/client/v3/keys/upload",
        json!({ "device_keys": device_keys(&bob.user_id, &bob.device_id, "bob-curve") }),
    )
    .await;
    let (user, device) = (bob.user_id.clone(), bob.device_id.clone());
    // Bob's upload is announced to A; a query begun before that arrives is not trusted.
    sync_until(&alice, &since, "bob's device-list update", |s| {
        s["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| *u == *user))
    })
    .await;

    // Fetched whole while sharing a room: served from the cache with B down.
    assert_eq!(query(&alice, &user).await["failures"], json!({}));
    let mut b = b;
    assert!(answered_from_cache(&mut b, &alice, &user, &device).await, "a tracked list is served without asking B");

    // A device-list update (here one without keys) ends that: the next query asks B.
    let edu = json!({ "edu_type": "m.device_list_update", "content": {
        "user_id": user, "device_id": "NEWDEVICE", "stream_id": 9, "prev_id": [], "deleted": false } });
    let txn = json!({ "origin": "b.test", "origin_server_ts": 1, "pdus": [], "edus": [edu] });
    let r = signed_put(&b, &a, "/_matrix/federation/v1/send/edu-1", &txn).await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.json());
    let q = query(&alice, &user).await;
    assert!(q["failures"].get("b.test").is_some(), "after an update the list is asked for again: {q}");

    // B back: fetched again, tracked again.
    let b = b.restart().await;
    let bob = myelin_suite::Client { addr: b.client, ..bob };
    assert_eq!(query(&alice, &user).await["failures"], json!({}));
    let mut b = b;
    assert!(answered_from_cache(&mut b, &alice, &user, &device).await);
    let b = b.restart().await;
    let bob = myelin_suite::Client { addr: b.client, ..bob };

    // Bob leaves the room (no more updates would reach A): asked again.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
        if members["joined"].get(&user).is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob's leave never reached A");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = query(&alice, &user).await;
    let mut b = b;
    assert!(!answered_from_cache(&mut b, &alice, &user, &device).await, "no shared room: not served from cache");

    // Bob back in the room and tracked; then A's only user leaves it: asked again.
    let b = b.restart().await;
    let bob = myelin_suite::Client { addr: b.client, ..bob };
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "welcome back").await;
    wait_for_text(&bob, &room, "welcome back").await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&other)), json!({})).await;
    alice.send_text(&other, "second room").await;
    wait_for_text(&bob, &other, "second room").await;
    assert_eq!(query(&alice, &user).await["failures"], json!({}));
    let mut b = b;
    assert!(answered_from_cache(&mut b, &alice, &user, &device).await);
    let b = b.restart().await;
    // Alice leaves the first room: A is out of it (bob's membership there is unchanged).
    alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
    let mut b = b;
    assert!(
        !answered_from_cache(&mut b, &alice, &user, &device).await,
        "this server leaving a room may end the sharing: asked again"
    );
    a.stop().await;
    b.stop().await;
}
