//! The Synapse-compatible admin API (`/_synapse/admin/…`) over real HTTP, with
//! the requests Synapse's admin API documentation shows: shared-secret
//! registration (the MAC computed here, independently, with `ring`), the admin
//! token check, the user list and its paging, user get/put, deactivation,
//! password reset, joined rooms, whois and the room endpoints.

use http::{Method, StatusCode};
use myelin_suite::{Client, Reply, TestServer, enc, http, http_with};
use serde_json::{Value, json};

const ADMIN: &str = "/_synapse/admin";
const SECRET: &str = "correct horse battery staple";

/// Hex HMAC-SHA1 over `nonce\0username\0password\0admin|notadmin`, as Synapse's
/// `register_new_matrix_user` computes it.
fn mac(secret: &str, nonce: &str, username: &str, password: &str, admin: bool) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    for (i, part) in [nonce, username, password, if admin { "admin" } else { "notadmin" }].iter().enumerate() {
        if i > 0 {
            ctx.update(b"\x00");
        }
        ctx.update(part.as_bytes());
    }
    ctx.sign().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn nonce(s: &TestServer) -> String {
    let r = http(s.client, Method::GET, &format!("{ADMIN}/v1/register"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    r.json()["nonce"].as_str().expect("nonce is a string").to_owned()
}

async fn post_register(s: &TestServer, body: &Value) -> Reply {
    http(s.client, Method::POST, &format!("{ADMIN}/v1/register"), Some(body.to_string().as_bytes())).await
}

fn status_code(r: &Reply) -> (StatusCode, String) {
    let code = if r.body.is_empty() { String::new() } else { r.errcode() };
    (r.status, code)
}

/// Creates a user the way `myelin admin user create [--admin]` does, then logs in over HTTP.
async fn create_user(s: &TestServer, name: &str, password: &str, admin: bool) -> Client {
    let req = json!({ "op": "user_create", "name": name, "password": password, "admin": admin });
    let answer = myelin_api::admin::execute_offline(&s.engine, &req).await;
    assert_eq!(answer["ok"], true);
    login(s, name, password).await.unwrap_or_else(|r| panic!("login {name}: {}", String::from_utf8_lossy(&r.body)))
}

async fn login(s: &TestServer, name: &str, password: &str) -> Result<Client, Reply> {
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": name }, "password": password });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes())).await;
    if r.status != StatusCode::OK {
        return Err(r);
    }
    let j = r.json();
    Ok(Client {
        addr: s.client,
        token: j["access_token"].as_str().unwrap().to_owned(),
        user_id: j["user_id"].as_str().unwrap().to_owned(),
        device_id: j["device_id"].as_str().unwrap().to_owned(),
    })
}

fn user_path(user: &str) -> String {
    format!("{ADMIN}/v2/users/{}", enc(user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secret_registration_is_exactly_synapses() {
    let s = TestServer::start_with("localhost", |c| c.registration.shared_secret = SECRET.into()).await;

    // The documented example: an admin with a display name.
    let n = nonce(&s).await;
    assert!(n.len() >= 32 && n.chars().all(|c| c.is_ascii_hexdigit()), "nonce {n}");
    assert_ne!(n, nonce(&s).await, "every nonce is fresh");
    let body = json!({
        "nonce": n, "username": "pepper_roni", "displayname": "Pepper Roni", "password": "pizza",
        "admin": true, "mac": mac(SECRET, &n, "pepper_roni", "pizza", true),
    });
    let r = post_register(&s, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["user_id"], "@pepper_roni:localhost");
    assert_eq!(j["home_server"], "localhost");
    assert!(j["device_id"].is_string());
    let admin = Client {
        addr: s.client,
        token: j["access_token"].as_str().unwrap().to_owned(),
        user_id: "@pepper_roni:localhost".into(),
        device_id: j["device_id"].as_str().unwrap().to_owned(),
    };
    assert_eq!(admin.get("/_matrix/client/v3/account/whoami").await["user_id"], "@pepper_roni:localhost");
    let me = admin.get(&user_path("@pepper_roni:localhost")).await;
    assert_eq!((me["admin"].as_bool(), me["displayname"].as_str()), (Some(true), Some("Pepper Roni")));
    assert!(login(&s, "pepper_roni", "pizza").await.is_ok(), "the password works at /login");

    // A nonce is single use.
    let r = post_register(&s, &body).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_UNKNOWN".into()));
    assert_eq!(r.json()["error"], "unrecognised nonce");

    // A wrong MAC is refused as Synapse refuses it (403, no specific errcode), and the nonce is spent.
    let n = nonce(&s).await;
    let bad = json!({ "nonce": n, "username": "mallory", "password": "p", "admin": false,
        "mac": mac("another secret", &n, "mallory", "p", false) });
    let r = post_register(&s, &bad).await;
    assert_eq!(status_code(&r), (StatusCode::FORBIDDEN, "M_UNKNOWN".into()));
    assert_eq!(r.json()["error"], "HMAC incorrect");
    let mut retry = bad.clone();
    retry["mac"] = json!(mac(SECRET, &n, "mallory", "p", false));
    assert_eq!(post_register(&s, &retry).await.json()["error"], "unrecognised nonce");

    // The MAC covers the admin flag: a MAC for "notadmin" does not make an admin.
    let n = nonce(&s).await;
    let r = post_register(
        &s,
        &json!({ "nonce": n, "username": "sneaky", "password": "p", "admin": true,
        "mac": mac(SECRET, &n, "sneaky", "p", false) }),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Without `admin`, "notadmin"; the MAC is over the name as sent, the account lower-cased.
    let n = nonce(&s).await;
    let r = post_register(
        &s,
        &json!({ "nonce": n, "username": "Shouty", "password": "p", "mac": mac(SECRET, &n, "Shouty", "p", false) }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], "@shouty:localhost");
    let shouty = admin.get(&user_path("@shouty:localhost")).await;
    assert_eq!((shouty["admin"].as_bool(), shouty["displayname"].as_str()), (Some(false), Some("shouty")));

    // A taken name, and fields missing or of the wrong kind.
    let n = nonce(&s).await;
    let r = post_register(
        &s,
        &json!({ "nonce": n, "username": "shouty", "password": "p", "mac": mac(SECRET, &n, "shouty", "p", false) }),
    )
    .await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_USER_IN_USE".into()));
    let r = post_register(&s, &json!({ "username": "x", "password": "p", "mac": "00" })).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_BAD_JSON".into()));
    let n = nonce(&s).await;
    let r = post_register(&s, &json!({ "nonce": n, "username": "x", "password": "p" })).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_BAD_JSON".into()));
    let n = nonce(&s).await;
    let r = post_register(&s, &json!({ "nonce": n, "username": "x\u{0}y", "password": "p", "mac": "00" })).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("Invalid username")));
    let r = http(s.client, Method::POST, &format!("{ADMIN}/v1/register"), Some(b"not json")).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_NOT_JSON".into()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secret_registration_is_off_without_a_secret() {
    let s = TestServer::start("localhost").await;
    // Synapse hands out nonces either way; registering is what is refused.
    let n = nonce(&s).await;
    let r = post_register(
        &s,
        &json!({ "nonce": n, "username": "eve", "password": "p", "mac": mac("", &n, "eve", "p", false) }),
    )
    .await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_UNKNOWN".into()));
    assert_eq!(r.json()["error"], "Shared secret registration is not enabled");
    assert!(!s.engine.users.exists(&ruma::UserId::parse("@eve:localhost").unwrap()).unwrap());
    s.stop().await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_list_details_members_and_delete() {
    let s = TestServer::start("localhost").await;
    let admin = create_user(&s, "root", "root-pw", true).await;
    let bob = create_user(&s, "bob", "bob-pw", false).await;
    let lobby =
        admin.create_room(json!({ "preset": "public_chat", "name": "Lobby", "room_alias_name": "lobby" })).await;
    let quiet = bob.create_room(json!({ "name": "Quiet corner" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&lobby)), json!({})).await;

    let list = admin.get(&format!("{ADMIN}/v1/rooms")).await;
    assert_eq!(list["total_rooms"], 2);
    assert_eq!(list["offset"], 0);
    let rooms = list["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 2);
    let first = &rooms[0];
    assert_eq!((first["room_id"].as_str(), first["name"].as_str()), (Some(lobby.as_str()), Some("Lobby")));
    assert_eq!(first["joined_members"], 2);
    assert_eq!(first["joined_local_members"], 2);
    assert_eq!(first["canonical_alias"], "#lobby:localhost");
    assert_eq!(first["creator"], "@root:localhost");
    assert!(first["version"].is_string() && first["public"].is_boolean());

    let page = admin.get(&format!("{ADMIN}/v1/rooms?from=1&limit=1")).await;
    assert_eq!((page["rooms"][0]["room_id"].as_str(), page["offset"].as_u64()), (Some(quiet.as_str()), Some(1)));
    assert_eq!(page.get("next_batch"), None);
    let page = admin.get(&format!("{ADMIN}/v1/rooms?limit=1")).await;
    assert_eq!(page["next_batch"], 1);
    let found = admin.get(&format!("{ADMIN}/v1/rooms?search_term=quiet")).await;
    assert_eq!((found["total_rooms"].as_u64(), found["rooms"][0]["room_id"].as_str()), (Some(1), Some(quiet.as_str())));

    let details = admin.get(&format!("{ADMIN}/v1/rooms/{}", enc(&lobby))).await;
    assert_eq!((details["room_id"].as_str(), details["name"].as_str()), (Some(lobby.as_str()), Some("Lobby")));
    assert_eq!(details["joined_members"], 2);
    let members = admin.get(&format!("{ADMIN}/v1/rooms/{}/members", enc(&lobby))).await;
    assert_eq!(members, json!({ "members": ["@bob:localhost", "@root:localhost"], "total": 2 }));
    let r = admin.request(Method::GET, &format!("{ADMIN}/v1/rooms/{}", enc("!nope:localhost")), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));

    // Delete (shut down): every local member removed, the room refuses joins.
    let r = admin
        .request(Method::DELETE, &format!("{ADMIN}/v2/rooms/{}", enc(&lobby)), Some(json!({ "block": true })))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let delete_id = r.json()["delete_id"].as_str().unwrap().to_owned();
    // The shutdown is done before the answer; the history purge after it runs on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let status = admin.get(&format!("{ADMIN}/v2/rooms/delete_status/{delete_id}")).await;
        if status["status"] != "purging" || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"], "complete");
    assert_eq!(status["shutdown_room"]["kicked_users"].as_array().map(Vec::len), Some(2));
    let members = admin.get(&format!("{ADMIN}/v1/rooms/{}/members", enc(&lobby))).await;
    assert_eq!(members["total"], 0);
    let r = bob.request(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&lobby)), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = admin.request(Method::GET, &format!("{ADMIN}/v2/rooms/delete_status/nope"), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    s.stop().await;
}

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
