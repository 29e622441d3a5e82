//! `myelin bench`: a load generator over the Client-Server API that works
//! against any homeserver URL (Myelin, Synapse, a Conduit-family server).
//!
//! Scenarios:
//! - `send`: C concurrent clients each send M messages into R rooms (client
//!   i uses room i mod R); reports events/s and request latency p50/p95/p99,
//!   then pages every room back with `/messages` and checks that every
//!   acknowledged event id is readable.
//! - `script`: two users alternate sending an N-line script into one room,
//!   each send waiting for the previous one (the shape of Conduit's "Romeo
//!   and Juliet" run); reports the total time.
//!
//! Users are registered with `m.login.dummy`, so the target needs open
//! registration and relaxed rate limits (the interop Synapse config has both).
//! Plain HTTP only: point it at the client listener on loopback.

mod federation;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

pub use federation::{federation, join};

/// Pause between a scenario's setup and its timed part, the same for every
/// server: the setup's own follow-up work (the remote join's federation
/// traffic, presence, background flushes) would otherwise share the first
/// part of a window that is ~150 ms long for a fast server (a 300-message
/// federation burst measured ~15% lower without it).
pub(crate) const SETTLE_AFTER_SETUP: Duration = Duration::from_secs(1);

/// One keep-alive HTTP/1.1 connection to the homeserver.
pub(crate) struct Conn {
    host: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub(crate) async fn open(base: &str) -> Result<Self, String> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("{base}: only http:// URLs are supported"))?
            .trim_end_matches('/')
            .to_owned();
        let tcp = TcpStream::connect(&host).await.map_err(|e| format!("connect {host}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { host, sender })
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let mut req = Request::builder().method(method).uri(path).header(http::header::HOST, &self.host);
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    pub(crate) async fn ok(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let (status, json) = self.call(method, path, token, body).await?;
        if status != 200 {
            return Err(format!("{path}: HTTP {status} {json}"));
        }
        Ok(json)
    }
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) fn run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}", nanos % 0xffff_ffff)
}

/// Registers a user; returns (access token, user id).
pub(crate) async fn register(conn: &mut Conn, name: &str) -> Result<(String, String), String> {
    register_device(conn, name).await.map(|(t, u, _)| (t, u))
}

/// Registers a user; returns (access token, user id, device id).
pub(crate) async fn register_device(conn: &mut Conn, name: &str) -> Result<(String, String, String), String> {
    let j = conn
        .ok(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({ "username": name, "password": "bench-pass-1", "auth": { "type": "m.login.dummy" } })),
        )
        .await?;
    match (j["access_token"].as_str(), j["user_id"].as_str(), j["device_id"].as_str()) {
        (Some(t), Some(u), Some(d)) => Ok((t.to_owned(), u.to_owned(), d.to_owned())),
        _ => Err(format!("register {name}: {j}")),
    }
}

/// Creates a public room with `extra` creation fields; returns its id.
pub(crate) async fn public_room(conn: &mut Conn, token: &str, mut extra: Value) -> Result<String, String> {
    extra["preset"] = json!("public_chat");
    let j = conn.ok(Method::POST, "/_matrix/client/v3/createRoom", Some(token), Some(extra)).await?;
    Ok(j["room_id"].as_str().ok_or("createRoom without room_id")?.to_owned())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What the send-shaped scenarios set up: an owner, its public rooms, and one
/// connected, joined sender per client (client i in room i mod R).
pub(crate) struct Setup {
    /// The owner's connection.
    pub conn: Conn,
    /// The owner's access token.
    pub owner: String,
    /// The rooms.
    pub rooms: Vec<String>,
    /// `(connection, access token, room)` per client.
    pub senders: Vec<(Conn, String, String)>,
}

/// Registers the owner and `clients` senders of run `id`, creates `rooms` rooms and joins each sender to one.
pub(crate) async fn setup(base: &str, id: &str, rooms: usize, clients: usize) -> Result<Setup, String> {
    let mut conn = Conn::open(base).await?;
    let (owner, _) = register(&mut conn, &format!("bench{id}owner")).await?;
    let mut room_ids = Vec::new();
    for i in 0..rooms {
        room_ids.push(public_room(&mut conn, &owner, json!({ "name": format!("bench {id} {i}") })).await?);
    }
    let mut senders = Vec::new();
    for c in 0..clients {
        let mut sender = Conn::open(base).await?;
        let (token, _) = register(&mut sender, &format!("bench{id}u{c}")).await?;
        let room = room_ids[c % rooms].clone();
        sender
            .ok(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&room)), Some(&token), Some(json!({})))
            .await?;
        senders.push((sender, token, room));
    }
    Ok(Setup { conn, owner, rooms: room_ids, senders })
}

/// Result of the `send` scenario.
pub struct SendReport {
    /// Events acknowledged.
    pub events: usize,
    /// Wall time of the sending phase.
    pub elapsed: Duration,
    /// Latency percentiles p50, p95, p99.
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    /// Acknowledged events found again with `/messages`.
    pub readable: usize,
}

/// `send`: `clients` concurrent senders, `messages` each, over `rooms` rooms.
pub async fn send(base: &str, rooms: usize, clients: usize, messages: usize) -> Result<SendReport, String> {
    let rooms = rooms.max(1);
    let id = run_id();
    let Setup { mut conn, owner: owner_token, rooms: room_ids, senders } = setup(base, &id, rooms, clients).await?;
    let setup = &mut conn;
    eprintln!("bench send: {clients} clients x {messages} messages into {rooms} rooms at {base}");
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, (mut conn, token, room)) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(messages);
            for m in 0..messages {
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/b{c}-{m}", enc(&room));
                let t = Instant::now();
                let j = conn
                    .ok(
                        Method::PUT,
                        &path,
                        Some(&token),
                        Some(json!({ "msgtype": "m.text", "body": format!("{c}/{m}") })),
                    )
                    .await?;
                let event_id = j["event_id"].as_str().ok_or("send without event_id")?.to_owned();
                out.push((t.elapsed(), room.clone(), event_id));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed();
    let mut latencies: Vec<Duration> = acked.iter().map(|(d, _, _)| *d).collect();
    latencies.sort();

    // Every acknowledged event must be readable.
    let mut seen = std::collections::HashSet::new();
    for room in &room_ids {
        let mut from: Option<String> = None;
        loop {
            let path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=500{}",
                enc(room),
                from.as_deref().map(|f| format!("&from={}", enc(f))).unwrap_or_default()
            );
            let j = setup.ok(Method::GET, &path, Some(&owner_token), None).await?;
            let chunk = j["chunk"].as_array().cloned().unwrap_or_default();
            for e in &chunk {
                if let Some(id) = e["event_id"].as_str() {
                    seen.insert(id.to_owned());
                }
            }
            match j["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
    }
    let readable = acked.iter().filter(|(_, _, id)| seen.contains(id)).count();
    Ok(SendReport {
        events: acked.len(),
        elapsed,
        p50: percentile(&latencies, 0.50),
        p95: percentile(&latencies, 0.95),
        p99: percentile(&latencies, 0.99),
        readable,
    })
}

/// `script`: two users alternate `lines` sequential sends in one room; returns the total time.
pub async fn script(base: &str, lines: usize) -> Result<Duration, String> {
    let id = run_id();
    let mut a = Conn::open(base).await?;
    let mut b = Conn::open(base).await?;
    let (ta, _) = register(&mut a, &format!("bench{id}romeo")).await?;
    let (tb, _) = register(&mut b, &format!("bench{id}juliet")).await?;
    let room = public_room(&mut a, &ta, json!({})).await?;
    b.ok(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&room)), Some(&tb), Some(json!({}))).await?;
    eprintln!("bench script: {lines} alternating lines at {base}");
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let start = Instant::now();
    for i in 0..lines {
        let (conn, token) = if i % 2 == 0 { (&mut a, &ta) } else { (&mut b, &tb) };
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/s{i}", enc(&room));
        conn.ok(Method::PUT, &path, Some(token), Some(json!({ "msgtype": "m.text", "body": format!("line {i}") })))
            .await?;
        if (i + 1) % 500 == 0 {
            eprintln!("  {} / {lines} lines, {:.1} s", i + 1, start.elapsed().as_secs_f64());
        }
    }
    Ok(start.elapsed())
}

/// Result of the `fanout` scenario.
pub struct FanoutReport {
    /// Deliveries observed (receivers × messages when complete).
    pub delivered: usize,
    /// Deliveries expected.
    pub expected: usize,
    /// Send-to-sync latency percentiles p50, p95, p99.
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

/// `fanout`: one sender, `receivers` users long-polling `/sync` in the same room;
/// the time from each send's start to its arrival at every receiver.
pub async fn fanout(base: &str, receivers: usize, messages: usize) -> Result<FanoutReport, String> {
    let id = run_id();
    let mut sender = Conn::open(base).await?;
    let (st, _) = register(&mut sender, &format!("bench{id}speaker")).await?;
    let room = public_room(&mut sender, &st, json!({})).await?;
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(receivers.max(1));
    for r in 0..receivers {
        let mut conn = Conn::open(base).await?;
        let (token, _) = register(&mut conn, &format!("bench{id}l{r}")).await?;
        conn.ok(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&room)), Some(&token), Some(json!({})))
            .await?;
        let (room, ready) = (room.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let first = conn.ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", Some(&token), None).await?;
            let mut since = first["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
            let _ = ready.send(()).await;
            let mut arrivals: Vec<(usize, Duration)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while arrivals.len() < messages && Instant::now() < deadline {
                let path = format!("/_matrix/client/v3/sync?timeout=10000&since={}", enc(&since));
                let j = conn.ok(Method::GET, &path, Some(&token), None).await?;
                let at = epoch.elapsed();
                since = j["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
                for e in j["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten() {
                    if let Some(n) = e["content"]["body"]
                        .as_str()
                        .and_then(|b| b.strip_prefix("fanout "))
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        arrivals.push((n, at));
                    }
                }
            }
            Ok::<_, String>(arrivals)
        }));
    }
    drop(ready_tx);
    for _ in 0..receivers {
        ready_rx.recv().await.ok_or("a receiver failed before its first sync")?;
    }
    eprintln!("bench fanout: 1 sender, {receivers} long-polling receivers, {messages} messages at {base}");
    let mut sent_at = Vec::with_capacity(messages);
    for m in 0..messages {
        sent_at.push(epoch.elapsed());
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/f{m}", enc(&room));
        sender
            .ok(Method::PUT, &path, Some(&st), Some(json!({ "msgtype": "m.text", "body": format!("fanout {m}") })))
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = Vec::new();
    for t in tasks {
        for (n, at) in t.await.map_err(|e| e.to_string())?? {
            if let Some(s) = sent_at.get(n) {
                latencies.push(at.saturating_sub(*s));
            }
        }
    }
    latencies.sort();
    Ok(FanoutReport {
        delivered: latencies.len(),
        expected: receivers * messages,
        p50: percentile(&latencies, 0.50),
        p95: percentile(&latencies, 0.95),
        p99: percentile(&latencies, 0.99),
    })
}
