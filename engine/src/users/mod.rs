//! Accounts, devices, access tokens, account data, filters and transaction ids.
//!
//! Client-Server API §"Account registration and management", §"Login",
//! §"Device management", §"Client config" (account data), §"Filtering",
//! §"Transaction identifiers".
//!
//! Passwords are stored as Argon2id PHC strings. Access tokens are 32 random
//! bytes (URL-safe base64); a token maps to one (user, device), and a device
//! holds its current token, so deleting a device or logging out revokes it.
//!
//! Guarantees: an account, its first device and its token are written in one
//! batch (no half-registered user); a deactivated account has no tokens left
//! and cannot log in again.

use std::{collections::HashMap, sync::Arc};

use argon2::Argon2;
use myelin_storage::{Db, Raw, Stored, Table, catalog};
use ruma::{OwnedServerName, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::EngineError;

mod account_data;
mod accounts;
mod devices;
mod filters;
pub mod import;
mod profile;
mod sessions;
pub mod shared_secret;
mod to_device;

use accounts::{HashPool, password_hasher};
use sessions::SessionCache;

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// Argon2id PHC string; empty for accounts that cannot log in with a password.
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Server administrator.
    pub admin: bool,
    /// Deactivated accounts keep their id forever but cannot log in.
    pub deactivated: bool,
}
impl Stored for Account {}

/// What an access token stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
}
impl Stored for Session {}

/// A device of a user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    /// Human-readable name.
    pub display_name: Option<String>,
    /// Last time it was used, ms.
    pub last_seen_ts: u64,
    /// Its current access token.
    pub token: String,
}
impl Stored for Device {}

const ACCOUNTS: Table<String, Account> = Table::new(&catalog::USERID_ACCOUNT);
const TOKENS: Table<String, Session> = Table::new(&catalog::TOKEN_SESSION);
/// User id → when it was erased (ms).
const ERASED: Table<String, u64> = Table::new(&catalog::USERID_ERASED);
/// Deactivations not yet finished: user id → the devices it had.
const DEACTIVATING: Table<String, Deactivating> = Table::new(&catalog::USERID_DEACTIVATING);

/// An unfinished deactivation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Deactivating {
    devices: Vec<String>,
}
impl Stored for Deactivating {}

/// Guest accounts: user id → creation time.
const GUESTS: Table<String, u64> = Table::new(&catalog::USERID_GUEST);
const DEVICES: Table<(String, String), Device> = Table::new(&catalog::USERDEVICE_DEVICE);
const ACCOUNT_DATA: Table<(String, String, String), AccountData> = Table::new(&catalog::USERROOMTYPE_ACCOUNTDATA);
/// `(user, stream position)` → `(room or "", type)` written then; a row whose data was
/// written again since (its stored position differs) is skipped when read.
const ACCOUNT_DATA_BY_COUNT: Table<(String, u64), AccountDataRef> = Table::new(&catalog::USERCOUNT_ACCOUNTDATA);

/// Which account data an index row names: `(room or "", type)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountDataRef {
    room: String,
    kind: String,
}
impl Stored for AccountDataRef {}
const TO_DEVICE: Table<(String, String, u64), ToDevice> = Table::new(&catalog::USERDEVICECOUNT_TODEVICE);
const PROFILES: Table<String, Profile> = Table::new(&catalog::USERID_PROFILE);

/// A local user's public profile (Client-Server API §"Profiles").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// `displayname`.
    pub displayname: Option<String>,
    /// `avatar_url` (an `mxc://` URI).
    pub avatar_url: Option<String>,
}
impl Stored for Profile {}

/// Stored account data: the JSON and the stream position it was written at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountData {
    /// Stream position of the last write (incremental `/sync` sends newer ones).
    pub count: u64,
    /// The content.
    pub json: Vec<u8>,
}
impl Stored for AccountData {}

/// A to-device message waiting for its device's next `/sync`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToDevice {
    /// Who sent it.
    pub sender: String,
    /// Event type.
    pub kind: String,
    /// Content JSON.
    pub content: Vec<u8>,
}
impl Stored for ToDevice {}
const FILTERS: Table<(String, u64), Raw> = Table::new(&catalog::USERFILTER_FILTER);
/// `(user, device, transaction id)` → event id (written with the event by the rooms engine).
pub(crate) const TXNS: Table<(String, String, String), String> = Table::new(&catalog::USERDEVICETXN_EVENTID);

/// Why a user operation failed; the API maps these to Matrix error codes.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// `M_USER_IN_USE`.
    #[error("user id already taken")]
    InUse,
    /// `M_INVALID_USERNAME`.
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    /// `M_FORBIDDEN` (bad credentials, deactivated account).
    #[error("{0}")]
    Forbidden(String),
    /// `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// `M_LIMIT_EXCEEDED`: the password-hashing queue is full.
    #[error("too many passwords waiting to be checked")]
    Busy {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// Internal failure.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<myelin_storage::StorageError> for UserError {
    fn from(e: myelin_storage::StorageError) -> Self {
        UserError::Engine(e.into())
    }
}

/// A fresh login: what `/register` and `/login` return.
#[derive(Debug, Clone)]
pub struct NewLogin {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: String,
    /// The access token.
    pub access_token: String,
}

use crate::util::now_ms;

/// Accounts and sessions of one server.
pub struct Users {
    db: Arc<Db>,
    stream: myelin_storage::StreamCounter,
    server_name: OwnedServerName,
    /// Serialises account creation so two registrations cannot take one name.
    create_lock: tokio::sync::Mutex<()>,
    /// Serialises read-modify-write updates of account data (room tags), so two
    /// concurrent changes to one event cannot lose either.
    account_data_lock: tokio::sync::Mutex<()>,
    argon2: Argon2<'static>,
    /// Synapse's `password_config.pepper`, for the bcrypt hashes imported from it.
    synapse_pepper: Arc<str>,
    hashing: HashPool,
    /// Per user, a position at or above their newest account data: an incremental
    /// `/sync` with nothing newer skips the index read (see [`Users::account_data_since`]).
    account_data_newest: crate::positions::NewestPositions<String>,
    /// Per (user, device), a position at or above its newest to-device message...
    to_device_newest: crate::positions::NewestPositions<(String, String)>,
    /// ...and the position its messages were acknowledged (deleted) up to: when the
    /// first is not above the second, the device has none and `/sync` reads nothing.
    to_device_acked: parking_lot::Mutex<HashMap<(String, String), u64>>,
    /// Access tokens read recently (every request reads one), see [`Users::session`].
    sessions: parking_lot::Mutex<SessionCache>,
    /// Client transaction ids being processed: `(user, device, txn id)`, see [`Users::claim_txn`].
    txn_claims: crate::in_flight::InFlight<TxnKey>,
    /// Nonces handed out for shared-secret registration.
    pub nonces: shared_secret::Nonces,
    /// Whether any guest account may exist: while none ever did, requests skip the
    /// guest lookup.
    any_guests: std::sync::atomic::AtomicBool,
    /// Registered appservices: to-device messages for their users go to them.
    appservices: Option<Arc<crate::appservice::Registry>>,
    /// Inbox sizes per device, see [`Users::inbox_has_room`].
    inboxes: to_device::InboxSizes,
}

/// `(user, device, transaction id)`.
pub type TxnKey = (String, String, String);

/// Most client transactions processed at once (server-wide); beyond that a new
/// one is refused until one finishes.
pub const MAX_TXNS_IN_FLIGHT: usize = 10_000;

impl Users {
    /// The user service over `db`.
    pub fn new(
        db: Arc<Db>,
        server_name: OwnedServerName,
        stream: myelin_storage::StreamCounter,
        limits: &crate::config::LimitsConfig,
    ) -> Self {
        let by_token = db.caches().lru(crate::cache_shares::SESSIONS, |token: &String, s: &Session| {
            token.capacity() + s.user_id.capacity() + s.device_id.capacity()
        });
        // An unreadable table counts as "may have guests": the lookup then decides.
        let any_guests =
            GUESTS.iter(&*db, myelin_storage::Direction::Forward).map(|mut i| i.next().is_some()).unwrap_or(true);
        Self {
            db,
            stream,
            server_name,
            create_lock: tokio::sync::Mutex::new(()),
            account_data_lock: tokio::sync::Mutex::new(()),
            argon2: password_hasher(),
            synapse_pepper: Arc::from(""),
            hashing: HashPool::new(limits.hash_threads, limits.hash_queue),
            account_data_newest: Default::default(),
            to_device_newest: Default::default(),
            to_device_acked: parking_lot::Mutex::new(HashMap::new()),
            sessions: parking_lot::Mutex::new(SessionCache { generation: 0, by_token }),
            txn_claims: crate::in_flight::InFlight::new(MAX_TXNS_IN_FLIGHT),
            nonces: shared_secret::Nonces::default(),
            any_guests: std::sync::atomic::AtomicBool::new(any_guests),
            appservices: None,
            inboxes: to_device::InboxSizes::new(limits.max_to_device_per_device),
        }
    }

    /// Pushes to-device messages for appservice users to their appservices.
    /// The same service, checking imported Synapse (bcrypt) hashes with Synapse's pepper.
    pub fn with_synapse_pepper(mut self, pepper: &str) -> Self {
        self.synapse_pepper = Arc::from(pepper);
        self
    }

    pub(crate) fn with_appservices(mut self, appservices: Arc<crate::appservice::Registry>) -> Self {
        self.appservices = Some(appservices);
        self
    }
}

#[cfg(test)]
mod testing {
    //! What the tests of each part of [`Users`] open.

    use std::sync::Arc;

    use myelin_storage::{Db, StorageOptions, StreamCounter};
    use ruma::OwnedServerName;

    use super::Users;

    /// The user service over `db`, with its own stream counter as a start would load it.
    pub(super) fn service(db: &Arc<Db>) -> Users {
        let server: OwnedServerName = "x".try_into().unwrap();
        Users::new(db.clone(), server, StreamCounter::load(db, "stream").unwrap(), &Default::default())
    }

    pub(super) fn open(dir: &tempfile::TempDir) -> Arc<Db> {
        Db::open(dir.path(), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap()
    }
}
