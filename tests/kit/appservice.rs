//! A stand-in appservice for tests and benchmarks: a real HTTP server on
//! loopback that records every request the homeserver makes to it.
//!
//! Transactions (`PUT /_matrix/app/v1/transactions/{txnId}`) are answered
//! 200 unless the service is set down (then 503); other paths go to the
//! test's own handler, which may call back into the homeserver first (as a
//! bridge answering an alias query creates the room).

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::BodyExt;

/// One request the homeserver made.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
    /// The status the fake answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// What the test's handler returns for a non-transaction request.
pub type Answer = Pin<Box<dyn Future<Output = (u16, serde_json::Value)> + Send>>;
type Handler = Arc<dyn Fn(Seen) -> Answer + Send + Sync>;

/// The fake appservice.
pub struct FakeAppservice {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAppservice {
    /// Starts on a free loopback port; `handler` answers everything but transactions.
    pub async fn start(handler: impl Fn(Seen) -> Answer + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1:0", handler).await
    }

    /// Starts on `bind` (to come back on the same port after [`FakeAppservice::stop`]).
    pub async fn start_on(bind: &str, handler: impl Fn(Seen) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap_or_else(|e| panic!("binding {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let (log, is_down) = (seen.clone(), down.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (handler, log, is_down) = (handler.clone(), log.clone(), is_down.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (handler, log, is_down) = (handler.clone(), log.clone(), is_down.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let query = req.uri().query().unwrap_or_default().to_owned();
                            let authorization =
                                req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                            let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                            let mut seen =
                                Seen { method, path, query, authorization, body, status: 0, at: Instant::now() };
                            let (status, answer) = if seen.path.starts_with("/_matrix/app/v1/transactions/") {
                                if is_down.load(Ordering::SeqCst) {
                                    (503, serde_json::json!({ "errcode": "M_UNKNOWN", "error": "down" }))
                                } else {
                                    (200, serde_json::json!({}))
                                }
                            } else {
                                handler(seen.clone()).await
                            };
                            seen.status = status;
                            log.lock().unwrap().push(seen);
                            let resp = http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(answer.to_string())))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, seen, down, task }
    }

    /// The base URL to put in a registration.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer transactions with 503 (`true`) or 200 (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Stops listening (connections are refused until a new one starts on the port).
    pub fn stop(self) -> Vec<Seen> {
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Transactions answered 200, as `(txn id, body)`, in arrival order.
    pub fn delivered(&self) -> Vec<(String, serde_json::Value)> {
        self.requests()
            .into_iter()
            .filter(|s| s.status == 200)
            .filter_map(|s| {
                let id = s.path.strip_prefix("/_matrix/app/v1/transactions/")?.to_owned();
                Some((id, s.body))
            })
            .collect()
    }

    /// The events of delivered transactions, each transaction counted once
    /// (an appservice drops a repeated transaction id), in order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut ids = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, body) in self.delivered() {
            if ids.insert(id) {
                out.extend(body["events"].as_array().cloned().unwrap_or_default());
            }
        }
        out
    }

    /// The ephemeral events of delivered transactions.
    pub fn ephemeral(&self) -> Vec<serde_json::Value> {
        let mut ids = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, body) in self.delivered() {
            if ids.insert(id) {
                out.extend(body["ephemeral"].as_array().cloned().unwrap_or_default());
            }
        }
        out
    }

    /// Waits until `done` holds for the requests seen, at most `limit`.
    pub async fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&FakeAppservice) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; seen: {:#?}", self.requests());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A registration file's YAML, as a bridge writes it.
pub struct RegistrationYaml<'a> {
    pub id: &'a str,
    pub url: Option<&'a str>,
    pub as_token: &'a str,
    pub hs_token: &'a str,
    pub sender_localpart: &'a str,
    pub user_regex: &'a str,
    pub alias_regex: &'a str,
    pub exclusive: bool,
    pub ephemeral: bool,
}

impl RegistrationYaml<'_> {
    /// The YAML text.
    pub fn render(&self) -> String {
        format!(
            "id: {id}\nurl: {url}\nas_token: {as_token}\nhs_token: {hs_token}\nsender_localpart: {sender}\n\
             namespaces:\n  users:\n  - regex: '{users}'\n    exclusive: {exclusive}\n  aliases:\n  - regex: '{aliases}'\n    exclusive: {exclusive}\n  rooms: []\n\
             rate_limited: false\nprotocols: [fakeproto]\nde.sorunome.msc2409.push_ephemeral: {ephemeral}\nreceive_ephemeral: {ephemeral}\n",
            id = self.id,
            url = self.url.map(|u| format!("'{u}'")).unwrap_or_else(|| "null".into()),
            as_token = self.as_token,
            hs_token = self.hs_token,
            sender = self.sender_localpart,
            users = self.user_regex,
            aliases = self.alias_regex,
            exclusive = self.exclusive,
            ephemeral = self.ephemeral,
        )
    }
}

/// A handler that answers 404 to every query.
pub fn not_found(_: Seen) -> Answer {
    Box::pin(async { (404, serde_json::json!({ "errcode": "M_NOT_FOUND" })) })
}

/// Waits until the delivered events satisfy `done`, for at most `limit`.
pub async fn wait_events(
    fake: &FakeAppservice,
    limit: Duration,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) {
    fake.wait_until(limit, what, |f| done(&f.events())).await;
}

/// A server named `as.test` with open registration and `yaml` as its one
/// registration file (written into `dir`).
pub async fn server_with_registration(yaml: &str, dir: &tempfile::TempDir) -> crate::TestServer {
    let path = dir.path().join("registration.yaml");
    std::fs::write(&path, yaml).unwrap();
    crate::TestServer::start_with("as.test", move |c| {
        c.registration.enabled = true;
        c.appservice.registrations = vec![path];
    })
    .await
}

/// A request with an appservice's `token`, as `user` (`?user_id=`) when given.
pub async fn as_request(
    server: &crate::TestServer,
    token: &str,
    method: http::Method,
    path: &str,
    user: Option<&str>,
    body: Option<serde_json::Value>,
) -> crate::Reply {
    let path = match user {
        Some(u) => format!("{path}{}user_id={}", if path.contains('?') { '&' } else { '?' }, crate::enc(u)),
        None => path.to_owned(),
    };
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    crate::http_with(server.client, method, &path, body.as_deref().map(str::as_bytes), &[("authorization", &auth)])
        .await
}
