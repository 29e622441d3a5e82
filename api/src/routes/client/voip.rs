//! `GET /voip/turnServer` (Client-Server API §"Voice over IP": "This API
//! provides credentials for the client to use when initiating calls"), from
//! `[voip]` in the configuration.
//!
//! With `turn_uris` and `turn_shared_secret`, credentials are minted the way
//! coturn's REST API (`use-auth-secret`) checks them: username
//! `<expiry unix seconds>:<user id>`, password the standard base64 of
//! HMAC-SHA1(secret, username). With `turn_uris`, no secret and both
//! `turn_username` and `turn_password`, those are handed out. Otherwise the
//! answer is `{}`, as Synapse's: Element then offers calls without TURN.

use base64::Engine as _;
use serde::Serialize;

use crate::{
    auth::require_user,
    error::ApiError,
    http_util::{ok_empty, ok_json},
    router::{Ctx, HandlerFuture, Req},
};

/// The answer when TURN is configured.
#[derive(Serialize)]
struct TurnServer {
    username: String,
    password: String,
    uris: Vec<String>,
    ttl: u64,
}

/// The coturn REST-API password for `username`.
fn turn_password(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

/// GET /_matrix/client/v3/voip/turnServer
pub fn turn_server(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let voip = &cx.engine.config.voip;
        if voip.turn_uris.is_empty() {
            return Ok(ok_empty());
        }
        let (username, password) = if !voip.turn_shared_secret.is_empty() {
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| ApiError::unknown("clock before 1970"))?
                .as_secs();
            let username = format!("{}:{}", now_s + voip.turn_ttl_s, me.user_id);
            let password = turn_password(&voip.turn_shared_secret, &username);
            (username, password)
        } else if !voip.turn_username.is_empty() && !voip.turn_password.is_empty() {
            (voip.turn_username.clone(), voip.turn_password.clone())
        } else {
            return Ok(ok_empty());
        };
        Ok(ok_json(&TurnServer { username, password, uris: voip.turn_uris.clone(), ttl: voip.turn_ttl_s }))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn turn_password_is_base64_hmac_sha1() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let p = super::turn_password("Jefe", "what do ya want for nothing?");
        assert_eq!(p, "7/zfauXrL6LSdBbV8YTfnCWafHk=");
    }
}
