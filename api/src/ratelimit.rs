//! Per-user rate limiting of event-creating requests: a token bucket per user
//! (`[rate_limit] per_second`, `burst`). Over the limit: 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms` (Client-Server API §"Rate limiting").

use std::{collections::HashMap, time::Instant};

use http::StatusCode;
use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};

use crate::error::ApiError;

/// Buckets of one server.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<OwnedUserId, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `per_second == 0` disables it.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `user`, or says how long to wait.
    pub fn check(&self, user: &UserId) -> Result<(), ApiError> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            // Idle buckets are full anyway; forgetting them loses nothing.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * self.per_second < self.burst
            });
        }
        let (tokens, at) = buckets.entry(user.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - *tokens) / self.per_second * 1000.0).ceil() as u64;
        let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "too many requests");
        err.retry_after_ms = Some(wait_ms);
        Err(err)
    }
}
