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
        Self::start_on("127.0.0.1").await
    }

    /// Listening on `ip` (`"::1"` for IPv6 loopback).
    async fn start_on(ip: &str) -> Self {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
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

/// Who sends a probe.
enum By {
    /// Nobody logged in, on the client listener.
    Anonymous,
    /// The local user.
    User,
    /// Nobody, on the federation listener (the notary endpoints).
    Federation,
    /// A federation request with this `Authorization` header.
    XMatrix(String),
}

/// One way of naming a server to contact.
struct Probe {
    what: &'static str,
    by: By,
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
}

/// Every way a stranger (or a local user) can name `target` as a server to contact.
fn probes(target: &str) -> Vec<Probe> {
    let p = |what, by, method, path: String, body| Probe { what, by, method, path, body };
    let room = format!("!x:{target}");
    let someone = format!("@x:{target}");
    let alias = format!("#x:{target}");
    let auth = format!("X-Matrix origin=\"{target}\",destination=\"us.test\",key=\"ed25519:x\",sig=\"aGVsbG8\"");
    vec![
        p("GET key query", By::Federation, Method::GET, format!("/_matrix/key/v2/query/{}", enc(target)), None),
        p(
            "POST key query",
            By::Federation,
            Method::POST,
            "/_matrix/key/v2/query".into(),
            Some(serde_json::json!({ "server_keys": { target: {} } })),
        ),
        p(
            "legacy media download",
            By::Anonymous,
            Method::GET,
            format!("/_matrix/media/v3/download/{target}/abc"),
            None,
        ),
        p("media download", By::User, Method::GET, format!("/_matrix/client/v1/media/download/{target}/abc"), None),
        p(
            "join",
            By::User,
            Method::POST,
            format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(target)),
            Some(serde_json::json!({})),
        ),
        p(
            "knock",
            By::User,
            Method::POST,
            format!("/_matrix/client/v3/knock/{}?server_name={}", enc(&room), enc(target)),
            Some(serde_json::json!({})),
        ),
        p(
            "profile, unauthenticated",
            By::Anonymous,
            Method::GET,
            format!("/_matrix/client/v3/profile/{}", enc(&someone)),
            None,
        ),
        p("profile", By::User, Method::GET, format!("/_matrix/client/v3/profile/{}", enc(&someone)), None),
        p(
            "alias, unauthenticated",
            By::Anonymous,
            Method::GET,
            format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            None,
        ),
        p(
            "public rooms of a server",
            By::User,
            Method::GET,
            format!("/_matrix/client/v3/publicRooms?server={}", enc(target)),
            None,
        ),
        p(
            "keys/query",
            By::User,
            Method::POST,
            "/_matrix/client/v3/keys/query".into(),
            Some(serde_json::json!({ "device_keys": { someone.as_str(): [] } })),
        ),
        p(
            "keys/claim",
            By::User,
            Method::POST,
            "/_matrix/client/v3/keys/claim".into(),
            Some(serde_json::json!({ "one_time_keys": { someone.as_str(): { "DEV": "signed_curve25519" } } })),
        ),
        // Claiming to come from `target`: its key would be looked up there.
        p(
            "X-Matrix origin",
            By::XMatrix(auth),
            Method::GET,
            "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aus.test".into(),
            None,
        ),
    ]
}

async fn run(server: &TestServer, user: &Client, probe: &Probe) -> Answer {
    let body = probe.body.as_ref().map(|b| b.to_string());
    let bytes = body.as_deref().map(str::as_bytes);
    let (method, path) = (probe.method.clone(), probe.path.as_str());
    let federation = server.federation.unwrap();
    let reply = match &probe.by {
        By::Anonymous => http(server.client, method, path, bytes).await,
        By::User => user.request(method, path, probe.body.clone()).await,
        By::Federation => https(federation, method, path, bytes).await,
        By::XMatrix(auth) => {
            myelin_suite::https_with(federation, method, path, bytes, &[("authorization", auth)]).await
        }
    };
    answer(probe.what, &reply)
}

async fn probe(server: &TestServer, user: &Client, target: &str) -> Vec<Answer> {
    let mut out = Vec::new();
    for p in probes(target) {
        out.push(run(server, user, &p).await);
    }
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
async fn ipv6_loopback_is_refused_and_reached_only_when_allowed() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine: nothing to check");
        return;
    }
    let internal = Internal::start_on("::1").await;
    let target = format!("[::1]:{}", internal.port);
    let (server, user) = server_with(|_| {}).await;
    let answers = probe(&server, &user, &target).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(internal.accepted(), 0, "IPv6 loopback was connected to: {answers:?}");
    server.stop().await;
    // Allowed by range, the same address is reached: the refusal above was the policy's.
    let (server, user) = server_with(|c| c.federation.ip_range_allow = ranges(&["::1/128"])).await;
    let path = format!("/_matrix/client/v1/media/download/{target}/abc");
    user.request(Method::GET, &path, None).await;
    assert!(internal.accepted() > 0, "::1/128 in ip_range_allow was not connected to");
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

/// The probes above are live: with loopback allowed, each one makes the server
/// connect to the server it names (a fresh one per probe, so no cache hides it).
/// Without this, "zero connections" could hold because a probe never reached
/// the outbound path at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loopback_allowed_every_probe_does_reach_the_server_it_names() {
    let (server, user) = server_with(|c| c.federation.ip_range_allow = ranges(&["127.0.0.0/8"])).await;
    let mut silent = Vec::new();
    for i in 0..probes("x").len() {
        let internal = Internal::start().await;
        let target = format!("127.0.0.1:{}", internal.port);
        let probe = probes(&target).swap_remove(i);
        run(&server, &user, &probe).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if internal.accepted() == 0 {
            silent.push(probe.what);
        }
    }
    assert!(silent.is_empty(), "these probes contacted nobody: {silent:?}");
    server.stop().await;
}

/// Where the connection is allowed but fails, the requester cannot tell how:
/// a closed port, a listener that drops the connection and one whose TLS
/// certificate does not verify all give the same answer to every probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_dropped_and_bad_tls_connections_look_the_same_to_the_requester() {
    let (server, user) = server_with(|c| {
        c.federation.ip_range_allow = ranges(&["127.0.0.0/8"]);
        c.federation.verify_tls = true;
    })
    .await;
    let bad_dir = tempfile::tempdir().unwrap();
    let self_signed = myelin_api::tls::server_config(&myelin_suite::test_config(bad_dir.path(), "bad.test")).unwrap();
    let mut differ = Vec::new();
    for i in 0..probes("x").len() {
        let closed = format!("127.0.0.1:{}", free_port());
        let dropping = Internal::start().await;
        let dropped = format!("127.0.0.1:{}", dropping.port);
        let (tls_addr, _, tls_task) = myelin_suite::tiny_tls_server("127.0.0.1:0", self_signed.clone(), |_| {
            (200, "application/json", b"{}".to_vec())
        })
        .await;
        let bad_tls = tls_addr.to_string();
        let mut answers = Vec::new();
        for target in [&closed, &dropped, &bad_tls] {
            let probe = probes(target).swap_remove(i);
            let (what, status, errcode) = run(&server, &user, &probe).await;
            answers.push((what, status, errcode));
        }
        tls_task.abort();
        if answers[0] != answers[1] || answers[0] != answers[2] {
            differ.push(answers);
        }
    }
    assert!(differ.is_empty(), "closed / dropped / bad TLS answered differently: {differ:#?}");
    server.stop().await;
}

/// A peer the server may reach cannot bounce it inward: a media answer that
/// redirects to an internal address is not followed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_internal_address_is_not_followed() {
    let internal = Internal::start().await;
    let peer_dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(peer_dir.path(), "peer.test")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = listener.local_addr().unwrap();
    let inward = format!("https://127.0.0.1:{}/secret", internal.port);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let peer = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, inward, counted) = (acceptor.clone(), inward.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let resp = http::Response::builder()
                        .status(302)
                        .header("location", inward.as_str())
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let (server, user) = server_with(|c| {
        c.federation.hosts.insert("peer.test".into(), peer_addr);
    })
    .await;
    for path in [
        "/_matrix/client/v1/media/download/peer.test/abc",
        "/_matrix/client/v1/media/thumbnail/peer.test/abc?width=32&height=32",
    ] {
        let r = user.request(Method::GET, path, None).await;
        assert!(!r.status.is_success(), "{path}: {}", r.status);
    }
    let r = http(server.client, Method::GET, "/_matrix/media/v3/download/peer.test/abc", None).await;
    assert!(!r.status.is_success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(asked.load(Ordering::SeqCst) > 0, "the peer was never asked");
    assert_eq!(internal.accepted(), 0, "a redirect was followed to an internal address");
    peer.abort();
    server.stop().await;
}
