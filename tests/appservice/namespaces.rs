//! Registration files and namespaces: a bad file stops the start naming the
//! file and field, the appservice registers and masquerades only as its
//! namespaced users, `M_EXCLUSIVE` for everyone else, and `joined_members`
//! for rooms its users are in.

use http::{Method, StatusCode};
use myelin_suite::{enc, http_with};
use serde_json::json;

use crate::{HS_TOKEN, as_register, as_request, bridged_room, registration, server_with};

#[tokio::test]
async fn an_appservice_acts_only_as_the_users_of_its_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(None, true), &dir).await;

    // Its sender exists from the start; whoami says who the token is.
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["user_id"], "@bridgebot:as.test");

    // Registering a namespaced user: no password, no user-interactive auth.
    let r = as_register(&server, "bridge_alice").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], "@bridge_alice:as.test");
    assert!(r.json().get("access_token").is_none(), "inhibit_login gives no token");
    // Twice: the id is taken.
    assert_eq!(as_register(&server, "bridge_alice").await.errcode(), "M_USER_IN_USE");
    // Outside its namespace: refused.
    let r = as_register(&server, "carol").await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    // Without the appservice login type: refused.
    let r = as_request(
        &server,
        Method::POST,
        "/_matrix/client/v3/register",
        None,
        Some(json!({ "username": "bridge_bob", "auth": { "type": "m.login.dummy" } })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");

    // Masquerading.
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", Some("@bridge_alice:as.test"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["user_id"], "@bridge_alice:as.test");
    let alice = server.register("alice").await;
    for (user, why) in [
        ("@alice:as.test", "a user outside its namespaces"),
        ("@bridge_nobody:as.test", "a namespaced user it never registered"),
        ("@bridge_x:elsewhere.test", "another server's user"),
    ] {
        let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", Some(user), None).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"), "{why}");
    }
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami", Some("not a user id"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = as_request(&server, Method::GET, "/_matrix/client/v3/account/whoami?device_id=NOPE", None, None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_UNKNOWN_DEVICE"));

    // Ordinary users cannot take what the namespaces claim exclusively.
    let body = json!({ "username": "bridge_mallory", "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
    let r =
        http_with(server.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes()), &[])
            .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    let room = alice.create_room(json!({})).await;
    let r = alice
        .request(
            Method::PUT,
            "/_matrix/client/v3/directory/room/%23bridge_mine:as.test",
            Some(json!({ "room_id": room })),
        )
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    let r = alice
        .request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "room_alias_name": "bridge_x" })))
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"));
    // The appservice itself may.
    let r = as_request(
        &server,
        Method::PUT,
        "/_matrix/client/v3/directory/room/%23bridge_mine:as.test",
        None,
        Some(json!({ "room_id": room })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    // And an ordinary user's alias outside the namespaces is fine.
    alice.put("/_matrix/client/v3/directory/room/%23plain:as.test", json!({ "room_id": room })).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_registration_file_stops_the_start_with_the_file_and_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, registration(None, true).replace("@bridge_.*:as.test", "@bridge_(:as.test")).unwrap();
    let mut config = myelin_suite::test_config(dir.path(), "as.test");
    config.appservice.registrations = vec![path.clone()];
    let err = match myelin_engine::Engine::open(config) {
        Ok(_) => panic!("a registration with a bad regex was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("bad.yaml") && err.contains("namespaces.users[0].regex"), "{err}");

    // Two registrations with one token.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, registration(None, true)).unwrap();
    std::fs::write(&b, registration(None, true).replace("id: fakebridge", "id: other").replace(HS_TOKEN, "hs2"))
        .unwrap();
    let mut config = myelin_suite::test_config(dir.path(), "as.test");
    config.appservice.registrations = vec![a, b];
    let err = match myelin_engine::Engine::open(config) {
        Ok(_) => panic!("two registrations sharing an as_token were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("b.yaml") && err.contains("as_token"), "{err}");
}

/// Also found by the interop runs: a bridge bot lists the members of a portal
/// its puppets are in without being joined itself (Synapse allows an
/// appservice any room one of its users is joined to).
#[tokio::test]
async fn an_appservice_lists_the_members_of_rooms_its_users_are_joined_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(None, true), &dir).await;
    let alice = server.register("alice").await;
    let room = bridged_room(&server, &alice).await;
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let r = as_request(&server, Method::GET, &path, None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let joined = r.json()["joined"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(joined, ["@alice:as.test", "@bridge_alice:as.test"]);
    // A room none of its users is in stays closed to it, and to other users.
    let other = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&other));
    let r = as_request(&server, Method::GET, &path, None, None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    let carol = server.register("carol").await;
    let r = carol.request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
