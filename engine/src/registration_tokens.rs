//! Registration tokens an admin creates (Client-Server API §"Token-authenticated
//! registration", Synapse admin API §"Registration Tokens").
//!
//! The spec: "Homeservers may allow registration only for users who have a
//! registration token … the client sends the token in the
//! `m.login.registration_token` stage." A token may be limited in uses
//! (`uses_allowed`) and in time (`expiry_time`); Synapse counts a use as
//! `pending` while a registration holds it and `completed` once the account
//! exists, and a token is valid while `pending + completed < uses_allowed`
//! and it has not expired. Here a registration reserves a use
//! ([`RegistrationTokens::reserve`]) before the account is made and then
//! completes or releases it, under one lock: two registrations racing for a
//! token's last use cannot both have it.

use std::sync::Arc;

use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::{EngineError, util::now_ms};

/// Longest token, and the characters a token may hold (Synapse's rules).
pub const MAX_TOKEN_CHARS: usize = 64;
/// Most tokens kept: creation past it is refused.
pub const MAX_TOKENS: usize = 10_000;

const TOKENS: Table<String, TokenInfo> = Table::new(&catalog::TOKEN_REGISTRATIONTOKEN);

/// One token's limits and use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// How many registrations it may make; `None`: unlimited.
    pub uses_allowed: Option<u64>,
    /// Registrations holding it now.
    pub pending: u64,
    /// Registrations it made.
    pub completed: u64,
    /// Not valid from this time on (ms since the epoch); `None`: never expires.
    pub expiry_time: Option<u64>,
}
impl Stored for TokenInfo {}

impl TokenInfo {
    /// Whether a registration may use it now.
    pub fn valid(&self, now: u64) -> bool {
        self.expiry_time.is_none_or(|t| t > now)
            && self.uses_allowed.is_none_or(|u| self.pending.saturating_add(self.completed) < u)
    }
}

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not one of ours.
    #[error("registration token not found")]
    NotFound,
    /// Creating a token that exists.
    #[error("Token already exists")]
    Exists,
    /// Too many tokens.
    #[error("too many registration tokens (at most {MAX_TOKENS})")]
    TooMany,
}

/// A token a registration holds: [`RegistrationTokens::complete`] or
/// [`RegistrationTokens::release`] it.
#[derive(Debug)]
#[must_use]
pub struct Reserved(String);

/// The admin-created registration tokens.
pub struct RegistrationTokens {
    db: Arc<Db>,
    lock: tokio::sync::Mutex<()>,
}

/// Whether `token` is made of what Synapse allows: 1 to 64 of `[A-Za-z0-9._~-]`.
pub fn well_formed(token: &str) -> bool {
    (1..=MAX_TOKEN_CHARS).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

impl RegistrationTokens {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db, lock: tokio::sync::Mutex::new(()) }
    }

    /// Whether any token exists (registration by token is then possible).
    pub fn any(&self) -> Result<bool, EngineError> {
        Ok(TOKENS.iter(&*self.db, Direction::Forward)?.next().transpose()?.is_some())
    }

    /// One token.
    pub fn get(&self, token: &str) -> Result<Option<TokenInfo>, EngineError> {
        Ok(TOKENS.get(&*self.db, &token.to_owned())?)
    }

    /// Every token (at most [`MAX_TOKENS`]), by name; with `valid`, only those that are or are not valid now.
    pub fn list(&self, valid: Option<bool>) -> Result<Vec<(String, TokenInfo)>, EngineError> {
        let now = now_ms();
        let mut out = Vec::new();
        for row in TOKENS.iter(&*self.db, Direction::Forward)?.take(MAX_TOKENS) {
            let (token, info) = row?;
            if valid.is_none_or(|v| info.valid(now) == v) {
                out.push((token, info));
            }
        }
        Ok(out)
    }

    /// Creates `token`.
    pub async fn create(
        &self,
        token: &str,
        uses_allowed: Option<u64>,
        expiry_time: Option<u64>,
    ) -> Result<Result<TokenInfo, TokenError>, EngineError> {
        let _guard = self.lock.lock().await;
        if self.get(token)?.is_some() {
            return Ok(Err(TokenError::Exists));
        }
        if TOKENS.iter(&*self.db, Direction::Forward)?.take(MAX_TOKENS).count() >= MAX_TOKENS {
            return Ok(Err(TokenError::TooMany));
        }
        let info = TokenInfo { uses_allowed, pending: 0, completed: 0, expiry_time };
        self.put(token, &info).await?;
        Ok(Ok(info))
    }

    /// Changes a token's limits (`Some(None)`: no limit; `None`: unchanged).
    pub async fn update(
        &self,
        token: &str,
        uses_allowed: Option<Option<u64>>,
        expiry_time: Option<Option<u64>>,
    ) -> Result<Result<TokenInfo, TokenError>, EngineError> {
        let _guard = self.lock.lock().await;
        let Some(mut info) = self.get(token)? else { return Ok(Err(TokenError::NotFound)) };
        if let Some(u) = uses_allowed {
            info.uses_allowed = u;
        }
        if let Some(e) = expiry_time {
            info.expiry_time = e;
        }
        self.put(token, &info).await?;
        Ok(Ok(info))
    }

    /// Deletes a token; whether it existed.
    pub async fn delete(&self, token: &str) -> Result<bool, EngineError> {
        let _guard = self.lock.lock().await;
        if self.get(token)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        TOKENS.delete(&mut batch, &token.to_owned());
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Takes one use of `token` for a registration, if it is valid now.
    pub async fn reserve(&self, token: &str) -> Result<Option<Reserved>, EngineError> {
        let _guard = self.lock.lock().await;
        let Some(mut info) = self.get(token)? else { return Ok(None) };
        if !info.valid(now_ms()) {
            return Ok(None);
        }
        info.pending += 1;
        self.put(token, &info).await?;
        Ok(Some(Reserved(token.to_owned())))
    }

    /// The registration that reserved it made its account.
    pub async fn complete(&self, reserved: Reserved) -> Result<(), EngineError> {
        self.settle(reserved, true).await
    }

    /// The registration that reserved it failed: the use is free again.
    pub async fn release(&self, reserved: Reserved) -> Result<(), EngineError> {
        self.settle(reserved, false).await
    }

    async fn settle(&self, Reserved(token): Reserved, completed: bool) -> Result<(), EngineError> {
        let _guard = self.lock.lock().await;
        // Deleted meanwhile: nothing to count.
        let Some(mut info) = self.get(&token)? else { return Ok(()) };
        info.pending = info.pending.saturating_sub(1);
        if completed {
            info.completed += 1;
        }
        self.put(&token, &info).await
    }

    async fn put(&self, token: &str, info: &TokenInfo) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        TOKENS.put(&mut batch, &token.to_owned(), info)?;
        self.db.commit(batch).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_is_used_up_once_and_racing_registrations_get_its_last_use_once() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(RegistrationTokens::new(Db::open(dir.path(), &Default::default()).unwrap()));
        assert!(!tokens.any().unwrap());
        tokens.create("abc", Some(2), None).await.unwrap().unwrap();
        assert_eq!(tokens.create("abc", None, None).await.unwrap(), Err(TokenError::Exists));
        let first = tokens.reserve("abc").await.unwrap().expect("valid");
        tokens.release(first).await.unwrap();
        let first = tokens.reserve("abc").await.unwrap().expect("a released use is free again");
        tokens.complete(first).await.unwrap();
        // Eight registrations race for the last use.
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let tokens = tokens.clone();
                tokio::spawn(async move { tokens.reserve("abc").await.unwrap() })
            })
            .collect();
        let mut won = Vec::new();
        for r in racers {
            if let Some(reserved) = r.await.unwrap() {
                won.push(reserved);
            }
        }
        assert_eq!(won.len(), 1, "one registration gets the last use");
        for r in won {
            tokens.complete(r).await.unwrap();
        }
        let info = tokens.get("abc").unwrap().unwrap();
        assert_eq!((info.pending, info.completed, info.valid(now_ms())), (0, 2, false));
        assert_eq!(tokens.list(Some(false)).unwrap().len(), 1);
        assert!(tokens.list(Some(true)).unwrap().is_empty());
        tokens.update("abc", Some(None), None).await.unwrap().unwrap();
        assert!(tokens.get("abc").unwrap().unwrap().valid(now_ms()), "unlimited again");
        tokens.update("abc", None, Some(Some(1))).await.unwrap().unwrap();
        assert!(tokens.reserve("abc").await.unwrap().is_none(), "expired");
        assert!(tokens.delete("abc").await.unwrap());
        assert_eq!(tokens.update("abc", None, None).await.unwrap(), Err(TokenError::NotFound));
    }

    #[test]
    fn tokens_hold_only_what_synapse_allows() {
        assert!(well_formed("abc.DEF_~-9"));
        for bad in ["", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }
}
