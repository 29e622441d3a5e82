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

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use myelin_engine::federation::TransportError;
use serde_json::Value as JsonValue;
use tokio::net::TcpStream;

use super::HttpTransport;

/// Most server names whose `.well-known` answer is remembered.
pub const MAX_DELEGATIONS: usize = 4096;

/// Whether a server name carries an explicit port (`name:port`, `1.2.3.4:port`, `[::1]:port`).
fn has_port(server: &str) -> bool {
    match server.rsplit_once(':') {
        Some((head, port)) => port.parse::<u16>().is_ok() && (!head.contains(':') || head.ends_with(']')),
        None => false,
    }
}

/// Where to connect for a server name.
pub(super) struct Target {
    pub(super) addr: SocketAddr,
    /// TLS server name.
    pub(super) tls_name: String,
    /// `Host` header.
    pub(super) host_header: String,
}

impl HttpTransport {
    pub(super) async fn resolve(&self, server: &str) -> Result<Target, TransportError> {
        let host = myelin_engine::config_host(server).to_owned();
        if let Some(addr) = self.hosts.get(server) {
            return Ok(Target { addr: *addr, tls_name: host, host_header: server.to_owned() });
        }
        if host.parse::<std::net::IpAddr>().is_ok() || has_port(server) {
            return self.direct(server).await;
        }
        // The delegated name (or ours) is used as is when it is an IP literal or has a
        // port; otherwise its SRV records are asked for, then port 8448.
        let name = self.delegation(&host).await.unwrap_or_else(|| server.to_owned());
        let name_host = myelin_engine::config_host(&name).to_owned();
        if name_host.parse::<std::net::IpAddr>().is_err()
            && !has_port(&name)
            && let Some((target, port)) = self.srv_target(&name_host).await
        {
            let mut found = self.direct(&format!("{target}:{port}")).await?;
            found.tls_name = name_host;
            found.host_header = name;
            return Ok(found);
        }
        let mut target = self.direct(&name).await?;
        target.host_header = name;
        Ok(target)
    }

    /// The best SRV target of `_matrix-fed._tcp.<host>`, else of the deprecated
    /// `_matrix._tcp.<host>` (the resolver caches answers for their TTL).
    async fn srv_target(&self, host: &str) -> Option<(String, u16)> {
        let resolver = self.srv.as_ref()?;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            match resolver.srv(&format!("{service}.{host}")).await {
                Ok(records) => {
                    if let Some(best) = records.into_iter().next() {
                        tracing::debug!(server = host, target = %best.target, port = best.port, %service, "SRV record found");
                        return Some((best.target, best.port));
                    }
                }
                Err(e) => tracing::debug!(server = host, %service, error = %e, "SRV lookup failed"),
            }
        }
        None
    }

    /// An IP literal or a name, with its port or 8448, without delegation; the
    /// address is one the outbound policy permits.
    async fn direct(&self, server: &str) -> Result<Target, TransportError> {
        let host = myelin_engine::config_host(server).to_owned();
        let port = if has_port(server) { server.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) } else { None };
        let port = port.unwrap_or(8448);
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| TransportError::Resolve(server.to_owned()))?
                .collect(),
        };
        let addr = self.permitted(server, &resolved)?;
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
        let now = std::time::Instant::now();
        let mut cache = self.delegations.lock();
        if cache.len() >= MAX_DELEGATIONS && !cache.contains_key(host) {
            // Full: drop what has expired, else the entry that expires first.
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_DELEGATIONS
                && let Some(oldest) = cache.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(host.to_owned(), (answer.clone(), now + Duration::from_secs(3600)));
        metrics::gauge!("myelin_federation_delegations_cached").set(cache.len() as f64);
        answer
    }

    async fn fetch_well_known(&self, host: &str) -> Option<String> {
        let fut = async {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 443)).await.ok()?.collect();
            let addr = match self.permitted(host, &resolved) {
                Ok(addr) => addr,
                Err(e) => {
                    tracing::info!(server = host, error = %e, "not fetching .well-known");
                    return None;
                }
            };
            let tcp = TcpStream::connect(addr).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
            let tls = tokio_rustls::TlsConnector::from(self.tls_for(host)).connect(name, tcp).await.ok()?;
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
