//! Server-side key backup endpoints (Client-Server API §"Server-side key
//! backups"; the rules and the storage are in `myelin_engine::key_backup`).
//!
//! `POST /room_keys/version` ("Creates a new backup"), `GET /room_keys/version`
//! ("Get information about the latest backup version"),
//! `GET|PUT|DELETE /room_keys/version/{version}` (`PUT`: "Update information
//! about an existing backup. Only `auth_data` can be modified"; the body's
//! `version`, if given, "must be the same as the version in the path"), and
//! `GET|PUT|DELETE /room_keys/keys[/{roomId}[/{sessionId}]]?version=` (store,
//! retrieve and delete keys; a `PUT` answers `{etag, count}`; 403
//! `M_WRONG_ROOM_KEYS_VERSION` with `current_version` when "the version
//! specified does not match the current backup version").
//!
//! `version` is required on every `/room_keys/keys` request, as in Synapse.

use std::collections::BTreeMap;

use myelin_engine::key_backup::{RoomSession, Scope, SessionKey, VersionInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue, value::RawValue};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// `POST /room_keys/version`.
#[derive(Deserialize)]
pub(crate) struct CreateBody {
    algorithm: String,
    auth_data: Map<String, JsonValue>,
}

/// `PUT /room_keys/version/{version}`.
#[derive(Deserialize)]
pub(crate) struct UpdateBody {
    algorithm: String,
    auth_data: Map<String, JsonValue>,
    version: Option<String>,
}

/// `KeyBackupData`, as uploaded.
#[derive(Deserialize)]
pub(crate) struct KeyBackupData {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    session_data: Map<String, JsonValue>,
}

/// `PUT /room_keys/keys/{roomId}`: "A map of session IDs to key data."
#[derive(Deserialize)]
pub(crate) struct RoomKeysBody {
    sessions: BTreeMap<String, KeyBackupData>,
}

/// `PUT /room_keys/keys`: "A map of room IDs to room key backup data."
#[derive(Deserialize)]
pub(crate) struct AllKeysBody {
    rooms: BTreeMap<String, RoomKeysBody>,
}

/// The answer of `GET /room_keys/version[/{version}]`.
#[derive(Serialize)]
struct VersionResponse {
    algorithm: String,
    auth_data: Box<RawValue>,
    count: u64,
    etag: String,
    version: String,
}

/// The answer of a `PUT` or `DELETE` of keys.
#[derive(Serialize)]
struct KeysUpdated {
    etag: String,
    count: u64,
}

/// `KeyBackupData`, as served.
#[derive(Serialize)]
struct KeyDataOut {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    session_data: Box<RawValue>,
}

#[derive(Serialize)]
struct RoomOut {
    sessions: BTreeMap<String, KeyDataOut>,
}

#[derive(Serialize)]
struct AllOut {
    rooms: BTreeMap<String, RoomOut>,
}

/// JSON text we stored ourselves, served as it is.
fn stored_json(text: String) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(text).map_err(|e| {
        tracing::error!(error = %e, "stored key backup JSON does not parse");
        ApiError::unknown("internal server error")
    })
}

fn json_text(map: &Map<String, JsonValue>) -> String {
    // Serialising a map of JSON values cannot fail.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

fn version_response(v: VersionInfo) -> Result<VersionResponse, ApiError> {
    Ok(VersionResponse {
        algorithm: v.info.algorithm,
        auth_data: stored_json(v.info.auth_data)?,
        count: v.info.count,
        etag: v.info.etag.to_string(),
        version: v.version,
    })
}

fn key_out(key: SessionKey) -> Result<KeyDataOut, ApiError> {
    Ok(KeyDataOut {
        first_message_index: key.first_message_index,
        forwarded_count: key.forwarded_count,
        is_verified: key.is_verified,
        session_data: stored_json(key.session_data)?,
    })
}

fn session_key(data: KeyBackupData) -> SessionKey {
    SessionKey {
        first_message_index: data.first_message_index,
        forwarded_count: data.forwarded_count,
        is_verified: data.is_verified,
        session_data: json_text(&data.session_data),
    }
}

fn version_param(req: &Req) -> Result<String, ApiError> {
    query_param(req, "version").ok_or_else(|| ApiError::missing_param("the `version` query parameter is required"))
}

/// The scope a `/room_keys/keys…` path names.
fn scope_of(req: &Req) -> Scope<'_> {
    let room = req.params.iter().find(|(k, _)| k == "room_id").map(|(_, v)| v.as_str());
    let session = req.params.iter().find(|(k, _)| k == "session_id").map(|(_, v)| v.as_str());
    match (room, session) {
        (Some(room), Some(session)) => Scope::Session(room, session),
        (Some(room), None) => Scope::Room(room),
        _ => Scope::All,
    }
}

/// POST /_matrix/client/v3/room_keys/version
pub fn create_version(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: CreateBody = parse_json(&req.body)?;
        let version =
            cx.engine.key_backups.create(me.user_id.as_str(), &body.algorithm, &json_text(&body.auth_data)).await?;
        Ok(ok_json(&VersionAnswer { version }))
    })
}

/// GET /_matrix/client/v3/room_keys/version and …/version/{version}
pub fn get_version(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let info = match req.params.iter().find(|(k, _)| k == "version") {
            Some((_, version)) => cx.engine.key_backups.version(me.user_id.as_str(), version)?,
            None => cx
                .engine
                .key_backups
                .current(me.user_id.as_str())?
                .ok_or_else(|| ApiError::not_found("no current backup version"))?,
        };
        Ok(ok_json(&version_response(info)?))
    })
}

/// PUT /_matrix/client/v3/room_keys/version/{version}
pub fn update_version(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let version = req.param("version")?;
        let body: UpdateBody = parse_json(&req.body)?;
        if body.version.as_deref().is_some_and(|v| v != version) {
            return Err(ApiError::invalid_param("version: does not match the version in the path"));
        }
        cx.engine
            .key_backups
            .update(me.user_id.as_str(), version, &body.algorithm, &json_text(&body.auth_data))
            .await?;
        Ok(ok_empty())
    })
}

/// DELETE /_matrix/client/v3/room_keys/version/{version}
pub fn delete_version(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.engine.key_backups.delete_version(me.user_id.as_str(), req.param("version")?).await?;
        Ok(ok_empty())
    })
}

/// PUT /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]
pub fn put_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let version = version_param(&req)?;
        let keys: Vec<RoomSession> = match scope_of(&req) {
            Scope::Session(room, session) => {
                let data: KeyBackupData = parse_json(&req.body)?;
                vec![(room.to_owned(), session.to_owned(), session_key(data))]
            }
            Scope::Room(room) => {
                let body: RoomKeysBody = parse_json(&req.body)?;
                body.sessions.into_iter().map(|(s, d)| (room.to_owned(), s, session_key(d))).collect()
            }
            Scope::All => {
                let body: AllKeysBody = parse_json(&req.body)?;
                let mut keys = Vec::new();
                for (room, r) in body.rooms {
                    keys.extend(r.sessions.into_iter().map(|(s, d)| (room.clone(), s, session_key(d))));
                }
                keys
            }
        };
        let (etag, count) = cx.engine.key_backups.put(me.user_id.as_str(), &version, keys).await?;
        Ok(ok_json(&KeysUpdated { etag: etag.to_string(), count }))
    })
}

/// GET /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]
pub fn get_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let version = version_param(&req)?;
        let scope = scope_of(&req);
        let keys = cx.engine.key_backups.get(me.user_id.as_str(), &version, scope)?;
        match scope {
            Scope::Session(..) => {
                let (_, _, key) = keys.into_iter().next().ok_or_else(|| ApiError::not_found("no such session"))?;
                Ok(ok_json(&key_out(key)?))
            }
            Scope::Room(_) => {
                let mut sessions = BTreeMap::new();
                for (_, session, key) in keys {
                    sessions.insert(session, key_out(key)?);
                }
                Ok(ok_json(&RoomOut { sessions }))
            }
            Scope::All => {
                let mut rooms: BTreeMap<String, RoomOut> = BTreeMap::new();
                for (room, session, key) in keys {
                    rooms
                        .entry(room)
                        .or_insert_with(|| RoomOut { sessions: BTreeMap::new() })
                        .sessions
                        .insert(session, key_out(key)?);
                }
                Ok(ok_json(&AllOut { rooms }))
            }
        }
    })
}

/// DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]
pub fn delete_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let version = version_param(&req)?;
        let (etag, count) = cx.engine.key_backups.delete(me.user_id.as_str(), &version, scope_of(&req)).await?;
        Ok(ok_json(&KeysUpdated { etag: etag.to_string(), count }))
    })
}

/// A new backup version.
#[derive(serde::Serialize)]
struct VersionAnswer<A> {
    version: A,
}
