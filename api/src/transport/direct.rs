//! Requests to endpoints named by URL — appservices and push gateways:
//! `http://` or `https://host[:port][/prefix]`, connected to as written,
//! without Matrix server discovery. An appservice URL comes from the
//! operator's own configuration, so it may name a loopback or private
//! address; a push gateway URL comes from a user (a pusher), so its resolved
//! address must pass the outbound policy like a federation destination.
//!
//! Connections are kept alive and reused per base URL (an appservice on the
//! same host receives a steady stream of transactions). Every request has a
//! timeout and a response size limit.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use myelin_engine::{
    federation::{OutboundRequest, RawResponse, TransportError},
    net_policy::OutboundPolicy,
};
use tokio::net::TcpStream;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per base URL.
const POOL_PER_URL: usize = 4;
/// Most base URLs with idle connections kept (appservices and every user's push gateways).
const POOL_URLS: usize = 256;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A parsed base URL.
struct Base {
    https: bool,
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// Path prefix without a trailing slash.
    prefix: String,
}

fn parse(base_url: &str) -> Result<Base, TransportError> {
    let bad = || TransportError::Resolve(format!("`{base_url}` is not an http(s) URL"));
    let uri: Uri = base_url.parse().map_err(|_| bad())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let authority = uri.authority().ok_or_else(bad)?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Base {
        https,
        host,
        port,
        authority: authority.as_str().to_owned(),
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// The client for configured URLs.
pub struct Direct {
    tls: Arc<rustls::ClientConfig>,
    pool: super::pool::IdlePool<Sender>,
}

impl Direct {
    /// With the TLS configuration used for `https://` URLs.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self { tls, pool: super::pool::IdlePool::new("direct", POOL_URLS, POOL_PER_URL, POOL_URLS * POOL_PER_URL) }
    }

    async fn connect(&self, base: &Base, policy: Option<&OutboundPolicy>) -> Result<Sender, TransportError> {
        let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((base.host.as_str(), base.port))
            .await
            .map_err(|_| TransportError::Resolve(base.host.clone()))?
            .collect();
        let addr = match policy {
            None => resolved.first().copied().ok_or_else(|| TransportError::Resolve(base.host.clone()))?,
            Some(p) => p.choose(&resolved).ok_or_else(|| {
                TransportError::Refused(format!("{}: no permitted address among {resolved:?}", base.host))
            })?,
        };
        let tcp = TcpStream::connect(addr).await.map_err(|e| TransportError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let span = tracing::debug_span!("direct_connection", host = %base.host, port = base.port);
        if base.https {
            let name = rustls::pki_types::ServerName::try_from(base.host.clone())
                .map_err(|e| TransportError::Connect(format!("server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| TransportError::Connect(format!("TLS: {e}")))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| TransportError::Http(e.to_string()))?;
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let _ = conn.await;
                },
                span,
            ));
            Ok(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| TransportError::Http(e.to_string()))?;
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let _ = conn.await;
                },
                span,
            ));
            Ok(sender)
        }
    }

    async fn pooled(&self, key: &str) -> Option<Sender> {
        loop {
            let mut conn = self.pool.take(key)?;
            if !conn.is_closed() && conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    fn give_back(&self, key: &str, conn: Sender) {
        if conn.is_closed() {
            return;
        }
        self.pool.give_back(key, conn);
    }

    /// Sends `request` below `base_url` and reads the answer; a pooled
    /// connection found closed is replaced once. With `policy`, only an
    /// address it permits is connected to.
    pub async fn send(
        &self,
        base_url: &str,
        request: OutboundRequest,
        policy: Option<&OutboundPolicy>,
    ) -> Result<RawResponse, TransportError> {
        let base = parse(base_url)?;
        let OutboundRequest { method, path_and_query, body, authorization, limit, spool } = request;
        let uri = format!("{}{}", base.prefix, path_and_query);
        let base = &base;
        // Checked and unchecked connections are never shared.
        let key = format!("{}{base_url}", if policy.is_some() { "user:" } else { "" });
        let key = &key;
        let (uri, method, body, authorization, spool) = (&uri, &method, &body, &authorization, &spool);
        let attempt = |reuse: bool| async move {
            let pooled = if reuse { self.pooled(key).await } else { None };
            let was_pooled = pooled.is_some();
            let mut sender = match pooled {
                Some(s) => s,
                None => self.connect(base, policy).await?,
            };
            let resp =
                match super::exchange(&mut sender, method, uri, &base.authority, body, authorization, limit, spool)
                    .await
                {
                    Ok(r) => r,
                    Err(super::ExchangeError::Stale(e)) if was_pooled => return Ok(Err(e)),
                    Err(super::ExchangeError::Stale(e)) => return Err(TransportError::Http(e.to_string())),
                    Err(super::ExchangeError::Failed(e)) => return Err(e),
                };
            self.give_back(key, sender);
            Ok(Ok(resp))
        };
        let fut = async {
            match attempt(true).await? {
                Ok(r) => Ok(r),
                Err(stale) => {
                    tracing::debug!(url = base_url, error = %stale, "pooled connection was stale; reconnecting");
                    self.pool.forget(key.as_str());
                    attempt(false).await?.map_err(|e| TransportError::Http(e.to_string()))
                }
            }
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| TransportError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn base_urls_are_split_into_connection_and_prefix() {
        let b = parse("http://localhost:29317").unwrap();
        assert!(!b.https);
        assert_eq!((b.host.as_str(), b.port, b.prefix.as_str()), ("localhost", 29317, ""));
        let b = parse("https://bridge.example.org/as/").unwrap();
        assert!(b.https);
        assert_eq!((b.host.as_str(), b.port, b.prefix.as_str()), ("bridge.example.org", 443, "/as"));
        let b = parse("http://[::1]:8080").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.authority.as_str()), ("::1", 8080, "[::1]:8080"));
        assert!(parse("ftp://x").is_err());
        assert!(parse("not a url").is_err());
    }
}
