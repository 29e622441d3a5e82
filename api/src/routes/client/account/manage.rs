//! The caller's own account: `POST /account/password` and `POST /account/deactivate`.

use serde::{Deserialize, Serialize};

use super::{AuthData, password_uia};
use crate::{
    auth::require_user,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

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
