//! Accounts and sessions.
//!
//! Client-Server API §"Account registration" (`POST /register`, user-interactive
//! auth with `m.login.dummy` or `m.login.registration_token`,
//! `GET /register/available`), §"Login" (`GET`/`POST /login`,
//! `m.login.password` with `m.id.user`), `/logout`, `/logout/all`,
//! `/account/whoami`, `/account/password`, `/account/deactivate`,
//! §"Device management", §"Capabilities negotiation".

use http::StatusCode;
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{json_response, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

#[derive(Deserialize, Default)]
pub(crate) struct AuthData {
    #[serde(rename = "type")]
    kind: Option<String>,
    session: Option<String>,
    token: Option<String>,
    password: Option<String>,
    identifier: Option<Identifier>,
    user: Option<String>,
}

#[derive(Deserialize, Default)]
struct Identifier {
    #[serde(rename = "type")]
    kind: Option<String>,
    user: Option<String>,
}

fn random_session() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{t:x}{:x}", N.fetch_add(1, Ordering::Relaxed))
}

/// 401 with the flows a user-interactive auth endpoint accepts.
fn uia_required(stage: &str, session: Option<String>, error: Option<(&str, &str)>) -> crate::http_util::Resp {
    let mut body = json!({
        "flows": [{ "stages": [stage] }],
        "params": {},
        "session": session.unwrap_or_else(random_session),
    });
    if let Some((code, msg)) = error {
        body["errcode"] = json!(code);
        body["error"] = json!(msg);
    }
    json_response(StatusCode::UNAUTHORIZED, &body)
}

#[derive(Deserialize, Default)]
struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    auth: Option<AuthData>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
}

/// POST /_matrix/client/v3/register
pub fn register(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        if query_param(&req, "kind").as_deref() == Some("guest") {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", "guest access is disabled"));
        }
        let body: RegisterBody = if req.body.is_empty() { RegisterBody::default() } else { parse_json(&req.body)? };
        let config = &cx.engine.config.registration;
        let token = config.token.clone();
        if !config.enabled && token.is_empty() {
            return Err(ApiError::forbidden("registration is disabled on this server"));
        }
        let stage = if token.is_empty() { "m.login.dummy" } else { "m.login.registration_token" };
        let auth = body.auth.unwrap_or_default();
        match auth.kind.as_deref() {
            Some(kind) if kind == stage => {
                if stage == "m.login.registration_token" && auth.token.as_deref() != Some(token.as_str()) {
                    return Ok(uia_required(stage, auth.session, Some(("M_FORBIDDEN", "invalid registration token"))));
                }
            }
            _ => return Ok(uia_required(stage, auth.session, None)),
        }
        let user_id = match body.username.as_deref() {
            Some(name) => cx.engine.users.user_id_for(&name.to_lowercase())?,
            None => cx.engine.users.user_id_for(&format!("u{}", random_session()))?,
        };
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
        Ok(ok_json(&match login {
            Some(l) => json!({
                "user_id": l.user_id, "access_token": l.access_token, "device_id": l.device_id,
                "home_server": cx.engine.server_name,
            }),
            None => json!({ "user_id": user_id }),
        }))
    })
}

/// GET /_matrix/client/v3/register/available
pub fn register_available(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let name = query_param(&req, "username").ok_or_else(|| ApiError::missing_param("username is required"))?;
        let user_id = cx.engine.users.user_id_for(&name)?;
        if cx.engine.users.exists(&user_id)? {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "user id already taken"));
        }
        Ok(ok_json(&json!({ "available": true })))
    })
}

/// GET /_matrix/client/v3/login
pub fn login_flows(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(ok_json(&json!({ "flows": [{ "type": "m.login.password" }] }))) })
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Identifier>,
    user: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
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
        if body.kind != "m.login.password" {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("login type {} is not supported", body.kind),
            ));
        }
        let user_id = user_from_identifier(&cx, body.identifier.as_ref(), body.user.as_deref())?;
        let password = body.password.ok_or_else(|| ApiError::missing_param("password is required"))?;
        let login =
            cx.engine.users.login(&user_id, &password, body.device_id, body.initial_device_display_name).await?;
        Ok(ok_json(&json!({
            "user_id": login.user_id, "access_token": login.access_token, "device_id": login.device_id,
            "home_server": cx.engine.server_name,
        })))
    })
}

/// POST /_matrix/client/v3/logout
pub fn logout(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.engine.users.logout(me.user_id.as_str(), &me.device_id).await?;
        myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, &me.device_id).await?;
        Ok(ok_json(&json!({})))
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
        Ok(ok_json(&json!({})))
    })
}

/// GET /_matrix/client/v3/account/whoami
pub fn whoami(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        Ok(ok_json(&json!({ "user_id": me.user_id, "device_id": me.device_id, "is_guest": false })))
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
    let ok = named.as_deref() == Some(user)
        && match auth.password.as_deref() {
            Some(p) => cx.engine.users.password_ok(user, p).await?,
            None => false,
        };
    if ok {
        Ok(None)
    } else {
        Ok(Some(uia_required("m.login.password", auth.session, Some(("M_FORBIDDEN", "invalid password")))))
    }
}

#[derive(Deserialize)]
struct PasswordBody {
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
        Ok(ok_json(&json!({})))
    })
}

#[derive(Deserialize, Default)]
struct AuthOnly {
    auth: Option<AuthData>,
}

/// POST /_matrix/client/v3/account/deactivate
pub fn deactivate(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: AuthOnly = if req.body.is_empty() { AuthOnly::default() } else { parse_json(&req.body)? };
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        crate::admin::deactivate_user(&cx.engine, &me.user_id).await.map_err(ApiError::unknown)?;
        Ok(ok_json(&json!({ "id_server_unbind_result": "no-support" })))
    })
}

fn device_json(id: &str, d: &myelin_engine::users::Device) -> JsonValue {
    json!({ "device_id": id, "display_name": d.display_name, "last_seen_ts": d.last_seen_ts })
}

/// GET /_matrix/client/v3/devices
pub fn devices(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let list: Vec<JsonValue> =
            cx.engine.users.devices(me.user_id.as_str())?.iter().map(|(id, d)| device_json(id, d)).collect();
        Ok(ok_json(&json!({ "devices": list })))
    })
}

/// GET /_matrix/client/v3/devices/{deviceId}
pub fn device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let want = req.param("device_id")?;
        let devices = cx.engine.users.devices(me.user_id.as_str())?;
        let (id, d) = devices.iter().find(|(id, _)| id == want).ok_or_else(|| ApiError::not_found("no such device"))?;
        Ok(ok_json(&device_json(id, d)))
    })
}

#[derive(Deserialize)]
struct RenameBody {
    display_name: Option<String>,
}

/// PUT /_matrix/client/v3/devices/{deviceId}
pub fn rename_device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: RenameBody = parse_json(&req.body)?;
        cx.engine.users.rename_device(me.user_id.as_str(), req.param("device_id")?, body.display_name).await?;
        Ok(ok_json(&json!({})))
    })
}

/// DELETE /_matrix/client/v3/devices/{deviceId} (user-interactive auth with the password)
pub fn delete_device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: AuthOnly = if req.body.is_empty() { AuthOnly::default() } else { parse_json(&req.body)? };
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        let device = req.param("device_id")?;
        if !cx.engine.users.devices(me.user_id.as_str())?.iter().any(|(id, _)| id == device) {
            return Err(ApiError::not_found("no such device"));
        }
        cx.engine.users.logout(me.user_id.as_str(), device).await?;
        myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, device).await?;
        Ok(ok_json(&json!({})))
    })
}

/// GET /_matrix/client/v3/capabilities
pub fn capabilities(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let mut available = serde_json::Map::new();
        for v in myelin_engine::rooms::version::CREATABLE {
            available.insert(v.to_string(), json!("stable"));
        }
        Ok(ok_json(&json!({ "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": { "default": myelin_engine::rooms::version::DEFAULT.to_string(), "available": available },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
        }})))
    })
}

#[derive(Deserialize)]
struct DeleteDevicesBody {
    devices: Vec<String>,
    auth: Option<AuthData>,
}

/// POST /_matrix/client/v3/delete_devices (user-interactive auth with the password)
pub fn delete_devices(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: DeleteDevicesBody = parse_json(&req.body)?;
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        for device in &body.devices {
            cx.engine.users.logout(me.user_id.as_str(), device).await?;
            myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, device).await?;
        }
        Ok(ok_json(&json!({})))
    })
}
