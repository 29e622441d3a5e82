//! OpenID tokens for third parties (Client-Server API §"OpenID"; Server-Server
//! API §"OpenID").
//!
//! "`POST /_matrix/client/v3/user/{userId}/openid/request_token` — Gets an
//! OpenID token object that the requester may supply to another service to
//! verify their identity in Matrix. The generated token is only valid for
//! exchanging for user information from the federation API for OpenID."
//! The federation side, `GET /_matrix/federation/v1/openid/userinfo`,
//! "Exchanges an OpenID access token for information about the user who
//! generated the token"; it answers `{"sub": user_id}`.
//!
//! A token lives [`TOKEN_LIFETIME_MS`] (the `expires_in` of 3600 seconds) and
//! is stored in `openidtoken_user`. Its first 16 characters are its expiry in
//! hex, so the table is ordered by expiry and every issue removes the expired
//! tokens from the front in the same batch: the table holds only live tokens
//! plus those that expired since the last issue. An expired token is refused
//! whether or not it was removed yet. A token grants nothing on the client
//! API: it is not an access token.

use std::sync::Arc;

use base64::Engine as _;
use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::{EngineError, util::now_ms};

/// How long an OpenID token is valid.
pub const TOKEN_LIFETIME_MS: u64 = 3_600_000;
/// Expired tokens removed per issue at most (the rest go with later issues).
const PRUNE_PER_ISSUE: usize = 64;

const TOKENS: Table<String, OpenIdToken> = Table::new(&catalog::OPENIDTOKEN_USER);

/// A stored token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenIdToken {
    /// Whose it is.
    pub user_id: String,
    /// When it stops being valid, in ms since the epoch.
    pub expires_ms: u64,
}
impl Stored for OpenIdToken {}

/// A freshly issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The token.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// The OpenID tokens of one server.
pub struct OpenId {
    db: Arc<Db>,
}

impl OpenId {
    /// The tokens over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Issues a token for `user_id`.
    pub async fn issue(&self, user_id: &str) -> Result<Issued, EngineError> {
        let mut random = [0u8; 24];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| EngineError::Keys("no system randomness".into()))?;
        let now = now_ms();
        let expires_ms = now + TOKEN_LIFETIME_MS;
        let token = format!("{expires_ms:016x}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random));
        let mut batch = Batch::new();
        for row in TOKENS.iter(&*self.db, Direction::Forward)?.take(PRUNE_PER_ISSUE) {
            let (old, t) = row?;
            if t.expires_ms > now {
                break;
            }
            TOKENS.delete(&mut batch, &old);
        }
        TOKENS.put(&mut batch, &token, &OpenIdToken { user_id: user_id.to_owned(), expires_ms })?;
        self.db.commit(batch).await?;
        Ok(Issued { access_token: token, expires_in: TOKEN_LIFETIME_MS / 1000 })
    }

    /// The user a live token names; `None` for an unknown or expired token.
    pub fn user_of(&self, token: &str) -> Result<Option<String>, EngineError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        Ok(TOKENS.get(&*self.db, &token.to_owned())?.filter(|t| t.expires_ms > now_ms()).map(|t| t.user_id))
    }
}
