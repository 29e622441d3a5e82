//! End-to-end encryption for bridges: to-device messages for the appservice's
//! users pushed to it (and kept while it is down), and MSC3202 key counts and
//! `device_lists` changed/left in its transactions.

use std::time::Duration;

use http::{Method, StatusCode};
use myelin_suite::{
    Client,
    appservice::{FakeAppservice, not_found, wait_events},
    enc,
};
use serde_json::{Value, json};

use crate::{as_register, as_request, bodies_of, registration, server_with};

/// The to-device messages of delivered transactions, each transaction once.
fn to_device_of(fake: &FakeAppservice) -> Vec<Value> {
    let mut ids = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (id, body) in fake.delivered() {
        if ids.insert(id) {
            // Synapse's unstable name only: MSC4203 is not merged.
            assert!(body.get("to_device").is_none(), "{body}");
            out.extend(body["de.sorunome.msc2409.to_device"].as_array().cloned().unwrap_or_default());
        }
    }
    out
}

#[tokio::test]
async fn to_device_messages_for_the_appservices_users_are_pushed_to_it_and_survive_it_being_down() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), true), &dir).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert_eq!(as_register(&server, "bridge_carol").await.status, StatusCode::OK);
    let send = |n: u32| {
        let (alice, bob) = (&alice, &bob);
        async move {
            let messages = json!({
                "@bridge_carol:as.test": { "CAROLDEV": { "n": n, "secret": "room key" } },
                bob.user_id.as_str(): { bob.device_id.as_str(): { "n": n } },
            });
            alice.put(&format!("/_matrix/client/v3/sendToDevice/m.test/t{n}"), json!({ "messages": messages })).await;
        }
    };
    send(1).await;
    fake.wait_until(Duration::from_secs(10), "a to-device message", |f| !to_device_of(f).is_empty()).await;
    let pushed = to_device_of(&fake);
    assert_eq!(
        pushed,
        [json!({ "type": "m.test", "sender": alice.user_id, "content": { "n": 1, "secret": "room key" },
            "to_user_id": "@bridge_carol:as.test", "to_device_id": "CAROLDEV" })],
        "only the message for the appservice's user, with whom it is for"
    );
    // The exclusive user has no inbox to fill; bob's message is in his.
    let inbox = server.engine.users.pending_to_device("@bridge_carol:as.test", "CAROLDEV", u64::MAX, 10).unwrap();
    assert!(inbox.is_empty(), "{inbox:?}");
    let bob_sync = bob.get("/_matrix/client/v3/sync").await;
    assert_eq!(bob_sync["to_device"]["events"][0]["content"]["n"], 1, "{bob_sync}");

    // Down for a while: kept, then delivered once, in order.
    fake.set_down(true);
    for n in 2..=4 {
        send(n).await;
    }
    fake.wait_until(Duration::from_secs(10), "a refused transaction", |f| f.requests().iter().any(|s| s.status == 503))
        .await;
    fake.set_down(false);
    as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    fake.wait_until(Duration::from_secs(20), "all four", |f| to_device_of(f).len() >= 4).await;
    let ns: Vec<u64> = to_device_of(&fake).iter().filter_map(|m| m["content"]["n"].as_u64()).collect();
    assert_eq!(ns, [1, 2, 3, 4]);
    server.stop().await;
}

#[tokio::test]
async fn with_msc3202_transactions_carry_the_key_counts_of_the_users_they_mention() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{}org.matrix.msc3202: true\n", registration(Some(&fake.url()), true));
    let server = server_with(&yaml, &dir).await;
    let alice = server.register("alice").await;
    // The bridge's user gets a device and uploads two one-time keys and a fallback key.
    let body = json!({ "type": "m.login.application_service", "username": "bridge_carol", "device_id": "CAROLDEV" });
    let r = as_request(&server, Method::POST, "/_matrix/client/v3/register", None, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let key = |k: &str| json!({ "key": k, "signatures": {} });
    let upload = json!({
        "one_time_keys": { "signed_curve25519:A1": key("a1"), "signed_curve25519:A2": key("a2") },
        "fallback_keys": { "signed_curve25519:F1": key("f1") },
    });
    let r = as_request(
        &server,
        Method::POST,
        "/_matrix/client/v3/keys/upload?device_id=CAROLDEV",
        Some("@bridge_carol:as.test"),
        Some(upload),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    // Alice claims one of them, then messages the device.
    let claim = json!({ "one_time_keys": { "@bridge_carol:as.test": { "CAROLDEV": "signed_curve25519" } } });
    alice.post("/_matrix/client/v3/keys/claim", claim).await;
    let messages = json!({ "@bridge_carol:as.test": { "CAROLDEV": { "olm": "pre-key message" } } });
    alice.put("/_matrix/client/v3/sendToDevice/m.room.encrypted/t1", json!({ "messages": messages })).await;
    fake.wait_until(Duration::from_secs(10), "a to-device message", |f| !to_device_of(f).is_empty()).await;
    let (_, body) = fake
        .delivered()
        .into_iter()
        .find(|(_, b)| b.get("de.sorunome.msc2409.to_device").is_some())
        .expect("the transaction with the message");
    let counts = &body["org.matrix.msc3202.device_one_time_keys_count"];
    assert_eq!(counts["@bridge_carol:as.test"]["CAROLDEV"]["signed_curve25519"], 1, "{body}");
    assert_eq!(body["org.matrix.msc3202.device_one_time_key_counts"], *counts, "the pre-1.73 spelling too");
    assert_eq!(
        body["org.matrix.msc3202.device_unused_fallback_key_types"]["@bridge_carol:as.test"]["CAROLDEV"],
        json!(["signed_curve25519"])
    );
    // Only users of the bridge, and nothing under the stable names (Synapse sends none).
    assert!(counts.get(alice.user_id.as_str()).is_none(), "{body}");
    assert!(body.get("device_one_time_keys_count").is_none(), "{body}");

    // device_lists: alice shares a room with the bridge's user, dave does not.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/join/{}", enc(&room));
    let r = as_request(&server, Method::POST, &join, Some("@bridge_carol:as.test"), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let dave = server.register("dave").await;
    let device_keys = |c: &Client| {
        json!({ "device_keys": { "user_id": c.user_id, "device_id": c.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { format!("curve25519:{}", c.device_id): "k", format!("ed25519:{}", c.device_id): "k" },
            "signatures": {} } })
    };
    dave.post("/_matrix/client/v3/keys/upload", device_keys(&dave)).await;
    alice.post("/_matrix/client/v3/keys/upload", device_keys(&alice)).await;
    let changed = |f: &FakeAppservice| -> Vec<String> {
        f.delivered()
            .iter()
            .flat_map(|(_, b)| b["org.matrix.msc3202.device_lists"]["changed"].as_array().cloned().unwrap_or_default())
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect()
    };
    fake.wait_until(Duration::from_secs(15), "alice's device change", |f| changed(f).contains(&alice.user_id)).await;
    assert!(!changed(&fake).contains(&dave.user_id), "dave shares no room with the bridge: {:?}", changed(&fake));
    // Told once: later transactions do not repeat it.
    alice.send_text(&room, "after").await;
    wait_events(&fake, Duration::from_secs(10), "the message", |ev| bodies_of(ev, &room) == ["after"]).await;
    assert_eq!(changed(&fake).iter().filter(|u| **u == alice.user_id).count(), 1, "{:?}", changed(&fake));
    server.stop().await;
}

#[tokio::test]
async fn with_msc3202_users_who_no_longer_share_a_room_with_the_bridge_are_in_device_lists_left() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{}org.matrix.msc3202: true\n", registration(Some(&fake.url()), true));
    let server = server_with(&yaml, &dir).await;
    let alice = server.register("alice").await;
    let (bob, dave, erin) =
        (server.register("bob").await, server.register("dave").await, server.register("erin").await);
    assert_eq!(as_register(&server, "bridge_carol").await.status, StatusCode::OK);
    let carol = Some("@bridge_carol:as.test");
    let (one, two, three) = (
        alice.create_room(json!({ "preset": "public_chat" })).await,
        alice.create_room(json!({ "preset": "public_chat" })).await,
        alice.create_room(json!({ "preset": "public_chat" })).await,
    );
    let path = |what: &str, room: &str| format!("/_matrix/client/v3/rooms/{}/{what}", enc(room));
    for room in [&one, &two, &three] {
        let r = as_request(&server, Method::POST, &path("join", room), carol, Some(json!({}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    for (who, rooms) in [(&dave, vec![&one]), (&bob, vec![&one, &three]), (&erin, vec![&two])] {
        for room in rooms {
            who.post(&path("join", room), json!({})).await;
        }
    }
    // dave leaves his only shared room; bob leaves one of two (he keeps three); the
    // bridge's user leaves room two, where erin (only there) and alice (also in one) stay.
    dave.post(&path("leave", &one), json!({})).await;
    bob.post(&path("leave", &one), json!({})).await;
    let r = as_request(&server, Method::POST, &path("leave", &two), carol, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    alice.send_text(&one, "done").await;
    wait_events(&fake, Duration::from_secs(10), "the last message", |ev| bodies_of(ev, &one) == ["done"]).await;

    let mut txns = std::collections::HashSet::new();
    let mut left: Vec<String> = Vec::new();
    for (id, body) in fake.delivered() {
        if txns.insert(id) {
            let lists = &body["org.matrix.msc3202.device_lists"];
            left.extend(lists["left"].as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_owned)));
        }
    }
    left.sort();
    let mut expected = vec![dave.user_id.clone(), erin.user_id.clone()];
    expected.sort();
    assert_eq!(left, expected, "each once; bob shares room three and alice room one with the bridge still");
    server.stop().await;
}
