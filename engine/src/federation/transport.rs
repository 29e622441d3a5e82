//! The seam between the federation protocol and the network.
//!
//! Everything the engine asks of another server — transactions, joins,
//! backfill, missing events, state, keys, profile and directory queries,
//! remote media — goes through one [`Transport`]: it takes a request that
//! the engine has already built (path, body, and the `X-Matrix`
//! `Authorization` value the engine signed) and returns the raw answer.
//! The engine owns the protocol (what to ask, how to check the answer,
//! retries, backoff); the transport owns the network (server discovery,
//! TLS, connection reuse, timeouts, response size limits).
//!
//! `myelin-api` implements it over hyper and rustls. Engine tests implement
//! it in memory (a fake peer that answers, lies or times out), so the
//! protocol logic is tested without sockets. The same trait is the way out
//! for every other "deliver to a remote endpoint" queue (appservices, push
//! gateways): one mechanism, one backoff policy, one set of metrics.
//!
//! Guarantees a transport must give: a request either yields the whole
//! answer (at most [`OutboundRequest::limit`] body bytes, in memory or, for a
//! 2xx answer to a request with [`OutboundRequest::spool`], in that file) or
//! an error; it never blocks past its own timeout.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

/// Largest JSON answer read from another server.
pub const MAX_RESPONSE: usize = 16 << 20;

/// One request for another server, ready to send.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query, already percent-encoded.
    pub path_and_query: String,
    /// The body (canonical JSON when signed).
    pub body: Option<Bytes>,
    /// The `Authorization` value: `X-Matrix …` when signed for a server,
    /// `Bearer …` for an appservice.
    pub authorization: Option<String>,
    /// Most body bytes of the answer to read.
    pub limit: usize,
    /// Where a successful (2xx) answer's body goes instead of memory: the
    /// transport writes it to this file (at most `limit` bytes) and leaves
    /// [`RawResponse::body`] empty. Other answers are read into memory.
    pub spool: Option<std::path::PathBuf>,
}

/// A remote server's answer, unparsed.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The server name could not be turned into an address.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// No connection could be made (refused, unreachable, TLS failed).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The outbound policy does not permit connecting to the address the
    /// destination resolved to (`federation.ip_range_allow` / `ip_range_deny`).
    #[error("refused by the outbound policy: {0}")]
    Refused(String),
    /// The request or its answer took too long.
    #[error("timed out")]
    Timeout,
    /// The connection broke, or the answer was not HTTP.
    #[error("HTTP: {0}")]
    Http(String),
    /// The answer's body passed the request's limit.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// This engine has no network (a test or a tool without federation).
    #[error("no federation transport is configured")]
    NoTransport,
}

/// The future a transport returns.
pub type TransportFuture<'a> = Pin<Box<dyn Future<Output = Result<RawResponse, TransportError>> + Send + 'a>>;

/// Carries requests to other servers.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `destination` (a Matrix server name) and reads the answer.
    fn send<'a>(&'a self, destination: &'a str, request: OutboundRequest) -> TransportFuture<'a>;

    /// Sends `request` to an endpoint the operator configured by URL (an
    /// appservice, a push gateway): `base_url` is `http(s)://host[:port][/prefix]`,
    /// connected to as written, without Matrix server discovery.
    fn send_url<'a>(&'a self, base_url: &'a str, request: OutboundRequest) -> TransportFuture<'a> {
        let _ = (base_url, request);
        Box::pin(async { Err(TransportError::NoTransport) })
    }

    /// Like [`Transport::send_url`] for a URL a user supplied (a pusher's push
    /// gateway): the address it resolves to must pass the outbound address
    /// policy (`net_policy`), as for federation.
    fn send_user_url<'a>(&'a self, base_url: &'a str, request: OutboundRequest) -> TransportFuture<'a> {
        let _ = (base_url, request);
        Box::pin(async { Err(TransportError::NoTransport) })
    }
}

/// The transport of an engine that has not been given one: every request fails.
#[derive(Debug, Default)]
pub struct NoTransport;

impl Transport for NoTransport {
    fn send<'a>(&'a self, _destination: &'a str, _request: OutboundRequest) -> TransportFuture<'a> {
        Box::pin(async { Err(TransportError::NoTransport) })
    }
}

/// A shared transport handle.
pub type SharedTransport = Arc<dyn Transport>;
