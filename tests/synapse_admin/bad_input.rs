//! Careless and hostile input: garbage path parameters and wrong-typed bodies
//! on every admin route, concurrent duplicate requests acting once, and typed
//! requests on the admin socket.

use http::{Method, StatusCode};
use myelin_suite::{Reply, TestServer, enc};
use serde_json::{Value, json};

use crate::{ADMIN, SECRET, create_user, login, mac, nonce, post_register, user_path};

/// Every admin route tried as a careless or hostile tool would: garbage path parameters
/// get a Matrix 4xx, wrong-typed bodies a 400, and the same request twice at once has
/// one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_garbage_and_act_once_under_concurrent_duplicates() {
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.registration.shared_secret = SECRET.into();
        c.rate_limit.per_second = 0.0;
    })
    .await;
    let admin = create_user(&s, "root", "root-password", true).await;
    let is_matrix_4xx = |r: &Reply| {
        r.status.is_client_error() && serde_json::from_slice::<Value>(&r.body).is_ok_and(|j| j["errcode"].is_string())
    };

    // Garbage path parameters.
    let mut failures = Vec::new();
    for g in ["%00", "..", "%FF%FE", "a%20b", "!", "@", "%23", "@x", "!x"] {
        for (method, path, body) in [
            (Method::GET, format!("{ADMIN}/v2/users/{g}"), None),
            (Method::PUT, format!("{ADMIN}/v2/users/{g}"), Some(json!({ "password": "p" }))),
            (Method::POST, format!("{ADMIN}/v1/deactivate/{g}"), Some(json!({}))),
            (Method::POST, format!("{ADMIN}/v1/reset_password/{g}"), Some(json!({ "new_password": "p" }))),
            (Method::GET, format!("{ADMIN}/v1/users/{g}/joined_rooms"), None),
            (Method::GET, format!("{ADMIN}/v1/whois/{g}"), None),
            (Method::GET, format!("{ADMIN}/v1/users/{g}/admin"), None),
            (Method::PUT, format!("{ADMIN}/v1/users/{g}/admin"), Some(json!({ "admin": true }))),
            (Method::GET, format!("{ADMIN}/v1/rooms/{g}"), None),
            (Method::GET, format!("{ADMIN}/v1/rooms/{g}/members"), None),
            (Method::DELETE, format!("{ADMIN}/v2/rooms/{g}"), Some(json!({}))),
            (Method::GET, format!("{ADMIN}/v2/rooms/{g}/delete_status"), None),
            (Method::GET, format!("{ADMIN}/v2/rooms/delete_status/{g}"), None),
        ] {
            let r = admin.request(method.clone(), &path, body).await;
            if !is_matrix_4xx(&r) {
                failures.push(format!("{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
            }
        }
    }
    assert!(failures.is_empty(), "{} bad answers:\n{}", failures.len(), failures.join("\n"));

    // Wrong-typed bodies.
    let bob = user_path("@bob:localhost");
    for (method, path, body) in [
        (Method::PUT, bob.clone(), json!({ "password": 5 })),
        (Method::PUT, bob.clone(), json!({ "admin": "yes" })),
        (Method::PUT, bob.clone(), json!(["bob"])),
        (
            Method::POST,
            format!("{ADMIN}/v1/register"),
            json!({ "nonce": 1, "username": "x", "password": "y", "mac": "z" }),
        ),
        (Method::POST, format!("{ADMIN}/v1/reset_password/{}", enc("@root:localhost")), json!({ "new_password": [] })),
        (Method::PUT, format!("{ADMIN}/v1/users/{}/admin", enc("@root:localhost")), json!({ "admin": 1 })),
        (Method::POST, format!("{ADMIN}/v1/deactivate/{}", enc("@root:localhost")), json!({ "erase": "yes" })),
    ] {
        let r = admin.request(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path} {body}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.errcode().starts_with("M_"), "{path}");
    }
    assert!(login(&s, "root", "root-password").await.is_ok(), "nothing above changed the admin");

    // The same request twice at once.
    let twice = |method: Method, path: String, body: Value| {
        let admin = admin.clone();
        async move {
            tokio::join!(
                admin.request(method.clone(), &path, Some(body.clone())),
                admin.request(method, &path, Some(body))
            )
        }
    };
    // Creating the same user: one user, who can log in.
    let (a, b) = twice(Method::PUT, bob.clone(), json!({ "password": "bob-password" })).await;
    assert!(a.status.is_success() && b.status.is_success(), "{} {}", a.status, b.status);
    let listed = admin.get(&format!("{ADMIN}/v2/users?name=bob")).await;
    assert_eq!(listed["users"].as_array().unwrap().len(), 1, "{listed}");
    assert!(login(&s, "bob", "bob-password").await.is_ok());
    // One nonce used twice at once: one registration.
    let n = nonce(&s).await;
    let body = json!({ "nonce": n, "username": "carol", "password": "c-pass", "mac": mac(SECRET, &n, "carol", "c-pass", false) });
    let (a, b) = tokio::join!(post_register(&s, &body), post_register(&s, &body));
    let ok = [&a, &b].iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(ok, 1, "{} / {}", String::from_utf8_lossy(&a.body), String::from_utf8_lossy(&b.body));
    // Deleting one room twice at once: one deletion, the room gone for its member.
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({ "name": "doomed" })).await;
    let (a, b) = twice(Method::DELETE, format!("{ADMIN}/v2/rooms/{}", enc(&room)), json!({})).await;
    assert!(!a.status.is_server_error() && !b.status.is_server_error(), "{} {}", a.status, b.status);
    assert!(a.status.is_success() || b.status.is_success());
    let joined = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert!(!joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()), "{joined}");
    s.stop().await;
}

/// The admin socket reads each request as one typed value: a wrong or missing
/// field is refused with a message saying what was wrong, and nothing is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_requests_are_typed() {
    let s = TestServer::start("typed-admin.test").await;
    let ask = |req: Value| {
        let data_dir = s.engine.config.data_dir.clone();
        async move { myelin_api::admin::request(&data_dir, &req).await.expect("socket").expect("server listening") }
    };
    // The socket is bound by a task of its own just after start-up.
    let socket = myelin_api::admin::socket_path(&s.engine.config.data_dir);
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ask(json!({ "op": "ping" })).await["ok"], true);
    for (bad, names) in [
        (json!({ "op": "room_shutdown", "room_id": "not-a-room" }), "room_shutdown"),
        (json!({ "op": "user_create", "name": "zed" }), "password"),
        (json!({ "op": "user_set_admin", "name": "zed", "admin": "yes" }), "boolean"),
        (json!({ "op": "federation_allow", "server": "bad server!" }), "federation_allow"),
        (json!({ "op": "media_purge_remote", "older_than_ms": -5 }), "u64"),
        (json!({ "op": "no_such_op" }), "no_such_op"),
        (json!({ "name": "zed" }), "no op"),
    ] {
        let answer = ask(bad.clone()).await;
        assert_eq!(answer["ok"], false, "{bad} was accepted: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(names), "{bad}: the error {error:?} does not name {names:?}");
    }
    // Nothing was created by the refused user_create.
    let list = ask(json!({ "op": "user_list" })).await;
    assert_eq!(list["users"].as_array().map(Vec::len), Some(0), "{list}");
    s.stop().await;
}
