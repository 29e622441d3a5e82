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

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

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

/// Result of the `federation` scenario.
pub struct FederationReport {
    /// Messages sent on A.
    pub sent: usize,
    /// Messages seen in B's `/sync`.
    pub received: usize,
    /// From the first send to the last arrival on B.
    pub elapsed: Duration,
    /// Per-message send-to-arrival latency p50 and p99.
    pub p50: Duration,
    pub p99: Duration,
    /// Of the messages `/sync` never showed, how many B's room history
    /// (`/messages`, read once at the end) holds: stored, but not delivered.
    pub only_in_history: usize,
    /// When the last message was sent and when the first arrived on B (from the first send).
    pub last_sent: Duration,
    pub first_arrival: Duration,
}

/// The number `n` of a `fed n` message the federation scenario sent.
fn fed_number(event: &Value) -> Option<usize> {
    event["content"]["body"].as_str()?.strip_prefix("fed ")?.parse().ok()
}

/// `federation`: a user on server A sends `messages` as fast as acknowledged
/// (from `senders` connections at once) into a room that a user on server B
/// joined; the time until B's `/sync` has delivered every one.
pub async fn federation(
    url_a: &str,
    url_b: &str,
    server_a: &str,
    messages: usize,
    senders: usize,
) -> Result<FederationReport, String> {
    let senders = senders.max(1);
    let id = run_id();
    let mut a = Conn::open(url_a).await?;
    let mut b = Conn::open(url_b).await?;
    let (ta, _) = register(&mut a, &format!("bench{id}fa")).await?;
    let (tb, _) = register(&mut b, &format!("bench{id}fb")).await?;
    let room = public_room(&mut a, &ta, json!({})).await?;
    b.ok(
        Method::POST,
        &format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(server_a)),
        Some(&tb),
        Some(json!({})),
    )
    .await?;
    let first = b.ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", Some(&tb), None).await?;
    let mut since = first["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
    eprintln!("bench federation: {messages} messages from {url_a} ({senders} sender(s)) to a user on {url_b}");
    drop(a);
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let epoch = Instant::now();
    // Sender k sends messages k, k + senders, …, each as soon as its previous one is acknowledged.
    let mut tasks = Vec::new();
    for k in 0..senders {
        let (url_a, room, ta) = (url_a.to_owned(), room.clone(), ta.clone());
        tasks.push(tokio::spawn(async move {
            let mut a = Conn::open(&url_a).await?;
            let mut sent_at = Vec::new();
            for m in (k..messages).step_by(senders) {
                sent_at.push((m, epoch.elapsed()));
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/x{m}", enc(&room));
                a.ok(Method::PUT, &path, Some(&ta), Some(json!({ "msgtype": "m.text", "body": format!("fed {m}") })))
                    .await?;
            }
            Ok::<_, String>(sent_at)
        }));
    }
    let sender = tokio::spawn(async move {
        let mut sent_at = vec![Duration::ZERO; messages];
        for t in tasks {
            for (m, at) in t.await.map_err(|e| e.to_string())?? {
                sent_at[m] = at;
            }
        }
        Ok::<_, String>(sent_at)
    });
    let mut arrivals: std::collections::HashMap<usize, Duration> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while arrivals.len() < messages && Instant::now() < deadline {
        let path = format!("/_matrix/client/v3/sync?timeout=5000&since={}", enc(&since));
        let j = b.ok(Method::GET, &path, Some(&tb), None).await?;
        let at = epoch.elapsed();
        since = j["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
        for e in j["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten() {
            if let Some(n) = fed_number(e) {
                arrivals.entry(n).or_insert(at);
            }
        }
        // A limited timeline skips events: page them in through /messages.
        if j["rooms"]["join"][&room]["timeline"]["limited"] == true {
            let mut from = j["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().map(str::to_owned);
            while let Some(f) = from.take() {
                let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100&from={}", enc(&room), enc(&f));
                let page = b.ok(Method::GET, &path, Some(&tb), None).await?;
                let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
                let mut fresh = false;
                for e in &chunk {
                    if let Some(n) = fed_number(e)
                        && !arrivals.contains_key(&n)
                    {
                        arrivals.insert(n, at);
                        fresh = true;
                    }
                }
                if fresh {
                    from = page["end"].as_str().map(str::to_owned);
                }
            }
        }
    }
    let sent_at = sender.await.map_err(|e| e.to_string())??;
    // Messages /sync never showed: are they in B's room history at all?
    let mut only_in_history = 0;
    if arrivals.len() < messages {
        let mut from: Option<String> = None;
        for _ in 0..(messages / 100 + 20) {
            let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let page = b.ok(Method::GET, &path, Some(&tb), None).await?;
            for e in page["chunk"].as_array().into_iter().flatten() {
                if let Some(n) = fed_number(e)
                    && !arrivals.contains_key(&n)
                {
                    only_in_history += 1;
                }
            }
            match page["end"].as_str() {
                Some(end) if page["chunk"].as_array().is_some_and(|c| !c.is_empty()) => from = Some(end.to_owned()),
                _ => break,
            }
        }
    }
    let mut latencies: Vec<Duration> =
        arrivals.iter().filter_map(|(n, at)| sent_at.get(*n).map(|s| at.saturating_sub(*s))).collect();
    latencies.sort();
    let elapsed = arrivals.values().max().copied().unwrap_or_default();
    let last_sent = sent_at.iter().max().copied().unwrap_or_default();
    let first_arrival = arrivals.values().min().copied().unwrap_or_default();
    Ok(FederationReport {
        last_sent,
        first_arrival,
        sent: sent_at.len(),
        received: arrivals.len(),
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        only_in_history,
    })
}

/// Result of the `join` scenario.
pub struct JoinReport {
    /// Members on server A before the join (the owner included).
    pub members: usize,
    /// From the join request on B until B lists every member as joined.
    pub elapsed: Duration,
    /// Of which the join request itself.
    pub join_request: Duration,
}

/// `join`: a room on A with `members` joined users; a user on B joins it over
/// federation; timed until B's `/joined_members` lists all of them (full state).
pub async fn join(url_a: &str, url_b: &str, server_a: &str, members: usize) -> Result<JoinReport, String> {
    let id = run_id();
    let mut a = Conn::open(url_a).await?;
    let (owner, _) = register(&mut a, &format!("bench{id}jo")).await?;
    let room = public_room(&mut a, &owner, json!({})).await?;
    // Setup (not timed): members register and join on A, 8 at a time.
    eprintln!("bench join: filling a room on {url_a} with {members} members");
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let workers = 8usize.min(members.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, room, id, done) = (url_a.to_owned(), room.clone(), id.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&url).await?;
            let mut i = w;
            while i + 1 < members {
                let (token, _) = register(&mut c, &format!("bench{id}m{i}")).await?;
                c.ok(
                    Method::POST,
                    &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                    Some(&token),
                    Some(json!({})),
                )
                .await?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 250 == 0 {
                    eprintln!("  {n} / {members} members, {:.0} s", started.elapsed().as_secs_f64());
                }
                i += workers;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let mut b = Conn::open(url_b).await?;
    let (joiner, _) = register(&mut b, &format!("bench{id}jb")).await?;
    eprintln!("bench join: a user on {url_b} joins the {members}-member room");
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let start = Instant::now();
    b.ok(
        Method::POST,
        &format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(server_a)),
        Some(&joiner),
        Some(json!({})),
    )
    .await?;
    let join_request = start.elapsed();
    let want = members + 1;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
        let (status, j) = b.call(Method::GET, &path, Some(&joiner), None).await?;
        let seen = j["joined"].as_object().map_or(0, |m| m.len());
        if status == 200 && seen >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("B lists {seen} of {want} members after 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(JoinReport { members, elapsed: start.elapsed(), join_request })
}
