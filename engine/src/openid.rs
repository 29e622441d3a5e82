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
//! is stored in `openidtoken_user` (expiry and pruning: [`crate::short_tokens`]).
//! A token grants nothing on the client API: it is not an access token.

use std::sync::Arc;

use myelin_storage::{Db, catalog};

use crate::short_tokens::ShortTokens;

/// How long an OpenID token is valid.
pub const TOKEN_LIFETIME_MS: u64 = 3_600_000;

/// The OpenID tokens of one server.
pub type OpenId = ShortTokens;

/// The OpenID tokens over `db`.
pub fn tokens(db: Arc<Db>) -> OpenId {
    ShortTokens::new(db, &catalog::OPENIDTOKEN_USER, TOKEN_LIFETIME_MS)
}
