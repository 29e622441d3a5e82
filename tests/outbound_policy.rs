//! The outbound policy (issue #25 §1): a stranger must not be able to make the
//! server open connections to internal addresses by naming `host:port` as a
//! server — in a key query, a media download or a join.
//!
//! A plain TCP listener on loopback stands in for an internal service and
//! counts the connections it accepts. Against a server whose configuration
//! does not allow loopback, every probe must leave it at zero, and the
//! answers for that open port and for a closed one must be the same.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::Method;
use myelin_engine::Config;
use myelin_suite::{Client, TestServer, enc, free_port, http, https};

/// A TCP listener standing in for an internal service: it counts and drops connections.
struct Internal {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Internal {
    async fn start() -> Self {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(tcp);
            }
        });
        Self { port, accepted, task }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Internal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a requester learns from one probe: the probe, the status and the errcode.
type Answer = (&'static str, u16, String);

fn answer(what: &'static str, reply: &myelin_suite::Reply) -> Answer {
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    let errcode = json["errcode"].as_str().unwrap_or_default().to_owned();
    // A key query answers 200 either way; what it holds must not differ either.
    let keys = json["server_keys"].as_array().map(|k| format!(" keys={}", k.len())).unwrap_or_default();
    (what, reply.status.as_u16(), format!("{errcode}{keys}"))
}

/// Every way a stranger (or a local user) can name `server` as a server to contact.
async fn probe(server: &TestServer, user: &Client, target: &str) -> Vec<Answer> {
    let federation = server.federation.unwrap();
    let mut out = Vec::new();
    let r = https(federation, Method::GET, &format!("/_matrix/key/v2/query/{}", enc(target)), None).await;
    out.push(answer("GET key query", &r));
    let body = serde_json::json!({ "server_keys": { target: {} } }).to_string();
    let r = https(federation, Method::POST, "/_matrix/key/v2/query", Some(body.as_bytes())).await;
    out.push(answer("POST key query", &r));
    let r = http(server.client, Method::GET, &format!("/_matrix/media/v3/download/{target}/abc"), None).await;
    out.push(answer("legacy media download", &r));
    let r = user.request(Method::GET, &format!("/_matrix/client/v1/media/download/{target}/abc"), None).await;
    out.push(answer("authenticated media download", &r));
    let room = format!("!x:{target}");
    let path = format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(target));
    let r = user.request(Method::POST, &path, Some(serde_json::json!({}))).await;
    out.push(answer("join", &r));
    out
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> (TestServer, Client) {
    let server = TestServer::start_with("us.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        tweak(c);
    })
    .await;
    let user = server.register("alice").await;
    (server, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_a_loopback_port_as_a_server_opens_no_connection_and_looks_like_a_closed_port() {
    let (server, user) = server_with(|_| {}).await;
    let internal = Internal::start().await;
    let open = format!("127.0.0.1:{}", internal.port);
    let open_answers = probe(&server, &user, &open).await;
    // Give any stray connection attempt time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(internal.accepted(), 0, "the server connected to an internal address: {open_answers:?}");

    let closed = format!("127.0.0.1:{}", free_port());
    let closed_answers = probe(&server, &user, &closed).await;
    assert_eq!(open_answers, closed_answers, "an open and a closed internal port must look the same");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_mapped_and_other_private_literals_are_refused_too() {
    let (server, user) = server_with(|_| {}).await;
    let internal = Internal::start().await;
    let mapped = format!("[::ffff:127.0.0.1]:{}", internal.port);
    let answers = probe(&server, &user, &mapped).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(internal.accepted(), 0, "a v4-mapped loopback address was connected to: {answers:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_after_resolution() {
    let (server, user) = server_with(|_| {}).await;
    let internal = Internal::start().await;
    // `localhost` resolves through the system resolver to a loopback address.
    let named = format!("localhost:{}", internal.port);
    let answers = probe(&server, &user, &named).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(internal.accepted(), 0, "a name resolving to loopback was connected to: {answers:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_peer_in_federation_hosts_is_reached_on_loopback() {
    let internal = Internal::start().await;
    let addr: SocketAddr = format!("127.0.0.1:{}", internal.port).parse().unwrap();
    let (server, _user) = server_with(|c| {
        c.federation.hosts.insert("peer.test".into(), addr);
    })
    .await;
    let r = https(server.federation.unwrap(), Method::GET, "/_matrix/key/v2/query/peer.test", None).await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert!(internal.accepted() > 0, "the operator's static host was not contacted");
    server.stop().await;
}

fn ranges(list: &[&str]) -> Vec<myelin_engine::net_policy::IpRange> {
    list.iter().map(|r| r.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loopback_in_ip_range_allow_the_connection_does_happen() {
    let (server, user) = server_with(|c| c.federation.ip_range_allow = ranges(&["127.0.0.0/8"])).await;
    let internal = Internal::start().await;
    let target = format!("127.0.0.1:{}", internal.port);
    let path = format!("/_matrix/client/v1/media/download/{target}/abc");
    let r = user.request(Method::GET, &path, None).await;
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&r.body));
    assert!(internal.accepted() > 0, "an allowed range was not connected to");
    // Reached but not answering TLS: the requester still hears only that it could not be reached.
    assert_eq!(r.json()["error"], "the server could not be reached");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_range_deny_wins_over_ip_range_allow() {
    let (server, user) = server_with(|c| {
        c.federation.ip_range_allow = ranges(&["127.0.0.0/8"]);
        c.federation.ip_range_deny = ranges(&["127.0.0.1/32"]);
    })
    .await;
    let internal = Internal::start().await;
    let denied = format!("127.0.0.1:{}", internal.port);
    let answers = probe(&server, &user, &denied).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(internal.accepted(), 0, "a denied address was connected to: {answers:?}");
    let closed = format!("127.0.0.1:{}", free_port());
    assert_eq!(answers, probe(&server, &user, &closed).await, "denied and closed must look the same");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_insecure_turns_off_verification_for_that_server_only() {
    // B's certificate is self-signed: A verifies certificates, except B's when listed.
    let (a, b) = myelin_suite::federation_pair(
        "a.test",
        "b.test",
        |c| {
            c.federation.verify_tls = true;
            c.federation.insecure.insert("b.test".into(), true);
        },
        |_| {},
    )
    .await;
    let keys = |server: &TestServer, name: &'static str| {
        let addr = server.federation.unwrap();
        async move {
            let r = https(addr, Method::GET, &format!("/_matrix/key/v2/query/{name}"), None).await;
            r.json()["server_keys"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(keys(&a, "b.test").await, 1, "A did not reach B with verification off for B");
    // C is not listed: its self-signed certificate is refused.
    let c_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let c = TestServer::start_with("c.test", |c| c.federation.listen = c_addr).await;
    let a = a
        .restart_with(|cfg| {
            cfg.federation.hosts.insert("c.test".into(), c_addr);
        })
        .await;
    assert_eq!(keys(&a, "c.test").await, 0, "A accepted C's self-signed certificate");
    assert_eq!(keys(&a, "b.test").await, 1);
    for s in [a, b, c] {
        s.stop().await;
    }
}
