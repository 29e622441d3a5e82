//! Federation over HTTP: the outbound client and inbound request authentication.

pub mod client;
pub mod dns;
pub mod e2ee;
pub mod rooms;
pub mod sender;

use http::{StatusCode, header};
use myelin_engine::federation::xmatrix;
use serde_json::Value as JsonValue;

use crate::{
    error::ApiError,
    router::{Ctx, Req},
};

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
}

/// Authenticates a federation request: a valid `X-Matrix` signature by a key
/// of the origin, addressed to us, from a server our allow/deny lists admit.
/// Returns the origin server name.
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
    if !client::FederationClient::allowed(&cx.engine, &x.origin) {
        return Err(ApiError::forbidden(format!("{} is not allowed to federate with this server", x.origin)));
    }
    let key = cx
        .federation
        .server_key(&cx.engine, &x.origin, &x.key)
        .await
        .map_err(|e| unauthorized(format!("cannot get {}'s key {}: {e}", x.origin, x.key)))?
        .ok_or_else(|| unauthorized(format!("{} has no key {}", x.origin, x.key)))?;
    let uri = req.parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    xmatrix::verify_body(&x, &key, ours, req.parts.method.as_str(), uri, &req.body)
        .map_err(|e| unauthorized(e.to_string()))?;
    cx.federation.mark_alive(&x.origin);
    Ok(x.origin)
}

/// Other servers with a member joined to a room `user` is joined to: who hears of the user's changes.
pub fn servers_sharing_rooms(cx: &Ctx, user: &ruma::UserId) -> std::collections::BTreeSet<String> {
    let mut servers = std::collections::BTreeSet::new();
    for (room, m) in cx.engine.rooms.rooms_of(user.as_str()).unwrap_or_default() {
        if m.membership == "join" {
            servers.extend(cx.engine.rooms.joined_servers_now(&room).unwrap_or_default());
        }
    }
    servers.remove(cx.engine.server_name.as_str());
    servers
}

/// Queues an EDU that must not be lost for `servers` in the durable federation queue.
pub async fn queue_durable_edu(
    cx: &Ctx,
    servers: impl IntoIterator<Item = String>,
    edu: &JsonValue,
) -> Result<(), ApiError> {
    let servers: Vec<String> = servers.into_iter().collect();
    if servers.is_empty() {
        return Ok(());
    }
    cx.engine.rooms.queue_edu(&servers, edu).await?;
    cx.federation.edu_ready.notify_one();
    Ok(())
}
