//! What Element asks for at start (issue #20 §4), over real HTTP: OpenID
//! tokens and their federation check, TURN credentials from `[voip]`,
//! content reports, `/account/3pid`, what `/capabilities` says, and logging a
//! new device in with a token from a logged-in one (`/login/get_token`).

use base64::Engine as _;
use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc, http, https};
use serde_json::json;

const V3: &str = "/_matrix/client/v3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openid_token_names_its_user_to_a_third_party() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let fed = s.federation.expect("federation listener");

    let path = format!("{V3}/user/{}/openid/request_token", enc(&alice.user_id));
    let t = alice.post(&path, json!({})).await;
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["matrix_server_name"], "localhost");
    assert_eq!(t["expires_in"], 3600);
    let token = t["access_token"].as_str().unwrap().to_owned();

    // The third party asks without X-Matrix authentication.
    let r =
        https(fed, Method::GET, &format!("/_matrix/federation/v1/openid/userinfo?access_token={}", enc(&token)), None)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "sub": alice.user_id }));
    for bad in ["nope", "0000000000000000abc", &"x".repeat(300)] {
        let r =
            https(fed, Method::GET, &format!("/_matrix/federation/v1/openid/userinfo?access_token={bad}"), None).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"));
    }
    let r = https(fed, Method::GET, "/_matrix/federation/v1/openid/userinfo", None).await;
    assert_eq!(r.errcode(), "M_MISSING_PARAM");

    // The OpenID token is no access token, and nobody gets a token for another user.
    let as_client = myelin_suite::http_with(
        s.client,
        Method::GET,
        &format!("{V3}/account/whoami"),
        None,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(as_client.status, StatusCode::UNAUTHORIZED);
    let r = bob.request(Method::POST, &path, Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    // Element sends `{}`; an empty body is taken too, and r0 is served.
    let r = alice.request(Method::POST, &path.replace("/v3/", "/r0/"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_server_answers_from_the_configuration() {
    // Nothing configured: `{}`, as Synapse answers.
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    assert_eq!(alice.get(&format!("{V3}/voip/turnServer")).await, json!({}));
    s.stop().await;

    // URIs without any credentials: still `{}`.
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.voip.turn_uris = vec!["turn:turn.example:3478".into()];
    })
    .await;
    let alice = s.register("alice").await;
    assert_eq!(alice.get(&format!("{V3}/voip/turnServer")).await, json!({}));
    s.stop().await;

    // A shared secret: coturn REST-API credentials.
    let uris = vec!["turn:turn.example:3478?transport=udp".to_owned(), "turns:turn.example:5349".to_owned()];
    let u = uris.clone();
    let s = TestServer::start_with("localhost", move |c| {
        c.registration.enabled = true;
        c.voip.turn_uris = u;
        c.voip.turn_shared_secret = "s3cret".into();
        c.voip.turn_ttl_s = 600;
    })
    .await;
    let alice = s.register("alice").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let t = alice.get(&format!("{V3}/voip/turnServer")).await;
    assert_eq!(t["uris"], json!(uris));
    assert_eq!(t["ttl"], 600);
    let username = t["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.user_id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 600..=now + 610).contains(&expiry), "expiry {expiry} vs now {now}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"s3cret");
    let want = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref());
    assert_eq!(t["password"], want.as_str());
    let r = myelin_suite::http(s.client, Method::GET, &format!("{V3}/voip/turnServer"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    s.stop().await;

    // Fixed credentials.
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.voip.turn_uris = vec!["turn:turn.example".into()];
        c.voip.turn_username = "element".into();
        c.voip.turn_password = "pw".into();
    })
    .await;
    let alice = s.register("alice").await;
    let t = alice.get("/_matrix/client/r0/voip/turnServer").await;
    assert_eq!(
        (t["username"].clone(), t["password"].clone(), t["ttl"].clone()),
        (json!("element"), json!("pw"), json!(86400))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_kept_for_what_the_reporter_can_see() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let event = alice.send_text(&room, "spam spam spam").await;
    let report = |room: &str, event: &str| format!("{V3}/rooms/{}/report/{}", enc(room), enc(event));

    alice.post(&report(&room, &event), json!({ "reason": "spam", "score": -100 })).await;
    // Both fields are optional.
    alice.post(&report(&room, &event), json!({})).await;

    // Bob is not in the room: the event does not exist for him.
    let r = bob.request(Method::POST, &report(&room, &event), Some(json!({ "reason": "x" }))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));
    let r = alice.request(Method::POST, &report(&room, "$nope:localhost"), Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));
    let r = alice.request(Method::POST, &report(&room, &event), Some(json!({ "reason": 5 }))).await;
    assert_eq!(r.errcode(), "M_BAD_JSON");
    let r = alice.request(Method::POST, &report(&room, &event), Some(json!({ "score": "bad" }))).await;
    assert_eq!(r.errcode(), "M_BAD_JSON");
    let r = alice.request(Method::POST, &report(&room, &event), Some(json!({ "reason": "x".repeat(5000) }))).await;
    assert_eq!(r.errcode(), "M_INVALID_PARAM");

    // Room reports: a member may; a private room is unknown to anyone else.
    let room_report = format!("{V3}/rooms/{}/report", enc(&room));
    alice.post(&room_report, json!({ "reason": "bad room" })).await;
    let r = bob.request(Method::POST, &room_report, Some(json!({ "reason": "probe" }))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));
    let r =
        bob.request(Method::POST, &format!("{V3}/rooms/{}/report", enc("!unknown:localhost")), Some(json!({}))).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    // A public room can be reported from the directory.
    let public = alice.create_room(json!({ "preset": "public_chat", "visibility": "public" })).await;
    bob.post(&format!("{V3}/rooms/{}/report", enc(&public)), json!({ "reason": "seen in the directory" })).await;

    let stored = s.engine.reports.list().unwrap();
    let summary: Vec<_> =
        stored.iter().map(|r| (r.reporter.as_str(), r.event_id.is_some(), r.reason.as_deref(), r.score)).collect();
    assert_eq!(
        summary,
        [
            (alice.user_id.as_str(), true, Some("spam"), Some(-100)),
            (alice.user_id.as_str(), true, None, None),
            (alice.user_id.as_str(), false, Some("bad room"), None),
            (bob.user_id.as_str(), false, Some("seen in the directory"), None),
        ]
    );
    assert_eq!(stored[0].event_id.as_deref(), Some(event.as_str()));
    assert_eq!(stored[0].room_id, room);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threepids_are_empty_and_capabilities_say_so() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    assert_eq!(alice.get(&format!("{V3}/account/3pid")).await, json!({ "threepids": [] }));
    let caps = alice.get(&format!("{V3}/capabilities")).await["capabilities"].clone();
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["m.get_login_token"]["enabled"], true);
    assert_eq!(caps["m.change_password"]["enabled"], true);
    // Every version offered as available can be created.
    for (version, _) in caps["m.room_versions"]["available"].as_object().unwrap() {
        alice.create_room(json!({ "room_version": version })).await;
    }
    let default = caps["m.room_versions"]["default"].as_str().unwrap();
    assert!(caps["m.room_versions"]["available"].get(default).is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_token_from_a_logged_in_device_logs_a_new_device_in_once() {
    const GET_TOKEN: &str = "/_matrix/client/v1/login/get_token";
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;

    // The flows say where tokens come from, before any login.
    let flows = http(s.client, Method::GET, &format!("{V3}/login"), None).await.json()["flows"].clone();
    let token_flow = flows.as_array().unwrap().iter().find(|f| f["type"] == "m.login.token").cloned();
    assert_eq!(token_flow, Some(json!({ "type": "m.login.token", "get_login_token": true })), "{flows}");

    // The token costs the password (user-interactive auth), not just the access token.
    let r = alice.request(Method::POST, GET_TOKEN, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["flows"][0]["stages"][0], "m.login.password");
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let password = |pass: &str| {
        json!({ "auth": { "type": "m.login.password", "session": session, "password": pass,
                "identifier": { "type": "m.id.user", "user": alice.user_id } } })
    };
    let r = alice.request(Method::POST, GET_TOKEN, Some(password("wrong"))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"));
    assert!(r.json().get("login_token").is_none());
    let issued = alice.post(GET_TOKEN, password("pass-word-1")).await;
    assert_eq!(issued["expires_in_ms"], 120_000);
    let token = issued["login_token"].as_str().unwrap().to_owned();
    let r = http(s.client, Method::POST, GET_TOKEN, Some(b"{}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "no access token, no login token");

    // Two devices race to use it: exactly one gets a session, and it is alice's.
    let login = |device: &'static str| {
        let body = json!({ "type": "m.login.token", "token": token, "device_id": device }).to_string();
        let addr = s.client;
        async move { http(addr, Method::POST, &format!("{V3}/login"), Some(body.as_bytes())).await }
    };
    let (a, b) = tokio::join!(login("PHONE"), login("TABLET"));
    let (won, lost) = if a.status == StatusCode::OK { (a, b) } else { (b, a) };
    assert_eq!(won.status, StatusCode::OK, "{}", String::from_utf8_lossy(&won.body));
    assert_eq!((lost.status, lost.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    let phone = Client::from_login(s.client, &won.json());
    assert_eq!(phone.user_id, alice.user_id);
    let whoami = phone.get(&format!("{V3}/account/whoami")).await;
    assert_eq!(whoami["user_id"], alice.user_id.as_str());
    assert!(["PHONE", "TABLET"].contains(&whoami["device_id"].as_str().unwrap()));
    let devices = alice.get(&format!("{V3}/devices")).await["devices"].as_array().unwrap().len();
    assert_eq!(devices, 2, "alice's first device and the one the token logged in");

    // Used once, it is gone; bob's access token is no login token; garbage is refused.
    for bad in [token.as_str(), bob.token.as_str(), "", &"x".repeat(500)] {
        let body = json!({ "type": "m.login.token", "token": bad }).to_string();
        let r = http(s.client, Method::POST, &format!("{V3}/login"), Some(body.as_bytes())).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"), "token {bad:.20}");
    }
    let r = http(s.client, Method::POST, &format!("{V3}/login"), Some(br#"{"type":"m.login.token"}"#)).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"));
    let r = http(s.client, Method::POST, &format!("{V3}/login"), Some(br#"{"type":"m.login.token","token":7}"#)).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_BAD_JSON"));

    // A token survives a restart within its two minutes, and still only once.
    let issued = alice.post(GET_TOKEN, password("pass-word-1")).await;
    let token = issued["login_token"].as_str().unwrap().to_owned();
    let s = s.restart().await;
    let body = json!({ "type": "m.login.token", "token": token }).to_string();
    let r = http(s.client, Method::POST, &format!("{V3}/login"), Some(body.as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], alice.user_id.as_str());
    let r = http(s.client, Method::POST, &format!("{V3}/login"), Some(body.as_bytes())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_refuses_wrong_types_and_twice_at_once_gives_two_single_use_tokens() {
    const GET_TOKEN: &str = "/_matrix/client/v1/login/get_token";
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    for bad in [json!([]), json!({ "auth": 5 }), json!({ "auth": { "type": 7 } })] {
        let r = alice.request(Method::POST, GET_TOKEN, Some(bad.clone())).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_BAD_JSON"), "{bad}");
    }
    // The route has no path parameter; a garbage tail is no route at all.
    let r = alice.request(Method::POST, &format!("{GET_TOKEN}/%00..%2F"), Some(json!({}))).await;
    assert!(r.status.is_client_error(), "{}", r.status);

    // The same request twice at once: each is a separate grant, each token good once.
    let auth = json!({ "auth": { "type": "m.login.password", "password": "pass-word-1",
                                 "identifier": { "type": "m.id.user", "user": alice.user_id } } });
    let (a, b) = tokio::join!(alice.post(GET_TOKEN, auth.clone()), alice.post(GET_TOKEN, auth.clone()));
    let tokens = [a["login_token"].as_str().unwrap().to_owned(), b["login_token"].as_str().unwrap().to_owned()];
    assert_ne!(tokens[0], tokens[1]);
    for token in &tokens {
        let body = json!({ "type": "m.login.token", "token": token }).to_string();
        for expected in [StatusCode::OK, StatusCode::FORBIDDEN] {
            let r = http(s.client, Method::POST, &format!("{V3}/login"), Some(body.as_bytes())).await;
            assert_eq!(r.status, expected, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    s.stop().await;
}
