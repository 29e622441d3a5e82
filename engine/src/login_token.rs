//! Login tokens: a logged-in device lets another device log in
//! (Client-Server API §"Login", `m.login.token`, and
//! §"POST /_matrix/client/v1/login/get_token").
//!
//! "Optional endpoint to generate a single-use, time-limited, `m.login.token`
//! token for an existing user." A token is good for one `POST /login` within
//! [`TOKEN_LIFETIME_MS`] (the two minutes the spec recommends) and is stored in
//! `logintoken_user`, so a restart in between does not void it. Expiry and
//! pruning: [`crate::short_tokens`].

use std::sync::Arc;

use myelin_storage::{Db, catalog};

use crate::short_tokens::ShortTokens;

/// How long a login token is valid ("2 minutes is recommended as a default").
pub const TOKEN_LIFETIME_MS: u64 = 120_000;

/// The login tokens of one server.
pub type LoginTokens = ShortTokens;

/// The login tokens over `db`.
pub fn tokens(db: Arc<Db>) -> LoginTokens {
    ShortTokens::new(db, &catalog::LOGINTOKEN_USER, TOKEN_LIFETIME_MS)
}
