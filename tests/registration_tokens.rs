//! Registration tokens end to end over real HTTP: an admin creates them through
//! the Synapse admin API (§"Registration Tokens", with the requests its
//! documentation shows), a new user registers with one in the
//! `m.login.registration_token` stage (Client-Server API §"Token-authenticated
//! registration"), uses run out, and racing registrations get a last use once.

use http::{Method, StatusCode};
use myelin_suite::{Client, Reply, TestServer, http};
use serde_json::{Value, json};

const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";

/// A closed server (no open registration, no configured token) and its admin.
async fn closed_server() -> (TestServer, Client) {
    let s = TestServer::start("localhost").await;
    let req = json!({ "op": "user_create", "name": "admin", "password": "admin-pass-1", "admin": true });
    assert_eq!(myelin_api::admin::execute_offline(&s.engine, &req).await["ok"], true);
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "admin" }, "password": "admin-pass-1" });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK);
    let admin = Client::from_login(s.client, &r.json());
    (s, admin)
}

async fn register(s: &TestServer, name: &str, token: Option<&str>) -> Reply {
    let mut body = json!({ "username": name, "password": "a-password-1" });
    if let Some(t) = token {
        body["auth"] = json!({ "type": "m.login.registration_token", "token": t });
    }
    http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await
}

async fn validity(s: &TestServer, token: &str) -> Reply {
    let path = format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={token}");
    http(s.client, Method::GET, &path, None).await
}

async fn answer(c: &Client, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let r = c.request(method, path, body).await;
    let v = if r.body.is_empty() { Value::Null } else { r.json() };
    (r.status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_an_admin_creates_lets_one_user_register_and_is_then_used_up() {
    let (s, admin) = closed_server().await;
    assert_eq!(register(&s, "early", None).await.status, StatusCode::FORBIDDEN, "closed without tokens");
    assert_eq!(validity(&s, "anything").await.status, StatusCode::FORBIDDEN, "no tokens: not enabled");

    let created = admin.post(&format!("{TOKENS}/new"), json!({ "token": "once", "uses_allowed": 1 })).await;
    assert_eq!(
        created,
        json!({ "token": "once", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null })
    );
    let asked = register(&s, "newbie", None).await;
    assert_eq!(asked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(asked.json()["flows"], json!([{ "stages": ["m.login.registration_token"] }]), "{}", asked.json());
    assert_eq!(validity(&s, "once").await.json(), json!({ "valid": true }));
    assert_eq!(validity(&s, "nope").await.json(), json!({ "valid": false }));

    let wrong = register(&s, "newbie", Some("nope")).await;
    assert_eq!((wrong.status, wrong.errcode()), (StatusCode::UNAUTHORIZED, "M_FORBIDDEN".into()));
    let ok = register(&s, "newbie", Some("once")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", String::from_utf8_lossy(&ok.body));
    let newbie = Client::from_login(s.client, &ok.json());
    assert_eq!(newbie.get("/_matrix/client/v3/account/whoami").await["user_id"], "@newbie:localhost");

    let after = admin.get(&format!("{TOKENS}/once")).await;
    assert_eq!((after["pending"].as_u64(), after["completed"].as_u64()), (Some(0), Some(1)), "{after}");
    assert_eq!(validity(&s, "once").await.json(), json!({ "valid": false }));
    let again = register(&s, "second", Some("once")).await;
    assert_eq!((again.status, again.errcode()), (StatusCode::UNAUTHORIZED, "M_FORBIDDEN".into()), "used up");
    // A failed registration gives its use back: the name is taken.
    admin.put(&format!("{TOKENS}/once"), json!({ "uses_allowed": 2 })).await;
    let taken = register(&s, "newbie", Some("once")).await;
    assert_eq!(taken.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&taken.body));
    let kept = admin.get(&format!("{TOKENS}/once")).await;
    assert_eq!((kept["pending"].as_u64(), kept["completed"].as_u64()), (Some(0), Some(1)), "{kept}");
    assert_eq!(register(&s, "second", Some("once")).await.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_get_a_tokens_last_use_once() {
    let (s, admin) = closed_server().await;
    admin.post(&format!("{TOKENS}/new"), json!({ "token": "last", "uses_allowed": 1 })).await;
    let names: Vec<String> = (0..6).map(|i| format!("racer{i}")).collect();
    let tries = names.iter().map(|n| register(&s, n, Some("last")));
    let replies = futures_util::future::join_all(tries).await;
    let statuses: Vec<(StatusCode, String)> =
        replies.iter().map(|r| (r.status, if r.status.is_success() { String::new() } else { r.errcode() })).collect();
    assert_eq!(statuses.iter().filter(|s| s.0 == StatusCode::OK).count(), 1, "{statuses:?}");
    // The others were refused for the token, not by a rate limit.
    let refused = (StatusCode::UNAUTHORIZED, "M_FORBIDDEN".to_owned());
    assert_eq!(statuses.iter().filter(|s| **s == refused).count(), names.len() - 1, "{statuses:?}");
    assert_eq!(admin.get(&format!("{TOKENS}/last")).await["completed"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_creates_lists_updates_and_deletes_tokens_as_synapse_documents() {
    let (s, admin) = closed_server().await;
    // The documented minimal request: everything generated or unlimited.
    let generated = admin.post(&format!("{TOKENS}/new"), json!({})).await;
    let token = generated["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 16, "{generated}");
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(generated["uses_allowed"].is_null() && generated["expiry_time"].is_null());
    let short = admin.post(&format!("{TOKENS}/new"), json!({ "length": 4 })).await;
    assert_eq!(short["token"].as_str().unwrap().len(), 4);
    let future = 4_102_444_800_000u64; // 2100-01-01
    let dated = admin.post(&format!("{TOKENS}/new"), json!({ "token": "a.b~c-d_E", "expiry_time": future })).await;
    assert_eq!(dated["expiry_time"], future);

    let bad = [
        json!({ "token": "has space" }),
        json!({ "token": "x".repeat(65) }),
        json!({ "token": 5 }),
        json!({ "uses_allowed": -1 }),
        json!({ "uses_allowed": "1" }),
        json!({ "expiry_time": 1 }),
        json!({ "expiry_time": "soon" }),
        json!({ "length": 0 }),
        json!({ "length": 65 }),
        json!({ "token": "a.b~c-d_E" }),
    ];
    for body in bad {
        let (status, v) = answer(&admin, Method::POST, &format!("{TOKENS}/new"), Some(body.clone())).await;
        assert_eq!((status, v["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")), "{body}: {v}");
    }
    let (status, v) = answer(&admin, Method::POST, &format!("{TOKENS}/new"), Some(json!([1]))).await;
    assert_eq!((status, v["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")));

    let all = admin.get(TOKENS).await;
    assert_eq!(all["registration_tokens"].as_array().unwrap().len(), 3, "{all}");
    let updated = admin.put(&format!("{TOKENS}/{token}"), json!({ "uses_allowed": 0 })).await;
    assert_eq!(updated["uses_allowed"], 0);
    let invalid = admin.get(&format!("{TOKENS}?valid=false")).await;
    let names: Vec<&str> =
        invalid["registration_tokens"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(names, [token.as_str()], "uses_allowed 0 is not valid");
    assert_eq!(admin.get(&format!("{TOKENS}?valid=true")).await["registration_tokens"].as_array().unwrap().len(), 2);
    let unlimited = admin.put(&format!("{TOKENS}/{token}"), json!({ "uses_allowed": null, "expiry_time": null })).await;
    assert!(unlimited["uses_allowed"].is_null());
    let (status, _) =
        answer(&admin, Method::PUT, &format!("{TOKENS}/{token}"), Some(json!({ "expiry_time": 5 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = answer(&admin, Method::GET, &format!("{TOKENS}?valid=maybe"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    for (method, body) in [(Method::GET, None), (Method::PUT, Some(json!({}))), (Method::DELETE, None)] {
        let (status, v) = answer(&admin, method.clone(), &format!("{TOKENS}/unknown"), body).await;
        assert_eq!((status, v["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")), "{method}");
    }
    assert_eq!(answer(&admin, Method::DELETE, &format!("{TOKENS}/{token}"), None).await, (StatusCode::OK, json!({})));
    assert_eq!(answer(&admin, Method::GET, &format!("{TOKENS}/{token}"), None).await.0, StatusCode::NOT_FOUND);

    let user_reply = register(&s, "someone", Some("a.b~c-d_E")).await;
    assert_eq!(user_reply.status, StatusCode::OK);
    let user = Client::from_login(s.client, &user_reply.json());
    let (status, v) = answer(&user, Method::GET, TOKENS, None).await;
    assert_eq!((status, v["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_token_still_works_beside_admin_tokens() {
    let s = TestServer::start_with("localhost", |c| c.registration.token = "from-config".into()).await;
    assert_eq!(validity(&s, "from-config").await.json(), json!({ "valid": true }));
    assert_eq!(register(&s, "cfg", Some("from-config")).await.status, StatusCode::OK);
    assert_eq!(
        register(&s, "cfg2", Some("from-config")).await.status,
        StatusCode::OK,
        "the configured token has no use limit"
    );
    s.stop().await;
}
