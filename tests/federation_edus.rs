//! EDUs and keys across servers: typing and receipts (then a server ACL shutting
//! the other server out), presence, to-device messages, device and cross-signing keys,
//! and remote device changes reaching a sliding-sync encryption connection.

use http::{Method, StatusCode};
use myelin_suite::{device_keys, enc, federation_pair, signed_get, sync_until, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_cross_servers_and_a_server_acl_shuts_a_server_out() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let hello = alice.send_text(&room, "hello").await;
    wait_for_text(&bob, &room, "hello").await;

    // Bob types on B; alice sees it on A.
    let mut since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
        json!({ "typing": true, "timeout": 10000 }),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = alice.sync(Some(&since), 2_000).await;
        let typing = s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["type"] == "m.typing").cloned());
        if typing
            .is_some_and(|t| t["content"]["user_ids"].as_array().is_some_and(|u| u.iter().any(|u| u == "@bob:b.test")))
        {
            break;
        }
        since = s["next_batch"].as_str().unwrap().to_owned();
        assert!(std::time::Instant::now() < deadline, "alice never saw bob typing");
    }

    // Bob reads alice's message; alice sees the receipt.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&hello)), json!({})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = alice.sync(Some(&since), 2_000).await;
        let receipt = s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["type"] == "m.receipt").cloned());
        if receipt.is_some_and(|r| r["content"][&hello]["m.read"].get("@bob:b.test").is_some()) {
            break;
        }
        since = s["next_batch"].as_str().unwrap().to_owned();
        assert!(std::time::Instant::now() < deadline, "alice never saw bob's receipt");
    }

    // An ACL denying B: B's later events no longer enter A's timeline.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", enc(&room)),
            json!({ "allow": ["*"], "deny": ["b.test"] }),
        )
        .await;
    wait_for_text(&alice, &room, "hello").await;
    bob.send_text(&room, "can you hear me?").await;
    alice.send_text(&room, "after the acl").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&room))).await;
    let texts: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(texts.contains(&"after the acl"));
    assert!(!texts.contains(&"can you hear me?"), "a denied server's event must not be accepted: {texts:?}");

    // Room-scoped reads and membership handshakes are refused to B too.
    let last = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    for path in [
        format!("/_matrix/federation/v1/event/{}", enc(&last)),
        format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room), enc(&last)),
        format!("/_matrix/federation/v1/backfill/{}?v={}&limit=5", enc(&room), enc(&last)),
        format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", enc(&room), enc("@carol:b.test")),
        format!("/_matrix/federation/v1/make_leave/{}/{}", enc(&room), enc("@bob:b.test")),
    ] {
        let r = signed_get(&b, &a, &path).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"), "{path}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_set_on_b_is_seen_by_a_user_on_a_who_shares_a_room() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let before = alice.get("/_matrix/client/v3/presence/@bob:b.test/status").await;
    assert_eq!(before["presence"], "offline", "nothing known yet");
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    bob.put(
        &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
        json!({ "presence": "unavailable", "status_msg": "in a meeting" }),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = alice.get("/_matrix/client/v3/presence/@bob:b.test/status").await;
        if p["presence"] == "unavailable" {
            assert_eq!(p["status_msg"], "in a meeting");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A never learned bob's presence: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_reach_a_device_on_another_server() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
            json!({ "messages": { "@bob:b.test": { bob.device_id.clone(): { "hello": "device" } } } }),
        )
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut since = since;
    loop {
        let s = bob.sync(Some(&since), 2_000).await;
        let events = s["to_device"]["events"].as_array().cloned().unwrap_or_default();
        if let Some(e) = events.iter().find(|e| e["type"] == "m.room_key_request") {
            assert_eq!(e["sender"], "@alice:a.test");
            assert_eq!(e["content"]["hello"], "device");
            break;
        }
        since = s["next_batch"].as_str().unwrap().to_owned();
        assert!(std::time::Instant::now() < deadline, "bob's device never got the message");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_keys_are_queried_and_one_time_keys_claimed_across_servers() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "keys next").await;
    wait_for_text(&bob, &room, "keys next").await;

    let alice_keys = device_keys(&alice.user_id, &alice.device_id, "alice-curve");
    let up = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": alice_keys,
                "one_time_keys": {
                    "signed_curve25519:AAAA": { "key": "otk-1", "signatures": {} },
                    "signed_curve25519:AAAB": { "key": "otk-2", "signatures": {} },
                },
            }),
        )
        .await;
    assert_eq!(up["one_time_key_counts"]["signed_curve25519"], 2);
    bob.post(
        "/_matrix/client/v3/keys/upload",
        json!({ "device_keys": device_keys(&bob.user_id, &bob.device_id, "bob-curve") }),
    )
    .await;
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Bob on B reads Alice's keys from A, exactly as she signed them.
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    assert_eq!(q["failures"], json!({}), "{q}");
    let got = &q["device_keys"][&alice.user_id][&alice.device_id];
    for field in ["keys", "signatures", "algorithms", "user_id", "device_id"] {
        assert_eq!(got[field], alice_keys[field], "{field} changed on the way: {got}");
    }
    // And Alice reads Bob's.
    let q = alice.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { bob.user_id.clone(): [] } })).await;
    assert_eq!(
        q["device_keys"][&bob.user_id][&bob.device_id]["keys"][format!("curve25519:{}", bob.device_id)],
        "bob-curve"
    );

    // Bob claims one of Alice's one-time keys; it is gone from A afterwards.
    let c = bob
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" } } }),
        )
        .await;
    let claimed = c["one_time_keys"][&alice.user_id][&alice.device_id].as_object().cloned().unwrap_or_default();
    assert_eq!(claimed.len(), 1, "one key claimed: {c}");
    let s = alice.sync(None, 0).await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 1, "A handed out one key");

    // Alice adds a device: Bob's /sync on B lists her as changed (m.device_list_update).
    let login = myelin_suite::http(
        a.client,
        http::Method::POST,
        "/_matrix/client/v3/login",
        Some(
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1", "device_id": "PHONE" })
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .json();
    let phone = myelin_suite::Client {
        token: login["access_token"].as_str().unwrap().to_owned(),
        device_id: "PHONE".into(),
        ..alice.clone()
    };
    phone
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice.user_id, "PHONE", "phone-curve") }),
        )
        .await;
    let alice_id = alice.user_id.clone();
    sync_until(&bob, &bob_since, "alice's new device", |s| {
        s["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| *u == *alice_id))
    })
    .await;
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    let devices = q["device_keys"][&alice.user_id].as_object().cloned().unwrap_or_default();
    assert!(devices.contains_key("PHONE") && devices.contains_key(&alice.device_id), "both devices: {q}");
    let changes = bob
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={bob_since}&to={}",
            bob.sync(None, 0).await["next_batch"].as_str().unwrap()
        ))
        .await;
    assert!(changes["changed"].as_array().unwrap().iter().any(|u| *u == *alice.user_id), "{changes}");

    // Cross-signing keys reach B too.
    let master = json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { "ed25519:MASTERPUB": "MASTERPUB" } });
    let before_master = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice.post("/_matrix/client/v3/keys/device_signing/upload", json!({ "master_key": master })).await;
    // B serves alice's list from its cache (they share a room) until her
    // server's m.signing_key_update says it changed, as a client learns from /sync.
    sync_until(&bob, &before_master, "alice's new master key", |s| {
        s["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| *u == *alice_id))
    })
    .await;
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    assert_eq!(q["master_keys"][&alice.user_id]["keys"], master["keys"], "{q}");
    assert!(q.get("user_signing_keys").is_none_or(|u| u.get(&alice.user_id).is_none()));
    // Bob verifies Alice: his signature on her master key is kept on B and served with it.
    let mut signed_master = master.clone();
    signed_master["signatures"] = json!({ bob.user_id.clone(): { "ed25519:BOBUSK": "bob-vouches" } });
    let r = bob
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ alice.user_id.clone(): { "MASTERPUB": signed_master } }),
        )
        .await;
    assert_eq!(r["failures"], json!({}), "{r}");
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    assert_eq!(q["master_keys"][&alice.user_id]["signatures"][&bob.user_id]["ed25519:BOBUSK"], "bob-vouches", "{q}");

    // A server that is down: alice shares a room with bob, so B serves her
    // list from its cache without asking (tests/remote_device_lists.rs has
    // when it asks again); for carol, who shares no room with bob, B must ask
    // and names A in failures.
    let carol = a.register("carol").await;
    a.stop().await;
    let q = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { alice.user_id.clone(): [], carol.user_id.clone(): [] }, "timeout": 3000 }),
        )
        .await;
    assert!(q["failures"].get("a.test").is_some(), "{q}");
    assert!(q["device_keys"][&alice.user_id].get("PHONE").is_some(), "cached keys served: {q}");
    b.stop().await;
}

/// Typing and receipts from a server with no member in the room (or for a
/// room this server does not hold, or naming an event it does not have) are
/// dropped: they would otherwise grow maps and write durable rows keyed by
/// whatever a peer makes up (issue #25 §2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_for_rooms_the_origin_is_not_in_are_dropped() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let event = alice.send_text(&room, "hello").await;
    let room_id = ruma::RoomId::parse(room.as_str()).unwrap();
    let made_up = ruma::RoomId::parse("!madeup:a.test").unwrap();
    let edus = json!([
        { "edu_type": "m.typing", "content": { "room_id": room, "user_id": "@bob:b.test", "typing": true } },
        { "edu_type": "m.typing", "content": { "room_id": made_up, "user_id": "@bob:b.test", "typing": true } },
        { "edu_type": "m.receipt", "content": { room.clone(): { "m.read": { "@bob:b.test": { "data": { "ts": 1 }, "event_ids": [event] } } } } },
        { "edu_type": "m.receipt", "content": { made_up.as_str(): { "m.read": { "@bob:b.test": { "data": { "ts": 1 }, "event_ids": ["$x"] } } } } },
    ]);
    let body = json!({ "origin": "b.test", "origin_server_ts": 1, "pdus": [], "edus": edus });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-outsider", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(a.engine.ephemeral.typing_in(&room_id).0.is_empty(), "typing from a server not in the room");
    assert!(a.engine.ephemeral.typing_in(&made_up).0.is_empty(), "typing for a room that does not exist");
    assert!(a.engine.receipts_since(&room_id, 0).unwrap().iter().all(|r| r.0 != "@bob:b.test"));
    assert!(a.engine.receipts_since(&made_up, 0).unwrap().is_empty());

    // Once bob is in the room, the same EDUs count — except a receipt for an unknown event.
    let bob = b.register("bob").await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a.engine.rooms.joined_servers_now(&room_id).unwrap().iter().any(|s| s == "b.test") {
        assert!(std::time::Instant::now() < deadline, "A never saw bob join");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let edus = json!([
        { "edu_type": "m.typing", "content": { "room_id": room, "user_id": "@bob:b.test", "typing": true } },
        { "edu_type": "m.receipt", "content": { room.clone(): { "m.read": { "@bob:b.test": { "data": { "ts": 1 }, "event_ids": ["$notanevent:a.test"] } } } } },
    ]);
    let body = json!({ "origin": "b.test", "origin_server_ts": 2, "pdus": [], "edus": edus });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-member", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(a.engine.ephemeral.typing_in(&room_id).0.len(), 1, "a member's typing is kept");
    assert!(a.engine.receipts_since(&room_id, 0).unwrap().iter().all(|r| r.3.event_id != "$notanevent:a.test"));

    // b.test is in the room, but mallory of b.test is not: her typing and receipts are dropped.
    let edus = json!([
        { "edu_type": "m.typing", "content": { "room_id": room, "user_id": "@mallory:b.test", "typing": true } },
        { "edu_type": "m.receipt", "content": { room.clone(): { "m.read": { "@mallory:b.test": { "data": { "ts": 1 }, "event_ids": [event] } } } } },
    ]);
    let body = json!({ "origin": "b.test", "origin_server_ts": 3, "pdus": [], "edus": edus });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-nonmember", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    let typing: Vec<String> = a.engine.ephemeral.typing_in(&room_id).0.iter().map(|u| u.to_string()).collect();
    assert_eq!(typing, ["@bob:b.test"], "only the member types");
    assert!(a.engine.receipts_since(&room_id, 0).unwrap().iter().all(|r| r.0 != "@mallory:b.test"));
    // A member's receipts in made-up threads are dropped; in the main thread kept.
    let edus: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            json!({ "edu_type": "m.receipt", "content": { room.clone(): { "m.read": { "@bob:b.test": {
            "data": { "ts": 1, "thread_id": format!("$madeup{i}:b.test") }, "event_ids": [event] } } } } })
        })
        .chain([json!({ "edu_type": "m.receipt", "content": { room.clone(): { "m.read": { "@bob:b.test": {
            "data": { "ts": 1, "thread_id": "main" }, "event_ids": [event] } } } } })])
        .collect();
    let body = json!({ "origin": "b.test", "origin_server_ts": 4, "pdus": [], "edus": edus });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-threads", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    let bobs: Vec<_> =
        a.engine.receipts_since(&room_id, 0).unwrap().into_iter().filter(|r| r.0 == "@bob:b.test").collect();
    assert!(bobs.iter().all(|r| !r.2.starts_with("$madeup")), "{bobs:?}");
    assert!(bobs.iter().any(|r| r.2 == "main"), "{bobs:?}");
    // Each drop is counted, with why.
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let counted = |edu: &str, reason: &str| {
        text.lines().any(|l| {
            l.starts_with("myelin_federation_inbound_edus_dropped_total")
                && l.contains(&format!("edu_type=\"{edu}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
    };
    for (edu, reason) in [
        ("m.typing", "not_in_room"),
        ("m.receipt", "not_in_room"),
        ("m.receipt", "unknown_event"),
        ("m.typing", "user_not_in_room"),
        ("m.receipt", "user_not_in_room"),
        ("m.receipt", "unknown_thread"),
    ] {
        assert!(counted(edu, reason), "{edu} {reason} not counted: {text}");
    }
}

/// Element X's encryption connection (sliding sync, e2ee extension only) hears of a
/// remote user's new device and of its deletion through the long-poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_device_added_then_deleted_reaches_a_sliding_sync_encryption_connection() {
    const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "devices next").await;
    wait_for_text(&bob, &room, "devices next").await;
    let body = json!({ "conn_id": "encryption", "extensions": { "e2ee": { "enabled": true } } });
    let mut pos = bob.post(SS, body.clone()).await["pos"].as_str().unwrap().to_owned();
    // Long-polls until alice is listed as changed; at most 4 polls of 10 s.
    let heard = async |what: &str, pos: &mut String| {
        for _ in 0..4 {
            let r = bob.post(&format!("{SS}?pos={pos}&timeout=10000"), body.clone()).await;
            *pos = r["pos"].as_str().unwrap().to_owned();
            let changed = &r["extensions"]["e2ee"]["device_lists"]["changed"];
            if changed.as_array().is_some_and(|c| c.iter().any(|u| *u == *alice.user_id)) {
                return;
            }
        }
        panic!("bob's encryption connection never heard of {what}");
    };

    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
                        "password": "pass-word-1", "device_id": "PHONE" });
    let login = myelin_suite::http(
        a.client,
        http::Method::POST,
        "/_matrix/client/v3/login",
        Some(login.to_string().as_bytes()),
    )
    .await
    .json();
    let phone = myelin_suite::Client {
        token: login["access_token"].as_str().unwrap().to_owned(),
        device_id: "PHONE".into(),
        ..alice.clone()
    };
    phone
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice.user_id, "PHONE", "phone-curve") }),
        )
        .await;
    heard("alice's new device", &mut pos).await;

    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" });
    alice.post("/_matrix/client/v3/delete_devices", json!({ "devices": ["PHONE"], "auth": auth })).await;
    heard("the deletion of alice's device", &mut pos).await;
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    assert!(!q["device_keys"][&alice.user_id].as_object().is_some_and(|d| d.contains_key("PHONE")), "{q}");
}

/// A server cannot fill a user's storage with to-device messages: those for a
/// device the user does not have are dropped, and a device's inbox takes at
/// most `limits.max_to_device_per_device` until its client syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_for_unknown_devices_or_past_a_full_inbox_are_dropped() {
    let (a, b) = federation_pair("a.test", "b.test", |c| c.limits.max_to_device_per_device = 10, |_| {}).await;
    let alice = a.register("alice").await;
    let send = |id: &str, device: &str, n: usize| {
        let messages: serde_json::Map<String, serde_json::Value> =
            [(device.to_owned(), json!({ "n": n }))].into_iter().collect();
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": "@mallory:b.test", "type": "m.test", "message_id": id,
            "messages": { alice.user_id.as_str(): messages } } })
    };
    // One message far larger than any olm message: dropped.
    let mut big = send("big", &alice.device_id, 1000);
    big["content"]["messages"][alice.user_id.as_str()][alice.device_id.as_str()]["pad"] = json!("x".repeat(100_000));
    let mut edus: Vec<serde_json::Value> = vec![big];
    edus.extend((0..3).map(|n| send(&format!("u{n}"), "NOSUCHDEVICE", n)));
    edus.extend((0..25).map(|n| send(&format!("m{n}"), &alice.device_id, n)));
    let body = json!({ "origin": "b.test", "origin_server_ts": 1, "pdus": [], "edus": edus });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-flood", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let unknown = a.engine.users.pending_to_device(&alice.user_id, "NOSUCHDEVICE", u64::MAX, 100).unwrap();
    assert!(unknown.is_empty(), "{} messages kept for a device alice does not have", unknown.len());
    let sync = alice.get("/_matrix/client/v3/sync").await;
    let ns: Vec<u64> =
        sync["to_device"]["events"].as_array().unwrap().iter().filter_map(|e| e["content"]["n"].as_u64()).collect();
    assert_eq!(ns, (0..10).collect::<Vec<u64>>(), "the first ten, then the inbox was full");

    // Synced (acknowledged with the next sync): there is room again.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    alice.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=0")).await;
    let body =
        json!({ "origin": "b.test", "origin_server_ts": 2, "pdus": [], "edus": [send("later", &alice.device_id, 99)] });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-later", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    let pending = a.engine.users.pending_to_device(&alice.user_id, &alice.device_id, u64::MAX, 100).unwrap();
    let ns: Vec<String> = pending.iter().map(|(_, m)| String::from_utf8_lossy(&m.content).into_owned()).collect();
    assert_eq!(ns, [r#"{"n":99}"#], "{ns:?}");
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for reason in ["unknown_device", "inbox_full"] {
        assert!(
            text.lines().any(|l| l.starts_with("myelin_to_device_dropped_total") && l.contains(reason)),
            "{reason} not counted"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with("myelin_federation_inbound_edus_dropped_total")
            && l.contains("m.direct_to_device")
            && l.contains("too_large")),
        "the large message not counted"
    );
}

/// Device-list and signing-key updates are kept only for users who are in a
/// room this server holds: those for a user id a peer made up leave no keys
/// and no change-log row (and are counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_signing_key_updates_for_users_sharing_no_room_are_dropped() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let bob = b.register("bob").await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let room_id = ruma::RoomId::parse(room.as_str()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a.engine.rooms.joined_servers_now(&room_id).unwrap().iter().any(|s| s == "b.test") {
        assert!(std::time::Instant::now() < deadline, "A never saw bob join");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let update = |user: &str, device: &str, n: u64| {
        json!({ "edu_type": "m.device_list_update", "content": { "user_id": user, "device_id": device,
            "stream_id": n, "prev_id": [], "deleted": false,
            "keys": { "user_id": user, "device_id": device, "algorithms": [], "keys": {}, "signatures": {} } } })
    };
    let mut edus: Vec<serde_json::Value> = (0..20).map(|i| update(&format!("@ghost{i}:b.test"), "G", i)).collect();
    edus.push(json!({ "edu_type": "m.signing_key_update", "content": { "user_id": "@ghost0:b.test",
        "master_key": { "user_id": "@ghost0:b.test", "usage": ["master"], "keys": { "ed25519:m": "m" } } } }));
    edus.push(update("@bob:b.test", "BOBDEV2", 100));
    let body = json!({ "origin": "b.test", "origin_server_ts": 1, "pdus": [], "edus": edus });
    let r = myelin_suite::signed_put(&b, &a, "/_matrix/federation/v1/send/t-ghosts", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let changed = a.engine.e2ee.changed_between(0, u64::MAX - 1).unwrap();
    assert!(changed.contains("@bob:b.test"), "a member's update is kept: {changed:?}");
    assert!(!changed.iter().any(|u| u.starts_with("@ghost")), "{changed:?}");
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for edu in ["m.device_list_update", "m.signing_key_update"] {
        assert!(
            text.lines().any(|l| l.starts_with("myelin_federation_inbound_edus_dropped_total")
                && l.contains(edu)
                && l.contains("no_shared_room")),
            "{edu} not counted"
        );
    }
}
