//! The outbound federation HTTP client.
//!
//! Server discovery (Server-Server API §"Resolving server names"), in order:
//! the static `[federation.hosts]` map; an IP literal (port 8448 unless
//! given); a name with an explicit port, through the system resolver;
//! otherwise `https://<name>/.well-known/matrix/server`, whose `m.server`
//! (an IP literal, or a name with or without port, 8448 by default) is then
//! connected to with that name as TLS server name and `Host`; without a
//! valid answer, the name on port 8448. Answers (and their absence) are
//! cached for an hour. A name without a port (ours or the delegated one) is
//! first looked up as SRV `_matrix-fed._tcp.<name>`, then `_matrix._tcp.<name>`
//! (see [`super::dns`]): the best record's target and port are connected to,
//! while TLS and `Host` keep the server name.
//!
//! TLS with rustls: with `verify_tls` the server certificate must chain to the
//! system roots or a `trusted_ca` file and name the server; without it any
//! certificate is accepted (labs only). Every request has a timeout and a
//! response size limit; signed requests carry an `X-Matrix` header.
//!
//! Connections are pooled per destination (HTTP/1.1 keep-alive, up to
//! [`POOL_PER_DESTINATION`] idle each): a transaction stream to a busy peer
//! pays the TCP and TLS handshakes once, not per request.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use myelin_engine::{Engine, federation::xmatrix};
use serde_json::Value as JsonValue;
use tokio::net::TcpStream;

/// Largest response accepted from another server.
const MAX_RESPONSE: usize = 16 << 20;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per destination.
const POOL_PER_DESTINATION: usize = 4;

/// One idle HTTP/1.1 connection to a destination, with the `Host` its requests carry.
type Conn = (hyper::client::conn::http1::SendRequest<Full<Bytes>>, String);

/// Why a request to another server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server name could not be turned into an address.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{server}: {reason}")]
    Transport {
        /// The remote server.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server is not allowed by `federation.allow`/`deny`, or federation is off.
    #[error("federation with {0} is not allowed by this server's configuration")]
    NotAllowed(String),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] myelin_engine::federation::FederationError),
}

/// A raw response from another server (media).
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A response from another server.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// The body as JSON (Null when it was not JSON).
    pub json: JsonValue,
}

/// Whether a server name carries an explicit port (`name:port`, `1.2.3.4:port`, `[::1]:port`).
fn has_port(server: &str) -> bool {
    match server.rsplit_once(':') {
        Some((head, port)) => port.parse::<u16>().is_ok() && (!head.contains(':') || head.ends_with(']')),
        None => false,
    }
}

/// A cached SRV answer: the best target and port (or none), and until when it holds.
type CachedSrv = (Option<(String, u16)>, std::time::Instant);

/// The federation client of one server.
pub struct FederationClient {
    tls: Arc<rustls::ClientConfig>,
    /// EDUs waiting for the next transaction to each destination (volatile).
    edus: parking_lot::Mutex<std::collections::HashMap<String, Vec<JsonValue>>>,
    /// Wakes the sender when EDUs are queued.
    pub edu_ready: tokio::sync::Notify,
    /// Per destination: fires when it shows life (an authenticated inbound request),
    /// cutting a sender's backoff short.
    alive: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Idle keep-alive connections per destination.
    pool: parking_lot::Mutex<std::collections::HashMap<String, Vec<Conn>>>,
    /// `.well-known` delegations looked up: server name → (delegated name, until).
    delegations: parking_lot::Mutex<std::collections::HashMap<String, (Option<String>, std::time::Instant)>>,
    /// SRV answers looked up: name → (best target and port, until).
    srv_answers: parking_lot::Mutex<std::collections::HashMap<String, CachedSrv>>,
    /// Resolvers for SRV lookups.
    dns_servers: Vec<SocketAddr>,
}

/// Where to connect for a server name.
struct Target {
    addr: SocketAddr,
    /// TLS server name.
    tls_name: String,
    /// `Host` header.
    host_header: String,
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

impl FederationClient {
    /// Builds the client from the configuration (roots, trusted CAs, verification).
    pub fn new(config: &myelin_engine::Config) -> Result<Self, crate::tls::TlsError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| crate::tls::TlsError(e.to_string()))?;
        let mut tls = if config.federation.verify_tls {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            for path in &config.federation.trusted_ca {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<_, _>>())
                    .map_err(|e| crate::tls::TlsError(format!("federation.trusted_ca {}: {e}", path.display())))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| crate::tls::TlsError(format!("federation.trusted_ca {}: {e}", path.display())))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(tls),
            edus: parking_lot::Mutex::new(Default::default()),
            edu_ready: tokio::sync::Notify::new(),
            alive: parking_lot::Mutex::new(std::collections::HashMap::new()),
            pool: parking_lot::Mutex::new(std::collections::HashMap::new()),
            delegations: parking_lot::Mutex::new(std::collections::HashMap::new()),
            srv_answers: parking_lot::Mutex::new(std::collections::HashMap::new()),
            dns_servers: if config.federation.dns_servers.is_empty() {
                super::dns::system_servers()
            } else {
                config.federation.dns_servers.clone()
            },
        })
    }

    async fn resolve(&self, engine: &Engine, server: &str) -> Result<Target, ClientError> {
        let host = myelin_engine::config_host(server).to_owned();
        if let Some(addr) = engine.config.federation.hosts.get(server) {
            return Ok(Target { addr: *addr, tls_name: host, host_header: server.to_owned() });
        }
        if host.parse::<std::net::IpAddr>().is_ok() || has_port(server) {
            return Self::direct(server).await;
        }
        // The delegated name (or ours) is used as is when it is an IP literal or has a
        // port; otherwise its SRV records are asked for, then port 8448.
        let name = self.delegation(&host).await.unwrap_or_else(|| server.to_owned());
        let name_host = myelin_engine::config_host(&name).to_owned();
        if name_host.parse::<std::net::IpAddr>().is_err()
            && !has_port(&name)
            && let Some((target, port)) = self.srv_target(&name_host).await
        {
            let mut found = Self::direct(&format!("{target}:{port}")).await?;
            found.tls_name = name_host;
            found.host_header = name;
            return Ok(found);
        }
        let mut target = Self::direct(&name).await?;
        target.host_header = name;
        Ok(target)
    }

    /// The best SRV target of `_matrix-fed._tcp.<host>`, else of the deprecated
    /// `_matrix._tcp.<host>`; answers (and their absence) cached for an hour.
    async fn srv_target(&self, host: &str) -> Option<(String, u16)> {
        if let Some((answer, until)) = self.srv_answers.lock().get(host)
            && *until > std::time::Instant::now()
        {
            return answer.clone();
        }
        let mut answer = None;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            match super::dns::srv(&format!("{service}.{host}"), &self.dns_servers).await {
                Ok(records) => {
                    if let Some(best) = records.into_iter().next() {
                        tracing::info!(server = host, target = %best.target, port = best.port, %service, "SRV record found");
                        answer = Some((best.target, best.port));
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(server = host, %service, error = %e, "SRV lookup failed");
                }
            }
        }
        self.srv_answers
            .lock()
            .insert(host.to_owned(), (answer.clone(), std::time::Instant::now() + Duration::from_secs(3600)));
        answer
    }

    /// An IP literal or a name, with its port or 8448, without delegation.
    async fn direct(server: &str) -> Result<Target, ClientError> {
        let host = myelin_engine::config_host(server).to_owned();
        let port = if has_port(server) { server.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) } else { None };
        let port = port.unwrap_or(8448);
        let addr = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => {
                // IPv4 first: a name like `localhost` often lists `::1` first while the
                // peer listens on IPv4 only, and there is no connection racing here yet.
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| ClientError::Resolve(server.to_owned()))?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied()
                    .ok_or_else(|| ClientError::Resolve(server.to_owned()))?
            }
        };
        Ok(Target { addr, tls_name: host, host_header: server.to_owned() })
    }

    /// The `m.server` of `https://host/.well-known/matrix/server`, cached for an hour.
    async fn delegation(&self, host: &str) -> Option<String> {
        if let Some((answer, until)) = self.delegations.lock().get(host)
            && *until > std::time::Instant::now()
        {
            return answer.clone();
        }
        let answer = self.fetch_well_known(host).await;
        match &answer {
            Some(d) => tracing::info!(server = host, delegated = %d, "server delegates federation"),
            None => tracing::debug!(server = host, "no .well-known delegation"),
        }
        self.delegations
            .lock()
            .insert(host.to_owned(), (answer.clone(), std::time::Instant::now() + Duration::from_secs(3600)));
        answer
    }

    async fn fetch_well_known(&self, host: &str) -> Option<String> {
        let fut = async {
            let addr = tokio::net::lookup_host((host, 443)).await.ok()?.next()?;
            let tcp = TcpStream::connect(addr).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.ok()?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = http::Request::builder()
                .uri("/.well-known/matrix/server")
                .header(http::header::HOST, host)
                .body(Full::new(Bytes::new()))
                .ok()?;
            let resp = sender.send_request(req).await.ok()?;
            if resp.status() != StatusCode::OK {
                return None;
            }
            let body = Limited::new(resp.into_body(), 64 * 1024).collect().await.ok()?.to_bytes();
            let json: JsonValue = serde_json::from_slice(&body).ok()?;
            let delegated = json["m.server"].as_str()?;
            ruma::ServerName::parse(delegated).ok().map(|n| n.to_string())
        };
        tokio::time::timeout(Duration::from_secs(10), fut).await.ok().flatten()
    }

    /// The signal that `server` is reachable again (see [`FederationClient::mark_alive`]).
    pub fn alive_signal(&self, server: &str) -> Arc<tokio::sync::Notify> {
        self.alive.lock().entry(server.to_owned()).or_default().clone()
    }

    /// Records that `server` just reached us: a sender backing off from it retries now.
    pub fn mark_alive(&self, server: &str) {
        if let Some(n) = self.alive.lock().get(server) {
            n.notify_one();
        }
    }

    /// Queues an EDU for `server`'s next transaction (at most 1,000 waiting per destination).
    pub fn queue_edu(&self, server: &str, edu: JsonValue) {
        let mut all = self.edus.lock();
        let queue = all.entry(server.to_owned()).or_default();
        if queue.len() < 1000 {
            queue.push(edu);
        }
        drop(all);
        self.edu_ready.notify_one();
    }

    /// Takes up to `max` queued EDUs for `server`.
    pub fn take_edus(&self, server: &str, max: usize) -> Vec<JsonValue> {
        let mut all = self.edus.lock();
        let Some(queue) = all.get_mut(server) else { return Vec::new() };
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// Puts EDUs back in front after a failed send.
    pub fn requeue_edus(&self, server: &str, edus: Vec<JsonValue>) {
        let mut all = self.edus.lock();
        let queue = all.entry(server.to_owned()).or_default();
        let rest = std::mem::take(queue);
        *queue = edus.into_iter().chain(rest).take(1000).collect();
    }

    /// Destinations with EDUs waiting.
    pub fn edu_destinations(&self) -> Vec<String> {
        self.edus.lock().iter().filter(|(_, q)| !q.is_empty()).map(|(d, _)| d.clone()).collect()
    }

    /// Whether `server` may be talked to under the configured and runtime allow/deny lists.
    pub fn allowed(engine: &Engine, server: &str) -> bool {
        engine.policy.allows(server)
    }

    /// Sends one request to `server`; `signed` adds the `X-Matrix` header.
    pub async fn request(
        &self,
        engine: &Engine,
        server: &str,
        method: Method,
        path_and_query: &str,
        body: Option<&JsonValue>,
        signed: bool,
    ) -> Result<Response, ClientError> {
        let raw = self.request_raw(engine, server, method, path_and_query, body, signed, MAX_RESPONSE).await?;
        let json = serde_json::from_slice(&raw.body).unwrap_or(JsonValue::Null);
        Ok(Response { status: raw.status, json })
    }

    /// [`FederationClient::request`] with a body that is canonical JSON already
    /// (a transaction assembled from stored events): signed and sent as it is.
    pub async fn request_canonical(
        &self,
        engine: &Engine,
        server: &str,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let raw = self.send_bytes(engine, server, method, path_and_query, Some(body), true, MAX_RESPONSE).await?;
        let json = serde_json::from_slice(&raw.body).unwrap_or(JsonValue::Null);
        Ok(Response { status: raw.status, json })
    }

    /// Like [`FederationClient::request`], returning the raw body (at most `limit` bytes).
    #[allow(clippy::too_many_arguments)]
    pub async fn request_raw(
        &self,
        engine: &Engine,
        server: &str,
        method: Method,
        path_and_query: &str,
        body: Option<&JsonValue>,
        signed: bool,
        limit: usize,
    ) -> Result<RawResponse, ClientError> {
        // A signed body is sent in the canonical form it is signed in: one conversion.
        let bytes = match body {
            Some(b) if signed => Some(xmatrix::canonical_body(b)?),
            Some(b) => Some(
                serde_json::to_vec(b)
                    .map_err(|e| ClientError::Transport { server: server.to_owned(), reason: e.to_string() })?,
            ),
            None => None,
        };
        self.send_bytes(engine, server, method, path_and_query, bytes, signed, limit).await
    }

    /// Sends one request whose body is already serialized (canonical JSON when `signed`).
    #[allow(clippy::too_many_arguments)]
    async fn send_bytes(
        &self,
        engine: &Engine,
        server: &str,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        signed: bool,
        limit: usize,
    ) -> Result<RawResponse, ClientError> {
        if !Self::allowed(engine, server) {
            return Err(ClientError::NotAllowed(server.to_owned()));
        }
        let transport = |reason: String| ClientError::Transport { server: server.to_owned(), reason };
        // Shared by both attempts without a copy.
        let body = &body.map(Bytes::from);
        // A pooled connection the peer closed meanwhile fails before any answer:
        // that attempt is repeated once on a fresh connection.
        let method = &method;
        let attempt = |reuse: bool| async move {
            let pooled = if reuse { self.pooled(server).await } else { None };
            let was_pooled = pooled.is_some();
            let (mut sender, host_header) = match pooled {
                Some(s) => s,
                None => {
                    let target = self.resolve(engine, server).await?;
                    let addr = target.addr;
                    let tcp = TcpStream::connect(addr).await.map_err(|e| transport(format!("connect {addr}: {e}")))?;
                    // Requests and answers are small and waited for: never hold a segment back.
                    let _ = tcp.set_nodelay(true);
                    let name = rustls::pki_types::ServerName::try_from(target.tls_name.clone())
                        .map_err(|e| transport(format!("server name: {e}")))?;
                    let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| transport(format!("TLS: {e}")))?;
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(|e| transport(format!("HTTP: {e}")))?;
                    let span = tracing::debug_span!("federation_connection", destination = %server);
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            let _ = conn.await;
                        },
                        span,
                    ));
                    (sender, target.host_header)
                }
            };
            let mut req = http::Request::builder()
                .method(method.clone())
                .uri(path_and_query)
                .header(http::header::HOST, &host_header);
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            if signed {
                let auth = xmatrix::sign_canonical(
                    &engine.keys,
                    engine.server_name.as_str(),
                    server,
                    method.as_str(),
                    path_and_query,
                    body.as_deref(),
                );
                req = req.header(http::header::AUTHORIZATION, auth);
            }
            let req = req.body(Full::new(body.clone().unwrap_or_default())).map_err(|e| transport(e.to_string()))?;
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if was_pooled => return Ok(Err(e)),
                Err(e) => return Err(transport(format!("HTTP: {e}"))),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the response: {e}")))?
                .to_bytes();
            // The whole response was read: the connection can carry the next request.
            self.give_back(server, (sender, host_header));
            Ok(Ok(RawResponse { status, headers, body }))
        };
        let fut = async {
            match attempt(true).await? {
                Ok(r) => Ok(r),
                Err(stale) => {
                    tracing::debug!(destination = %server, error = %stale, "pooled connection was stale; reconnecting");
                    self.forget_connections(server);
                    attempt(false).await?.map_err(|e| transport(format!("HTTP: {e}")))
                }
            }
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| transport("timed out".into()))?
    }

    /// An idle pooled connection to `server` that is still open and ready.
    async fn pooled(&self, server: &str) -> Option<Conn> {
        loop {
            let (mut conn, host) = self.pool.lock().get_mut(server).and_then(Vec::pop)?;
            if !conn.is_closed() && conn.ready().await.is_ok() {
                return Some((conn, host));
            }
        }
    }

    fn give_back(&self, server: &str, conn: Conn) {
        if conn.0.is_closed() {
            return;
        }
        let mut pool = self.pool.lock();
        let idle = pool.entry(server.to_owned()).or_default();
        if idle.len() < POOL_PER_DESTINATION {
            idle.push(conn);
        }
    }

    /// Drops every pooled connection to `server` (after a failure, the next request reconnects).
    pub fn forget_connections(&self, server: &str) {
        self.pool.lock().remove(server);
    }

    /// The verified public key `key_id` of `server`, fetching its key document if needed.
    pub async fn server_key(&self, engine: &Engine, server: &str, key_id: &str) -> Result<Option<String>, ClientError> {
        if let Some(key) = engine.keyring.key(server, key_id, false)? {
            return Ok(Some(key));
        }
        if engine.keyring.is_pinned(server) {
            // Pinned by configuration: an unknown key id is not looked up anywhere.
            return Ok(None);
        }
        self.refresh_keys(engine, server).await?;
        Ok(engine.keyring.key(server, key_id, false)?)
    }

    /// `server`'s key document: the stored one while valid, else fetched (directly,
    /// then through the configured notaries). What a notary serves.
    pub async fn key_document(&self, engine: &Engine, server: &str) -> Result<JsonValue, ClientError> {
        if let Some(doc) = engine.keyring.document(server)? {
            return Ok(doc);
        }
        self.refresh_keys(engine, server).await?;
        engine
            .keyring
            .document(server)?
            .ok_or_else(|| ClientError::Transport { server: server.to_owned(), reason: "no valid key document".into() })
    }

    /// Fetches and stores `server`'s keys: from the server itself, or failing
    /// that from each notary in `federation.notaries` in turn.
    async fn refresh_keys(&self, engine: &Engine, server: &str) -> Result<(), ClientError> {
        let direct = self.fetch_direct(engine, server).await;
        let Err(direct_error) = direct else { return Ok(()) };
        let mut reasons = vec![direct_error.to_string()];
        for notary in engine.config.federation.notaries.iter().filter(|n| n.as_str() != server) {
            match self.fetch_via_notary(engine, notary, server).await {
                Ok(()) => {
                    tracing::info!(%server, %notary, "keys fetched through a notary");
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(%server, %notary, error = %e, "notary could not vouch for the keys");
                    reasons.push(format!("via {notary}: {e}"));
                }
            }
        }
        if reasons.len() == 1 {
            return Err(direct_error);
        }
        Err(ClientError::Transport { server: server.to_owned(), reason: reasons.join("; ") })
    }

    async fn fetch_direct(&self, engine: &Engine, server: &str) -> Result<(), ClientError> {
        let resp = self.request(engine, server, Method::GET, "/_matrix/key/v2/server", None, false).await?;
        if resp.status != StatusCode::OK {
            return Err(ClientError::Transport {
                server: server.to_owned(),
                reason: format!("key request answered {}", resp.status),
            });
        }
        engine.keyring.accept_document(server, &resp.json).await?;
        Ok(())
    }

    /// Asks `notary` for `server`'s keys; accepts a document signed by both.
    async fn fetch_via_notary(&self, engine: &Engine, notary: &str, server: &str) -> Result<(), ClientError> {
        let fail = |reason: String| ClientError::Transport { server: notary.to_owned(), reason };
        // The notary's own keys: pinned, stored, or from the notary itself (never via notaries).
        if !engine.keyring.is_pinned(notary) && engine.keyring.document(notary)?.is_none() {
            self.fetch_direct(engine, notary).await?;
        }
        let body = serde_json::json!({ "server_keys": { server: {} } });
        let resp = self.request(engine, notary, Method::POST, "/_matrix/key/v2/query", Some(&body), false).await?;
        if resp.status != StatusCode::OK {
            return Err(fail(format!("key query answered {}", resp.status)));
        }
        let docs = resp.json["server_keys"].as_array().cloned().unwrap_or_default();
        let doc = docs
            .into_iter()
            .find(|d| d["server_name"].as_str() == Some(server))
            .ok_or_else(|| fail(format!("no keys for {server}")))?;
        // The notary's signature, by any of its keys we trust.
        let signed_by = doc["signatures"][notary].as_object().cloned().unwrap_or_default();
        let mut set = ruma::signatures::PublicKeySet::new();
        for key_id in signed_by.keys() {
            if let Some(key) = engine.keyring.key(notary, key_id, false)?
                && let Ok(key) = ruma::serde::Base64::parse(&key)
            {
                set.insert(key_id.clone(), key);
            }
        }
        if set.is_empty() {
            return Err(fail(format!("the answer for {server} carries no signature of {notary} we can check")));
        }
        // verify_json wants keys for every signer: the server's own, from the document
        // (accept_document checks that self-signature again on its own).
        let mut own = ruma::signatures::PublicKeySet::new();
        for (key_id, key) in doc["verify_keys"].as_object().into_iter().flatten() {
            if let Some(k) = key["key"].as_str().and_then(|k| ruma::serde::Base64::parse(k).ok()) {
                own.insert(key_id.clone(), k);
            }
        }
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(notary.to_owned(), set);
        map.insert(server.to_owned(), own);
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(doc.clone()).map_err(|e| fail(format!("not canonical JSON: {e}")))?;
        ruma::signatures::verify_json(&map, &object).map_err(|e| fail(format!("notary signature: {e}")))?;
        engine.keyring.accept_document(server, &doc).await?;
        Ok(())
    }
}

#[cfg(test)]
mod discovery_tests {
    use super::has_port;

    #[test]
    fn explicit_ports_are_told_apart_from_bare_names_and_ipv6() {
        assert!(has_port("example.org:8448"));
        assert!(has_port("10.0.0.1:443"));
        assert!(has_port("[::1]:8448"));
        assert!(!has_port("example.org"));
        assert!(!has_port("[::1]"));
        assert!(!has_port("::1"));
        assert!(!has_port("example.org:http"));
    }
}
