//! Rate limiting (Client-Server API §"Rate limiting"): over a limit, 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms`.
//!
//! - Event-creating requests: a token bucket per user (`[rate_limit]
//!   per_second`, `burst`).
//! - Wrong passwords: a bucket per account (`login_failures_per_second`,
//!   `login_failures_burst`) that only failures drain. While it is empty,
//!   password checks for that account are refused before the password is
//!   looked at, so guessing costs a stranger `1 / login_failures_per_second`
//!   seconds per try and its owner keeps logging in once the bucket refills.
//!   A second bucket per client IP address (`login_failures_per_ip_*`) holds
//!   one address guessing across many accounts.
//! - Registration (accounts and guests): a bucket per client IP address
//!   (`registrations_per_second`, `registrations_burst`). "An address" is an
//!   IPv4 address or an IPv6 /64, as for the connection caps: one host is
//!   usually handed a whole /64. Appservices and the
//!   shared-secret admin registration are not limited.
//! - Federation: a bucket per origin server (`federation_per_second`,
//!   `federation_burst`), taken only after the request's `X-Matrix` signature
//!   checked out, so a stranger cannot drain another server's bucket.

use std::{collections::HashMap, time::Instant};

use http::StatusCode;
use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};

use crate::error::ApiError;

/// Token buckets keyed by `K`, bounded in entries.
struct Buckets<K> {
    /// `what` label of `myelin_rate_limit_buckets`.
    what: &'static str,
    per_second: f64,
    burst: f64,
    map: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Most buckets kept; past it the full ones (idle keys) are forgotten.
const MAX_BUCKETS: usize = 100_000;

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(what: &'static str, per_second: f64, burst: u32) -> Self {
        Self { what, per_second, burst: f64::from(burst.max(1)), map: Mutex::new(HashMap::new()) }
    }

    /// Refills `key`'s bucket; `take` removes one token if there is one.
    /// `Err(wait_ms)` when the bucket is empty.
    fn refill(&self, key: &K, take: bool) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.len() > MAX_BUCKETS {
            // Idle buckets are full anyway; forgetting them loses nothing.
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * self.per_second < self.burst
            });
            if map.len() > MAX_BUCKETS {
                // Still too many: a flood of distinct keys. Dropping the oldest-drained
                // half only makes those keys start full again.
                let mut ages: Vec<_> = map.iter().map(|(k, (_, at))| (*at, k.clone())).collect();
                ages.sort_by_key(|(at, _)| *at);
                for (_, k) in ages.into_iter().take(MAX_BUCKETS / 2) {
                    map.remove(&k);
                }
            }
        }
        if !map.contains_key(key) {
            metrics::gauge!("myelin_rate_limit_buckets", "what" => self.what).set((map.len() + 1) as f64);
        }
        let (tokens, at) = map.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            if take {
                *tokens -= 1.0;
            }
            return Ok(());
        }
        Err(((1.0 - *tokens) / self.per_second * 1000.0).ceil() as u64)
    }
}

fn limited(wait_ms: u64, what: &str) -> ApiError {
    let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", what);
    err.retry_after_ms = Some(wait_ms);
    err
}

/// The limits of one server.
pub struct RateLimiter {
    events: Buckets<OwnedUserId>,
    login_failures: Buckets<String>,
    login_failures_ip: Buckets<std::net::IpAddr>,
    registrations: Buckets<std::net::IpAddr>,
    federation: Buckets<String>,
}

impl RateLimiter {
    /// A limiter for event-creating requests; `per_second == 0` disables it.
    /// The other limits get the defaults of `[rate_limit]`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let c = myelin_engine::config::RateLimitConfig { per_second, burst, ..Default::default() };
        Self::from_config(&c)
    }

    /// A limiter from the whole `[rate_limit]` section.
    pub fn from_config(c: &myelin_engine::config::RateLimitConfig) -> Self {
        Self {
            events: Buckets::new("events", c.per_second, c.burst),
            login_failures: Buckets::new("login_failures", c.login_failures_per_second, c.login_failures_burst),
            login_failures_ip: Buckets::new(
                "login_failures_ip",
                c.login_failures_per_ip_per_second,
                c.login_failures_per_ip_burst,
            ),
            registrations: Buckets::new("registrations", c.registrations_per_second, c.registrations_burst),
            federation: Buckets::new("federation", c.federation_per_second, c.federation_burst),
        }
    }

    /// Takes one token for `user`, or says how long to wait.
    pub fn check(&self, user: &UserId) -> Result<(), ApiError> {
        self.events.refill(&user.to_owned(), true).map_err(|ms| limited(ms, "too many requests"))
    }

    /// Whether a password may be tried for `account` now (no token taken).
    pub fn may_try_password(&self, account: &str) -> Result<(), ApiError> {
        self.login_failures.refill(&account.to_owned(), false).map_err(|ms| {
            metrics::counter!("myelin_rate_limited_total", "what" => "login_account").increment(1);
            limited(ms, "too many wrong passwords for this account; try again later")
        })
    }

    /// Counts a wrong password for `account`.
    pub fn wrong_password(&self, account: &str) {
        let _ = self.login_failures.refill(&account.to_owned(), true);
    }

    /// Whether the client at `ip` may try a password now (no token taken).
    pub fn may_try_password_from(&self, ip: std::net::IpAddr) -> Result<(), ApiError> {
        self.login_failures_ip.refill(&crate::conn_limit::key_of(ip), false).map_err(|ms| {
            metrics::counter!("myelin_rate_limited_total", "what" => "login_address").increment(1);
            limited(ms, "too many wrong passwords from this address; try again later")
        })
    }

    /// Counts a wrong password sent by the client at `ip`.
    pub fn wrong_password_from(&self, ip: std::net::IpAddr) {
        let _ = self.login_failures_ip.refill(&crate::conn_limit::key_of(ip), true);
    }

    /// Takes one registration for the client at `ip`, or says how long to wait.
    pub fn register(&self, ip: std::net::IpAddr) -> Result<(), ApiError> {
        self.registrations.refill(&crate::conn_limit::key_of(ip), true).map_err(|ms| {
            metrics::counter!("myelin_rate_limited_total", "what" => "registration").increment(1);
            limited(ms, "too many registrations from this address; try again later")
        })
    }

    /// Takes one request for the remote server `origin`, or says how long to wait.
    pub fn federation(&self, origin: &str) -> Result<(), ApiError> {
        self.federation.refill(&origin.to_owned(), true).map_err(|ms| {
            metrics::counter!("myelin_rate_limited_total", "what" => "federation").increment(1);
            limited(ms, "too many requests from this server; try again later")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;

    #[test]
    fn addresses_of_one_ipv6_64_share_a_bucket_and_mapped_ipv4_is_its_ipv4() {
        let c = myelin_engine::config::RateLimitConfig {
            registrations_per_second: 0.001,
            registrations_burst: 3,
            ..Default::default()
        };
        let limiter = RateLimiter::from_config(&c);
        let results: Vec<bool> =
            (1..=5).map(|i| limiter.register(format!("2001:db8::{i:x}").parse().unwrap()).is_ok()).collect();
        assert_eq!(results, [true, true, true, false, false], "one /64, one bucket");
        assert!(limiter.register("2001:db8:0:1::1".parse().unwrap()).is_ok(), "another /64");
        for _ in 0..3 {
            assert!(limiter.register("192.0.2.7".parse().unwrap()).is_ok());
        }
        assert!(limiter.register("::ffff:192.0.2.7".parse().unwrap()).is_err(), "the mapped form is the same address");
    }
}
