//! Sessions: `GET`/`POST /login`, `POST /login/get_token`, `/logout`,
//! `/logout/all` and `GET /account/whoami`.

use http::StatusCode;
use ruma::UserId;
use serde::{Deserialize, Serialize};

use super::{AuthOnly, Identifier, LoginResponse, password_uia, user_from_identifier};
use crate::{
    auth::require_user,
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

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
