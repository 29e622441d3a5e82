//! `myelin bench sliding`: simplified sliding sync (MSC4186) for an account in many rooms.
//!
//! Set-up: one account in `rooms` rooms with a message each; `big` of them also
//! hold `members` other users. Then, with Element X's room-list request (list
//! `all_rooms`, range `[0, window-1]`, `timeline_limit` 1 and its 17
//! `required_state` rules, account data, receipts and typing extensions):
//! - **first**: a new connection's first answer, `samples` times (each on its
//!   own `conn_id`, so every one is a first answer);
//! - **incremental**: one message sent into a room (acknowledged), then the
//!   connection's next answer from its `pos`, `samples` times; each answer must
//!   carry that message, or the run fails.
//!
//! Reports p50/p99 of both, and with `--pid` the server's RSS after the set-up and
//! after the `2 × samples + 1` connections, and its peak RSS. Works against any server that serves MSC4186.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use crate::bench::{Conn, enc, percentile, public_room, register, run_id};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Result of the `sliding` scenario.
pub struct SlidingReport {
    /// First answers of new connections: p50, p99.
    pub first: (Duration, Duration),
    /// Answers after one new message: p50, p99.
    pub incremental: (Duration, Duration),
    /// Rooms in the account's list, as the server counted them.
    pub count: u64,
    /// The server's resident memory (KiB) after the set-up and after the measurements,
    /// when its process id was given.
    pub rss_kib: Option<(u64, u64)>,
    /// The server's peak resident memory (KiB) over its life, read after the measurements.
    pub peak_rss_kib: Option<u64>,
}

/// A memory field (`VmRSS`, `VmHWM`) of process `pid`, in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Element X's room-list request (matrix-sdk-ui 0.18 `RoomListService`).
fn room_list_request(conn_id: &str, window: usize) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all_rooms": {
            "ranges": [[0, window.saturating_sub(1)]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
                ["m.room.topic", ""], ["m.room.avatar", ""], ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
                ["org.matrix.msc3401.call.member", "*"], ["m.room.join_rules", ""], ["m.room.tombstone", ""],
                ["m.room.create", ""], ["m.room.history_visibility", ""], ["io.element.functional_members", ""],
                ["m.space.parent", "*"], ["m.space.child", "*"], ["org.matrix.msc3672.beacon_info", "*"]
            ],
            "filters": {},
        }},
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

/// `sliding`: see the module documentation.
pub async fn sliding(
    base: &str,
    rooms: usize,
    big: usize,
    members: usize,
    window: usize,
    samples: usize,
    pid: Option<u32>,
) -> Result<SlidingReport, String> {
    let id = run_id();
    let mut conn = Conn::open(base).await?;
    let (token, _) = register(&mut conn, &format!("bench{id}ss")).await?;
    eprintln!("bench sliding: {rooms} rooms ({big} with {members} members) at {base}");
    let mut room_ids = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let room = public_room(&mut conn, &token, json!({ "name": format!("ss {id} {i}") })).await?;
        let txn = format!("s{i}");
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
        conn.ok(Method::PUT, &path, Some(&token), Some(json!({ "msgtype": "m.text", "body": format!("m{i}") })))
            .await?;
        room_ids.push(room);
    }
    // Members join the big rooms, a few at a time.
    let big_rooms: Vec<String> = room_ids.iter().take(big).cloned().collect();
    let mut joiners = Vec::new();
    for m in 0..members {
        let (base, id, big_rooms) = (base.to_owned(), id.clone(), big_rooms.clone());
        joiners.push(tokio::spawn(async move {
            let mut conn = Conn::open(&base).await?;
            let (t, _) = register(&mut conn, &format!("bench{id}m{m}")).await?;
            for room in &big_rooms {
                conn.ok(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(room)), Some(&t), Some(json!({})))
                    .await?;
            }
            Ok::<(), String>(())
        }));
        if joiners.len() == 8 {
            for j in joiners.drain(..) {
                j.await.map_err(|e| e.to_string())??;
            }
        }
    }
    for j in joiners {
        j.await.map_err(|e| e.to_string())??;
    }
    eprintln!("bench sliding: set up; measuring {samples} first and {samples} incremental answers");
    tokio::time::sleep(crate::bench::SETTLE_AFTER_SETUP).await;
    let rss_before = pid.and_then(|p| status_kib(p, "VmRSS"));

    let mut first = Vec::with_capacity(samples);
    let mut count = 0;
    for n in 0..samples {
        let body = room_list_request(&format!("first-{n}"), window);
        let started = Instant::now();
        let r = conn.ok(Method::POST, &format!("{SS}?timeout=0"), Some(&token), Some(body)).await?;
        first.push(started.elapsed());
        count = r["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0);
        let got = r["rooms"].as_object().map_or(0, |m| m.len());
        if got != window.min(rooms) {
            return Err(format!("a first answer held {got} rooms, not {}", window.min(rooms)));
        }
    }

    let body = room_list_request("incremental", window);
    let r = conn.ok(Method::POST, &format!("{SS}?timeout=0"), Some(&token), Some(body.clone())).await?;
    let mut pos = r["pos"].as_str().ok_or("no pos")?.to_owned();
    let mut sender = Conn::open(base).await?;
    let mut incremental = Vec::with_capacity(samples);
    for n in 0..samples {
        let room = &room_ids[n % rooms];
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/i{n}", enc(room));
        let text = format!("incremental {n}");
        sender.ok(Method::PUT, &path, Some(&token), Some(json!({ "msgtype": "m.text", "body": text }))).await?;
        let started = Instant::now();
        let r = conn
            .ok(Method::POST, &format!("{SS}?pos={}&timeout=10000", enc(&pos)), Some(&token), Some(body.clone()))
            .await?;
        incremental.push(started.elapsed());
        let carried = r["rooms"][room.as_str()]["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["content"]["body"].as_str() == Some(text.as_str())));
        if !carried {
            return Err(format!("the answer after message {n} did not carry it: {r}"));
        }
        pos = r["pos"].as_str().ok_or("no pos")?.to_owned();
    }
    let rss = pid.and_then(|p| status_kib(p, "VmRSS")).zip(rss_before).map(|(after, before)| (before, after));
    let peak_rss_kib = pid.and_then(|p| status_kib(p, "VmHWM"));
    first.sort();
    incremental.sort();
    Ok(SlidingReport {
        first: (percentile(&first, 0.5), percentile(&first, 0.99)),
        incremental: (percentile(&incremental, 0.5), percentile(&incremental, 0.99)),
        count,
        rss_kib: rss,
        peak_rss_kib,
    })
}
