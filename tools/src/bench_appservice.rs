//! `myelin bench appservice`: how fast events reach an application service.
//!
//! The bench itself is the appservice: it listens on `--listen` for the
//! homeserver's `PUT /_matrix/app/v1/transactions/{txnId}` (checking the
//! `hs_token`), while C clients send M messages each into R rooms. The target
//! must already have a registration whose `url` is that address and whose
//! user namespace holds the bench's users (`@bench.*`, not exclusive) —
//! `benches/appservice.sh` writes one and loads it into Myelin and Synapse.
//!
//! Reports the client send rate, the rate events reached the appservice
//! (events / time from the first send to the last arrival), and p50/p99 of
//! the time from a message's send request to its arrival at the appservice.
//! Fails when an acknowledged message never arrives within 60 s.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::bench::{SETTLE_AFTER_SETUP, Setup, enc, percentile, run_id, setup};

/// Result of the `appservice` scenario.
pub struct AppserviceReport {
    /// Messages acknowledged to the clients.
    pub sent: usize,
    /// Of those, how many reached the appservice.
    pub delivered: usize,
    /// Wall time of the sending phase.
    pub send_elapsed: Duration,
    /// First send to last arrival.
    pub deliver_elapsed: Duration,
    /// Send-to-arrival percentiles.
    pub p50: Duration,
    pub p99: Duration,
    /// Transactions received.
    pub transactions: usize,
}

type Arrivals = Arc<Mutex<(HashMap<String, Instant>, usize)>>;

/// Serves the appservice side until the returned handle is aborted.
async fn listen(addr: SocketAddr, hs_token: String, arrivals: Arrivals) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listen {addr}: {e}"))?;
    let expected = format!("Bearer {hs_token}");
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (arrivals, expected) = (arrivals.clone(), expected.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (arrivals, expected) = (arrivals.clone(), expected.clone());
                    async move {
                        let authorized = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                            == Some(&expected);
                        let is_txn = req.uri().path().starts_with("/_matrix/app/v1/transactions/");
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let now = Instant::now();
                        let status = if !authorized {
                            403
                        } else if is_txn {
                            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let mut seen = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                            seen.1 += 1;
                            for e in parsed["events"].as_array().into_iter().flatten() {
                                if let Some(b) = e["content"]["body"].as_str() {
                                    seen.0.entry(b.to_owned()).or_insert(now);
                                }
                            }
                            200
                        } else {
                            404
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
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

/// `appservice`: `clients` senders, `messages` each, over `rooms` rooms, observed by the appservice at `addr`.
pub async fn appservice(
    base: &str,
    addr: SocketAddr,
    hs_token: &str,
    rooms: usize,
    clients: usize,
    messages: usize,
) -> Result<AppserviceReport, String> {
    let rooms = rooms.max(1);
    let arrivals: Arrivals = Arc::new(Mutex::new((HashMap::new(), 0)));
    let server = listen(addr, hs_token.to_owned(), arrivals.clone()).await?;
    let id = run_id();
    let Setup { senders, .. } = setup(base, &id, rooms, clients).await?;
    eprintln!(
        "bench appservice: {clients} clients x {messages} messages into {rooms} rooms at {base}, appservice at {addr}"
    );
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, (mut conn, token, room)) in senders.into_iter().enumerate() {
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(messages);
            for m in 0..messages {
                let body = format!("as{id}/{c}/{m}");
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/a{c}-{m}", enc(&room));
                let t = Instant::now();
                conn.ok(Method::PUT, &path, Some(&token), Some(json!({ "msgtype": "m.text", "body": body }))).await?;
                out.push((body, t));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.map_err(|e| e.to_string())??);
    }
    let send_elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = {
            let seen = arrivals.lock().unwrap_or_else(|p| p.into_inner());
            sent.iter().filter(|(b, _)| seen.0.contains_key(b)).count()
        };
        if got == sent.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.abort();
    let seen = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies = Vec::new();
    let mut last = start;
    for (body, t) in &sent {
        if let Some(at) = seen.0.get(body) {
            latencies.push(at.saturating_duration_since(*t));
            last = last.max(*at);
        }
    }
    latencies.sort();
    Ok(AppserviceReport {
        sent: sent.len(),
        delivered: latencies.len(),
        send_elapsed,
        deliver_elapsed: last.saturating_duration_since(start),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        transactions: seen.1,
    })
}
