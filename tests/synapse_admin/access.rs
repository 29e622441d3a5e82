//! Who may use the admin API: the token check, server admins only (whois of
//! oneself aside), the unauthenticated server version, and `user set-admin`.

use http::{Method, StatusCode};
use myelin_suite::{TestServer, enc, http, http_with};
use serde_json::json;

use crate::{ADMIN, status_code, user_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_a_server_admin() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let path = format!("{ADMIN}/v2/users");

    let r = http(s.client, Method::GET, &path, None).await;
    assert_eq!(status_code(&r), (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN".into()));
    let r = http_with(s.client, Method::GET, &path, None, &[("authorization", "Bearer nope")]).await;
    assert_eq!(status_code(&r), (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN".into()));
    let r = alice.request(Method::GET, &path, None).await;
    assert_eq!(status_code(&r), (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()));
    for (method, p) in [
        (Method::GET, user_path("@alice:localhost")),
        (Method::PUT, user_path("@bob:localhost")),
        (Method::POST, format!("{ADMIN}/v1/deactivate/{}", enc("@alice:localhost"))),
        (Method::POST, format!("{ADMIN}/v1/reset_password/{}", enc("@alice:localhost"))),
        (Method::GET, format!("{ADMIN}/v1/users/{}/joined_rooms", enc("@alice:localhost"))),
        (Method::GET, format!("{ADMIN}/v1/rooms")),
    ] {
        let r = alice.request(method.clone(), &p, Some(json!({ "new_password": "x" }))).await;
        assert_eq!(status_code(&r), (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()), "{method} {p}");
    }
    // Whois of oneself is allowed, as in Synapse (and the spec's /admin/whois).
    let me = alice.get(&format!("{ADMIN}/v1/whois/{}", enc("@alice:localhost"))).await;
    assert_eq!(me["user_id"], "@alice:localhost");

    // The version needs no token.
    let r = http(s.client, Method::GET, &format!("{ADMIN}/v1/server_version"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["server_version"].as_str().is_some_and(|v| !v.is_empty()));

    // `myelin admin user set-admin` turns the flag on and off; the same token follows.
    let set = |on: bool| json!({ "op": "user_set_admin", "name": "alice", "admin": on });
    assert_eq!(myelin_api::admin::execute_offline(&s.engine, &set(true)).await["ok"], true);
    assert_eq!(alice.get(&path).await["total"], 1);
    assert_eq!(myelin_api::admin::execute_offline(&s.engine, &set(false)).await["ok"], true);
    assert_eq!(alice.request(Method::GET, &path, None).await.status, StatusCode::FORBIDDEN);
    let nobody = json!({ "op": "user_set_admin", "name": "nobody", "admin": true });
    assert_eq!(myelin_api::admin::execute_offline(&s.engine, &nobody).await["ok"], false);
    s.stop().await;
}
