//! Presence that ends by itself (Client-Server API §"Presence": "the server may
//! … mark the user as idle/offline"; Synapse's timeouts): a user who stops
//! syncing goes `offline`, an idle one `unavailable` and back `online` when they
//! act, and a remote user whose server goes quiet `offline` — each seen the way
//! another user sees it, on this server and on another. The timeouts are the
//! `[presence]` keys, shortened here.

use std::time::{Duration, Instant};

use myelin_suite::{Client, TestServer, enc, federation_pair};
use serde_json::json;

/// Waits until `viewer` reads `user`'s presence as `want`; returns the answer.
async fn wait_presence(viewer: &Client, user: &str, want: &str, within: Duration) -> serde_json::Value {
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(user));
    let deadline = Instant::now() + within;
    loop {
        let p = viewer.get(&path).await;
        if p["presence"] == want {
            return p;
        }
        assert!(Instant::now() < deadline, "{user} is still {p} to {}, not {want}", viewer.user_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn presence_in(sync: &serde_json::Value, user: &str) -> Option<String> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["sender"] == user)
        .and_then(|e| e["content"]["presence"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_stops_syncing_goes_offline_and_room_members_see_it() {
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.presence.offline_after_ms = 600;
    })
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    let mut since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Bob long-polls, as a client does, for longer than the timeout: he stays
    // online the whole time.
    let mut bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let bob2 = bob.clone();
    let poll = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(2_000);
        while Instant::now() < until {
            bob_since = bob2.sync(Some(&bob_since), 500).await["next_batch"].as_str().unwrap().to_owned();
        }
    });
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let p = alice.get(&format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id))).await;
    assert_eq!(p["presence"], "online", "online while a sync is in flight: {p}");
    poll.await.unwrap();

    // Then he stops: alice's /sync brings his offline presence.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sync = alice.sync(Some(&since), 1_000).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        if presence_in(&sync, &bob.user_id).as_deref() == Some("offline") {
            break;
        }
        assert!(Instant::now() < deadline, "bob never went offline for alice: {sync}");
    }
    // Syncing again brings him back.
    bob.sync(None, 0).await;
    wait_presence(&alice, &bob.user_id, "online", Duration::from_secs(5)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_user_becomes_unavailable_and_online_again_when_they_send() {
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.presence.idle_after_ms = 500;
    })
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    bob.sync(None, 0).await;
    let p = wait_presence(&alice, &bob.user_id, "online", Duration::from_secs(5)).await;
    assert!(p["last_active_ago"].as_u64().is_some_and(|ms| ms < 5_000), "{p}");

    // Syncing alone is not activity: bob goes idle.
    let p = wait_presence(&alice, &bob.user_id, "unavailable", Duration::from_secs(10)).await;
    assert!(p["last_active_ago"].as_u64().is_some_and(|ms| ms >= 500), "idle for at least the timeout: {p}");
    // A message is: he is online again, just active.
    bob.send_text(&room, "back").await;
    let p = wait_presence(&alice, &bob.user_id, "online", Duration::from_secs(5)).await;
    assert!(p["last_active_ago"].as_u64().is_some_and(|ms| ms < 500), "{p}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_sees_our_user_go_offline_when_she_stops_syncing() {
    let (a, b) = federation_pair("a.test", "b.test", |c| c.presence.offline_after_ms = 600, |_| {}).await;
    let alice = a.register("alice").await;
    let carol = b.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    // Alice syncs: B learns she is online, then, once she stops, that she is offline.
    alice.sync(None, 0).await;
    wait_presence(&carol, &alice.user_id, "online", Duration::from_secs(10)).await;
    wait_presence(&carol, &alice.user_id, "offline", Duration::from_secs(10)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_user_whose_server_goes_quiet_goes_offline_here() {
    // A keeps alice online (its own timeout is the default 30 s) and sends nothing
    // more; B gives up on A's users after 1.5 s without word.
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |c| c.presence.remote_offline_after_ms = 1_500).await;
    let alice = a.register("alice").await;
    let carol = b.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.sync(None, 0).await;
    wait_presence(&carol, &alice.user_id, "online", Duration::from_secs(10)).await;
    let online_seen = Instant::now();
    wait_presence(&carol, &alice.user_id, "offline", Duration::from_secs(10)).await;
    assert!(online_seen.elapsed() >= Duration::from_millis(900), "B waited for its timeout");
    // On A she is still online: the change was B's alone.
    let p = alice.get(&format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id))).await;
    assert_eq!(p["presence"], "online", "{p}");
    a.stop().await;
    b.stop().await;
}
