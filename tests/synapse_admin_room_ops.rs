//! Admin actions inside rooms through the Synapse admin API over real HTTP,
//! with the requests Synapse's documentation shows: a room's state, joining a
//! local user to a room (`v1/join`), `make_room_admin`, and logging in as a user.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

const ADMIN: &str = "/_synapse/admin";

async fn server() -> (TestServer, Client) {
    let s = TestServer::start_with("localhost", |c| c.registration.enabled = true).await;
    let admin = s.register("admin").await;
    let user = ruma::UserId::parse(admin.user_id.as_str()).unwrap();
    s.engine.users.set_admin(&user, true).await.unwrap();
    (s, admin)
}

async fn status(c: &Client, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
    let r = c.request(method, path, body).await;
    let code = if r.status.is_success() { String::new() } else { r.errcode() };
    (r.status, code)
}

async fn joined_rooms(c: &Client) -> Vec<String> {
    let j = c.get("/_matrix/client/v3/joined_rooms").await;
    j["joined_rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect()
}

async fn power_of(c: &Client, room: &str, user: &str) -> Value {
    c.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(room))).await["users"][user].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_of_a_room_is_shown_to_admins_only() {
    let (s, admin) = server().await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({ "preset": "private_chat", "name": "Secret" })).await;
    let state = admin.get(&format!("{ADMIN}/v1/rooms/{}/state", enc(&room))).await;
    let events = state["state"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.name", "m.room.join_rules"] {
        assert!(kinds.contains(&kind), "{kind} missing: {state}");
    }
    let name = events.iter().find(|e| e["type"] == "m.room.name").unwrap();
    assert_eq!(name["content"]["name"], "Secret");
    assert_eq!(name["room_id"], room);
    assert!(name["event_id"].is_string() && name["sender"] == alice.user_id.as_str());
    assert_eq!(
        status(&alice, Method::GET, &format!("{ADMIN}/v1/rooms/{}/state", enc(&room)), None).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
    );
    assert_eq!(
        status(&admin, Method::GET, &format!("{ADMIN}/v1/rooms/{}/state", enc("!nowhere:localhost")), None).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".into())
    );
    assert_eq!(
        status(&admin, Method::GET, &format!("{ADMIN}/v1/rooms/not-a-room/state"), None).await,
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_joins_a_local_user_to_public_and_to_invite_only_rooms() {
    let (s, admin) = server().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let join = |target: &str| format!("{ADMIN}/v1/join/{}", enc(target));

    // A public room, by its alias.
    let public = alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "lobby" })).await;
    let answer = admin.post(&join("#lobby:localhost"), json!({ "user_id": bob.user_id })).await;
    assert_eq!(answer, json!({ "room_id": public }));
    assert!(joined_rooms(&bob).await.contains(&public));

    // An invite-only room the admin is not in: the admin cannot invite.
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let (code, _) = status(&admin, Method::POST, &join(&private), Some(json!({ "user_id": bob.user_id }))).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(!joined_rooms(&bob).await.contains(&private));
    // The admin's own invite-only room: invited, then joined.
    let own = admin.create_room(json!({ "preset": "private_chat" })).await;
    assert_eq!(admin.post(&join(&own), json!({ "user_id": bob.user_id })).await["room_id"], own);
    assert!(joined_rooms(&bob).await.contains(&own), "bob was joined to the admin's private room");
    let members =
        alice.request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&own)), None).await;
    assert_eq!(members.status, StatusCode::FORBIDDEN, "alice is not in it");
    let seen = admin.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&own))).await;
    assert!(seen["joined"].get(&bob.user_id).is_some(), "{seen}");

    let cases = [
        (json!({}), StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        (json!({ "user_id": "@someone:elsewhere.test" }), StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        (json!({ "user_id": "@ghost:localhost" }), StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        (json!({ "user_id": 7 }), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
    ];
    for (body, want, errcode) in cases {
        assert_eq!(
            status(&admin, Method::POST, &join(&public), Some(body.clone())).await,
            (want, errcode.into()),
            "{body}"
        );
    }
    assert_eq!(
        status(&admin, Method::POST, &join("lobby"), Some(json!({ "user_id": bob.user_id }))).await,
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into())
    );
    assert_eq!(
        status(&bob, Method::POST, &join(&public), Some(json!({ "user_id": alice.user_id }))).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_room_admin_grants_the_highest_local_power_and_invites_into_a_private_room() {
    let (s, admin) = server().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let make = |room: &str| format!("{ADMIN}/v1/rooms/{}/make_room_admin", enc(room));

    // Room version 10: alice, the creator, holds 100 and grants it.
    let v10 = alice.create_room(json!({ "preset": "private_chat", "room_version": "10" })).await;
    assert_eq!(admin.post(&make(&v10), json!({})).await, json!({}), "the caller by default");
    assert_eq!(power_of(&alice, &v10, &admin.user_id).await, 100);
    let invites = admin.sync(None, 0).await;
    assert!(invites["rooms"]["invite"].get(&v10).is_some(), "invited to the private room: {invites}");
    admin.post(&format!("/_matrix/client/v3/join/{}", enc(&v10)), json!({})).await;

    // The default room version privileges its creator: the user gets 100.
    let v12 = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&v12)), json!({})).await;
    assert_eq!(admin.post(&make(&v12), json!({ "user_id": bob.user_id })).await, json!({}));
    assert_eq!(power_of(&alice, &v12, &bob.user_id).await, 100);
    // Bob can now do what only a room admin may.
    bob.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&v12)), json!({ "name": "Bob's now" }))
        .await;

    // Nobody local is left who may change the power levels.
    let lonely = alice.create_room(json!({ "preset": "public_chat", "room_version": "10" })).await;
    alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&lonely)), json!({})).await;
    assert_eq!(
        status(&admin, Method::POST, &make(&lonely), Some(json!({}))).await,
        (StatusCode::BAD_REQUEST, "M_UNKNOWN".into())
    );
    assert_eq!(
        status(&admin, Method::POST, &make(&v10), Some(json!({ "user_id": "@x:elsewhere.test" }))).await,
        (StatusCode::BAD_REQUEST, "M_UNKNOWN".into())
    );
    assert_eq!(
        status(&admin, Method::POST, &make("!nowhere:localhost"), Some(json!({}))).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".into())
    );
    assert_eq!(
        status(&bob, Method::POST, &make(&v10), Some(json!({}))).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_logs_in_as_a_user_and_gets_a_working_token() {
    let (s, admin) = server().await;
    let alice = s.register("alice").await;
    let login = |user: &str| format!("{ADMIN}/v1/users/{}/login", enc(user));
    let answer = admin.post(&login(&alice.user_id), json!({})).await;
    let token = answer["access_token"].as_str().expect("a token").to_owned();
    let as_alice = Client { token, ..alice.clone() };
    assert_eq!(as_alice.get("/_matrix/client/v3/account/whoami").await["user_id"], alice.user_id);
    assert_eq!(
        status(&admin, Method::POST, &login(&admin.user_id), Some(json!({}))).await,
        (StatusCode::BAD_REQUEST, "M_UNKNOWN".into()),
        "not as oneself"
    );
    assert_eq!(
        status(&admin, Method::POST, &login(&alice.user_id), Some(json!({ "valid_until_ms": 1 }))).await,
        (StatusCode::BAD_REQUEST, "M_UNKNOWN".into())
    );
    assert_eq!(
        status(&admin, Method::POST, &login("@ghost:localhost"), Some(json!({}))).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".into())
    );
    assert_eq!(
        status(&alice, Method::POST, &login(&admin.user_id), Some(json!({}))).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
    );
    s.stop().await;
}
