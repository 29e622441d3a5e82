//! Pushers and push notifications (Client-Server API §"Push Notifications",
//! Push Gateway API §"`POST /_matrix/push/v1/notify`").
//!
//! > A pusher is a worker on the homeserver that manages the sending of HTTP
//! > notifications for a user. (…) When an event that should be notified of
//! > arrives, the homeserver sends a notification to the push gateway.
//!
//! Three durable steps, each in RocksDB, so nothing is lost to a restart or
//! to a gateway that is down:
//! 1. an appended event that may notify someone (a room with local members
//!    while any pusher exists) gets a `push_pending` row **in its own batch**
//!    (`rooms::append_with`);
//! 2. [`dispatch`] evaluates each pending event against the push rules of
//!    the local members who have pushers and writes one `pusher_queue` row per
//!    pusher that must be notified, deleting the pending row in the same batch
//!    (a repeat after a crash rewrites the same keys: nothing doubles);
//! 3. [`sender`] posts each queued notification to its gateway through the
//!    engine's transport (`Transport::send_user_url`: a user chose the URL, so
//!    the outbound address policy applies), deleting it after a 2xx, with the
//!    federation sender's backoff otherwise. Pushkeys the gateway `rejected`
//!    lose their pusher.
//!
//! Bounds: at most `push.max_pending` notifications wait per pusher (past it
//! the oldest is dropped) and one older than `push.max_age_s` is dropped
//! unsent; both are counted in `myelin_push_dropped_total{reason}`, never
//! silent.

pub mod dispatch;
pub mod sender;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use myelin_storage::{Batch, Db, Direction, Raw, Table, catalog};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// `(user id, app id, pushkey)` → the pusher's JSON.
const PUSHERS: Table<(String, String, String), Raw> = Table::new(&catalog::USERAPPKEY_PUSHER);

/// A pusher as clients set and read it (`/pushers`, `/pushers/set`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pusher {
    /// `http` (the only kind this server sends).
    pub kind: String,
    /// The app the pushkey belongs to.
    pub app_id: String,
    /// The device's push token at the gateway.
    pub pushkey: String,
    /// Shown in the user's pusher list.
    pub app_display_name: String,
    /// Shown in the user's pusher list.
    pub device_display_name: String,
    /// Used to match push rules per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    /// Preferred language.
    pub lang: String,
    /// `url` of the gateway (`…/_matrix/push/v1/notify`) and `format`.
    pub data: PusherData,
    /// When the pushkey was set (ms since the epoch), sent as `pushkey_ts`.
    #[serde(default)]
    pub pushkey_ts: u64,
    /// The device whose token set it (not shown to clients).
    #[serde(default, skip_serializing)]
    pub device_id: String,
}

/// A pusher's `data`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PusherData {
    /// The gateway's notify URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `event_id_only` to send no event content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Anything else the app put there: handed back to the gateway as is.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// What pusher changes can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PusherError {
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] myelin_storage::StorageError),
    /// A stored pusher does not parse.
    #[error("stored pusher: {0}")]
    Corrupt(String),
}

/// The string a pusher's queue rows are keyed by.
pub fn pusher_key(user: &str, app_id: &str, pushkey: &str) -> String {
    serde_json::to_string(&(user, app_id, pushkey)).unwrap_or_default()
}

/// Every pusher, and what the dispatcher and the senders need.
pub struct Pushers {
    db: Arc<Db>,
    /// Users with at least one pusher (the hot path asks this).
    users: RwLock<HashSet<String>>,
    /// Whether any pusher exists: shared with the rooms engine, which writes
    /// pending rows only then.
    any: Arc<AtomicBool>,
    /// The dispatcher's wake-up (pending rows became durable).
    pub(crate) pending: Arc<Notify>,
    /// Pushers with queued notifications since the sender last asked, and its wake-up.
    ready: Mutex<HashSet<String>>,
    pub(crate) ready_notify: Notify,
    /// Queued notifications per pusher key, as far as this process counted them.
    pub(crate) depths: Mutex<HashMap<String, usize>>,
}

impl Pushers {
    /// Loads which users have pushers from `db`; `any` is the rooms engine's flag.
    pub fn open(db: Arc<Db>, any: Arc<AtomicBool>, pending: Arc<Notify>) -> Result<Self, PusherError> {
        let mut users = HashSet::new();
        for row in PUSHERS.iter(&*db, Direction::Forward)? {
            let ((user, _, _), _) = row?;
            users.insert(user);
        }
        any.store(!users.is_empty(), Ordering::Release);
        Ok(Self {
            db,
            users: RwLock::new(users),
            any,
            pending,
            ready: Mutex::new(HashSet::new()),
            ready_notify: Notify::new(),
            depths: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `user` has a pusher.
    pub fn has_pushers(&self, user: &str) -> bool {
        self.users.read().contains(user)
    }

    /// The user's pushers.
    pub fn of(&self, user: &str) -> Result<Vec<Pusher>, PusherError> {
        let mut out = Vec::new();
        for row in PUSHERS.prefix(&*self.db, &(user.to_owned(),), Direction::Forward)? {
            let (_, Raw(bytes)) = row?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| PusherError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// One pusher.
    pub fn get(&self, user: &str, app_id: &str, pushkey: &str) -> Result<Option<Pusher>, PusherError> {
        match PUSHERS.get(&*self.db, &(user.to_owned(), app_id.to_owned(), pushkey.to_owned()))? {
            Some(Raw(bytes)) => {
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| PusherError::Corrupt(e.to_string()))?))
            }
            None => Ok(None),
        }
    }

    /// Adds or replaces a pusher of `user`. Without `append`, every other
    /// user's pusher with the same app id and pushkey goes (spec: a pushkey
    /// belongs to one user unless `append`).
    pub async fn set(&self, user: &str, pusher: Pusher, append: bool) -> Result<(), PusherError> {
        let mut batch = Batch::new();
        if !append {
            for row in PUSHERS.iter(&*self.db, Direction::Forward)? {
                let (key, _) = row?;
                if key.0 != user && key.1 == pusher.app_id && key.2 == pusher.pushkey {
                    PUSHERS.delete(&mut batch, &key);
                    self.forget_queue(&mut batch, &pusher_key(&key.0, &key.1, &key.2))?;
                }
            }
        }
        let json = serde_json::to_vec(&StoredPusher(&pusher)).map_err(|e| PusherError::Corrupt(e.to_string()))?;
        PUSHERS.put(&mut batch, &(user.to_owned(), pusher.app_id.clone(), pusher.pushkey.clone()), &Raw(json))?;
        self.db.commit(batch).await?;
        self.reload_users()?;
        Ok(())
    }

    /// Removes a pusher and what was queued for it; whether it existed.
    pub async fn remove(&self, user: &str, app_id: &str, pushkey: &str) -> Result<bool, PusherError> {
        let key = (user.to_owned(), app_id.to_owned(), pushkey.to_owned());
        if !PUSHERS.contains(&*self.db, &key)? {
            return Ok(false);
        }
        let mut batch = Batch::new();
        PUSHERS.delete(&mut batch, &key);
        self.forget_queue(&mut batch, &pusher_key(user, app_id, pushkey))?;
        self.db.commit(batch).await?;
        self.reload_users()?;
        Ok(true)
    }

    /// Removes every pusher a device set (when it logs out or is deleted).
    pub async fn remove_device(&self, user: &str, device_id: &str) -> Result<usize, PusherError> {
        let mut n = 0;
        for p in self.of(user)? {
            if p.device_id == device_id && self.remove(user, &p.app_id, &p.pushkey).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn forget_queue(&self, batch: &mut Batch, key: &str) -> Result<(), PusherError> {
        for row in sender::QUEUE.prefix(&*self.db, &(key.to_owned(),), Direction::Forward)? {
            let (k, _) = row?;
            sender::QUEUE.delete(batch, &k);
        }
        self.depths.lock().remove(key);
        Ok(())
    }

    fn reload_users(&self) -> Result<(), PusherError> {
        let mut users = HashSet::new();
        for row in PUSHERS.iter(&*self.db, Direction::Forward)? {
            let ((user, _, _), _) = row?;
            users.insert(user);
        }
        self.any.store(!users.is_empty(), Ordering::Release);
        *self.users.write() = users;
        Ok(())
    }

    /// Names pushers as having new queued notifications.
    pub(crate) fn announce(&self, keys: impl IntoIterator<Item = String>) {
        self.ready.lock().extend(keys);
        self.ready_notify.notify_one();
    }

    /// Pushers with something new since the last call.
    pub(crate) fn take_ready(&self) -> Vec<String> {
        std::mem::take(&mut *self.ready.lock()).into_iter().collect()
    }

    /// Every pusher key with queued notifications (a scan, at start-up and every few seconds).
    pub(crate) fn queued_keys(&self) -> Result<Vec<String>, PusherError> {
        let mut out: Vec<String> = Vec::new();
        for row in sender::QUEUE.iter(&*self.db, Direction::Forward)? {
            let ((key, _), _) = row?;
            if out.last() != Some(&key) {
                out.push(key);
            }
        }
        Ok(out)
    }
}

/// A pusher as stored: everything, the device included.
struct StoredPusher<'a>(&'a Pusher);

impl Serialize for StoredPusher<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(self.0).map_err(serde::ser::Error::custom)?;
        v["device_id"] = serde_json::Value::String(self.0.device_id.clone());
        v.serialize(s)
    }
}
