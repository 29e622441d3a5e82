//! Shared-secret registration (`/_synapse/admin/v1/register`) exactly as
//! Synapse's: the MAC, single-use nonces, the admin flag, bad fields, and off
//! without a secret.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, http};
use serde_json::json;

use crate::{ADMIN, SECRET, login, mac, nonce, post_register, status_code, user_path};

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
