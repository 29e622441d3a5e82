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

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use base64::Engine as _;
use myelin_storage::{Batch, Db, Direction, Raw, Stored, Table, catalog};

use ring::rand::SecureRandom;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::EngineError;

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

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn random_token(bytes: usize) -> Result<String, UserError> {
    let mut raw = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| UserError::Engine(EngineError::Keys("no system randomness".into())))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

fn random_device_id() -> Result<String, UserError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut raw = [0u8; 10];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| UserError::Engine(EngineError::Keys("no system randomness".into())))?;
    Ok(raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
}

fn hash_password(argon2: &Argon2<'static>, password: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| UserError::Engine(EngineError::Keys("no system randomness".into())))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Engine(EngineError::Keys(e.to_string())))?;
    let hash = argon2
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| UserError::Engine(EngineError::Keys(format!("hashing a password: {e}"))))?;
    Ok(hash.to_string())
}

fn password_matches(argon2: &Argon2<'static>, hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Accounts and sessions of one server.
pub struct Users {
    db: Arc<Db>,
    stream: myelin_storage::StreamCounter,
    server_name: OwnedServerName,
    /// Serialises account creation so two registrations cannot take one name.
    create_lock: tokio::sync::Mutex<()>,
    argon2: Argon2<'static>,
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
}

/// Most access tokens kept in memory.
const SESSIONS_KEPT: usize = 4096;

/// Sessions of access tokens, and a generation raised by every token deletion.
struct SessionCache {
    generation: u64,
    by_token: lru::LruCache<String, Session>,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Two long-lived threads do all password hashing and checking. Argon2's working
/// memory is then reused by those two threads; hashed on the blocking pool, every
/// thread that ever hashed kept its own allocator arena full of freed Argon2 blocks
/// (measured: 400 registrations, 8 at a time, left the server at 1.5 GiB RSS).
struct HashPool {
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl HashPool {
    fn new(threads: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("myelin-hash-{i}")).spawn(move || {
                loop {
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the Users service is gone
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self { jobs }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, UserError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| UserError::Engine(EngineError::Keys("password hashing threads are gone".into())))?;
        rx.await.map_err(|_| UserError::Engine(EngineError::Keys("password hashing thread failed".into())))
    }
}

/// Argon2id with 7 MiB and 5 passes: one of OWASP's equivalent parameter sets
/// (with 19 MiB / 2 passes), chosen for the smaller memory per concurrent hash.
/// Stored hashes carry their parameters, so older ones still verify.
fn password_hasher() -> Argon2<'static> {
    match argon2::Params::new(7 * 1024, 5, 1, None) {
        Ok(params) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params),
        Err(_) => Argon2::default(),
    }
}

impl Users {
    /// The user service over `db`.
    pub fn new(db: Arc<Db>, server_name: OwnedServerName, stream: myelin_storage::StreamCounter) -> Self {
        Self {
            db,
            stream,
            server_name,
            create_lock: tokio::sync::Mutex::new(()),
            argon2: password_hasher(),
            hashing: HashPool::new(2),
            account_data_newest: Default::default(),
            to_device_newest: Default::default(),
            to_device_acked: parking_lot::Mutex::new(HashMap::new()),
            sessions: parking_lot::Mutex::new(SessionCache { generation: 0, by_token: lru::LruCache::unbounded() }),
        }
    }

    /// Commits a batch that deletes access tokens, then drops every remembered
    /// session (see [`Users::session`]).
    async fn commit_token_deletions(&self, batch: Batch) -> Result<(), UserError> {
        self.db.commit(batch).await?;
        let mut cache = self.sessions.lock();
        cache.generation += 1;
        cache.by_token.clear();
        Ok(())
    }

    /// Checks a localpart against the spec's user id grammar (lower-case historical set).
    pub fn user_id_for(&self, localpart: &str) -> Result<OwnedUserId, UserError> {
        let localpart = localpart.strip_prefix('@').map(|l| l.split(':').next().unwrap_or(l)).unwrap_or(localpart);
        if localpart.is_empty()
            || !localpart.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(UserError::InvalidUsername(format!(
                "`{localpart}`: use only a-z, 0-9, '.', '_', '=', '-', '/' and '+'"
            )));
        }
        let id = UserId::parse(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| UserError::InvalidUsername(e.to_string()))?;
        if id.as_str().len() > 255 {
            return Err(UserError::InvalidUsername("user id longer than 255 bytes".into()));
        }
        Ok(id)
    }

    /// Whether a local user id is registered (deactivated accounts count: ids are never reused).
    pub fn exists(&self, user_id: &UserId) -> Result<bool, UserError> {
        Ok(ACCOUNTS.contains(&*self.db, &user_id.to_string())?)
    }

    /// The stored account.
    pub fn account(&self, user_id: &UserId) -> Result<Option<Account>, UserError> {
        Ok(ACCOUNTS.get(&*self.db, &user_id.to_string())?)
    }

    /// Every registered user id.
    pub fn list(&self) -> Result<Vec<(String, Account)>, UserError> {
        let mut out = Vec::new();
        for row in ACCOUNTS.iter(&*self.db, Direction::Forward)? {
            out.push(row?);
        }
        Ok(out)
    }

    /// Registers `user_id` with `password`; logs in a device unless `inhibit_login`.
    pub async fn register(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        admin: bool,
        device_id: Option<String>,
        device_name: Option<String>,
        inhibit_login: bool,
    ) -> Result<Option<NewLogin>, UserError> {
        let hash = match password {
            Some(p) => self.hash_off_runtime(p).await?,
            None => String::new(),
        };
        let _guard = self.create_lock.lock().await;
        if self.exists(user_id)? {
            return Err(UserError::InUse);
        }
        let mut batch = Batch::new();
        ACCOUNTS.put(
            &mut batch,
            &user_id.to_string(),
            &Account { password_hash: hash, created_ms: now_ms(), admin, deactivated: false },
        )?;
        // New users start with their localpart as display name, as other servers do.
        let profile = Profile { displayname: Some(user_id.localpart().to_owned()), avatar_url: None };
        PROFILES.put(&mut batch, &user_id.to_string(), &profile)?;
        let login =
            if inhibit_login { None } else { Some(self.new_device(&mut batch, user_id, device_id, device_name)?) };
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, "registered");
        Ok(login)
    }

    /// Hashes on the hashing threads: Argon2 is deliberately slow.
    async fn hash_off_runtime(&self, password: &str) -> Result<String, UserError> {
        let (argon2, password) = (self.argon2.clone(), password.to_owned());
        self.hashing.run(move || hash_password(&argon2, &password)).await?
    }

    async fn verify_off_runtime(&self, hash: &str, password: &str) -> Result<bool, UserError> {
        let (argon2, hash, password) = (self.argon2.clone(), hash.to_owned(), password.to_owned());
        self.hashing.run(move || password_matches(&argon2, &hash, &password)).await
    }

    fn new_device(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<String>,
        device_name: Option<String>,
    ) -> Result<NewLogin, UserError> {
        let device_id = match device_id {
            Some(d) if !d.is_empty() => d,
            _ => random_device_id()?,
        };
        let token = random_token(32)?;
        let key = (user_id.to_string(), device_id.clone());
        // Reusing a device id replaces that device's session.
        if let Some(old) = DEVICES.get(&*self.db, &key)? {
            TOKENS.delete(batch, &old.token);
        }
        DEVICES.put(
            batch,
            &key,
            &Device { display_name: device_name, last_seen_ts: now_ms(), token: token.clone() },
        )?;
        TOKENS.put(batch, &token, &Session { user_id: user_id.to_string(), device_id: device_id.clone() })?;
        Ok(NewLogin { user_id: user_id.to_owned(), device_id, access_token: token })
    }

    /// Checks the password and logs in a (new or reused) device.
    pub async fn login(
        &self,
        user_id: &UserId,
        password: &str,
        device_id: Option<String>,
        device_name: Option<String>,
    ) -> Result<NewLogin, UserError> {
        let forbidden = || UserError::Forbidden("invalid username or password".into());
        let account = self.account(user_id)?.ok_or_else(forbidden)?;
        if account.deactivated || account.password_hash.is_empty() {
            return Err(forbidden());
        }
        if !self.verify_off_runtime(&account.password_hash, password).await? {
            return Err(forbidden());
        }
        let mut batch = Batch::new();
        let login = self.new_device(&mut batch, user_id, device_id, device_name)?;
        // A reused device id's old token is deleted in that batch.
        self.commit_token_deletions(batch).await?;
        Ok(login)
    }

    /// Whether `password` is the user's password (for user-interactive auth).
    pub async fn password_ok(&self, user_id: &UserId, password: &str) -> Result<bool, UserError> {
        match self.account(user_id)? {
            Some(a) if !a.deactivated && !a.password_hash.is_empty() => {
                self.verify_off_runtime(&a.password_hash, password).await
            }
            _ => Ok(false),
        }
    }

    /// The session of an access token.
    ///
    /// Valid tokens are remembered. Every change that deletes tokens (logout,
    /// device replaced or deleted, password change, deactivation) clears them
    /// after its write, and a read that started before such a clear does not
    /// store what it read (the generation moved), so a deleted token is never
    /// served from memory once its deletion has returned.
    pub fn session(&self, token: &str) -> Result<Option<Session>, UserError> {
        let generation = {
            let mut cache = self.sessions.lock();
            if let Some(s) = cache.by_token.get(token) {
                return Ok(Some(s.clone()));
            }
            cache.generation
        };
        let session = TOKENS.get(&*self.db, &token.to_owned())?;
        if let Some(s) = &session {
            let mut cache = self.sessions.lock();
            if cache.generation == generation {
                cache.by_token.put(token.to_owned(), s.clone());
                while cache.by_token.len() > SESSIONS_KEPT {
                    cache.by_token.pop_lru();
                }
            }
        }
        Ok(session)
    }

    /// Logs out one device (its token stops working).
    pub async fn logout(&self, user_id: &str, device_id: &str) -> Result<(), UserError> {
        let mut batch = Batch::new();
        let key = (user_id.to_owned(), device_id.to_owned());
        if let Some(device) = DEVICES.get(&*self.db, &key)? {
            TOKENS.delete(&mut batch, &device.token);
        }
        DEVICES.delete(&mut batch, &key);
        self.commit_token_deletions(batch).await?;
        Ok(())
    }

    /// Logs out every device of the user.
    pub async fn logout_all(&self, user_id: &str) -> Result<(), UserError> {
        let mut batch = Batch::new();
        for row in DEVICES.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let (key, device) = row?;
            TOKENS.delete(&mut batch, &device.token);
            DEVICES.delete(&mut batch, &key);
        }
        self.commit_token_deletions(batch).await?;
        Ok(())
    }

    /// Sets a new password; with `keep_device`, every other device is logged
    /// out and deleted. Returns the deleted devices' ids (their encryption keys
    /// are the caller's to forget).
    pub async fn set_password(
        &self,
        user_id: &UserId,
        password: &str,
        keep_device: Option<&str>,
    ) -> Result<Vec<String>, UserError> {
        let mut account = self.account(user_id)?.ok_or_else(|| UserError::NotFound("no such user".into()))?;
        account.password_hash = self.hash_off_runtime(password).await?;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, &user_id.to_string(), &account)?;
        let mut removed = Vec::new();
        if let Some(keep) = keep_device {
            for row in DEVICES.prefix(&*self.db, &(user_id.to_string(),), Direction::Forward)? {
                let (key, device) = row?;
                if key.1 != keep {
                    TOKENS.delete(&mut batch, &device.token);
                    DEVICES.delete(&mut batch, &key);
                    removed.push(key.1);
                }
            }
        }
        self.commit_token_deletions(batch).await?;
        Ok(removed)
    }

    /// Deactivates the account: no password, no devices, no tokens; the id stays taken.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<(), UserError> {
        let mut account = self.account(user_id)?.ok_or_else(|| UserError::NotFound("no such user".into()))?;
        account.deactivated = true;
        account.password_hash.clear();
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, &user_id.to_string(), &account)?;
        for row in DEVICES.prefix(&*self.db, &(user_id.to_string(),), Direction::Forward)? {
            let (key, device) = row?;
            TOKENS.delete(&mut batch, &device.token);
            DEVICES.delete(&mut batch, &key);
        }
        self.commit_token_deletions(batch).await?;
        tracing::info!(user_id = %user_id, "deactivated");
        Ok(())
    }

    /// The user's devices.
    pub fn devices(&self, user_id: &str) -> Result<Vec<(String, Device)>, UserError> {
        let mut out = Vec::new();
        for row in DEVICES.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let ((_, device_id), device) = row?;
            out.push((device_id, device));
        }
        Ok(out)
    }

    /// Renames a device.
    pub async fn rename_device(&self, user_id: &str, device_id: &str, name: Option<String>) -> Result<(), UserError> {
        let key = (user_id.to_owned(), device_id.to_owned());
        let mut device = DEVICES.get(&*self.db, &key)?.ok_or_else(|| UserError::NotFound("no such device".into()))?;
        device.display_name = name;
        let mut batch = Batch::new();
        DEVICES.put(&mut batch, &key, &device)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Indexes account data stored before the by-position index existed (once, at
    /// start-up, off the async runtime); a no-op when the index has rows.
    pub(crate) fn index_existing_account_data(&self) -> Result<usize, UserError> {
        if ACCOUNT_DATA_BY_COUNT.iter(&*self.db, Direction::Forward)?.next().is_some() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        let mut n = 0;
        for row in ACCOUNT_DATA.iter(&*self.db, Direction::Forward)? {
            let ((user, room, kind), data) = row?;
            ACCOUNT_DATA_BY_COUNT.put(&mut batch, &(user, data.count), &AccountDataRef { room, kind })?;
            n += 1;
        }
        if n > 0 {
            self.db.commit_blocking(batch)?;
        }
        Ok(n)
    }

    /// Global (`room` = None) or per-room account data of `kind`.
    pub fn account_data(&self, user_id: &str, room: Option<&str>, kind: &str) -> Result<Option<Vec<u8>>, UserError> {
        let key = (user_id.to_owned(), room.unwrap_or_default().to_owned(), kind.to_owned());
        Ok(ACCOUNT_DATA.get(&*self.db, &key)?.map(|r| r.json))
    }

    /// All account data of the user: `(room or "", type, data)`.
    pub fn all_account_data(&self, user_id: &str) -> Result<Vec<(String, String, AccountData)>, UserError> {
        let mut out = Vec::new();
        for row in ACCOUNT_DATA.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let ((_, room, kind), data) = row?;
            out.push((room, kind, data));
        }
        Ok(out)
    }

    /// The user's account data written after stream position `since` (all of it for
    /// `None`): `(room or "", type, data)`. An incremental sync reads only what
    /// changed, not a row per room the user ever read or tagged.
    pub fn account_data_since(
        &self,
        user_id: &str,
        since: Option<u64>,
    ) -> Result<Vec<(String, String, AccountData)>, UserError> {
        let Some(since) = since else { return self.all_account_data(user_id) };
        let user = user_id.to_owned();
        let quiet = self.account_data_newest.none_after(user_id, since as i64, || -> Result<i64, UserError> {
            Ok(match ACCOUNT_DATA_BY_COUNT.prefix(&*self.db, &(user.clone(),), Direction::Reverse)?.next() {
                Some(row) => row?.0.1 as i64,
                None => 0,
            })
        })?;
        if quiet {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let range = (user.clone(), since.saturating_add(1))..=(user.clone(), u64::MAX);
        for row in ACCOUNT_DATA_BY_COUNT.range(&*self.db, range, Direction::Forward)? {
            let ((_, count), r) = row?;
            let key = (user.clone(), r.room, r.kind);
            match ACCOUNT_DATA.get(&*self.db, &key)? {
                Some(data) if data.count == count => out.push((key.1, key.2, data)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Stores account data at a new stream position (which wakes the user's `/sync`).
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room: Option<&str>,
        kind: &str,
        json: Vec<u8>,
    ) -> Result<(), UserError> {
        let key = (user_id.to_owned(), room.unwrap_or_default().to_owned(), kind.to_owned());
        let mut batch = Batch::new();
        let count = self.stream.next_in(&mut batch);
        // Raised before the write is handed over: never below what a reader can see.
        self.account_data_newest.raise(key.0.clone(), count as i64);
        if let Some(old) = ACCOUNT_DATA.get(&*self.db, &key)? {
            ACCOUNT_DATA_BY_COUNT.delete(&mut batch, &(key.0.clone(), old.count));
        }
        let by_count = AccountDataRef { room: key.1.clone(), kind: key.2.clone() };
        ACCOUNT_DATA_BY_COUNT.put(&mut batch, &(key.0.clone(), count), &by_count)?;
        ACCOUNT_DATA.put(&mut batch, &key, &AccountData { count, json })?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Queues to-device messages: `(user, device or "*", content)` for local users.
    pub async fn send_to_device(
        &self,
        sender: &str,
        kind: &str,
        messages: Vec<(String, String, Vec<u8>)>,
    ) -> Result<(), UserError> {
        let mut batch = Batch::new();
        let count = self.stream.next_in(&mut batch);
        for (user, device, content) in messages {
            let targets: Vec<String> =
                if device == "*" { self.devices(&user)?.into_iter().map(|(d, _)| d).collect() } else { vec![device] };
            for device in targets {
                let message = ToDevice { sender: sender.to_owned(), kind: kind.to_owned(), content: content.clone() };
                // Raised before the write is handed over: never below what a reader can see.
                self.to_device_newest.raise((user.clone(), device.clone()), count as i64);
                TO_DEVICE.put(&mut batch, &(user.clone(), device, count), &message)?;
            }
        }
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Whether the device certainly has no stored to-device message: none was
    /// queued above the position its messages were acknowledged up to. Unknown
    /// (so `false`) until the device's first acknowledgement since start-up.
    fn no_to_device_stored(&self, key: &(String, String)) -> Result<bool, UserError> {
        let Some(acked) = self.to_device_acked.lock().get(key).copied() else { return Ok(false) };
        self.to_device_newest.none_after(key, acked as i64, || -> Result<i64, UserError> {
            Ok(match TO_DEVICE.prefix(&*self.db, &(key.0.clone(), key.1.clone()), Direction::Reverse)?.next() {
                Some(row) => row?.0.2 as i64,
                None => 0,
            })
        })
    }

    /// Deletes the device's messages at or below `upto` (the client has them).
    pub async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: u64) -> Result<(), UserError> {
        // A token from beyond this server's position (another database's) must not
        // mark messages not yet queued as acknowledged.
        let upto = upto.min(self.stream.current());
        let key = (user_id.to_owned(), device_id.to_owned());
        if !self.no_to_device_stored(&key)? {
            let mut batch = Batch::new();
            let range = (key.0.clone(), key.1.clone(), 0)..=(key.0.clone(), key.1.clone(), upto);
            for row in TO_DEVICE.range(&*self.db, range, Direction::Forward)? {
                TO_DEVICE.delete(&mut batch, &row?.0);
            }
            if !batch.is_empty() {
                self.db.commit(batch).await?;
            }
        }
        // Every message at or below `upto` is gone now.
        let mut acked = self.to_device_acked.lock();
        let at = acked.entry(key).or_insert(upto);
        *at = (*at).max(upto);
        Ok(())
    }

    /// The device's pending messages at or below `upto`, oldest first, at most `limit`.
    pub fn pending_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ToDevice)>, UserError> {
        if self.no_to_device_stored(&(user_id.to_owned(), device_id.to_owned()))? {
            return Ok(Vec::new());
        }
        let range = (user_id.to_owned(), device_id.to_owned(), 0)..=(user_id.to_owned(), device_id.to_owned(), upto);
        let mut out = Vec::new();
        for row in TO_DEVICE.range(&*self.db, range, Direction::Forward)?.take(limit) {
            let ((_, _, count), message) = row?;
            out.push((count, message));
        }
        Ok(out)
    }

    /// Stores a filter and returns its id.
    pub async fn put_filter(&self, user_id: &str, json: Vec<u8>) -> Result<u64, UserError> {
        let _guard = self.create_lock.lock().await;
        let next = match FILTERS.prefix(&*self.db, &(user_id.to_owned(),), Direction::Reverse)?.next() {
            Some(row) => row?.0.1 + 1,
            None => 0,
        };
        let mut batch = Batch::new();
        FILTERS.put(&mut batch, &(user_id.to_owned(), next), &Raw(json))?;
        self.db.commit(batch).await?;
        Ok(next)
    }

    /// A stored filter.
    pub fn filter(&self, user_id: &str, id: u64) -> Result<Option<Vec<u8>>, UserError> {
        Ok(FILTERS.get(&*self.db, &(user_id.to_owned(), id))?.map(|r| r.0))
    }

    /// The event id a transaction already produced.
    pub fn txn_event(&self, user_id: &str, device_id: &str, txn: &str) -> Result<Option<String>, UserError> {
        Ok(TXNS.get(&*self.db, &(user_id.to_owned(), device_id.to_owned(), txn.to_owned()))?)
    }

    /// Remembers the event a transaction produced.
    pub async fn set_txn_event(
        &self,
        user_id: &str,
        device_id: &str,
        txn: &str,
        event_id: &str,
    ) -> Result<(), UserError> {
        let mut batch = Batch::new();
        TXNS.put(&mut batch, &(user_id.to_owned(), device_id.to_owned(), txn.to_owned()), &event_id.to_owned())?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// A local user's profile (`None` for unknown users).
    pub fn profile(&self, user_id: &str) -> Result<Option<Profile>, UserError> {
        Ok(PROFILES.get(&*self.db, &user_id.to_owned())?)
    }

    /// Replaces a local user's profile.
    pub async fn set_profile(&self, user_id: &str, profile: &Profile) -> Result<(), UserError> {
        let mut batch = Batch::new();
        PROFILES.put(&mut batch, &user_id.to_owned(), profile)?;
        self.db.commit(batch).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use myelin_storage::{Batch, Db, StorageOptions, StreamCounter};
    use ruma::OwnedServerName;

    use super::*;

    /// The user service over `db`, with its own stream counter as a start would load it.
    fn service(db: &Arc<Db>) -> Users {
        let server: OwnedServerName = "x".try_into().unwrap();
        Users::new(db.clone(), server, StreamCounter::load(db, "stream").unwrap())
    }

    fn open(dir: &tempfile::TempDir) -> Arc<Db> {
        Db::open(dir.path(), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap()
    }

    #[test]
    fn account_data_of_an_older_database_is_indexed_once_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        // Rows as a database from before the index holds them.
        let mut batch = Batch::new();
        for (room, count) in [("", 4u64), ("!r:x", 6)] {
            let key = ("@a:x".to_owned(), room.to_owned(), "m.tag".to_owned());
            ACCOUNT_DATA.put(&mut batch, &key, &AccountData { count, json: b"{}".to_vec() }).unwrap();
        }
        db.commit_blocking(batch).unwrap();
        let users = service(&db);
        assert_eq!(users.index_existing_account_data().unwrap(), 2);
        assert_eq!(users.index_existing_account_data().unwrap(), 0, "indexed once");
        let since_5: Vec<String> =
            users.account_data_since("@a:x", Some(5)).unwrap().into_iter().map(|(room, _, _)| room).collect();
        assert_eq!(since_5, ["!r:x"]);
        assert_eq!(users.account_data_since("@a:x", None).unwrap().len(), 2);
        db.shutdown();
    }

    /// A remembered token stops working with every change that deletes it.
    #[tokio::test]
    async fn remembered_tokens_end_with_logout_reuse_password_change_and_deactivation() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let users = service(&db);
        let alice = UserId::parse("@alice:x").unwrap();
        let login = |device: &str| users.login(&alice, "pw-1", Some(device.to_owned()), None);
        let valid = |token: &str| users.session(token).unwrap().is_some();
        users.register(&alice, Some("pw-1"), false, None, None, true).await.unwrap();
        let (a, b, c) = (login("A").await.unwrap(), login("B").await.unwrap(), login("C").await.unwrap());
        for t in [&a, &b, &c] {
            assert!(valid(&t.access_token) && valid(&t.access_token), "read, then remembered");
        }
        users.logout(alice.as_str(), "A").await.unwrap();
        assert!(!valid(&a.access_token) && valid(&b.access_token));
        let b2 = login("B").await.unwrap();
        assert!(!valid(&b.access_token), "a reused device id replaces its token");
        assert!(valid(&b2.access_token));
        users.set_password(&alice, "pw-2", Some("C")).await.unwrap();
        assert!(!valid(&b2.access_token) && valid(&c.access_token), "other devices logged out");
        users.deactivate(&alice).await.unwrap();
        assert!(!valid(&c.access_token));
        db.shutdown();
    }

    /// To-device messages: delivered until acknowledged, never hidden by the
    /// "nothing stored" shortcut, also for a new message after an acknowledgement,
    /// after a restart, and after a token from beyond the server's position.
    #[tokio::test]
    async fn to_device_messages_are_pending_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let users = service(&db);
        let pending = |users: &Users| -> Vec<Vec<u8>> {
            users.pending_to_device("@a:x", "D", u64::MAX, 100).unwrap().into_iter().map(|(_, m)| m.content).collect()
        };
        let send = |body: &'static [u8]| {
            users.send_to_device("@b:x", "m.test", vec![("@a:x".into(), "D".into(), body.to_vec())])
        };
        assert!(pending(&users).is_empty());
        users.ack_to_device("@a:x", "D", 0).await.unwrap();
        send(b"one").await.unwrap();
        assert_eq!(pending(&users), [b"one".to_vec()]);
        let now = users.stream.current();
        users.ack_to_device("@a:x", "D", now).await.unwrap();
        assert!(pending(&users).is_empty(), "acknowledged messages are gone");
        send(b"two").await.unwrap();
        assert_eq!(pending(&users), [b"two".to_vec()], "a message after the acknowledgement");
        // A token far beyond the server's position acknowledges only what exists.
        users.ack_to_device("@a:x", "D", 1 << 40).await.unwrap();
        send(b"three").await.unwrap();
        assert_eq!(pending(&users), [b"three".to_vec()]);
        // A restart: no marks, the stored message is still delivered.
        let again = service(&db);
        assert_eq!(pending(&again), [b"three".to_vec()]);
        again.ack_to_device("@a:x", "D", again.stream.current()).await.unwrap();
        assert!(pending(&again).is_empty());
        db.shutdown();
    }

    /// An incremental read with nothing newer skips the index, yet never misses
    /// a later write, nor data stored before this `Users` (a restart) existed.
    #[tokio::test]
    async fn account_data_since_sees_every_write_after_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let users = service(&db);
        let rooms = |users: &Users, since: u64| -> Vec<String> {
            users.account_data_since("@a:x", Some(since)).unwrap().into_iter().map(|(room, _, _)| room).collect()
        };
        assert!(rooms(&users, 0).is_empty());
        users.set_account_data("@a:x", Some("!r:x"), "m.tag", b"{}".to_vec()).await.unwrap();
        let first = users.account_data("@a:x", Some("!r:x"), "m.tag").unwrap();
        assert!(first.is_some());
        let after_first = users.all_account_data("@a:x").unwrap()[0].2.count;
        assert_eq!(rooms(&users, after_first - 1), ["!r:x"]);
        assert!(rooms(&users, after_first).is_empty(), "nothing newer than the token");
        users.set_account_data("@a:x", None, "m.direct", b"{}".to_vec()).await.unwrap();
        assert_eq!(rooms(&users, after_first), [""], "a write after the token is seen");
        // A new service over the same data (as after a restart) has no marks yet.
        let again = service(&db);
        assert_eq!(rooms(&again, after_first), [""]);
        assert!(rooms(&again, after_first + 1).is_empty());
        db.shutdown();
    }
}
