//! The test kit: real servers on loopback, real HTTP and TLS clients.
//!
//! Shared by the integration tests in `tests/` and the benchmarks. Nothing
//! here mocks storage or the network: servers run on temp-dir RocksDB and
//! loopback sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use myelin_engine::{Config, Engine};
use tokio::net::TcpStream;

pub mod appservice;
mod fed;
pub mod procs;
pub mod proxy;
mod wait;

pub use fed::{signed, signed_get, signed_put, tiny_tls_server};
pub use wait::{bodies, sync_until, wait_for_text};

/// The `myelin` binary built next to this test executable.
///
/// `make test` builds it first; `MYELIN_TEST_BIN` overrides the path.
pub fn myelin_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MYELIN_TEST_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/myelin
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("myelin");
    assert!(bin.is_file(), "{} is missing: run `cargo build --bin myelin` (make test does) first", bin.display());
    bin
}

/// The resident set size of process `pid`, KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A loopback port that was free a moment ago.
///
/// Chosen at random below Linux's ephemeral range (32768–60999), not by
/// binding port 0: a port from that range could be handed to another test's
/// outgoing connection before the server binds it (a federation test once
/// failed with "address in use" that way).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn errcode(&self) -> String {
        self.json()["errcode"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one HTTP/1.1 request over a fresh plain TCP connection.
pub async fn http(addr: SocketAddr, method: Method, path: &str, body: Option<&[u8]>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    send(TokioIo::new(stream), addr, method, path, body, &[]).await
}

/// Like [`http`] with extra headers.
pub async fn http_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    send(TokioIo::new(stream), addr, method, path, body, headers).await
}

/// Sends one HTTPS request with extra headers, accepting any certificate.
pub async fn https_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(insecure_client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    send(TokioIo::new(tls), addr, method, path, body, headers).await
}

/// Sends one HTTPS request, accepting any certificate (the servers' are self-signed).
pub async fn https(addr: SocketAddr, method: Method, path: &str, body: Option<&[u8]>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(insecure_client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    send(TokioIo::new(tls), addr, method, path, body, &[]).await
}

async fn send<IO>(
    io: IO,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Reply
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// A rustls client config that accepts any server certificate.
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A configuration for a test server in `dir` on free loopback ports.
pub fn test_config(dir: &Path, server_name: &str) -> Config {
    let mut config = Config { server_name: server_name.to_owned(), data_dir: dir.join("data"), ..Config::default() };
    config.client.listen = "127.0.0.1:0".parse().unwrap();
    config.federation.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.memory_mb = 32;
    // Exercises the WAL pre-sizing at every start without writing 64 MiB each time.
    config.storage.wal_mb = 1;
    config
}

/// An in-process server on a temp dir.
pub struct TestServer {
    pub engine: Arc<Engine>,
    pub client: SocketAddr,
    pub federation: Option<SocketAddr>,
    running: Option<myelin_api::Running>,
    config: Config,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server named `server_name`.
    pub async fn start(server_name: &str) -> Self {
        Self::start_with(server_name, |_| {}).await
    }

    /// Stops it gracefully.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl TestServer {
    /// Starts a server after `tweak` adjusts its configuration.
    pub async fn start_with(server_name: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), server_name);
        tweak(&mut config);
        let kept = config.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open(config)).await.unwrap().unwrap();
        let running = myelin_api::start(engine.clone()).await.unwrap();
        Self {
            engine,
            client: running.client_addr,
            federation: running.federation_addr,
            running: Some(running),
            config: kept,
            _dir: dir,
        }
    }

    /// Stops serving, keeping the data for [`TestServer::restart`].
    pub async fn halt(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }

    /// Stops the server and starts it again on the same data, at the same
    /// federation address (clients get a new port: read `client` again).
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// Like [`TestServer::restart`], after `tweak` changes the configuration.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> Self {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
        tweak(&mut self.config);
        let mut config = self.config.clone();
        if let Some(f) = self.federation {
            config.federation.listen = f;
        }
        let dir = self._dir;
        let mut engine = self.engine;
        // The database lock is released when the last handle to the engine goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let engine = loop {
            match Arc::try_unwrap(engine) {
                Ok(e) => {
                    drop(e);
                    break tokio::task::spawn_blocking(move || Engine::open(config)).await.unwrap().unwrap();
                }
                Err(still) => {
                    assert!(std::time::Instant::now() < deadline, "the old engine is still held after shutdown");
                    engine = still;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let running = myelin_api::start(engine.clone()).await.unwrap();
        Self {
            engine,
            client: running.client_addr,
            federation: running.federation_addr,
            running: Some(running),
            config: self.config,
            _dir: dir,
        }
    }

    /// Starts a server with open registration.
    pub async fn open(server_name: &str) -> Self {
        Self::start_with(server_name, |c| c.registration.enabled = true).await
    }

    /// Registers `name` with password `pass` and returns a logged-in client.
    pub async fn register(&self, name: &str) -> Client {
        let body =
            serde_json::json!({ "username": name, "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
        let r = http(self.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
        assert_eq!(r.status, StatusCode::OK, "register {name}: {}", String::from_utf8_lossy(&r.body));
        Client::from_login(self.client, &r.json())
    }

    /// Registers a guest (`register?kind=guest`) and returns its client.
    pub async fn register_guest(&self) -> Client {
        let r = http(self.client, Method::POST, "/_matrix/client/v3/register?kind=guest", Some(b"{}")).await;
        assert_eq!(r.status, StatusCode::OK, "guest registration: {}", String::from_utf8_lossy(&r.body));
        Client::from_login(self.client, &r.json())
    }
}

/// A logged-in client of a test server.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub token: String,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    /// The client a register or login answer (`access_token`, `user_id`, `device_id`) logs in.
    pub fn from_login(addr: SocketAddr, answer: &serde_json::Value) -> Client {
        let field = |name: &str| answer[name].as_str().unwrap_or_else(|| panic!("no {name} in {answer}")).to_owned();
        Client { addr, token: field("access_token"), user_id: field("user_id"), device_id: field("device_id") }
    }

    /// Any request with this client's token.
    pub async fn request(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let body = body.map(|b| b.to_string());
        http_with(self.addr, method, path, body.as_deref().map(str::as_bytes), &[("authorization", &auth)]).await
    }

    /// GET, expecting 200; returns the JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let r = self.request(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// POST, expecting 200.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self.request(Method::POST, path, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// PUT, expecting 200.
    pub async fn put(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self.request(Method::PUT, path, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "PUT {path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Creates a room; returns its id.
    pub async fn create_room(&self, body: serde_json::Value) -> String {
        self.post("/_matrix/client/v3/createRoom", body).await["room_id"].as_str().unwrap().to_owned()
    }

    /// Sends a text message; returns the event id.
    pub async fn send_text(&self, room: &str, body: &str) -> String {
        // The clock alone repeats across concurrent senders (one token, two sends
        // in the same nanosecond): the server then rightly answers the second
        // with the first's event, and a message is never sent.
        static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let txn = format!("t{nanos}.{n}");
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
        self.put(&path, serde_json::json!({ "msgtype": "m.text", "body": body })).await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// One `/sync`; `since` None for an initial sync.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> serde_json::Value {
        let path = match since {
            Some(s) => format!("/_matrix/client/v3/sync?since={s}&timeout={timeout_ms}"),
            None => format!("/_matrix/client/v3/sync?timeout={timeout_ms}"),
        };
        self.get(&path).await
    }
}

/// Percent-encodes a path segment (room ids carry `!` and `:`).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Two or more servers that know each other's federation addresses.
pub async fn federation_pair(
    a_name: &str,
    b_name: &str,
    tweak_a: impl FnOnce(&mut Config),
    tweak_b: impl FnOnce(&mut Config),
) -> (TestServer, TestServer) {
    let (a_port, b_port) = (free_port(), free_port());
    let a_addr: SocketAddr = format!("127.0.0.1:{a_port}").parse().unwrap();
    let b_addr: SocketAddr = format!("127.0.0.1:{b_port}").parse().unwrap();
    let b = TestServer::start_with(b_name, |c| {
        c.registration.enabled = true;
        c.federation.listen = b_addr;
        c.federation.verify_tls = false;
        c.federation.hosts.insert(a_name.to_owned(), a_addr);
        tweak_b(c);
    })
    .await;
    let a = TestServer::start_with(a_name, |c| {
        c.registration.enabled = true;
        c.federation.listen = a_addr;
        c.federation.verify_tls = false;
        c.federation.hosts.insert(b_name.to_owned(), b_addr);
        tweak_a(c);
    })
    .await;
    (a, b)
}

/// Device keys as a client would upload them (servers never check the signature bytes).
pub fn device_keys(user: &str, device: &str, curve: &str) -> serde_json::Value {
    serde_json::json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): curve, format!("ed25519:{device}"): format!("ed-{curve}") },
        "signatures": { user: { format!("ed25519:{device}"): format!("sig-{curve}") } },
    })
}
