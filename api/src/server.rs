//! The listeners: accept loops, per-request pipeline, graceful shutdown.
//!
//! Per connection: the listener's caps ([`ConnLimits`]: over
//! `limits.max_connections` or `limits.max_connections_per_ip` it is closed
//! at accept), TLS (federation, 10 s), then the first byte and the request
//! headers each within `limits.header_timeout_s` ([`crate::linger::FirstByte`],
//! then hyper's `header_read_timeout`; the connection is closed after it).
//!
//! Per request: CORS preflight → route lookup (404/405 `M_UNRECOGNIZED`) →
//! body limit (413 `M_TOO_LARGE` from `Content-Length` before reading, or as
//! soon as the streamed body passes the limit) and body deadline (the whole
//! body within `limits.body_timeout_s`, else 408 and `Connection: close`) →
//! handler within `limits.handler_timeout_s` (plus a long-poll route's own
//! wait; else 503 `M_UNKNOWN`), with a panic turned into 500 `M_UNKNOWN`
//! while the server keeps serving → CORS headers, metrics. Streaming routes
//! (media uploads, authenticated first) read their body themselves with the
//! body timeout between two chunks, and have no handler deadline: their
//! length is bounded by the size limit and the pace by the chunk timeout.
//!
//! A handler stopped by its deadline is dropped at an `.await`, exactly as
//! when its client disconnects (hyper drops the request's future then), so it
//! adds no new way for a handler to be cut short.
//!
//! Every connection is wrapped in [`Linger`]: when the server ends a
//! connection whose request body it did not read, the client can still finish
//! sending and read the answer instead of being reset.
//!
//! Shutdown: stop accepting, let in-flight requests finish for at most the
//! grace period, then drop what is left.

use std::{
    convert::Infallible,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use myelin_engine::Engine;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::Instrument;

use crate::{
    conn_limit::ConnLimits,
    error::ApiError,
    http_util::{Resp, add_cors},
    linger::Linger,
    router::{Ctx, Listener, Miss, Req, Route, Router},
};

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct ListenerState {
    ctx: Ctx,
    router: Router,
    timeouts: Timeouts,
    conns: Arc<ConnLimits>,
}

/// The `[limits]` timeouts, as durations.
#[derive(Clone, Copy)]
struct Timeouts {
    header: Duration,
    body: Duration,
    handler: Duration,
}

impl ListenerState {
    fn new(ctx: Ctx, router: Router) -> Self {
        let limits = &ctx.engine.config.limits;
        let timeouts = Timeouts {
            header: Duration::from_secs(limits.header_timeout_s),
            body: Duration::from_secs(limits.body_timeout_s),
            handler: Duration::from_secs(limits.handler_timeout_s),
        };
        let conns = ConnLimits::new(ctx.listener.label(), limits.max_connections, limits.max_connections_per_ip);
        Self { ctx, router, timeouts, conns }
    }
}

/// Handles one request end to end; never fails at the HTTP level.
async fn handle(
    state: Arc<ListenerState>,
    remote: std::net::SocketAddr,
    mut req: http::Request<Incoming>,
) -> Result<Resp, Infallible> {
    // Behind a trusted reverse proxy, the client it names (federation requests
    // are counted by their signed origin, never by address).
    let client = match state.ctx.listener {
        crate::router::Listener::Client => {
            crate::client_ip::client_addr(&state.ctx.engine.config.client.trusted_proxies, remote, req.headers())
        }
        crate::router::Listener::Federation => remote,
    };
    req.extensions_mut().insert(crate::router::PeerAddr(client));
    let started = Instant::now();
    let method = req.method().clone();
    let mut route = "unmatched";
    let mut resp = if method == Method::OPTIONS {
        crate::http_util::text_response(StatusCode::OK, "application/json", "{}")
    } else {
        let (template, answer) = dispatch(&state, req).await;
        route = template;
        answer.unwrap_or_else(ApiError::into_response)
    };
    if resp.status() == StatusCode::REQUEST_TIMEOUT {
        // The rest of the body is not waited for: the connection cannot carry another request.
        resp.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    add_cors(&mut resp);
    let listener = state.ctx.listener.label();
    // `route` is the matched template (a bounded set of our own constants), so
    // a send rate or `/sync` latency can be told apart from the rest.
    let method = method_label(&method);
    metrics::counter!("myelin_http_requests_total", "listener" => listener, "route" => route,
        "method" => method, "status" => resp.status().as_str().to_owned())
    .increment(1);
    metrics::histogram!("myelin_http_request_duration_seconds", "listener" => listener, "route" => route,
        "method" => method)
    .record(started.elapsed().as_secs_f64());
    Ok(resp)
}

/// The `method` label without an allocation per request (routes only take these).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Routes `req` and runs its handler; also names the route's template.
async fn dispatch(state: &ListenerState, req: http::Request<Incoming>) -> (&'static str, Result<Resp, ApiError>) {
    let path = req.uri().path().to_owned();
    let (route, params) = match state.router.find(req.method(), &path) {
        Ok(found) => found,
        Err(Miss::NotFound) => {
            return ("unmatched", Err(ApiError::unrecognized(format!("unrecognized request: {path}"))));
        }
        Err(Miss::MethodNotAllowed) => return ("unmatched", Err(ApiError::method_not_allowed())),
        Err(Miss::BadPath) => return ("unmatched", Err(ApiError::unrecognized("bad percent-encoding in the path"))),
    };
    (route.template, run_route(state, req, route, params, &path).await)
}

async fn run_route(
    state: &ListenerState,
    req: http::Request<Incoming>,
    route: &Route,
    params: crate::router::Params,
    path: &str,
) -> Result<Resp, ApiError> {
    let (parts, body) = req.into_parts();
    if route.streaming {
        let fut =
            (route.handler)(state.ctx.clone(), Req { parts, body: bytes::Bytes::new(), stream: Some(body), params });
        return run_handler(fut, path).await;
    }
    let body_timeout = state.timeouts.body;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body as u64) {
        return Err(ApiError::too_large(route.max_body));
    }
    let collected = tokio::time::timeout(body_timeout, Limited::new(body, route.max_body).collect()).await;
    let body = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(ApiError::too_large(route.max_body)),
        Ok(Err(e)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("reading the body: {e}")));
        }
        Err(_) => {
            metrics::counter!("myelin_http_body_timeouts_total", "listener" => state.ctx.listener.label()).increment(1);
            tracing::debug!(path, "request body not received within limits.body_timeout_s; answered 408");
            return Err(crate::http_util::body_timed_out(body_timeout));
        }
    };
    let fut = (route.handler)(state.ctx.clone(), Req { parts, body, stream: None, params });
    let deadline = state.timeouts.handler + route.long_poll;
    match tokio::time::timeout(deadline, run_handler(fut, path)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!("myelin_http_handler_timeouts_total", "listener" => state.ctx.listener.label())
                .increment(1);
            tracing::warn!(path, seconds = deadline.as_secs(), "handler stopped after limits.handler_timeout_s");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                format!("the request was not done within {} s", deadline.as_secs()),
            ))
        }
    }
}

async fn run_handler(fut: crate::router::HandlerFuture, path: &str) -> Result<Resp, ApiError> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path, panic = what, "handler panicked; answered 500 and kept serving");
            metrics::counter!("myelin_http_handler_panics_total").increment(1);
            Err(ApiError::unknown("internal server error"))
        }
    }
}

fn http_builder(timeouts: Timeouts) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    builder
}

/// A running server: its bound addresses and the means to stop it.
pub struct Running {
    /// Where the client API listens.
    pub client_addr: SocketAddr,
    /// Where the federation API listens, when enabled.
    pub federation_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    engine: Arc<Engine>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {err}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        err: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// An appservice's sender user could not be created.
    #[error("appservice sender user: {0}")]
    Appservice(#[from] myelin_engine::users::UserError),
}

/// Binds the listeners and starts serving.
pub async fn start(engine: Arc<Engine>) -> Result<Running, StartError> {
    crate::metrics::handle();
    let config = engine.config.clone();
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let admin_socket = crate::admin::bind(&engine);
    let client = TcpListener::bind(config.client.listen).await.map_err(|err| StartError::Bind {
        what: "client",
        addr: config.client.listen,
        err,
    })?;
    let client_addr =
        client.local_addr().map_err(|err| StartError::Bind { what: "client", addr: config.client.listen, err })?;
    let limiter = Arc::new(crate::ratelimit::RateLimiter::from_config(&config.rate_limit));
    let deletions = Arc::new(crate::router::RoomDeletions::default());
    // The engine makes every outbound federation request through this transport.
    engine.federation.set_transport(Arc::new(crate::transport::HttpTransport::new(&config)?));
    let mut federation_addr = None;
    let federation = if config.federation.enabled {
        let tls = crate::tls::server_config(&config)?;
        let listener = TcpListener::bind(config.federation.listen).await.map_err(|err| StartError::Bind {
            what: "federation",
            addr: config.federation.listen,
            err,
        })?;
        federation_addr = Some(listener.local_addr().map_err(|err| StartError::Bind {
            what: "federation",
            addr: config.federation.listen,
            err,
        })?);
        let state = Arc::new(ListenerState::new(
            Ctx {
                engine: engine.clone(),
                listener: Listener::Federation,
                federation_addr,
                limiter: limiter.clone(),
                deletions: deletions.clone(),
            },
            crate::routes::federation_router(),
        ));
        Some((listener, state, tokio_rustls::TlsAcceptor::from(tls)))
    } else {
        None
    };

    let client_state = Arc::new(ListenerState::new(
        Ctx { engine: engine.clone(), listener: Listener::Client, federation_addr, limiter, deletions },
        crate::routes::client_router(),
    ));
    tracing::info!(addr = %client_addr, "client API listening (HTTP)");
    tasks.spawn(accept_plain(client, client_state, stop_rx.clone()).instrument(tracing::info_span!("client_accept")));
    if let Some((listener, state, acceptor)) = federation {
        tracing::info!(addr = ?federation_addr, "federation API listening (TLS)");
        tasks.spawn(
            accept_tls(listener, state, acceptor, stop_rx.clone()).instrument(tracing::info_span!("federation_accept")),
        );
    }
    if config.federation.enabled {
        tasks.spawn(
            myelin_engine::federation::sender::run(engine.clone(), stop_rx.clone())
                .instrument(tracing::info_span!("federation_sender")),
        );
        tasks.spawn(
            prune_seen_txns(engine.clone(), stop_rx.clone()).instrument(tracing::info_span!("federation_txn_prune")),
        );
        tasks.spawn(
            myelin_engine::federation::inbound::run_pending_retries(
                engine.clone(),
                myelin_engine::federation::inbound::PENDING_RETRY_EVERY,
                stop_rx.clone(),
            )
            .instrument(tracing::info_span!("federation_pending_retries")),
        );
    }
    engine.ensure_appservice_senders().await?;
    tasks.spawn(
        myelin_engine::appservice::sender::run(engine.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("appservice_sender")),
    );
    tasks.spawn(
        myelin_engine::pushers::dispatch::run(engine.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("push_dispatch")),
    );
    tasks.spawn(
        myelin_engine::pushers::sender::run(engine.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("push_sender")),
    );
    tasks.spawn(
        myelin_engine::ephemeral::run_timeouts(engine.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("presence_timeouts")),
    );
    // Deactivations a crash or stop cut off: their rooms are left and keys forgotten now.
    let finishing = engine.clone();
    tasks.spawn(
        async move {
            if let Err(e) = finishing.finish_deactivations().await {
                tracing::error!(error = %e, "unfinished deactivations could not be finished; retried at the next start");
            }
        }
        .instrument(tracing::info_span!("finish_deactivations")),
    );
    tasks.spawn(
        crate::admin::serve(engine.clone(), admin_socket, stop_rx).instrument(tracing::info_span!("admin_socket")),
    );
    Ok(Running { client_addr, federation_addr, stop, tasks, engine })
}

/// The grace period for in-flight requests at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Running {
    /// Stops accepting, waits up to `grace` for in-flight requests, closes storage.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::sleep(grace + Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => {
                    tracing::warn!("listeners did not stop in time; aborting them");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        tracing::info!("server stopped");
    }
}

async fn drain(graceful: GracefulShutdown, what: &'static str) {
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = what, "all connections closed"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(listener = what, "in-flight requests cut off after the grace period"),
    }
}

/// Forgets processed inbound transaction ids older than a day, hourly.
async fn prune_seen_txns(engine: Arc<Engine>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match engine.seen_txns.prune().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "forgot old inbound transaction ids"),
            Err(e) => tracing::warn!(error = %e, "pruning inbound transaction ids failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn accept_plain(listener: TcpListener, state: Arc<ListenerState>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = http_builder(state.timeouts);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the client listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Over a cap the stream is dropped here: closed before a byte is read.
        let Ok(admitted) = state.conns.admit(remote.ip()) else { continue };
        let _ = stream.set_nodelay(true);
        let (state, header) = (state.clone(), state.timeouts.header);
        let service = hyper::service::service_fn(move |req| handle(state.clone(), remote, req));
        let io = crate::linger::FirstByte::new(Linger::new(stream), header);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                let _admitted = admitted;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("client_conn", %remote)),
        );
    }
    drop(listener);
    drain(graceful, "client").await;
}

async fn accept_tls(
    listener: TcpListener,
    state: Arc<ListenerState>,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(http_builder(state.timeouts));
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the federation listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(admitted) = state.conns.admit(remote.ip()) else { continue };
        metrics::counter!("myelin_federation_connections_accepted_total").increment(1);
        let _ = stream.set_nodelay(true);
        let (state, acceptor, builder) = (state.clone(), acceptor.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let _admitted = admitted;
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(Linger::new(stream))).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let header = state.timeouts.header;
                let service = hyper::service::service_fn(move |req| handle(state.clone(), remote, req));
                let io = crate::linger::FirstByte::new(tls, header);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%remote, error = %e, "federation connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("federation_conn", %remote)),
        );
    }
    drop(listener);
    drain(graceful, "federation").await;
}

/// Serves `router` on an already bound plain listener until `stop` fires.
///
/// The same pipeline as the real client listener; tests use it to exercise
/// routes that production does not have (a handler that panics).
pub async fn serve_router(listener: TcpListener, ctx: Ctx, router: Router, stop: watch::Receiver<bool>) {
    accept_plain(listener, Arc::new(ListenerState::new(ctx, router)), stop).await;
}
