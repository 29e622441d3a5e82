//! The Application Service API end to end: a registration file loaded at
//! start, the appservice acting as its users, and what the homeserver pushes
//! to it — over real HTTP on loopback, with a stand-in appservice that
//! records every request (`kit::appservice`).

use http::{Method, StatusCode};
use myelin_suite::{
    Client, TestServer,
    appservice::{self, RegistrationYaml},
    enc,
};
use serde_json::{Value, json};

mod namespaces;
mod queries;
mod to_device;
mod transactions;

const AS_TOKEN: &str = "as-secret-token";
const HS_TOKEN: &str = "hs-secret-token";

fn registration(url: Option<&str>, exclusive: bool) -> String {
    RegistrationYaml {
        id: "fakebridge",
        url,
        as_token: AS_TOKEN,
        hs_token: HS_TOKEN,
        sender_localpart: "bridgebot",
        user_regex: "@bridge_.*:as.test",
        alias_regex: "#bridge_.*:as.test",
        exclusive,
        ephemeral: true,
    }
    .render()
}

/// A server named `as.test` with open registration and the registration file in `dir`.
async fn server_with(yaml: &str, dir: &tempfile::TempDir) -> TestServer {
    appservice::server_with_registration(yaml, dir).await
}

/// A request with the appservice's token, as `user` when given.
async fn as_request(
    server: &TestServer,
    method: Method,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> myelin_suite::Reply {
    appservice::as_request(server, AS_TOKEN, method, path, user, body).await
}

async fn as_register(server: &TestServer, localpart: &str) -> myelin_suite::Reply {
    let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
    as_request(server, Method::POST, "/_matrix/client/v3/register", None, Some(body)).await
}

/// Room `room` with `alice` and the namespaced `@bridge_alice` joined (by masquerading).
async fn bridged_room(server: &TestServer, alice: &Client) -> String {
    assert_eq!(as_register(server, "bridge_alice").await.status, StatusCode::OK);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = as_request(
        server,
        Method::POST,
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some("@bridge_alice:as.test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    room
}

fn bodies_of(events: &[Value], room: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["room_id"] == room && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
