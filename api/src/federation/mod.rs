//! The Server-Server API's inbound endpoints, and request authentication.
//!
//! The protocol itself (joins, transactions, what is served) lives in
//! `myelin_engine::federation`; the network side of outbound requests in
//! [`crate::transport`].

pub mod e2ee;
pub mod rooms;

use http::{StatusCode, header};
use myelin_engine::federation::xmatrix;

use crate::{
    error::ApiError,
    router::{Ctx, Req},
};

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
}

/// Authenticates a federation request: a valid `X-Matrix` signature by a key
/// of the origin, addressed to us, from a server our allow/deny lists admit,
/// within its `rate_limit.federation_*` budget. Returns the origin server name.
pub async fn require_server(cx: &Ctx, req: &Req) -> Result<String, ApiError> {
    let header = req
        .parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing X-Matrix authorization"))?;
    let x = xmatrix::parse(header).map_err(|e| unauthorized(e.to_string()))?;
    let ours = cx.engine.server_name.as_str();
    if x.destination.as_deref().is_some_and(|d| d != ours) {
        return Err(unauthorized(format!("request is addressed to {}, not {ours}", x.destination.unwrap_or_default())));
    }
    if !cx.engine.policy.allows(&x.origin) {
        return Err(ApiError::forbidden(format!("{} is not allowed to federate with this server", x.origin)));
    }
    let key = cx
        .engine
        .request_key(&x.origin, &x.key)
        .await
        .map_err(|e| unauthorized(format!("cannot get {}'s key {}: {e}", x.origin, x.key)))?
        .ok_or_else(|| unauthorized(format!("{} has no key {}", x.origin, x.key)))?;
    let uri = req.parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    xmatrix::verify_body(&x, &key, ours, req.parts.method.as_str(), uri, &req.body)
        .map_err(|e| unauthorized(e.to_string()))?;
    // Only after the signature checked out: a forged origin cannot spend a real server's budget.
    cx.limiter.federation(&x.origin)?;
    cx.engine.federation.mark_alive(&x.origin);
    Ok(x.origin)
}
