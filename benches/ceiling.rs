//! The send path's ceiling (issue 9): what each step costs per event on this
//! machine, next to what a whole send costs.
//!
//! - `sign+hash`: content hash, reference hash and ed25519 signature of a
//!   typical message PDU (`ServerKeys::hash_and_sign_event`), one thread;
//! - `commit`: one ~1.5 KiB batch through the group-commit writer with a WAL
//!   sync, 1 writer (the sync latency) and 20 writers (amortized per batch);
//! - `http`: `GET /_matrix/client/versions` over keep-alive loopback HTTP to
//!   the in-process server, 1 and 20 connections (amortized per request);
//! - `send`: `PUT /rooms/{id}/send/m.room.message/{txn}` into one room from
//!   20 keep-alive connections (amortized per event), the whole path.
//!
//! The ceiling is the sum of the amortized steps at 20-way concurrency: how
//! fast a send could be if nothing else cost anything. All of it shares the
//! same 2 cores with the load it measures, as the real benchmark does.
//!
//! Run: `cargo bench --bench ceiling`.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use myelin_engine::rooms::NewEvent;
use myelin_storage::{Batch, Raw, Table, catalog};
use myelin_suite::TestServer;
use ruma::{RoomId, UserId, events::TimelineEventType};
use serde_json::json;
use tokio::net::TcpStream;

const CONCURRENCY: usize = 20;

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender }
    }

    async fn call(&mut self, method: Method, path: &str, token: Option<&str>, body: Option<String>) -> u16 {
        self.sender.ready().await.unwrap();
        let mut req = Request::builder().method(method).uri(path).header(http::header::HOST, "localhost");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if status != 200 {
            eprintln!("{path}: {status} {}", String::from_utf8_lossy(&body));
        }
        status
    }
}

fn per_op(total: Duration, ops: usize) -> f64 {
    total.as_secs_f64() * 1e6 / ops as f64
}

/// Runs `per_task` operations on each of `tasks` tasks; returns µs per operation overall.
async fn concurrent<F, Fut>(tasks: usize, per_task: usize, make: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|t| tokio::spawn(make(t))).collect();
    for h in handles {
        h.await.unwrap();
    }
    per_op(start.elapsed(), tasks * per_task)
}

const BLOB: Table<(u64, u64), Raw> = Table::new(&catalog::ORIGINTXN_SEEN);

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let server = TestServer::start_with("ceiling.bench", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0; // measured here is the path, not the limiter
        c.storage.cache_mb = 256;
        // The server's default, not the test kit's 1 MiB: a sync must not grow the log.
        c.storage.wal_mb = 64;
    })
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let engine = server.engine.clone();

    // sign+hash
    let room_id = RoomId::parse(&room).unwrap();
    let sender = UserId::parse(&alice.user_id).unwrap();
    let content =
        json!({ "msgtype": "m.text", "body": "a line of a typical length for a chat message, about eighty bytes" });
    let template = engine
        .rooms
        .template(&sender, &room_id, NewEvent::message(TimelineEventType::RoomMessage, content.clone()))
        .await
        .unwrap();
    let rules = myelin_engine::rooms::version::rules(&engine.rooms.room_version(&room_id).unwrap()).unwrap();
    let n = 5_000;
    let start = Instant::now();
    for _ in 0..n {
        let mut event = template.clone();
        engine.keys.hash_and_sign_event(&mut event, &rules).unwrap();
    }
    let sign = per_op(start.elapsed(), n);

    // commit: batches the size of a message append (PDU ~1 KiB plus index rows)
    let payload = vec![7u8; 1536];
    let n = 2_000;
    let start = Instant::now();
    for i in 0..n {
        let mut b = Batch::new();
        BLOB.put(&mut b, &(1, i as u64), &Raw(payload.clone())).unwrap();
        engine.db.commit(b).await.unwrap();
    }
    let commit_1 = per_op(start.elapsed(), n);
    let per_task = 500;
    let commit_20 = concurrent(CONCURRENCY, per_task, |t| {
        let (engine, payload) = (engine.clone(), payload.clone());
        async move {
            for i in 0..per_task {
                let mut b = Batch::new();
                BLOB.put(&mut b, &(2 + t as u64, i as u64), &Raw(payload.clone())).unwrap();
                engine.db.commit(b).await.unwrap();
            }
        }
    })
    .await;

    // http
    let addr = server.client;
    let n = 5_000;
    let mut c = Conn::open(addr).await;
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(c.call(Method::GET, "/_matrix/client/versions", None, None).await, 200);
    }
    let http_1 = per_op(start.elapsed(), n);
    let per_task = 500;
    let http_20 = concurrent(CONCURRENCY, per_task, |_| async move {
        let mut c = Conn::open(addr).await;
        for _ in 0..per_task {
            assert_eq!(c.call(Method::GET, "/_matrix/client/versions", None, None).await, 200);
        }
    })
    .await;

    // the whole send, one room, 20 connections (CEILING_SENDS: events per connection)
    let per_task: usize = std::env::var("CEILING_SENDS").ok().and_then(|v| v.parse().ok()).unwrap_or(250);
    let token = Arc::new(alice.token.clone());
    let room_path = Arc::new(myelin_suite::enc(&room));
    let body = Arc::new(content.to_string());
    let send_20 = concurrent(CONCURRENCY, per_task, |t| {
        let (token, room_path, body) = (token.clone(), room_path.clone(), body.clone());
        async move {
            let mut c = Conn::open(addr).await;
            for i in 0..per_task {
                let path = format!("/_matrix/client/v3/rooms/{room_path}/send/m.room.message/c{t}-{i}");
                assert_eq!(c.call(Method::PUT, &path, Some(&token), Some((*body).clone())).await, 200);
            }
        }
    })
    .await;

    let ceiling = sign + commit_20 + http_20;
    println!("| step (per event) | 1-way | {CONCURRENCY}-way (amortized) |");
    println!("|---|---|---|");
    println!("| sign + hash (one thread) | {sign:.1} µs | — |");
    println!("| group commit, 1.5 KiB batch | {commit_1:.1} µs | {commit_20:.1} µs |");
    println!("| HTTP round trip, keep-alive | {http_1:.1} µs | {http_20:.1} µs |");
    println!("| sum of the steps | | {ceiling:.1} µs ({:.0} ev/s) |", 1e6 / ceiling);
    println!("| whole send, one room | | {send_20:.1} µs ({:.0} ev/s) |", 1e6 / send_20);
    println!("| whole send / sum of the steps | | {:.2} |", send_20 / ceiling);
    server.stop().await;
}
