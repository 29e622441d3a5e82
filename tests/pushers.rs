//! Push notifications end to end: pushers set over the client API, and what a
//! push gateway the test runs (a recording HTTP listener on loopback)
//! receives — over real HTTP, through restarts and a gateway that is down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{Method, StatusCode};
use myelin_suite::{
    Client, TestServer,
    appservice::{FakeAppservice, Seen},
    enc,
};
use serde_json::{Value, json};

const NOTIFY: &str = "/_matrix/push/v1/notify";

/// A gateway that answers 503 while `down`, and rejects pushkeys starting with `bad`.
async fn gateway(down: Arc<AtomicBool>) -> FakeAppservice {
    FakeAppservice::start(move |seen: Seen| {
        let down = down.clone();
        Box::pin(async move {
            if down.load(Ordering::SeqCst) {
                return (503, json!({}));
            }
            let rejected: Vec<Value> = seen.body["notification"]["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["pushkey"].as_str().is_some_and(|k| k.starts_with("bad")))
                .map(|d| d["pushkey"].clone())
                .collect();
            (200, json!({ "rejected": rejected }))
        })
    })
    .await
}

async fn server(loopback_allowed: bool) -> TestServer {
    TestServer::start_with("push.test", move |c| {
        c.registration.enabled = true;
        if loopback_allowed {
            c.federation.ip_range_allow = vec!["127.0.0.0/8".parse().unwrap()];
        }
    })
    .await
}

async fn set_pusher(client: &Client, url: &str, pushkey: &str, format: Option<&str>) -> myelin_suite::Reply {
    let mut data = json!({ "url": url });
    if let Some(f) = format {
        data["format"] = json!(f);
    }
    let body = json!({
        "pushkey": pushkey, "kind": "http", "app_id": "org.example.app", "app_display_name": "Example",
        "device_display_name": "phone", "lang": "en", "data": data,
    });
    client.request(Method::POST, "/_matrix/client/v3/pushers/set", Some(body)).await
}

/// Notifications the gateway answered 200, in arrival order.
fn delivered(g: &FakeAppservice) -> Vec<Value> {
    g.requests()
        .into_iter()
        .filter(|s| s.path == NOTIFY && s.status == 200)
        .map(|s| s.body["notification"].clone())
        .collect()
}

async fn dm(alice: &Client, bob: &Client) -> String {
    let room = bob
        .create_room(json!({ "preset": "trusted_private_chat", "is_direct": true, "invite": [alice.user_id] }))
        .await;
    alice.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    room
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_recipients_push_gateway_with_counts_and_tweaks() {
    let down = Arc::new(AtomicBool::new(false));
    let g = gateway(down.clone()).await;
    let s = server(true).await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let url = format!("{}{NOTIFY}", g.url());
    let r = set_pusher(&alice, &url, "key-1", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let listed = alice.get("/_matrix/client/v3/pushers").await;
    assert_eq!(listed["pushers"][0]["pushkey"], "key-1");
    assert_eq!(listed["pushers"][0]["data"]["url"], url.as_str());
    assert!(listed["pushers"][0].get("device_id").is_none());

    let room = dm(&alice, &bob).await;
    let event_id = bob.send_text(&room, "ping alice").await;
    g.wait_until(Duration::from_secs(10), "the notification", |g| {
        delivered(g).iter().any(|n| n["event_id"] == event_id.as_str())
    })
    .await;
    let n = delivered(&g).into_iter().find(|n| n["event_id"] == event_id.as_str()).unwrap();
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["sender"], bob.user_id.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["content"]["body"], "ping alice");
    assert_eq!(n["prio"], "high");
    assert!(n["counts"]["unread"].as_u64().unwrap() >= 1, "{n}");
    assert_eq!(n["devices"][0]["pushkey"], "key-1");
    assert_eq!(n["devices"][0]["app_id"], "org.example.app");
    assert_eq!(n["devices"][0]["tweaks"]["sound"], "default", "a 1:1 room rings: {n}");
    // The invite rings too, so it is not left to a gateway's low-priority path.
    let invite = delivered(&g).into_iter().find(|n| n["membership"] == "invite").expect("the invite's push");
    assert_eq!(invite["devices"][0]["tweaks"]["sound"], "default", "{invite}");
    assert_eq!(invite["prio"], "high", "{invite}");
    // Her own messages never notify her.
    alice.send_text(&room, "my own").await;
    bob.send_text(&room, "second").await;
    g.wait_until(Duration::from_secs(10), "the second", |g| {
        delivered(g).iter().any(|n| n["content"]["body"] == "second")
    })
    .await;
    assert!(!delivered(&g).iter().any(|n| n["content"]["body"] == "my own"));

    // event_id_only sends no content.
    let r = set_pusher(&alice, &url, "key-1", Some("event_id_only")).await;
    assert_eq!(r.status, StatusCode::OK);
    let quiet = bob.send_text(&room, "secret").await;
    g.wait_until(Duration::from_secs(10), "the id-only one", |g| {
        delivered(g).iter().any(|n| n["event_id"] == quiet.as_str())
    })
    .await;
    let n = delivered(&g).into_iter().find(|n| n["event_id"] == quiet.as_str()).unwrap();
    assert!(n.get("content").is_none() && n.get("sender").is_none(), "{n}");
    // Nor tweaks: Synapse sends an id-only device without them, and a gateway
    // such as Sygnal then fetches nothing it would have to trust.
    assert!(n["devices"][0].get("tweaks").is_none(), "{n}");

    // A rejected pushkey loses its pusher.
    let r = set_pusher(&alice, &url, "bad-key", None).await;
    assert_eq!(r.status, StatusCode::OK);
    bob.send_text(&room, "to the bad key").await;
    let mut gone = false;
    for _ in 0..200 {
        let listed = alice.get("/_matrix/client/v3/pushers").await;
        if !listed["pushers"].as_array().unwrap().iter().any(|p| p["pushkey"] == "bad-key") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the rejected pusher is still listed");

    // Logging out removes the device's pushers.
    alice.post("/_matrix/client/v3/logout", json!({})).await;
    assert!(s.engine.pushers.of(&alice.user_id).unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_was_down_gets_every_notification_in_order_also_after_a_restart() {
    let down = Arc::new(AtomicBool::new(true));
    let g = gateway(down.clone()).await;
    let s = server(true).await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    assert_eq!(set_pusher(&alice, &format!("{}{NOTIFY}", g.url()), "key-1", None).await.status, StatusCode::OK);
    let room = dm(&alice, &bob).await;
    for i in 0..5 {
        bob.send_text(&room, &format!("n{i}")).await;
    }
    g.wait_until(Duration::from_secs(10), "a refused try", |g| g.requests().iter().any(|s| s.status == 503)).await;
    let s = s.restart().await;
    let bob = Client { addr: s.client, ..bob };
    for i in 5..8 {
        bob.send_text(&room, &format!("n{i}")).await;
    }
    down.store(false, Ordering::SeqCst);
    let want: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    g.wait_until(Duration::from_secs(30), "all 8", |g| delivered(g).len() >= 8).await;
    let got: Vec<String> =
        delivered(&g).iter().filter_map(|n| n["content"]["body"].as_str().map(str::to_owned)).collect();
    assert_eq!(got, want, "every notification, in order, once");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_url_inside_the_network_is_never_connected_to_and_bad_pushers_are_refused() {
    let g = gateway(Arc::new(AtomicBool::new(false))).await;
    let s = server(false).await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    // Accepted (the address is checked when sending, after resolution)…
    assert_eq!(set_pusher(&alice, &format!("{}{NOTIFY}", g.url()), "key-1", None).await.status, StatusCode::OK);
    let room = dm(&alice, &bob).await;
    bob.send_text(&room, "for an internal address").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // …but nothing ever reaches a listener on loopback.
    assert!(g.requests().is_empty(), "{:?}", g.requests());

    for (body, why) in [
        (
            json!({ "pushkey": "k", "kind": "http", "app_id": "a", "app_display_name": "A", "device_display_name": "d", "lang": "en", "data": { "url": "http://gw.example/other" } }),
            "wrong path",
        ),
        (
            json!({ "pushkey": "k", "kind": "http", "app_id": "a", "app_display_name": "A", "device_display_name": "d", "lang": "en", "data": {} }),
            "no url",
        ),
        (
            json!({ "pushkey": "k", "kind": "email", "app_id": "a", "app_display_name": "A", "device_display_name": "d", "lang": "en", "data": {} }),
            "email",
        ),
        (
            json!({ "pushkey": "x".repeat(513), "kind": "http", "app_id": "a", "app_display_name": "A", "device_display_name": "d", "lang": "en", "data": { "url": "http://gw.example/_matrix/push/v1/notify" } }),
            "long pushkey",
        ),
        (json!({ "pushkey": "k", "kind": "http", "app_id": "a" }), "missing fields"),
        (json!({ "pushkey": 5, "kind": "http", "app_id": "a" }), "wrong type"),
    ] {
        let r = alice.request(Method::POST, "/_matrix/client/v3/pushers/set", Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {:?}", String::from_utf8_lossy(&r.body));
    }
    // kind null deletes.
    let r = alice
        .request(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(json!({ "pushkey": "key-1", "kind": null, "app_id": "org.example.app" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(alice.get("/_matrix/client/v3/pushers").await["pushers"].as_array().unwrap().is_empty());
    s.stop().await;
}

/// A push gateway the operator names in `push.trusted_gateways` (a Sygnal on
/// the site's own network) is reached although its address is internal, and
/// only that one: another loopback gateway stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_the_operator_trusts_is_reached_on_an_internal_address_and_no_other() {
    let (trusted, other) =
        (gateway(Arc::new(AtomicBool::new(false))).await, gateway(Arc::new(AtomicBool::new(false))).await);
    let url = trusted.url();
    let s = TestServer::start_with("push.test", move |c| {
        c.registration.enabled = true;
        c.push.trusted_gateways = vec![format!("{url}/")];
    })
    .await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    assert_eq!(set_pusher(&alice, &format!("{}{NOTIFY}", trusted.url()), "key-t", None).await.status, StatusCode::OK);
    assert_eq!(set_pusher(&alice, &format!("{}{NOTIFY}", other.url()), "key-o", None).await.status, StatusCode::OK);
    let room = dm(&alice, &bob).await;
    bob.send_text(&room, "to the site's own gateway").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while trusted.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the trusted gateway was never reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(other.requests().is_empty(), "an untrusted loopback gateway was reached: {:?}", other.requests());
    s.stop().await;
}

/// `counts.unread` is the user's unread messages across all their rooms (the
/// Push Gateway API's badge), not the notifying room's alone, and a read
/// receipt in one room lowers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unread_count_of_a_push_covers_every_room_of_the_user() {
    let g = gateway(Arc::new(AtomicBool::new(false))).await;
    let s = server(true).await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    assert_eq!(set_pusher(&alice, &format!("{}{NOTIFY}", g.url()), "key-1", None).await.status, StatusCode::OK);
    let (with_bob, with_carol) = (dm(&alice, &bob).await, dm(&alice, &carol).await);
    let unread_of = async |body: &str| -> u64 {
        g.wait_until(Duration::from_secs(10), body, |g| delivered(g).iter().any(|n| n["content"]["body"] == body))
            .await;
        let n = delivered(&g).into_iter().find(|n| n["content"]["body"] == body).unwrap();
        n["counts"]["unread"].as_u64().unwrap()
    };
    bob.send_text(&with_bob, "b1").await;
    let b2 = bob.send_text(&with_bob, "b2").await;
    assert_eq!(unread_of("b2").await, 2);
    carol.send_text(&with_carol, "c1").await;
    assert_eq!(unread_of("c1").await, 3, "two in bob's room and this one");
    // Alice reads bob's room: only carol's messages are left.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&with_bob), enc(&b2)), json!({})).await;
    carol.send_text(&with_carol, "c2").await;
    assert_eq!(unread_of("c2").await, 2);
    s.stop().await;
}
