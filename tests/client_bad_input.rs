//! Hostile input to the Client-Server API over real HTTP: every typed
//! endpoint answers a wrong-typed field with 400 `M_BAD_JSON`, bytes that
//! are not JSON with 400 `M_NOT_JSON` and a JSON array where an object
//! belongs with 400 `M_BAD_JSON`, and still answers the valid request with
//! 200 (so each case can fail both ways).

use http::{Method, StatusCode};
use myelin_suite::{Client, Reply, TestServer, enc, http, http_with};
use serde_json::{Value, json};

/// Bytes that are not JSON.
const NOT_JSON: &[u8] = b"{\"typing\": tru";

/// One endpoint: a valid body, and bodies that are JSON objects with a field of the wrong type.
struct Endpoint {
    /// Who calls it; `None` for endpoints without authentication.
    who: Option<Client>,
    method: Method,
    /// `{n}` is replaced by a fresh number on every request (transaction ids).
    path: String,
    valid: Value,
    wrong: Vec<Value>,
}

fn ep(who: &Client, method: Method, path: impl Into<String>, valid: Value, wrong: Vec<Value>) -> Endpoint {
    Endpoint { who: Some(who.clone()), method, path: path.into(), valid, wrong }
}

async fn send_raw(s: &TestServer, who: Option<&Client>, method: Method, path: &str, body: Option<&[u8]>) -> Reply {
    match who {
        Some(c) => {
            let auth = format!("Bearer {}", c.token);
            http_with(s.client, method, path, body, &[("authorization", &auth)]).await
        }
        None => http(s.client, method, path, body).await,
    }
}

fn describe(r: &Reply) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let cut: String = body.chars().take(300).collect();
    format!("{} {cut}{}", r.status, if cut.len() < body.len() { "…" } else { "" })
}

/// Runs every endpoint's cases; returns one line per mismatch.
async fn run(s: &TestServer, endpoints: Vec<Endpoint>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut n = 0u64;
    let mut path_of = |template: &str| {
        n += 1;
        template.replace("{n}", &format!("t{n}"))
    };
    for e in &endpoints {
        let label = format!("{} {}", e.method, e.path);
        let mut bad = vec![(NOT_JSON.to_vec(), "M_NOT_JSON", "not JSON".to_owned())];
        bad.push((b"[]".to_vec(), "M_BAD_JSON", "an empty array".to_owned()));
        bad.push((json!([e.valid]).to_string().into_bytes(), "M_BAD_JSON", "the valid body in an array".to_owned()));
        bad.push((b"\"text\"".to_vec(), "M_BAD_JSON", "a string".to_owned()));
        for w in &e.wrong {
            bad.push((w.to_string().into_bytes(), "M_BAD_JSON", w.to_string()));
        }
        for (body, want, what) in bad {
            let r = send_raw(s, e.who.as_ref(), e.method.clone(), &path_of(&e.path), Some(&body)).await;
            let got =
                serde_json::from_slice::<Value>(&r.body).ok().and_then(|j| j["errcode"].as_str().map(str::to_owned));
            if r.status != StatusCode::BAD_REQUEST || got.as_deref() != Some(want) {
                failures.push(format!("{label} with {what}: want 400 {want}, got {}", describe(&r)));
            }
        }
        let body = e.valid.to_string();
        let r = send_raw(s, e.who.as_ref(), e.method.clone(), &path_of(&e.path), Some(body.as_bytes())).await;
        if r.status != StatusCode::OK {
            failures.push(format!("{label} with the valid {body}: want 200, got {}", describe(&r)));
        }
    }
    failures
}

fn password_auth(user: &str) -> Value {
    json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": "pass-word-1" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_endpoints_refuse_wrong_types_and_take_valid_bodies() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let (carol, dave) = (s.register("carol").await, s.register("dave").await);
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "typed" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    let event = alice.send_text(&room, "hello typed world").await;
    let to_redact = alice.send_text(&room, "typo").await;
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" });
    let second = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(login.to_string().as_bytes())).await;
    let second_device = second.json()["device_id"].as_str().unwrap().to_owned();
    let me = enc(&alice.user_id);
    let r = enc(&room);
    let v3 = "/_matrix/client/v3";

    let mut endpoints = vec![
        // Accounts.
        Endpoint {
            who: None,
            method: Method::POST,
            path: format!("{v3}/register"),
            valid: json!({ "username": "newbie", "password": "pass-word-1", "auth": { "type": "m.login.dummy" } }),
            wrong: vec![
                json!({ "username": 5, "auth": { "type": "m.login.dummy" } }),
                json!({ "username": "x1", "password": ["p"], "auth": { "type": "m.login.dummy" } }),
                json!({ "username": "x2", "inhibit_login": "yes", "auth": { "type": "m.login.dummy" } }),
                json!({ "username": "x3", "device_id": 7, "auth": { "type": "m.login.dummy" } }),
                json!({ "username": "x4", "auth": "m.login.dummy" }),
                json!({ "username": "x5", "auth": [] }),
                json!({ "username": "x6", "auth": { "type": 1 } }),
            ],
        },
        Endpoint {
            who: None,
            method: Method::POST,
            path: format!("{v3}/login"),
            valid: login.clone(),
            wrong: vec![
                json!({ "type": 1, "password": "pass-word-1" }),
                json!({ "type": "m.login.password", "identifier": "alice", "password": "pass-word-1" }),
                json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": 5 }, "password": "x" }),
                json!({ "type": "m.login.password", "user": "alice", "password": 12345 }),
                json!({ "type": "m.login.password", "user": "alice", "password": "x", "device_id": {} }),
            ],
        },
        ep(
            &carol,
            Method::POST,
            format!("{v3}/account/password"),
            json!({ "new_password": "pass-word-2", "logout_devices": false, "auth": password_auth("carol") }),
            vec![
                json!({ "new_password": 5 }),
                json!({ "new_password": "x", "logout_devices": "no" }),
                json!({ "new_password": "x", "auth": [] }),
            ],
        ),
        ep(
            &dave,
            Method::POST,
            format!("{v3}/account/deactivate"),
            json!({ "auth": password_auth("dave") }),
            vec![json!({ "auth": "pass-word-1" }), json!({ "erase": "yes" }), json!({ "id_server": 5 })],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/devices/{}", enc(&alice.device_id)),
            json!({ "display_name": "laptop" }),
            vec![json!({ "display_name": 5 }), json!({ "display_name": { "name": "laptop" } })],
        ),
        ep(
            &alice,
            Method::DELETE,
            format!("{v3}/devices/{}", enc(&second_device)),
            json!({ "auth": password_auth("alice") }),
            vec![json!({ "auth": { "type": 5 } }), json!({ "auth": { "type": "m.login.password", "password": 1 } })],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/delete_devices"),
            json!({ "devices": [], "auth": password_auth("alice") }),
            vec![json!({ "devices": "DEV" }), json!({ "devices": [5] }), json!({ "auth": password_auth("alice") })],
        ),
        // Aliases and the directory.
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/directory/room/{}", enc("#typed:localhost")),
            json!({ "room_id": room }),
            vec![json!({ "room_id": 5 }), json!({ "room_id": [room] }), json!({})],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/directory/list/room/{r}"),
            json!({ "visibility": "public" }),
            vec![json!({ "visibility": true }), json!({ "visibility": ["public"] })],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/publicRooms"),
            json!({ "limit": 5, "since": "p0", "filter": { "generic_search_term": "typed" }, "include_all_networks": false }),
            vec![
                json!({ "limit": "10" }),
                json!({ "limit": 2.5 }),
                json!({ "since": 5 }),
                json!({ "filter": "typed" }),
                json!({ "filter": { "generic_search_term": 5 } }),
                json!({ "filter": { "room_types": "m.space" } }),
                json!({ "include_all_networks": "yes" }),
                json!({ "third_party_instance_id": 1 }),
            ],
        ),
        // Typing, receipts, read markers, presence.
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/rooms/{r}/typing/{me}"),
            json!({ "typing": true, "timeout": 1000 }),
            vec![
                json!({ "typing": "yes" }),
                json!({ "typing": 1 }),
                json!({ "typing": true, "timeout": "30s" }),
                json!({ "typing": true, "timeout": -5 }),
                json!({ "timeout": 1000 }),
            ],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/rooms/{r}/receipt/m.read/{}", enc(&event)),
            json!({ "thread_id": "main" }),
            vec![json!({ "thread_id": 5 }), json!({ "thread_id": ["main"] })],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/rooms/{r}/read_markers"),
            json!({ "m.fully_read": event, "m.read": event }),
            vec![
                json!({ "m.fully_read": 5 }),
                json!({ "m.read": [event] }),
                json!({ "m.fully_read": event, "m.read.private": true }),
            ],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/presence/{me}/status"),
            json!({ "presence": "online", "status_msg": "typing things" }),
            vec![json!({ "presence": 1 }), json!({ "presence": "online", "status_msg": 5 }), json!({})],
        ),
        // Push rules.
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/pushrules/global/content/typed"),
            json!({ "pattern": "deploy", "actions": ["notify"] }),
            vec![
                json!({ "pattern": 5, "actions": ["notify"] }),
                json!({ "pattern": "deploy", "actions": "notify" }),
                json!({ "pattern": "deploy", "actions": { "notify": true } }),
                json!({ "pattern": "deploy" }),
            ],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/pushrules/global/override/typed.rule"),
            json!({ "actions": ["notify"], "conditions": [{ "kind": "event_match", "key": "type", "pattern": "m.room.message" }] }),
            vec![
                json!({ "actions": ["notify"], "conditions": {} }),
                json!({ "actions": ["notify"], "conditions": "event_match" }),
                json!({ "actions": [5] }),
            ],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/pushrules/global/override/.m.rule.master/enabled"),
            json!({ "enabled": false }),
            vec![json!({ "enabled": "false" }), json!({ "enabled": 0 }), json!({})],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/pushrules/global/override/.m.rule.master/actions"),
            json!({ "actions": [] }),
            vec![json!({ "actions": {} }), json!({ "actions": "notify" }), json!({})],
        ),
        // Redaction and search.
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/rooms/{r}/redact/{}/{{n}}", enc(&to_redact)),
            json!({ "reason": "typo" }),
            vec![json!({ "reason": 5 }), json!({ "reason": { "text": "typo" } })],
        ),
        ep(
            &bob,
            Method::POST,
            format!("{v3}/search"),
            json!({ "search_categories": { "room_events": { "search_term": "typed", "filter": { "limit": 5, "rooms": [room] }, "order_by": "recent" } } }),
            vec![
                json!({}),
                json!({ "search_categories": [] }),
                json!({ "search_categories": { "room_events": [] } }),
                json!({ "search_categories": { "room_events": { "search_term": 5 } } }),
                json!({ "search_categories": { "room_events": { "search_term": "x", "filter": [] } } }),
                json!({ "search_categories": { "room_events": { "search_term": "x", "filter": { "limit": "2" } } } }),
                json!({ "search_categories": { "room_events": { "search_term": "x", "filter": { "rooms": room } } } }),
                json!({ "search_categories": { "room_events": { "search_term": "x", "filter": { "senders": [1] } } } }),
                json!({ "search_categories": { "room_events": { "search_term": "x", "keys": "content.body" } } }),
                json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": 1 } } }),
            ],
        ),
        // Filters, account data, to-device.
        ep(
            &alice,
            Method::POST,
            format!("{v3}/user/{me}/filter"),
            json!({ "room": { "timeline": { "limit": 2, "types": ["m.room.message"] }, "state": { "lazy_load_members": true } }, "event_format": "client", "presence": { "not_types": ["*"] } }),
            vec![
                json!({ "room": "x" }),
                json!({ "room": [] }),
                json!({ "room": { "timeline": { "limit": "2" } } }),
                json!({ "room": { "timeline": { "limit": 2.5 } } }),
                json!({ "room": { "timeline": { "limit": -1 } } }),
                json!({ "room": { "timeline": { "types": "m.room.message" } } }),
                json!({ "room": { "timeline": { "not_types": [5] } } }),
                json!({ "room": { "state": { "lazy_load_members": "true" } } }),
                json!({ "room": { "include_leave": 1 } }),
                json!({ "room": { "rooms": "!a:localhost" } }),
                json!({ "room": { "ephemeral": [] } }),
                json!({ "presence": { "limit": "3" } }),
                json!({ "account_data": "none" }),
                json!({ "event_format": "xml" }),
                json!({ "event_format": 1 }),
                json!({ "event_fields": "content.body" }),
            ],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/user/{me}/account_data/org.example.typed"),
            json!({ "anything": [1, { "goes": null }] }),
            vec![],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/user/{me}/rooms/{r}/account_data/org.example.typed"),
            json!({ "tags": {} }),
            vec![],
        ),
        ep(
            &alice,
            Method::PUT,
            format!("{v3}/sendToDevice/m.test/{{n}}"),
            json!({ "messages": { "@bob:localhost": { "*": { "hello": "bob" } } } }),
            vec![
                json!({}),
                json!({ "messages": [] }),
                json!({ "messages": "hello" }),
                json!({ "messages": { "@bob:localhost": ["DEV"] } }),
                json!({ "messages": { "@bob:localhost": { bob.device_id.as_str(): "hello" } } }),
                json!({ "messages": { "@bob:localhost": { bob.device_id.as_str(): [1] } } }),
            ],
        ),
    ];
    // Key backup (erin creates versions; carol's one version takes keys), OpenID, reports.
    let erin = s.register("erin").await;
    let backup = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "k" } });
    let kv =
        carol.post(&format!("{v3}/room_keys/version"), backup.clone()).await["version"].as_str().unwrap().to_owned();
    let key =
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": { "c": "x" } });
    let key_wrong = vec![
        json!({ "first_message_index": "0", "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": -1, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": 1, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": [] }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false }),
    ];
    let version_wrong = vec![
        json!({ "algorithm": 1, "auth_data": {} }),
        json!({ "algorithm": "a", "auth_data": "x" }),
        json!({ "auth_data": {} }),
    ];
    endpoints.extend([
        ep(&erin, Method::POST, format!("{v3}/room_keys/version"), backup.clone(), version_wrong.clone()),
        ep(&carol, Method::PUT, format!("{v3}/room_keys/version/{kv}"), backup, version_wrong),
        ep(&carol, Method::PUT, format!("{v3}/room_keys/keys/{r}/s1?version={kv}"), key.clone(), key_wrong),
        ep(
            &carol,
            Method::PUT,
            format!("{v3}/room_keys/keys/{r}?version={kv}"),
            json!({ "sessions": { "s2": key.clone() } }),
            vec![json!({ "sessions": [] }), json!({ "sessions": { "s2": [] } }), json!({})],
        ),
        ep(
            &carol,
            Method::PUT,
            format!("{v3}/room_keys/keys?version={kv}"),
            json!({ "rooms": { room.as_str(): { "sessions": { "s3": key } } } }),
            vec![json!({ "rooms": { room.as_str(): [] } }), json!({ "rooms": 5 }), json!({})],
        ),
        ep(&alice, Method::POST, format!("{v3}/user/{me}/openid/request_token"), json!({}), vec![]),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/pushers/set"),
            json!({
                "pushkey": "k1", "kind": "http", "app_id": "org.example", "app_display_name": "A",
                "device_display_name": "d", "lang": "en", "data": { "url": "https://gw.example/_matrix/push/v1/notify" },
            }),
            vec![
                json!({ "pushkey": 5, "kind": "http", "app_id": "a" }),
                json!({ "pushkey": "k", "kind": 1, "app_id": "a" }),
                json!({ "pushkey": "k", "kind": "http", "app_id": "a", "data": "x" }),
                json!({ "pushkey": "k", "kind": null, "app_id": "a", "append": "yes" }),
            ],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/rooms/{r}/report/{}", enc(&event)),
            json!({ "reason": "typed", "score": -5 }),
            vec![json!({ "reason": 5 }), json!({ "score": "low" }), json!({ "score": 1.5 })],
        ),
        ep(
            &bob,
            Method::POST,
            format!("{v3}/rooms/{r}/report"),
            json!({ "reason": "typed" }),
            vec![json!({ "reason": [] })],
        ),
    ]);
    // A room rule: its id is the room, and `actions` may hold tweaks.
    endpoints.push(ep(
        &bob,
        Method::PUT,
        format!("{v3}/pushrules/global/room/{r}"),
        json!({ "actions": [] }),
        vec![json!({ "actions": [{ "set_tweak": 5 }] }), json!({ "actions": null })],
    ));
    let failures = run(&s, endpoints).await;
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_bodies_may_be_empty() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    let v3 = "/_matrix/client/v3";
    let mut failures = Vec::new();
    for body in [None, Some(&b""[..]), Some(&b" \n"[..]), Some(&b"{}"[..])] {
        // Each round redacts and reads a fresh event.
        let event = alice.send_text(&room, "read me").await;
        let cases = [
            (Method::POST, format!("{v3}/rooms/{r}/receipt/m.read/{}", enc(&event)), StatusCode::OK),
            (Method::PUT, format!("{v3}/rooms/{r}/redact/{}/{}", enc(&event), enc(&event)), StatusCode::OK),
            (Method::POST, format!("{v3}/publicRooms"), StatusCode::OK),
            // User-interactive auth: an empty body is the first round, answered with the flows.
            (Method::POST, format!("{v3}/account/deactivate"), StatusCode::UNAUTHORIZED),
            (Method::DELETE, format!("{v3}/devices/{}", enc(&alice.device_id)), StatusCode::UNAUTHORIZED),
        ];
        for (method, path, want) in cases {
            let r = send_raw(&s, Some(&alice), method.clone(), &path, body).await;
            if r.status != want {
                failures.push(format!("{method} {path} with {body:?}: want {want}, got {}", describe(&r)));
            }
        }
    }
    // A body that is required stays required.
    let path = format!("{v3}/rooms/{r}/typing/{}", enc(&alice.user_id));
    let r = send_raw(&s, Some(&alice), Method::PUT, &path, None).await;
    if (r.status, r.errcode().as_str()) != (StatusCode::BAD_REQUEST, "M_NOT_JSON") {
        failures.push(format!("PUT typing without a body: want 400 M_NOT_JSON, got {}", describe(&r)));
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_filters_are_checked_like_stored_ones() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for n in 0..3 {
        alice.send_text(&room, &format!("m{n}")).await;
    }
    let cases: [(&str, StatusCode, &str); 7] = [
        (r#"{"room":"x"}"#, StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (r#"{"room":{"timeline":{"limit":"2"}}}"#, StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (r#"{"room":{"timeline":{"limit":1.5}}}"#, StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (r#"{"room":{"include_leave":"yes"}}"#, StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (r#"[{"room":{}}]"#, StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (r#"{"room":"#, StatusCode::BAD_REQUEST, "M_NOT_JSON"),
        (r#"{"room":{"timeline":{"limit":1}},"unknown":{"fields":"are ignored"}}"#, StatusCode::OK, ""),
    ];
    let mut failures = Vec::new();
    for (filter, status, errcode) in cases {
        let path = format!("/_matrix/client/v3/sync?filter={}", enc(filter));
        let r = alice.request(Method::GET, &path, None).await;
        let got = if r.status == StatusCode::OK { String::new() } else { r.errcode() };
        if (r.status, got.as_str()) != (status, errcode) {
            failures.push(format!("filter {filter}: want {status} {errcode}, got {}", describe(&r)));
        } else if r.status == StatusCode::OK {
            let events = r.json()["rooms"]["join"][&room]["timeline"]["events"].as_array().map(Vec::len);
            if events != Some(1) {
                failures.push(format!("filter {filter}: want a timeline of 1 event, got {events:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_bodies_and_the_messages_filter_are_typed() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    let v3 = "/_matrix/client/v3";
    let endpoints = vec![
        ep(&bob, Method::POST, format!("{v3}/rooms/{r}/join"), json!({ "reason": "hi" }), vec![json!({ "reason": 5 })]),
        ep(&bob, Method::POST, format!("{v3}/join/{r}"), json!({}), vec![json!({ "reason": ["x"] })]),
        ep(&alice, Method::POST, format!("{v3}/createRoom"), json!({ "name": "n" }), vec![json!({ "name": 1 })]),
    ];
    let failures = run(&s, endpoints).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The valid joins went through: bob is a member.
    let state = alice.get(&format!("{v3}/rooms/{r}/state/m.room.member/{}", enc(&bob.user_id))).await;
    assert_eq!(state["membership"], "join");
    // /messages?filter= is read like a stored filter: wrong types are 400, a valid one filters.
    alice.send_text(&room, "kept").await;
    for (filter, status) in [
        (r#"{"types":"m.room.message"}"#, StatusCode::BAD_REQUEST),
        (r#"{"types":[1]}"#, StatusCode::BAD_REQUEST),
        (r#"["m.room.message"]"#, StatusCode::BAD_REQUEST),
        (r#"{"types":["m.room.message"]}"#, StatusCode::OK),
    ] {
        let path = format!("{v3}/rooms/{r}/messages?dir=b&filter={}", enc(filter));
        let reply = alice.request(Method::GET, &path, None).await;
        assert_eq!(reply.status, status, "filter {filter}: {}", String::from_utf8_lossy(&reply.body));
        if status == StatusCode::OK {
            let chunk = reply.json()["chunk"].as_array().cloned().unwrap_or_default();
            assert!(!chunk.is_empty() && chunk.iter().all(|e| e["type"] == "m.room.message"), "{chunk:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_bodies_are_typed_and_unsigned_must_be_an_object() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let v3 = "/_matrix/client/v3";
    let (me, device) = (alice.user_id.clone(), alice.device_id.clone());
    let keys = |unsigned: Value| json!({ "device_keys": { "user_id": me, "device_id": device, "algorithms": [], "keys": {}, "unsigned": unsigned } });
    let endpoints = vec![
        ep(
            &alice,
            Method::POST,
            format!("{v3}/keys/upload"),
            keys(json!({})),
            vec![keys(json!(1)), keys(json!("x")), json!({ "one_time_keys": [1] })],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/keys/query"),
            json!({ "device_keys": { &me: [] } }),
            vec![
                json!({ "device_keys": { &me: "DEV" } }),
                json!({ "device_keys": [] }),
                json!({ "device_keys": {}, "timeout": "soon" }),
            ],
        ),
        ep(
            &alice,
            Method::POST,
            format!("{v3}/keys/claim"),
            json!({ "one_time_keys": {} }),
            vec![json!({ "one_time_keys": { &me: { "DEV": 1 } } })],
        ),
    ];
    let failures = run(&s, endpoints).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The keys that were taken are served, display name and all, to a query.
    let answer = alice.post(&format!("{v3}/keys/query"), json!({ "device_keys": { &me: [] } })).await;
    assert!(answer["device_keys"][&me][&alice.device_id].is_object(), "{answer}");
}
