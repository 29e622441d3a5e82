//! Simplified sliding sync (MSC4186), and the OAuth discovery a client without it asks for.
//!
//! - MSC4186: `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
//!   with `pos` and `timeout` as query parameters and the lists, room subscriptions
//!   and extensions in the body; an unknown `pos` is `400 M_UNKNOWN_POS`.
//!   The engine side is `myelin_engine::sliding`.
//! - Client-Server API §"GET /_matrix/client/v1/auth_metadata" (and MSC2965's
//!   unstable path): "If the homeserver does not support OAuth 2.0 … it MUST respond
//!   with a 404 `M_UNRECOGNIZED`." Myelin has password login only, so clients
//!   (Element X) fall back to it.

use std::time::Duration;

use http::StatusCode;
use myelin_engine::sliding::{Params, Request, SlidingError};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Longest long-poll a sliding-sync request is held for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

impl From<SlidingError> for ApiError {
    fn from(e: SlidingError) -> Self {
        match e {
            SlidingError::UnknownPos(p) => ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN_POS", p.to_string()),
            SlidingError::BadRequest(m) => ApiError::invalid_param(m),
            SlidingError::Engine(e) => e.into(),
        }
    }
}

/// POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync
pub fn sync(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: Request = if req.body.is_empty() { Request::default() } else { parse_json(&req.body)? };
        let mut params = Params { device_id: me.device_id.clone(), body, ..Params::default() };
        params.pos = query_param(&req, "pos");
        if let Some(t) = query_param(&req, "timeout") {
            let ms = t.parse::<u64>().map_err(|_| ApiError::invalid_param("timeout must be milliseconds"))?;
            params.timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
        }
        let response = cx.engine.sliding_sync(&me.user_id, params).await?;
        Ok(ok_json(&response))
    })
}

/// GET /_matrix/client/v1/auth_metadata (and the MSC2965 path)
pub fn auth_metadata(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move { Err(ApiError::unrecognized("this server does not support OAuth 2.0; use password login")) })
}
