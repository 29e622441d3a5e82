//! Client authentication: access tokens from the `Authorization: Bearer`
//! header or the deprecated `access_token` query parameter (Client-Server API
//! §"Using access tokens"). Missing → 401 `M_MISSING_TOKEN`; unknown or
//! revoked → 401 `M_UNKNOWN_TOKEN`.
//!
//! An appservice's `as_token` authenticates as its sender user or, with
//! `?user_id=`, as any registered user in its user namespaces (Application
//! Service API §"Identity assertion"): another user → 403 `M_FORBIDDEN`, as
//! Synapse answers. `?device_id=` (or MSC3202's `org.matrix.msc3202.device_id`)
//! picks one of that user's devices; an unknown one → 400 `M_UNKNOWN_DEVICE`.

use std::sync::Arc;

use http::{StatusCode, header};
use myelin_engine::appservice::Appservice;
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
    /// The appservice whose `as_token` this is.
    pub appservice: Option<Arc<Appservice>>,
    /// A guest account (Client-Server API §"Guest Access").
    pub is_guest: bool,
}

impl Authed {
    /// Whether the caller's event-creating requests are rate-limited: every user's
    /// are, an appservice's only when its registration sets `rate_limited: true`
    /// (and never its sender user's).
    pub fn rate_limited(&self) -> bool {
        match &self.appservice {
            None => true,
            Some(a) => a.rate_limited() && self.user_id != a.sender,
        }
    }
}

/// The first value of the query parameter `name`, decoded (`+` is a space,
/// invalid UTF-8 becomes U+FFFD, so a garbled value is refused by whoever
/// parses it rather than read as absent).
pub fn query_param(req: &Req, name: &str) -> Option<String> {
    let query = req.parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Every value of the query parameter `name`, decoded (`?v=a&v=b` → `["a", "b"]`).
pub fn query_values(req: &Req, name: &str) -> Vec<String> {
    let query = req.parts.uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name).map(|(_, v)| v.into_owned()).collect()
}

fn access_token(req: &Req) -> Option<String> {
    if let Some(value) = req.parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    query_param(req, "access_token")
}

/// Requires a valid access token (a user's or an appservice's).
pub fn require_user(cx: &Ctx, req: &Req) -> Result<Authed, ApiError> {
    let token = access_token(req)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "missing access token"))?;
    if let Some(appservice) = cx.engine.appservices.by_as_token(&token) {
        return appservice_user(cx, req, token, appservice);
    }
    let session =
        cx.engine.users.session(&token)?.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "unknown or revoked access token")
        })?;
    let user_id = UserId::parse(session.user_id.as_str()).map_err(|e| ApiError::unknown(e.to_string()))?;
    let is_guest = cx.engine.users.is_guest(user_id.as_str())?;
    if is_guest && !crate::guests::allowed(&req.parts.method, req.parts.uri.path()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "guests cannot use this endpoint",
        ));
    }
    Ok(Authed { user_id, device_id: session.device_id, token, appservice: None, is_guest })
}

/// The appservice `appservice` acting as its sender or as `?user_id=`.
fn appservice_user(cx: &Ctx, req: &Req, token: String, appservice: Arc<Appservice>) -> Result<Authed, ApiError> {
    cx.engine.appservices.mark_alive(appservice.id());
    let user_id = match query_param(req, "user_id") {
        None => appservice.sender.clone(),
        Some(raw) => {
            let user_id = UserId::parse(raw.as_str())
                .map_err(|e| ApiError::invalid_param(format!("user_id: `{raw}` is not a user id: {e}")))?;
            if user_id != appservice.sender {
                if user_id.server_name() != cx.engine.server_name || !appservice.owns_user(user_id.as_str()) {
                    return Err(ApiError::forbidden(format!(
                        "the appservice cannot masquerade as this user ({user_id})"
                    )));
                }
                if !cx.engine.users.exists(&user_id)? {
                    return Err(ApiError::forbidden(format!(
                        "the appservice has not registered this user ({user_id})"
                    )));
                }
            }
            user_id
        }
    };
    let device = query_param(req, "device_id").or_else(|| query_param(req, "org.matrix.msc3202.device_id"));
    let device_id = match device {
        None => String::new(),
        Some(d) => {
            if cx.engine.users.device(user_id.as_str(), &d)?.is_none() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "M_UNKNOWN_DEVICE",
                    format!("the appservice is using a device that does not exist ({d} for {user_id})"),
                ));
            }
            d
        }
    };
    Ok(Authed { user_id, device_id, token, appservice: Some(appservice), is_guest: false })
}

/// The `ts` query parameter of an appservice's request: the `origin_server_ts`
/// of bridged history (Application Service API §"Timestamp massaging").
/// Ignored for ordinary users.
pub fn appservice_ts(me: &Authed, req: &Req) -> Result<Option<u64>, ApiError> {
    if me.appservice.is_none() {
        return Ok(None);
    }
    match query_param(req, "ts") {
        None => Ok(None),
        Some(raw) => raw
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::invalid_param(format!("ts: `{raw}` is not a timestamp in milliseconds"))),
    }
}

/// The appservice making this request, if its token is an `as_token`.
pub fn appservice_of(cx: &Ctx, req: &Req) -> Option<Arc<Appservice>> {
    access_token(req).and_then(|t| cx.engine.appservices.by_as_token(&t))
}

/// The path parameter `name` as a user id that must be the caller.
pub fn require_self(authed: &Authed, req: &Req, name: &str) -> Result<(), ApiError> {
    if req.param(name)? != authed.user_id.as_str() {
        return Err(ApiError::forbidden("you can only access your own data"));
    }
    Ok(())
}
