//! Short-lived bearer tokens kept in one column family: OpenID tokens
//! ([`crate::openid`]) and login tokens ([`crate::login_token`]).
//!
//! A token's first 16 characters are its expiry in hex, so its table is
//! ordered by expiry and every issue removes the expired tokens from the front
//! in the same batch: a table holds only live tokens plus those that expired
//! since the last issue. An expired token is refused whether or not it was
//! removed yet.

use std::sync::Arc;

use base64::Engine as _;
use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog::Cf};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::{EngineError, util::now_ms};

/// Expired tokens removed per issue at most (the rest go with later issues).
const PRUNE_PER_ISSUE: usize = 64;
/// Longer strings are never tokens of ours (a 16-character expiry and 32 of randomness).
const MAX_TOKEN_LEN: usize = 128;

/// A stored token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShortToken {
    /// Whose it is.
    pub user_id: String,
    /// When it stops being valid, in ms since the epoch.
    pub expires_ms: u64,
}
impl Stored for ShortToken {}

/// A freshly issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The token.
    pub token: String,
    /// Milliseconds until it expires.
    pub expires_in_ms: u64,
}

/// The tokens of one kind, in one column family.
pub struct ShortTokens {
    db: Arc<Db>,
    table: Table<String, ShortToken>,
    lifetime_ms: u64,
    /// Serialises [`ShortTokens::take`], so a token is handed out once.
    take_lock: tokio::sync::Mutex<()>,
}

impl ShortTokens {
    /// The tokens stored in `cf`, each valid for `lifetime_ms`.
    pub fn new(db: Arc<Db>, cf: &'static Cf, lifetime_ms: u64) -> Self {
        Self { db, table: Table::new(cf), lifetime_ms, take_lock: tokio::sync::Mutex::new(()) }
    }

    /// Issues a token for `user_id`.
    pub async fn issue(&self, user_id: &str) -> Result<Issued, EngineError> {
        let mut random = [0u8; 24];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| EngineError::Keys("no system randomness".into()))?;
        let now = now_ms();
        let expires_ms = now + self.lifetime_ms;
        let token = format!("{expires_ms:016x}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random));
        let mut batch = Batch::new();
        for row in self.table.iter(&*self.db, Direction::Forward)?.take(PRUNE_PER_ISSUE) {
            let (old, t) = row?;
            if t.expires_ms > now {
                break;
            }
            self.table.delete(&mut batch, &old);
        }
        self.table.put(&mut batch, &token, &ShortToken { user_id: user_id.to_owned(), expires_ms })?;
        self.db.commit(batch).await?;
        Ok(Issued { token, expires_in_ms: self.lifetime_ms })
    }

    /// The user a live token names; `None` for an unknown or expired token.
    pub fn user_of(&self, token: &str) -> Result<Option<String>, EngineError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        Ok(self.table.get(&*self.db, &token.to_owned())?.filter(|t| t.expires_ms > now_ms()).map(|t| t.user_id))
    }

    /// The user a live token names, and the token deleted: it is good for one use.
    /// Two concurrent takes of one token give it to one of them.
    pub async fn take(&self, token: &str) -> Result<Option<String>, EngineError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        let _one_at_a_time = self.take_lock.lock().await;
        let key = token.to_owned();
        let Some(found) = self.table.get(&*self.db, &key)? else { return Ok(None) };
        let mut batch = Batch::new();
        self.table.delete(&mut batch, &key);
        self.db.commit(batch).await?;
        Ok((found.expires_ms > now_ms()).then_some(found.user_id))
    }
}

#[cfg(test)]
mod tests {
    use myelin_storage::{StorageOptions, catalog};

    use super::*;

    fn tokens(dir: &tempfile::TempDir, lifetime_ms: u64) -> ShortTokens {
        let db = Db::open(dir.path(), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap();
        ShortTokens::new(db, &catalog::LOGINTOKEN_USER, lifetime_ms)
    }

    #[tokio::test]
    async fn a_token_is_taken_once_and_an_expired_one_never_and_issues_prune_the_expired() {
        let dir = tempfile::tempdir().unwrap();
        let live = tokens(&dir, 60_000);
        let t = live.issue("@a:x").await.unwrap();
        assert_eq!(live.user_of(&t.token).unwrap().as_deref(), Some("@a:x"));
        assert_eq!(live.take(&t.token).await.unwrap().as_deref(), Some("@a:x"));
        assert_eq!(live.take(&t.token).await.unwrap(), None, "a second use");
        assert_eq!(live.user_of(&t.token).unwrap(), None);
        drop(live);

        let short = tokens(&dir, 1);
        let old: Vec<_> = futures_util::future::join_all((0..3).map(|_| short.issue("@b:x"))).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        for t in &old {
            let t = &t.as_ref().unwrap().token;
            assert_eq!(short.user_of(t).unwrap(), None, "expired");
        }
        let expired = old[0].as_ref().unwrap().token.clone();
        assert_eq!(short.take(&expired).await.unwrap(), None, "expired");
        // The next issue removes whatever expired rows are left.
        let fresh = short.issue("@b:x").await.unwrap();
        let rows: Vec<_> = short.table.iter(&*short.db, Direction::Forward).unwrap().map(|r| r.unwrap().0).collect();
        assert_eq!(rows, vec![fresh.token]);
    }
}
