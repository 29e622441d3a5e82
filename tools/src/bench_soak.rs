//! `myelin bench soak`: many users, many rooms, many events, then every
//! acknowledged event read back.
//!
//! Acts through an application service (`--as-token`, a registration whose
//! user namespace holds `@soak-…` and whose `rate_limited` is false), so that
//! 100,000 users cost no password hashing and no logins: users are registered
//! with `m.login.application_service` and act through `?user_id=`. Phases:
//! register `users`; create `rooms` (each by one of the users); join every user
//! to `users / rooms` rooms in turn (so each room gets about that many
//! members); then `clients` concurrent senders send `events` messages spread
//! over all rooms and users; finally every room's history is paged with
//! `/messages` and each acknowledged event id must be found exactly once.
//!
//! With `--pid`, the server's RSS is read after each phase, so the report
//! gives memory per 1,000 users and per 1,000 rooms (`benches/soak.sh` runs the
//! server under a hard memory limit and records the figures).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use http::Method;
use serde_json::{Value, json};

use crate::{
    bench::{Conn, enc, run_id},
    bench_sliding::status_kib,
};

/// What `soak` measured.
#[derive(Debug)]
pub struct SoakReport {
    /// Users registered, rooms created, joins made, events acknowledged.
    pub users: usize,
    pub rooms: usize,
    pub joins: usize,
    pub events: usize,
    /// Seconds of each phase.
    pub register_s: f64,
    pub create_s: f64,
    pub join_s: f64,
    pub send_s: f64,
    pub verify_s: f64,
    /// Acknowledged events found again with `/messages`.
    pub readable: usize,
    /// Server RSS in KiB at the start and after each phase (with `--pid`).
    pub rss_kib: Vec<(String, u64)>,
    /// The server's peak RSS in KiB (with `--pid`).
    pub peak_rss_kib: Option<u64>,
}

impl SoakReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "soak", "users": self.users, "rooms": self.rooms, "joins": self.joins,
            "events": self.events, "readable": self.readable,
            "register_s": self.register_s, "create_s": self.create_s, "join_s": self.join_s,
            "send_s": self.send_s, "verify_s": self.verify_s,
            "events_per_second": self.events as f64 / self.send_s.max(1e-9),
            "rss_kib": self.rss_kib.iter().map(|(phase, kib)| json!({ "phase": phase, "kib": kib })).collect::<Vec<_>>(),
            "peak_rss_kib": self.peak_rss_kib,
        })
    }
}

/// Runs `jobs` on `clients` connections, at most `clients` at a time; returns each job's result.
async fn run_all<T, F, Fut>(base: &str, clients: usize, jobs: Vec<T>, f: F) -> Result<Vec<Value>, String>
where
    T: Send + 'static,
    F: Fn(Conn, T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Conn, Result<Value, String>)> + Send + 'static,
{
    let f = Arc::new(f);
    let queue = Arc::new(tokio::sync::Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    let results = Arc::new(tokio::sync::Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (queue, results, f) = (queue.clone(), results.clone(), f.clone());
        let mut conn = Conn::open(base).await?;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((i, job)) = queue.lock().await.pop() else { break };
                let (c, r) = f(conn, job).await;
                conn = c;
                results.lock().await.insert(i, r?);
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let mut results = std::mem::take(&mut *results.lock().await);
    Ok((0..results.len()).filter_map(|i| results.remove(&i)).collect())
}

/// The soak scenario (see the module documentation).
pub async fn soak(
    base: &str,
    as_token: &str,
    users: usize,
    rooms: usize,
    events: usize,
    clients: usize,
    pid: Option<u32>,
) -> Result<SoakReport, String> {
    let (users, rooms) = (users.max(1), rooms.max(1));
    let id = run_id();
    let token: Arc<str> = Arc::from(as_token);
    let mut rss = Vec::new();
    let mut sample = |phase: &str| {
        if let Some(kib) = pid.and_then(|p| status_kib(p, "VmRSS")) {
            eprintln!("bench soak: {phase}: RSS {} MiB", kib / 1024);
            rss.push((phase.to_owned(), kib));
        }
    };
    sample("start");
    let user_id = |u: usize| format!("soak-{id}-{u}");

    eprintln!("bench soak: registering {users} users");
    let t = Instant::now();
    let names: Vec<String> = (0..users).map(user_id).collect();
    let tok = token.clone();
    let registered = run_all(base, clients, names, move |mut conn, name| {
        let tok = tok.clone();
        async move {
            let body = json!({ "type": "m.login.application_service", "username": name, "inhibit_login": true });
            let r = conn.ok(Method::POST, "/_matrix/client/v3/register", Some(&tok), Some(body)).await;
            (conn, r)
        }
    })
    .await?;
    let full_ids: Vec<String> = registered
        .iter()
        .map(|j| j["user_id"].as_str().map(str::to_owned).ok_or_else(|| format!("register without user_id: {j}")))
        .collect::<Result<_, _>>()?;
    let register_s = t.elapsed().as_secs_f64();
    sample("users registered");

    eprintln!("bench soak: creating {rooms} rooms");
    let t = Instant::now();
    let creators: Vec<String> = (0..rooms).map(|r| full_ids[r % users].clone()).collect();
    let tok = token.clone();
    let created = run_all(base, clients, creators, move |mut conn, creator| {
        let tok = tok.clone();
        async move {
            let path = format!("/_matrix/client/v3/createRoom?user_id={}", enc(&creator));
            let r = conn.ok(Method::POST, &path, Some(&tok), Some(json!({ "preset": "public_chat" }))).await;
            (conn, r)
        }
    })
    .await?;
    let room_ids: Vec<String> = created
        .iter()
        .map(|j| j["room_id"].as_str().map(str::to_owned).ok_or_else(|| format!("createRoom without room_id: {j}")))
        .collect::<Result<_, _>>()?;
    let create_s = t.elapsed().as_secs_f64();
    sample("rooms created");

    // User u joins room u mod rooms; users below `rooms` created that room and are in it.
    eprintln!("bench soak: joining {users} users");
    let t = Instant::now();
    let mut members: Vec<Vec<String>> = (0..rooms).map(|r| vec![full_ids[r % users].clone()]).collect();
    let mut joins = Vec::new();
    for u in rooms..users {
        members[u % rooms].push(full_ids[u].clone());
        joins.push((full_ids[u].clone(), room_ids[u % rooms].clone()));
    }
    let joined = joins.len();
    let tok = token.clone();
    run_all(base, clients, joins, move |mut conn, (user, room)| {
        let tok = tok.clone();
        async move {
            let path = format!("/_matrix/client/v3/join/{}?user_id={}", enc(&room), enc(&user));
            let r = conn.ok(Method::POST, &path, Some(&tok), Some(json!({}))).await;
            (conn, r)
        }
    })
    .await?;
    let join_s = t.elapsed().as_secs_f64();
    sample("users joined");

    eprintln!("bench soak: sending {events} events with {clients} clients");
    let t = Instant::now();
    let sends: Vec<(usize, String, String)> = (0..events)
        .map(|e| {
            let r = e % rooms;
            let m = &members[r];
            (e, room_ids[r].clone(), m[(e / rooms) % m.len()].clone())
        })
        .collect();
    let tok = token.clone();
    let acked = run_all(base, clients, sends, move |mut conn, (e, room, user)| {
        let tok = tok.clone();
        async move {
            let path =
                format!("/_matrix/client/v3/rooms/{}/send/m.room.message/s{e}?user_id={}", enc(&room), enc(&user));
            let body = json!({ "msgtype": "m.text", "body": format!("soak message {e}") });
            let r = conn.ok(Method::PUT, &path, Some(&tok), Some(body)).await;
            (conn, r)
        }
    })
    .await?;
    let acked: Vec<String> = acked
        .iter()
        .map(|j| j["event_id"].as_str().map(str::to_owned).ok_or_else(|| format!("send without event_id: {j}")))
        .collect::<Result<_, _>>()?;
    let send_s = t.elapsed().as_secs_f64();
    sample("events sent");

    eprintln!("bench soak: reading back {rooms} rooms");
    let t = Instant::now();
    let readers: Vec<(String, String)> =
        room_ids.iter().enumerate().map(|(r, room)| (room.clone(), full_ids[r % users].clone())).collect();
    let tok = token.clone();
    let pages = run_all(base, clients, readers, move |mut conn, (room, reader)| {
        let tok = tok.clone();
        async move {
            let mut ids = Vec::new();
            let mut from: Option<String> = None;
            let r = loop {
                let path = format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=500&user_id={}{}",
                    enc(&room),
                    enc(&reader),
                    from.as_deref().map(|f| format!("&from={}", enc(f))).unwrap_or_default()
                );
                let j = match conn.ok(Method::GET, &path, Some(&tok), None).await {
                    Ok(j) => j,
                    Err(e) => break Err(e),
                };
                let chunk = j["chunk"].as_array().cloned().unwrap_or_default();
                ids.extend(
                    chunk
                        .iter()
                        .filter(|e| e["type"] == "m.room.message")
                        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                        .map(Value::String),
                );
                match j["end"].as_str() {
                    Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                    _ => break Ok(Value::Array(std::mem::take(&mut ids))),
                }
            };
            (conn, r)
        }
    })
    .await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for page in &pages {
        for e in page.as_array().into_iter().flatten() {
            if let Some(e) = e.as_str() {
                *seen.entry(e.to_owned()).or_default() += 1;
            }
        }
    }
    let unique: HashSet<&String> = acked.iter().collect();
    if unique.len() != acked.len() {
        return Err(format!("{} sends were acknowledged with an event id given before", acked.len() - unique.len()));
    }
    let readable = acked.iter().filter(|e| seen.get(*e) == Some(&1)).count();
    let verify_s = t.elapsed().as_secs_f64();
    sample("read back");
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(SoakReport {
        users,
        rooms,
        joins: joined,
        events: acked.len(),
        register_s,
        create_s,
        join_s,
        send_s,
        verify_s,
        readable,
        rss_kib: rss,
        peak_rss_kib: pid.and_then(|p| status_kib(p, "VmHWM")),
    })
}
