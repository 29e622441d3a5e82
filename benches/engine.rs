//! Rooms engine benchmarks (issue 3).
//!
//! - `append/1_room`: local message appends, one sender, one room;
//! - `append/100_rooms`: 100 senders, one room each, appending concurrently;
//! - `lookup/one_key@N` and `lookup/whole_state@N`: current-state reads in a
//!   room after N events (N = 1,000 and 100,000; every 10th event is a new
//!   member's join, so the state grows to N/10 members);
//! - `resolve/1000_conflicted`: resolving a fork whose two branches each set
//!   500 distinct state keys (1,000 conflicted state events).
//!
//! Run: `cargo bench --bench engine`. It prints a summary table at the end.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use myelin_engine::{
    Config, Engine,
    rooms::{CreateRoom, NewEvent, Preset},
};
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UserId, events::TimelineEventType};
use serde_json::json;

fn user(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:bench")).unwrap()
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let mut config = Config { server_name: "bench".into(), data_dir: dir.to_owned(), ..Config::default() };
    config.storage.cache_mb = 256;
    Engine::open(config).unwrap()
}

async fn public_room(e: &Engine, creator: &UserId) -> OwnedRoomId {
    e.rooms
        .create_room(
            creator,
            CreateRoom { version: Some(RoomVersionId::V12), preset: Some(Preset::PublicChat), ..Default::default() },
        )
        .await
        .unwrap()
}

fn msg(i: usize) -> NewEvent {
    NewEvent::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": format!("message {i}") }))
}

/// Fills `room` up to `total` events; every 10th is a new member joining.
async fn fill(e: &Engine, room: &OwnedRoomId, from: usize, total: usize) {
    let alice = user("alice");
    for i in from..total {
        if i % 10 == 0 {
            let u = user(&format!("u{i}"));
            e.rooms
                .send(
                    &u,
                    room,
                    NewEvent::state(TimelineEventType::RoomMember, u.as_str(), json!({ "membership": "join" })),
                )
                .await
                .unwrap();
        } else {
            e.rooms.send(&alice, room, msg(i)).await.unwrap();
        }
    }
}

fn time_per_op(n: usize, f: impl FnMut()) -> Duration {
    let mut f = f;
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n as u32
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();

    // Appends, one room.
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let alice = user("alice");
    let room = rt.block_on(public_room(&e, &alice));
    let n = 3000;
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            e.rooms.send(&alice, &room, msg(i)).await.unwrap();
        }
    });
    let rate = n as f64 / started.elapsed().as_secs_f64();
    rows.push(("append/1_room (events/s)".into(), format!("{rate:.0}")));

    // Appends, 100 rooms in parallel.
    let rooms: Vec<OwnedRoomId> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..100 {
            v.push(public_room(&e, &user(&format!("c{i}"))).await);
        }
        v
    });
    let per_room = 60;
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, room) in rooms.iter().enumerate() {
            let (e, room, u) = (e.clone(), room.clone(), user(&format!("c{i}")));
            tasks.push(tokio::spawn(async move {
                for j in 0..per_room {
                    e.rooms.send(&u, &room, msg(j)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rate = (per_room * rooms.len()) as f64 / started.elapsed().as_secs_f64();
    rows.push(("append/100_rooms (events/s)".into(), format!("{rate:.0}")));
    e.shutdown();
    drop(e);

    // Lookups at depth 1k and 100k in the same room.
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let room = rt.block_on(public_room(&e, &alice));
    let mut filled = 0;
    for depth in [1_000usize, 100_000] {
        let started = Instant::now();
        rt.block_on(fill(&e, &room, filled, depth));
        filled = depth;
        eprintln!("filled {depth} events in {:.1} s", started.elapsed().as_secs_f64());
        let target = user("u500");
        let one = time_per_op(20_000, || {
            let p = e.rooms.state_event(&room, "m.room.member", target.as_str()).unwrap();
            assert!(p.is_some());
        });
        let whole = time_per_op(20, || {
            let s = e.rooms.current_state(&room).unwrap();
            assert!(s.len() > depth / 10);
        });
        let snapshot = e.rooms.current_snapshot(&room).unwrap();
        rows.push((format!("lookup/one_key@{depth} (µs)"), format!("{:.2}", one.as_secs_f64() * 1e6)));
        rows.push((
            format!("lookup/whole_state@{depth} (µs, {} entries)", e.rooms.state_at(snapshot).unwrap().len()),
            format!("{:.1}", whole.as_secs_f64() * 1e6),
        ));
    }
    e.shutdown();
    drop(e);

    // Resolution of 1,000 conflicted state events.
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let room = rt.block_on(public_room(&e, &alice));
    let fork = e.rooms.extremities(&room).unwrap();
    let tips = rt.block_on(async {
        let mut tips = Vec::new();
        for branch in ["a", "b"] {
            let mut prev = fork.clone();
            for i in 0..500 {
                let ev = NewEvent::state("org.example.setting", format!("{branch}{i}"), json!({ "v": i }));
                let p = e.rooms.send_at(&alice, &room, ev, prev).await.unwrap();
                prev = vec![p.event_id.clone()];
            }
            tips.push(prev[0].clone());
        }
        tips
    });
    let snapshots: Vec<u64> = tips.iter().map(|t| e.rooms.meta(t).unwrap().unwrap().state_after).collect();
    let per = time_per_op(5, || {
        let resolved = e.rooms.resolve_snapshots(&room, &snapshots).unwrap();
        assert!(resolved.len() >= 1000);
    });
    rows.push(("resolve/1000_conflicted (ms)".into(), format!("{:.1}", per.as_secs_f64() * 1e3)));
    e.shutdown();

    println!("\n| benchmark | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
