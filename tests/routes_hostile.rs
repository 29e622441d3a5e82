//! The routes added for appservices, pushers, key backup, OpenID, TURN and
//! reports, tried as a hostile client would: path parameters that are
//! garbage get a 4xx (never a 5xx, never a 200), wrong-typed bodies of the
//! appservice-only routes get 400, and the same request arriving twice at
//! once has one effect where the request is idempotent.
//! (Wrong-typed bodies of the other routes are in `tests/client_bad_input.rs`.)

use http::{Method, StatusCode};
use myelin_suite::{
    Client, TestServer,
    appservice::{FakeAppservice, RegistrationYaml, not_found},
    enc, http_with,
};
use serde_json::{Value, json};

const AS_TOKEN: &str = "hostile-as-token";

async fn server(fake: &FakeAppservice, dir: &tempfile::TempDir) -> TestServer {
    let path = dir.path().join("reg.yaml");
    let yaml = RegistrationYaml {
        id: "hostile",
        url: Some(&fake.url()),
        as_token: AS_TOKEN,
        hs_token: "hostile-hs-token",
        sender_localpart: "hostilebot",
        user_regex: "@h_.*:hostile.test",
        alias_regex: "#h_.*:hostile.test",
        exclusive: true,
        ephemeral: false,
    }
    .render();
    std::fs::write(&path, yaml).unwrap();
    TestServer::start_with("hostile.test", move |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
        c.appservice.registrations = vec![path];
    })
    .await
}

async fn as_call(s: &TestServer, method: Method, path: &str, body: &[u8]) -> myelin_suite::Reply {
    let auth = format!("Bearer {AS_TOKEN}");
    http_with(s.client, method, path, Some(body), &[("authorization", &auth)]).await
}

fn is_client_error(r: &myelin_suite::Reply) -> bool {
    r.status.is_client_error() && serde_json::from_slice::<Value>(&r.body).is_ok_and(|j| j["errcode"].is_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_path_parameters_get_a_matrix_4xx() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let s = server(&fake, &dir).await;
    let alice = s.register("alice").await;
    let v3 = "/_matrix/client/v3";
    let garbage = ["%00", "..", "%FF%FE", "a%20b", "!", "@", "%23"];
    let mut failures = Vec::new();
    for g in garbage {
        let cases: Vec<(Method, String, Option<Value>, bool)> = vec![
            (Method::GET, format!("{v3}/thirdparty/protocol/{g}"), None, false),
            (Method::GET, format!("{v3}/thirdparty/location/{g}"), None, false),
            (Method::GET, format!("{v3}/thirdparty/user/{g}"), None, false),
            (
                Method::PUT,
                format!("{v3}/directory/list/appservice/net/{g}"),
                Some(json!({ "visibility": "public" })),
                true,
            ),
            (Method::POST, format!("/_matrix/client/v1/appservice/{g}/ping"), Some(json!({})), true),
            (Method::GET, format!("{v3}/room_keys/version/{g}"), None, false),
            (
                Method::PUT,
                format!("{v3}/room_keys/version/{g}"),
                Some(json!({ "algorithm": "a", "auth_data": {} })),
                false,
            ),
            (Method::DELETE, format!("{v3}/room_keys/version/{g}"), None, false),
            (Method::GET, format!("{v3}/room_keys/keys/{g}?version=1"), None, false),
            (Method::GET, format!("{v3}/room_keys/keys/{g}/{g}?version=1"), None, false),
            (Method::POST, format!("{v3}/user/{g}/openid/request_token"), Some(json!({})), false),
            (Method::POST, format!("{v3}/rooms/{g}/report/{g}"), Some(json!({})), false),
            (Method::POST, format!("{v3}/rooms/{g}/report"), Some(json!({})), false),
        ];
        for (method, path, body, as_appservice) in cases {
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let r = if as_appservice {
                as_call(&s, method.clone(), &path, bytes.as_bytes()).await
            } else {
                alice.request(method.clone(), &path, serde_json::from_str(&bytes).ok()).await
            };
            // The thirdparty lookups of an undeclared protocol answer an empty list, which is
            // what Synapse does for location/user; everything else must be a Matrix 4xx.
            let empty_list = r.status == StatusCode::OK && r.body.as_ref() == b"[]";
            if !(is_client_error(&r) || (path.contains("/thirdparty/") && !path.contains("/protocol/") && empty_list)) {
                failures.push(format!("{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
            }
        }
    }
    assert!(failures.is_empty(), "{} bad answers:\n{}", failures.len(), failures.join("\n"));
    // And nothing reached the appservice: no path garbage names a protocol it declared.
    assert!(fake.requests().iter().all(|r| !r.path.contains("thirdparty")), "{:?}", fake.requests());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appservice_routes_refuse_wrong_typed_bodies() {
    let fake = FakeAppservice::start(not_found).await;
    let dir = tempfile::tempdir().unwrap();
    let s = server(&fake, &dir).await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let publish = format!("/_matrix/client/v3/directory/list/appservice/net/{}", enc(&room));
    let ping = "/_matrix/client/v1/appservice/hostile/ping";
    for (path, body) in [
        (publish.as_str(), json!({ "visibility": 1 })),
        (publish.as_str(), json!({})),
        (publish.as_str(), json!(["public"])),
        (ping, json!({ "transaction_id": 5 })),
        (ping, json!([1])),
    ] {
        let method = if path == ping { Method::POST } else { Method::PUT };
        let r = as_call(&s, method, path, body.to_string().as_bytes()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {body}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.errcode(), "M_BAD_JSON", "{path} {body}");
    }
    // The valid bodies work, so each case above could fail.
    let r = as_call(&s, Method::PUT, &publish, br#"{"visibility":"public"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    s.stop().await;
}

async fn twice<F, Fut>(f: F) -> (myelin_suite::Reply, myelin_suite::Reply)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = myelin_suite::Reply>,
{
    tokio::join!(f(), f())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_at_once_has_one_effect() {
    let fake = FakeAppservice::start(|seen| {
        Box::pin(async move { if seen.path == "/_matrix/app/v1/ping" { (200, json!({})) } else { (404, json!({})) } })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = server(&fake, &dir).await;
    let alice: Client = s.register("alice").await;
    let v3 = "/_matrix/client/v3";

    // The same pusher set twice at once: one pusher.
    let pusher = json!({
        "pushkey": "k1", "kind": "http", "app_id": "org.example", "app_display_name": "A",
        "device_display_name": "d", "lang": "en", "data": { "url": "https://gw.example/_matrix/push/v1/notify" },
    });
    let set = format!("{v3}/pushers/set");
    let (a, b) = twice(|| alice.request(Method::POST, &set, Some(pusher.clone()))).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(alice.get(&format!("{v3}/pushers")).await["pushers"].as_array().unwrap().len(), 1);

    // The same backup session put twice at once: one session, one count.
    let backup = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "k" } });
    let version =
        alice.post(&format!("{v3}/room_keys/version"), backup.clone()).await["version"].as_str().unwrap().to_owned();
    let key =
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": { "c": "x" } });
    let path = format!("{v3}/room_keys/keys/{}/s1?version={version}", enc("!r:hostile.test"));
    let (a, b) = twice(|| alice.request(Method::PUT, &path, Some(key.clone()))).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(alice.get(&format!("{v3}/room_keys/version/{version}")).await["count"], 1);
    // The same version update twice at once: both answered, the version unchanged otherwise.
    let update = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "k2" } });
    let vpath = format!("{v3}/room_keys/version/{version}");
    let (a, b) = twice(|| alice.request(Method::PUT, &vpath, Some(update.clone()))).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let got = alice.get(&vpath).await;
    assert_eq!((got["auth_data"]["public_key"].clone(), got["count"].clone()), (json!("k2"), json!(1)));

    // A room published twice at once by the appservice: listed once.
    let room = alice.create_room(json!({ "name": "published twice" })).await;
    let publish = format!("{v3}/directory/list/appservice/net/{}", enc(&room));
    let (a, b) = twice(|| as_call(&s, Method::PUT, &publish, br#"{"visibility":"public"}"#)).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let listed = alice.get(&format!("{v3}/publicRooms")).await;
    let n = listed["chunk"].as_array().unwrap().iter().filter(|r| r["room_id"] == room.as_str()).count();
    assert_eq!(n, 1);

    // Two pings at once: each is its own ping (the appservice sees both), neither fails.
    let (a, b) = twice(|| as_call(&s, Method::POST, "/_matrix/client/v1/appservice/hostile/ping", b"{}")).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(fake.requests().iter().filter(|r| r.path == "/_matrix/app/v1/ping").count(), 2);

    // Two OpenID tokens at once: two valid tokens (each request asks for one).
    let otp = format!("{v3}/user/{}/openid/request_token", enc(&alice.user_id));
    let (a, b) = twice(|| alice.request(Method::POST, &otp, Some(json!({})))).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_ne!(a.json()["access_token"], b.json()["access_token"]);

    // The same report twice at once: both stored (a report is an event the operator reads;
    // Synapse keeps each too), neither fails.
    let event = alice.send_text(&room, "reported").await;
    let rpath = format!("{v3}/rooms/{}/report/{}", enc(&room), enc(&event));
    let (a, b) = twice(|| alice.request(Method::POST, &rpath, Some(json!({ "reason": "spam" })))).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(s.engine.reports.list().unwrap().len(), 2);
    s.stop().await;
}
