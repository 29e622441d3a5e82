//! Room history and state across servers: backfill, state and auth-chain reads,
//! history visibility, gaps closed or bridged, and a state fork converging.

use http::{Method, StatusCode};
use myelin_engine::federation::xmatrix;
use myelin_suite::{enc, federation_pair, https_with, signed_get, wait_for_text};
use serde_json::json;

/// Every message body of the room's history as `c` pages back through
/// `/messages` in pages of `page`, newest first.
async fn history_bodies(c: &myelin_suite::Client, room: &str, page: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={page}{}",
            enc(room),
            from.as_deref().map(|f| format!("&from={f}")).unwrap_or_default()
        );
        let reply = c.get(&path).await;
        let chunk = reply["chunk"].as_array().cloned().unwrap_or_default();
        bodies.extend(chunk.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)));
        match reply["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_written_before_a_remote_user_joined_is_backfilled_into_messages() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    for i in 0..60 {
        alice.send_text(&room, &format!("old {i}")).await;
    }
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;

    let seen = history_bodies(&bob, &room, 25).await;
    let want: Vec<String> = (0..60).rev().map(|i| format!("old {i}")).collect();
    assert_eq!(seen, want, "all history, newest first, exactly once");
    let create = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200", enc(&room))).await;
    assert!(
        create["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"),
        "back to the room's creation"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_the_room_reads_state_ids_state_and_auth_chains_and_an_outsider_cannot() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Stateful" })).await;
    let msg = alice.send_text(&room, "a point in time").await;
    let fed = a.federation.unwrap();
    // Requests signed as B.
    let get = |path: String| {
        let header = xmatrix::sign(&b.engine.keys, "b.test", "a.test", "GET", &path, None).unwrap();
        async move { https_with(fed, Method::GET, &path, None, &[("authorization", &header)]).await }
    };
    let state_ids = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room), enc(&msg));

    // B has no member in the room yet: refused.
    let r = get(state_ids.clone()).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));

    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let r = get(state_ids.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let ids = r.json();
    let pdu_ids: Vec<&str> = ids["pdu_ids"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let current = alice.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room))).await;
    // The state before the message: everything current except bob's later join.
    let expected: std::collections::BTreeSet<&str> = current
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state_key"] != "@bob:b.test")
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(pdu_ids.iter().copied().collect::<std::collections::BTreeSet<_>>(), expected);
    assert!(!ids["auth_chain_ids"].as_array().unwrap().is_empty());

    let r = get(format!("/_matrix/federation/v1/state/{}?event_id={}", enc(&room), enc(&msg))).await;
    let full = r.json();
    let name = full["pdus"].as_array().unwrap().iter().find(|p| p["type"] == "m.room.name").expect("the name event");
    assert_eq!(name["content"]["name"], "Stateful");

    let r = get(format!("/_matrix/federation/v1/event_auth/{}/{}", enc(&room), enc(&msg))).await;
    let chain = r.json()["auth_chain"].as_array().cloned().unwrap();
    // Room v12 leaves the create event out of auth events (the room id names it).
    assert!(chain.iter().any(|p| p["type"] == "m.room.power_levels"), "{chain:?}");
    assert!(chain.iter().any(|p| p["type"] == "m.room.member" && p["state_key"] == "@alice:a.test"));
    assert!(chain.iter().all(|p| p["room_id"] == room.as_str()));

    let r = get(format!("/_matrix/federation/v1/state_ids/{}?event_id=%24nope", enc(&room))).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_state_changes_on_two_servers_converge_to_the_same_state() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "name": "start",
            "power_level_content_override": { "users": { "@bob:b.test": 100 } }
        }))
        .await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "both here").await;
    wait_for_text(&bob, &room, "both here").await;

    // Cut the link, then change the same state on both sides.
    let admin = |req: serde_json::Value| {
        let dir = a.engine.config.data_dir.clone();
        async move { myelin_api::admin::request(&dir, &req).await.unwrap().expect("the admin socket answers") }
    };
    assert_eq!(admin(json!({ "op": "federation_deny", "server": "b.test" })).await["ok"], true);
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room));
    let topic_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room));
    alice.put(&name_path, json!({ "name": "named on A" })).await;
    alice.put(&topic_path, json!({ "topic": "topic from A" })).await;
    bob.put(&name_path, json!({ "name": "named on B" })).await;
    alice.send_text(&room, "A while apart").await;
    bob.send_text(&room, "B while apart").await;

    // Reconnect: each side fetches what it missed and resolves the fork.
    assert_eq!(admin(json!({ "op": "federation_remove", "server": "b.test" })).await["ok"], true);
    bob.send_text(&room, "B again").await;
    wait_for_text(&alice, &room, "B again").await;
    alice.send_text(&room, "A again").await;
    wait_for_text(&bob, &room, "A again").await;

    let state_of = |c: myelin_suite::Client| {
        let room = room.clone();
        async move {
            let all = c.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room))).await;
            let mut ids: Vec<(String, String, String)> = all
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap_or_default().to_owned(),
                        e["state_key"].as_str().unwrap_or_default().to_owned(),
                        e["event_id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            ids.sort();
            ids
        }
    };
    let on_a = state_of(alice.clone()).await;
    let on_b = state_of(bob.clone()).await;
    assert_eq!(on_a, on_b, "both servers hold the same current state");
    let name = alice.get(&name_path).await["name"].as_str().unwrap().to_owned();
    assert!(name == "named on A" || name == "named on B", "{name}");
    assert_eq!(bob.get(&topic_path).await["topic"], "topic from A", "the unconflicted change from A reached B");
    // Both sides have both partitions' messages.
    for c in [&alice, &bob] {
        let page = c.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room))).await;
        let bodies: Vec<&str> =
            page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
        assert!(bodies.contains(&"A while apart") && bodies.contains(&"B while apart"), "{}: {bodies:?}", c.user_id);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_of_many_events_is_closed_from_a_single_newer_event() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before").await;
    wait_for_text(&bob, &room, "before").await;

    // B is away; A writes 150 messages and then loses its queue for B (as a peer in
    // catch-up mode does: it sends only its newest event afterwards).
    let mut b = b;
    b.halt().await;
    for i in 0..150 {
        alice.send_text(&room, &format!("missed {i}")).await;
    }
    let dest = a.engine.rooms.server_short("b.test").unwrap().expect("B was queued to");
    let queued = a.engine.rooms.outbound_batch(dest, 10_000, 0).unwrap();
    assert!(queued.pdus.len() >= 150);
    a.engine.rooms.outbound_delivered(dest, &queued).await.unwrap();

    let b = b.restart().await;
    bob.addr = b.client;
    alice.send_text(&room, "after").await;
    wait_for_text(&bob, &room, "after").await;
    let got = history_bodies(&bob, &room, 100).await;
    let missed: Vec<&String> = got.iter().filter(|b| b.starts_with("missed ")).collect();
    assert_eq!(missed.len(), 150, "every missed message, once: {} of 150", missed.len());
    let want: Vec<String> = (0..150).rev().map(|i| format!("missed {i}")).collect();
    assert_eq!(missed.into_iter().cloned().collect::<Vec<_>>(), want, "in order");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_only_history_is_not_served_to_a_server_that_joined_later() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }]
        }))
        .await;
    let mut secrets = Vec::new();
    for i in 0..5 {
        secrets.push(alice.send_text(&room, &format!("secret {i}")).await);
    }
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "public now").await;
    wait_for_text(&bob, &room, "public now").await;

    // Backfilling through /messages brings the DAG, not the secrets.
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room))).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(bodies.contains(&"public now"), "{bodies:?}");
    assert!(!bodies.iter().any(|b| b.starts_with("secret")), "joined-only history leaked: {bodies:?}");

    // Asked directly, A refuses B the pre-join event; a shared-history event is served.
    let path = format!("/_matrix/federation/v1/event/{}", enc(&secrets[0]));
    let r = signed_get(&b, &a, &path).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&r.body));
    let path = format!("/_matrix/federation/v1/backfill/{}?v={}&limit=10", enc(&room), enc(&secrets[4]));
    let r = signed_get(&b, &a, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    let pdus = r.json()["pdus"].as_array().cloned().unwrap();
    assert!(pdus.iter().any(|p| p["event_id"] == secrets[4].as_str() || p["type"] == "m.room.message"), "{pdus:?}");
    assert!(pdus.iter().all(|p| p["content"]["body"].is_null()), "served redacted: {pdus:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_too_large_to_fetch_is_bridged_on_the_senders_state() {
    // B fetches no missing events at all: every gap is "too large".
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |c| c.federation.max_gap_events = 0).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "old name" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before").await;
    wait_for_text(&bob, &room, "before").await;

    // B is away; A renames the room and writes, then loses its queue for B.
    let mut b = b;
    b.halt().await;
    alice
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)), json!({ "name": "new name" }))
        .await;
    for i in 0..20 {
        alice.send_text(&room, &format!("missed {i}")).await;
    }
    let dest = a.engine.rooms.server_short("b.test").unwrap().expect("B was queued to");
    let queued = a.engine.rooms.outbound_batch(dest, 10_000, 0).unwrap();
    a.engine.rooms.outbound_delivered(dest, &queued).await.unwrap();

    let b = b.restart().await;
    bob.addr = b.client;
    alice.send_text(&room, "after").await;
    // The newest event arrives although none of the 21 before it could be fetched,
    // and B's state is A's: the rename made during the gap holds on B.
    wait_for_text(&bob, &room, "after").await;
    let name = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room))).await;
    assert_eq!(name["name"], "new name");
    // And the room goes on: bob's reply reaches A.
    bob.send_text(&room, "bob after the gap").await;
    wait_for_text(&alice, &room, "bob after the gap").await;
    // The 20 messages inside the gap are not lost: walking /messages back to
    // the start backfills them from the gap's edge, each once.
    let mut seen: Vec<String> = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=7{}",
            enc(&room),
            from.as_deref().map(|f| format!("&from={}", enc(f))).unwrap_or_default()
        );
        let page = bob.get(&path).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        seen.extend(chunk.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)));
        from = page["end"].as_str().map(str::to_owned);
        if from.is_none() || chunk.is_empty() {
            break;
        }
    }
    for i in 0..20 {
        let text = format!("missed {i}");
        assert_eq!(seen.iter().filter(|b| **b == text).count(), 1, "{text} once in bob's history: {seen:?}");
    }
    a.stop().await;
    b.stop().await;
}
