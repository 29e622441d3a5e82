//! Synapse admin API §"Purge History API" and the `purge` of a room deletion,
//! over real HTTP with the requests Synapse's documentation shows, checked from
//! the clients' side on both servers of a federated room.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

const ADMIN: &str = "/_synapse/admin";

async fn make_admin(s: &TestServer, c: &Client) {
    let user = ruma::UserId::parse(c.user_id.as_str()).unwrap();
    s.engine.users.set_admin(&user, true).await.unwrap();
}

/// Polls a status endpoint until `field` is no longer `busy`; returns the last answer.
async fn settled(admin: &Client, path: &str, busy: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = admin.get(path).await;
        if status["status"] != busy {
            return status;
        }
        assert!(Instant::now() < deadline, "{path} still {busy}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The message bodies `who` can page back through, oldest first.
async fn history(who: &Client, room: &str) -> Vec<String> {
    let page = who.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(room))).await;
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    bodies.reverse();
    bodies
}

async fn wait_for(who: &Client, room: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !history(who, room).await.iter().any(|b| b == body) {
        assert!(Instant::now() < deadline, "{} never saw {body:?}", who.user_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_history_deletes_remote_messages_before_the_point_on_this_server_only() {
    let (a, b) = myelin_suite::federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    make_admin(&a, &alice).await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "alice early").await;
    wait_for(&bob, &room, "alice early").await;
    let bob_early = bob.send_text(&room, "bob early").await;
    wait_for(&alice, &room, "bob early").await;
    let point = alice.send_text(&room, "the point").await;
    wait_for(&bob, &room, "the point").await;
    bob.send_text(&room, "bob late").await;
    wait_for(&alice, &room, "bob late").await;
    let search = json!({ "search_categories": { "room_events": { "search_term": "early" } } });
    let hits = |v: Value| v["search_categories"]["room_events"]["count"].as_u64();
    assert_eq!(hits(alice.post("/_matrix/client/v3/search", search.clone()).await), Some(2));

    // The documented request: the point in the path, local events kept (the default).
    let path = format!("{ADMIN}/v1/purge_history/{}/{}", enc(&room), enc(&point));
    let r = alice.request(Method::POST, &path, Some(json!({ "delete_local_events": false }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let purge_id = r.json()["purge_id"].as_str().unwrap().to_owned();
    let status = settled(&alice, &format!("{ADMIN}/v1/purge_history_status/{purge_id}"), "active").await;
    assert_eq!(status, json!({ "status": "complete" }));

    assert_eq!(history(&alice, &room).await, ["alice early", "the point", "bob late"]);
    let r = alice
        .request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&bob_early)), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a purged event is unknown");
    assert_eq!(hits(alice.post("/_matrix/client/v3/search", search.clone()).await), Some(1), "only alice's is found");
    // Bob's server keeps its own copy, and the room goes on both ways.
    assert_eq!(history(&bob, &room).await, ["alice early", "bob early", "the point", "bob late"]);
    bob.send_text(&room, "bob after").await;
    wait_for(&alice, &room, "bob after").await;
    alice.send_text(&room, "alice after").await;
    wait_for(&bob, &room, "alice after").await;

    // purge_up_to_ts with delete_local_events: everything sent before the time goes
    // but the room's last event before it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let path = format!("{ADMIN}/v1/purge_history/{}", enc(&room));
    let body = json!({ "delete_local_events": true, "purge_up_to_ts": now + 60_000 });
    let id = alice.post(&path, body).await["purge_id"].as_str().unwrap().to_owned();
    let status = settled(&alice, &format!("{ADMIN}/v1/purge_history_status/{id}"), "active").await;
    assert_eq!(status["status"], "complete");
    assert_eq!(history(&alice, &room).await, ["alice after"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_refused_with_synapses_errors() {
    let s = TestServer::start_with("localhost", |c| c.registration.enabled = true).await;
    let admin = s.register("admin").await;
    make_admin(&s, &admin).await;
    let carol = s.register("carol").await;
    let room = admin.create_room(json!({})).await;
    let other = admin.create_room(json!({})).await;
    let in_other = admin.send_text(&other, "elsewhere").await;
    let purge = |room: &str| format!("{ADMIN}/v1/purge_history/{}", enc(room));
    let cases = [
        (purge(&room), json!({}), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (purge(&room), json!({ "purge_up_to_ts": "soon" }), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (purge(&room), json!({ "purge_up_to_ts": 1 }), StatusCode::BAD_REQUEST, "M_NOT_FOUND"),
        (purge(&room), json!({ "purge_up_to_event_id": in_other }), StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        (purge(&room), json!({ "purge_up_to_event_id": "$nope" }), StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        (purge("!nope:localhost"), json!({ "purge_up_to_ts": 1 }), StatusCode::NOT_FOUND, "M_NOT_FOUND"),
    ];
    for (path, body, status, errcode) in cases {
        let r = admin.request(Method::POST, &path, Some(body.clone())).await;
        assert_eq!((r.status, r.errcode()), (status, errcode.to_owned()), "{path} {body}");
    }
    let r = carol.request(Method::POST, &purge(&room), Some(json!({ "purge_up_to_ts": 1 }))).await;
    assert_eq!((r.status, r.errcode()), (StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned()));
    let r = admin.request(Method::GET, &format!("{ADMIN}/v1/purge_history_status/nope"), None).await;
    assert_eq!((r.status, r.errcode()), (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned()));
    assert_eq!(history(&admin, &other).await, ["elsewhere"], "nothing was purged by the refusals");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_with_purge_deletes_its_messages() {
    let s = TestServer::start_with("localhost", |c| c.registration.enabled = true).await;
    let admin = s.register("admin").await;
    make_admin(&s, &admin).await;
    let dave = s.register("dave").await;
    let kept = dave.create_room(json!({})).await;
    let gone = dave.create_room(json!({})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(dave.send_text(&gone, &format!("message {i}")).await);
    }
    let kept_id = dave.send_text(&kept, "not this one").await;
    let r = admin.request(Method::DELETE, &format!("{ADMIN}/v2/rooms/{}", enc(&gone)), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let delete_id = r.json()["delete_id"].as_str().unwrap().to_owned();
    let status = settled(&admin, &format!("{ADMIN}/v2/rooms/delete_status/{delete_id}"), "purging").await;
    assert_eq!(status["status"], "complete", "{status}");
    for id in &ids {
        let held = s.engine.rooms.pdu(&ruma::EventId::parse(id).unwrap()).unwrap();
        assert!(held.is_none(), "{id} should be purged with the room");
    }
    assert!(s.engine.rooms.pdu(&ruma::EventId::parse(&kept_id).unwrap()).unwrap().is_some());
    assert_eq!(history(&dave, &kept).await, ["not this one"]);
    // `purge: false` keeps the messages, as Synapse.
    let third = dave.create_room(json!({})).await;
    let stays = dave.send_text(&third, "stays").await;
    let body = json!({ "purge": false });
    let id = admin.request(Method::DELETE, &format!("{ADMIN}/v2/rooms/{}", enc(&third)), Some(body)).await.json()
        ["delete_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = settled(&admin, &format!("{ADMIN}/v2/rooms/delete_status/{id}"), "purging").await;
    assert_eq!(status["status"], "complete");
    assert!(s.engine.rooms.pdu(&ruma::EventId::parse(&stays).unwrap()).unwrap().is_some());
    s.stop().await;
}
