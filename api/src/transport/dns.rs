//! SRV lookups for server discovery, through `hickory-resolver`.
//!
//! Server-Server API §"Resolving server names", steps 4–5: "If the
//! `/.well-known` request resulted in an error response, a server is found
//! by resolving an SRV record for `_matrix-fed._tcp.<hostname>`… the
//! `Host` header should be set to `<hostname>`", then the deprecated
//! `_matrix._tcp.<hostname>`, and only then the name itself on port 8448.
//!
//! The resolver asks `federation.dns_servers` when set, else the system's
//! (`/etc/resolv.conf`, with its options), over UDP with TCP when an answer is
//! truncated; each server is tried twice with a 2 s timeout. Answers are
//! cached for their TTL (at most an hour, negative answers at most 5 minutes)
//! in an LRU cache of [`CACHE_ENTRIES`] names, so a stranger naming ever new
//! servers cannot grow it. Records are ordered by priority, then by weight
//! (largest first); a lone target of `.` means "no service here" (RFC 2782).
//!
//! Only SRV goes through this resolver: addresses are looked up by the
//! system (`getaddrinfo`), so `/etc/hosts` keeps working for them.

use std::{net::SocketAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};

/// Most names whose answers are cached.
pub const CACHE_ENTRIES: usize = 4096;

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Among equal priorities, larger is preferred.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The host to connect to (no trailing dot).
    pub target: String,
}

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The system resolver configuration could not be read.
    #[error("no usable DNS configuration: {0}")]
    NoServer(String),
    /// No resolver answered, or the answer was unusable.
    #[error("no DNS answer: {0}")]
    NoAnswer(String),
}

/// The SRV resolver of one transport.
pub struct SrvResolver {
    resolver: TokioResolver,
}

impl SrvResolver {
    /// A resolver asking `servers`, or the system's resolvers when empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.cache_size = CACHE_ENTRIES;
        opts.positive_max_ttl = Some(Duration::from_secs(3600));
        opts.negative_max_ttl = Some(Duration::from_secs(300));
        // Only SRV is asked here; hosts files hold addresses, not services.
        opts.use_hosts_file = ResolveHosts::Never;
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::NoServer(e.to_string()))?
        } else {
            let mut config = ResolverConfig::new();
            for server in servers {
                config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        Ok(Self { resolver: builder.with_options(opts).build() })
    }

    /// The SRV records of `name`, best first. An empty list: none exist.
    pub async fn srv(&self, name: &str) -> Result<Vec<Srv>, DnsError> {
        // Fully qualified: no search domains appended to a federation name.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match self.resolver.srv_lookup(fqdn).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Err(e) => return Err(DnsError::NoAnswer(e.to_string())),
        };
        let records = lookup
            .iter()
            .map(|r| Srv {
                priority: r.priority(),
                weight: r.weight(),
                port: r.port(),
                target: r.target().to_utf8().trim_end_matches('.').to_owned(),
            })
            .collect();
        Ok(best_first(records))
    }
}

/// Orders records by priority, then weight (largest first), dropping "no service" targets.
fn best_first(mut records: Vec<Srv>) -> Vec<Srv> {
    // RFC 2782: a single record with target "." means the service is not offered.
    records.retain(|r| !r.target.is_empty());
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_ordered_and_dot_means_none() {
        let recs = vec![
            Srv { priority: 20, weight: 0, port: 1, target: "late.example".into() },
            Srv { priority: 10, weight: 5, port: 2, target: "light.example".into() },
            Srv { priority: 10, weight: 50, port: 3, target: "heavy.example".into() },
            Srv { priority: 0, weight: 0, port: 0, target: String::new() },
        ];
        let order: Vec<u16> = best_first(recs).iter().map(|r| r.port).collect();
        assert_eq!(order, vec![3, 2, 1]);
        assert!(best_first(vec![Srv { priority: 0, weight: 0, port: 0, target: String::new() }]).is_empty());
    }
}
