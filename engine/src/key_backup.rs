//! Server-side key backups (Client-Server API §"Server-side key backups").
//!
//! The spec: "Devices may upload encrypted copies of keys to the server. When
//! a device tries to read a message that it does not have keys for, it may
//! request the key from the server and decrypt it. Backups are per-user, and
//! users may replace backups with new backups." And on replacing a session:
//!
//! > When a client uploads a key for a session that the server already has a
//! > key for, the server will choose to either keep the existing key or
//! > replace it with the new key based on the key metadata as follows:
//! > - if the keys have different values for `is_verified`, then it will keep
//! >   the key that has `is_verified` set to `true`;
//! > - if they have the same values for `is_verified`, then it will keep the
//! >   key with a lower `first_message_index`;
//! > - and finally, is `is_verified` and `first_message_index` are equal, then
//! >   it will keep the key with a lower `forwarded_count`.
//!
//! (All three equal: the existing key is kept, as Synapse does.)
//!
//! Layout: `userversion_keybackup` holds one row per live backup version of a
//! user, with its algorithm, `auth_data` (JSON text, never interpreted: the
//! server cannot check it), an etag and the number of sessions;
//! `userversionroomsession_roomkey` holds the sessions. The newest live
//! version is the current one; only it accepts uploads
//! (`M_WRONG_ROOM_KEYS_VERSION` otherwise).
//!
//! Guarantees: version numbers come from one persisted counter and are never
//! reused, even after a version is deleted, so a client holding an old
//! version number can never write into a newer backup. The etag is raised in
//! the same batch as every change to the version's sessions (an upload that
//! keeps every existing key leaves it alone) and `count` always equals the
//! number of session rows written through this module. Writes are serialised
//! by one lock (a backup upload is rare next to messages). Deleting a version
//! removes its row first, in the same batch as the first sessions; the rest
//! of its sessions follow in batches of [`DELETE_CHUNK`]. A crash in between
//! leaves unreachable rows of a version that no longer exists (and is never
//! reused), not a half-visible backup.

use std::sync::Arc;

use myelin_storage::{Batch, Db, Direction, StorageError, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

/// Largest accepted `auth_data` or `session_data`, as JSON text.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Longest room id or session id accepted.
pub const MAX_ID_BYTES: usize = 255;
/// Longest algorithm name accepted.
pub const MAX_ALGORITHM_BYTES: usize = 255;
/// Sessions deleted per batch when a version or a range of keys goes.
pub const DELETE_CHUNK: usize = 10_000;

const VERSION_COUNTER: &str = "room_keys_version";

const VERSIONS: Table<(String, u64), BackupVersion> = Table::new(&catalog::USERVERSION_KEYBACKUP);
const SESSIONS: Table<(String, u64, String, String), SessionKey> = Table::new(&catalog::USERVERSIONROOMSESSION_ROOMKEY);

/// Why a key backup request failed; the API maps these to Matrix error codes.
#[derive(Debug, thiserror::Error)]
pub enum KeyBackupError {
    /// No such backup version, room or session: 404 `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// Keys were sent for a version that is not the current one: 403
    /// `M_WRONG_ROOM_KEYS_VERSION` with `current_version`.
    #[error("version {sent} is not the current backup version {current}")]
    WrongVersion {
        /// The version in the request.
        sent: String,
        /// The user's current version.
        current: String,
    },
    /// A field is unacceptable: 400 `M_INVALID_PARAM`.
    #[error("{0}")]
    Invalid(String),
    /// A field is over its size limit: 413 `M_TOO_LARGE`.
    #[error("{0}")]
    TooLarge(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One stored backup version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupVersion {
    /// `algorithm`, as the client gave it.
    pub algorithm: String,
    /// `auth_data`, as JSON text of an object.
    pub auth_data: String,
    /// Raised with every change to the sessions.
    pub etag: u64,
    /// Sessions stored.
    pub count: u64,
}
impl Stored for BackupVersion {}

/// A backup version as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version, as a string.
    pub version: String,
    /// What is stored.
    pub info: BackupVersion,
}

/// One backed-up session (`KeyBackupData`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionKey {
    /// "The index of the first message in the session that the key can decrypt."
    pub first_message_index: u64,
    /// "The number of times this key has been forwarded via key-sharing between devices."
    pub forwarded_count: u64,
    /// "Whether the device backing up the key verified the device that the key is from."
    pub is_verified: bool,
    /// `session_data`, as JSON text of an object (encrypted by the client).
    pub session_data: String,
}
impl Stored for SessionKey {}

impl SessionKey {
    /// Whether this key replaces `existing` under the spec's rule (see the module doc).
    pub fn replaces(&self, existing: &SessionKey) -> bool {
        if self.is_verified != existing.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != existing.first_message_index {
            return self.first_message_index < existing.first_message_index;
        }
        self.forwarded_count < existing.forwarded_count
    }
}

/// A session as uploaded or served: room, session id, key.
pub type RoomSession = (String, String, SessionKey);

/// Which keys a get or delete covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every session of the version.
    All,
    /// Every session of one room.
    Room(&'a str),
    /// One session.
    Session(&'a str, &'a str),
}

/// The key backups of one server's users.
pub struct KeyBackups {
    db: Arc<Db>,
    lock: tokio::sync::Mutex<()>,
}

/// Versions are decimal numbers; any other string names no backup.
fn parse_version(version: &str) -> Result<u64, KeyBackupError> {
    let not_found = || KeyBackupError::NotFound(format!("unknown backup version {version:?}"));
    if version.is_empty() || version.len() > 20 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    version.parse().map_err(|_| not_found())
}

/// Checks the sizes of a new or changed backup version.
fn check_version_fields(algorithm: &str, auth_data: &str) -> Result<(), KeyBackupError> {
    if algorithm.is_empty() {
        return Err(KeyBackupError::Invalid("algorithm: must not be empty".into()));
    }
    if algorithm.len() > MAX_ALGORITHM_BYTES {
        return Err(KeyBackupError::Invalid(format!("algorithm: longer than {MAX_ALGORITHM_BYTES} bytes")));
    }
    if auth_data.len() > MAX_JSON_BYTES {
        return Err(KeyBackupError::TooLarge(format!("auth_data: larger than {MAX_JSON_BYTES} bytes")));
    }
    Ok(())
}

/// Checks one uploaded session's ids and size.
fn check_session(room: &str, session: &str, key: &SessionKey) -> Result<(), KeyBackupError> {
    if !room.starts_with('!') || room.len() > MAX_ID_BYTES {
        return Err(KeyBackupError::Invalid(format!("room id {room:?}: not a room id")));
    }
    if session.is_empty() || session.len() > MAX_ID_BYTES {
        return Err(KeyBackupError::Invalid(format!("session id in {room}: must be 1 to {MAX_ID_BYTES} bytes")));
    }
    if key.session_data.len() > MAX_JSON_BYTES {
        return Err(KeyBackupError::TooLarge(format!(
            "session_data of {room} / {session}: larger than {MAX_JSON_BYTES} bytes"
        )));
    }
    Ok(())
}

impl KeyBackups {
    /// The backups over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db, lock: tokio::sync::Mutex::new(()) }
    }

    /// Creates a new backup version, which becomes the current one; returns its version.
    pub async fn create(&self, user: &str, algorithm: &str, auth_data: &str) -> Result<String, KeyBackupError> {
        check_version_fields(algorithm, auth_data)?;
        let _guard = self.lock.lock().await;
        let version = self.db.counter(VERSION_COUNTER)? + 1;
        let mut batch = Batch::new();
        batch.raise_counter(VERSION_COUNTER, version);
        let row = BackupVersion { algorithm: algorithm.to_owned(), auth_data: auth_data.to_owned(), etag: 0, count: 0 };
        VERSIONS.put(&mut batch, &(user.to_owned(), version), &row)?;
        self.db.commit(batch).await?;
        Ok(version.to_string())
    }

    /// Brings in a backup version of another server under its own number
    /// (`myelin import synapse`: clients keep the version they know), with its
    /// sessions; `Ok(false)` if the user has that version already. The
    /// sessions are written first, in chunks, and the version row last, so
    /// an import cut off halfway leaves no visible version and is redone by
    /// the next run. The counter is raised past `version` so that new
    /// versions never reuse it.
    pub async fn import_version(
        &self,
        user: &str,
        version: u64,
        algorithm: &str,
        auth_data: &str,
        etag: u64,
        sessions: Vec<RoomSession>,
    ) -> Result<bool, KeyBackupError> {
        check_version_fields(algorithm, auth_data)?;
        for (room, session, key) in &sessions {
            check_session(room, session, key)?;
        }
        let _guard = self.lock.lock().await;
        if VERSIONS.contains(&*self.db, &(user.to_owned(), version))? {
            return Ok(false);
        }
        let count = sessions.len() as u64;
        let mut batch = Batch::new();
        for (i, (room, session, key)) in sessions.into_iter().enumerate() {
            SESSIONS.put(&mut batch, &(user.to_owned(), version, room, session), &key)?;
            if (i + 1) % DELETE_CHUNK == 0 {
                self.db.commit(std::mem::take(&mut batch)).await?;
            }
        }
        batch.raise_counter(VERSION_COUNTER, version);
        let row = BackupVersion { algorithm: algorithm.to_owned(), auth_data: auth_data.to_owned(), etag, count };
        VERSIONS.put(&mut batch, &(user.to_owned(), version), &row)?;
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Raises the version counter to at least `version` (numbers another server used).
    pub async fn reserve_versions(&self, version: u64) -> Result<(), KeyBackupError> {
        let mut batch = Batch::new();
        batch.raise_counter(VERSION_COUNTER, version);
        self.db.commit(batch).await?;
        Ok(())
    }

    /// The user's current (newest) backup version, if any.
    pub fn current(&self, user: &str) -> Result<Option<VersionInfo>, KeyBackupError> {
        match VERSIONS.prefix(&*self.db, &(user.to_owned(),), Direction::Reverse)?.next() {
            Some(row) => {
                let ((_, version), info) = row?;
                Ok(Some(VersionInfo { version: version.to_string(), info }))
            }
            None => Ok(None),
        }
    }

    /// One backup version; `NotFound` when the user has no such live version.
    pub fn version(&self, user: &str, version: &str) -> Result<VersionInfo, KeyBackupError> {
        let n = parse_version(version)?;
        let info = VERSIONS
            .get(&*self.db, &(user.to_owned(), n))?
            .ok_or_else(|| KeyBackupError::NotFound(format!("unknown backup version {version:?}")))?;
        Ok(VersionInfo { version: n.to_string(), info })
    }

    /// Replaces a version's `auth_data`; the algorithm must stay the same.
    pub async fn update(
        &self,
        user: &str,
        version: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> Result<(), KeyBackupError> {
        check_version_fields(algorithm, auth_data)?;
        let _guard = self.lock.lock().await;
        let current = self.version(user, version)?;
        if current.info.algorithm != algorithm {
            return Err(KeyBackupError::Invalid(format!(
                "algorithm: does not match the backup's {:?}",
                current.info.algorithm
            )));
        }
        let n = parse_version(version)?;
        let mut batch = Batch::new();
        let row = BackupVersion { auth_data: auth_data.to_owned(), ..current.info };
        VERSIONS.put(&mut batch, &(user.to_owned(), n), &row)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Deletes a version and every session in it.
    pub async fn delete_version(&self, user: &str, version: &str) -> Result<(), KeyBackupError> {
        let _guard = self.lock.lock().await;
        let n = self.version(user, version).and_then(|_| parse_version(version))?;
        let mut batch = Batch::new();
        VERSIONS.delete(&mut batch, &(user.to_owned(), n));
        self.delete_sessions(batch, user, n, Scope::All).await?;
        Ok(())
    }

    /// Stores sessions in the current version under the replacement rule; returns the new etag and count.
    pub async fn put(&self, user: &str, version: &str, keys: Vec<RoomSession>) -> Result<(u64, u64), KeyBackupError> {
        for (room, session, key) in &keys {
            check_session(room, session, key)?;
        }
        let _guard = self.lock.lock().await;
        let Some(current) = self.current(user)? else {
            return Err(KeyBackupError::NotFound("no backup version exists".into()));
        };
        if current.version != version {
            // Synapse's reading too: any version but the current one is the 403, known or not.
            return Err(KeyBackupError::WrongVersion { sent: version.to_owned(), current: current.version });
        }
        let n = parse_version(&current.version)?;
        let mut info = current.info;
        let mut batch = Batch::new();
        let mut changed = false;
        // A request naming the same session twice: the rule applies between them too.
        let mut written: std::collections::HashMap<(String, String), SessionKey> = std::collections::HashMap::new();
        for (room, session, key) in keys {
            let id = (user.to_owned(), n, room, session);
            let existing = match written.get(&(id.2.clone(), id.3.clone())) {
                Some(k) => Some(k.clone()),
                None => SESSIONS.get(&*self.db, &id)?,
            };
            match existing {
                Some(old) if !key.replaces(&old) => continue,
                Some(_) => {}
                None => info.count += 1,
            }
            SESSIONS.put(&mut batch, &id, &key)?;
            written.insert((id.2, id.3), key);
            changed = true;
        }
        if changed {
            info.etag += 1;
            VERSIONS.put(&mut batch, &(user.to_owned(), n), &info)?;
            self.db.commit(batch).await?;
        }
        Ok((info.etag, info.count))
    }

    /// The sessions of a version in `scope`, ordered by room then session.
    ///
    /// `NotFound` when the version does not exist, or for [`Scope::Session`]
    /// when that session is not backed up; an empty room is an empty list.
    pub fn get(&self, user: &str, version: &str, scope: Scope<'_>) -> Result<Vec<RoomSession>, KeyBackupError> {
        let n = parse_version(version)?;
        let snap = self.db.snapshot();
        if !VERSIONS.contains(&snap, &(user.to_owned(), n))? {
            return Err(KeyBackupError::NotFound(format!("unknown backup version {version:?}")));
        }
        let mut out = Vec::new();
        match scope {
            Scope::Session(room, session) => {
                let key = SESSIONS
                    .get(&snap, &(user.to_owned(), n, room.to_owned(), session.to_owned()))?
                    .ok_or_else(|| KeyBackupError::NotFound(format!("no backed-up key for {room} / {session}")))?;
                out.push((room.to_owned(), session.to_owned(), key));
            }
            Scope::Room(room) => {
                for row in SESSIONS.prefix(&snap, &(user.to_owned(), n, room.to_owned()), Direction::Forward)? {
                    let ((_, _, room, session), key) = row?;
                    out.push((room, session, key));
                }
            }
            Scope::All => {
                for row in SESSIONS.prefix(&snap, &(user.to_owned(), n), Direction::Forward)? {
                    let ((_, _, room, session), key) = row?;
                    out.push((room, session, key));
                }
            }
        }
        Ok(out)
    }

    /// Deletes the sessions of a version in `scope`; returns the new etag and count.
    pub async fn delete(&self, user: &str, version: &str, scope: Scope<'_>) -> Result<(u64, u64), KeyBackupError> {
        let _guard = self.lock.lock().await;
        let current = self.version(user, version)?;
        let n = parse_version(version)?;
        let mut info = current.info;
        let removed = self.count_in(user, n, scope)?;
        if removed > 0 {
            info.count = info.count.saturating_sub(removed);
            info.etag += 1;
            let mut batch = Batch::new();
            VERSIONS.put(&mut batch, &(user.to_owned(), n), &info)?;
            self.delete_sessions(batch, user, n, scope).await?;
        }
        Ok((info.etag, info.count))
    }

    /// How many sessions `scope` holds in version `n`.
    fn count_in(&self, user: &str, n: u64, scope: Scope<'_>) -> Result<u64, KeyBackupError> {
        let mut count = 0;
        match scope {
            Scope::Session(room, session) => {
                if SESSIONS.contains(&*self.db, &(user.to_owned(), n, room.to_owned(), session.to_owned()))? {
                    count = 1;
                }
            }
            Scope::Room(room) => {
                for row in SESSIONS.prefix(&*self.db, &(user.to_owned(), n, room.to_owned()), Direction::Forward)? {
                    row?;
                    count += 1;
                }
            }
            Scope::All => {
                for row in SESSIONS.prefix(&*self.db, &(user.to_owned(), n), Direction::Forward)? {
                    row?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Commits `first` with the deletes of the first [`DELETE_CHUNK`] sessions in
    /// `scope`, then the rest in further batches. Called with the lock held.
    async fn delete_sessions(&self, first: Batch, user: &str, n: u64, scope: Scope<'_>) -> Result<(), KeyBackupError> {
        let mut ids = Vec::new();
        match scope {
            Scope::Session(room, session) => ids.push((user.to_owned(), n, room.to_owned(), session.to_owned())),
            Scope::Room(room) => {
                for row in SESSIONS.prefix(&*self.db, &(user.to_owned(), n, room.to_owned()), Direction::Forward)? {
                    ids.push(row?.0);
                }
            }
            Scope::All => {
                for row in SESSIONS.prefix(&*self.db, &(user.to_owned(), n), Direction::Forward)? {
                    ids.push(row?.0);
                }
            }
        }
        let mut batch = first;
        let mut chunks = ids.chunks(DELETE_CHUNK).peekable();
        if chunks.peek().is_none() {
            self.db.commit(batch).await?;
            return Ok(());
        }
        for chunk in chunks {
            for id in chunk {
                SESSIONS.delete(&mut batch, id);
            }
            self.db.commit(std::mem::take(&mut batch)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(is_verified: bool, first_message_index: u64, forwarded_count: u64) -> SessionKey {
        SessionKey { first_message_index, forwarded_count, is_verified, session_data: "{}".into() }
    }

    #[test]
    fn replacement_follows_the_spec_order() {
        // (new, existing, new replaces existing)
        let cases = [
            (key(true, 5, 5), key(false, 0, 0), true),   // verified wins over everything
            (key(false, 0, 0), key(true, 5, 5), false),  // unverified never replaces verified
            (key(false, 1, 9), key(false, 2, 0), true),  // lower first_message_index
            (key(false, 3, 0), key(false, 2, 9), false), // higher first_message_index
            (key(true, 2, 1), key(true, 2, 2), true),    // same index: lower forwarded_count
            (key(true, 2, 3), key(true, 2, 2), false),   // same index: higher forwarded_count
            (key(false, 2, 2), key(false, 2, 2), false), // all equal: keep the existing
        ];
        for (i, (new, old, want)) in cases.iter().enumerate() {
            assert_eq!(new.replaces(old), *want, "case {i}");
        }
    }

    #[test]
    fn versions_are_decimal_numbers() {
        assert_eq!(parse_version("17").ok(), Some(17));
        for bad in ["", "-1", "1.0", "abc", "99999999999999999999999", " 1"] {
            assert!(matches!(parse_version(bad), Err(KeyBackupError::NotFound(_))), "{bad:?}");
        }
    }
}
