//! The Synapse-compatible admin API (`/_synapse/admin/…`) over real HTTP, with
//! the requests Synapse's admin API documentation shows: shared-secret
//! registration (the MAC computed here, independently, with `ring`), the admin
//! token check, the user list and its paging, user get/put, deactivation,
//! password reset, joined rooms, whois and the room endpoints.

use http::{Method, StatusCode};
use myelin_suite::{Client, Reply, TestServer, enc, http};
use serde_json::{Value, json};

mod access;
mod bad_input;
mod registration;
mod rooms;
mod users;

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
