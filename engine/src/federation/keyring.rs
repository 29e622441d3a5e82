//! Remote servers' signing keys (Server-Server API §"Retrieving server keys").
//!
//! A key document fetched from a server is accepted only if its
//! `server_name` is the server asked and it is signed by every key it lists
//! in `verify_keys`. Accepted keys are stored with `valid_until_ts` capped at
//! [`MAX_REMOTE_VALIDITY_MS`] after the fetch (room version 5: "Servers MUST
//! use the lesser of `valid_until_ts` and 7 days into the future when
//! determining if a key is valid"), and served from memory afterwards; a key
//! past that is fetched again before it is trusted for a new request.
//! `old_verify_keys` are kept with their `expired_ts` for verifying events
//! signed before they expired.
//!
//! Two questions, two methods: [`KeyRing::key`] answers "may this key sign
//! a request now" (X-Matrix, notary answers); [`KeyRing::key_at`] answers
//! "did this key count at the event's `origin_server_ts`" (room versions 5
//! and later) or "did the server ever publish it" (older versions). Both
//! read only what is stored, so they answer the same after a restart.
//!
//! Our own key is always known.

use std::{collections::BTreeMap, sync::Arc};

use myelin_storage::{Batch, Db, Stored, Table, catalog};
use ruma::CanonicalJsonObject;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::FederationError;
use crate::keys::ServerKeys;

/// The verified keys of one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerKeySet {
    /// Current keys: key id → unpadded base64 public key.
    pub verify_keys: BTreeMap<String, String>,
    /// Expired keys: key id → (public key, expired at ms).
    pub old_verify_keys: BTreeMap<String, (String, u64)>,
    /// Until when the current keys may be used, ms.
    pub valid_until_ts: u64,
}
impl Stored for ServerKeySet {}

/// Most servers whose key sets are held in memory (the rest are read from storage).
pub const CACHED_SERVERS: usize = 4096;
/// Most current keys a key document may list.
pub const MAX_VERIFY_KEYS: usize = 16;
/// Most expired keys kept of one server (the latest to expire).
pub const MAX_OLD_KEYS: usize = 256;
/// Largest key document accepted (and stored), in bytes of JSON.
pub const MAX_DOCUMENT_BYTES: usize = 128 * 1024;

/// The longest a remote key is trusted after it was fetched: 7 days.
pub const MAX_REMOTE_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

const KEYS: Table<String, ServerKeySet> = Table::new(&catalog::SERVERNAME_SERVERKEYS);
const DOCS: Table<String, myelin_storage::Raw> = Table::new(&catalog::SERVERNAME_KEYDOC);

use crate::util::now_ms;

/// Known keys of remote servers.
pub struct KeyRing {
    db: Arc<Db>,
    own: Arc<ServerKeys>,
    own_name: String,
    /// The key sets read or fetched lately, at most [`CACHED_SERVERS`].
    cache: parking_lot::Mutex<lru::LruCache<String, ServerKeySet>>,
    /// `[federation.trusted_keys]`: pinned keys per server, never fetched.
    pinned: BTreeMap<String, BTreeMap<String, String>>,
}

impl KeyRing {
    /// The key ring over `db`; `own` is our own key.
    pub fn new(db: Arc<Db>, own: Arc<ServerKeys>, own_name: String) -> Self {
        Self::with_pinned(db, own, own_name, BTreeMap::new())
    }

    /// The key ring with `[federation.trusted_keys]` pinned.
    pub fn with_pinned(
        db: Arc<Db>,
        own: Arc<ServerKeys>,
        own_name: String,
        pinned: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Self {
        let cap = std::num::NonZeroUsize::new(CACHED_SERVERS).unwrap_or(std::num::NonZeroUsize::MIN);
        Self { db, own, own_name, cache: parking_lot::Mutex::new(lru::LruCache::new(cap)), pinned }
    }

    /// Whether `server`'s keys are pinned by configuration (and must not be fetched).
    pub fn is_pinned(&self, server: &str) -> bool {
        self.pinned.contains_key(server)
    }

    /// The public key `key_id` of `server` if known and, unless `any_time`, still valid.
    pub fn key(&self, server: &str, key_id: &str, any_time: bool) -> Result<Option<String>, FederationError> {
        if any_time || server == self.own_name || self.is_pinned(server) {
            return self.key_at(server, key_id, None);
        }
        let now = now_ms();
        let found =
            self.with_set(server, |set| set.verify_keys.get(key_id).filter(|_| set.valid_until_ts > now).cloned())?;
        Ok(found.flatten())
    }

    /// The public key `key_id` of `server` if it was valid at `at` (ms):
    /// a current key up to its (capped) `valid_until_ts`, an old one before its
    /// `expired_ts`. With `at` None, any key the server published (room
    /// versions before 5 do not enforce validity). Our own and pinned keys are
    /// always valid.
    pub fn key_at(&self, server: &str, key_id: &str, at: Option<u64>) -> Result<Option<String>, FederationError> {
        if server == self.own_name {
            return Ok((key_id == self.own.key_id()).then(|| self.own.public_key_b64().to_owned()));
        }
        if let Some(keys) = self.pinned.get(server) {
            return Ok(keys.get(key_id).cloned());
        }
        let found = self.with_set(server, |set| {
            if let Some(key) = set.verify_keys.get(key_id)
                && at.is_none_or(|ts| ts <= set.valid_until_ts)
            {
                return Some(key.clone());
            }
            match set.old_verify_keys.get(key_id) {
                Some((key, expired)) if at.is_none_or(|ts| ts < *expired) => Some(key.clone()),
                _ => None,
            }
        })?;
        Ok(found.flatten())
    }

    /// Runs `f` on `server`'s stored keys (from memory, else storage); None when there are none.
    fn with_set<T>(&self, server: &str, f: impl FnOnce(&ServerKeySet) -> T) -> Result<Option<T>, FederationError> {
        if let Some(set) = self.cache.lock().get(server) {
            return Ok(Some(f(set)));
        }
        let Some(set) = KEYS.get(&*self.db, &server.to_owned())? else { return Ok(None) };
        let out = f(&set);
        let mut cache = self.cache.lock();
        cache.put(server.to_owned(), set);
        metrics::gauge!("myelin_keyring_cached_servers").set(cache.len() as f64);
        Ok(Some(out))
    }

    /// `server`'s keys as stored (validity as this server counts it).
    pub fn stored(&self, server: &str) -> Result<Option<ServerKeySet>, FederationError> {
        Ok(KEYS.get(&*self.db, &server.to_owned())?)
    }

    /// `server`'s last accepted key document, if still valid.
    pub fn document(&self, server: &str) -> Result<Option<JsonValue>, FederationError> {
        let Some(myelin_storage::Raw(raw)) = DOCS.get(&*self.db, &server.to_owned())? else { return Ok(None) };
        let doc: JsonValue = serde_json::from_slice(&raw).unwrap_or(JsonValue::Null);
        let now = now_ms();
        // Valid by its own word and by our cap (the stored, capped validity).
        let capped = self.with_set(server, |set| set.valid_until_ts > now)?.unwrap_or(false);
        Ok((capped && doc["valid_until_ts"].as_u64().unwrap_or(0) > now).then_some(doc))
    }

    /// Checks a key document fetched from `server` and stores its keys.
    pub async fn accept_document(&self, server: &str, doc: &JsonValue) -> Result<ServerKeySet, FederationError> {
        let bad = |reason: &str| FederationError::BadResponse { server: server.to_owned(), reason: reason.to_owned() };
        // Only the origin's own signatures are checked and kept (a notary's were checked
        // by whoever asked it, and a signer we hold no key for would fail verification).
        let mut doc = doc.clone();
        if let Some(signatures) = doc.get_mut("signatures").and_then(JsonValue::as_object_mut) {
            signatures.retain(|entity, _| entity == server);
        }
        let doc = &doc;
        if self.is_pinned(server) {
            return Err(bad("its keys are pinned by federation.trusted_keys"));
        }
        if doc["server_name"].as_str() != Some(server) {
            return Err(bad("key document names another server"));
        }
        // Stored whole (the notary serves it again): a real one is a few KiB.
        if serde_json::to_vec(doc).map_or(true, |raw| raw.len() > MAX_DOCUMENT_BYTES) {
            return Err(bad("key document larger than any server needs"));
        }
        let verify: BTreeMap<String, String> = doc["verify_keys"]
            .as_object()
            .ok_or_else(|| bad("no verify_keys"))?
            .iter()
            .filter_map(|(id, k)| Some((id.clone(), k["key"].as_str()?.to_owned())))
            .collect();
        if verify.is_empty() {
            return Err(bad("no usable verify_keys"));
        }
        if verify.len() > MAX_VERIFY_KEYS {
            return Err(bad("more verify_keys than any server needs"));
        }
        let object: CanonicalJsonObject =
            serde_json::from_value(doc.clone()).map_err(|e| bad(&format!("not canonical JSON: {e}")))?;
        // Signed by every key it lists: one map with all of them; verify_json checks each signature present.
        let mut key_map = ruma::signatures::PublicKeyMap::new();
        let mut set = ruma::signatures::PublicKeySet::new();
        for (id, key) in &verify {
            set.insert(id.clone(), ruma::serde::Base64::parse(key).map_err(|_| bad("key is not base64"))?);
        }
        key_map.insert(server.to_owned(), set);
        ruma::signatures::verify_json(&key_map, &object)
            .map_err(|e| FederationError::Unauthorized(format!("{server}'s key document: {e}")))?;
        for id in verify.keys() {
            if doc["signatures"][server][id].is_null() {
                return Err(FederationError::Unauthorized(format!("{server}'s key document is not signed by {id}")));
            }
        }
        let mut old: Vec<(String, (String, u64))> = doc["old_verify_keys"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(id, k)| {
                        Some((id.clone(), (k["key"].as_str()?.to_owned(), k["expired_ts"].as_u64().unwrap_or(0))))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // A document listing thousands of old keys keeps only the latest to expire.
        old.sort_by_key(|(_, (_, expired))| std::cmp::Reverse(*expired));
        old.truncate(MAX_OLD_KEYS);
        let old = old.into_iter().collect();
        let keys = ServerKeySet {
            verify_keys: verify,
            old_verify_keys: old,
            valid_until_ts: doc["valid_until_ts"].as_u64().unwrap_or(0).min(now_ms() + MAX_REMOTE_VALIDITY_MS),
        };
        let mut batch = Batch::new();
        KEYS.put(&mut batch, &server.to_owned(), &keys)?;
        let raw = serde_json::to_vec(doc).map_err(|e| bad(&e.to_string()))?;
        DOCS.put(&mut batch, &server.to_owned(), &myelin_storage::Raw(raw))?;
        self.db.commit(batch).await?;
        let mut cache = self.cache.lock();
        cache.put(server.to_owned(), keys.clone());
        metrics::gauge!("myelin_keyring_cached_servers").set(cache.len() as f64);
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_of_key_sets_stays_bounded_however_many_servers_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
        let own = Arc::new(ServerKeys::from_seed("us.test".try_into().unwrap(), "k", &[3u8; 32]).unwrap());
        let ring = KeyRing::new(db.clone(), own, "us.test".into());
        let mut batch = Batch::new();
        let n = CACHED_SERVERS + 500;
        for i in 0..n {
            let mut set = ServerKeySet { valid_until_ts: u64::MAX, ..Default::default() };
            set.verify_keys.insert("ed25519:a".into(), format!("key{i}"));
            KEYS.put(&mut batch, &format!("s{i}.test"), &set).unwrap();
        }
        db.commit_blocking(batch).unwrap();
        for i in 0..n {
            let key = ring.key(&format!("s{i}.test"), "ed25519:a", false).unwrap();
            assert_eq!(key, Some(format!("key{i}")));
        }
        assert_eq!(ring.cache.lock().len(), CACHED_SERVERS);
        // Evicted ones are still known, from storage.
        assert_eq!(ring.key("s0.test", "ed25519:a", false).unwrap(), Some("key0".into()));
    }
}
