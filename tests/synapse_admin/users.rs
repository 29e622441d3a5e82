//! The admin user endpoints: the user list with its paging and filters, user
//! PUT/GET, deactivation (with erase), password reset, joined rooms and whois.

use http::{Method, StatusCode};
use myelin_suite::{TestServer, enc};
use serde_json::{Value, json};

use crate::{ADMIN, create_user, login, status_code, user_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_list_pages_and_filters_as_synapse() {
    let s = TestServer::start("localhost").await;
    let admin = create_user(&s, "admin", "admin-pw", true).await;
    for name in ["bob", "carol", "dave", "erin", "frank"] {
        create_user(&s, name, "pw", false).await;
    }
    let r = admin.request(Method::POST, &format!("{ADMIN}/v1/deactivate/{}", enc("@frank:localhost")), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));

    // Pages of two, following next_token, in user id order; deactivated users left out.
    let mut names = Vec::new();
    let mut from = "0".to_owned();
    let mut pages = 0;
    loop {
        let page = admin.get(&format!("{ADMIN}/v2/users?from={from}&limit=2&guests=false")).await;
        assert_eq!(page["total"], 5);
        pages += 1;
        for u in page["users"].as_array().unwrap() {
            names.push(u["name"].as_str().unwrap().to_owned());
            for field in ["is_guest", "admin", "deactivated", "erased", "shadow_banned", "locked"] {
                assert!(u[field].is_boolean(), "{field} in {u}");
            }
            assert!(u["creation_ts"].as_u64().unwrap() > 1_600_000_000_000, "creation_ts in ms in the list");
            assert!(u.get("user_type").is_some() && u.get("avatar_url").is_some());
        }
        match page.get("next_token").and_then(Value::as_str) {
            Some(next) => from = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["@admin:localhost", "@bob:localhost", "@carol:localhost", "@dave:localhost", "@erin:localhost"]);

    let all = admin.get(&format!("{ADMIN}/v2/users?deactivated=true")).await;
    assert_eq!(all["total"], 6);
    assert!(all.get("next_token").is_none());
    let frank = &all["users"].as_array().unwrap()[5];
    assert_eq!((frank["name"].as_str(), frank["deactivated"].as_bool()), (Some("@frank:localhost"), Some(true)));

    let ca = admin.get(&format!("{ADMIN}/v2/users?name=ca")).await;
    assert_eq!(ca["users"][0]["name"], "@carol:localhost");
    assert_eq!(ca["total"], 1);
    let by_id = admin.get(&format!("{ADMIN}/v2/users?user_id={}", enc("@da"))).await;
    assert_eq!(by_id["total"], 1);
    let admins = admin.get(&format!("{ADMIN}/v2/users?admins=true")).await;
    assert_eq!(admins["users"].as_array().unwrap().len(), 1);
    let back = admin.get(&format!("{ADMIN}/v2/users?dir=b&limit=1")).await;
    assert_eq!((back["users"][0]["name"].as_str(), back["next_token"].as_str()), (Some("@erin:localhost"), Some("1")));

    for bad in ["from=-1", "limit=-5", "from=x", "guests=maybe", "order_by=shoe_size", "dir=sideways"] {
        let r = admin.request(Method::GET, &format!("{ADMIN}/v2/users?{bad}"), None).await;
        assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into()), "{bad}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_creates_and_modifies_a_user_and_get_reads_it_back() {
    let s = TestServer::start("localhost").await;
    let admin = create_user(&s, "root", "root-pw", true).await;
    let carol = user_path("@carol:localhost");

    let r = admin
        .request(
            Method::PUT,
            &carol,
            Some(json!({ "password": "user_password", "displayname": "Alice Marigold", "admin": false,
            "avatar_url": "mxc://localhost/abcde12345" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], "@carol:localhost");
    let got = admin.get(&carol).await;
    assert_eq!(got["name"], "@carol:localhost");
    assert_eq!(got["displayname"], "Alice Marigold");
    assert_eq!(got["avatar_url"], "mxc://localhost/abcde12345");
    assert_eq!((got["admin"].as_bool(), got["deactivated"].as_bool()), (Some(false), Some(false)));
    assert_eq!((got["is_guest"].as_bool(), got["erased"].as_bool()), (Some(false), Some(false)));
    let created = got["creation_ts"].as_u64().unwrap();
    assert!((1_600_000_000..10_000_000_000).contains(&created), "creation_ts in seconds, as Synapse: {created}");
    assert!(got["threepids"].is_array() && got["external_ids"].is_array());
    let first = login(&s, "carol", "user_password").await.expect("the new password logs in");

    // Modify: display name and admin, 200; the same token still works.
    let r = admin.request(Method::PUT, &carol, Some(json!({ "displayname": "Carol B", "admin": true }))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!((r.json()["displayname"].as_str(), r.json()["admin"].as_bool()), (Some("Carol B"), Some(true)));
    assert_eq!(first.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await.status, StatusCode::OK);
    let profile = first.get(&format!("/_matrix/client/v3/profile/{}", enc("@carol:localhost"))).await;
    assert_eq!(profile["displayname"], "Carol B");

    // A new password logs the devices out unless logout_devices is false.
    admin.put(&carol, json!({ "password": "second", "logout_devices": false })).await;
    assert_eq!(first.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await.status, StatusCode::OK);
    admin.put(&carol, json!({ "password": "third" })).await;
    let r = first.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status_code(&r), (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN".into()));
    assert!(login(&s, "carol", "second").await.is_err());
    assert!(login(&s, "carol", "third").await.is_ok());

    // Deactivate through PUT, then reactivate with a new password.
    admin.put(&carol, json!({ "deactivated": true })).await;
    assert_eq!(admin.get(&carol).await["deactivated"], true);
    assert!(login(&s, "carol", "third").await.is_err());
    let back = admin.put(&carol, json!({ "deactivated": false, "password": "fourth" })).await;
    assert_eq!(back["deactivated"], false);
    assert!(login(&s, "carol", "fourth").await.is_ok());

    // Errors as Synapse answers them.
    let r = admin.request(Method::GET, &user_path("@nobody:localhost"), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    let r = admin.request(Method::GET, &user_path("@someone:elsewhere.example"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = admin.request(Method::PUT, &user_path("@someone:elsewhere.example"), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = admin.request(Method::GET, &user_path("not-a-user-id"), None).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into()));
    let r = admin.request(Method::PUT, &carol, Some(json!({ "admin": "yes" }))).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_BAD_JSON".into()));
    let r = admin.request(Method::PUT, &user_path("@root:localhost"), Some(json!({ "admin": false }))).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("You may not demote yourself.")));
    let r = admin.request(Method::PUT, &user_path("@Bad Name:localhost"), Some(json!({ "password": "p" }))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivate_blocks_login_and_reset_password_replaces_it() {
    let s = TestServer::start("localhost").await;
    let admin = create_user(&s, "root", "root-pw", true).await;
    let bob = create_user(&s, "bob", "bob-pw", false).await;
    let room = admin.create_room(json!({ "preset": "public_chat", "name": "lobby" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;

    let joined = admin.get(&format!("{ADMIN}/v1/users/{}/joined_rooms", enc("@bob:localhost"))).await;
    assert_eq!(joined, json!({ "joined_rooms": [room], "total": 1 }));
    let whois = admin.get(&format!("{ADMIN}/v1/whois/{}", enc("@bob:localhost"))).await;
    assert_eq!(whois["user_id"], "@bob:localhost");
    let sessions = whois["devices"][""]["sessions"][0]["connections"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0]["last_seen"].as_u64().unwrap() > 0);

    // Reset password: the old one and the old token stop working.
    let path = format!("{ADMIN}/v1/reset_password/{}", enc("@bob:localhost"));
    let r = bob.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(admin.post(&path, json!({ "new_password": "bob-pw-2", "logout_devices": false })).await, json!({}));
    assert_eq!(bob.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await.status, StatusCode::OK);
    assert!(login(&s, "bob", "bob-pw").await.is_err());
    assert_eq!(admin.post(&path, json!({ "new_password": "bob-pw-3" })).await, json!({}));
    let r = bob.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status_code(&r), (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN".into()));
    let bob = login(&s, "bob", "bob-pw-3").await.expect("the reset password logs in");
    let r = admin.request(Method::POST, &path, Some(json!({}))).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_MISSING_PARAM".into()));
    let r = admin
        .request(
            Method::POST,
            &format!("{ADMIN}/v1/reset_password/{}", enc("@ghost:localhost")),
            Some(json!({ "new_password": "x" })),
        )
        .await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));

    // Deactivate with erase: tokens gone, login refused, rooms left, profile erased.
    let r = admin
        .request(
            Method::POST,
            &format!("{ADMIN}/v1/deactivate/{}", enc("@bob:localhost")),
            Some(json!({ "erase": true })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "id_server_unbind_result": "no-support" }));
    let r = bob.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status_code(&r), (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN".into()));
    let r = login(&s, "bob", "bob-pw-3").await.expect_err("a deactivated account cannot log in");
    assert_eq!(status_code(&r), (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()));
    let joined = admin.get(&format!("{ADMIN}/v1/users/{}/joined_rooms", enc("@bob:localhost"))).await;
    assert_eq!(joined["total"], 0);
    let got = admin.get(&user_path("@bob:localhost")).await;
    assert_eq!((got["deactivated"].as_bool(), got["erased"].as_bool()), (Some(true), Some(true)));
    assert!(got["displayname"].is_null());
    let members = admin.get(&format!("{ADMIN}/v1/rooms/{}/members", enc(&room))).await;
    assert_eq!(members, json!({ "members": ["@root:localhost"], "total": 1 }));

    // As Synapse: an unknown user is 404 before the body is read; a bad `erase` is 400.
    for (user, body, want) in [
        ("@root:localhost", Some(json!({ "erase": "yes" })), StatusCode::BAD_REQUEST),
        ("@ghost:localhost", Some(json!({ "erase": "yes" })), StatusCode::NOT_FOUND),
    ] {
        let r = admin.request(Method::POST, &format!("{ADMIN}/v1/deactivate/{}", enc(user)), body).await;
        assert_eq!(r.status, want, "{user}");
    }
    assert_eq!(admin.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await.status, StatusCode::OK);
    let r = admin.request(Method::POST, &format!("{ADMIN}/v1/deactivate/{}", enc("@x:elsewhere.example")), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}
