//! `myelin bench push`: how fast notifications reach a push gateway.
//!
//! The bench is the gateway: it listens on `--listen` for the Push Gateway
//! API's `POST /_matrix/push/v1/notify` (Push Gateway API §"POST
//! /_matrix/push/v1/notify") and answers `{"rejected": []}`. R receivers join
//! one room and each sets an `http` pusher (Client-Server §"POST
//! /_matrix/client/v3/pushers/set") whose `url` is that address; S senders
//! then send M messages each into the room, so every message is a
//! notification for each receiver (the default `.m.rule.message` rule).
//!
//! Reports notifications/s (notifications / first send to last arrival) and
//! the p50/p99 of the time from a message's send request to the gateway
//! receiving it for one receiver. Fails when an expected notification has not
//! arrived 60 s after the last send. The target's outbound policy must let it
//! reach the loopback gateway (Myelin: `ip_range_allow`; Synapse:
//! `ip_range_blacklist: []`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::bench::{Conn, SETTLE_AFTER_SETUP, enc, percentile, public_room, register, run_id};

/// Result of the `push` scenario.
pub struct PushReport {
    /// Notifications expected (messages × receivers).
    pub expected: usize,
    /// Of those, how many reached the gateway (once each counted).
    pub delivered: usize,
    /// Gateway requests for a (message, receiver) already seen.
    pub duplicates: usize,
    /// First send to last arrival.
    pub elapsed: Duration,
    /// Send-to-gateway latency p50, p99.
    pub p50: Duration,
    pub p99: Duration,
}

/// (message body, pushkey) → first arrival; and the duplicate count.
type Arrivals = Arc<Mutex<(HashMap<(String, String), Instant>, usize)>>;

/// Serves the gateway until the returned handle is aborted.
async fn gateway(addr: SocketAddr, arrivals: Arrivals) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listen {addr}: {e}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let arrivals = arrivals.clone();
                    async move {
                        let is_notify = req.uri().path() == "/_matrix/push/v1/notify";
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let now = Instant::now();
                        if is_notify {
                            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let n = &parsed["notification"];
                            if let Some(text) = n["content"]["body"].as_str() {
                                let mut seen = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                                for d in n["devices"].as_array().into_iter().flatten() {
                                    if let Some(key) = d["pushkey"].as_str() {
                                        let k = (text.to_owned(), key.to_owned());
                                        match seen.0.entry(k) {
                                            std::collections::hash_map::Entry::Occupied(_) => seen.1 += 1,
                                            std::collections::hash_map::Entry::Vacant(v) => {
                                                v.insert(now);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        let resp = http::Response::builder()
                            .status(if is_notify { 200 } else { 404 })
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(br#"{"rejected":[]}"#)))
                            .unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    }))
}

async fn join(c: &mut Conn, room: &str, token: &str) -> Result<Value, String> {
    c.ok(Method::POST, &format!("/_matrix/client/v3/rooms/{}/join", enc(room)), Some(token), Some(json!({}))).await
}

/// `push`: `receivers` pushers in one room, `senders` × `messages` messages into it.
pub async fn push(
    base: &str,
    addr: SocketAddr,
    receivers: usize,
    senders: usize,
    messages: usize,
) -> Result<PushReport, String> {
    let arrivals: Arrivals = Arc::new(Mutex::new((HashMap::new(), 0)));
    let server = gateway(addr, arrivals.clone()).await?;
    let id = run_id();
    let mut conn = Conn::open(base).await?;
    let (owner, _) = register(&mut conn, &format!("bench{id}po")).await?;
    let room = public_room(&mut conn, &owner, json!({})).await?;
    let url = format!("http://{addr}/_matrix/push/v1/notify");
    let mut keys = Vec::new();
    for r in 0..receivers {
        let (token, _) = register(&mut conn, &format!("bench{id}pr{r}")).await?;
        join(&mut conn, &room, &token).await?;
        let pushkey = format!("bench-{id}-{r}");
        let pusher = json!({
            "kind": "http", "app_id": "org.myelin.bench", "pushkey": pushkey,
            "app_display_name": "bench", "device_display_name": format!("receiver {r}"), "lang": "en",
            "data": { "url": url },
        });
        conn.ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&token), Some(pusher)).await?;
        keys.push(pushkey);
    }
    let mut sending = Vec::new();
    for s in 0..senders {
        let mut c = Conn::open(base).await?;
        let (token, _) = register(&mut c, &format!("bench{id}ps{s}")).await?;
        join(&mut c, &room, &token).await?;
        sending.push((c, token));
    }
    eprintln!("bench push: {senders} senders x {messages} messages, {receivers} pushers, gateway at {addr}");
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (s, (mut c, token)) in sending.into_iter().enumerate() {
        let (room, id) = (room.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(messages);
            for m in 0..messages {
                let body = format!("push{id}/{s}/{m}");
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/p{s}-{m}", enc(&room));
                let t = Instant::now();
                c.ok(Method::PUT, &path, Some(&token), Some(json!({ "msgtype": "m.text", "body": body }))).await?;
                out.push((body, t));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.map_err(|e| e.to_string())??);
    }
    let expected = sent.len() * keys.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap_or_else(|p| p.into_inner()).0.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.abort();
    let seen = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    let (mut latencies, mut last) = (Vec::with_capacity(expected), start);
    for (body, t) in &sent {
        for key in &keys {
            if let Some(at) = seen.0.get(&(body.clone(), key.clone())) {
                latencies.push(at.saturating_duration_since(*t));
                last = last.max(*at);
            }
        }
    }
    latencies.sort();
    Ok(PushReport {
        expected,
        delivered: latencies.len(),
        duplicates: seen.1,
        elapsed: last.saturating_duration_since(start),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}
