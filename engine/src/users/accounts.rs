//! Accounts: user ids, registration, login, passwords and deactivation, with the
//! few threads that do all Argon2 hashing (a bounded queue in front of them).

use std::sync::Arc;

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use myelin_storage::{Batch, Direction};
use ring::rand::SecureRandom;
use ruma::{OwnedUserId, UserId};

use super::{
    ACCOUNTS, Account, DEACTIVATING, DEVICES, Deactivating, ERASED, GUESTS, NewLogin, PROFILES, Profile, TOKENS,
    UserError, Users, now_ms,
};
use crate::EngineError;

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

fn password_matches(argon2: &Argon2<'static>, hash: &str, password: &str, synapse_pepper: &str) -> bool {
    // Accounts imported from Synapse keep its bcrypt hashes (`$2b$…`): they
    // still log in with the password they had. Synapse hashes the password
    // with its `password_config.pepper` appended.
    if hash.starts_with("$2") {
        return bcrypt::verify(format!("{password}{synapse_pepper}"), hash).unwrap_or(false);
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

type HashJob = Box<dyn FnOnce() + Send>;

/// A few long-lived threads (`limits.hash_threads`, 2 by default) do all
/// password hashing and checking. Argon2's working memory is then reused by
/// those threads; hashed on the blocking pool, every thread that ever hashed
/// kept its own allocator arena full of freed Argon2 blocks (measured: 400
/// registrations, 8 at a time, left the server at 1.5 GiB RSS).
///
/// Bounded: at most `threads + queue` jobs are taken at once (running or
/// waiting); one more is refused with [`UserError::Busy`] (429
/// `M_LIMIT_EXCEEDED`) and a `retry_after_ms` from the measured hashing time.
/// A job whose caller went away still runs to its end and frees its place then.
pub(super) struct HashPool {
    jobs: std::sync::mpsc::Sender<HashJob>,
    threads: usize,
    capacity: usize,
    /// Jobs taken and not yet finished (running or waiting).
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// A moving average of one job's time, in microseconds.
    average_us: Arc<std::sync::atomic::AtomicU64>,
}

impl HashPool {
    pub(super) fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
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
        Self {
            jobs,
            threads,
            capacity: threads + queue,
            pending: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            // Until measured: about what one hash takes on the project machine.
            average_us: Arc::new(std::sync::atomic::AtomicU64::new(30_000)),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, UserError> {
        use std::sync::atomic::Ordering;
        let taken =
            self.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1));
        let before = match taken {
            Ok(before) => before,
            Err(pending) => {
                metrics::counter!("myelin_password_hash_refused_total").increment(1);
                let per_job = self.average_us.load(Ordering::Relaxed);
                let wait_ms = (per_job * (pending as u64 + 1) / self.threads as u64 / 1000).clamp(50, 10_000);
                tracing::debug!(pending, wait_ms, "password hashing queue full; answered 429");
                return Err(UserError::Busy { retry_after_ms: wait_ms });
            }
        };
        metrics::gauge!("myelin_password_hash_pending").set((before + 1) as f64);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (pending, average_us) = (self.pending.clone(), self.average_us.clone());
        // Frees the place when the job is done or dropped unrun (even if it panics).
        let place = Place(pending);
        let job: HashJob = Box::new(move || {
            let _place = place;
            let started = std::time::Instant::now();
            let _ = tx.send(f());
            let took = started.elapsed().as_micros() as u64;
            let old = average_us.load(Ordering::Relaxed);
            average_us.store((old * 7 + took) / 8, Ordering::Relaxed);
        });
        if self.jobs.send(job).is_err() {
            return Err(UserError::Engine(EngineError::Keys("password hashing threads are gone".into())));
        }
        rx.await.map_err(|_| UserError::Engine(EngineError::Keys("password hashing thread failed".into())))
    }
}

/// One taken place in a [`HashPool`].
struct Place(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!("myelin_password_hash_pending").set(left as f64);
    }
}

/// Argon2id with 7 MiB and 5 passes: one of OWASP's equivalent parameter sets
/// (with 19 MiB / 2 passes), chosen for the smaller memory per concurrent hash.
/// Stored hashes carry their parameters, so older ones still verify.
pub(super) fn password_hasher() -> Argon2<'static> {
    match argon2::Params::new(7 * 1024, 5, 1, None) {
        Ok(params) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params),
        Err(_) => Argon2::default(),
    }
}

impl Users {
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
        put_new_account(&mut batch, user_id, hash, admin)?;
        let login =
            if inhibit_login { None } else { Some(self.new_device(&mut batch, user_id, device_id, device_name)?) };
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, "registered");
        Ok(login)
    }

    /// Registers a guest (Client-Server API §"Guest Access"): a numeric localpart,
    /// no password, and a device logged in.
    pub async fn register_guest(&self, device_name: Option<String>) -> Result<NewLogin, UserError> {
        let _guard = self.create_lock.lock().await;
        let mut bytes = [0u8; 8];
        let user_id = loop {
            ring::rand::SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| UserError::Engine(EngineError::Config("no randomness".into())))?;
            // Numeric like Synapse's guests; the range keeps them short but unguessable.
            let localpart = (u64::from_le_bytes(bytes) % 9_000_000_000_000 + 1_000_000_000_000).to_string();
            let user_id = self.user_id_for(&localpart)?;
            if !self.exists(&user_id)? {
                break user_id;
            }
        };
        let mut batch = Batch::new();
        put_new_account(&mut batch, &user_id, String::new(), false)?;
        GUESTS.put(&mut batch, &user_id.to_string(), &now_ms())?;
        let login = self.new_device(&mut batch, &user_id, None, device_name)?;
        self.any_guests.store(true, std::sync::atomic::Ordering::SeqCst);
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, "guest registered");
        Ok(login)
    }

    /// Whether this server may hold a guest account (false until the first is registered).
    pub fn may_have_guests(&self) -> bool {
        self.any_guests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `user_id` is a guest account.
    pub fn is_guest(&self, user_id: &str) -> Result<bool, UserError> {
        if !self.may_have_guests() {
            return Ok(false);
        }
        Ok(GUESTS.contains(&*self.db, &user_id.to_owned())?)
    }

    /// A guest becomes a full account with a password and keeps its id, rooms and
    /// data (Synapse's `guest_access_token` upgrade); logs in a new device.
    pub async fn upgrade_guest(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        device_id: Option<String>,
        device_name: Option<String>,
        inhibit_login: bool,
    ) -> Result<Option<NewLogin>, UserError> {
        let hash = match password {
            Some(p) => self.hash_off_runtime(p).await?,
            None => String::new(),
        };
        let _guard = self.create_lock.lock().await;
        if !self.is_guest(user_id.as_str())? {
            return Err(UserError::Forbidden("not a guest account".into()));
        }
        let mut account = self.account(user_id)?.ok_or_else(|| UserError::NotFound("no such user".into()))?;
        account.password_hash = hash;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, &user_id.to_string(), &account)?;
        GUESTS.delete(&mut batch, &user_id.to_string());
        let login =
            if inhibit_login { None } else { Some(self.new_device(&mut batch, user_id, device_id, device_name)?) };
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, "guest upgraded to a full account");
        Ok(login)
    }

    /// Hashes on the hashing threads: Argon2 is deliberately slow.
    async fn hash_off_runtime(&self, password: &str) -> Result<String, UserError> {
        let (argon2, password) = (self.argon2.clone(), password.to_owned());
        self.hashing.run(move || hash_password(&argon2, &password)).await?
    }

    async fn verify_off_runtime(&self, hash: &str, password: &str) -> Result<bool, UserError> {
        let (argon2, hash, password) = (self.argon2.clone(), hash.to_owned(), password.to_owned());
        let pepper = self.synapse_pepper.clone();
        self.hashing.run(move || password_matches(&argon2, &hash, &password, &pepper)).await
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

    /// A new device for an existing, active account without a password check:
    /// the caller has authenticated for the user otherwise (an appservice's
    /// `m.login.application_service`).
    pub async fn login_trusted(
        &self,
        user_id: &UserId,
        device_id: Option<String>,
        device_name: Option<String>,
    ) -> Result<NewLogin, UserError> {
        match self.account(user_id)? {
            Some(a) if !a.deactivated => {}
            _ => return Err(UserError::Forbidden("invalid username".into())),
        }
        let mut batch = Batch::new();
        let login = self.new_device(&mut batch, user_id, device_id, device_name)?;
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
    ///
    /// The account is marked as deactivating in the same write, with the
    /// devices it had: the caller finishes the deactivation (keys forgotten,
    /// rooms left) and then calls [`Users::deactivation_finished`]; after a
    /// crash in between, [`Users::unfinished_deactivations`] says what is left.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<Vec<String>, UserError> {
        let mut account = self.account(user_id)?.ok_or_else(|| UserError::NotFound("no such user".into()))?;
        account.deactivated = true;
        account.password_hash.clear();
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, &user_id.to_string(), &account)?;
        let mut devices = match DEACTIVATING.get(&*self.db, &user_id.to_string())? {
            Some(unfinished) => unfinished.devices,
            None => Vec::new(),
        };
        for row in DEVICES.prefix(&*self.db, &(user_id.to_string(),), Direction::Forward)? {
            let (key, device) = row?;
            TOKENS.delete(&mut batch, &device.token);
            DEVICES.delete(&mut batch, &key);
            devices.push(key.1);
        }
        devices.sort();
        devices.dedup();
        DEACTIVATING.put(&mut batch, &user_id.to_string(), &Deactivating { devices: devices.clone() })?;
        self.commit_token_deletions(batch).await?;
        tracing::info!(user_id = %user_id, "deactivated");
        Ok(devices)
    }

    /// Deactivations whose rooms and keys are not all done yet: user and devices.
    pub fn unfinished_deactivations(&self) -> Result<Vec<(OwnedUserId, Vec<String>)>, UserError> {
        let mut out = Vec::new();
        for row in DEACTIVATING.iter(&*self.db, Direction::Forward)? {
            let (user, unfinished) = row?;
            match UserId::parse(&user) {
                Ok(user) => out.push((user, unfinished.devices)),
                Err(e) => tracing::warn!(user_id = %user, error = %e, "unparsable unfinished deactivation skipped"),
            }
        }
        Ok(out)
    }

    /// Marks a deactivation as done (its keys forgotten, its rooms left).
    pub async fn deactivation_finished(&self, user_id: &UserId) -> Result<(), UserError> {
        let mut batch = Batch::new();
        DEACTIVATING.delete(&mut batch, &user_id.to_string());
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Makes an account a server administrator or not.
    pub async fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<(), UserError> {
        let _guard = self.create_lock.lock().await;
        let mut account = self.account(user_id)?.ok_or_else(|| UserError::NotFound("no such user".into()))?;
        if account.admin == admin {
            return Ok(());
        }
        account.admin = admin;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, &user_id.to_string(), &account)?;
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, admin, "server admin flag changed");
        Ok(())
    }

    /// Whether a local account is a server administrator (and still active).
    pub fn is_admin(&self, user_id: &UserId) -> Result<bool, UserError> {
        Ok(self.account(user_id)?.is_some_and(|a| a.admin && !a.deactivated))
    }

    /// Reactivates a deactivated account (Synapse's `deactivated: false`). It has
    /// no password until one is set, and the erased mark goes.
    pub async fn reactivate(&self, user_id: &UserId) -> Result<(), UserError> {
        let _guard = self.create_lock.lock().await;
        let mut account = self.account(user_id)?.ok_or_else(|| UserError::NotFound("no such user".into()))?;
        account.deactivated = false;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, &user_id.to_string(), &account)?;
        ERASED.delete(&mut batch, &user_id.to_string());
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, "reactivated");
        Ok(())
    }

    /// Erases a (deactivated) account's profile and marks it erased.
    pub async fn erase(&self, user_id: &UserId) -> Result<(), UserError> {
        let mut batch = Batch::new();
        PROFILES.put(&mut batch, &user_id.to_string(), &Profile::default())?;
        ERASED.put(&mut batch, &user_id.to_string(), &now_ms())?;
        self.db.commit(batch).await?;
        tracing::info!(user_id = %user_id, "erased");
        Ok(())
    }

    /// Whether the account was erased (see [`Users::erase`]).
    pub fn erased(&self, user_id: &UserId) -> Result<bool, UserError> {
        Ok(ERASED.contains(&*self.db, &user_id.to_string())?)
    }
}

/// The rows of a new account: the account itself and its first profile.
fn put_new_account(batch: &mut Batch, user_id: &UserId, password_hash: String, admin: bool) -> Result<(), UserError> {
    let account = Account { password_hash, created_ms: now_ms(), admin, deactivated: false };
    ACCOUNTS.put(batch, &user_id.to_string(), &account)?;
    // New users start with their localpart as display name, as other servers do.
    let profile = Profile { displayname: Some(user_id.localpart().to_owned()), avatar_url: None };
    PROFILES.put(batch, &user_id.to_string(), &profile)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_bcrypt_hashes_match_with_its_pepper_and_ours_without() {
        let argon2 = password_hasher();
        // What Synapse stores with `password_config.pepper: "pep"`: bcrypt over password + pepper.
        let peppered = bcrypt::hash("hunter2pep", 4).unwrap();
        assert!(password_matches(&argon2, &peppered, "hunter2", "pep"));
        assert!(!password_matches(&argon2, &peppered, "hunter2", ""), "without the pepper it must not match");
        assert!(!password_matches(&argon2, &peppered, "hunter3", "pep"));
        let plain = bcrypt::hash("hunter2", 4).unwrap();
        assert!(password_matches(&argon2, &plain, "hunter2", ""));
        // Our own Argon2id hashes never take the pepper.
        let ours = hash_password(&argon2, "hunter2").unwrap();
        assert!(password_matches(&argon2, &ours, "hunter2", "pep"));
    }
}
