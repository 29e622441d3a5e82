//! The federation transport over the network: `myelin-engine`'s
//! [`Transport`] implemented with hyper, rustls and server discovery.
//!
//! The engine builds and signs every request; this module only carries it.
//! Server discovery (which address, TLS name and `Host` a server name
//! stands for) is in `discovery`.
//!
//! The outbound policy ([`myelin_engine::net_policy`]): every address this
//! module is about to connect to — a federation destination, a `.well-known`
//! host, an SRV target — is checked after DNS resolution, so that a
//! stranger naming `127.0.0.1:6379` or a name resolving into the LAN as a
//! server cannot make us open a connection there. Loopback, private,
//! link-local and the other internal ranges are refused unless
//! `federation.ip_range_allow` lists them; `federation.ip_range_deny` refuses
//! more; destinations in `[federation.hosts]` are the operator's own and are
//! not checked. A refusal is a [`TransportError::Refused`], which callers
//! report like any other unreachable server (see `FederationError::Transport`).
//!
//! TLS with rustls: with `verify_tls` the server certificate must chain to the
//! system roots or a `trusted_ca` file and name the server; without it any
//! certificate is accepted (labs only; a warning at start). A destination
//! listed `true` in `[federation.insecure]` gets the accepting configuration
//! while every other one is still verified. Every request has a timeout and a
//! response size limit.
//!
//! Connections are pooled per destination (HTTP/1.1 keep-alive, up to
//! [`POOL_PER_DESTINATION`] idle each, [`POOL_DESTINATIONS`] destinations and
//! [`POOL_TOTAL`] connections in all, the least recently used going first):
//! a transaction stream to a busy peer pays the TCP and TLS handshakes once,
//! not per request, and strangers naming ever-new servers cannot grow it.

pub mod direct;
mod discovery;
pub mod dns;
mod pool;

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use myelin_engine::{
    federation::{OutboundRequest, RawResponse, Transport, TransportError, transport::TransportFuture},
    net_policy::OutboundPolicy,
};
use tokio::net::TcpStream;

pub use discovery::MAX_DELEGATIONS;

/// Most bytes read of an answer that is not a 2xx.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per destination.
const POOL_PER_DESTINATION: usize = 4;
/// Most destinations with idle connections kept.
const POOL_DESTINATIONS: usize = 1024;
/// Most idle connections kept in all.
const POOL_TOTAL: usize = 2048;

/// One idle HTTP/1.1 connection to a destination, with the `Host` its requests carry.
type Conn = (hyper::client::conn::http1::SendRequest<Full<Bytes>>, String);

/// The network side of federation for one server.
pub struct HttpTransport {
    /// Verifies certificates (unless `verify_tls` is off, then it is `insecure_tls`).
    tls: Arc<rustls::ClientConfig>,
    /// Accepts any certificate: for the destinations in `insecure`.
    insecure_tls: Arc<rustls::ClientConfig>,
    /// `[federation.insecure]`: destinations whose certificates are not verified.
    insecure: BTreeSet<String>,
    /// Which resolved addresses may be connected to.
    policy: OutboundPolicy,
    /// `[federation.hosts]`: static server name → address overrides.
    hosts: std::collections::BTreeMap<String, SocketAddr>,
    /// Idle keep-alive connections per destination (bounded, see [`pool`]).
    pool: pool::IdlePool<Conn>,
    /// `.well-known` delegations looked up: server name → (delegated name, until);
    /// at most [`MAX_DELEGATIONS`] names.
    delegations: parking_lot::Mutex<std::collections::HashMap<String, (Option<String>, std::time::Instant)>>,
    /// SRV lookups (with their own bounded, TTL-honouring cache); `None` when
    /// the system has no usable resolver configuration.
    srv: Option<dns::SrvResolver>,
    /// Requests to configured URLs (appservices).
    direct: direct::Direct,
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

impl HttpTransport {
    /// Builds the transport from the configuration (roots, trusted CAs, verification,
    /// static hosts, the outbound policy).
    pub fn new(config: &myelin_engine::Config) -> Result<Self, crate::tls::TlsError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = || {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| crate::tls::TlsError(e.to_string()))
        };
        let mut insecure_tls = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
            .with_no_client_auth();
        insecure_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let insecure_tls = Arc::new(insecure_tls);
        let tls = if config.federation.verify_tls {
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
            let mut tls = builder()?.with_root_certificates(roots).with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(tls)
        } else {
            tracing::warn!(
                "federation.verify_tls is false: no remote server's certificate is verified, so anyone on the \
                 path can impersonate any server (labs only; [federation.insecure] limits this to named servers)"
            );
            insecure_tls.clone()
        };
        let insecure: BTreeSet<String> =
            config.federation.insecure.iter().filter(|(_, off)| **off).map(|(name, _)| name.clone()).collect();
        if config.federation.verify_tls && !insecure.is_empty() {
            tracing::warn!(servers = ?insecure, "certificates of these servers are not verified ([federation.insecure])");
        }
        Ok(Self {
            direct: direct::Direct::new(tls.clone()),
            tls,
            insecure_tls,
            insecure,
            policy: OutboundPolicy::from_config(config),
            hosts: config.federation.hosts.clone(),
            pool: pool::IdlePool::new("federation", POOL_DESTINATIONS, POOL_PER_DESTINATION, POOL_TOTAL),
            delegations: parking_lot::Mutex::new(std::collections::HashMap::new()),
            srv: match dns::SrvResolver::new(&config.federation.dns_servers) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "no DNS resolver: servers are found without SRV records");
                    None
                }
            },
        })
    }

    /// The outbound policy this transport applies, for other outbound delivery to share.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The TLS configuration for `server`: the accepting one when `[federation.insecure]`
    /// names it (as given, or its host without the port).
    fn tls_for(&self, server: &str) -> Arc<rustls::ClientConfig> {
        let host = myelin_engine::config_host(server);
        if self.insecure.contains(server) || self.insecure.contains(host) {
            self.insecure_tls.clone()
        } else {
            self.tls.clone()
        }
    }

    /// The address of `resolved` to connect to ([`OutboundPolicy::choose`]); a
    /// refusal when it permits none of them.
    fn permitted(&self, server: &str, resolved: &[SocketAddr]) -> Result<SocketAddr, TransportError> {
        match self.policy.choose(resolved) {
            Some(addr) => Ok(addr),
            None if resolved.is_empty() => Err(TransportError::Resolve(server.to_owned())),
            None => {
                let shown: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
                Err(TransportError::Refused(format!("{server} resolved to {}", shown.join(", "))))
            }
        }
    }

    /// Sends one request and reads its answer, reconnecting once when a
    /// pooled connection turns out to be closed.
    async fn send_request(&self, server: &str, request: OutboundRequest) -> Result<RawResponse, TransportError> {
        let OutboundRequest { method, path_and_query, body, authorization, limit, spool } = request;
        let path_and_query = path_and_query.as_str();
        let spool = &spool;
        let connect = |what: &str, e: &dyn std::fmt::Display| TransportError::Connect(format!("{what}: {e}"));
        // Shared by both attempts without a copy.
        let body = &body;
        let authorization = &authorization;
        // A pooled connection the peer closed meanwhile fails before any answer:
        // that attempt is repeated once on a fresh connection.
        let method = &method;
        let attempt = |reuse: bool| async move {
            let pooled = if reuse { self.pooled(server).await } else { None };
            let was_pooled = pooled.is_some();
            let (mut sender, host_header) = match pooled {
                Some(s) => s,
                None => {
                    let target = self.resolve(server).await?;
                    let addr = target.addr;
                    let tcp = TcpStream::connect(addr).await.map_err(|e| connect(&addr.to_string(), &e))?;
                    // Requests and answers are small and waited for: never hold a segment back.
                    let _ = tcp.set_nodelay(true);
                    let name = rustls::pki_types::ServerName::try_from(target.tls_name.clone())
                        .map_err(|e| connect("server name", &e))?;
                    let tls = tokio_rustls::TlsConnector::from(self.tls_for(server))
                        .connect(name, tcp)
                        .await
                        .map_err(|e| connect("TLS", &e))?;
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(|e| TransportError::Http(e.to_string()))?;
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
            let resp =
                match exchange(&mut sender, method, path_and_query, &host_header, body, authorization, limit, spool)
                    .await
                {
                    Ok(r) => r,
                    Err(Stale(e)) if was_pooled => return Ok(Err(e)),
                    Err(Stale(e)) => return Err(TransportError::Http(e.to_string())),
                    Err(Failed(e)) => return Err(e),
                };
            // The whole response was read: the connection can carry the next request.
            self.give_back(server, (sender, host_header));
            Ok(Ok(resp))
        };
        let fut = async {
            match attempt(true).await? {
                Ok(r) => Ok(r),
                Err(stale) => {
                    tracing::debug!(destination = %server, error = %stale, "pooled connection was stale; reconnecting");
                    self.forget_connections(server);
                    attempt(false).await?.map_err(|e| TransportError::Http(e.to_string()))
                }
            }
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| TransportError::Timeout)?
    }

    /// An idle pooled connection to `server` that is still open and ready.
    async fn pooled(&self, server: &str) -> Option<Conn> {
        loop {
            let (mut conn, host) = self.pool.take(server)?;
            if !conn.is_closed() && conn.ready().await.is_ok() {
                return Some((conn, host));
            }
        }
    }

    fn give_back(&self, server: &str, conn: Conn) {
        if conn.0.is_closed() {
            return;
        }
        self.pool.give_back(server, conn);
    }

    /// Drops every pooled connection to `server` (after a failure, the next request reconnects).
    pub fn forget_connections(&self, server: &str) {
        self.pool.forget(server);
    }
}

/// Why one request on a connection got no answer.
pub(crate) enum ExchangeError {
    /// Sending failed before any answer: on a pooled connection, the peer had
    /// closed it meanwhile, and the request may be sent again on a new one.
    Stale(hyper::Error),
    /// Anything else.
    Failed(TransportError),
}
use ExchangeError::{Failed, Stale};

/// Sends one request on `sender` and reads the whole answer, at most `limit`
/// body bytes (an error answer at most [`ERROR_BODY_LIMIT`]): into `spool`
/// when it is set and the answer is a 2xx, else into memory.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &http::Method,
    uri: &str,
    host: &str,
    body: &Option<Bytes>,
    authorization: &Option<String>,
    limit: usize,
    spool: &Option<std::path::PathBuf>,
) -> Result<RawResponse, ExchangeError> {
    let mut req = http::Request::builder().method(method.clone()).uri(uri).header(http::header::HOST, host);
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    if let Some(auth) = authorization {
        req = req.header(http::header::AUTHORIZATION, auth.as_str());
    }
    let req = req
        .body(Full::new(body.clone().unwrap_or_default()))
        .map_err(|e| Failed(TransportError::Http(e.to_string())))?;
    let resp = sender.send_request(req).await.map_err(Stale)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    if let Some(path) = spool
        && status.is_success()
    {
        spool_body(resp.into_body(), path, limit).await.map_err(Failed)?;
        return Ok(RawResponse { status, headers, body: Bytes::new() });
    }
    // An error answer is a small JSON object: a peer cannot make us hold
    // `limit` bytes (50 MiB for media) of one in memory.
    let limit = if status.is_success() { limit } else { limit.min(ERROR_BODY_LIMIT) };
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            Failed(if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() && !status.is_success() {
                // Not the request's size limit: the peer's error answer is what is too large.
                TransportError::Http(format!("an error answer ({status}) larger than {limit} bytes"))
            } else if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                TransportError::TooLarge(limit)
            } else {
                TransportError::Http(format!("reading the response: {e}"))
            })
        })?
        .to_bytes();
    Ok(RawResponse { status, headers, body })
}

/// Writes a response body to a new file at `path` frame by frame, so memory
/// holds one frame however large the body; more than `limit` bytes is refused.
async fn spool_body(
    mut body: hyper::body::Incoming,
    path: &std::path::Path,
    limit: usize,
) -> Result<(), TransportError> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| TransportError::Http(format!("writing the response to {}: {e}", path.display()));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut written = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| TransportError::Http(format!("reading the response: {e}")))?;
        if let Ok(data) = frame.into_data() {
            written += data.len();
            if written > limit {
                drop(file);
                let _ = tokio::fs::remove_file(path).await;
                return Err(TransportError::TooLarge(limit));
            }
            file.write_all(&data).await.map_err(io)?;
        }
    }
    file.flush().await.map_err(io)?;
    Ok(())
}

impl Transport for HttpTransport {
    fn send<'a>(&'a self, destination: &'a str, request: OutboundRequest) -> TransportFuture<'a> {
        Box::pin(async move {
            let answer = self.send_request(destination, request).await;
            // What failed stays here, in the log: callers only say "could not be reached".
            match &answer {
                Err(e @ TransportError::Refused(_)) => {
                    tracing::info!(%destination, error = %e, "federation request not sent")
                }
                Err(e) => tracing::debug!(%destination, error = %e, "federation request failed"),
                Ok(_) => {}
            }
            answer
        })
    }

    fn send_url<'a>(&'a self, base_url: &'a str, request: OutboundRequest) -> TransportFuture<'a> {
        Box::pin(self.direct.send(base_url, request, None))
    }

    fn send_user_url<'a>(&'a self, base_url: &'a str, request: OutboundRequest) -> TransportFuture<'a> {
        Box::pin(async move {
            let answer = self.direct.send(base_url, request, Some(&self.policy)).await;
            if let Err(e @ TransportError::Refused(_)) = &answer {
                tracing::info!(url = base_url, error = %e, "request to a user-supplied URL not sent");
            }
            answer
        })
    }
}
