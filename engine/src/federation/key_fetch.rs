//! Fetching other servers' signing keys (Server-Server API §"Retrieving
//! server keys"): directly from the server (`GET /_matrix/key/v2/server`),
//! or, when that fails, through each configured notary in turn
//! (`POST /_matrix/key/v2/query`), accepting a notary's answer only when it
//! carries both the server's own signature and one of the notary's that we
//! can check. Keys are stored by the [`super::keyring::KeyRing`]; pinned
//! servers (`federation.trusted_keys`) are never looked up.
//!
//! A request naming a key we do not have costs at most one lookup per server
//! per [`RECHECK_AFTER_MISS`] (or [`RECHECK_AFTER_FAILURE`] when the lookup
//! failed): concurrent requests wait for the one lookup in flight, and later
//! ones within that time get its outcome, so a stranger forging `X-Matrix`
//! headers with made-up key ids cannot turn us into a key-fetching loop
//! against that server. Lookups that requests from servers not yet verified
//! cause (an X-Matrix check, a notary query) also draw on one budget for all
//! servers together (`rate_limit.key_lookups_*`), so naming a new server in
//! every request does not buy one outbound lookup per request either; past
//! it the request is refused as if the keys could not be had
//! (`myelin_key_lookups_throttled_total`). Lookups for events (a join's auth
//! chain, a transaction's PDUs) come from servers already verified and are
//! not charged.

use std::{num::NonZeroUsize, time::Duration, time::Instant};

use http::{Method, StatusCode};
use parking_lot::Mutex;
use serde_json::Value as JsonValue;

use super::FederationError;
use crate::{Engine, in_flight::InFlight};

/// After a lookup that found the server's keys, how long a request naming
/// another unknown key id is refused without asking again.
pub const RECHECK_AFTER_MISS: Duration = Duration::from_secs(30);
/// After a lookup that failed, how long before the server is asked again.
pub const RECHECK_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Servers whose last lookup is remembered.
const REMEMBERED: usize = 4096;
/// Servers whose keys are being looked up at once.
const MAX_LOOKUPS: usize = 256;

/// Recent key lookups per server, and the ones in flight.
pub struct KeyLookups {
    /// Server → when it was last asked and whether that worked.
    recent: Mutex<lru::LruCache<String, (Instant, bool)>>,
    in_flight: InFlight<String>,
    /// Lookups unverified requests may still cause: tokens and when they were counted.
    budget: Mutex<(f64, Instant)>,
}

impl Default for KeyLookups {
    fn default() -> Self {
        let cap = NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN);
        Self {
            recent: Mutex::new(lru::LruCache::new(cap)),
            in_flight: InFlight::new(MAX_LOOKUPS),
            budget: Mutex::new((f64::INFINITY, Instant::now())),
        }
    }
}

/// Who a key lookup is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asker {
    /// A request whose origin is not verified yet: charged to the shared budget.
    Unverified,
    /// Events from a server already verified.
    Verified,
}

impl KeyLookups {
    /// Takes one lookup from the shared budget (`per_second` sustained,
    /// `burst` at most; `per_second` 0: unlimited); false when it is spent.
    fn take(&self, per_second: f64, burst: u32) -> bool {
        if per_second <= 0.0 {
            return true;
        }
        let mut budget = self.budget.lock();
        let (tokens, at) = &mut *budget;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(f64::from(burst));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The outcome of `server`'s last lookup if it is recent enough to reuse.
    fn recent(&self, server: &str) -> Option<bool> {
        let mut recent = self.recent.lock();
        let (at, ok) = *recent.get(server)?;
        let fresh = if ok { RECHECK_AFTER_MISS } else { RECHECK_AFTER_FAILURE };
        (at.elapsed() < fresh).then_some(ok)
    }

    fn record(&self, server: &str, ok: bool) {
        self.recent.lock().put(server.to_owned(), (Instant::now(), ok));
    }
}

impl Engine {
    /// The verified public key `key_id` of `server`, fetching its key document if needed.
    pub async fn server_key(&self, server: &str, key_id: &str) -> Result<Option<String>, FederationError> {
        self.server_key_for(server, key_id, Asker::Verified).await
    }

    /// [`Engine::server_key`] for checking the X-Matrix signature of a request
    /// that claims to come from `server`: a lookup it causes is charged to
    /// the budget of unverified requests.
    pub async fn request_key(&self, server: &str, key_id: &str) -> Result<Option<String>, FederationError> {
        self.server_key_for(server, key_id, Asker::Unverified).await
    }

    async fn server_key_for(
        &self,
        server: &str,
        key_id: &str,
        asker: Asker,
    ) -> Result<Option<String>, FederationError> {
        if let Some(key) = self.keyring.key(server, key_id, false)? {
            return Ok(Some(key));
        }
        if self.keyring.is_pinned(server) {
            // Pinned by configuration: an unknown key id is not looked up anywhere.
            return Ok(None);
        }
        self.look_up(server, asker, || Ok(self.keyring.key(server, key_id, false)?.is_some())).await?;
        self.keyring.key(server, key_id, false)
    }

    /// Looks `server`'s keys up, unless a lookup just happened (then its
    /// failure is repeated) or `found` says, once any lookup in flight is
    /// done, that what the caller needs is there.
    async fn look_up(
        &self,
        server: &str,
        asker: Asker,
        found: impl Fn() -> Result<bool, FederationError>,
    ) -> Result<(), FederationError> {
        let lookups = &self.key_lookups;
        let _claim = lookups.in_flight.claim(server.to_owned()).await.ok_or_else(|| {
            FederationError::Unreachable(format!("too many key lookups in flight; {server}'s keys not fetched"))
        })?;
        if found()? {
            return Ok(());
        }
        match lookups.recent(server) {
            Some(true) => {
                metrics::counter!("myelin_key_lookups_skipped_total").increment(1);
                return Ok(());
            }
            Some(false) => {
                metrics::counter!("myelin_key_lookups_skipped_total").increment(1);
                return Err(FederationError::Unreachable(format!("{server}'s keys could not be fetched just now")));
            }
            None => {}
        }
        let rate = &self.config.rate_limit;
        if asker == Asker::Unverified && !lookups.take(rate.key_lookups_per_second, rate.key_lookups_burst) {
            metrics::counter!("myelin_key_lookups_throttled_total").increment(1);
            return Err(FederationError::Unreachable(format!(
                "too many key lookups for unverified requests; {server}'s keys not fetched now"
            )));
        }
        let outcome = self.refresh_keys(server).await;
        lookups.record(server, outcome.is_ok());
        outcome
    }

    /// `server`'s key document: the stored one while valid, else fetched
    /// (directly, then through the configured notaries). What a notary serves.
    pub async fn key_document(&self, server: &str) -> Result<JsonValue, FederationError> {
        if let Some(doc) = self.keyring.document(server)? {
            return Ok(doc);
        }
        // Asked by anyone (the notary endpoint needs no authentication).
        self.look_up(server, Asker::Unverified, || Ok(self.keyring.document(server)?.is_some())).await?;
        self.keyring.document(server)?.ok_or_else(|| FederationError::BadResponse {
            server: server.to_owned(),
            reason: "no valid key document".into(),
        })
    }

    /// Fetches and stores `server`'s keys: from the server itself, or failing
    /// that from each notary in `federation.notaries` in turn.
    async fn refresh_keys(&self, server: &str) -> Result<(), FederationError> {
        let direct = self.fetch_keys_direct(server).await;
        let Err(direct_error) = direct else { return Ok(()) };
        let mut reasons = vec![direct_error.to_string()];
        for notary in self.config.federation.notaries.iter().filter(|n| n.as_str() != server) {
            match self.fetch_keys_via_notary(notary, server).await {
                Ok(()) => {
                    tracing::info!(%server, %notary, "keys fetched through a notary");
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(%server, %notary, error = %e, "notary could not vouch for the keys");
                    reasons.push(format!("via {notary}: {e}"));
                }
            }
        }
        if reasons.len() == 1 {
            return Err(direct_error);
        }
        Err(FederationError::Unreachable(format!("{server}'s keys: {}", reasons.join("; "))))
    }

    async fn fetch_keys_direct(&self, server: &str) -> Result<(), FederationError> {
        let resp = self.remote(server).unsigned(Method::GET, "/_matrix/key/v2/server", None).await?;
        if resp.status != StatusCode::OK {
            return Err(FederationError::BadResponse {
                server: server.to_owned(),
                reason: format!("key request answered {}", resp.status),
            });
        }
        self.keyring.accept_document(server, &resp.json).await?;
        Ok(())
    }

    /// Asks `notary` for `server`'s keys; accepts a document signed by both.
    async fn fetch_keys_via_notary(&self, notary: &str, server: &str) -> Result<(), FederationError> {
        let fail = |reason: String| FederationError::BadResponse { server: notary.to_owned(), reason };
        // The notary's own keys: pinned, stored, or from the notary itself (never via notaries).
        if !self.keyring.is_pinned(notary) && self.keyring.document(notary)?.is_none() {
            self.fetch_keys_direct(notary).await?;
        }
        let body = serde_json::json!({ "server_keys": { server: {} } });
        let resp = self.remote(notary).unsigned(Method::POST, "/_matrix/key/v2/query", Some(&body)).await?;
        if resp.status != StatusCode::OK {
            return Err(fail(format!("key query answered {}", resp.status)));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            server_keys: Vec<serde_json::Map<String, JsonValue>>,
        }
        let answer: Answer = resp.parse(notary)?;
        let doc = answer
            .server_keys
            .into_iter()
            .find(|d| d.get("server_name").and_then(JsonValue::as_str) == Some(server))
            .ok_or_else(|| fail(format!("no keys for {server}")))?;
        // The notary's signature, by any of its keys we trust.
        let signed_by = doc
            .get("signatures")
            .and_then(|s| s.get(notary))
            .and_then(JsonValue::as_object)
            .cloned()
            .unwrap_or_default();
        let mut set = ruma::signatures::PublicKeySet::new();
        for key_id in signed_by.keys() {
            if let Some(key) = self.keyring.key(notary, key_id, false)?
                && let Ok(key) = ruma::serde::Base64::parse(&key)
            {
                set.insert(key_id.clone(), key);
            }
        }
        if set.is_empty() {
            return Err(fail(format!("the answer for {server} carries no signature of {notary} we can check")));
        }
        // verify_json wants keys for every signer: the server's own, from the document
        // (accept_document checks that self-signature again on its own).
        let mut own = ruma::signatures::PublicKeySet::new();
        for (key_id, key) in doc.get("verify_keys").and_then(JsonValue::as_object).into_iter().flatten() {
            if let Some(k) = key.get("key").and_then(JsonValue::as_str).and_then(|k| ruma::serde::Base64::parse(k).ok())
            {
                own.insert(key_id.clone(), k);
            }
        }
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(notary.to_owned(), set);
        map.insert(server.to_owned(), own);
        let doc = JsonValue::Object(doc);
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(doc.clone()).map_err(|e| fail(format!("not canonical JSON: {e}")))?;
        ruma::signatures::verify_json(&map, &object).map_err(|e| fail(format!("notary signature: {e}")))?;
        self.keyring.accept_document(server, &doc).await?;
        Ok(())
    }
}
