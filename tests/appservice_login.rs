//! An appservice's own account calls (Application Service API §"Using /login",
//! Client-Server API §"Account deactivation"), answered as Synapse answers
//! them: it logs in as a registered user of its namespaces with its
//! `as_token`, gets 404 for a user it never registered and 403
//! `M_USER_DEACTIVATED` for a deactivated one, and deactivates its users
//! without user-interactive auth.

use http::{Method, StatusCode};
use myelin_suite::appservice::{RegistrationYaml, as_request, server_with_registration};
use serde_json::{Value, json};

const AS_TOKEN: &str = "as-login-token";

fn registration() -> String {
    RegistrationYaml {
        id: "loginbridge",
        url: None,
        as_token: AS_TOKEN,
        hs_token: "hs-login-token",
        sender_localpart: "loginbot",
        user_regex: "@bridge_.*:as.test",
        alias_regex: "#bridge_.*:as.test",
        exclusive: true,
        ephemeral: false,
    }
    .render()
}

fn login(user: &str) -> Value {
    json!({ "type": "m.login.application_service", "identifier": { "type": "m.id.user", "user": user } })
}

fn errcode(r: &myelin_suite::Reply) -> String {
    r.json()["errcode"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_appservice_logs_in_only_as_registered_active_users_of_its_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_registration(&registration(), &dir).await;
    let register = json!({ "type": "m.login.application_service", "username": "bridge_ann", "inhibit_login": true });
    let r = as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/register", None, Some(register)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));

    // A registered user of its namespace: a device and a token that is hers.
    let r =
        as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/login", None, Some(login("bridge_ann"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let me = as_request(&server, &token, Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(me.json()["user_id"], "@bridge_ann:as.test");
    // Its sender user too.
    let r =
        as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/login", None, Some(login("loginbot"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));

    // Never registered: not found, and no account appears.
    let r =
        as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/login", None, Some(login("bridge_bo"))).await;
    assert_eq!((r.status, errcode(&r)), (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned()));
    let again =
        as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/login", None, Some(login("bridge_bo"))).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "a refused login created the user");

    // Outside its namespaces, and without its token.
    let alice = server.register("alice").await;
    let r = as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/login", None, Some(login("alice"))).await;
    assert_eq!((r.status, errcode(&r)), (StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned()));
    let r =
        as_request(&server, &alice.token, Method::POST, "/_matrix/client/v3/login", None, Some(login("bridge_ann")))
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a user's token is no as_token");

    // Deactivated by the appservice, without user-interactive auth: its
    // tokens stop working and it can no longer be logged into.
    let r = as_request(
        &server,
        AS_TOKEN,
        Method::POST,
        "/_matrix/client/v3/account/deactivate",
        Some("@bridge_ann:as.test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let me = as_request(&server, &token, Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    let r =
        as_request(&server, AS_TOKEN, Method::POST, "/_matrix/client/v3/login", None, Some(login("bridge_ann"))).await;
    assert_eq!((r.status, errcode(&r)), (StatusCode::FORBIDDEN, "M_USER_DEACTIVATED".to_owned()));

    // A user still needs user-interactive auth to deactivate herself.
    let r = alice.request(Method::POST, "/_matrix/client/v3/account/deactivate", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().get("flows").is_some());
    server.stop().await;
}
