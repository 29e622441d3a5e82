//! Which servers may federate: a runtime deny and its removal, and admin
//! operations (user deactivation, room shutdown) as the other server sees them.

use http::{Method, StatusCode};
use myelin_suite::{bodies, device_keys, enc, federation_pair, wait_for_text};
use serde_json::json;

async fn wait_until_not_joined(c: &myelin_suite::Client, room: &str, user: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = c.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room))).await;
        if members["joined"].get(user).is_none() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{} still lists {user}: {members}", c.user_id);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_a_user_and_shutting_a_room_down_reach_the_other_server() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    for u in [&bob, &carol] {
        u.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    }
    alice.send_text(&room, "everyone here").await;
    wait_for_text(&carol, &room, "everyone here").await;
    // Carol has encryption keys that A has fetched.
    carol
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&carol.user_id, &carol.device_id, "carol-curve") }),
        )
        .await;
    // B's device-list update for the upload can race alice's query: an answer
    // it overtook is passed on but not cached, and the next query asks again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let q =
            alice.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { carol.user_id.clone(): [] } })).await;
        assert!(q["device_keys"][&carol.user_id].get(&carol.device_id).is_some(), "{q}");
        if a.engine.e2ee.device_keys(&carol.user_id).unwrap().len() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A never kept what it fetched");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The operator of B deactivates carol through the admin socket.
    let data_dir = b.engine.config.data_dir.clone();
    let answer = myelin_api::admin::request(&data_dir, &json!({ "op": "user_deactivate", "name": "carol" }))
        .await
        .unwrap()
        .expect("the admin socket answers");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["rooms_left"], 1, "{answer}");
    wait_until_not_joined(&alice, &room, "@carol:b.test").await;
    let who = carol.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(who.status, StatusCode::UNAUTHORIZED, "a deactivated user's token is dead");
    // Her device's keys are gone from B and, told by a device-list update, from A's copy too.
    assert!(b.engine.e2ee.device_keys(&carol.user_id).unwrap().is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a.engine.e2ee.device_keys(&carol.user_id).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "A still holds carol's device keys");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Then shuts the room down on B: bob leaves, visibly on A, and cannot come back.
    let answer = myelin_api::admin::request(&data_dir, &json!({ "op": "room_shutdown", "room_id": room }))
        .await
        .unwrap()
        .expect("the admin socket answers");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["users_removed"], 1, "{answer}");
    wait_until_not_joined(&alice, &room, "@bob:b.test").await;
    let rejoin = bob
        .request(Method::POST, &format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), Some(json!({})))
        .await;
    assert_eq!(rejoin.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&rejoin.body));
    assert_eq!(rejoin.errcode(), "M_FORBIDDEN");
    let invite = alice
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(json!({ "user_id": "@bob:b.test" })),
        )
        .await;
    assert!(!invite.status.is_success(), "B refuses invites into a room it shut down");
    // The room itself lives on at A.
    alice.send_text(&room, "still here").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_deny_cuts_a_server_off_both_ways_and_removing_it_restores_delivery() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before the deny").await;
    wait_for_text(&bob, &room, "before the deny").await;

    let admin = |req: serde_json::Value| {
        let dir = a.engine.config.data_dir.clone();
        async move { myelin_api::admin::request(&dir, &req).await.unwrap().expect("the admin socket answers") }
    };
    assert_eq!(admin(json!({ "op": "federation_deny", "server": "b.test" })).await["ok"], true);
    let list = admin(json!({ "op": "federation_list" })).await;
    assert_eq!(list["entries"], json!([{ "server": "b.test", "list": "deny", "source": "runtime" }]));

    // Inbound from B is refused...
    let prof = bob.request(Method::GET, "/_matrix/client/v3/profile/%40alice%3Aa.test", None).await;
    assert_eq!(prof.status, StatusCode::NOT_FOUND, "B cannot query A: {}", String::from_utf8_lossy(&prof.body));
    // ...and nothing goes out to B.
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "while denied").await;
    let quiet = bob.sync(Some(&since), 1_500).await;
    assert!(!bodies(&quiet, &room).contains(&"while denied".to_owned()), "{quiet}");

    // Lifted: B's next contact wakes A's sender, and the queued message arrives.
    assert_eq!(admin(json!({ "op": "federation_remove", "server": "b.test" })).await["ok"], true);
    assert_eq!(admin(json!({ "op": "federation_remove", "server": "b.test" })).await["ok"], false);
    bob.send_text(&room, "are you there?").await;
    wait_for_text(&bob, &room, "while denied").await;
    wait_for_text(&alice, &room, "are you there?").await;
    a.stop().await;
    b.stop().await;
}
