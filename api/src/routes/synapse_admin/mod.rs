//! The Synapse-compatible admin API: a subset of `/_synapse/admin/…` on the
//! client listener, with Synapse's paths, parameters, response shapes and error
//! codes (Synapse admin API documentation), so that synapse-admin, moderation
//! bots and test suites work unchanged.
//!
//! Every endpoint but `v1/register` and `v1/server_version` needs the access
//! token of a server admin (the account's `admin` flag, set by
//! `myelin admin user create --admin` / `user set-admin`): no token → 401
//! `M_MISSING_TOKEN`, an unknown one → 401 `M_UNKNOWN_TOKEN`, a non-admin's →
//! 403 `M_FORBIDDEN`. Each admin action is logged (target `myelin::audit`) with
//! the admin who did it. The work is the engine's, shared with `myelin admin …`
//! (`crate::admin`).

pub(crate) mod media;
pub(crate) mod purge;
pub(crate) mod register;
pub(crate) mod room_ops;
pub(crate) mod rooms;
pub(crate) mod server;
pub(crate) mod tokens;
pub(crate) mod users;

use http::{Method, StatusCode};
use ruma::{OwnedUserId, UserId};
use serde::Serialize;

use crate::{
    auth::{Authed, query_param, require_user},
    error::ApiError,
    http_util::ok_json,
    router::{Ctx, HandlerFuture, Req, Router},
};

/// Adds the admin routes to the client router.
pub fn add(r: &mut Router) {
    use Method as M;
    const A: &str = "/_synapse/admin";
    let mut add = |method: Method, path: &str, handler| {
        r.add(method, &format!("{A}{path}"), handler);
    };
    add(M::GET, "/v1/server_version", server_version);
    add(M::GET, "/v1/register", register::nonce);
    add(M::POST, "/v1/register", register::register);
    add(M::GET, "/v2/users", users::list);
    add(M::GET, "/v2/users/{user_id}", users::get);
    add(M::PUT, "/v2/users/{user_id}", users::put);
    add(M::POST, "/v1/deactivate/{user_id}", users::deactivate);
    add(M::POST, "/v1/reset_password/{user_id}", users::reset_password);
    add(M::GET, "/v1/users/{user_id}/joined_rooms", users::joined_rooms);
    add(M::GET, "/v1/whois/{user_id}", users::whois);
    add(M::GET, "/v1/users/{user_id}/admin", users::is_admin);
    add(M::PUT, "/v1/users/{user_id}/admin", users::set_admin);
    add(M::GET, "/v1/rooms", rooms::list);
    add(M::GET, "/v1/rooms/{room_id}", rooms::details);
    add(M::GET, "/v1/rooms/{room_id}/members", rooms::members);
    add(M::DELETE, "/v2/rooms/{room_id}", rooms::delete);
    add(M::GET, "/v2/rooms/{room_id}/delete_status", rooms::delete_status_of_room);
    add(M::GET, "/v2/rooms/delete_status/{delete_id}", rooms::delete_status);
    add(M::POST, "/v1/purge_history/{room_id}", purge::purge_history);
    add(M::POST, "/v1/purge_history/{room_id}/{event_id}", purge::purge_history);
    add(M::GET, "/v1/purge_history_status/{purge_id}", purge::purge_status);
    add(M::GET, "/v1/rooms/{room_id}/state", room_ops::state);
    add(M::POST, "/v1/join/{room_id}", room_ops::join);
    add(M::POST, "/v1/rooms/{room_id}/make_room_admin", room_ops::make_room_admin);
    add(M::POST, "/v1/users/{user_id}/login", room_ops::login_as);
    add(M::GET, "/v1/registration_tokens", tokens::list);
    add(M::POST, "/v1/registration_tokens/new", tokens::create);
    add(M::GET, "/v1/registration_tokens/{token}", tokens::get);
    add(M::PUT, "/v1/registration_tokens/{token}", tokens::update);
    add(M::DELETE, "/v1/registration_tokens/{token}", tokens::delete);
    add(M::GET, "/v1/event_reports", server::event_reports);
    add(M::GET, "/v1/event_reports/{report_id}", server::event_report);
    add(M::DELETE, "/v1/event_reports/{report_id}", server::delete_event_report);
    add(M::GET, "/v1/federation/destinations", server::list_destinations);
    add(M::GET, "/v1/federation/destinations/{destination}", server::destination);
    add(M::GET, "/v1/federation/destinations/{destination}/rooms", server::destination_rooms);
    add(M::POST, "/v1/federation/destinations/{destination}/reset_connection", server::reset_connection);
    add(M::GET, "/v1/background_updates/status", server::background_status);
    add(M::GET, "/v1/background_updates/enabled", server::background_enabled);
    add(M::POST, "/v1/background_updates/enabled", server::set_background_enabled);
    add(M::POST, "/v1/background_updates/start_job", server::start_job);
    media::add(r);
}

/// The answer of `GET v1/server_version`.
#[derive(Serialize)]
struct ServerVersion {
    server_version: String,
}

/// GET /_synapse/admin/v1/server_version (no token needed, as in Synapse).
fn server_version(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move {
        let version = format!("Myelin {}", env!("CARGO_PKG_VERSION"));
        Ok(ok_json(&ServerVersion { server_version: version }))
    })
}

/// The caller, who must be a server admin (Synapse's `assert_requester_is_admin`).
pub(crate) fn require_admin(cx: &Ctx, req: &Req) -> Result<Authed, ApiError> {
    let me = require_user(cx, req)?;
    if !cx.engine.users.is_admin(&me.user_id)? {
        return Err(ApiError::forbidden("You are not a server admin"));
    }
    Ok(me)
}

/// Logs an admin action with who did it.
pub(crate) fn audit(me: &Authed, action: &str, target: &str) {
    tracing::info!(target: "myelin::audit", admin = %me.user_id, action, target, "admin API action");
}

/// 400 `M_UNKNOWN`: Synapse's plain `SynapseError(400, …)`.
pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", message)
}

/// The path parameter `name` as a user id (400 `M_INVALID_PARAM` otherwise, as
/// Synapse's `UserID.from_string`).
pub(crate) fn path_user(req: &Req, name: &str) -> Result<OwnedUserId, ApiError> {
    let raw = req.param(name)?;
    UserId::parse(raw).map_err(|_| ApiError::invalid_param(format!("Invalid user id: {raw}")))
}

/// An integer query parameter (Synapse's `parse_integer`).
pub(crate) fn query_int(req: &Req, name: &str, default: i64) -> Result<i64, ApiError> {
    match query_param(req, name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .map_err(|_| ApiError::invalid_param(format!("Query parameter {name:?} must be an integer."))),
    }
}

/// A non-negative integer query parameter (`from`, `limit`).
pub(crate) fn query_count(req: &Req, name: &str, default: i64) -> Result<usize, ApiError> {
    let n = query_int(req, name, default)?;
    usize::try_from(n).map_err(|_| {
        ApiError::invalid_param(format!("Query parameter {name} must be a string representing a positive integer."))
    })
}

/// A boolean query parameter: `true` or `false` only (Synapse's `parse_boolean`).
pub(crate) fn query_bool(req: &Req, name: &str) -> Result<Option<bool>, ApiError> {
    match query_param(req, name).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => {
            Err(ApiError::invalid_param(format!("Boolean query parameter {name:?} must be one of ['true', 'false']")))
        }
    }
}

/// A query parameter that must be one of `allowed` (Synapse's `parse_string` with `allowed_values`).
pub(crate) fn query_choice<'a>(
    req: &Req,
    name: &str,
    default: &'a str,
    allowed: &[&'a str],
) -> Result<&'a str, ApiError> {
    match query_param(req, name) {
        None => Ok(default),
        Some(raw) => allowed.iter().find(|a| **a == raw).copied().ok_or_else(|| {
            ApiError::invalid_param(format!("Query parameter {name:?} must be one of [{}]", allowed.join(", ")))
        }),
    }
}

/// `dir`: `f` (default) or `b`; whether backwards.
pub(crate) fn query_backwards(req: &Req) -> Result<bool, ApiError> {
    Ok(query_choice(req, "dir", "f", &["f", "b"])? == "b")
}
