//! Multi-step operations are all or nothing (issue #22 §3): a `createRoom`
//! that fails part way leaves no room, no alias and no directory entry; two
//! creations racing for one alias make one room, not a second without it.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc};
use serde_json::json;

async fn joined_rooms(c: &Client) -> Vec<String> {
    let j = c.get("/_matrix/client/v3/joined_rooms").await;
    j["joined_rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect()
}

async fn public_room_ids(c: &Client) -> Vec<String> {
    let j = c.get("/_matrix/client/v3/publicRooms?limit=100").await;
    j["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_the_rules_refuse_part_way_leaves_no_room_alias_or_directory_entry() {
    let s = TestServer::open("atomic.test").await;
    let alice = s.register("alice").await;
    // Version 10 (creators are not above the power levels): initial_state takes the
    // creator's power away, so the `name` event that follows it is refused — after
    // the create, join, power levels, join rules and initial state events were made.
    let body = json!({
        "room_version": "10",
        "preset": "public_chat",
        "visibility": "public",
        "room_alias_name": "half",
        "name": "never named",
        "initial_state": [{
            "type": "m.room.power_levels", "state_key": "",
            "content": { "users": {}, "users_default": 0, "state_default": 100, "events_default": 0 },
        }],
    });
    let r = alice.request(Method::POST, "/_matrix/client/v3/createRoom", Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(joined_rooms(&alice).await, Vec::<String>::new(), "a half-made room is left behind");
    assert!(public_room_ids(&alice).await.is_empty(), "the refused room was published");
    let alias = enc("#half:atomic.test");
    let r = alice.request(Method::GET, &format!("/_matrix/client/v3/directory/room/{alias}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "the refused room's alias exists");
    let initial = alice.sync(None, 0).await;
    assert!(
        initial["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()),
        "the refused room reaches /sync: {initial}"
    );

    // The alias is free and the same creation without the bad state works, with everything.
    let mut ok = body;
    ok.as_object_mut().unwrap().remove("initial_state");
    let room = alice.create_room(ok).await;
    assert_eq!(joined_rooms(&alice).await, vec![room.clone()]);
    assert_eq!(public_room_ids(&alice).await, vec![room.clone()]);
    let r = alice.get(&format!("/_matrix/client/v3/directory/room/{alias}")).await;
    assert_eq!(r["room_id"], room.as_str());
    let name = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room))).await;
    assert_eq!(name["name"], "never named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_racing_for_one_alias_make_exactly_one_room() {
    let s = TestServer::open("atomic.test").await;
    let alice = s.register("alice").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({ "room_alias_name": "contested", "name": format!("try {i}") });
            alice.request(Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await
        }));
    }
    let mut made = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::OK => made.push(r.json()["room_id"].as_str().unwrap().to_owned()),
            StatusCode::BAD_REQUEST => assert_eq!(r.errcode(), "M_ROOM_IN_USE"),
            other => panic!("createRoom answered {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(made.len(), 1, "one creation wins the alias: {made:?}");
    assert_eq!(joined_rooms(&alice).await, made, "losers of the alias race left rooms behind");
    let r = alice.get(&format!("/_matrix/client/v3/directory/room/{}", enc("#contested:atomic.test"))).await;
    assert_eq!(r["room_id"], made[0].as_str());
}

/// Deactivation closes the account first and records what is left to do; a
/// crash right after that write (simulated by doing only that step and
/// restarting) is finished at the next start: the leaves reach the other
/// server and the record goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_cut_off_after_closing_the_account_is_finished_at_the_next_start() {
    let (a, b) = myelin_suite::federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    let own = alice.create_room(json!({})).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&shared)), json!({})).await;
    let alice_id = ruma::UserId::parse(alice.user_id.as_str()).unwrap();

    // Only the first step: the account is closed, the rooms are not left yet.
    let devices = a.engine.users.deactivate(&alice_id).await.unwrap();
    assert_eq!(devices, vec![alice.device_id.clone()]);
    assert_eq!(a.engine.users.unfinished_deactivations().unwrap().len(), 1);
    let a = a.restart().await;

    let member_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&shared), enc(&alice.user_id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if bob.get(&member_path).await["membership"] == "leave" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob's server never heard alice leave");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let memberships: Vec<(String, String)> = a
        .engine
        .rooms
        .rooms_of(alice.user_id.as_str())
        .unwrap()
        .into_iter()
        .map(|(room, m)| (room.to_string(), m.membership))
        .collect();
    assert!(memberships.contains(&(own.clone(), "leave".to_owned())), "{memberships:?}");
    assert!(memberships.contains(&(shared.clone(), "leave".to_owned())), "{memberships:?}");
    assert!(a.engine.users.unfinished_deactivations().unwrap().is_empty(), "the record of the work stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_deactivation_leaves_no_record_and_no_usable_token() {
    let s = TestServer::open("atomic.test").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let body = json!({ "auth": { "type": "m.login.password", "password": "pass-word-1",
        "identifier": { "type": "m.id.user", "user": alice.user_id } } });
    alice.post("/_matrix/client/v3/account/deactivate", body).await;
    assert!(s.engine.users.unfinished_deactivations().unwrap().is_empty());
    let r = alice.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let m = s.engine.rooms.rooms_of(alice.user_id.as_str()).unwrap();
    assert!(m.iter().any(|(r, m)| r.as_str() == room && m.membership == "leave"), "{m:?}");
}
