//! The Application Service API end to end: a registration file loaded at
//! start, the appservice acting as its users, and what the homeserver pushes
//! to it — over real HTTP on loopback, with a stand-in appservice that
//! records every request (`kit::appservice`).

use std::time::Duration;

use http::{Method, StatusCode};
use myelin_suite::{
    Client, TestServer,
    appservice::{self, FakeAppservice, RegistrationYaml, Seen, not_found, wait_events},
    enc, http_with,
};
use serde_json::{Value, json};

const AS_TOKEN: &str = "as-secret-token";
const HS_TOKEN: &str = "hs-secret-token";

fn registration(url: Option<&str>, exclusive: bool) -> String {
    RegistrationYaml {
        id: "fakebridge",
        url,
        as_token: AS_TOKEN,
        hs_token: HS_TOKEN,
        sender_localpart: "bridgebot",
        user_regex: "@bridge_.*:as.test",
        alias_regex: "#bridge_.*:as.test",
        exclusive,
        ephemeral: true,
    }
    .render()
}

/// A server named `as.test` with open registration and the registration file in `dir`.
async fn server_with(yaml: &str, dir: &tempfile::TempDir) -> TestServer {
    appservice::server_with_registration(yaml, dir).await
}

/// A request with the appservice's token, as `user` when given.
async fn as_request(
    server: &TestServer,
    method: Method,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> myelin_suite::Reply {
    appservice::as_request(server, AS_TOKEN, method, path, user, body).await
}

async fn as_register(server: &TestServer, localpart: &str) -> myelin_suite::Reply {
    let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
    as_request(server, Method::POST, "/_matrix/client/v3/register", None, Some(body)).await
}

#[tokio::test]
async fn an_appservice_acts_only_as_the_users_of_its_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(None, true), &dir).await;

    // Its sender exists from the start; whoami says who the token is.
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["user_id"], "@bridgebot:as.test");

    // Registering a namespaced user: no password, no user-interactive auth.
    let r = as_register(&server, "bridge_alice").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], "@bridge_alice:as.test");
    assert!(r.json().get("access_token").is_none(), "inhibit_login gives no token");
    // Twice: the id is taken.
    assert_eq!(as_register(&server, "bridge_alice").await.errcode(), "M_USER_IN_USE");
    // Outside its namespace: refused.
    let r = as_register(&server, "carol").await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    // Without the appservice login type: refused.
    let r = as_request(
        &server,
        Method::POST,
        "/_matrix/client/v3/register",
        None,
        Some(json!({ "username": "bridge_bob", "auth": { "type": "m.login.dummy" } })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");

    // Masquerading.
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", Some("@bridge_alice:as.test"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["user_id"], "@bridge_alice:as.test");
    let alice = server.register("alice").await;
    for (user, why) in [
        ("@alice:as.test", "a user outside its namespaces"),
        ("@bridge_nobody:as.test", "a namespaced user it never registered"),
        ("@bridge_x:elsewhere.test", "another server's user"),
    ] {
        let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", Some(user), None).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"), "{why}");
    }
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", Some("not a user id"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami?device_id=NOPE", None, None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_UNKNOWN_DEVICE"));

    // Ordinary users cannot take what the namespaces claim exclusively.
    let body = json!({ "username": "bridge_mallory", "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
    let r =
        http_with(server.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes()), &[])
            .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    let room = alice.create_room(json!({})).await;
    let r = alice
        .request(
            Method::PUT,
            "/_matrix/client/v3/directory/room/%23bridge_mine:as.test",
            Some(json!({ "room_id": room })),
        )
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    let r = alice
        .request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "room_alias_name": "bridge_x" })))
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    // The appservice itself may.
    let r = as_request(
        &server,
        Method::PUT,
        "/_matrix/client/v3/directory/room/%23bridge_mine:as.test",
        None,
        Some(json!({ "room_id": room })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    // And an ordinary user's alias outside the namespaces is fine.
    alice.put("/_matrix/client/v3/directory/room/%23plain:as.test", json!({ "room_id": room })).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_registration_file_stops_the_start_with_the_file_and_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, registration(None, true).replace("@bridge_.*:as.test", "@bridge_(:as.test")).unwrap();
    let mut config = myelin_suite::test_config(dir.path(), "as.test");
    config.appservice.registrations = vec![path.clone()];
    let err = match myelin_engine::Engine::open(config) {
        Ok(_) => panic!("a registration with a bad regex was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("bad.yaml") && err.contains("namespaces.users[0].regex"), "{err}");

    // Two registrations with one token.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, registration(None, true)).unwrap();
    std::fs::write(&b, registration(None, true).replace("id: fakebridge", "id: other").replace(HS_TOKEN, "hs2"))
        .unwrap();
    let mut config = myelin_suite::test_config(dir.path(), "as.test");
    config.appservice.registrations = vec![a, b];
    let err = match myelin_engine::Engine::open(config) {
        Ok(_) => panic!("two registrations sharing an as_token were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("b.yaml") && err.contains("as_token"), "{err}");
}

/// Room `room` with `alice` and the namespaced `@bridge_alice` joined (by masquerading).
async fn bridged_room(server: &TestServer, alice: &Client) -> String {
    assert_eq!(as_register(server, "bridge_alice").await.status, StatusCode::OK);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = as_request(
        server,
        Method::POST,
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some("@bridge_alice:as.test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    room
}

fn bodies_of(events: &[Value], room: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["room_id"] == room && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

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

#[tokio::test]
async fn unknown_aliases_and_users_in_a_namespace_are_asked_of_the_appservice() {
    // The bridge answers an alias query by creating the room with that alias,
    // as bridges do, and a user query by registering the user.
    let client_addr = std::sync::Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
    let addr = client_addr.clone();
    let fake = FakeAppservice::start(move |seen: Seen| {
        let addr = addr.clone();
        Box::pin(async move {
            let Some(&client) = addr.get() else { return (503, json!({})) };
            let auth = format!("Bearer {AS_TOKEN}");
            let call = |method: Method, path: String, body: Value| {
                let auth = auth.clone();
                async move {
                    http_with(client, method, &path, Some(body.to_string().as_bytes()), &[("authorization", &auth)]).await
                }
            };
            if let Some(alias) = seen.path.strip_prefix("/_matrix/app/v1/rooms/") {
                let alias = percent_decode(alias);
                let Some(local) = alias.strip_prefix('#').and_then(|a| a.split(':').next()) else { return (404, json!({})) };
                let r = call(Method::POST, "/_matrix/client/v3/createRoom".into(), json!({ "room_alias_name": local, "preset": "public_chat" })).await;
                return if r.status == StatusCode::OK { (200, json!({})) } else { (500, json!({})) };
            }
            if let Some(user) = seen.path.strip_prefix("/_matrix/app/v1/users/") {
                let user = percent_decode(user);
                let local = user.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
                let r = call(
                    Method::POST,
                    "/_matrix/client/v3/register".into(),
                    json!({ "type": "m.login.application_service", "username": local, "inhibit_login": true }),
                )
                .await;
                return if r.status == StatusCode::OK { (200, json!({})) } else { (500, json!({})) };
            }
            if seen.path == "/_matrix/app/v1/ping" {
                return (200, json!({}));
            }
            if seen.path == "/_matrix/app/v1/thirdparty/protocol/fakeproto" {
                return (200, json!({ "user_fields": ["nick"], "location_fields": [], "icon": "", "field_types": {}, "instances": [] }));
            }
            (404, json!({ "errcode": "M_NOT_FOUND" }))
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), true), &dir).await;
    client_addr.set(server.client).unwrap();
    let alice = server.register("alice").await;

    let r = alice.request(Method::GET, "/_matrix/client/v3/directory/room/%23bridge_lobby:as.test", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let room = r.json()["room_id"].as_str().unwrap().to_owned();
    assert!(fake.requests().iter().any(|s| s.path == "/_matrix/app/v1/rooms/%23bridge_lobby%3Aas.test"
        && s.authorization.as_deref() == Some(&format!("Bearer {HS_TOKEN}"))));
    // The alias now works for joining.
    alice.post(&format!("/_matrix/client/v3/join/{}", enc("#bridge_lobby:as.test")), json!({})).await;
    let joined = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert!(joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()));
    // Outside the namespace nobody is asked.
    // (Transactions may arrive meanwhile: only queries count.)
    let queries = |f: &FakeAppservice| {
        f.requests().iter().filter(|s| !s.path.starts_with("/_matrix/app/v1/transactions/")).count()
    };
    let before = queries(&fake);
    let r = alice.request(Method::GET, "/_matrix/client/v3/directory/room/%23elsewhere:as.test", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(queries(&fake), before);

    // A profile lookup of an unknown namespaced user brings it into being.
    let r = alice.request(Method::GET, "/_matrix/client/v3/profile/%40bridge_zed%3Aas.test", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(fake.requests().iter().any(|s| s.path == "/_matrix/app/v1/users/%40bridge_zed%3Aas.test"));

    // Ping, by the appservice only.
    let r = as_request(
        &server,
        Method::POST,
        "/_matrix/client/v1/appservice/fakebridge/ping",
        None,
        Some(json!({ "transaction_id": "p1" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["duration_ms"].is_u64());
    let ping = fake.requests().into_iter().find(|s| s.path == "/_matrix/app/v1/ping").expect("the ping");
    assert_eq!((ping.method.as_str(), ping.body["transaction_id"].as_str()), ("POST", Some("p1")));
    let r = alice.request(Method::POST, "/_matrix/client/v1/appservice/fakebridge/ping", Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));

    // Third-party protocols come from the appservice that declares them.
    let protocols = alice.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(protocols["fakeproto"]["user_fields"][0], "nick");

    // Publishing a bridged room in the directory.
    let path = format!("/_matrix/client/v3/directory/list/appservice/fakenet/{}", enc(&room));
    let r = as_request(&server, Method::PUT, &path, None, Some(json!({ "visibility": "public" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let r = alice.request(Method::PUT, &path, Some(json!({ "visibility": "public" }))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// Also found by the interop runs: a bridge bot lists the members of a portal
/// its puppets are in without being joined itself (Synapse allows an
/// appservice any room one of its users is joined to).
#[tokio::test]
async fn an_appservice_lists_the_members_of_rooms_its_users_are_joined_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(None, true), &dir).await;
    let alice = server.register("alice").await;
    let room = bridged_room(&server, &alice).await;
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let r = as_request(&server, Method::GET, &path, None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let joined = r.json()["joined"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(joined, ["@alice:as.test", "@bridge_alice:as.test"]);
    // A room none of its users is in stays closed to it, and to other users.
    let other = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&other));
    let r = as_request(&server, Method::GET, &path, None, None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    let carol = server.register("carol").await;
    let r = carol.request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_third_party_lookups_ask_the_appservice_whose_namespace_holds_the_id() {
    let fake = FakeAppservice::start(|seen| {
        Box::pin(async move {
            match (seen.path.as_str(), seen.query.as_str()) {
                ("/_matrix/app/v1/thirdparty/location", q) if q.contains("alias=") => (
                    200,
                    json!([{ "alias": "#bridge_lobby:as.test", "protocol": "fakeproto", "fields": { "channel": "lobby" } }]),
                ),
                ("/_matrix/app/v1/thirdparty/user", q) if q.contains("userid=") => (
                    200,
                    json!([{ "userid": "@bridge_zed:as.test", "protocol": "fakeproto", "fields": { "nick": "zed" } }, 5]),
                ),
                _ => (404, json!({ "errcode": "M_NOT_FOUND" })),
            }
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), false), &dir).await;
    let alice = server.register("alice").await;

    let r = alice
        .request(Method::GET, "/_matrix/client/v3/thirdparty/location?alias=%23bridge_lobby%3Aas.test", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!([{ "alias": "#bridge_lobby:as.test", "protocol": "fakeproto", "fields": { "channel": "lobby" } }])
    );
    let asked = fake.requests().into_iter().find(|s| s.path == "/_matrix/app/v1/thirdparty/location").expect("asked");
    assert_eq!(asked.query, "alias=%23bridge_lobby%3Aas.test", "{asked:?}");
    assert_eq!(asked.authorization.as_deref(), Some(format!("Bearer {HS_TOKEN}").as_str()));

    // Entries that are not objects are dropped.
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/user?userid=%40bridge_zed%3Aas.test", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!([{ "userid": "@bridge_zed:as.test", "protocol": "fakeproto", "fields": { "nick": "zed" } }])
    );

    // Outside every namespace nobody is asked and the answer is empty.
    let before = fake.requests().len();
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/user?userid=%40alice%3Aas.test", None).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!([])));
    assert_eq!(fake.requests().iter().skip(before).filter(|s| s.path.contains("thirdparty")).count(), 0);
    // A missing or malformed id is the client's mistake.
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/location", None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"));
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/user?userid=nobody", None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"));
    let anonymous =
        myelin_suite::http(server.client, Method::GET, "/_matrix/client/v3/thirdparty/location?alias=%23a%3Ab", None)
            .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

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
