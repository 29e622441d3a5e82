//! Registration: `POST /register` (open, token, guest, guest upgrade and
//! appservice), `GET /register/available` and registration token validity.

use http::StatusCode;
use ruma::UserId;
use serde::{Deserialize, Serialize};

use super::{AuthData, LoginResponse, random_session, uia_required};
use crate::{
    auth::query_param,
    error::ApiError,
    http_util::{ok_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// `POST /register`.
#[derive(Deserialize)]
pub(crate) struct RegisterBody {
    /// `m.login.application_service` for an appservice's users.
    #[serde(rename = "type")]
    kind: Option<String>,
    username: Option<String>,
    password: Option<String>,
    auth: Option<AuthData>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    /// A guest's access token: the guest becomes a full account (Synapse's upgrade).
    guest_access_token: Option<String>,
    /// Refresh tokens are not issued; the field is read so that its type is checked.
    #[serde(default, rename = "refresh_token")]
    _refresh_token: Option<bool>,
}

/// The answer to `POST /register` with `inhibit_login`.
#[derive(Serialize)]
struct RegisteredOnly<'a> {
    user_id: &'a UserId,
}

/// POST /_matrix/client/v3/register
pub fn register(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let guest = match query_param(&req, "kind").as_deref() {
            None | Some("user") => false,
            Some("guest") => true,
            // 400 M_UNRECOGNIZED, as Synapse answers an unknown kind.
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "M_UNRECOGNIZED",
                    format!("kind must be user or guest, not {other}"),
                ));
            }
        };
        let mut body: RegisterBody = parse_json_or_empty(&req.body)?;
        if guest {
            let config = &cx.engine.config.registration;
            if !(config.enabled && config.guests) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "M_GUEST_ACCESS_FORBIDDEN",
                    "guest access is disabled",
                ));
            }
            cx.limiter.register(req.peer_ip())?;
            let login = cx.engine.users.register_guest(body.initial_device_display_name).await?;
            return Ok(ok_json(&LoginResponse::new(&cx, &login)));
        }
        if let Some(guest_token) = body.guest_access_token.clone() {
            return upgrade_guest(&cx, &guest_token, body).await;
        }
        if let Some(appservice) = crate::auth::appservice_of(&cx, &req) {
            return register_for_appservice(&cx, &appservice, body).await;
        }
        let stage =
            registration_stage(&cx)?.ok_or_else(|| ApiError::forbidden("registration is disabled on this server"))?;
        let auth = body.auth.take().unwrap_or_default();
        // A use of an admin-created token, held while the account is made.
        let mut reserved = None;
        match auth.kind.as_deref() {
            Some(kind) if kind == stage => {
                if stage == "m.login.registration_token" {
                    let given = auth.token.as_deref().unwrap_or_default();
                    let configured = &cx.engine.config.registration.token;
                    if configured.is_empty() || given != configured.as_str() {
                        reserved = cx.engine.registration_tokens.reserve(given).await?;
                        if reserved.is_none() {
                            let refusal = Some(("M_FORBIDDEN", "invalid registration token"));
                            return Ok(uia_required(stage, auth.session, refusal));
                        }
                    }
                }
            }
            _ => return Ok(uia_required(stage, auth.session, None)),
        }
        let made = make_account(&cx, &req, body).await;
        if let Some(r) = reserved {
            match &made {
                Ok(_) => cx.engine.registration_tokens.complete(r).await?,
                Err(_) => cx.engine.registration_tokens.release(r).await?,
            }
        }
        made
    })
}

/// The one user-interactive stage registration asks for: `m.login.dummy` when
/// it is open, `m.login.registration_token` when a token is configured or an
/// admin created one (Synapse's `registration_requires_token`), `None` when
/// registration is closed.
fn registration_stage(cx: &Ctx) -> Result<Option<&'static str>, ApiError> {
    let config = &cx.engine.config.registration;
    Ok(if !config.token.is_empty() {
        Some("m.login.registration_token")
    } else if config.enabled {
        Some("m.login.dummy")
    } else if cx.engine.registration_tokens.any()? {
        Some("m.login.registration_token")
    } else {
        None
    })
}

/// GET /_matrix/client/v1/register/m.login.registration_token/validity
///
/// Client-Server API §"Token-authenticated registration": "Queries the server
/// to determine if a given registration token is still valid at the time of
/// request." 403 `M_FORBIDDEN` when registration takes no tokens.
pub fn token_validity(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        if registration_stage(&cx)? != Some("m.login.registration_token") {
            return Err(ApiError::forbidden("Registration tokens are not enabled"));
        }
        cx.limiter.register(req.peer_ip())?;
        let token = query_param(&req, "token").ok_or_else(|| ApiError::missing_param("Missing token"))?;
        let configured = &cx.engine.config.registration.token;
        let valid = (!configured.is_empty() && token == *configured)
            || cx.engine.registration_tokens.get(&token)?.is_some_and(|t| t.valid(myelin_engine::util::now_ms()));
        Ok(ok_json(&TokenValidity { valid }))
    })
}

/// The answer to a registration: the login, or with `inhibit_login` the user id alone.
fn registered(cx: &Ctx, login: Option<&myelin_engine::users::NewLogin>, user_id: &UserId) -> crate::http_util::Resp {
    match login {
        Some(l) => ok_json(&LoginResponse::new(cx, l)),
        None => ok_json(&RegisteredOnly { user_id }),
    }
}

/// Makes the account a registration asked for, once its auth passed.
async fn make_account(cx: &Ctx, req: &Req, body: RegisterBody) -> Result<crate::http_util::Resp, ApiError> {
    let user_id = match body.username.as_deref() {
        Some(name) => cx.engine.users.user_id_for(&name.to_lowercase())?,
        None => cx.engine.users.user_id_for(&format!("u{}", random_session()))?,
    };
    refuse_claimed_user(cx, &user_id)?;
    cx.limiter.register(req.peer_ip())?;
    let login = cx
        .engine
        .users
        .register(
            &user_id,
            body.password.as_deref(),
            false,
            body.device_id,
            body.initial_device_display_name,
            body.inhibit_login,
        )
        .await?;
    Ok(registered(cx, login.as_ref(), &user_id))
}

/// `POST /register` with `guest_access_token`: the guest keeps its user id (a
/// `username`, if given, must be its localpart, as Synapse requires) and gets a
/// password. The registration rules (open, or the token) apply as to anyone.
async fn upgrade_guest(cx: &Ctx, guest_token: &str, body: RegisterBody) -> Result<crate::http_util::Resp, ApiError> {
    let config = &cx.engine.config.registration;
    if !config.enabled {
        return Err(ApiError::forbidden("registration is disabled on this server"));
    }
    let session = cx
        .engine
        .users
        .session(guest_token)?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "unknown guest access token"))?;
    let user_id = UserId::parse(session.user_id.as_str()).map_err(|e| ApiError::unknown(e.to_string()))?;
    if !cx.engine.users.is_guest(user_id.as_str())? {
        return Err(ApiError::forbidden("guest_access_token is not a guest's"));
    }
    if let Some(name) = body.username.as_deref()
        && name.to_lowercase() != user_id.localpart()
    {
        return Err(ApiError::forbidden("a guest upgrades under its own user id"));
    }
    let auth = body.auth.unwrap_or_default();
    if auth.kind.as_deref() != Some("m.login.dummy") {
        return Ok(uia_required("m.login.dummy", auth.session, None));
    }
    let login = cx
        .engine
        .users
        .upgrade_guest(
            &user_id,
            body.password.as_deref(),
            body.device_id,
            body.initial_device_display_name,
            body.inhibit_login,
        )
        .await?;
    Ok(registered(cx, login.as_ref(), &user_id))
}

/// 400 `M_EXCLUSIVE` when an appservice claims `user_id` exclusively.
fn refuse_claimed_user(cx: &Ctx, user_id: &UserId) -> Result<(), ApiError> {
    if let Some(a) = cx.engine.appservices.claimant_of_user(user_id.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_EXCLUSIVE",
            format!("{user_id} is reserved by the appservice `{}`", a.id()),
        ));
    }
    Ok(())
}

/// `POST /register` with an `as_token` (Application Service API §"Server admin
/// style permissions"): `type: m.login.application_service`, a username in
/// the appservice's namespaces, no password and no user-interactive auth.
async fn register_for_appservice(
    cx: &Ctx,
    appservice: &myelin_engine::appservice::Appservice,
    body: RegisterBody,
) -> Result<crate::http_util::Resp, ApiError> {
    if body.kind.as_deref() != Some("m.login.application_service") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "an appservice registers its users with type m.login.application_service",
        ));
    }
    let name = body.username.ok_or_else(|| ApiError::missing_param("username is required"))?;
    let user_id = match name.strip_prefix('@') {
        Some(_) => UserId::parse(name.as_str()).map_err(|e| ApiError::invalid_param(format!("username: {e}")))?,
        None => cx.engine.users.user_id_for(&name.to_lowercase())?,
    };
    if user_id.server_name() != cx.engine.server_name || !appservice.owns_user(user_id.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_EXCLUSIVE",
            format!("{user_id} is not in the namespaces of the appservice `{}`", appservice.id()),
        ));
    }
    if let Some(other) = cx.engine.appservices.claimant_of_user(user_id.as_str())
        && other.id() != appservice.id()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_EXCLUSIVE",
            format!("{user_id} is reserved by the appservice `{}`", other.id()),
        ));
    }
    let login = cx
        .engine
        .users
        .register(&user_id, None, false, body.device_id, body.initial_device_display_name, body.inhibit_login)
        .await?;
    Ok(registered(cx, login.as_ref(), &user_id))
}

/// The answer to `GET /register/available`.
#[derive(Serialize)]
struct Available {
    available: bool,
}

/// GET /_matrix/client/v3/register/available
pub fn register_available(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let name = query_param(&req, "username").ok_or_else(|| ApiError::missing_param("username is required"))?;
        let user_id = cx.engine.users.user_id_for(&name)?;
        if cx.engine.users.exists(&user_id)? {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "user id already taken"));
        }
        refuse_claimed_user(&cx, &user_id)?;
        Ok(ok_json(&Available { available: true }))
    })
}

/// The registration token validity answer.
#[derive(Serialize)]
struct TokenValidity {
    valid: bool,
}
