//! Federation authentication: signed requests and key fetching; forged, unsigned
//! and misaddressed requests; TLS trust; pinned keys; keys through a notary;
//! forged events.

use http::{Method, StatusCode};
use myelin_engine::{federation::xmatrix, keys::ServerKeys};
use myelin_suite::{TestServer, enc, federation_pair, https, https_with, signed_get, signed_put, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_profile_is_fetched_with_a_signed_request_and_verified_key() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)),
        json!({ "displayname": "Bob of B" }),
    )
    .await;

    let profile = alice.get("/_matrix/client/v3/profile/@bob:b.test").await;
    assert_eq!(profile["displayname"], "Bob of B");
    // B verified A's signature with A's key, fetched over TLS and stored.
    let a_key = a.engine.keys.key_id().to_owned();
    assert_eq!(
        b.engine.keyring.key("a.test", &a_key, false).unwrap().as_deref(),
        Some(a.engine.keys.public_key_b64()),
        "B must have fetched and verified A's key"
    );
    let r = alice.request(Method::GET, "/_matrix/client/v3/profile/@nobody:b.test", None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_and_misaddressed_requests_are_refused() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |c| c.federation.deny = vec!["c.test".into()]).await;
    b.register("bob").await;
    let fed = b.federation.unwrap();
    let path = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Ab.test";

    let r = https(fed, Method::GET, path, None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"));

    // Signed by a key A never published.
    let impostor = ServerKeys::from_seed("a.test".try_into().unwrap(), "evil", &[1u8; 32]).unwrap();
    let forged = xmatrix::sign(&impostor, "a.test", "b.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &forged)]).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED", "{}", String::from_utf8_lossy(&r.body));

    // A's real key, but for another destination.
    let elsewhere = xmatrix::sign(&a.engine.keys, "a.test", "z.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &elsewhere)]).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED");

    // A's real key over another path: the signature covers the URI.
    let other_path = xmatrix::sign(&a.engine.keys, "a.test", "b.test", "GET", "/other", None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &other_path)]).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED");

    // The genuine request passes.
    let genuine = xmatrix::sign(&a.engine.keys, "a.test", "b.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &genuine)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["displayname"], "bob");

    // A denied origin is refused before its signature is even checked.
    let denied = ServerKeys::from_seed("c.test".try_into().unwrap(), "k", &[2u8; 32]).unwrap();
    let header = xmatrix::sign(&denied, "c.test", "b.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &header)]).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verification_trusts_a_configured_ca_and_nothing_else() {
    let (a_port, s_port) = (myelin_suite::free_port(), myelin_suite::free_port());
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{a_port}").parse().unwrap();
    let s_addr: std::net::SocketAddr = format!("127.0.0.1:{s_port}").parse().unwrap();
    let b = TestServer::start_with("b.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_addr);
        c.federation.hosts.insert("s.test".into(), s_addr);
    })
    .await;
    b.register("bob").await;
    let b_addr = b.federation.unwrap();
    let b_cert = b.engine.config.data_dir.join("keys/tls.crt");

    // Trusts B's generated certificate through trusted_ca: the lookup succeeds end to end.
    let trusting = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = a_addr;
        c.federation.verify_tls = true;
        c.federation.trusted_ca = vec![b_cert.clone()];
        c.federation.hosts.insert("b.test".into(), b_addr);
    })
    .await;
    let alice = trusting.register("alice").await;
    assert_eq!(alice.get("/_matrix/client/v3/profile/@bob:b.test").await["displayname"], "bob");

    // Verifies, but does not trust B's self-signed certificate: refused at the TLS handshake.
    let strict = TestServer::start_with("s.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = s_addr;
        c.federation.verify_tls = true;
        c.federation.hosts.insert("b.test".into(), b_addr);
    })
    .await;
    let sam = strict.register("sam").await;
    let r = sam.request(Method::GET, "/_matrix/client/v3/profile/@bob:b.test", None).await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Refused at the handshake, and the requester is not told how it failed.
    assert!(
        text.contains("could not be reached"),
        "a self-signed certificate must be refused without trusted_ca: {text}"
    );
    assert!(!text.contains("TLS") && !text.contains("certificate"), "the failure's details leaked: {text}");
    trusting.stop().await;
    strict.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_keys_are_the_only_keys_trusted_for_a_server() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let bob = b.register("bob").await;
    a.register("alice").await;
    bob.put(&format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)), json!({ "displayname": "Bob" }))
        .await;
    let b_key_id = b.engine.keys.key_id().to_owned();
    let b_key = b.engine.keys.public_key_b64().to_owned();
    let path = "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aa.test";

    // A pins a key B does not hold: B's genuine signature is refused, nothing is fetched.
    let a = a
        .restart_with(|c| {
            c.federation.trusted_keys.insert(
                "b.test".into(),
                [(b_key_id.clone(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned())].into(),
            );
        })
        .await;
    let r = signed_get(&b, &a, path).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED", "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        a.engine.keyring.key("b.test", &b_key_id, true).unwrap().as_deref(),
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    );

    // With B's real key pinned, B's requests pass.
    let a = a
        .restart_with(|c| {
            c.federation.trusted_keys.insert("b.test".into(), [(b_key_id.clone(), b_key.clone())].into());
        })
        .await;
    let r = signed_get(&b, &a, path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_an_unreachable_server_come_through_a_notary_it_signed_for() {
    let addr = |p: u16| -> std::net::SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (a_fed, b_fed, n_fed, dead) = (
        addr(myelin_suite::free_port()),
        addr(myelin_suite::free_port()),
        addr(myelin_suite::free_port()),
        addr(myelin_suite::free_port()),
    );
    // N, the notary, reaches B; A cannot reach B at all, only N.
    let n = TestServer::start_with("n.test", |c| {
        c.federation.listen = n_fed;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("b.test".into(), b_fed);
    })
    .await;
    let b = TestServer::start_with("b.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = b_fed;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_fed);
    })
    .await;
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = a_fed;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("b.test".into(), dead);
        c.federation.hosts.insert("n.test".into(), n_fed);
        c.federation.notaries = vec!["n.test".into()];
    })
    .await;
    a.register("alice").await;
    let bob = b.register("bob").await;

    // Bob's server asks A for alice's profile: A verifies B's signature with B's key
    // as vouched for by N.
    let profile = bob.get("/_matrix/client/v3/profile/@alice:a.test").await;
    assert_eq!(profile["displayname"], "alice");
    let b_key_id = b.engine.keys.key_id().to_owned();
    assert_eq!(
        a.engine.keyring.key("b.test", &b_key_id, false).unwrap().as_deref(),
        Some(b.engine.keys.public_key_b64()),
        "A holds B's key"
    );
    // N now notarises B's keys for anyone: signed by B and by N.
    let r = https_with(n_fed, Method::GET, "/_matrix/key/v2/query/b.test", None, &[]).await;
    let doc = r.json()["server_keys"][0].clone();
    assert_eq!(doc["server_name"], "b.test");
    assert!(doc["signatures"]["b.test"].is_object() && doc["signatures"]["n.test"].is_object(), "{doc}");
    a.stop().await;
    b.stop().await;
    n.stop().await;
}

/// An event on A's room head for `sender`, stamped and signed with `signer`'s key.
async fn forged_event(
    a: &TestServer,
    signer: &TestServer,
    sender: &str,
    room: &str,
    kind: &str,
    state_key: Option<&str>,
    content: serde_json::Value,
) -> serde_json::Value {
    use myelin_engine::rooms::NewEvent;
    let room_id = ruma::RoomId::parse(room).unwrap();
    let event = match state_key {
        Some(k) => NewEvent::state(kind, k, content),
        None => NewEvent::message(kind, content),
    };
    let sender = ruma::UserId::parse(sender).unwrap();
    let mut template = a.engine.rooms.template(&sender, &room_id, event).await.unwrap();
    template.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::Int::from(1_700_000_000u32)));
    let version = a.engine.rooms.room_version(&room_id).unwrap();
    let rules = myelin_engine::rooms::version::rules(&version).unwrap();
    signer.engine.keys.hash_and_sign_event(&mut template, &rules).unwrap();
    serde_json::to_value(&template).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_are_refused_and_leave_the_state_alone() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "kept" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "settled").await;
    wait_for_text(&bob, &room, "settled").await;

    // 1. Bob (on B, validly signed) renames the room without the power to.
    let no_power =
        forged_event(&a, &b, "@bob:b.test", &room, "m.room.name", Some(""), json!({ "name": "no power" })).await;
    // 2. B signs an event of a user of another server.
    let wrong_origin =
        forged_event(&a, &b, "@mallory:c.test", &room, "m.room.message", None, json!({ "body": "not b's user" })).await;
    // 3. A signed event altered afterwards.
    let mut altered =
        forged_event(&a, &b, "@bob:b.test", &room, "m.room.message", None, json!({ "body": "original" })).await;
    altered["depth"] = json!(altered["depth"].as_u64().unwrap() + 1000);
    let txn =
        json!({ "origin": "b.test", "origin_server_ts": 1, "pdus": [no_power, wrong_origin, altered], "edus": [] });
    let reply = signed_put(&b, &a, "/_matrix/federation/v1/send/forged-1", &txn).await;
    assert_eq!(reply.status, StatusCode::OK, "per-PDU errors, not a failed transaction");
    let results = reply.json()["pdus"].clone();
    let errors = results.as_object().map(|m| m.values().filter(|v| v.get("error").is_some()).count()).unwrap_or(0);
    assert!(errors >= 1, "the unauthorized rename is reported: {results}");

    let name = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room))).await;
    assert_eq!(name["name"], "kept", "state unchanged");
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room))).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(!bodies.contains(&"not b's user") && !bodies.contains(&"original"), "nothing forged shown: {bodies:?}");
    a.stop().await;
    b.stop().await;
}
