//! The request pipeline over real HTTP on loopback: Matrix errors for unknown
//! endpoints, wrong methods, oversize and malformed bodies, CORS, panics.

use std::time::Duration;

use http::{Method, StatusCode};
use myelin_api::{
    ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Listener, Req, Router},
};
use myelin_suite::{TestServer, http, http_with};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener};

fn boom(_: Ctx, _: Req) -> HandlerFuture {
    Box::pin(async { panic!("handler exploded") })
}

fn echo(_: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let v: serde_json::Value = parse_json(&req.body)?;
        Ok(ok_json(&v))
    })
}

fn small(_: Ctx, _: Req) -> HandlerFuture {
    Box::pin(async { Err::<_, ApiError>(ApiError::not_found("never reached with a big body")) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_and_wrong_method_are_m_unrecognized() {
    let s = TestServer::start("localhost").await;
    let r = http(s.client, Method::GET, "/_matrix/client/v3/nonexistent", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.errcode(), "M_UNRECOGNIZED");
    let r = http(s.client, Method::POST, "/_matrix/client/versions", Some(b"{}")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.errcode(), "M_UNRECOGNIZED");
    // Federation endpoints are not on the client listener.
    let r = http(s.client, Method::GET, "/_matrix/federation/v1/version", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_well_known_answer_on_the_client_listener() {
    let s = TestServer::start("localhost").await;
    let r = http(s.client, Method::GET, "/_matrix/client/versions", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let versions: Vec<String> =
        r.json()["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    for v in ["r0.6.1", "v1.1", "v1.16"] {
        assert!(versions.contains(&v.to_owned()), "missing {v} in {versions:?}");
    }
    let r = http(s.client, Method::GET, "/.well-known/matrix/client", None).await;
    assert_eq!(r.json()["m.homeserver"]["base_url"], format!("http://{}", s.client));
    let r = http(s.client, Method::GET, "/.well-known/matrix/server", None).await;
    assert_eq!(r.json()["m.server"], format!("localhost:{}", s.federation.unwrap().port()));
    let r = http(s.client, Method::GET, "/health", None).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"OK"[..]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_and_preflight() {
    let s = TestServer::start("localhost").await;
    let r = http_with(
        s.client,
        Method::OPTIONS,
        "/_matrix/client/v3/login",
        None,
        &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    assert!(r.headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(r.headers["access-control-allow-headers"].to_str().unwrap().contains("Authorization"));
    let r = http(s.client, Method::GET, "/nope", None).await;
    assert_eq!(r.headers["access-control-allow-origin"], "*", "errors carry CORS headers too");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_request_counts() {
    let s = TestServer::start("localhost").await;
    http(s.client, Method::GET, "/_matrix/client/versions", None).await;
    http(s.client, Method::GET, "/_matrix/client/v3/rooms/!a:b/state/m.room.name/", None).await;
    http(s.client, Method::GET, "/no/such/path/../x", None).await;
    let r = http(s.client, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    // Counted per route template (a bounded set), never per raw path.
    let has = |metric: &str, labels: &[&str]| {
        text.lines().any(|l| l.starts_with(metric) && labels.iter().all(|want| l.contains(want)))
    };
    let versions = ["route=\"/_matrix/client/versions\"", "method=\"GET\"", "status=\"200\""];
    assert!(has("myelin_http_requests_total", &versions), "{text}");
    assert!(has("myelin_http_request_duration_seconds", &versions[..2]), "{text}");
    assert!(has("myelin_http_requests_total", &["route=\"/_matrix/client/v3/rooms/{room_id}/state/"]), "{text}");
    assert!(has("myelin_http_requests_total", &["route=\"unmatched\"", "status=\"404\""]), "{text}");
    assert!(!text.contains("!a:b") && !text.contains("no/such"), "a raw path became a label: {text}");
    s.stop().await;
}

async fn pipeline_server() -> (TestServer, std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let s = TestServer::start("localhost").await;
    let mut router = Router::new();
    router.add(Method::GET, "/boom", boom);
    router.add(Method::POST, "/echo", echo);
    router.add_limited(Method::POST, "/small", small, 1024);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let limiter = std::sync::Arc::new(myelin_api::ratelimit::RateLimiter::new(0.0, 1));
    let deletions = Default::default();
    let ctx =
        Ctx { engine: s.engine.clone(), listener: Listener::Client, federation_addr: s.federation, limiter, deletions };
    tokio::spawn(myelin_api::server::serve_router(listener, ctx, router, stop_rx));
    (s, addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    let (s, addr, stop) = pipeline_server().await;
    let r = http(addr, Method::GET, "/boom", None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.errcode(), "M_UNKNOWN");
    let r = http(addr, Method::POST, "/echo", Some(br#"{"still":"alive"}"#)).await;
    assert_eq!(r.json()["still"], "alive");
    let _ = stop.send(true);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_m_not_json() {
    let (s, addr, stop) = pipeline_server().await;
    let r = http(addr, Method::POST, "/echo", Some(b"{\"unterminated")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.errcode(), "M_NOT_JSON");
    // A real endpoint does the same.
    let fed = s.federation.unwrap();
    let r = myelin_suite::https(fed, Method::POST, "/_matrix/key/v2/query", Some(b"not json")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.errcode(), "M_NOT_JSON");
    let _ = stop.send(true);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413_before_it_is_read() {
    let (s, addr, stop) = pipeline_server().await;
    // Declared too large: answered from the headers, with only 10 bytes of 10 MB sent.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n0123456789").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("no answer").unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("M_TOO_LARGE"), "{head}");

    // Streamed (chunked) past the limit: cut off once it passes.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /small HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 800, "a".repeat(800));
    conn.write_all(chunk.as_bytes()).await.unwrap();
    conn.write_all(chunk.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("no answer").unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Under the limit passes through to the handler.
    let r = http(addr, Method::POST, "/small", Some(&[b'x'; 100])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let _ = stop.send(true);
    s.stop().await;
}

/// Writes `head` and then `body_len` bytes of body (chunked when asked), the
/// way a naive client does: all of it first, ignoring write errors, and only
/// then reads the answer to the end. Returns what it could read.
async fn send_all_then_read<S>(stream: S, head: String, body_len: usize, chunked: bool) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let written = async move {
        wr.write_all(head.as_bytes()).await?;
        let block = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = block.len().min(body_len - sent);
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            wr.write_all(&block[..n]).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
            sent += n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    };
    let written = tokio::time::timeout(Duration::from_secs(20), written).await.expect("writing the body hung");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read_err = loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break Some(e.to_string()),
            Err(_) => break Some("no end of the answer in 10 s".to_owned()),
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    // The server may close early, but only after the client could send what it
    // meant to and read the answer: a reset on either side loses the 413 for
    // many clients (and on some systems the answer itself).
    assert!(
        written.is_ok(),
        "the server reset the connection while the body was sent: {:?}; read {text}",
        written.err()
    );
    assert!(read_err.is_none(), "reading the answer failed: {read_err:?}; read {text}");
    text
}

fn assert_413(answer: &str, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 413"), "{what}: {answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {answer}"));
    assert_eq!(json["errcode"], "M_TOO_LARGE", "{what}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_a_10_mb_body_in_full_reads_the_413() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(serde_json::json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/big", myelin_suite::enc(&room));
    let big = 10_000_000;
    for round in 0..3 {
        let head = format!(
            "PUT {path}{round} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {big}\r\n\r\n",
            alice.token
        );
        let stream = tokio::net::TcpStream::connect(s.client).await.unwrap();
        assert_413(&send_all_then_read(stream, head, big, false).await, "declared length");
        let head = format!(
            "PUT {path}c{round} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            alice.token
        );
        let stream = tokio::net::TcpStream::connect(s.client).await.unwrap();
        assert_413(&send_all_then_read(stream, head, big, true).await, "chunked");
    }
    // The same through the kit's hyper client, which writes and reads at once.
    let auth = format!("Bearer {}", alice.token);
    let r = http_with(s.client, Method::PUT, &format!("{path}h"), Some(&vec![b'a'; big]), &[("authorization", &auth)])
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"));
    // And the server still serves.
    alice.send_text(&room, "still here").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_sends_an_oversize_transaction_in_full_reads_the_413() {
    let s = TestServer::start("localhost").await;
    let fed = s.federation.unwrap();
    // Above the transaction limit (200 PDUs of 64 KiB, as Synapse allows).
    let big = 14_000_000;
    for chunked in [false, true] {
        let framing = if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {big}") };
        let head = format!(
            "PUT /_matrix/federation/v1/send/t{chunked} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
        );
        let tcp = tokio::net::TcpStream::connect(fed).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(myelin_suite::insecure_client_config());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_413(&send_all_then_read(tls, head, big, chunked).await, &format!("federation, chunked: {chunked}"));
    }
    s.stop().await;
}
