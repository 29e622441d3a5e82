//! Client authentication: access tokens from the `Authorization: Bearer`
//! header or the deprecated `access_token` query parameter (Client-Server API
//! §"Using access tokens"). Missing → 401 `M_MISSING_TOKEN`; unknown or
//! revoked → 401 `M_UNKNOWN_TOKEN`.

use http::{StatusCode, header};
use ruma::{OwnedUserId, UserId};

use crate::{
    error::ApiError,
    router::{Ctx, Req},
};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device of the token.
    pub device_id: String,
    /// The token itself.
    pub token: String,
}

/// A decoded query parameter.
pub fn query_param(req: &Req, name: &str) -> Option<String> {
    let query = req.parts.uri.query()?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_component(k).as_deref() == Some(name) {
            return decode_component(v);
        }
    }
    None
}

/// Every value of the query parameter `name`, decoded (`?v=a&v=b` → `["a", "b"]`).
pub fn query_values(req: &Req, name: &str) -> Vec<String> {
    let query = req.parts.uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name).map(|(_, v)| v.into_owned()).collect()
}

fn decode_component(s: &str) -> Option<String> {
    crate::http_util::percent_decode(&s.replace('+', " "))
}

fn access_token(req: &Req) -> Option<String> {
    if let Some(value) = req.parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    query_param(req, "access_token")
}

/// Requires a valid access token.
pub fn require_user(cx: &Ctx, req: &Req) -> Result<Authed, ApiError> {
    let token = access_token(req)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "missing access token"))?;
    let session =
        cx.engine.users.session(&token)?.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "unknown or revoked access token")
        })?;
    let user_id = UserId::parse(session.user_id.as_str()).map_err(|e| ApiError::unknown(e.to_string()))?;
    Ok(Authed { user_id, device_id: session.device_id, token })
}

/// The path parameter `name` as a user id that must be the caller.
pub fn require_self(authed: &Authed, req: &Req, name: &str) -> Result<(), ApiError> {
    if req.param(name)? != authed.user_id.as_str() {
        return Err(ApiError::forbidden("you can only access your own data"));
    }
    Ok(())
}
