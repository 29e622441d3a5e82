//! Routing: path templates to handlers, with Matrix errors for misses.
//!
//! Unknown path → 404 `M_UNRECOGNIZED`; known path, other method → 405
//! `M_UNRECOGNIZED` (Client-Server API §"Unrecognised endpoints"). Path
//! parameters are percent-decoded before a handler sees them.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::Method;
use myelin_engine::Engine;

use crate::{error::ApiError, http_util::Resp};

/// Default request body limit: JSON bodies of the Client-Server API are small.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Client-Server API, plain HTTP.
    Client,
    /// Server-Server API, TLS.
    Federation,
}

impl Listener {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Listener::Client => "client",
            Listener::Federation => "federation",
        }
    }
}

pub use crate::routes::synapse_admin::rooms::Deletions as RoomDeletions;

/// The address a request came from (a request extension): the connection's
/// peer, or the client a trusted reverse proxy names ([`crate::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// What a handler gets besides the request.
#[derive(Clone)]
pub struct Ctx {
    /// The homeserver.
    pub engine: Arc<Engine>,
    /// The listener the request arrived on.
    pub listener: Listener,
    /// The bound federation address (the configured port may be 0).
    pub federation_addr: Option<std::net::SocketAddr>,
    /// Per-user limits on event-creating requests.
    pub limiter: Arc<crate::ratelimit::RateLimiter>,
    /// Statuses of recent room deletions through the Synapse admin API.
    pub deletions: Arc<RoomDeletions>,
}

/// A parsed request: head, full body (already size-checked), path parameters.
pub struct Req {
    /// Method, URI, headers.
    pub parts: http::request::Parts,
    /// The body bytes (empty for streaming routes).
    pub body: Bytes,
    /// The unread body, for streaming routes only.
    pub stream: Option<hyper::body::Incoming>,
    /// Percent-decoded path parameters, in template order.
    pub params: Vec<(String, String)>,
}

impl Req {
    /// The path parameter `name`.
    pub fn param(&self, name: &str) -> Result<&str, ApiError> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ApiError::unknown(format!("route has no parameter {name}")))
    }

    /// The IP address the request came from, as [`PeerAddr`] (unspecified when unknown).
    pub fn peer_ip(&self) -> std::net::IpAddr {
        self.parts
            .extensions
            .get::<PeerAddr>()
            .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| p.0.ip())
    }
}

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Resp, ApiError>> + Send>>;
/// A handler.
pub type Handler = fn(Ctx, Req) -> HandlerFuture;

/// One method on one path.
#[derive(Clone)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// The handler.
    pub handler: Handler,
    /// Largest accepted body, in bytes (pipeline-enforced unless streaming).
    pub max_body: usize,
    /// The handler reads the body itself (`Req::stream`) and enforces its own limit.
    pub streaming: bool,
    /// How long the handler may wait on purpose (a long-poll), on top of
    /// `limits.handler_timeout_s`.
    pub long_poll: std::time::Duration,
    /// The path template it was added under (the `route` label of request metrics).
    pub template: &'static str,
}

/// Percent-decoded path parameters, in template order.
pub type Params = Vec<(String, String)>;

/// Why a lookup failed.
pub enum Miss {
    /// No such path.
    NotFound,
    /// The path exists with other methods.
    MethodNotAllowed,
    /// A path parameter had a bad percent escape.
    BadPath,
}

/// A routing table.
#[derive(Default)]
pub struct Router {
    paths: matchit::Router<usize>,
    routes: Vec<Vec<Route>>,
    templates: Vec<String>,
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `method path → handler` with the default body limit.
    pub fn add(&mut self, method: Method, path: &str, handler: Handler) -> &mut Self {
        self.add_limited(method, path, handler, DEFAULT_MAX_BODY)
    }

    /// Adds a route with its own body limit.
    pub fn add_limited(&mut self, method: Method, path: &str, handler: Handler, max_body: usize) -> &mut Self {
        self.insert(
            Route { method, handler, max_body, streaming: false, long_poll: Default::default(), template: "" },
            path,
        )
    }

    /// Adds a long-poll route: its handler may wait up to `wait` on purpose,
    /// on top of the handler timeout.
    pub fn add_long_poll(
        &mut self,
        method: Method,
        path: &str,
        handler: Handler,
        wait: std::time::Duration,
    ) -> &mut Self {
        self.insert(
            Route { method, handler, max_body: DEFAULT_MAX_BODY, streaming: false, long_poll: wait, template: "" },
            path,
        )
    }

    /// Adds a route whose handler streams the request body itself.
    pub fn add_streaming(&mut self, method: Method, path: &str, handler: Handler) -> &mut Self {
        self.insert(
            Route {
                method,
                handler,
                max_body: usize::MAX,
                streaming: true,
                long_poll: Default::default(),
                template: "",
            },
            path,
        )
    }

    fn insert(&mut self, mut route: Route, path: &str) -> &mut Self {
        if let Some(i) = self.templates.iter().position(|t| t == path) {
            route.template = self.routes[i][0].template;
            self.routes[i].push(route);
        } else {
            // A metrics label for the life of the process: one small string per
            // template, and a process builds its two tables once.
            route.template = Box::leak(path.to_owned().into_boxed_str());
            let i = self.routes.len();
            // Templates are our own constants; a bad one is a programming error caught by tests.
            if let Err(e) = self.paths.insert(path, i) {
                panic!("bad route template {path}: {e}");
            }
            self.routes.push(vec![route]);
            self.templates.push(path.to_owned());
        }
        self
    }

    /// Finds the route for `method` on `path`.
    pub fn find(&self, method: &Method, path: &str) -> Result<(&Route, Params), Miss> {
        // `/state/{type}/` carries an empty state key: try the form without the empty segment.
        let matched = match self.paths.at(path) {
            Ok(m) => m,
            Err(_) => match path.strip_suffix('/') {
                Some(trimmed) if !trimmed.is_empty() => self.paths.at(trimmed).map_err(|_| Miss::NotFound)?,
                _ => return Err(Miss::NotFound),
            },
        };
        let routes = &self.routes[*matched.value];
        // HEAD is answered by the GET handler; hyper drops the body.
        let want = if method == Method::HEAD { &Method::GET } else { method };
        let route = routes.iter().find(|r| r.method == *want).ok_or(Miss::MethodNotAllowed)?;
        let mut params = Vec::new();
        for (k, v) in matched.params.iter() {
            let v = crate::http_util::percent_decode(v).ok_or(Miss::BadPath)?;
            params.push((k.to_owned(), v));
        }
        Ok((route, params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dummy(_: Ctx, _: Req) -> HandlerFuture {
        Box::pin(async { Err(ApiError::unknown("unused")) })
    }

    #[test]
    fn lookup_distinguishes_missing_path_from_wrong_method() {
        let mut r = Router::new();
        r.add(Method::GET, "/a/{id}/b", dummy).add(Method::PUT, "/a/{id}/b", dummy);
        let (route, params) = r.find(&Method::PUT, "/a/%21x%3Ay/b").ok().unwrap();
        assert_eq!(route.method, Method::PUT);
        assert_eq!(params, vec![("id".to_string(), "!x:y".to_string())]);
        assert!(r.find(&Method::HEAD, "/a/1/b").is_ok());
        assert!(matches!(r.find(&Method::POST, "/a/1/b"), Err(Miss::MethodNotAllowed)));
        assert!(matches!(r.find(&Method::GET, "/nope"), Err(Miss::NotFound)));
        assert!(matches!(r.find(&Method::GET, "/a/%zz/b"), Err(Miss::BadPath)));
    }
}
