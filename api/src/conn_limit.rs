//! Connection caps of one listener: `limits.max_connections` open connections
//! in all and `limits.max_connections_per_ip` from one address.
//!
//! A connection is counted from accept until its task ends (TLS handshake
//! included). One that would pass a cap is closed at accept, before a byte is
//! read, and counted in `myelin_connections_refused_total{listener, reason}`;
//! a warning is logged at most once per [`LOG_EVERY`] per listener, with the
//! number refused since the last one, so a flood does not flood the log.
//!
//! "One address" is an IPv4 address (an IPv4-mapped IPv6 address counts as its
//! IPv4 form) or an IPv6 /64: one host is usually handed a whole /64, so
//! counting single IPv6 addresses would not cap anyone.
//!
//! Guarantees: the per-address map holds only addresses with an open
//! connection (an entry is removed when its count drops to zero), so it is
//! bounded by `max_connections`. Not guaranteed: fairness between addresses
//! below the caps.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// How often a refusal is logged at most, per listener.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The caps and counts of one listener.
pub struct ConnLimits {
    listener: &'static str,
    max: usize,
    per_ip: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    refused_unlogged: u64,
    last_log: Option<Instant>,
}

/// An admitted connection; dropping it frees its place.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` are open on this listener.
    Global,
    /// `max_connections_per_ip` are open from this address.
    PerIp,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::PerIp => "per_ip",
        }
    }
}

/// The address connections (and per-address rate limits) are counted under:
/// an IPv4 address, or an IPv6 /64.
pub fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl ConnLimits {
    /// Caps for `listener` (a metric label); 0 turns a cap off.
    pub fn new(listener: &'static str, max: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(Self { listener, max, per_ip, state: Mutex::new(State::default()) })
    }

    /// Admits a connection from `ip`, or says which cap it would pass (and counts and logs the refusal).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refused> {
        let key = key_of(ip);
        let mut state = self.state.lock();
        let from_ip = state.by_ip.get(&key).copied().unwrap_or(0);
        let refused = if self.max > 0 && state.total >= self.max {
            Some(Refused::Global)
        } else if self.per_ip > 0 && from_ip >= self.per_ip {
            Some(Refused::PerIp)
        } else {
            None
        };
        if let Some(why) = refused {
            metrics::counter!("myelin_connections_refused_total", "listener" => self.listener, "reason" => why.label())
                .increment(1);
            state.refused_unlogged += 1;
            let now = Instant::now();
            if state.last_log.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                let (total, refused) = (state.total, state.refused_unlogged);
                state.last_log = Some(now);
                state.refused_unlogged = 0;
                drop(state);
                tracing::warn!(
                    listener = self.listener,
                    %ip,
                    reason = why.label(),
                    open = total,
                    from_this_address = from_ip,
                    refused_since_last_warning = refused,
                    "connection refused at accept: over limits.max_connections or limits.max_connections_per_ip"
                );
            }
            return Err(why);
        }
        state.total += 1;
        *state.by_ip.entry(key).or_insert(0) += 1;
        metrics::gauge!("myelin_connections_open", "listener" => self.listener).set(state.total as f64);
        Ok(ConnGuard { limits: self.clone(), key })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().total
    }

    /// Addresses with an open connection now.
    pub fn addresses(&self) -> usize {
        self.state.lock().by_ip.len()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut state = self.limits.state.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.by_ip.remove(&self.key);
            }
        }
        metrics::gauge!("myelin_connections_open", "listener" => self.limits.listener).set(state.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_refuse_and_free_their_place_on_drop() {
        let limits = ConnLimits::new("test", 3, 2);
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.1")).err(), Some(Refused::PerIp), "the mapped form is the same address");
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.3")).err(), Some(Refused::Global));
        drop(a1);
        let _c = limits.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_the_map_forgets_closed_addresses() {
        let limits = ConnLimits::new("test", 0, 1);
        let a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(limits.admit(ip("2001:db8:1:2:ffff::9")).err(), Some(Refused::PerIp));
        let b = limits.admit(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(limits.addresses(), 2);
        drop((a, b));
        assert_eq!((limits.open(), limits.addresses()), (0, 0));
    }
}
