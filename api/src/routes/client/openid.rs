//! OpenID (Client-Server API §"OpenID"; Server-Server API §"OpenID"): widgets
//! and Element Call ask for a token and hand it to a third party, which
//! checks it with our federation listener. See `myelin_engine::openid`.
//!
//! `POST /user/{userId}/openid/request_token` answers `access_token`,
//! `token_type` ("Bearer"), `matrix_server_name` and `expires_in` (3600);
//! only for the requester's own user id (403 `M_FORBIDDEN` otherwise).
//! `GET /_matrix/federation/v1/openid/userinfo?access_token=` answers
//! `{"sub": user_id}` (400 `M_MISSING_PARAM` without a token, as Synapse), 401 `M_UNKNOWN_TOKEN` for a token that is unknown or
//! expired. The spec exempts this endpoint from `X-Matrix` authentication:
//! the third party calling it is not a homeserver.

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// The body of `request_token`: "an empty object".
#[derive(Deserialize)]
struct RequestTokenBody {}

/// The answer of `request_token`.
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    matrix_server_name: String,
    expires_in: u64,
}

/// The answer of `userinfo`.
#[derive(Serialize)]
struct UserInfo {
    sub: String,
}

/// POST /_matrix/client/v3/user/{userId}/openid/request_token
pub fn request_token(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let _: RequestTokenBody = parse_json_or_empty(&req.body)?;
        if req.param("user_id")? != me.user_id.as_str() {
            return Err(ApiError::forbidden("cannot request an OpenID token for another user"));
        }
        let issued = cx.engine.openid.issue(me.user_id.as_str()).await?;
        Ok(ok_json(&TokenResponse {
            access_token: issued.token,
            token_type: "Bearer",
            matrix_server_name: cx.engine.server_name.to_string(),
            expires_in: issued.expires_in_ms / 1000,
        }))
    })
}

/// GET /_matrix/federation/v1/openid/userinfo (no X-Matrix authentication, per spec)
pub fn userinfo(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let unknown = || ApiError::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "unknown or expired token");
        let token = query_param(&req, "access_token")
            .ok_or_else(|| ApiError::missing_param("the `access_token` query parameter is required"))?;
        let user = cx.engine.openid.user_of(&token)?.ok_or_else(unknown)?;
        Ok(ok_json(&UserInfo { sub: user }))
    })
}
