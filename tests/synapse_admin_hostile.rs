//! The admin and registration-token routes added for issue #23 under hostile
//! input: wrong-typed bodies are a 400 (never a 200 or a 5xx), garbage path
//! parameters a 4xx, and the same request arriving twice at once has one effect.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc, http};
use serde_json::{Value, json};

const ADMIN: &str = "/_synapse/admin";

async fn server() -> (TestServer, Client) {
    let s = TestServer::start_with("localhost", |c| c.registration.enabled = true).await;
    let admin = s.register("admin").await;
    let user = ruma::UserId::parse(admin.user_id.as_str()).unwrap();
    s.engine.users.set_admin(&user, true).await.unwrap();
    (s, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typed_bodies_are_400_on_every_new_admin_route() {
    let (s, admin) = server().await;
    let room = admin.create_room(json!({ "preset": "private_chat" })).await;
    admin.post(&format!("{ADMIN}/v1/registration_tokens/new"), json!({ "token": "t1" })).await;
    let routes = [
        (Method::POST, format!("{ADMIN}/v1/join/{}", enc(&room))),
        (Method::POST, format!("{ADMIN}/v1/rooms/{}/make_room_admin", enc(&room))),
        (Method::POST, format!("{ADMIN}/v1/users/{}/login", enc("@x:localhost"))),
        (Method::POST, format!("{ADMIN}/v1/registration_tokens/new")),
        (Method::PUT, format!("{ADMIN}/v1/registration_tokens/t1")),
        (Method::POST, format!("{ADMIN}/v1/background_updates/enabled")),
        (Method::POST, format!("{ADMIN}/v1/background_updates/start_job")),
        (Method::POST, format!("{ADMIN}/v1/purge_history/{}", enc(&room))),
    ];
    let bodies = [
        json!([1, 2]),
        json!("a string"),
        json!(7),
        json!({ "user_id": ["@a:localhost"], "enabled": "yes", "job_name": 5, "token": {}, "uses_allowed": "many", "valid_until_ms": "soon",
                "delete_local_events": "yes", "purge_up_to_ts": "soon" }),
    ];
    let mut failures = Vec::new();
    for (method, path) in &routes {
        for body in &bodies {
            let r = admin.request(method.clone(), path, Some(body.clone())).await;
            if r.status != StatusCode::BAD_REQUEST {
                failures.push(format!("{method} {path} {body}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
            }
        }
        let raw = myelin_suite::http_with(
            s.client,
            method.clone(),
            path,
            Some(b"{not json"),
            &[("authorization", &format!("Bearer {}", admin.token))],
        )
        .await;
        if raw.status != StatusCode::BAD_REQUEST || raw.errcode() != "M_NOT_JSON" {
            failures.push(format!("{method} {path} not JSON: {}", raw.status));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_path_parameters_are_4xx_never_5xx() {
    let (s, admin) = server().await;
    let garbage = ["..", "%00", "%FF%FE", "!", "%23", "@", "a%2Fb", &"x".repeat(5000), "%E2%80%AE"];
    let mut failures = Vec::new();
    for g in garbage {
        let routes = [
            (Method::GET, format!("{ADMIN}/v1/rooms/{g}/state"), None),
            (Method::POST, format!("{ADMIN}/v1/join/{g}"), Some(json!({ "user_id": admin.user_id }))),
            (Method::POST, format!("{ADMIN}/v1/rooms/{g}/make_room_admin"), Some(json!({}))),
            (Method::POST, format!("{ADMIN}/v1/users/{g}/login"), Some(json!({}))),
            (Method::GET, format!("{ADMIN}/v1/registration_tokens/{g}"), None),
            (Method::PUT, format!("{ADMIN}/v1/registration_tokens/{g}"), Some(json!({}))),
            (Method::DELETE, format!("{ADMIN}/v1/registration_tokens/{g}"), None),
            (Method::GET, format!("{ADMIN}/v1/event_reports/{g}"), None),
            (Method::DELETE, format!("{ADMIN}/v1/event_reports/{g}"), None),
            (Method::GET, format!("{ADMIN}/v1/federation/destinations/{g}"), None),
            (Method::GET, format!("{ADMIN}/v1/federation/destinations/{g}/rooms"), None),
            (Method::POST, format!("{ADMIN}/v1/federation/destinations/{g}/reset_connection"), Some(json!({}))),
            (Method::GET, format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={g}"), None),
            (Method::POST, format!("{ADMIN}/v1/purge_history/{g}"), Some(json!({ "purge_up_to_ts": 1 }))),
            (Method::POST, format!("{ADMIN}/v1/purge_history/{}/{g}", enc("!r:localhost")), Some(json!({}))),
            (Method::GET, format!("{ADMIN}/v1/purge_history_status/{g}"), None),
        ];
        for (method, path, body) in routes {
            let r = admin.request(method.clone(), &path, body).await;
            if !r.status.is_client_error() {
                let shown: String = path.chars().take(120).collect();
                failures.push(format!("{method} {shown}: {}", r.status));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_admin_request_twice_at_once_has_one_effect() {
    let (s, admin) = server().await;
    // Creating one token twice at once: one is made, the other refused.
    let new = format!("{ADMIN}/v1/registration_tokens/new");
    let body = json!({ "token": "twice", "uses_allowed": 3 });
    let (a, b) = tokio::join!(
        admin.request(Method::POST, &new, Some(body.clone())),
        admin.request(Method::POST, &new, Some(body.clone()))
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_REQUEST]);
    let listed = admin.get(&format!("{ADMIN}/v1/registration_tokens")).await;
    assert_eq!(listed["registration_tokens"].as_array().unwrap().len(), 1, "{listed}");

    // Deleting one report twice at once: one deletion, one 404.
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let event = alice.send_text(&room, "reported").await;
    alice.post(&format!("/_matrix/client/v3/rooms/{}/report/{}", enc(&room), enc(&event)), json!({})).await;
    let id = admin.get(&format!("{ADMIN}/v1/event_reports")).await["event_reports"][0]["id"].as_u64().unwrap();
    let path = format!("{ADMIN}/v1/event_reports/{id}");
    let (a, b) = tokio::join!(admin.request(Method::DELETE, &path, None), admin.request(Method::DELETE, &path, None));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::NOT_FOUND]);

    // make_room_admin twice at once: the user gets the level once, in one power-levels event.
    let bob = s.register("bob").await;
    let make = format!("{ADMIN}/v1/rooms/{}/make_room_admin", enc(&room));
    let body = json!({ "user_id": bob.user_id });
    let (a, b) = tokio::join!(
        admin.request(Method::POST, &make, Some(body.clone())),
        admin.request(Method::POST, &make, Some(body.clone()))
    );
    assert!(a.status.is_success() && b.status.is_success(), "{} {}", a.status, b.status);
    let messages = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room))).await;
    let changes: Vec<&Value> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.power_levels" && e["content"]["users"].get(&bob.user_id).is_some())
        .collect();
    assert_eq!(changes.len(), 1, "one power-levels change for bob: {changes:#?}");

    // The validity endpoint only reads: asked twice at once, both answer the same.
    let v = "/_matrix/client/v1/register/m.login.registration_token/validity?token=twice";
    let (a, b) = tokio::join!(http(s.client, Method::GET, v, None), http(s.client, Method::GET, v, None));
    assert_eq!((a.status, a.json()), (b.status, b.json()));
    s.stop().await;
}
