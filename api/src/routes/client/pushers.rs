//! `GET /pushers` and `POST /pushers/set` (Client-Server API §"Push
//! Notifications": "Specify the location where notifications should be
//! sent").
//!
//! `kind: "http"` needs `data.url` ending in `/_matrix/push/v1/notify` (what
//! Synapse checks too); `kind: null` deletes the pusher; without `append` the
//! same app id and pushkey is taken away from every other user. `email`
//! pushers are not offered. A pushkey is at most 512 bytes and an app id 64
//! characters (the spec's limits); a user has at most 100 pushers. The
//! gateway URL is a user's: it passes the outbound address policy when
//! notifications are sent (`myelin_engine::pushers`).

use http::StatusCode;
use myelin_engine::pushers::{Pusher, PusherData};
use serde::{Deserialize, Serialize};

use crate::{
    auth::require_user,
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Most pushers per user.
const MAX_PUSHERS: usize = 100;

/// The answer to `GET /pushers`.
#[derive(Serialize)]
struct PusherList {
    pushers: Vec<Pusher>,
}

/// GET /pushers
pub fn list(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let pushers = cx.engine.pushers.of(me.user_id.as_str()).map_err(|e| ApiError::unknown(e.to_string()))?;
        Ok(ok_json(&PusherList { pushers }))
    })
}

/// `POST /pushers/set`.
#[derive(Deserialize)]
pub(crate) struct SetBody {
    pushkey: String,
    /// `None` (JSON `null`) deletes.
    kind: Option<String>,
    app_id: String,
    #[serde(default)]
    app_display_name: Option<String>,
    #[serde(default)]
    device_display_name: Option<String>,
    #[serde(default)]
    profile_tag: Option<String>,
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    data: Option<PusherData>,
    #[serde(default)]
    append: bool,
}

fn missing(field: &str) -> ApiError {
    ApiError::missing_param(format!("{field} is required for an http pusher"))
}

/// POST /pushers/set
pub fn set(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: SetBody = parse_json(&req.body)?;
        if body.pushkey.is_empty() || body.pushkey.len() > 512 {
            return Err(ApiError::invalid_param("pushkey must be 1 to 512 bytes"));
        }
        if body.app_id.is_empty() || body.app_id.chars().count() > 64 {
            return Err(ApiError::invalid_param("app_id must be 1 to 64 characters"));
        }
        let user = me.user_id.as_str();
        let Some(kind) = body.kind else {
            cx.engine
                .pushers
                .remove(user, &body.app_id, &body.pushkey)
                .await
                .map_err(|e| ApiError::unknown(e.to_string()))?;
            return Ok(ok_empty());
        };
        if kind != "http" {
            return Err(ApiError::invalid_param(format!("pushers of kind {kind} are not supported (only http)")));
        }
        let data = body.data.ok_or_else(|| missing("data"))?;
        let url = data.url.clone().ok_or_else(|| missing("data.url"))?;
        let parsed: http::Uri =
            url.parse().map_err(|_| ApiError::invalid_param(format!("data.url `{url}` is not a URL")))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
            return Err(ApiError::invalid_param("data.url must be an http(s) URL"));
        }
        if parsed.path() != "/_matrix/push/v1/notify" {
            return Err(ApiError::invalid_param("data.url must have the path /_matrix/push/v1/notify"));
        }
        let existing = cx.engine.pushers.of(user).map_err(|e| ApiError::unknown(e.to_string()))?;
        let replaces = existing.iter().any(|p| p.app_id == body.app_id && p.pushkey == body.pushkey);
        if !replaces && existing.len() >= MAX_PUSHERS {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_LIMIT_EXCEEDED",
                format!("a user may have at most {MAX_PUSHERS} pushers"),
            ));
        }
        let pusher = Pusher {
            kind,
            app_id: body.app_id,
            pushkey: body.pushkey,
            app_display_name: body.app_display_name.ok_or_else(|| missing("app_display_name"))?,
            device_display_name: body.device_display_name.ok_or_else(|| missing("device_display_name"))?,
            profile_tag: body.profile_tag,
            lang: body.lang.ok_or_else(|| missing("lang"))?,
            data,
            pushkey_ts: myelin_engine::util::now_ms(),
            device_id: me.device_id.clone(),
        };
        cx.engine.pushers.set(user, pusher, body.append).await.map_err(|e| ApiError::unknown(e.to_string()))?;
        Ok(ok_empty())
    })
}
