//! Every event wakes every long-poll that should see it (issue #22 §2): four
//! members of one room hold `/sync` long-polls (20 s timeout) while a driver
//! makes messages, topic changes, joins and leaves, server ACL changes and
//! read receipts, in bursts of one to three back to back. After each burst the
//! driver waits until every member's `/sync` has returned every event of it.
//!
//! A lost wake-up (a window between "read the position" and "wait") leaves a
//! member waiting for its long-poll's timeout, 20 s: the test fails if any
//! delivery takes longer than 5 s. That bound is about correctness, not speed;
//! the delivery-time distribution is printed (`--no-capture`) and recorded in
//! BENCHMARKS.md. `MYELIN_WAKE_OPS` sets the number of operations (400 by
//! default: 1,600 deliveries).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::Method;
use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

const MEMBERS: usize = 4;
const LOST_WAKE: Duration = Duration::from_secs(5);

/// What the members' sync loops have seen: `(member, tag)` → when.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<(usize, String), Instant>>,
    /// Event id → tag of the receipt op that points at it.
    receipt_tags: Mutex<HashMap<String, String>>,
    changed: tokio::sync::Notify,
}

/// The op tags carried by one `/sync` answer's room section.
fn tags(room: &Value, receipt_tags: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for section in ["timeline", "state"] {
        for e in room[section]["events"].as_array().into_iter().flatten() {
            let c = &e["content"];
            let tag = match e["type"].as_str() {
                Some("m.room.message") => c["body"].as_str(),
                Some("m.room.topic") => c["topic"].as_str(),
                Some("m.room.member") => c["reason"].as_str(),
                Some("m.room.server_acl") => c["deny"][0].as_str(),
                _ => None,
            };
            if let Some(tag) = tag.filter(|t| t.starts_with("op-")) {
                out.push(tag.trim_end_matches(".invalid").to_owned());
            }
        }
    }
    for e in room["ephemeral"]["events"].as_array().into_iter().flatten() {
        if e["type"] == "m.receipt"
            && let Some(events) = e["content"].as_object()
        {
            out.extend(events.keys().filter_map(|id| receipt_tags.get(id).cloned()));
        }
    }
    out
}

async fn sync_loop(member: usize, c: Client, room: String, seen: Arc<Seen>) {
    let first = c.sync(None, 0).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    loop {
        let path = format!("/_matrix/client/v3/sync?since={since}&timeout=20000");
        let r = c.request(Method::GET, &path, None).await;
        assert_eq!(r.status, http::StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let answer = r.json();
        let now = Instant::now();
        let found = tags(&answer["rooms"]["join"][&room], &seen.receipt_tags.lock().unwrap());
        {
            let mut at = seen.at.lock().unwrap();
            for tag in found {
                at.entry((member, tag)).or_insert(now);
            }
        }
        seen.changed.notify_waiters();
        since = answer["next_batch"].as_str().unwrap().to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_wakes_every_members_long_poll() {
    let ops: usize = std::env::var("MYELIN_WAKE_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let s = TestServer::start_with("wakes.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
    })
    .await;
    let driver = s.register("driver").await;
    let joiner = s.register("joiner").await;
    let room = driver.create_room(json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let m = s.register(&format!("member{i}")).await;
        m.post(&format!("/_matrix/client/v3/rooms/{r}/join"), json!({})).await;
        members.push(m);
    }
    let seen = Arc::new(Seen::default());
    let loops: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, m)| tokio::spawn(sync_loop(i, m.clone(), room.clone(), seen.clone())))
        .collect();
    // Each loop has made its initial sync and is waiting in a long-poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut joined, mut last_message) = (false, None::<String>);
    let mut latencies = Vec::with_capacity(ops * MEMBERS);
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    let mut n = 0;
    while n < ops {
        let burst = 1 + (next() % 3) as usize;
        let mut sent = Vec::new();
        for _ in 0..burst.min(ops - n) {
            let tag = format!("op-{n}");
            n += 1;
            let kind = match next() % 5 {
                4 if last_message.is_some() => "receipt",
                0 | 4 => "message",
                1 => "topic",
                2 => "membership",
                _ => "acl",
            };
            let started = Instant::now();
            match kind {
                "message" => {
                    last_message = Some(driver.send_text(&room, &tag).await);
                }
                "topic" => {
                    driver
                        .put(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/"), json!({ "topic": tag }))
                        .await;
                }
                "membership" => {
                    let verb = if joined { "leave" } else { "join" };
                    joiner.post(&format!("/_matrix/client/v3/rooms/{r}/{verb}"), json!({ "reason": tag })).await;
                    joined = !joined;
                }
                "acl" => {
                    let content =
                        json!({ "allow": ["*"], "deny": [format!("{tag}.invalid")], "allow_ip_literals": true });
                    driver.put(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.server_acl/"), content).await;
                }
                _ => {
                    let event = last_message.take().unwrap();
                    seen.receipt_tags.lock().unwrap().insert(event.clone(), tag.clone());
                    driver
                        .post(&format!("/_matrix/client/v3/rooms/{r}/receipt/m.read/{}", enc(&event)), json!({}))
                        .await;
                }
            }
            *kinds.entry(kind).or_default() += 1;
            sent.push((tag, started));
        }
        // Every member receives every event of the burst.
        let waiting_since = Instant::now();
        loop {
            let notified = seen.changed.notified();
            let missing = {
                let at = seen.at.lock().unwrap();
                let mut missing = Vec::new();
                for (tag, _) in &sent {
                    for m in 0..MEMBERS {
                        if !at.contains_key(&(m, tag.clone())) {
                            missing.push((m, tag.clone()));
                        }
                    }
                }
                missing
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                waiting_since.elapsed() < LOST_WAKE,
                "a long-poll missed its wake-up: after {LOST_WAKE:?}, still not delivered (member, op): {missing:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
        let at = seen.at.lock().unwrap();
        for (tag, acked) in &sent {
            for m in 0..MEMBERS {
                latencies.push(at[&(m, tag.clone())].saturating_duration_since(*acked));
            }
        }
    }
    for l in loops {
        l.abort();
    }
    assert_eq!(latencies.len(), ops * MEMBERS);
    assert!(kinds.len() == 5, "every kind of event was made: {kinds:?}");
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let over = latencies.iter().filter(|l| **l > Duration::from_millis(100)).count();
    eprintln!(
        "sync wakes: {} deliveries ({ops} ops {kinds:?} × {MEMBERS} members); from the send's request: \
         p50 {:?}, p99 {:?}, max {:?}; {over} over 100 ms",
        latencies.len(),
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    );
}
