//! Client transaction ids (Client-Server API §"Transaction identifiers"):
//! any number of concurrent or repeated requests with one access token and
//! one transaction id make one event (or one to-device delivery) and all get
//! its answer.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

/// `n` copies of one PUT at once; every answer must be 200; returns their JSON.
async fn at_once(c: &Client, path: &str, body: Value, n: usize) -> Vec<Value> {
    let replies =
        futures_util::future::join_all((0..n).map(|_| c.request(Method::PUT, path, Some(body.clone())))).await;
    replies
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::OK, "PUT {path}: {}", String::from_utf8_lossy(&r.body));
            r.json()
        })
        .collect()
}

fn same_event_id(answers: &[Value]) -> String {
    let id = answers[0]["event_id"].as_str().unwrap().to_owned();
    for a in answers {
        assert_eq!(a["event_id"], id, "one transaction id, one event: {answers:?}");
    }
    id
}

async fn timeline(c: &Client, room: &str) -> Vec<Value> {
    let page = c.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=500", enc(room))).await;
    page["chunk"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_with_one_txn_id_make_one_event() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for round in 0..4 {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/txn-{round}", enc(&room));
        let body = json!({ "msgtype": "m.text", "body": format!("round {round}") });
        let id = same_event_id(&at_once(&alice, &path, body.clone(), 8).await);
        // And once more afterwards: still the same event.
        assert_eq!(same_event_id(&at_once(&alice, &path, body, 1).await), id);
        let events = timeline(&alice, &room).await;
        let copies = events.iter().filter(|e| e["content"]["body"] == format!("round {round}")).count();
        assert_eq!(copies, 1, "round {round}: one event in the timeline");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redactions_with_one_txn_id_make_one_redaction() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for round in 0..3 {
        let target = alice.send_text(&room, &format!("to redact {round}")).await;
        let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/red-{round}", enc(&room), enc(&target));
        let id = same_event_id(&at_once(&alice, &path, json!({ "reason": "oops" }), 8).await);
        let events = timeline(&alice, &room).await;
        let redactions: Vec<_> =
            events.iter().filter(|e| e["type"] == "m.room.redaction" && e["redacts"] == target.as_str()).collect();
        assert_eq!(redactions.len(), 1, "round {round}: {redactions:?}");
        assert_eq!(redactions[0]["event_id"], id);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_to_device_sends_with_one_txn_id_are_delivered_once() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let mut since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for round in 0..3 {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test.once/td-{round}");
        let body = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "round": round } } } });
        at_once(&alice, &path, body, 8).await;
        let s = bob.sync(Some(&since), 0).await;
        since = s["next_batch"].as_str().unwrap().to_owned();
        let got: Vec<_> =
            s["to_device"]["events"].as_array().unwrap().iter().filter(|e| e["type"] == "m.test.once").collect();
        assert_eq!(got.len(), 1, "round {round}: delivered once: {got:?}");
        assert_eq!(got[0]["content"]["round"], round);
    }
    s.stop().await;
}
