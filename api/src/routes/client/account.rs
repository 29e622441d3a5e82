//! Accounts and sessions.
//!
//! Client-Server API §"Account registration" (`POST /register`, user-interactive
//! auth with `m.login.dummy` or `m.login.registration_token`,
//! `GET /register/available`), §"Login" (`GET`/`POST /login`,
//! `m.login.password` with `m.id.user`, `m.login.token`), §"POST
//! /_matrix/client/v1/login/get_token", `/logout`, `/logout/all`,
//! `/account/whoami`, `/account/password`, `/account/deactivate`. Devices,
//! capabilities and 3PIDs are in `devices.rs`.

use http::StatusCode;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{json_response, ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

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
        Ok(ok_json(&serde_json::json!({ "valid": valid })))
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

/// GET /_matrix/client/v3/login
pub fn login_flows(_cx: Ctx, _req: Req) -> HandlerFuture {
    #[derive(Serialize)]
    struct LoginType {
        #[serde(rename = "type")]
        kind: &'static str,
        /// "If `type` is `m.login.token`, an optional field to indicate to the
        /// unauthenticated client that the homeserver supports the
        /// `POST /login/get_token` endpoint."
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        get_login_token: bool,
    }
    #[derive(Serialize)]
    struct LoginFlows {
        flows: [LoginType; 3],
    }
    let flow = |kind| LoginType { kind, get_login_token: kind == "m.login.token" };
    Box::pin(async move {
        Ok(ok_json(&LoginFlows {
            flows: [flow("m.login.password"), flow("m.login.token"), flow("m.login.application_service")],
        }))
    })
}

/// `POST /login`.
#[derive(Deserialize)]
pub(crate) struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Identifier>,
    /// Deprecated form of `identifier.user`.
    user: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    /// `m.login.token`: a token from `/login/get_token`.
    token: Option<String>,
    /// Refresh tokens are not issued; read so that its type is checked.
    #[serde(default, rename = "refresh_token")]
    _refresh_token: Option<bool>,
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

/// POST /_matrix/client/v3/login
pub fn login(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let body: LoginBody = parse_json(&req.body)?;
        if body.kind == "m.login.application_service" {
            // Application Service API §"Using /login": the as_token stands for the password.
            let appservice = crate::auth::appservice_of(&cx, &req).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "M_MISSING_TOKEN",
                    "m.login.application_service needs an as_token",
                )
            })?;
            let user_id = user_from_identifier(&cx, body.identifier.as_ref(), body.user.as_deref())?;
            if !appservice.owns_user(user_id.as_str()) {
                return Err(ApiError::forbidden(format!("{user_id} is not in the appservice's namespaces")));
            }
            // As Synapse answers: a user never registered is not found (the
            // appservice registers it first), a deactivated one is refused as such.
            match cx.engine.users.account(&user_id)? {
                None => return Err(ApiError::not_found(format!("{user_id} is not registered"))),
                Some(a) if a.deactivated => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "M_USER_DEACTIVATED",
                        format!("{user_id} has been deactivated"),
                    ));
                }
                Some(_) => {}
            }
            let login =
                cx.engine.users.login_trusted(&user_id, body.device_id, body.initial_device_display_name).await?;
            return Ok(ok_json(&LoginResponse::new(&cx, &login)));
        }
        if body.kind == "m.login.token" {
            let token = body.token.ok_or_else(|| ApiError::missing_param("token is required"))?;
            // Tokens are 24 random bytes; the bucket still stops one address from
            // hammering the table (keyed apart from any account's bucket).
            let guesser = format!("login-token {}", req.peer_ip());
            cx.limiter.may_try_password(&guesser)?;
            let Some(user) = cx.engine.login_tokens.take(&token).await? else {
                cx.limiter.wrong_password(&guesser);
                return Err(ApiError::forbidden("invalid or expired login token"));
            };
            let user_id = UserId::parse(user).map_err(|e| ApiError::internal(&e))?;
            let login =
                cx.engine.users.login_trusted(&user_id, body.device_id, body.initial_device_display_name).await?;
            return Ok(ok_json(&LoginResponse::new(&cx, &login)));
        }
        if body.kind != "m.login.password" {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("login type {} is not supported", body.kind),
            ));
        }
        let user_id = user_from_identifier(&cx, body.identifier.as_ref(), body.user.as_deref())?;
        let password = body.password.ok_or_else(|| ApiError::missing_param("password is required"))?;
        cx.limiter.may_try_password_from(req.peer_ip())?;
        cx.limiter.may_try_password(user_id.as_str())?;
        let login =
            match cx.engine.users.login(&user_id, &password, body.device_id, body.initial_device_display_name).await {
                Ok(l) => l,
                Err(myelin_engine::users::UserError::Forbidden(why)) => {
                    cx.limiter.wrong_password_from(req.peer_ip());
                    cx.limiter.wrong_password(user_id.as_str());
                    return Err(ApiError::forbidden(why));
                }
                Err(e) => return Err(e.into()),
            };
        Ok(ok_json(&LoginResponse::new(&cx, &login)))
    })
}

/// The answer to `POST /login/get_token`.
#[derive(Serialize)]
struct LoginToken {
    login_token: String,
    expires_in_ms: u64,
}

/// POST /_matrix/client/v1/login/get_token
///
/// The spec lets the server ask for user-interactive auth here, and this one
/// does (the password, as Synapse): a stolen access token alone must not mint
/// logins for new devices.
pub fn get_login_token(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: AuthOnly = parse_json_or_empty(&req.body)?;
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        cx.limiter.check(&me.user_id)?;
        let issued = cx.engine.login_tokens.issue(me.user_id.as_str()).await?;
        Ok(ok_json(&LoginToken { login_token: issued.token, expires_in_ms: issued.expires_in_ms }))
    })
}

/// POST /_matrix/client/v3/logout
pub fn logout(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.engine.users.logout(me.user_id.as_str(), &me.device_id).await?;
        myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, &me.device_id).await?;
        Ok(ok_empty())
    })
}

/// POST /_matrix/client/v3/logout/all
pub fn logout_all(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let devices = cx.engine.users.devices(me.user_id.as_str())?;
        cx.engine.users.logout_all(me.user_id.as_str()).await?;
        for (device, _) in devices {
            myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, &device).await?;
        }
        Ok(ok_empty())
    })
}

/// The answer to `GET /account/whoami`.
#[derive(Serialize)]
struct Whoami<'a> {
    user_id: &'a UserId,
    /// Absent for an appservice acting without a device.
    #[serde(skip_serializing_if = "str::is_empty")]
    device_id: &'a str,
    is_guest: bool,
}

/// GET /_matrix/client/v3/account/whoami
pub fn whoami(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        Ok(ok_json(&Whoami { user_id: &me.user_id, device_id: &me.device_id, is_guest: me.is_guest }))
    })
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

/// `POST /account/password`.
#[derive(Deserialize)]
pub(crate) struct PasswordBody {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<AuthData>,
}

fn yes() -> bool {
    true
}

/// POST /_matrix/client/v3/account/password
pub fn change_password(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: PasswordBody = parse_json(&req.body)?;
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        let keep = body.logout_devices.then_some(me.device_id.as_str());
        let removed = cx.engine.users.set_password(&me.user_id, &body.new_password, keep).await?;
        // The logged-out devices are gone: so are their keys, and other servers hear of it.
        for device in &removed {
            myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, device).await?;
        }
        Ok(ok_empty())
    })
}

/// `DELETE /devices/{deviceId}` and `POST /login/get_token`: only the user-interactive auth.
#[derive(Deserialize)]
pub(super) struct AuthOnly {
    pub(super) auth: Option<AuthData>,
}

/// `POST /account/deactivate`.
#[derive(Deserialize)]
pub(crate) struct DeactivateBody {
    auth: Option<AuthData>,
    /// Nothing is erased beyond what deactivation removes; read so that its type is checked.
    #[serde(default, rename = "erase")]
    _erase: Option<bool>,
    /// No identity server is used; read so that its type is checked.
    #[serde(default, rename = "id_server")]
    _id_server: Option<String>,
}

/// The answer to `POST /account/deactivate`.
#[derive(Serialize)]
struct Deactivated {
    id_server_unbind_result: &'static str,
}

/// POST /_matrix/client/v3/account/deactivate
pub fn deactivate(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: DeactivateBody = parse_json_or_empty(&req.body)?;
        // An appservice deactivates its users without user-interactive auth
        // (they have no password to give), as Synapse lets it.
        if me.appservice.is_none()
            && let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await?
        {
            return Ok(challenge);
        }
        cx.engine.deactivate_user(&me.user_id).await?;
        Ok(ok_json(&Deactivated { id_server_unbind_result: "no-support" }))
    })
}
