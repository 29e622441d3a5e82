//! Application services: bridges and bots that act for a namespace of users,
//! aliases and rooms (Application Service API, spec v1.x §"Application Service API").
//!
//! > The application service API provides a way to implement… a homeserver that
//! > passes all events to an application service (…) and allows it to act as
//! > users in its namespaces.
//!
//! Registrations come from the files in `[appservice] registrations` and from
//! `myelin admin appservice add`, which stores them in RocksDB. [`Registry`]
//! holds them for the hot paths: which appservice a token belongs to, who may
//! use a user id or alias, and which appservices an event concerns.
//!
//! What an appservice is sent is queued durably: the interest check runs when
//! an event is appended and its queue rows are written in the event's own
//! batch (`rooms::appservices`), so an event is never stored without them.
//! [`sender`] delivers the queue through the engine's transport, like the
//! federation sender: one task per appservice, batched transactions, stable
//! transaction ids across retries and restarts, persisted backoff.

mod ephemeral;
pub mod query;
pub mod queue;
pub mod registration;
pub mod sender;

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use myelin_storage::{Batch, Db, Direction, Table, catalog};
use parking_lot::{Mutex, RwLock};
pub use registration::{Appservice, Registration, RegistrationError};
use tokio::sync::Notify;

use crate::EngineError;

/// What appservice administration can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppserviceError {
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] myelin_storage::StorageError),
    /// The registration does not check, or clashes with another.
    #[error(transparent)]
    Invalid(#[from] RegistrationError),
    /// No appservice has this id.
    #[error("no appservice `{0}`")]
    NotFound(String),
    /// The appservice comes from the configuration and cannot be removed at run time.
    #[error("appservice `{0}` comes from {1}; remove it from the configuration")]
    FromConfig(String, String),
}

/// Registrations added at run time: id → the registration's YAML.
const REGISTRATIONS: Table<String, String> = Table::new(&catalog::APPSERVICE_REGISTRATION);

/// Most ephemeral events (typing, receipts, presence) waiting per appservice;
/// past it the oldest are dropped and counted (they are volatile by the spec).
const MAX_EPHEMERAL: usize = 1000;

/// Every registered appservice, and what its sender needs.
pub struct Registry {
    db: Arc<Db>,
    server_name: String,
    list: RwLock<Arc<Vec<Arc<Appservice>>>>,
    /// `(appservice id, state snapshot)` → whether the room at that state has a
    /// joined member in its user namespaces or an alias in its alias namespaces.
    /// A snapshot never changes, so an entry never goes stale.
    by_state: myelin_storage::SharedLru<(String, u64), bool>,
    /// Appservices with rows queued since the sender last asked, and its wake-up.
    ready: Arc<(Mutex<BTreeSet<String>>, Notify)>,
    /// Ephemeral events waiting per appservice (volatile).
    ephemeral: Mutex<HashMap<String, VecDeque<serde_json::Value>>>,
    /// Per appservice: woken when it shows life (any request with its token).
    alive: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Registry {
    /// The registrations stored by `myelin admin appservice add` in `db`.
    ///
    /// One that no longer checks (a bad regex after an upgrade) is skipped
    /// with a warning, so the server still starts.
    pub fn open(db: Arc<Db>, server_name: &str) -> Result<Self, myelin_storage::StorageError> {
        let mut list = Vec::new();
        for row in REGISTRATIONS.iter(&*db, Direction::Forward)? {
            let (id, yaml) = row?;
            match Appservice::from_yaml(&yaml, "admin".into(), server_name) {
                Ok(a) => list.push(Arc::new(a)),
                Err(e) => tracing::warn!(appservice = %id, error = %e, "skipping a stored registration"),
            }
        }
        let by_state =
            db.caches().lru(crate::cache_shares::APPSERVICE_INTEREST, |(id, _): &(String, u64), _| id.capacity());
        Ok(Self {
            db,
            server_name: server_name.to_owned(),
            list: RwLock::new(Arc::new(list)),
            by_state,
            ready: Arc::new((Mutex::new(BTreeSet::new()), Notify::new())),
            ephemeral: Mutex::new(HashMap::new()),
            alive: Mutex::new(HashMap::new()),
        })
    }

    /// Adds the registration files of the configuration; each must check and
    /// must not reuse an id or token of another.
    pub fn load_files(&self, paths: &[std::path::PathBuf]) -> Result<(), EngineError> {
        for path in paths {
            let at = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| EngineError::Config(format!("appservice.registrations: {at}: {e}")))?;
            let a = Appservice::from_yaml(&text, at.clone(), &self.server_name)
                .map_err(|e| EngineError::Config(format!("appservice registration {at}: {e}")))?;
            self.insert(a).map_err(|e| EngineError::Config(format!("appservice registration {at}: {e}")))?;
        }
        Ok(())
    }

    /// Adds a checked registration in memory, refusing reused ids and tokens.
    fn insert(&self, a: Appservice) -> Result<(), RegistrationError> {
        let mut list = self.list.write();
        for other in list.iter() {
            let clash = |field: &str| RegistrationError {
                field: field.into(),
                reason: format!("already used by appservice `{}` ({})", other.id(), other.source),
            };
            if other.id() == a.id() {
                return Err(clash("id"));
            }
            for token in [&a.registration.as_token, &a.registration.hs_token] {
                if *token == other.registration.as_token || *token == other.registration.hs_token {
                    return Err(clash(if *token == a.registration.as_token { "as_token" } else { "hs_token" }));
                }
            }
        }
        let mut next = (**list).clone();
        next.push(Arc::new(a));
        *list = Arc::new(next);
        Ok(())
    }

    /// Registers an appservice at run time and stores it (it survives restarts).
    pub async fn add(&self, yaml: &str) -> Result<Arc<Appservice>, AppserviceError> {
        let a = Appservice::from_yaml(yaml, "admin".into(), &self.server_name)?;
        let id = a.id().to_owned();
        self.insert(a)?;
        let mut batch = Batch::new();
        REGISTRATIONS.put(&mut batch, &id, &yaml.to_owned())?;
        if let Err(e) = self.db.commit(batch).await {
            self.drop_in_memory(&id);
            return Err(e.into());
        }
        self.get(&id).ok_or(AppserviceError::NotFound(id))
    }

    /// Unregisters a run-time appservice and drops what was queued for it.
    /// Appservices from the configuration files are removed by editing the configuration.
    pub async fn remove(&self, id: &str) -> Result<(), AppserviceError> {
        match self.get(id) {
            None => return Err(AppserviceError::NotFound(id.to_owned())),
            Some(a) if a.source != "admin" => return Err(AppserviceError::FromConfig(id.to_owned(), a.source.clone())),
            Some(_) => {}
        }
        let mut batch = Batch::new();
        REGISTRATIONS.delete(&mut batch, &id.to_owned());
        queue::forget(&self.db, &mut batch, id)?;
        self.db.commit(batch).await?;
        self.drop_in_memory(id);
        Ok(())
    }

    fn drop_in_memory(&self, id: &str) {
        let mut list = self.list.write();
        let next: Vec<_> = list.iter().filter(|a| a.id() != id).cloned().collect();
        *list = Arc::new(next);
        self.ephemeral.lock().remove(id);
    }

    /// Every registered appservice.
    pub fn all(&self) -> Arc<Vec<Arc<Appservice>>> {
        self.list.read().clone()
    }

    /// Whether any appservice is registered (the hot paths skip all work otherwise).
    pub fn is_empty(&self) -> bool {
        self.list.read().is_empty()
    }

    /// The appservice with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Appservice>> {
        self.list.read().iter().find(|a| a.id() == id).cloned()
    }

    /// The appservice whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<Arc<Appservice>> {
        let list = self.list.read();
        if list.is_empty() {
            return None;
        }
        list.iter().find(|a| constant_time_eq(a.registration.as_token.as_bytes(), token.as_bytes())).cloned()
    }

    /// The appservice that claims `user` exclusively, if any.
    pub fn claimant_of_user(&self, user: &str) -> Option<Arc<Appservice>> {
        self.list.read().iter().find(|a| a.claims_user(user)).cloned()
    }

    /// The appservice that claims `alias` exclusively, if any.
    pub fn claimant_of_alias(&self, alias: &str) -> Option<Arc<Appservice>> {
        self.list.read().iter().find(|a| a.claims_alias(alias)).cloned()
    }

    /// Whether the room at `snapshot` concerns appservice `id`; computed by
    /// `compute` on a miss.
    pub(crate) fn concerns_state<E>(
        &self,
        id: &str,
        snapshot: u64,
        compute: impl FnOnce() -> Result<bool, E>,
    ) -> Result<bool, E> {
        let key = (id.to_owned(), snapshot);
        if let Some(v) = self.by_state.lock().get(&key) {
            return Ok(*v);
        }
        let v = compute()?;
        self.by_state.lock().put(key, v);
        Ok(v)
    }

    /// Names `ids` as having new queued rows once `batch` is durable.
    pub(crate) fn announce(&self, batch: &mut Batch, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let ready = self.ready.clone();
        batch.on_durable(move || {
            ready.0.lock().extend(ids);
            ready.1.notify_one();
        });
    }

    /// Queues an ephemeral event (typing, receipt, presence) for every
    /// appservice that receives them and for which `concerns` holds.
    pub fn push_ephemeral(&self, event: &serde_json::Value, concerns: impl Fn(&Appservice) -> bool) {
        let list = self.all();
        let mut woke = Vec::new();
        for a in list.iter().filter(|a| a.receives_ephemeral() && a.url().is_some() && concerns(a)) {
            let mut queues = self.ephemeral.lock();
            let q = queues.entry(a.id().to_owned()).or_default();
            if q.len() >= MAX_EPHEMERAL {
                q.pop_front();
                metrics::counter!("myelin_appservice_ephemeral_dropped_total", "appservice" => a.id().to_owned())
                    .increment(1);
            }
            q.push_back(event.clone());
            woke.push(a.id().to_owned());
        }
        if !woke.is_empty() {
            self.ready.0.lock().extend(woke);
            self.ready.1.notify_one();
        }
    }

    /// Wakes the sender of every appservice told of device-list changes
    /// (MSC3202), so a change reaches it now rather than at the next scan.
    pub(crate) fn wake_key_watchers(&self) {
        let ids: Vec<String> = self
            .all()
            .iter()
            .filter(|a| a.receives_key_counts() && a.url().is_some())
            .map(|a| a.id().to_owned())
            .collect();
        if !ids.is_empty() {
            self.ready.0.lock().extend(ids);
            self.ready.1.notify_one();
        }
    }

    /// Takes up to `max` waiting ephemeral events of appservice `id`.
    pub(crate) fn take_ephemeral(&self, id: &str, max: usize) -> Vec<serde_json::Value> {
        let mut queues = self.ephemeral.lock();
        let Some(q) = queues.get_mut(id) else { return Vec::new() };
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Appservices with something new since the last call.
    pub(crate) fn take_ready(&self) -> Vec<String> {
        std::mem::take(&mut *self.ready.0.lock()).into_iter().collect()
    }

    /// Resolves once something was queued since the last [`Registry::take_ready`].
    pub(crate) async fn wait_ready(&self) {
        self.ready.1.notified().await;
    }

    /// The signal that appservice `id` showed life.
    pub(crate) fn alive_signal(&self, id: &str) -> Arc<Notify> {
        self.alive.lock().entry(id.to_owned()).or_default().clone()
    }

    /// Records that appservice `id` is up (it made a request): a sender
    /// waiting out a backoff for it tries again at once.
    pub fn mark_alive(&self, id: &str) {
        if let Some(n) = self.alive.lock().get(id) {
            n.notify_one();
        }
    }
}

/// Compares tokens without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use crate::{Engine, config::Config};

    fn registration(id: &str, msc3202: bool) -> String {
        format!(
            "id: {id}\nurl: http://127.0.0.1:9\nas_token: as_{id}\nhs_token: hs_{id}\nsender_localpart: {id}bot\n\
             namespaces:\n  users:\n  - regex: \"@{id}_.*:us.test\"\n    exclusive: true\n\
             org.matrix.msc3202: {msc3202}\n"
        )
    }

    #[tokio::test]
    async fn a_device_list_change_wakes_the_senders_of_appservices_told_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config { server_name: "us.test".into(), data_dir: dir.path().join("data"), ..Config::default() };
        config.storage.cache_mb = 8;
        let engine = Engine::open(config).unwrap();
        engine.appservices.add(&registration("keys", true)).await.unwrap();
        engine.appservices.add(&registration("plain", false)).await.unwrap();
        let _ = engine.appservices.take_ready();

        let keys = serde_json::json!({ "user_id": "@alice:us.test", "device_id": "DEV",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"], "keys": { "ed25519:DEV": "k" } });
        let upload = crate::e2ee::Upload { device_keys: Some(keys), ..Default::default() };
        let uploaded = engine.e2ee.upload("@alice:us.test", "DEV", upload).await.unwrap();
        assert!(uploaded.device_keys_changed);
        assert_eq!(engine.appservices.take_ready(), ["keys"], "only the MSC3202 appservice is woken");

        // A one-time key alone changes no device list: nobody is woken.
        let mut otk = serde_json::Map::new();
        otk.insert("signed_curve25519:A".into(), serde_json::json!({ "key": "a" }));
        let upload = crate::e2ee::Upload { one_time_keys: otk, ..Default::default() };
        engine.e2ee.upload("@alice:us.test", "DEV", upload).await.unwrap();
        assert!(engine.appservices.take_ready().is_empty());
        engine.shutdown();
    }
}
