//! Guest access (Client-Server API §"Guest Access"), driven the way a client
//! does it: `register?kind=guest`, the endpoints a guest may and may not call,
//! `m.room.guest_access`, and upgrading a guest to a full account.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc, http};
use serde_json::{Value, json};

fn joined_members(state: &Value) -> Vec<String> {
    state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reads_and_talks_only_where_guests_can_join() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let guest = s.register_guest().await;
    assert!(guest.user_id.starts_with('@') && guest.user_id.ends_with(":localhost"), "{}", guest.user_id);

    let who = guest.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(who["is_guest"], true, "{who}");
    assert_eq!(alice.get("/_matrix/client/v3/account/whoami").await["is_guest"], false);

    // What a guest may not do.
    let r = guest.request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"));

    // A room without m.room.guest_access refuses the guest, even though it is public.
    let closed = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = guest.request(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&closed)), Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));

    // A room that lets guests join: the guest joins, talks, and alice sees it.
    let open = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.guest_access", "state_key": "", "content": { "guest_access": "can_join" } }],
        }))
        .await;
    guest.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&open)), json!({})).await;
    let event_id = guest.send_text(&open, "hello from a guest").await;
    let sync = alice.sync(None, 0).await;
    let timeline = sync["rooms"]["join"][&open]["timeline"]["events"].as_array().unwrap();
    let seen = timeline.iter().find(|e| e["event_id"] == event_id.as_str());
    assert_eq!(seen.map(|e| e["sender"].clone()), Some(json!(guest.user_id)), "{sync}");
    // Reading is allowed too.
    let page = guest.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&open))).await;
    assert!(page["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == event_id.as_str()), "{page}");
    // But changing room state is not an endpoint guests have.
    let r = guest
        .request(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&open)),
            Some(json!({ "topic": "guest topic" })),
        )
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"));

    // Guest access ends: the server makes the guest leave.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&open)),
            json!({ "guest_access": "forbidden" }),
        )
        .await;
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&open))).await;
    let members = joined_members(&state);
    assert!(!members.contains(&guest.user_id), "the guest is still joined: {members:?}");
    assert!(members.contains(&alice.user_id));
    let r = guest
        .request(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/after-revoke", enc(&open)),
            Some(json!({ "msgtype": "m.text", "body": "still here?" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&r.body));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_upgrades_to_a_full_account_under_the_same_id() {
    let s = TestServer::open("localhost").await;
    let guest = s.register_guest().await;
    let localpart = guest.user_id.trim_start_matches('@').split(':').next().unwrap().to_owned();

    // Another localpart is refused; the guest's own is accepted after the dummy stage.
    let body = json!({
        "username": "someone-else",
        "password": "pass-word-9",
        "guest_access_token": guest.token,
        "auth": { "type": "m.login.dummy" },
    });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&r.body));
    let body = json!({ "username": localpart, "password": "pass-word-9", "guest_access_token": guest.token });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the dummy stage first: {}", String::from_utf8_lossy(&r.body));
    let body = json!({
        "username": localpart,
        "password": "pass-word-9",
        "guest_access_token": guest.token,
        "auth": { "type": "m.login.dummy" },
    });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], guest.user_id.as_str());

    // No longer a guest: the old token may now create rooms, and the password logs in.
    assert_eq!(guest.get("/_matrix/client/v3/account/whoami").await["is_guest"], false);
    let r = guest.request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let login = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": guest.user_id },
        "password": "pass-word-9",
    });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(login.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], guest.user_id.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_are_refused_when_registration_is_closed_or_guests_are_off() {
    let closed = TestServer::start("localhost").await;
    let r = http(closed.client, Method::POST, "/_matrix/client/v3/register?kind=guest", Some(b"{}")).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"));
    closed.stop().await;

    let no_guests = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.registration.guests = false;
    })
    .await;
    let r = http(no_guests.client, Method::POST, "/_matrix/client/v3/register?kind=guest", Some(b"{}")).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"));
    // An unknown kind is a bad parameter, not a user registration.
    let r = http(no_guests.client, Method::POST, "/_matrix/client/v3/register?kind=robot", Some(b"{}")).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_UNRECOGNIZED"));
    no_guests.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_stays_a_guest_across_a_restart() {
    let s = TestServer::open("localhost").await;
    let guest = s.register_guest().await;
    let s = s.restart().await;
    let guest = Client { addr: s.client, ..guest };
    assert_eq!(guest.get("/_matrix/client/v3/account/whoami").await["is_guest"], true);
    let r = guest.request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({}))).await;
    assert_eq!(r.errcode(), "M_GUEST_ACCESS_FORBIDDEN");
    s.stop().await;
}

/// Waits until `viewer` sees `user`'s membership in `room` become `want`.
async fn wait_membership(viewer: &Client, room: &str, user: &str, want: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(room), enc(user));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = viewer.request(Method::GET, &path, None).await;
        let now = if r.status == StatusCode::OK { r.json()["membership"].as_str().map(str::to_owned) } else { None };
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user} in {room} is {now:?}, not {want}, as {} sees it",
            viewer.user_id
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn guest_access(value: &str) -> Value {
    json!([{ "type": "m.room.guest_access", "state_key": "", "content": { "guest_access": value } }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_server_ending_guest_access_makes_our_guests_leave() {
    let (a, b) = myelin_suite::federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let guest = a.register_guest().await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": guest_access("can_join"),
            "power_level_content_override": { "users": { bob.user_id.clone(): 50 } },
        }))
        .await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    guest.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    wait_membership(&bob, &room, &guest.user_id, "join").await;

    // bob, on the other server, ends guest access; a.test makes its guest leave.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&room)),
        json!({ "guest_access": "forbidden" }),
    )
    .await;
    wait_membership(&alice, &room, &guest.user_id, "leave").await;
    wait_membership(&bob, &room, &guest.user_id, "leave").await;
    wait_membership(&alice, &room, &alice.user_id, "join").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_joins_a_remote_room_only_if_it_lets_guests_join() {
    let (a, b) = myelin_suite::federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let bob = b.register("bob").await;
    let guest = a.register_guest().await;
    let welcoming =
        bob.create_room(json!({ "preset": "private_chat", "initial_state": guest_access("can_join") })).await;
    let closed = bob.create_room(json!({ "preset": "private_chat", "initial_state": guest_access("forbidden") })).await;
    for room in [&welcoming, &closed] {
        bob.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(room)), json!({ "user_id": guest.user_id })).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let s = guest.sync(None, 0).await;
        if s["rooms"]["invite"].get(&welcoming).is_some() && s["rooms"]["invite"].get(&closed).is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the invites never reached the guest: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    guest.post(&format!("/_matrix/client/v3/join/{}", enc(&welcoming)), json!({})).await;
    wait_membership(&bob, &welcoming, &guest.user_id, "join").await;

    let r = guest.request(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&closed)), Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    wait_membership(&bob, &closed, &guest.user_id, "leave").await;
    a.stop().await;
    b.stop().await;
}

fn is_matrix_4xx(r: &myelin_suite::Reply) -> bool {
    r.status.is_client_error() && serde_json::from_slice::<Value>(&r.body).is_ok_and(|j| j["errcode"].is_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typed_guest_registration_bodies_get_400() {
    let s = TestServer::open("localhost").await;
    let guest = s.register_guest().await;
    let localpart = guest.user_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let dummy = json!({ "type": "m.login.dummy" });
    let cases = [
        ("?kind=guest", json!([])),
        ("?kind=guest", json!("guest")),
        ("?kind=guest", json!({ "initial_device_display_name": 5 })),
        ("", json!({ "username": localpart, "password": "pass-word-9", "guest_access_token": 5, "auth": dummy })),
        (
            "",
            json!({ "username": localpart, "password": "pass-word-9", "guest_access_token": [guest.token], "auth": dummy }),
        ),
        ("", json!({ "username": localpart, "password": 7, "guest_access_token": guest.token, "auth": dummy })),
    ];
    let mut failures = Vec::new();
    for (query, body) in &cases {
        let path = format!("/_matrix/client/v3/register{query}");
        let r = http(s.client, Method::POST, &path, Some(body.to_string().as_bytes())).await;
        if !(r.status == StatusCode::BAD_REQUEST && is_matrix_4xx(&r)) {
            failures.push(format!("{path} {body}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
    }
    assert!(failures.is_empty(), "not a 400 with an errcode:\n{}", failures.join("\n"));
    // None of them upgraded the guest.
    assert_eq!(guest.get("/_matrix/client/v3/account/whoami").await["is_guest"], true);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_sending_garbage_path_parameters_gets_a_matrix_4xx() {
    let s = TestServer::open("localhost").await;
    let guest = s.register_guest().await;
    let v3 = "/_matrix/client/v3";
    let mut failures = Vec::new();
    for g in ["not-a-room", "%00", "..", "%FF%FE", "!", "@", "#nope:localhost"] {
        let cases = [
            (Method::POST, format!("{v3}/join/{g}")),
            (Method::POST, format!("{v3}/rooms/{g}/join")),
            (Method::GET, format!("{v3}/rooms/{g}/messages?dir=b")),
            (Method::GET, format!("{v3}/rooms/{g}/state")),
            (Method::PUT, format!("{v3}/rooms/{g}/send/m.room.message/t1")),
            (Method::GET, format!("{v3}/profile/{g}")),
        ];
        for (method, path) in cases {
            let r = guest.request(method.clone(), &path, Some(json!({ "msgtype": "m.text", "body": "x" }))).await;
            if !is_matrix_4xx(&r) {
                failures.push(format!("{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
            }
        }
    }
    assert!(failures.is_empty(), "not a Matrix 4xx:\n{}", failures.join("\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_upgrade_twice_at_once_upgrades_once() {
    let s = TestServer::open("localhost").await;
    let guest = s.register_guest().await;
    let localpart = guest.user_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let body = json!({
        "username": localpart,
        "password": "pass-word-9",
        "guest_access_token": guest.token,
        "auth": { "type": "m.login.dummy" },
    })
    .to_string();
    let (a, b) = tokio::join!(
        http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.as_bytes())),
        http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.as_bytes())),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::FORBIDDEN],
        "one upgrade, one refusal: {} / {}",
        String::from_utf8_lossy(&a.body),
        String::from_utf8_lossy(&b.body)
    );
    let upgraded = if a.status == StatusCode::OK { a.json() } else { b.json() };
    assert_eq!(upgraded["user_id"], guest.user_id.as_str());
    // One device was added by the upgrade, beside the guest's own.
    let devices = guest.get("/_matrix/client/v3/devices").await;
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(2), "{devices}");
    s.stop().await;
}
