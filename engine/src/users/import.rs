//! Accounts brought over from another homeserver (`myelin import synapse`):
//! written as they were there (password hash, creation time, flags, profile,
//! devices with their access tokens), so users log in with the password they
//! had and clients stay logged in with the token they hold.
//!
//! Idempotent: an account that already exists here is left as it is (and
//! counted as such), and a device already here keeps its token, so running an
//! import again continues where it stopped.

use myelin_storage::Batch;
use ruma::UserId;

use super::{ACCOUNTS, Account, DEVICES, Device, GUESTS, PROFILES, Profile, Session, TOKENS, UserError, Users};

/// One account as the other server kept it.
#[derive(Debug, Clone)]
pub struct ImportedAccount {
    /// A local user id.
    pub user_id: ruma::OwnedUserId,
    /// The other server's hash (bcrypt for Synapse); empty: no password login.
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Server admin.
    pub admin: bool,
    /// Deactivated.
    pub deactivated: bool,
    /// A guest account.
    pub guest: bool,
    /// Profile.
    pub displayname: Option<String>,
    /// Profile.
    pub avatar_url: Option<String>,
}

/// One device with the access token a client holds for it.
#[derive(Debug, Clone)]
pub struct ImportedDevice {
    /// Its user (imported before).
    pub user_id: String,
    /// Its id.
    pub device_id: String,
    /// Its name.
    pub display_name: Option<String>,
    /// Last seen, ms since the epoch.
    pub last_seen_ts: u64,
    /// The token; `None`: a device with no session (a fresh unusable token is kept).
    pub token: Option<String>,
}

/// What an import batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCount {
    /// Written now.
    pub imported: usize,
    /// Already here (an earlier run), left alone.
    pub present: usize,
}

impl Users {
    /// Writes accounts that do not exist here yet, in one batch.
    pub async fn import_accounts(&self, accounts: &[ImportedAccount]) -> Result<ImportCount, UserError> {
        let _guard = self.create_lock.lock().await;
        let mut batch = Batch::new();
        let mut count = ImportCount::default();
        for a in accounts {
            if self.exists(&a.user_id)? {
                count.present += 1;
                continue;
            }
            let account = Account {
                password_hash: a.password_hash.clone(),
                created_ms: a.created_ms,
                admin: a.admin,
                deactivated: a.deactivated,
            };
            let id = a.user_id.to_string();
            ACCOUNTS.put(&mut batch, &id, &account)?;
            let profile = Profile { displayname: a.displayname.clone(), avatar_url: a.avatar_url.clone() };
            PROFILES.put(&mut batch, &id, &profile)?;
            if a.guest {
                GUESTS.put(&mut batch, &id, &a.created_ms)?;
                self.any_guests.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            count.imported += 1;
        }
        self.db.commit(batch).await?;
        Ok(count)
    }

    /// Writes devices (and their tokens) that do not exist here yet, in one batch.
    pub async fn import_devices(&self, devices: &[ImportedDevice]) -> Result<ImportCount, UserError> {
        let mut batch = Batch::new();
        let mut count = ImportCount::default();
        for d in devices {
            let key = (d.user_id.clone(), d.device_id.clone());
            let owner_here = match UserId::parse(d.user_id.as_str()) {
                Ok(u) => self.exists(&u)?,
                Err(_) => false,
            };
            if !owner_here || DEVICES.get(&*self.db, &key)?.is_some() {
                count.present += 1;
                continue;
            }
            let token = match &d.token {
                Some(t) if TOKENS.get(&*self.db, t)?.is_none() => t.clone(),
                // A token this server already uses for someone else is not taken twice.
                _ => super::devices::random_token(32)?,
            };
            DEVICES.put(
                &mut batch,
                &key,
                &Device { display_name: d.display_name.clone(), last_seen_ts: d.last_seen_ts, token: token.clone() },
            )?;
            TOKENS.put(&mut batch, &token, &Session { user_id: d.user_id.clone(), device_id: d.device_id.clone() })?;
            count.imported += 1;
        }
        self.db.commit(batch).await?;
        Ok(count)
    }
}
