//! Accounts and sessions.
//!
//! Client-Server API §"Account registration" (`POST /register`, user-interactive
//! auth with `m.login.dummy` or `m.login.registration_token`,
//! `GET /register/available`), §"Login" (`GET`/`POST /login`,
//! `m.login.password` with `m.id.user`, `m.login.token`), §"POST
//! /_matrix/client/v1/login/get_token", `/logout`, `/logout/all`,
//! `/account/whoami`, `/account/password`, `/account/deactivate`. Devices,
//! capabilities and 3PIDs are in `devices.rs`.
//!
//! Here: the user-interactive auth and identifier handling the endpoints share
//! (and `devices.rs` and `e2ee.rs` use); the endpoints are in `registration.rs`,
//! `session.rs` and `manage.rs`.

use http::StatusCode;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, http_util::json_response, router::Ctx};

mod manage;
mod registration;
mod session;

pub(crate) use manage::{DeactivateBody, PasswordBody};
pub use manage::{change_password, deactivate};
pub(crate) use registration::RegisterBody;
pub use registration::{register, register_available, token_validity};
pub(crate) use session::LoginBody;
pub use session::{get_login_token, login, login_flows, logout, logout_all, whoami};

/// User-interactive auth (§"Authentication types"): the stage and its fields.
#[derive(Deserialize, Default)]
pub(crate) struct AuthData {
    #[serde(rename = "type")]
    kind: Option<String>,
    session: Option<String>,
    /// `m.login.registration_token`.
    token: Option<String>,
    /// `m.login.password`.
    password: Option<String>,
    identifier: Option<Identifier>,
    /// `m.login.password` before identifiers (deprecated).
    user: Option<String>,
}

/// A user identifier (§"Identifier types"); only `m.id.user` is supported.
#[derive(Deserialize, Default)]
struct Identifier {
    #[serde(rename = "type")]
    kind: Option<String>,
    user: Option<String>,
}

/// A new session: the answer to `/register` and `/login`.
#[derive(Serialize)]
struct LoginResponse<'a> {
    user_id: &'a UserId,
    access_token: &'a str,
    device_id: &'a str,
    home_server: &'a str,
}

impl<'a> LoginResponse<'a> {
    fn new(cx: &'a Ctx, login: &'a myelin_engine::users::NewLogin) -> Self {
        Self {
            user_id: &login.user_id,
            access_token: &login.access_token,
            device_id: &login.device_id,
            home_server: cx.engine.server_name.as_str(),
        }
    }
}

fn random_session() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{t:x}{:x}", N.fetch_add(1, Ordering::Relaxed))
}

/// One way through user-interactive auth: its stages in order.
#[derive(Serialize)]
struct Flow<'a> {
    stages: [&'a str; 1],
}

/// The 401 of user-interactive auth: what to do next, and why the last try failed.
#[derive(Serialize)]
struct UiaChallenge<'a> {
    flows: [Flow<'a>; 1],
    params: crate::http_util::Empty,
    session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errcode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// 401 with the flows a user-interactive auth endpoint accepts.
fn uia_required(stage: &str, session: Option<String>, error: Option<(&str, &str)>) -> crate::http_util::Resp {
    let body = UiaChallenge {
        flows: [Flow { stages: [stage] }],
        params: crate::http_util::Empty {},
        session: session.unwrap_or_else(random_session),
        errcode: error.map(|(code, _)| code),
        error: error.map(|(_, msg)| msg),
    };
    json_response(StatusCode::UNAUTHORIZED, &body)
}

fn user_from_identifier(
    cx: &Ctx,
    identifier: Option<&Identifier>,
    legacy: Option<&str>,
) -> Result<OwnedUserId, ApiError> {
    let name = match identifier {
        Some(id) if id.kind.as_deref() == Some("m.id.user") => id.user.as_deref(),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "only m.id.user identifiers are supported",
            ));
        }
        None => legacy,
    }
    .ok_or_else(|| ApiError::missing_param("identifier.user is required"))?;
    if name.starts_with('@') {
        let id = UserId::parse(name).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        if id.server_name() != cx.engine.server_name {
            return Err(ApiError::forbidden("invalid username or password"));
        }
        return Ok(id);
    }
    cx.engine.users.user_id_for(&name.to_lowercase()).map_err(|_| ApiError::forbidden("invalid username or password"))
}

/// Checks `m.login.password` user-interactive auth for the caller; `Err(resp)` is the 401 to send.
pub(crate) async fn password_uia(
    cx: &Ctx,
    user: &UserId,
    auth: Option<AuthData>,
) -> Result<Option<crate::http_util::Resp>, ApiError> {
    let Some(auth) = auth else { return Ok(Some(uia_required("m.login.password", None, None))) };
    if auth.kind.as_deref() != Some("m.login.password") {
        return Ok(Some(uia_required("m.login.password", auth.session, None)));
    }
    let named = user_from_identifier(cx, auth.identifier.as_ref(), auth.user.as_deref()).ok();
    cx.limiter.may_try_password(user.as_str())?;
    let ok = named.as_deref() == Some(user)
        && match auth.password.as_deref() {
            Some(p) => cx.engine.users.password_ok(user, p).await?,
            None => false,
        };
    if !ok && auth.password.is_some() {
        cx.limiter.wrong_password(user.as_str());
    }
    if ok {
        Ok(None)
    } else {
        Ok(Some(uia_required("m.login.password", auth.session, Some(("M_FORBIDDEN", "invalid password")))))
    }
}

/// `DELETE /devices/{deviceId}` and `POST /login/get_token`: only the user-interactive auth.
#[derive(Deserialize)]
pub(super) struct AuthOnly {
    pub(super) auth: Option<AuthData>,
}
