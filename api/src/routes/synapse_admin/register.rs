//! Shared-secret registration: `GET`/`POST /_synapse/admin/v1/register`
//! (Synapse admin API §"Shared-Secret Registration"), step for step as Synapse
//! checks it: secret configured, `nonce` present and known (then spent, even if
//! what follows fails), `username`, `password`, `user_type`, `mac` present and
//! right, then the account is created and logged in.

use http::StatusCode;
use myelin_engine::users::shared_secret::{MacInput, mac_matches};
use serde::{Deserialize, Serialize};

use super::bad_request;
use crate::{
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Longest user name or password accepted, as Synapse.
const MAX_FIELD: usize = 512;

/// The answer of `GET v1/register`.
#[derive(Serialize)]
struct Nonce {
    nonce: String,
}

/// GET /_synapse/admin/v1/register: a nonce (handed out whether or not a
/// secret is configured, as Synapse does).
pub fn nonce(cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move {
        let nonce = cx.engine.users.nonces.issue()?;
        Ok(ok_json(&Nonce { nonce }))
    })
}

/// POST /_synapse/admin/v1/register
#[derive(Deserialize)]
pub(crate) struct RegisterBody {
    nonce: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    admin: Option<bool>,
    displayname: Option<String>,
    user_type: Option<String>,
    mac: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    /// Refresh tokens are not issued; read so that its type is checked.
    #[serde(default, rename = "refresh_token")]
    _refresh_token: Option<bool>,
}

/// What a registration answers (Synapse's `_create_registration_details`).
#[derive(Serialize)]
struct Registered<'a> {
    user_id: &'a str,
    home_server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
}

/// 400 `M_BAD_JSON` for a missing field.
fn missing(field: &str) -> ApiError {
    ApiError::bad_json(format!("{field} must be specified"))
}

/// POST /_synapse/admin/v1/register
pub fn register(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let secret = cx.engine.config.registration.shared_secret.clone();
        if secret.is_empty() {
            return Err(bad_request("Shared secret registration is not enabled"));
        }
        let body: RegisterBody = parse_json(&req.body)?;
        let nonce = body.nonce.ok_or_else(|| missing("nonce"))?;
        if !cx.engine.users.nonces.take(&nonce) {
            return Err(bad_request("unrecognised nonce"));
        }
        let username = body.username.ok_or_else(|| missing("username"))?;
        if username.len() > MAX_FIELD || username.contains('\0') {
            return Err(bad_request("Invalid username"));
        }
        let password = body.password.ok_or_else(|| missing("password"))?;
        if password.len() > MAX_FIELD || password.contains('\0') {
            return Err(bad_request("Invalid password"));
        }
        let admin = body.admin.unwrap_or(false);
        if let Some(kind) = body.user_type.as_deref()
            && !matches!(kind, "bot" | "support")
        {
            return Err(bad_request("Invalid user type"));
        }
        let mac = body.mac.ok_or_else(|| missing("mac"))?;
        let input = MacInput {
            nonce: &nonce,
            username: &username,
            password: &password,
            admin,
            user_type: body.user_type.as_deref(),
        };
        if !mac_matches(&secret, &input, &mac) {
            tracing::warn!(target: "myelin::audit", username, "shared-secret registration refused: HMAC incorrect");
            return Err(ApiError::new(StatusCode::FORBIDDEN, "M_UNKNOWN", "HMAC incorrect"));
        }
        let users = &cx.engine.users;
        let user_id = users.user_id_for(&username.to_lowercase())?;
        let login = users
            .register(
                &user_id,
                Some(&password),
                admin,
                body.device_id,
                body.initial_device_display_name,
                body.inhibit_login,
            )
            .await?;
        if let Some(name) = body.displayname.filter(|n| !n.is_empty()) {
            let profile = myelin_engine::users::Profile { displayname: Some(name), avatar_url: None };
            users.set_profile(user_id.as_str(), &profile).await?;
        }
        tracing::info!(target: "myelin::audit", user_id = %user_id, admin, "user registered with the shared secret");
        let home_server = cx.engine.server_name.as_str();
        Ok(ok_json(&Registered {
            user_id: user_id.as_str(),
            home_server,
            access_token: login.as_ref().map(|l| l.access_token.as_str()),
            device_id: login.as_ref().map(|l| l.device_id.as_str()),
        }))
    })
}
