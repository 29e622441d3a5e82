//! Outbound delivery: a server down while messages queue, a long queue taken
//! batch by batch, retried transactions, and to-device messages across restarts.

use http::{Method, StatusCode};
use myelin_suite::{enc, federation_pair, signed_put, sync_until, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_server_is_down_all_arrive_once_after_it_returns() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before the outage").await;
    wait_for_text(&bob, &room, "before the outage").await;

    // B goes down; A keeps talking, and its sender fails and backs off.
    let b_fed = b.federation;
    let mut b = b;
    b.halt().await;
    for i in 0..25 {
        alice.send_text(&room, &format!("during outage {i}")).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{destination=\"b.test\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} for b.test in:\n{text}"))
    };
    let depth = gauge("myelin_federation_queue_depth");
    assert!((1.0..=25.0).contains(&depth), "queue depth {depth}");
    assert!(gauge("myelin_federation_queue_oldest_age_seconds") > 0.5);
    let stored = a.engine.backoffs.get("b.test").unwrap().expect("A stored B's backoff");
    assert!(stored.step_ms >= 1000, "{stored:?}");
    assert_eq!(gauge("myelin_federation_destination_parked"), 0.0, "failing, not parked");
    // The operator sees the destination backing off with its queue.
    let queue = myelin_api::admin::request(&a.engine.config.data_dir, &json!({ "op": "federation_queue" }))
        .await
        .unwrap()
        .expect("the admin socket answers");
    let row = queue["destinations"].as_array().and_then(|d| d.iter().find(|d| d["destination"] == "b.test"));
    let row = row.unwrap_or_else(|| panic!("b.test is listed: {queue}"));
    assert_eq!(row["state"], "backoff", "{row}");
    assert!(row["depth"].as_u64().is_some_and(|d| d >= 25), "{row}");
    assert!(row["oldest_age_s"].as_u64().is_some() && row["failing_for_s"].as_u64().is_some(), "{row}");

    // B comes back on the same data and address; bob pokes A (any signed request
    // counts as a sign of life), and everything A queued arrives.
    let b = b.restart().await;
    assert_eq!(b.federation, b_fed);
    bob.addr = b.client;
    let prof = bob.request(Method::GET, "/_matrix/client/v3/profile/%40alice%3Aa.test", None).await;
    assert_eq!(prof.status, StatusCode::OK);
    wait_for_text(&bob, &room, "during outage 24").await;
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room))).await;
    let got: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with("during outage"))
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..25).rev().map(|i| format!("during outage {i}")).collect();
    assert_eq!(got, want, "every message exactly once, in order");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while a.engine.backoffs.get("b.test").unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the backoff outlived a delivered transaction");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_is_taken_in_order_batch_by_batch_and_found_again_after_it_emptied() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "before").await;
    wait_for_text(&bob, &room, "before").await;

    // B is away while A queues 120 events; they are taken here as the sender would,
    // 50 at a time, each batch marked delivered before the next is read.
    let mut b = b;
    b.halt().await;
    let mut sent = Vec::new();
    for i in 0..120 {
        alice.send_text(&room, &format!("queued {i}")).await;
        sent.push(format!("queued {i}"));
    }
    let dest = a.engine.rooms.server_short("b.test").unwrap().expect("B was queued to");
    assert!(a.engine.rooms.outbound_destinations().unwrap().iter().any(|(d, _)| *d == dest));
    let mut taken = Vec::new();
    loop {
        let batch = a.engine.rooms.outbound_batch(dest, 50, 100).unwrap();
        if batch.seqs().is_empty() {
            break;
        }
        assert!(batch.pdus.len() <= 50);
        taken.extend(batch.pdus.iter().map(|(_, p)| body_of(p)));
        a.engine.rooms.outbound_delivered(dest, &batch).await.unwrap();
    }
    assert_eq!(taken, sent, "every queued event once, in order");
    assert_eq!(a.engine.rooms.outbound_depth(dest, 1000).unwrap(), 0);
    assert!(!a.engine.rooms.outbound_destinations().unwrap().iter().any(|(d, _)| *d == dest));

    // A new event after the queue emptied is found again.
    alice.send_text(&room, "later").await;
    assert!(a.engine.rooms.outbound_destinations().unwrap().iter().any(|(d, _)| *d == dest));
    let batch = a.engine.rooms.outbound_batch(dest, 50, 100).unwrap();
    assert_eq!(batch.pdus.iter().map(|(_, p)| body_of(p)).collect::<Vec<_>>(), ["later"]);
    a.stop().await;
    b.stop().await;
}

/// The message body of a queued PDU (stored bytes).
fn body_of(pdu: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(pdu).unwrap();
    json["content"]["body"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_message_survives_the_sender_restarting_while_the_receiver_is_down() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let mut b = b;
    b.halt().await;
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key/durable1",
            json!({ "messages": { "@bob:b.test": { bob.device_id.clone(): { "session": "s1" } } } }),
        )
        .await;
    // A restarts before B is back: an in-memory queue would have lost the message.
    let a = a.restart().await;
    let b = b.restart().await;
    bob.addr = b.client;
    let prof = bob.request(Method::GET, "/_matrix/client/v3/profile/%40alice%3Aa.test", None).await;
    assert_eq!(prof.status, StatusCode::OK, "a sign of life to A");
    let s = sync_until(&bob, &since, "the to-device message", |s| {
        s["to_device"]["events"].as_array().is_some_and(|e| e.iter().any(|e| e["type"] == "m.room_key"))
    })
    .await;
    let e = s["to_device"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.room_key").unwrap().clone();
    assert_eq!(e["sender"], "@alice:a.test");
    assert_eq!(e["content"]["session"], "s1");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_and_a_resent_to_device_message_are_applied_once_even_across_a_restart() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let mut bob = b.register("bob").await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let edu = |message_id: &str, n: u64| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": "@alice:a.test", "type": "m.test.count", "message_id": message_id,
            "messages": { "@bob:b.test": { bob.device_id.clone(): { "n": n } } },
        }})
    };
    let txn =
        |edus: Vec<serde_json::Value>| json!({ "origin": "a.test", "origin_server_ts": 1, "pdus": [], "edus": edus });
    let first = txn(vec![edu("m1", 1)]);
    assert_eq!(signed_put(&a, &b, "/_matrix/federation/v1/send/t-1", &first).await.status, StatusCode::OK);
    let b = b.restart().await;
    bob.addr = b.client;
    // The same transaction again, and the same message under another transaction id.
    assert_eq!(signed_put(&a, &b, "/_matrix/federation/v1/send/t-1", &first).await.status, StatusCode::OK);
    let second = txn(vec![edu("m1", 1), edu("m2", 2)]);
    assert_eq!(signed_put(&a, &b, "/_matrix/federation/v1/send/t-2", &second).await.status, StatusCode::OK);
    let s = sync_until(&bob, &since, "message m2", |s| {
        s["to_device"]["events"].as_array().is_some_and(|e| e.iter().any(|e| e["content"]["n"] == 2))
    })
    .await;
    let ns: Vec<u64> =
        s["to_device"]["events"].as_array().unwrap().iter().filter_map(|e| e["content"]["n"].as_u64()).collect();
    assert_eq!(ns, vec![1, 2], "each message once");
    a.stop().await;
    b.stop().await;
}

/// A message from `sender` (a user of `signer`) on `host`'s head of `room`, signed by `signer`.
async fn remote_message(
    host: &myelin_suite::TestServer,
    signer: &myelin_suite::TestServer,
    sender: &str,
    room: &str,
    body: &str,
) -> serde_json::Value {
    use myelin_engine::rooms::NewEvent;
    let room_id = ruma::RoomId::parse(room).unwrap();
    let sender = ruma::UserId::parse(sender).unwrap();
    let event = NewEvent::message("m.room.message", json!({ "msgtype": "m.text", "body": body }));
    let mut template = host.engine.rooms.template(&sender, &room_id, event).await.unwrap();
    let version = host.engine.rooms.room_version(&room_id).unwrap();
    let rules = myelin_engine::rooms::version::rules(&version).unwrap();
    signer.engine.keys.hash_and_sign_event(&mut template, &rules).unwrap();
    serde_json::to_value(&template).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_transaction_id_gets_the_first_answer_byte_for_byte_and_concurrent_copies_run_once() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let mut alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    alice.send_text(&room, "settled").await;
    wait_for_text(&bob, &room, "settled").await;
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let txn = |pdus: Vec<serde_json::Value>, edus: Vec<serde_json::Value>| json!({ "origin": "b.test", "origin_server_ts": 1, "pdus": pdus, "edus": edus });

    // 1. Replayed with other content: the first answer, and nothing of the second applied.
    let first = remote_message(&a, &b, "@bob:b.test", &room, "first").await;
    let r1 = signed_put(&b, &a, "/_matrix/federation/v1/send/dup-1", &txn(vec![first], vec![])).await;
    assert_eq!(r1.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r1.body));
    assert_eq!(r1.json()["pdus"].as_object().map(|m| m.len()), Some(1), "{}", String::from_utf8_lossy(&r1.body));
    let other = remote_message(&a, &b, "@bob:b.test", &room, "replayed").await;
    let r2 = signed_put(&b, &a, "/_matrix/federation/v1/send/dup-1", &txn(vec![other], vec![])).await;
    assert_eq!(r2.status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&r2.body), String::from_utf8_lossy(&r1.body), "the stored first answer");

    // 2. Eight identical copies at once (a to-device message without a message id,
    //    so only the transaction id can keep it from arriving twice).
    let pdu = remote_message(&a, &b, "@bob:b.test", &room, "concurrent").await;
    let edu = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": "@bob:b.test", "type": "m.test.once",
        "messages": { "@alice:a.test": { alice.device_id.clone(): { "n": 1 } } },
    }});
    let body = txn(vec![pdu], vec![edu]);
    let replies =
        futures_util::future::join_all((0..8).map(|_| signed_put(&b, &a, "/_matrix/federation/v1/send/dup-2", &body)))
            .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, replies[0].body, "every copy gets the same answer");
    }
    assert_eq!(replies[0].json()["pdus"].as_object().map(|m| m.len()), Some(1));

    // 3. Across a restart: still the first answer.
    let a = a.restart().await;
    alice.addr = a.client;
    let r3 = signed_put(&b, &a, "/_matrix/federation/v1/send/dup-1", &txn(vec![], vec![])).await;
    assert_eq!(String::from_utf8_lossy(&r3.body), String::from_utf8_lossy(&r1.body), "kept across a restart");

    let s = sync_until(&alice, &since, "the concurrent message and the to-device message", |s| {
        myelin_suite::bodies(s, &room).iter().any(|b| b == "concurrent")
            && s["to_device"]["events"].as_array().is_some_and(|e| e.iter().any(|e| e["type"] == "m.test.once"))
    })
    .await;
    let bodies = myelin_suite::bodies(&s, &room);
    assert!(!bodies.iter().any(|b| b == "replayed"), "the replay's content was not applied: {bodies:?}");
    let once: Vec<_> =
        s["to_device"]["events"].as_array().unwrap().iter().filter(|e| e["type"] == "m.test.once").collect();
    assert_eq!(once.len(), 1, "the to-device message arrived once: {once:?}");
    a.stop().await;
    b.stop().await;
}
