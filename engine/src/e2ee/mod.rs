//! End-to-end encryption keys: device keys, one-time and fallback keys,
//! cross-signing keys, and the log of device-list changes.
//!
//! Client-Server API §"End-to-End Encryption", §"Key management API":
//! "`POST /keys/upload` — Publishes end-to-end encryption keys for the
//! device", "`POST /keys/query` — Returns the current devices and identity
//! keys for the given users", "`POST /keys/claim` — Claims one-time keys for
//! use in pre-key messages", "`GET /keys/changes` — Gets a list of users who
//! have updated their device identity keys since a previous sync token";
//! §"Cross-signing" (`/keys/device_signing/upload`, `/keys/signatures/upload`);
//! §"Extensions to /sync" (`device_lists`, `device_one_time_keys_count`,
//! `device_unused_fallback_key_types`).
//!
//! Keys are stored exactly as the client signed them; the server never
//! changes a signed field. A one-time key is handed out at most once (claims
//! are serialised); when a device has none left of an algorithm, its fallback
//! key is handed out (and reused) instead. Every change to a user's device
//! list — new or changed identity keys, a removed device, cross-signing keys,
//! new signatures, or a remote server telling us of such a change — writes a
//! row at a fresh stream position, which wakes `/sync`.
//!
//! Remote users' keys are kept as last fetched, to answer when their server
//! cannot be reached.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use myelin_storage::{Batch, Db, Direction, Raw, StorageError, Stored, StreamCounter, Table, catalog};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};

mod cross_signing;

const DEVICE_KEYS: Table<(String, String), Raw> = Table::new(&catalog::USERDEVICE_DEVICEKEYS);
const ONE_TIME_KEYS: Table<(String, String, String), Raw> = Table::new(&catalog::USERDEVICEKEY_ONETIMEKEY);
const FALLBACK_KEYS: Table<(String, String, String), FallbackKey> = Table::new(&catalog::USERDEVICEALGO_FALLBACKKEY);
const CROSS_SIGNING: Table<(String, String), Raw> = Table::new(&catalog::USERUSAGE_CROSSSIGNINGKEY);
const CHANGES: Table<(u64, String), ()> = Table::new(&catalog::COUNTUSER_KEYCHANGE);

/// Most one-time keys kept per device; uploads beyond it are refused.
pub const MAX_ONE_TIME_KEYS: usize = 1000;

/// The cross-signing key usages, in the order they are stored.
pub const USAGES: [&str; 3] = ["master", "self_signing", "user_signing"];

/// A device's fallback key for one algorithm.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FallbackKey {
    /// `algorithm:key id`.
    pub key_id: String,
    /// The signed key object.
    pub json: Vec<u8>,
    /// Handed out by a claim since it was uploaded.
    pub used: bool,
}
impl Stored for FallbackKey {}

/// Why a key operation failed; the API maps these to Matrix error codes.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// `M_INVALID_PARAM`.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What one `/keys/upload` carries.
#[derive(Debug, Default)]
pub struct Upload {
    /// The device's signed identity keys.
    pub device_keys: Option<JsonValue>,
    /// `algorithm:key id` → one-time key.
    pub one_time_keys: Map<String, JsonValue>,
    /// `algorithm:key id` → fallback key.
    pub fallback_keys: Map<String, JsonValue>,
}

/// The result of an upload.
#[derive(Debug)]
pub struct Uploaded {
    /// Unclaimed one-time keys per algorithm.
    pub counts: BTreeMap<String, u64>,
    /// The device keys are new or changed (other servers must hear of it).
    pub device_keys_changed: bool,
}

/// The key store of one server.
pub struct E2ee {
    db: Arc<Db>,
    stream: StreamCounter,
    /// One claim at a time, so no one-time key is handed out twice.
    claim_lock: tokio::sync::Mutex<()>,
    /// Called once a batch logging a device-list change is durable.
    on_change: Option<ChangeHook>,
}

/// What [`E2ee::with_change_hook`] calls after a device-list change.
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

fn parse(bytes: &[u8]) -> Option<JsonValue> {
    serde_json::from_slice(bytes).ok()
}

fn to_bytes(v: &JsonValue) -> Result<Vec<u8>, E2eeError> {
    serde_json::to_vec(v).map_err(|e| E2eeError::Invalid(e.to_string()))
}

impl E2ee {
    /// The key store over `db`; changes take positions from `stream`.
    pub fn new(db: Arc<Db>, stream: StreamCounter) -> Self {
        Self { db, stream, claim_lock: tokio::sync::Mutex::new(()), on_change: None }
    }

    /// This store, calling `hook` each time a logged device-list change is durable
    /// (the appservice senders wake on it rather than at their next scan).
    pub fn with_change_hook(mut self, hook: ChangeHook) -> Self {
        self.on_change = Some(hook);
        self
    }

    /// Stores a device's uploaded keys; returns its one-time key counts afterwards.
    pub async fn upload(&self, user: &str, device: &str, upload: Upload) -> Result<Uploaded, E2eeError> {
        let mut batch = Batch::new();
        let mut device_keys_changed = false;
        if let Some(keys) = &upload.device_keys {
            if keys["user_id"].as_str() != Some(user) || keys["device_id"].as_str() != Some(device) {
                return Err(E2eeError::Invalid("device_keys must name this user and device".into()));
            }
            if !keys["keys"].is_object() || !keys["algorithms"].is_array() {
                return Err(E2eeError::Invalid("device_keys needs `keys` and `algorithms`".into()));
            }
            let key = (user.to_owned(), device.to_owned());
            let old = DEVICE_KEYS.get(&*self.db, &key)?.and_then(|r| parse(&r.0));
            if old.as_ref() != Some(keys) {
                DEVICE_KEYS.put(&mut batch, &key, &Raw(to_bytes(keys)?))?;
                device_keys_changed = true;
                self.log_change(&mut batch, user)?;
            }
        }
        let mut held = self.one_time_key_total(user, device)?;
        for (key_id, key) in &upload.one_time_keys {
            if !key_id.contains(':') {
                return Err(E2eeError::Invalid(format!("one-time key id {key_id} has no algorithm")));
            }
            let row = (user.to_owned(), device.to_owned(), key_id.clone());
            match ONE_TIME_KEYS.get(&*self.db, &row)? {
                Some(Raw(old)) if parse(&old).as_ref() == Some(key) => continue,
                Some(_) => return Err(E2eeError::Invalid(format!("one-time key {key_id} already exists"))),
                None => {}
            }
            held += 1;
            if held > MAX_ONE_TIME_KEYS {
                return Err(E2eeError::Invalid(format!("at most {MAX_ONE_TIME_KEYS} one-time keys per device")));
            }
            ONE_TIME_KEYS.put(&mut batch, &row, &Raw(to_bytes(key)?))?;
        }
        for (key_id, key) in &upload.fallback_keys {
            let Some((algorithm, _)) = key_id.split_once(':') else {
                return Err(E2eeError::Invalid(format!("fallback key id {key_id} has no algorithm")));
            };
            let row = (user.to_owned(), device.to_owned(), algorithm.to_owned());
            let json = to_bytes(key)?;
            // Re-uploading the same key keeps its used flag; a new key starts unused.
            if FALLBACK_KEYS.get(&*self.db, &row)?.is_some_and(|f| f.key_id == *key_id && f.json == json) {
                continue;
            }
            FALLBACK_KEYS.put(&mut batch, &row, &FallbackKey { key_id: key_id.clone(), json, used: false })?;
        }
        if !batch.is_empty() {
            self.db.commit(batch).await?;
        }
        Ok(Uploaded { counts: self.one_time_key_counts(user, device)?, device_keys_changed })
    }

    fn one_time_key_total(&self, user: &str, device: &str) -> Result<usize, E2eeError> {
        let mut n = 0;
        for row in ONE_TIME_KEYS.prefix(&*self.db, &(user.to_owned(), device.to_owned()), Direction::Forward)? {
            row?;
            n += 1;
        }
        Ok(n)
    }

    /// Unclaimed one-time keys of a device, per algorithm (`signed_curve25519` always present).
    pub fn one_time_key_counts(&self, user: &str, device: &str) -> Result<BTreeMap<String, u64>, E2eeError> {
        let mut counts = BTreeMap::from([("signed_curve25519".to_owned(), 0)]);
        for row in ONE_TIME_KEYS.prefix(&*self.db, &(user.to_owned(), device.to_owned()), Direction::Forward)? {
            let ((_, _, key_id), _) = row?;
            let algorithm = key_id.split_once(':').map_or(key_id.as_str(), |(a, _)| a);
            *counts.entry(algorithm.to_owned()).or_default() += 1;
        }
        Ok(counts)
    }

    /// Algorithms whose fallback key has not been handed out yet.
    pub fn unused_fallback_types(&self, user: &str, device: &str) -> Result<Vec<String>, E2eeError> {
        let mut out = Vec::new();
        for row in FALLBACK_KEYS.prefix(&*self.db, &(user.to_owned(), device.to_owned()), Direction::Forward)? {
            let ((_, _, algorithm), key) = row?;
            if !key.used {
                out.push(algorithm);
            }
        }
        Ok(out)
    }

    /// The stored identity keys of every device of `user` that has uploaded any.
    pub fn device_keys(&self, user: &str) -> Result<Vec<(String, JsonValue)>, E2eeError> {
        let mut out = Vec::new();
        for row in DEVICE_KEYS.prefix(&*self.db, &(user.to_owned(),), Direction::Forward)? {
            let ((_, device), Raw(bytes)) = row?;
            if let Some(json) = parse(&bytes) {
                out.push((device, json));
            }
        }
        Ok(out)
    }

    /// Hands out one key of `algorithm` for a device: a one-time key, else its fallback key.
    pub async fn claim(
        &self,
        user: &str,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<(String, JsonValue)>, E2eeError> {
        let mut one = self.claim_many(&[(user, device, algorithm)]).await?;
        Ok(one.pop().flatten())
    }

    /// [`E2ee::claim`] for many `(user, device, algorithm)` at once, in their
    /// order, with one write: a `/keys/claim` for a 500-member room's devices
    /// was 500 commits one after another.
    pub async fn claim_many(
        &self,
        wanted: &[(&str, &str, &str)],
    ) -> Result<Vec<Option<(String, JsonValue)>>, E2eeError> {
        let _one_at_a_time = self.claim_lock.lock().await;
        let mut batch = Batch::new();
        let mut out = Vec::with_capacity(wanted.len());
        // The same device asked twice in one request gets two different keys.
        let mut taken = HashSet::new();
        for &(user, device, algorithm) in wanted {
            let start = (user.to_owned(), device.to_owned(), format!("{algorithm}:"));
            let end = (user.to_owned(), device.to_owned(), format!("{algorithm};"));
            let mut found = None;
            for row in ONE_TIME_KEYS.range(&*self.db, start..end, Direction::Forward)? {
                let (row, Raw(bytes)) = row?;
                if taken.insert(row.clone()) {
                    ONE_TIME_KEYS.delete(&mut batch, &row);
                    found = Some(parse(&bytes).map(|json| (row.2, json)));
                    break;
                }
            }
            if let Some(f) = found {
                out.push(f);
                continue;
            }
            let row = (user.to_owned(), device.to_owned(), algorithm.to_owned());
            let Some(mut fallback) = FALLBACK_KEYS.get(&*self.db, &row)? else {
                out.push(None);
                continue;
            };
            if !fallback.used {
                fallback.used = true;
                FALLBACK_KEYS.put(&mut batch, &row, &fallback)?;
            }
            out.push(parse(&fallback.json).map(|json| (fallback.key_id, json)));
        }
        if !batch.is_empty() {
            self.db.commit(batch).await?;
        }
        Ok(out)
    }

    /// Forgets every key of a device (it was deleted or logged out).
    pub async fn remove_device(&self, user: &str, device: &str) -> Result<bool, E2eeError> {
        let mut batch = Batch::new();
        let key = (user.to_owned(), device.to_owned());
        let had_keys = DEVICE_KEYS.contains(&*self.db, &key)?;
        DEVICE_KEYS.delete(&mut batch, &key);
        for row in ONE_TIME_KEYS.prefix(&*self.db, &key, Direction::Forward)? {
            ONE_TIME_KEYS.delete(&mut batch, &row?.0);
        }
        for row in FALLBACK_KEYS.prefix(&*self.db, &key, Direction::Forward)? {
            FALLBACK_KEYS.delete(&mut batch, &row?.0);
        }
        if had_keys {
            self.log_change(&mut batch, user)?;
        }
        if !batch.is_empty() {
            self.db.commit(batch).await?;
        }
        Ok(had_keys)
    }

    /// Replaces the cached keys of a remote user with what their server returned.
    pub async fn store_remote(
        &self,
        user: &str,
        devices: &[(String, JsonValue)],
        cross_signing: &[(&str, JsonValue)],
    ) -> Result<(), E2eeError> {
        let mut batch = Batch::new();
        let keep: HashSet<&str> = devices.iter().map(|(d, _)| d.as_str()).collect();
        for row in DEVICE_KEYS.prefix(&*self.db, &(user.to_owned(),), Direction::Forward)? {
            let (key, _) = row?;
            if !keep.contains(key.1.as_str()) {
                DEVICE_KEYS.delete(&mut batch, &key);
            }
        }
        for (device, keys) in devices {
            DEVICE_KEYS.put(&mut batch, &(user.to_owned(), device.clone()), &Raw(to_bytes(keys)?))?;
        }
        for (usage, key) in cross_signing {
            CROSS_SIGNING.put(&mut batch, &(user.to_owned(), (*usage).to_owned()), &Raw(to_bytes(key)?))?;
        }
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Updates one cached remote device (`None`: deleted) and logs the change.
    pub async fn remote_device_changed(
        &self,
        user: &str,
        device: &str,
        keys: Option<Option<&JsonValue>>,
    ) -> Result<(), E2eeError> {
        let mut batch = Batch::new();
        let row = (user.to_owned(), device.to_owned());
        match keys {
            Some(Some(k)) => DEVICE_KEYS.put(&mut batch, &row, &Raw(to_bytes(k)?))?,
            Some(None) => DEVICE_KEYS.delete(&mut batch, &row),
            None => {} // changed, keys not given: the next query fetches them
        }
        self.log_change(&mut batch, user)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Logs that `user`'s cross-signing keys changed on their server (and caches the new ones).
    pub async fn remote_cross_signing_changed(&self, user: &str, keys: &[(&str, JsonValue)]) -> Result<(), E2eeError> {
        let mut batch = Batch::new();
        for (usage, key) in keys {
            CROSS_SIGNING.put(&mut batch, &(user.to_owned(), (*usage).to_owned()), &Raw(to_bytes(key)?))?;
        }
        self.log_change(&mut batch, user)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    fn log_change(&self, batch: &mut Batch, user: &str) -> Result<(), E2eeError> {
        let pos = self.stream.next_in(batch);
        CHANGES.put(batch, &(pos, user.to_owned()), &())?;
        if let Some(hook) = &self.on_change {
            let hook = hook.clone();
            batch.on_durable(move || hook());
        }
        Ok(())
    }

    /// Users whose device list changed at positions in `(since, upto]`.
    pub fn changed_between(&self, since: u64, upto: u64) -> Result<HashSet<String>, E2eeError> {
        let mut out = HashSet::new();
        if upto <= since {
            return Ok(out);
        }
        let range = (since + 1, String::new())..(upto.saturating_add(1), String::new());
        for row in CHANGES.range(&*self.db, range, Direction::Forward)? {
            out.insert(row?.0.1);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, E2ee) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
        let stream = StreamCounter::load(&db, "stream").unwrap();
        (dir, E2ee::new(db, stream))
    }

    fn device_keys(user: &str, device: &str, key: &str) -> JsonValue {
        json!({
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { format!("curve25519:{device}"): key },
            "signatures": { user: { format!("ed25519:{device}"): "sig" } },
        })
    }

    #[tokio::test]
    async fn one_time_keys_are_claimed_once_then_the_fallback_key() {
        let (_dir, e) = store();
        let mut otks = Map::new();
        otks.insert("signed_curve25519:A".into(), json!({ "key": "a" }));
        otks.insert("signed_curve25519:B".into(), json!({ "key": "b" }));
        let mut fallback = Map::new();
        fallback.insert("signed_curve25519:F".into(), json!({ "key": "f", "fallback": true }));
        let up = Upload { one_time_keys: otks, fallback_keys: fallback, ..Default::default() };
        let done = e.upload("@a:x", "D", up).await.unwrap();
        assert_eq!(done.counts["signed_curve25519"], 2);
        assert_eq!(e.unused_fallback_types("@a:x", "D").unwrap(), vec!["signed_curve25519"]);
        let first = e.claim("@a:x", "D", "signed_curve25519").await.unwrap().unwrap();
        let second = e.claim("@a:x", "D", "signed_curve25519").await.unwrap().unwrap();
        assert_ne!(first.0, second.0);
        assert_eq!(e.one_time_key_counts("@a:x", "D").unwrap()["signed_curve25519"], 0);
        let third = e.claim("@a:x", "D", "signed_curve25519").await.unwrap().unwrap();
        assert_eq!(third.0, "signed_curve25519:F");
        assert!(e.unused_fallback_types("@a:x", "D").unwrap().is_empty());
        assert!(e.claim("@a:x", "D", "other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn many_claims_at_once_never_hand_out_one_key_twice() {
        let (_dir, e) = store();
        for device in ["D", "E"] {
            let mut otks = Map::new();
            otks.insert("signed_curve25519:A".into(), json!({ "key": format!("{device}a") }));
            otks.insert("signed_curve25519:B".into(), json!({ "key": format!("{device}b") }));
            let mut fallback = Map::new();
            fallback.insert("signed_curve25519:F".into(), json!({ "key": format!("{device}f"), "fallback": true }));
            let up = Upload { one_time_keys: otks, fallback_keys: fallback, ..Default::default() };
            e.upload("@a:x", device, up).await.unwrap();
        }
        let asks = [
            ("@a:x", "D", "signed_curve25519"),
            ("@a:x", "D", "signed_curve25519"),
            ("@a:x", "D", "signed_curve25519"),
            ("@a:x", "E", "signed_curve25519"),
            ("@a:x", "NONE", "signed_curve25519"),
        ];
        let got = e.claim_many(&asks).await.unwrap();
        let ids: Vec<Option<String>> =
            got.iter().map(|g| g.as_ref().map(|(id, k)| format!("{id}={}", k["key"]))).collect();
        assert_eq!(
            ids,
            vec![
                Some("signed_curve25519:A=\"Da\"".into()),
                Some("signed_curve25519:B=\"Db\"".into()),
                Some("signed_curve25519:F=\"Df\"".into()),
                Some("signed_curve25519:A=\"Ea\"".into()),
                None,
            ]
        );
        assert_eq!(e.one_time_key_counts("@a:x", "D").unwrap()["signed_curve25519"], 0);
        assert_eq!(e.one_time_key_counts("@a:x", "E").unwrap()["signed_curve25519"], 1);
        assert!(e.unused_fallback_types("@a:x", "D").unwrap().is_empty());
    }

    #[tokio::test]
    async fn device_key_changes_are_logged_and_foreign_keys_refused() {
        let (_dir, e) = store();
        let before = e.stream.current();
        let up = Upload { device_keys: Some(device_keys("@a:x", "D", "k1")), ..Default::default() };
        assert!(e.upload("@a:x", "D", up).await.unwrap().device_keys_changed);
        let same = Upload { device_keys: Some(device_keys("@a:x", "D", "k1")), ..Default::default() };
        assert!(!e.upload("@a:x", "D", same).await.unwrap().device_keys_changed);
        let changed = e.changed_between(before, e.stream.current()).unwrap();
        assert!(changed.contains("@a:x"));
        let wrong = Upload { device_keys: Some(device_keys("@b:x", "D", "k1")), ..Default::default() };
        assert!(matches!(e.upload("@a:x", "D", wrong).await, Err(E2eeError::Invalid(_))));
        assert!(e.remove_device("@a:x", "D").await.unwrap());
        assert!(e.device_keys("@a:x").unwrap().is_empty());
    }

    #[tokio::test]
    async fn signatures_merge_only_onto_the_matching_key() {
        let (_dir, e) = store();
        let keys = device_keys("@a:x", "D", "k1");
        e.upload("@a:x", "D", Upload { device_keys: Some(keys.clone()), ..Default::default() }).await.unwrap();
        let mut signed = keys.clone();
        signed["signatures"] = json!({ "@a:x": { "ed25519:SSK": "cross" } });
        assert!(e.add_signatures("@a:x", "@a:x", "D", &signed).await.unwrap());
        let stored = &e.device_keys("@a:x").unwrap()[0].1;
        assert_eq!(stored["signatures"]["@a:x"]["ed25519:SSK"], "cross");
        assert_eq!(stored["signatures"]["@a:x"]["ed25519:D"], "sig");
        let mut tampered = signed.clone();
        tampered["keys"]["curve25519:D"] = json!("other");
        assert!(e.add_signatures("@a:x", "@a:x", "D", &tampered).await.is_err());
    }
}
