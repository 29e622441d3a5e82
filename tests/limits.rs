//! Issue #25 §2, "bounded by construction", seen from a hostile client over
//! real TCP (and TLS, for the federation listener): a request body that
//! stalls or trickles gets 408 and the connection closed after
//! `limits.body_timeout_s`; headers sent slowly (slowloris) get the
//! connection closed after `limits.header_timeout_s`; a handler that runs too
//! long is stopped with 503 after `limits.handler_timeout_s` while a `/sync`
//! long-poll keeps its own wait; past `limits.max_connections_per_ip` (or
//! `limits.max_connections`) a new connection is closed at accept and counted,
//! and accepted again once the others close; and concurrent logins beyond the
//! password-hashing queue get 429 `M_LIMIT_EXCEEDED`, never a 5xx.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_api::{
    http_util::ok_empty,
    router::{Ctx, HandlerFuture, Listener, Req, Router},
};
use myelin_suite::{TestServer, http, insecure_client_config};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw connection to the client listener (plain) or the federation listener (TLS).
async fn open(addr: SocketAddr, tls: bool) -> std::io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await?;
    if !tls {
        return Ok(Box::new(tcp));
    }
    let connector = tokio_rustls::TlsConnector::from(insecure_client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    Ok(Box::new(stream))
}

/// A cheap GET each listener answers 200.
fn probe(tls: bool) -> &'static str {
    if tls { "/_matrix/federation/v1/version" } else { "/_matrix/client/versions" }
}

/// Reads one HTTP/1.1 response (headers and a `Content-Length` body) as text.
async fn read_response(io: &mut Box<dyn Io>) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return if got.is_empty() {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"))
            } else {
                Ok(String::from_utf8_lossy(&got).into_owned())
            };
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text);
            }
        }
    }
}

/// Whether a fresh connection gets a 200 for the probe within 3 s.
async fn served(addr: SocketAddr, tls: bool) -> bool {
    let attempt = async {
        let mut io = open(addr, tls).await?;
        io.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", probe(tls)).as_bytes()).await?;
        read_response(&mut io).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(3), attempt).await, Ok(Ok(text)) if text.starts_with("HTTP/1.1 200"))
}

/// Waits up to 5 s for the connection to be closed by the server; returns how long it took.
async fn closed_within(io: &mut Box<dyn Io>, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let result = tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    result.ok().map(|()| started.elapsed())
}

async fn stalled_body(s: &TestServer, tls: bool) {
    let addr = if tls { s.federation.unwrap() } else { s.client };
    let path = if tls { "/_matrix/federation/v1/send/t1" } else { "/_matrix/client/v3/login" };
    let method = if tls { "PUT" } else { "POST" };
    let mut io = open(addr, tls).await.unwrap();
    let started = Instant::now();
    io.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ty"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut io))
        .await
        .unwrap_or_else(|_| panic!("no answer within 5 s to a stalled body (tls: {tls})"))
        .unwrap();
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "tls {tls}: {answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "tls {tls}: {answer}");
    assert!(took >= Duration::from_millis(900), "answered before the timeout: {took:?}");
    assert!(closed_within(&mut io, Duration::from_secs(5)).await.is_some(), "tls {tls}: connection left open");
}

async fn trickled_body(s: &TestServer, tls: bool) {
    let addr = if tls { s.federation.unwrap() } else { s.client };
    let mut io = open(addr, tls).await.unwrap();
    let path = if tls { "/_matrix/federation/v1/send/t2" } else { "/_matrix/client/v3/login" };
    let method = if tls { "PUT" } else { "POST" };
    io.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(io);
    // One byte every 200 ms: always busy, never done; the deadline is for the whole body.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(read.is_ok(), "tls {tls}: a trickled body was still being read after 5 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "tls {tls}: {text}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickled_body_gets_408_and_the_connection_closed_on_both_listeners() {
    let s = TestServer::start_with("limits.test", |c| c.limits.body_timeout_s = 1).await;
    for tls in [false, true] {
        stalled_body(&s, tls).await;
        trickled_body(&s, tls).await;
        assert!(served(if tls { s.federation.unwrap() } else { s.client }, tls).await, "still serving");
    }
    s.stop().await;
}

/// A client that connects (on the federation listener: completes its TLS
/// handshake) and then sends nothing is closed after the header timeout too,
/// not held open for good; a prompt request on the next connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_on_both_listeners() {
    let s = TestServer::start_with("limits.test", |c| c.limits.header_timeout_s = 1).await;
    for tls in [false, true] {
        let addr = if tls { s.federation.unwrap() } else { s.client };
        let mut io = open(addr, tls).await.unwrap();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "tls {tls}: a silent connection is still open after 6 s");
        let mut io = open(addr, tls).await.unwrap();
        io.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", probe(tls)).as_bytes()).await.unwrap();
        let answer = read_response(&mut io).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "tls {tls}: {answer}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_get_the_connection_closed_on_both_listeners() {
    let s = TestServer::start_with("limits.test", |c| c.limits.header_timeout_s = 1).await;
    for tls in [false, true] {
        let addr = if tls { s.federation.unwrap() } else { s.client };
        let io = open(addr, tls).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(io);
        let trickle = tokio::spawn(async move {
            if wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.is_err() {
                return;
            }
            for i in 0..100 {
                if wr.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        trickle.abort();
        assert!(closed.is_ok(), "tls {tls}: headers trickled for 6 s and the connection is still open");
        assert!(started.elapsed() < Duration::from_secs(4), "tls {tls}: {:?}", started.elapsed());
        assert!(served(addr, tls).await, "tls {tls}: still serving");
    }
    s.stop().await;
}

/// Holds `n` served connections open, then checks the next one is refused at
/// accept, and that a new one is served again once they are closed.
async fn cap_holds(addr: SocketAddr, tls: bool, n: usize) {
    let mut held = Vec::new();
    for i in 0..n {
        let mut io = open(addr, tls).await.unwrap();
        io.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", probe(tls)).as_bytes()).await.unwrap();
        let answer = read_response(&mut io).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "connection {i}: {answer}");
        held.push(io);
    }
    assert!(!served(addr, tls).await, "tls {tls}: connection {} was served with {n} open", n + 1);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if served(addr, tls).await {
            break;
        }
        assert!(Instant::now() < deadline, "tls {tls}: still refused 5 s after the others closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_refuses_the_next_connection_and_accepts_again_after_they_close() {
    let s = TestServer::start_with("limits.test", |c| c.limits.max_connections_per_ip = 3).await;
    cap_holds(s.client, false, 3).await;
    cap_holds(s.federation.unwrap(), true, 3).await;
    let r = http(s.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&r.body);
    let refused: Vec<&str> = text.lines().filter(|l| l.starts_with("myelin_connections_refused_total")).collect();
    assert!(refused.iter().any(|l| l.contains("per_ip") && l.contains("client")), "{refused:?}");
    assert!(refused.iter().any(|l| l.contains("per_ip") && l.contains("federation")), "{refused:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_cap_refuses_the_next_connection_and_accepts_again_after_they_close() {
    let s = TestServer::start_with("limits.test", |c| {
        c.limits.max_connections = 2;
        c.limits.max_connections_per_ip = 0;
    })
    .await;
    cap_holds(s.client, false, 2).await;
    cap_holds(s.federation.unwrap(), true, 2).await;
    s.stop().await;
}

fn slow(_: Ctx, _: Req) -> HandlerFuture {
    Box::pin(async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(ok_empty())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_handler_timeout_gets_503() {
    let s = TestServer::start_with("limits.test", |c| c.limits.handler_timeout_s = 1).await;
    let mut router = Router::new();
    router.add(Method::GET, "/slow", slow);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let limiter = std::sync::Arc::new(myelin_api::ratelimit::RateLimiter::new(0.0, 1));
    let deletions = Default::default();
    let ctx =
        Ctx { engine: s.engine.clone(), listener: Listener::Client, federation_addr: s.federation, limiter, deletions };
    tokio::spawn(myelin_api::server::serve_router(listener, ctx, router, stop_rx));
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), http(addr, Method::GET, "/slow", None))
        .await
        .expect("a 30 s handler was not stopped after the 1 s handler timeout");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.errcode(), "M_UNKNOWN");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let _ = stop.send(true);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_long_poll_outlives_a_short_handler_timeout() {
    // Not a failing-first test: it guards the choice that /sync's deadline is
    // the handler timeout plus the long-poll wait it honours.
    let s = TestServer::start_with("limits.test", |c| {
        c.registration.enabled = true;
        c.limits.handler_timeout_s = 1;
    })
    .await;
    let alice = s.register("alice").await;
    let first = alice.sync(None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let r = alice.request(Method::GET, &format!("/_matrix/client/v3/sync?since={since}&timeout=3000"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() >= Duration::from_millis(2500), "the long-poll returned early: {:?}", started.elapsed());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_beyond_the_hashing_queue_get_429_and_none_a_5xx() {
    let s = TestServer::start_with("limits.test", |c| {
        c.registration.enabled = true;
        c.limits.hash_threads = 1;
        c.limits.hash_queue = 2;
    })
    .await;
    s.register("alice").await;
    let body = serde_json::json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": "pass-word-1",
    })
    .to_string();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (addr, body) = (s.client, body.clone());
        tasks.push(tokio::spawn(async move {
            http(addr, Method::POST, "/_matrix/client/v3/login", Some(body.as_bytes())).await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for task in tasks {
        let r = task.await.unwrap();
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED");
                let retry = r.json()["retry_after_ms"].as_u64();
                assert!(retry.is_some_and(|ms| ms > 0), "{}", String::from_utf8_lossy(&r.body));
                limited += 1;
            }
            other => panic!("login answered {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(ok >= 1, "no login got through ({limited} limited)");
    assert!(limited >= 1, "40 concurrent logins, 1 hashing thread and a queue of 2: none refused ({ok} ok)");
    // Once the burst is over, logins work again.
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(body.as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}
