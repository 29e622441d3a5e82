//! Two servers over real TLS on loopback: signed requests, key fetching,
//! discovery through `[federation.hosts]`, allow/deny lists.

use http::{Method, StatusCode};
use myelin_engine::{federation::xmatrix, keys::ServerKeys};
use myelin_suite::{TestServer, device_keys, enc, federation_pair, https, https_with};
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
    assert!(text.contains("TLS"), "a self-signed certificate must be refused without trusted_ca: {text}");
    trusting.stop().await;
    strict.stop().await;
    b.stop().await;
}

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

/// A GET to `to`'s federation listener, signed as `from` (names `*.test`).
async fn signed_get(from: &TestServer, to: &TestServer, path: &str) -> myelin_suite::Reply {
    let (origin, dest) = (from.engine.server_name.as_str(), to.engine.server_name.as_str());
    let header = xmatrix::sign(&from.engine.keys, origin, dest, "GET", path, None).unwrap();
    https_with(to.federation.unwrap(), Method::GET, path, None, &[("authorization", &header)]).await
}

fn bodies(sync: &serde_json::Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|evs| evs.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn wait_for_text(c: &myelin_suite::Client, room: &str, text: &str) -> serde_json::Value {
    let mut since: Option<String> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sync = c.sync(since.as_deref(), 2_000).await;
        if bodies(&sync, room).iter().any(|b| b == text) {
            return sync;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(std::time::Instant::now() < deadline, "{} never saw {text:?}", c.user_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_b_joins_a_room_on_a_and_both_sides_chat() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Cross-server" })).await;

    let joined = bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    assert_eq!(joined["room_id"], room.as_str());
    let name = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room))).await;
    assert_eq!(name["name"], "Cross-server", "B has the room's state after the join");

    // A learns of bob's join and lists him.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
        if members["joined"].get("@bob:b.test").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A never saw bob join");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    alice.send_text(&room, "hello bob, from A").await;
    let seen = wait_for_text(&bob, &room, "hello bob, from A").await;
    let ev = seen["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "hello bob, from A")
        .unwrap()
        .clone();
    assert_eq!(ev["sender"], "@alice:a.test");

    bob.send_text(&room, "hi alice, from B").await;
    wait_for_text(&alice, &room, "hi alice, from B").await;

    // A burst arrives complete and in order.
    for i in 0..30 {
        alice.send_text(&room, &format!("burst {i}")).await;
    }
    wait_for_text(&bob, &room, "burst 29").await;
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=40", enc(&room))).await;
    let got: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with("burst "))
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..30).rev().map(|i| format!("burst {i}")).collect();
    assert_eq!(got, want);

    // The burst rode pooled connections: A and B share one process here, so the
    // counter covers both listeners; without pooling every transaction and key
    // or profile request would be a connection of its own (well over 30).
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let accepted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("myelin_federation_connections_accepted_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the connection counter");
    assert!(accepted <= 12.0, "{accepted} federation connections for about 35 requests");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_invite_crosses_servers_and_the_invitee_joins_through_the_inviter() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let room = alice
        .create_room(json!({ "preset": "trusted_private_chat", "name": "A and B", "invite": ["@bob:b.test"], "is_direct": true }))
        .await;

    // Bob's server co-signed the invite and shows it with the room's name.
    let invited = bob.sync(Some(&bob_since), 5_000).await;
    let state = invited["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "A and B"), "{invited}");
    let invite = state.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:b.test").unwrap();
    assert_eq!(invite["content"]["is_direct"], true);
    let on_a =
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc("@bob:b.test"))).await;
    assert_eq!(on_a["membership"], "invite");

    // Joining needs no server name: the inviter's server is known from the invite.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    alice.send_text(&room, "welcome to the DM").await;
    wait_for_text(&bob, &room, "welcome to the DM").await;
    bob.send_text(&room, "thanks").await;
    wait_for_text(&alice, &room, "thanks").await;

    // Inviting someone who does not exist on B is refused by B.
    let r = alice
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(json!({ "user_id": "@ghost:b.test" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&r.body));
    a.stop().await;
    b.stop().await;
}

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
async fn media_uploaded_on_a_is_downloaded_byte_for_byte_by_a_user_on_b() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let auth = format!("Bearer {}", alice.token);
    let up = myelin_suite::http_with(
        alice.addr,
        Method::POST,
        "/_matrix/media/v3/upload?filename=photo.jpg",
        Some(&bytes),
        &[("authorization", &auth), ("content-type", "image/jpeg")],
    )
    .await;
    assert_eq!(up.status, StatusCode::OK, "{}", String::from_utf8_lossy(&up.body));
    let mxc = up.json()["content_uri"].as_str().unwrap().to_owned();
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    assert!(path.starts_with("a.test/"), "{mxc}");

    let got = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.headers.get("content-type").unwrap(), "image/jpeg");
    assert!(got.body == bytes, "B served {} bytes, A holds {}", got.body.len(), bytes.len());

    // Served again from B's cache once A is gone.
    a.stop().await;
    let again = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body == bytes);

    // Unknown media on a reachable-or-not server is a 404, not a hang or a 500.
    let missing = bob.request(Method::GET, "/_matrix/client/v1/media/download/a.test/nosuchmedia", None).await;
    assert!(missing.status == StatusCode::NOT_FOUND || missing.status == StatusCode::BAD_GATEWAY, "{}", missing.status);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_b_searches_the_public_directory_of_a() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Incident Ops", "topic": "pager", "room_alias_name": "ops" }))
        .await;
    alice.create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Lunch" })).await;
    alice.create_room(json!({ "preset": "private_chat", "name": "Secret Ops" })).await;

    let all = bob.get("/_matrix/client/v3/publicRooms?server=a.test").await;
    let names: Vec<&str> = all["chunk"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 2, "{all}");
    assert!(names.contains(&"Incident Ops") && names.contains(&"Lunch"), "{names:?}");

    let found = bob
        .post(
            "/_matrix/client/v3/publicRooms?server=a.test",
            json!({ "filter": { "generic_search_term": "ops" }, "limit": 10 }),
        )
        .await;
    let chunk = found["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{found}");
    assert_eq!(chunk[0]["room_id"], room.as_str());
    assert_eq!(chunk[0]["canonical_alias"], "#ops:a.test");
    assert_eq!(chunk[0]["topic"], "pager");

    // Paging through the remote directory one room at a time reaches both.
    let first = bob.post("/_matrix/client/v3/publicRooms?server=a.test", json!({ "limit": 1 })).await;
    assert_eq!(first["chunk"].as_array().unwrap().len(), 1);
    let next = first["next_batch"].as_str().expect("a next_batch for the second page");
    let second = bob.post("/_matrix/client/v3/publicRooms?server=a.test", json!({ "limit": 1, "since": next })).await;
    assert_eq!(second["chunk"].as_array().unwrap().len(), 1);
    assert_ne!(first["chunk"][0]["room_id"], second["chunk"][0]["room_id"]);

    // Bob can join what he found, by alias.
    let joined = bob.post(&format!("/_matrix/client/v3/join/{}", enc("#ops:a.test")), json!({})).await;
    assert_eq!(joined["room_id"], room.as_str());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_server_is_down_all_arrive_once_after_it_returns() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before the outage").await;
    wait_for_text(&bob, &room, "before the outage").await;

    // B goes down; A keeps talking, and its sender fails and backs off.
    let b_fed = b.federation;
    let mut b = b;
    b.halt().await;
    for i in 0..25 {
        alice.send_text(&room, &format!("during outage {i}")).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{destination=\"b.test\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} for b.test in:\n{text}"))
    };
    let depth = gauge("myelin_federation_queue_depth");
    assert!((1.0..=25.0).contains(&depth), "queue depth {depth}");
    assert!(gauge("myelin_federation_queue_oldest_age_seconds") > 0.5);
    let stored = a.engine.backoffs.get("b.test").unwrap().expect("A stored B's backoff");
    assert!(stored.step_ms >= 1000, "{stored:?}");

    // B comes back on the same data and address; bob pokes A (any signed request
    // counts as a sign of life), and everything A queued arrives.
    let b = b.restart().await;
    assert_eq!(b.federation, b_fed);
    bob.addr = b.client;
    let prof = bob.request(Method::GET, "/_matrix/client/v3/profile/%40alice%3Aa.test", None).await;
    assert_eq!(prof.status, StatusCode::OK);
    wait_for_text(&bob, &room, "during outage 24").await;
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room))).await;
    let got: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with("during outage"))
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..25).rev().map(|i| format!("during outage {i}")).collect();
    assert_eq!(got, want, "every message exactly once, in order");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while a.engine.backoffs.get("b.test").unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the backoff outlived a delivered transaction");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

async fn wait_until_not_joined(c: &myelin_suite::Client, room: &str, user: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = c.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room))).await;
        if members["joined"].get(user).is_none() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{} still lists {user}: {members}", c.user_id);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_a_user_and_shutting_a_room_down_reach_the_other_server() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    for u in [&bob, &carol] {
        u.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    }
    alice.send_text(&room, "everyone here").await;
    wait_for_text(&carol, &room, "everyone here").await;
    // Carol has encryption keys that A has fetched.
    carol
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&carol.user_id, &carol.device_id, "carol-curve") }),
        )
        .await;
    let q = alice.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { carol.user_id.clone(): [] } })).await;
    assert!(q["device_keys"][&carol.user_id].get(&carol.device_id).is_some(), "{q}");
    assert_eq!(a.engine.e2ee.device_keys(&carol.user_id).unwrap().len(), 1, "A keeps what it fetched");

    // The operator of B deactivates carol through the admin socket.
    let data_dir = b.engine.config.data_dir.clone();
    let answer = myelin_api::admin::request(&data_dir, &json!({ "op": "user_deactivate", "name": "carol" }))
        .await
        .unwrap()
        .expect("the admin socket answers");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["rooms_left"], 1, "{answer}");
    wait_until_not_joined(&alice, &room, "@carol:b.test").await;
    let who = carol.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(who.status, StatusCode::UNAUTHORIZED, "a deactivated user's token is dead");
    // Her device's keys are gone from B and, told by a device-list update, from A's copy too.
    assert!(b.engine.e2ee.device_keys(&carol.user_id).unwrap().is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a.engine.e2ee.device_keys(&carol.user_id).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "A still holds carol's device keys");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Then shuts the room down on B: bob leaves, visibly on A, and cannot come back.
    let answer = myelin_api::admin::request(&data_dir, &json!({ "op": "room_shutdown", "room_id": room }))
        .await
        .unwrap()
        .expect("the admin socket answers");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["users_removed"], 1, "{answer}");
    wait_until_not_joined(&alice, &room, "@bob:b.test").await;
    let rejoin = bob
        .request(Method::POST, &format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), Some(json!({})))
        .await;
    assert_eq!(rejoin.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&rejoin.body));
    assert_eq!(rejoin.errcode(), "M_FORBIDDEN");
    let invite = alice
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(json!({ "user_id": "@bob:b.test" })),
        )
        .await;
    assert!(!invite.status.is_success(), "B refuses invites into a room it shut down");
    // The room itself lives on at A.
    alice.send_text(&room, "still here").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_invite_is_declined_through_the_inviting_server() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat", "invite": ["@bob:b.test"] })).await;
    let since = bob.sync(None, 0).await;
    assert!(since["rooms"]["invite"].get(&room).is_some(), "{since}");
    let since = since["next_batch"].as_str().unwrap().to_owned();

    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;

    // A holds bob's own, signed leave in the room state.
    let member = |alice: myelin_suite::Client, room: String| async move {
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc("@bob:b.test"))).await
    };
    assert_eq!(member(alice.clone(), room.clone()).await["membership"], "leave");
    // Bob's sync moves the room from invite to leave; a fresh sync shows no invite.
    let after = bob.sync(Some(&since), 0).await;
    assert!(after["rooms"]["leave"].get(&room).is_some(), "{after}");
    assert!(bob.sync(None, 0).await["rooms"]["invite"].get(&room).is_none());

    // Alice can invite again, and this time bob joins.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": "@bob:b.test" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    assert_eq!(member(alice.clone(), room.clone()).await["membership"], "join");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_deny_cuts_a_server_off_both_ways_and_removing_it_restores_delivery() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before the deny").await;
    wait_for_text(&bob, &room, "before the deny").await;

    let admin = |req: serde_json::Value| {
        let dir = a.engine.config.data_dir.clone();
        async move { myelin_api::admin::request(&dir, &req).await.unwrap().expect("the admin socket answers") }
    };
    assert_eq!(admin(json!({ "op": "federation_deny", "server": "b.test" })).await["ok"], true);
    let list = admin(json!({ "op": "federation_list" })).await;
    assert_eq!(list["entries"], json!([{ "server": "b.test", "list": "deny", "source": "runtime" }]));

    // Inbound from B is refused...
    let prof = bob.request(Method::GET, "/_matrix/client/v3/profile/%40alice%3Aa.test", None).await;
    assert_eq!(prof.status, StatusCode::NOT_FOUND, "B cannot query A: {}", String::from_utf8_lossy(&prof.body));
    // ...and nothing goes out to B.
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "while denied").await;
    let quiet = bob.sync(Some(&since), 1_500).await;
    assert!(!bodies(&quiet, &room).contains(&"while denied".to_owned()), "{quiet}");

    // Lifted: B's next contact wakes A's sender, and the queued message arrives.
    assert_eq!(admin(json!({ "op": "federation_remove", "server": "b.test" })).await["ok"], true);
    assert_eq!(admin(json!({ "op": "federation_remove", "server": "b.test" })).await["ok"], false);
    bob.send_text(&room, "are you there?").await;
    wait_for_text(&bob, &room, "while denied").await;
    wait_for_text(&alice, &room, "are you there?").await;
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

/// A minimal TLS HTTP server on `bind` answering each path with `answer(path)`
/// = (status, content type, body); counts requests per path prefix match.
async fn tiny_tls_server(
    bind: &str,
    tls: std::sync::Arc<rustls::ServerConfig>,
    answer: impl Fn(&str) -> (u16, &'static str, Vec<u8>) + Send + Sync + 'static,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap_or_else(|e| panic!("binding {bind}: {e}"));
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = std::sync::Arc::new(answer);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, answer, log) = (acceptor.clone(), answer.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (answer, log) = (answer.clone(), log.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        log.lock().unwrap().push(path.clone());
                        let (status, content_type, body) = answer(&path);
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_found_through_its_well_known_delegation() {
    let b_port = myelin_suite::free_port();
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{b_port}").parse().unwrap();
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
    })
    .await;
    let a_fed = a.federation.unwrap();
    // B is "localhost" with no port: only .well-known can say where it listens.
    let b = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.federation.listen = b_addr;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_fed);
    })
    .await;
    let tls = myelin_api::tls::server_config(&b.engine.config).unwrap();
    // Binding port 443 needs root or CAP_NET_BIND_SERVICE, which the CI machine has.
    let well_known = json!({ "m.server": format!("127.0.0.1:{b_port}") }).to_string().into_bytes();
    let (_, seen, server) = tiny_tls_server("127.0.0.1:443", tls, move |path| match path {
        "/.well-known/matrix/server" => (200, "application/json", well_known.clone()),
        _ => (404, "application/json", b"{}".to_vec()),
    })
    .await;
    let hits = || seen.lock().unwrap().iter().filter(|p| p.as_str() == "/.well-known/matrix/server").count();
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    bob.put(&format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)), json!({ "displayname": "Bob" }))
        .await;

    let profile = alice.get("/_matrix/client/v3/profile/@bob:localhost").await;
    assert_eq!(profile["displayname"], "Bob");
    assert_eq!(hits(), 1, "one lookup, then the cached answer");
    alice.get("/_matrix/client/v3/profile/@bob:localhost").await;
    assert_eq!(hits(), 1);

    // A room on B, joined from A through the delegated address.
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    alice.post(&format!("/_matrix/client/v3/join/{}?server_name=localhost", enc(&room)), json!({})).await;
    bob.send_text(&room, "found you").await;
    wait_for_text(&alice, &room, "found you").await;
    server.abort();
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
async fn thumbnails_of_media_on_a_are_served_over_federation_and_to_users_on_b() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let img = image::RgbImage::from_fn(400, 200, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 60]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let auth = format!("Bearer {}", alice.token);
    let up = myelin_suite::http_with(
        alice.addr,
        Method::POST,
        "/_matrix/media/v3/upload?filename=wide.png",
        Some(&png),
        &[("authorization", &auth), ("content-type", "image/png")],
    )
    .await;
    let mxc = up.json()["content_uri"].as_str().unwrap().to_owned();
    let id = mxc.rsplit('/').next().unwrap().to_owned();

    // A serves the thumbnail to B's server as multipart/mixed.
    let path = format!("/_matrix/federation/v1/media/thumbnail/{id}?width=100&height=100&method=scale");
    let r = signed_get(&b, &a, &path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let ct = r.headers["content-type"].to_str().unwrap().to_owned();
    let boundary = ct.split("boundary=").nth(1).expect("a multipart boundary").to_owned();
    let body = r.body.to_vec();
    let marker = format!("--{boundary}\r\nContent-Type: image/png\r\n\r\n");
    let start = body.windows(marker.len()).position(|w| w == marker.as_bytes()).expect("the image part") + marker.len();
    let thumb = image::load_from_memory(&body[start..]).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (100, 50));

    // Bob asks his own server, which fetches the original from A and thumbnails it.
    let server_path = mxc.strip_prefix("mxc://").unwrap();
    let r = bob
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/media/thumbnail/{server_path}?width=40&height=40&method=crop"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let thumb = image::load_from_memory(&r.body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (40, 40));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_of_a_server_without_federation_media_comes_through_its_legacy_endpoint() {
    // "old.test" predates authenticated media: 404 M_UNRECOGNIZED for the federation
    // endpoint, bytes from the legacy one.
    let old_dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(old_dir.path(), "old.test")).unwrap();
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let served = blob.clone();
    let (old_addr, seen, server) = tiny_tls_server("127.0.0.1:0", tls, move |path| {
        if path == "/_matrix/media/v3/download/old.test/legacyfile" {
            (200, "audio/ogg", served.clone())
        } else {
            (404, "application/json", br#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#.to_vec())
        }
    })
    .await;
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("old.test".into(), old_addr);
    })
    .await;
    let alice = a.register("alice").await;

    let r = alice.request(Method::GET, "/_matrix/client/v1/media/download/old.test/legacyfile", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "audio/ogg");
    assert!(r.body == blob, "{} bytes", r.body.len());
    let paths = seen.lock().unwrap().clone();
    assert_eq!(
        paths,
        vec!["/_matrix/federation/v1/media/download/legacyfile", "/_matrix/media/v3/download/old.test/legacyfile"],
        "the federation endpoint first, then the legacy one"
    );
    // Missing media on the old server stays a 404.
    let r = alice.request(Method::GET, "/_matrix/client/v1/media/download/old.test/nothing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    server.abort();
    a.stop().await;
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
async fn a_long_queue_is_taken_in_order_batch_by_batch_and_found_again_after_it_emptied() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before").await;
    wait_for_text(&bob, &room, "before").await;

    // B is away while A queues 120 events; they are taken here as the sender would,
    // 50 at a time, each batch marked delivered before the next is read.
    let mut b = b;
    b.halt().await;
    let mut sent = Vec::new();
    for i in 0..120 {
        alice.send_text(&room, &format!("queued {i}")).await;
        sent.push(format!("queued {i}"));
    }
    let dest = a.engine.rooms.server_short("b.test").unwrap().expect("B was queued to");
    assert!(a.engine.rooms.outbound_destinations().unwrap().iter().any(|(d, _)| *d == dest));
    let mut taken = Vec::new();
    loop {
        let batch = a.engine.rooms.outbound_batch(dest, 50, 100).unwrap();
        if batch.seqs().is_empty() {
            break;
        }
        assert!(batch.pdus.len() <= 50);
        taken.extend(batch.pdus.iter().map(|(_, p)| body_of(p)));
        a.engine.rooms.outbound_delivered(dest, &batch).await.unwrap();
    }
    assert_eq!(taken, sent, "every queued event once, in order");
    assert_eq!(a.engine.rooms.outbound_depth(dest, 1000).unwrap(), 0);
    assert!(!a.engine.rooms.outbound_destinations().unwrap().iter().any(|(d, _)| *d == dest));

    // A new event after the queue emptied is found again.
    alice.send_text(&room, "later").await;
    assert!(a.engine.rooms.outbound_destinations().unwrap().iter().any(|(d, _)| *d == dest));
    let batch = a.engine.rooms.outbound_batch(dest, 50, 100).unwrap();
    assert_eq!(batch.pdus.iter().map(|(_, p)| body_of(p)).collect::<Vec<_>>(), ["later"]);
    a.stop().await;
    b.stop().await;
}

/// The message body of a queued PDU (stored bytes).
fn body_of(pdu: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(pdu).unwrap();
    json["content"]["body"].as_str().unwrap().to_owned()
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

/// Syncs from `since` until `check` accepts a response; returns it.
async fn sync_until(
    c: &myelin_suite::Client,
    since: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut since = since.to_owned();
    loop {
        let s = c.sync(Some(&since), 1_000).await;
        if check(&s) {
            return s;
        }
        since = s["next_batch"].as_str().unwrap().to_owned();
        assert!(std::time::Instant::now() < deadline, "{what} never showed in /sync");
    }
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
    alice.post("/_matrix/client/v3/keys/device_signing/upload", json!({ "master_key": master })).await;
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

    // A server that is down: B answers from what it fetched last and names A in failures.
    a.stop().await;
    let q = bob
        .post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] }, "timeout": 3000 }))
        .await;
    assert!(q["failures"].get("a.test").is_some(), "{q}");
    assert!(q["device_keys"][&alice.user_id].get("PHONE").is_some(), "cached keys served: {q}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_message_survives_the_sender_restarting_while_the_receiver_is_down() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let mut b = b;
    b.halt().await;
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key/durable1",
            json!({ "messages": { "@bob:b.test": { bob.device_id.clone(): { "session": "s1" } } } }),
        )
        .await;
    // A restarts before B is back: an in-memory queue would have lost the message.
    let a = a.restart().await;
    let b = b.restart().await;
    bob.addr = b.client;
    let prof = bob.request(Method::GET, "/_matrix/client/v3/profile/%40alice%3Aa.test", None).await;
    assert_eq!(prof.status, StatusCode::OK, "a sign of life to A");
    let s = sync_until(&bob, &since, "the to-device message", |s| {
        s["to_device"]["events"].as_array().is_some_and(|e| e.iter().any(|e| e["type"] == "m.room_key"))
    })
    .await;
    let e = s["to_device"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.room_key").unwrap().clone();
    assert_eq!(e["sender"], "@alice:a.test");
    assert_eq!(e["content"]["session"], "s1");
    a.stop().await;
    b.stop().await;
}

/// A PUT to `to`'s federation listener, signed as `from`.
async fn signed_put(from: &TestServer, to: &TestServer, path: &str, body: &serde_json::Value) -> myelin_suite::Reply {
    let (origin, dest) = (from.engine.server_name.as_str(), to.engine.server_name.as_str());
    let header = xmatrix::sign(&from.engine.keys, origin, dest, "PUT", path, Some(body)).unwrap();
    let bytes = body.to_string();
    https_with(to.federation.unwrap(), Method::PUT, path, Some(bytes.as_bytes()), &[("authorization", &header)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_and_a_resent_to_device_message_are_applied_once_even_across_a_restart() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let mut bob = b.register("bob").await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let edu = |message_id: &str, n: u64| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": "@alice:a.test", "type": "m.test.count", "message_id": message_id,
            "messages": { "@bob:b.test": { bob.device_id.clone(): { "n": n } } },
        }})
    };
    let txn =
        |edus: Vec<serde_json::Value>| json!({ "origin": "a.test", "origin_server_ts": 1, "pdus": [], "edus": edus });
    let first = txn(vec![edu("m1", 1)]);
    assert_eq!(signed_put(&a, &b, "/_matrix/federation/v1/send/t-1", &first).await.status, StatusCode::OK);
    let b = b.restart().await;
    bob.addr = b.client;
    // The same transaction again, and the same message under another transaction id.
    assert_eq!(signed_put(&a, &b, "/_matrix/federation/v1/send/t-1", &first).await.status, StatusCode::OK);
    let second = txn(vec![edu("m1", 1), edu("m2", 2)]);
    assert_eq!(signed_put(&a, &b, "/_matrix/federation/v1/send/t-2", &second).await.status, StatusCode::OK);
    let s = sync_until(&bob, &since, "message m2", |s| {
        s["to_device"]["events"].as_array().is_some_and(|e| e.iter().any(|e| e["content"]["n"] == 2))
    })
    .await;
    let ns: Vec<u64> =
        s["to_device"]["events"].as_array().unwrap().iter().filter_map(|e| e["content"]["n"].as_u64()).collect();
    assert_eq!(ns, vec![1, 2], "each message once");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_b_knocks_on_a_room_on_a_is_let_in_and_chats() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat", "name": "knock knock",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;
    let closed = alice.create_room(json!({ "preset": "private_chat" })).await;
    let alice_since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // An invite-only room refuses the knock; the knock room takes it.
    let refused = bob
        .request(Method::POST, &format!("/_matrix/client/v3/knock/{}?via=a.test", enc(&closed)), Some(json!({})))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&refused.body));
    let knocked = bob
        .post(&format!("/_matrix/client/v3/knock/{}?via=a.test", enc(&room)), json!({ "reason": "let me in" }))
        .await;
    assert_eq!(knocked["room_id"], room);
    // Bob sees the room he knocked on, with its name, in rooms.knock.
    let s = sync_until(&bob, &bob_since, "the knocked room", |s| s["rooms"]["knock"].get(&room).is_some()).await;
    let state = s["rooms"]["knock"][&room]["knock_state"]["events"].as_array().unwrap().clone();
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "knock knock"), "{state:?}");
    // Alice on A sees the knock with its reason.
    let room_id = room.clone();
    let s = sync_until(&alice, &alice_since, "bob's knock", |s| {
        s["rooms"]["join"][&room_id]["timeline"]["events"].as_array().is_some_and(|evs| {
            evs.iter().any(|e| e["state_key"] == "@bob:b.test" && e["content"]["membership"] == "knock")
        })
    })
    .await;
    let knock = s["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == "@bob:b.test")
        .unwrap()
        .clone();
    assert_eq!(knock["content"]["reason"], "let me in");
    // A local user knocks too, without federation.
    carol.post(&format!("/_matrix/client/v3/knock/{}", enc(&room)), json!({})).await;
    let m = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&carol.user_id)))
        .await;
    assert_eq!(m["membership"], "knock");

    // Alice lets bob in: the invite reaches B, bob joins and they chat.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": "@bob:b.test" })).await;
    sync_until(&bob, &bob_since, "the invite", |s| s["rooms"]["invite"].get(&room).is_some()).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    alice.send_text(&room, "welcome in").await;
    wait_for_text(&bob, &room, "welcome in").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deprecated_v1_send_join_answers_with_the_wrapped_room_state() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    // B makes the join by hand: template from A, stamped and signed with B's key.
    let made = signed_get(&b, &a, &format!("/_matrix/federation/v1/make_join/{}/%40bob%3Ab.test?ver=12", enc(&room)))
        .await
        .json();
    let version = ruma::RoomVersionId::try_from(made["room_version"].as_str().unwrap()).unwrap();
    let rules = myelin_engine::rooms::version::rules(&version).unwrap();
    let mut event: ruma::CanonicalJsonObject = serde_json::from_value(made["event"].clone()).unwrap();
    event.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::Int::from(1_700_000_000u32)));
    b.engine.keys.hash_and_sign_event(&mut event, &rules).unwrap();
    let event_id = myelin_engine::rooms::pdu::event_id_of(&event, &rules).unwrap();
    let body = serde_json::to_value(&event).unwrap();
    let path = format!("/_matrix/federation/v1/send_join/{}/{}", enc(&room), enc(event_id.as_str()));
    let reply = signed_put(&b, &a, &path, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let answer = reply.json();
    assert_eq!(answer[0], 200, "wrapped as [200, body]: {answer}");
    let state = answer[1]["state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    assert!(!answer[1]["auth_chain"].as_array().unwrap().is_empty());
    let m = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/%40bob%3Ab.test", enc(&room))).await;
    assert_eq!(m["membership"], "join");
    a.stop().await;
    b.stop().await;
}

/// A UDP DNS server on loopback answering SRV queries for `name` with `target:port`
/// and NXDOMAIN for everything else; counts the queries it answered with a record.
async fn fake_srv_resolver(
    name: &'static str,
    target: &'static str,
    port: u16,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use myelin_api::transport::dns::{Srv, encode_answer};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            let mut labels = Vec::new();
            let mut at = 12;
            while at < n && query[at] != 0 {
                let len = query[at] as usize;
                labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).into_owned());
                at += 1 + len;
            }
            let reply = if labels.join(".") == name {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                encode_answer(query, &[Srv { priority: 10, weight: 1, port, target: target.into() }])
            } else {
                let mut r = encode_answer(query, &[]);
                r[3] |= 3; // NXDOMAIN
                r
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_found_through_its_srv_record() {
    let (a_port, b_port) = (myelin_suite::free_port(), myelin_suite::free_port());
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{a_port}").parse().unwrap();
    let (dns, hits) = fake_srv_resolver("_matrix-fed._tcp.b.srvtest", "localhost", b_port).await;
    let b = TestServer::start_with("b.srvtest", |c| {
        c.registration.enabled = true;
        c.federation.listen = format!("127.0.0.1:{b_port}").parse().unwrap();
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_addr);
    })
    .await;
    // A knows nothing of B but its name: no hosts entry, no .well-known, only the SRV record.
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = a_addr;
        c.federation.verify_tls = false;
        c.federation.dns_servers = vec![dns];
    })
    .await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    bob.put("/_matrix/client/v3/profile/%40bob%3Ab.srvtest/displayname", json!({ "displayname": "Bob via SRV" })).await;
    let p = alice.get("/_matrix/client/v3/profile/%40bob%3Ab.srvtest").await;
    assert_eq!(p["displayname"], "Bob via SRV");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the SRV record was asked for");
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
    a.stop().await;
    b.stop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_replies_reactions_and_redactions_cross_between_two_myelins() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let original = alice.send_text(&room, "helo").await;
    wait_for_text(&bob, &room, "helo").await;
    let send = |c: &myelin_suite::Client, kind: &str, txn: &str, content: serde_json::Value| {
        let (c, kind, txn, room) = (c.clone(), kind.to_owned(), txn.to_owned(), room.clone());
        async move {
            c.put(&format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(&room)), content).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    send(
        &alice,
        "m.room.message",
        "edit1",
        json!({
            "msgtype": "m.text", "body": "* hello",
            "m.new_content": { "msgtype": "m.text", "body": "hello" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": original },
        }),
    )
    .await;
    send(
        &bob,
        "m.room.message",
        "reply1",
        json!({
            "msgtype": "m.text", "body": "> hello\n\nhi back", "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply></mx-reply><em>hi back</em>",
            "m.relates_to": { "m.in_reply_to": { "event_id": original } },
        }),
    )
    .await;
    send(
        &bob,
        "m.reaction",
        "react1",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": original, "key": "🎉" } }),
    )
    .await;
    let doomed = alice.send_text(&room, "delete me").await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&doomed)),
            json!({ "reason": "oops" }),
        )
        .await;

    // Bob on B: the edit is bundled on the original and the redaction applied.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let e = bob
            .request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&doomed)), None)
            .await;
        let gone = e.status == StatusCode::OK && e.json()["content"].get("body").is_none();
        let o = bob.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&original))).await;
        let edited = o["unsigned"]["m.relations"]["m.replace"].is_object();
        if gone && edited {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B never saw the edit ({o}) or the redaction");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Alice on A: bob's reply keeps its formatting, and his reaction is counted.
    wait_for_text(&alice, &room, "> hello\n\nhi back").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let rel = alice
            .get(&format!("/_matrix/client/v1/rooms/{}/relations/{}/m.annotation", enc(&room), enc(&original)))
            .await;
        if rel["chunk"].as_array().is_some_and(|c| c.iter().any(|e| e["content"]["m.relates_to"]["key"] == "🎉")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A never saw bob's reaction: {rel}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&room))).await;
    let r = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "> hello\n\nhi back")
        .unwrap()
        .clone();
    assert_eq!(r["content"]["formatted_body"], "<mx-reply></mx-reply><em>hi back</em>");
    assert_eq!(r["content"]["m.relates_to"]["m.in_reply_to"]["event_id"], original);
    a.stop().await;
    b.stop().await;
}
