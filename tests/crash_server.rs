//! Power cuts (issue #22 §3): `myelin serve` under 8 concurrent writers in 4
//! rooms is killed with SIGKILL at random moments and restarted on the same
//! data, several cycles. Afterwards every event the server acknowledged is in
//! its room exactly once, each writer's events are in the order it sent them,
//! a send retried with the same transaction id after a restart returns the
//! event id of the first, and a `/sync` token issued before a kill still works.
//!
//! `MYELIN_CRASH_CYCLES` sets the number of kill/restart cycles (3 by
//! default, so `make test` stays short; `scripts/crash-long.sh` runs 100).
//! Restart-to-healthy times are printed (`cargo nextest … --no-capture`).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{enc, free_port, http, http_with, myelin_bin, procs::wait_serving};
use serde_json::{Value, json};

const WRITERS: usize = 8;
const ROOMS: usize = 4;

struct Serve {
    child: Child,
    client: SocketAddr,
}

/// How a test starts `myelin serve`: its folder, and for a federating server
/// its fixed federation port and configuration file.
#[derive(Clone, Copy)]
struct Setup<'a> {
    dir: &'a Path,
    federation: Option<u16>,
    config: Option<&'a Path>,
}

fn spawn(setup: Setup<'_>) -> Serve {
    let client = free_port();
    let federation = setup.federation.unwrap_or_else(free_port);
    let mut cmd = Command::new(myelin_bin());
    cmd.arg("serve");
    if let Some(config) = setup.config {
        cmd.arg("--config").arg(config);
    }
    let child = cmd
        .current_dir(setup.dir)
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
        .env("MYELIN_REGISTRATION__ENABLED", "true")
        .env("MYELIN_RATE_LIMIT__PER_SECOND", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Serve { child, client: format!("127.0.0.1:{client}").parse().unwrap() }
}

/// Starts the server and waits until it has bound its listeners and `/health`
/// answers; how long that took.
async fn start(dir: &Path) -> (Serve, Duration) {
    start_with(Setup { dir, federation: None, config: None }).await
}

async fn start_with(setup: Setup<'_>) -> (Serve, Duration) {
    let started = Instant::now();
    for _ in 0..3 {
        let mut s = spawn(setup);
        // False when a port was taken meanwhile: try fresh ones.
        if wait_serving(&mut s.child, &setup.dir.join("myelin-data")).await {
            assert_eq!(http(s.client, Method::GET, "/health", None).await.status, StatusCode::OK);
            return (s, started.elapsed());
        }
    }
    panic!("the server could not start three times");
}

async fn call(
    addr: SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<(StatusCode, Value)> {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("authorization", &auth)
            .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.ok()?.to_bytes();
        Some((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.ok().flatten()
}

/// Every message of `room` from the start, in order: `(event id, body)`.
async fn messages(addr: SocketAddr, token: &str, room: &str) -> Vec<(String, String)> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=500{}",
            enc(room),
            from.as_deref().map(|f| format!("&from={}", enc(f))).unwrap_or_default()
        );
        let (s, j) = call(addr, token, Method::GET, &path, None).await.unwrap();
        assert_eq!(s, StatusCode::OK, "{j}");
        let chunk = j["chunk"].as_array().cloned().unwrap_or_default();
        for e in &chunk {
            if e["type"] == "m.room.message" {
                bodies.push((
                    e["event_id"].as_str().unwrap().to_owned(),
                    e["content"]["body"].as_str().unwrap().to_owned(),
                ));
            }
        }
        match j["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    bodies
}

/// One writer's record: acknowledged `(txn id, event id)` in send order, and
/// the txn ids whose answer the kill cut off.
#[derive(Default)]
struct Record {
    acked: Vec<(String, String)>,
    cut_off: Vec<String>,
    next: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_exactly_once_and_in_order() {
    let cycles: usize = std::env::var("MYELIN_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, _) = start(dir.path()).await;

    // Set-up: 8 writers, 4 rooms, 2 writers each.
    let mut tokens = Vec::new();
    for i in 0..WRITERS {
        let body =
            json!({ "username": format!("w{i}"), "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
        let r =
            http(serve.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
        assert_eq!(r.status, StatusCode::OK);
        tokens.push(r.json()["access_token"].as_str().unwrap().to_owned());
    }
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let auth = format!("Bearer {}", tokens[r * 2]);
        let reply = http_with(
            serve.client,
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({ "preset": "public_chat" }).to_string().as_bytes()),
            &[("authorization", &auth)],
        )
        .await;
        let room = reply.json()["room_id"].as_str().unwrap().to_owned();
        let (s, _) = call(
            serve.client,
            &tokens[r * 2 + 1],
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await
        .unwrap();
        assert_eq!(s, StatusCode::OK);
        rooms.push(room);
    }
    let records: Arc<Vec<Mutex<Record>>> = Arc::new((0..WRITERS).map(|_| Mutex::new(Record::default())).collect());
    let mut restarts = Vec::new();
    let mut old_tokens: Vec<String> = Vec::new();

    for cycle in 0..cycles {
        // A sync token from before the kill.
        let (_, sync) =
            call(serve.client, &tokens[0], Method::GET, "/_matrix/client/v3/sync?timeout=0", None).await.unwrap();
        old_tokens.push(sync["next_batch"].as_str().unwrap().to_owned());
        let addr = serve.client;
        let mut writers = Vec::new();
        for (w, token) in tokens.iter().enumerate() {
            let (token, room, records) = (token.clone(), rooms[w / 2].clone(), records.clone());
            writers.push(tokio::spawn(async move {
                loop {
                    let n = records[w].lock().unwrap().next;
                    let txn = format!("w{w}-{n}");
                    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
                    let body = json!({ "msgtype": "m.text", "body": format!("w{w} #{n}") });
                    match call(addr, &token, Method::PUT, &path, Some(body)).await {
                        Some((StatusCode::OK, j)) => {
                            let mut r = records[w].lock().unwrap();
                            r.acked.push((txn, j["event_id"].as_str().unwrap_or_default().to_owned()));
                            r.next += 1;
                        }
                        _ => {
                            // Killed mid-request (or refused while going down): the send may or
                            // may not have happened; it is retried with the same txn id later.
                            records[w].lock().unwrap().cut_off.push(txn);
                            return;
                        }
                    }
                }
            }));
        }
        // Rooms being created at the kill: each exists whole or not at all.
        {
            let (token, addr) = (tokens[0].clone(), serve.client);
            writers.push(tokio::spawn(async move {
                for n in 0.. {
                    let body = json!({ "name": format!("made in cycle {cycle} #{n}"), "topic": "whole or nothing" });
                    match call(addr, &token, Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await {
                        Some((StatusCode::OK, _)) => {}
                        _ => return,
                    }
                }
            }));
        }
        // A random moment: 150–650 ms into the burst.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        tokio::time::sleep(Duration::from_millis(150 + u64::from(nanos % 500))).await;
        serve.child.kill().unwrap(); // SIGKILL
        let _ = serve.child.wait();
        for w in writers {
            w.await.unwrap();
        }
        let (next, took) = start(dir.path()).await;
        serve = next;
        restarts.push(took);
        // A retried send returns the first's event id, or makes the event now.
        for (w, token) in tokens.iter().enumerate() {
            let cut: Vec<String> = std::mem::take(&mut records[w].lock().unwrap().cut_off);
            for txn in cut {
                let n: usize = txn.rsplit('-').next().unwrap().parse().unwrap();
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&rooms[w / 2]));
                let body = json!({ "msgtype": "m.text", "body": format!("w{w} #{n}") });
                let (s, j) = call(serve.client, token, Method::PUT, &path, Some(body)).await.unwrap();
                assert_eq!(s, StatusCode::OK, "retry of {txn} after restart {cycle}: {j}");
                let mut r = records[w].lock().unwrap();
                r.acked.push((txn, j["event_id"].as_str().unwrap().to_owned()));
                r.next = n + 1;
            }
            // An acknowledged one retried: the same event id, no new event.
            let last = records[w].lock().unwrap().acked.last().cloned();
            if let Some((txn, id)) = last {
                let n: usize = txn.rsplit('-').next().unwrap().parse().unwrap();
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&rooms[w / 2]));
                let body = json!({ "msgtype": "m.text", "body": format!("w{w} #{n}") });
                let (_, j) = call(serve.client, token, Method::PUT, &path, Some(body)).await.unwrap();
                assert_eq!(j["event_id"], id.as_str(), "txn {txn} answered a different event after restart {cycle}");
            }
        }
    }

    // Every acknowledged event is there exactly once, each writer's in order.
    for (r, room) in rooms.iter().enumerate() {
        let bodies = messages(serve.client, &tokens[r * 2], room).await;
        let ids: Vec<&String> = bodies.iter().map(|(id, _)| id).collect();
        let unique: HashSet<&String> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "an event appears twice in room {r}");
        let mut per_body: HashMap<&str, usize> = HashMap::new();
        for (_, b) in &bodies {
            *per_body.entry(b.as_str()).or_default() += 1;
        }
        assert!(per_body.values().all(|n| *n == 1), "a message was stored twice in room {r}: {per_body:?}");
        for w in [r * 2, r * 2 + 1] {
            let record = records[w].lock().unwrap();
            for (txn, id) in &record.acked {
                assert!(unique.contains(id), "acknowledged {txn} ({id}) is missing from room {r}");
            }
            let order: Vec<usize> = bodies
                .iter()
                .filter_map(|(_, b)| b.strip_prefix(&format!("w{w} #")).and_then(|n| n.parse().ok()))
                .collect();
            assert!(order.windows(2).all(|p| p[0] < p[1]), "writer {w}'s events out of order: {order:?}");
            assert_eq!(order.len(), record.acked.len(), "writer {w}: stored vs acknowledged");
        }
    }
    // Every room created around a kill has its whole initial state (the topic is its last event).
    let (_, joined) =
        call(serve.client, &tokens[0], Method::GET, "/_matrix/client/v3/joined_rooms", None).await.unwrap();
    let made: Vec<&str> = joined["joined_rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .filter(|r| !rooms.iter().any(|w| w == r))
        .collect();
    assert!(!made.is_empty(), "no room was created during the bursts");
    for room in &made {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room));
        let (s, j) = call(serve.client, &tokens[0], Method::GET, &path, None).await.unwrap();
        assert_eq!(s, StatusCode::OK, "room {room} was left half made by a kill: {j}");
    }
    // Sync tokens from before each kill still work.
    for t in &old_tokens {
        let (s, j) =
            call(serve.client, &tokens[0], Method::GET, &format!("/_matrix/client/v3/sync?timeout=0&since={t}"), None)
                .await
                .unwrap();
        assert_eq!(s, StatusCode::OK, "since={t}: {j}");
    }
    let acked: usize = records.iter().map(|r| r.lock().unwrap().acked.len()).sum();
    let mut sorted = restarts.clone();
    sorted.sort();
    eprintln!(
        "crash test: {cycles} kills, {acked} acknowledged events all present once, {} rooms made whole; \
         restart to healthy p50 {:?}, max {:?}",
        made.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    let _ = serve.child.kill();
    let _ = serve.child.wait();
}

/// Sends `signal` (`TERM`, `KILL`) to the server.
fn signal(serve: &Serve, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(serve.child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// Polls `room` on `addr` until every id of `wanted` is there; the messages then.
async fn until_present(addr: SocketAddr, token: &str, room: &str, wanted: &[String], what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let have: HashSet<String> = messages(addr, token, room).await.into_iter().map(|(id, _)| id).collect();
        let missing: Vec<&String> = wanted.iter().filter(|id| !have.contains(*id)).collect();
        if missing.is_empty() {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what}: {} never arrived: {missing:?}", missing.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A graceful stop during a burst (issue #22 §3): `myelin serve` federating
/// with a second server, four local writers and one remote writer in one room,
/// gets SIGTERM mid-burst. It exits 0 within its grace period; after a restart
/// every send it acknowledged is in the room once and in order, every one of
/// them reaches the other server (its outbound queue resumes), and every event
/// the other server acknowledged while this one was stopping or down arrives
/// here (the other side's queue resumes too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_federating_burst_loses_nothing_and_both_queues_resume() {
    const LOCAL: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (a_fed, b_fed) = (free_port(), free_port());
    let b = myelin_suite::TestServer::start_with("b.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
        c.federation.listen = format!("127.0.0.1:{b_fed}").parse().unwrap();
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), format!("127.0.0.1:{a_fed}").parse().unwrap());
    })
    .await;
    let config = dir.path().join("myelin.toml");
    let toml = format!(
        "server_name = \"a.test\"\n[federation]\nverify_tls = false\n[federation.hosts]\n\"b.test\" = \"127.0.0.1:{b_fed}\"\n"
    );
    std::fs::write(&config, toml).unwrap();
    let setup = Setup { dir: dir.path(), federation: Some(a_fed), config: Some(&config) };
    let (mut serve, _) = start_with(setup).await;

    let mut tokens = Vec::new();
    for i in 0..LOCAL {
        let body =
            json!({ "username": format!("w{i}"), "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
        let r =
            http(serve.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
        assert_eq!(r.status, StatusCode::OK);
        tokens.push(r.json()["access_token"].as_str().unwrap().to_owned());
    }
    let (_, created) = call(
        serve.client,
        &tokens[0],
        Method::POST,
        "/_matrix/client/v3/createRoom",
        Some(json!({ "preset": "public_chat" })),
    )
    .await
    .unwrap();
    let room = created["room_id"].as_str().unwrap().to_owned();
    let join = format!("/_matrix/client/v3/join/{}", enc(&room));
    for token in &tokens[1..] {
        let (s, _) = call(serve.client, token, Method::POST, &join, Some(json!({}))).await.unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    let bob = b.register("bob").await;
    bob.post(&format!("{join}?server_name=a.test"), json!({})).await;

    // The remote writer keeps going through the stop, the downtime and the restart.
    let stop_bob = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bob_writer = {
        let (bob, room, stop) = (bob.clone(), room.clone(), stop_bob.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/b{n}", enc(&room));
                let body = json!({ "msgtype": "m.text", "body": format!("bob #{n}") });
                if let Some((StatusCode::OK, j)) = call(bob.addr, &bob.token, Method::PUT, &path, Some(body)).await {
                    acked.push(j["event_id"].as_str().unwrap().to_owned());
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    let records: Arc<Vec<Mutex<Record>>> = Arc::new((0..LOCAL).map(|_| Mutex::new(Record::default())).collect());
    let mut writers = Vec::new();
    for (w, token) in tokens.iter().enumerate() {
        let (token, room, records, addr) = (token.clone(), room.clone(), records.clone(), serve.client);
        writers.push(tokio::spawn(async move {
            loop {
                let n = records[w].lock().unwrap().next;
                let txn = format!("w{w}-{n}");
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
                let body = json!({ "msgtype": "m.text", "body": format!("w{w} #{n}") });
                match call(addr, &token, Method::PUT, &path, Some(body)).await {
                    Some((StatusCode::OK, j)) => {
                        let mut r = records[w].lock().unwrap();
                        r.acked.push((txn, j["event_id"].as_str().unwrap_or_default().to_owned()));
                        r.next += 1;
                    }
                    _ => {
                        records[w].lock().unwrap().cut_off.push(txn);
                        return;
                    }
                }
            }
        }));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    tokio::time::sleep(Duration::from_millis(300 + u64::from(nanos % 500))).await;
    signal(&serve, "TERM");
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(stopping.elapsed() < Duration::from_secs(30), "SIGTERM: still running after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "SIGTERM must stop the server cleanly");
    let stopped_in = stopping.elapsed();
    for w in writers {
        w.await.unwrap();
    }
    // Down for a moment while the other server keeps sending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (next, _) = start_with(setup).await;
    serve = next;
    // What was acknowledged before the stop reaches the other server with no new
    // local event to wake the queue: the restart itself resumes it.
    let before_stop: Vec<String> = records
        .iter()
        .flat_map(|r| r.lock().unwrap().acked.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>())
        .collect();
    let resumed = until_present(b.client, &bob.token, &room, &before_stop, "our events on the other server").await;
    for (w, token) in tokens.iter().enumerate() {
        let cut: Vec<String> = std::mem::take(&mut records[w].lock().unwrap().cut_off);
        for txn in cut {
            let n: usize = txn.rsplit('-').next().unwrap().parse().unwrap();
            let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
            let body = json!({ "msgtype": "m.text", "body": format!("w{w} #{n}") });
            let (s, j) = call(serve.client, token, Method::PUT, &path, Some(body)).await.unwrap();
            assert_eq!(s, StatusCode::OK, "retry of {txn} after the restart: {j}");
            records[w].lock().unwrap().acked.push((txn, j["event_id"].as_str().unwrap().to_owned()));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_bob.store(true, std::sync::atomic::Ordering::Relaxed);
    let bobs = bob_writer.await.unwrap();

    // Here: every local acknowledged send once and in order; every remote one arrived.
    let ours: Vec<String> = records
        .iter()
        .flat_map(|r| r.lock().unwrap().acked.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>())
        .collect();
    let here = messages(serve.client, &tokens[0], &room).await;
    let ids: HashSet<&String> = here.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), here.len(), "an event appears twice");
    for (w, record) in records.iter().enumerate() {
        let record = record.lock().unwrap();
        let order: Vec<usize> =
            here.iter().filter_map(|(_, b)| b.strip_prefix(&format!("w{w} #")).and_then(|n| n.parse().ok())).collect();
        assert!(order.windows(2).all(|p| p[0] < p[1]), "writer {w}'s events out of order: {order:?}");
        assert_eq!(order.len(), record.acked.len(), "writer {w}: stored vs acknowledged");
        for (txn, id) in &record.acked {
            assert!(ids.contains(id), "acknowledged {txn} ({id}) is missing");
        }
    }
    let inbound = until_present(serve.client, &tokens[0], &room, &bobs, "the other server's events here").await;
    until_present(b.client, &bob.token, &room, &ours, "our retried events on the other server").await;
    eprintln!(
        "sigterm test: {} local and {} remote events acknowledged, none lost; stopped in {stopped_in:?}; \
         after the restart the other server had ours within {resumed:?}, we had its within {inbound:?}",
        ours.len(),
        bobs.len()
    );
    assert!(!ours.is_empty() && !bobs.is_empty(), "the burst made no events");
    let _ = serve.child.kill();
    let _ = serve.child.wait();
}
