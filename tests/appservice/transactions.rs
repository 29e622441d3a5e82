//! What the homeserver pushes in transactions: events in client format with
//! the `hs_token`, typing and receipts (never private ones), delivery once and
//! in order after the appservice was down and across a restart, a remote
//! invite for a puppet, and `prev_content`/`invite_room_state` on state events.

use std::time::Duration;

use http::{Method, StatusCode};
use myelin_suite::{
    Client,
    appservice::{FakeAppservice, not_found, wait_events},
    enc,
};
use serde_json::{Value, json};

use crate::{HS_TOKEN, as_register, as_request, bodies_of, bridged_room, registration, server_with};

#[tokio::test]
async fn events_typing_and_receipts_reach_the_appservice_with_its_hs_token() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), true), &dir).await;
    let alice = server.register("alice").await;
    let room = bridged_room(&server, &alice).await;

    let event_id = alice.send_text(&room, "hello bridge").await;
    wait_events(&fake, Duration::from_secs(10), "the message", |ev| bodies_of(ev, &room) == ["hello bridge"]).await;
    for s in fake.requests().iter().filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/")) {
        assert_eq!(s.method, "PUT");
        assert_eq!(s.authorization.as_deref(), Some(format!("Bearer {HS_TOKEN}").as_str()));
    }
    let events = fake.events();
    let msg = events.iter().find(|e| e["event_id"] == event_id.as_str()).expect("the message event");
    assert_eq!(msg["sender"], alice.user_id.as_str());
    // The client format (Client-Server API `ClientEvent`), nothing of the PDU's own.
    assert_eq!(msg["content"], json!({ "msgtype": "m.text", "body": "hello bridge" }));
    assert_eq!((msg["type"].as_str(), msg["room_id"].as_str()), (Some("m.room.message"), Some(room.as_str())));
    assert!(msg["origin_server_ts"].is_u64() && msg["unsigned"]["age"].is_u64(), "{msg}");
    assert!(msg.get("auth_events").is_none() && msg.get("hashes").is_none() && msg.get("depth").is_none(), "{msg}");
    // The namespaced user's own join was pushed too (its state_key is in the namespace).
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == "@bridge_alice:as.test"));

    // A bridged message with `ts`: history keeps its original time.
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1?ts=1000", enc(&room));
    let r = as_request(
        &server,
        Method::PUT,
        &path,
        Some("@bridge_alice:as.test"),
        Some(json!({ "msgtype": "m.text", "body": "old" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let old_id = r.json()["event_id"].as_str().unwrap().to_owned();
    let ev = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&old_id))).await;
    assert_eq!(ev["origin_server_ts"], 1000);
    assert_eq!(ev["sender"], "@bridge_alice:as.test");

    // Typing and a read receipt.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    alice.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event_id)), json!({})).await;
    fake.wait_until(Duration::from_secs(10), "typing and receipt", |f| {
        let eph = f.ephemeral();
        eph.iter().any(|e| {
            e["type"] == "m.typing"
                && e["room_id"] == room.as_str()
                && e["content"]["user_ids"][0] == alice.user_id.as_str()
        }) && eph.iter().any(|e| {
            e["type"] == "m.receipt" && e["content"][event_id.as_str()]["m.read"][alice.user_id.as_str()].is_object()
        })
    })
    .await;
    // A private receipt stays private.
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read.private/{}", enc(&room), enc(&old_id)), json!({}))
        .await;
    alice.send_text(&room, "after the private receipt").await;
    wait_events(&fake, Duration::from_secs(10), "the next message", |ev| bodies_of(ev, &room).len() == 3).await;
    assert!(!fake.ephemeral().iter().any(|e| e.to_string().contains("m.read.private")), "private receipt pushed");

    // A room with no namespaced member, sender or alias is not pushed.
    let other = alice.create_room(json!({})).await;
    alice.send_text(&other, "not for the bridge").await;
    alice.send_text(&room, "marker").await;
    wait_events(&fake, Duration::from_secs(10), "the marker", |ev| bodies_of(ev, &room).contains(&"marker".to_owned()))
        .await;
    assert!(bodies_of(&fake.events(), &other).is_empty(), "an unrelated room was pushed");
    server.stop().await;
}

#[tokio::test]
async fn an_appservice_that_was_down_gets_every_event_in_order_once_also_across_a_restart() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), true), &dir).await;
    let alice = server.register("alice").await;
    let room = bridged_room(&server, &alice).await;
    alice.send_text(&room, "m0").await;
    wait_events(&fake, Duration::from_secs(10), "m0", |ev| bodies_of(ev, &room) == ["m0"]).await;

    fake.set_down(true);
    for i in 1..=30 {
        alice.send_text(&room, &format!("m{i}")).await;
    }
    // It is retried while down…
    fake.wait_until(Duration::from_secs(10), "a refused transaction", |f| f.requests().iter().any(|s| s.status == 503))
        .await;
    let refused: Vec<String> = fake.requests().iter().filter(|s| s.status == 503).map(|s| s.path.clone()).collect();
    // …and the server restarts meanwhile, with more sent after.
    let server = server.restart().await;
    let alice = Client { addr: server.client, ..alice };
    for i in 31..=40 {
        alice.send_text(&room, &format!("m{i}")).await;
    }
    fake.set_down(false);
    // Any request with its token says the appservice is back: no waiting out the backoff.
    as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    let want: Vec<String> = (0..=40).map(|i| format!("m{i}")).collect();
    wait_events(&fake, Duration::from_secs(30), "all 41 messages", |ev| bodies_of(ev, &room).len() >= want.len()).await;
    assert_eq!(bodies_of(&fake.events(), &room), want, "every event, in order, once");
    // The transaction first refused was delivered under the same id.
    let delivered: Vec<String> = fake.delivered().into_iter().map(|(id, _)| id).collect();
    let first_refused = refused[0].trim_start_matches("/_matrix/app/v1/transactions/");
    assert!(
        delivered.iter().any(|d| d == first_refused),
        "refused {first_refused} never delivered under its id: {delivered:?}"
    );
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), delivered.len(), "a transaction id was delivered twice: {delivered:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puppet_invited_from_another_server_is_pushed_the_invite_and_the_remote_chat() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registration.yaml");
    std::fs::write(&path, registration(Some(&fake.url()), true)).unwrap();
    let (a, b) = myelin_suite::federation_pair(
        "as.test",
        "remote.test",
        move |c| c.appservice.registrations = vec![path],
        |_| {},
    )
    .await;
    assert_eq!(as_register(&a, "bridge_alice").await.status, StatusCode::OK);
    let bob = b.register("bob").await;
    let room = bob.create_room(json!({ "preset": "private_chat", "invite": ["@bridge_alice:as.test"] })).await;
    fake.wait_until(Duration::from_secs(15), "the remote invite", |f| {
        f.events().iter().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == "@bridge_alice:as.test"
                && e["content"]["membership"] == "invite"
                && e["room_id"] == room.as_str()
        })
    })
    .await;
    // The puppet joins through the bridge; the remote user's messages reach the bridge.
    let r = as_request(
        &a,
        Method::POST,
        &format!("/_matrix/client/v3/join/{}?server_name=remote.test", enc(&room)),
        Some("@bridge_alice:as.test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    bob.send_text(&room, "hello from remote").await;
    wait_events(&fake, Duration::from_secs(15), "the remote message", |ev| {
        bodies_of(ev, &room) == ["hello from remote"]
    })
    .await;
    let events = fake.events();
    let msg = events.iter().find(|e| e["content"]["body"] == "hello from remote").unwrap();
    assert_eq!(msg["sender"], "@bob:remote.test");
}

/// Found by the mautrix and matrix-appservice-bridge interop runs side by side
/// with Synapse: bridges tell a join from a profile change, an accepted invite
/// from a rejected one, by `unsigned.prev_content`, and name an invited portal
/// from `unsigned.invite_room_state`; Synapse sends both.
#[tokio::test]
async fn pushed_state_events_carry_prev_content_and_invites_their_room_state() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), true), &dir).await;
    let alice = server.register("alice").await;
    assert_eq!(as_register(&server, "bridge_bob").await.status, StatusCode::OK);
    let room = alice.create_room(json!({ "name": "portal name" })).await;
    let r = alice
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(json!({ "user_id": "@bridge_bob:as.test" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = as_request(
        &server,
        Method::POST,
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some("@bridge_bob:as.test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let bob_member = |e: &Value, m: &str| e["state_key"] == "@bridge_bob:as.test" && e["content"]["membership"] == m;
    wait_events(&fake, Duration::from_secs(10), "the invite and the join", |ev| {
        ev.iter().any(|e| bob_member(e, "invite")) && ev.iter().any(|e| bob_member(e, "join"))
    })
    .await;
    let events = fake.events();
    let invite = events.iter().find(|e| bob_member(e, "invite")).unwrap();
    let stripped = invite["unsigned"]["invite_room_state"].as_array().expect("invite_room_state");
    assert!(stripped.iter().any(|s| s["type"] == "m.room.name" && s["content"]["name"] == "portal name"), "{invite}");
    assert!(stripped.iter().any(|s| s["type"] == "m.room.create"), "{invite}");
    assert!(stripped.iter().any(|s| s["type"] == "m.room.member" && s["state_key"] == alice.user_id.as_str()));
    assert!(invite["unsigned"].get("prev_content").is_none(), "bob was never in the room: {invite}");
    let join = events.iter().find(|e| bob_member(e, "join")).unwrap();
    assert_eq!(join["unsigned"]["prev_content"]["membership"], "invite", "{join}");
    assert_eq!(join["unsigned"]["prev_sender"], alice.user_id.as_str());
    assert_eq!(join["unsigned"]["replaces_state"], invite["event_id"]);
    assert!(join["unsigned"].get("invite_room_state").is_none());
}
