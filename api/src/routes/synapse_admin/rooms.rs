//! Room administration (Synapse admin API §"Rooms"): the room list with search
//! and ordering, one room's details, its members, and deletion (Myelin's room
//! shutdown) with its status.
//!
//! Deletion shuts the room down before the answer (no local members, no
//! aliases, not listed, joins refused); with `purge` (the default, as in
//! Synapse) its history is then purged in the background, status `purging`
//! until `complete` (or `failed`): every event but its state and its newest
//! one loses its body (`myelin_engine::rooms::purge`; Synapse also deletes the
//! state and the room's rows, which here stay so the room id stays refused).
//! Statuses are kept in memory, the newest [`KEPT_DELETIONS`], and a restart
//! forgets them.

use std::collections::VecDeque;

use ruma::{OwnedRoomId, RoomId, events::TimelineEventType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{audit, bad_request, query_backwards, query_choice, query_count, require_admin};
use crate::{
    auth::query_param,
    error::ApiError,
    http_util::{ok_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// How many deletion statuses are kept.
pub const KEPT_DELETIONS: usize = 1000;

/// One room, as the list and the details show it.
#[derive(Serialize, Clone)]
struct RoomInfo {
    room_id: OwnedRoomId,
    name: Option<String>,
    canonical_alias: Option<String>,
    joined_members: usize,
    joined_local_members: usize,
    version: String,
    creator: Option<String>,
    encryption: Option<String>,
    federatable: bool,
    public: bool,
    join_rules: Option<String>,
    guest_access: Option<String>,
    history_visibility: Option<String>,
    state_events: usize,
    room_type: Option<String>,
    #[serde(skip)]
    topic: Option<String>,
    #[serde(skip)]
    avatar: Option<String>,
    #[serde(skip)]
    members: Vec<String>,
}

/// The answer of `GET v1/rooms`: a page of rooms.
#[derive(Serialize)]
struct RoomPage {
    rooms: Vec<RoomInfo>,
    offset: usize,
    total_rooms: usize,
    /// Where the next page starts, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_batch: Option<usize>,
    /// Where the previous page starts, unless this is the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_batch: Option<usize>,
}

/// The answer of `GET v1/rooms/{room_id}`: the list's fields and a few more.
#[derive(Serialize)]
struct RoomDetails<'a> {
    #[serde(flatten)]
    info: &'a RoomInfo,
    topic: Option<&'a str>,
    avatar: Option<&'a str>,
    forgotten: bool,
}

/// The answer of `GET v1/rooms/{room_id}/members`: the joined members.
#[derive(Serialize)]
struct RoomMembers<'a> {
    total: usize,
    members: &'a [String],
}

fn room_info(cx: &Ctx, room: &RoomId) -> Result<RoomInfo, ApiError> {
    let rooms = &cx.engine.rooms;
    let version = rooms.room_version(room)?;
    let state = rooms.current_state(room)?;
    let content = |kind: &str| -> Value {
        state
            .iter()
            .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(""))
            .map(|p| p.content_value())
            .unwrap_or(Value::Null)
    };
    let text = |kind: &str, key: &str| content(kind)[key].as_str().filter(|v| !v.is_empty()).map(str::to_owned);
    let mut members: Vec<String> = state
        .iter()
        .filter(|p| p.kind == TimelineEventType::RoomMember && p.content_value()["membership"] == "join")
        .filter_map(|p| p.state_key.clone())
        .collect();
    members.sort();
    let local_suffix = format!(":{}", cx.engine.server_name);
    let create = state.iter().find(|p| p.kind == TimelineEventType::RoomCreate);
    Ok(RoomInfo {
        room_id: room.to_owned(),
        name: text("m.room.name", "name"),
        canonical_alias: text("m.room.canonical_alias", "alias"),
        joined_members: members.len(),
        joined_local_members: members.iter().filter(|m| m.ends_with(&local_suffix)).count(),
        version: version.to_string(),
        creator: create.map(|p| p.sender.to_string()),
        encryption: text("m.room.encryption", "algorithm"),
        federatable: content("m.room.create")["m.federate"] != Value::Bool(false),
        public: cx.engine.directory.is_public(room.as_str())?,
        join_rules: text("m.room.join_rules", "join_rule"),
        guest_access: text("m.room.guest_access", "guest_access"),
        history_visibility: text("m.room.history_visibility", "history_visibility"),
        state_events: state.len(),
        room_type: text("m.room.create", "type"),
        topic: text("m.room.topic", "topic"),
        avatar: text("m.room.avatar", "url"),
        members,
    })
}

/// The Synapse `order_by` values of the room list.
const ROOM_ORDERS: &[&str] = &[
    "alphabetical",
    "size",
    "name",
    "canonical_alias",
    "joined_members",
    "joined_local_members",
    "version",
    "creator",
    "encryption",
    "federatable",
    "public",
    "join_rules",
    "guest_access",
    "history_visibility",
    "state_events",
];

/// GET /_synapse/admin/v1/rooms
pub fn list(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let from = query_count(&req, "from", 0)?;
        let limit = query_count(&req, "limit", 100)?;
        let order = query_choice(&req, "order_by", "name", ROOM_ORDERS)?;
        let backwards = query_backwards(&req)?;
        let term = match query_param(&req, "search_term") {
            Some(t) if t.is_empty() => return Err(ApiError::invalid_param("search_term cannot be empty")),
            t => t.map(|t| t.to_lowercase()),
        };
        let public_only = super::query_bool(&req, "public_rooms")?;
        let empty_only = super::query_bool(&req, "empty_rooms")?;
        let mut rooms = Vec::new();
        for room in cx.engine.rooms.all_rooms()? {
            let Ok(info) = room_info(&cx, &room) else { continue };
            if let Some(t) = &term {
                let hit = info.room_id.as_str().to_lowercase() == *t
                    || [&info.name, &info.canonical_alias]
                        .into_iter()
                        .flatten()
                        .any(|v| v.to_lowercase().contains(t.as_str()));
                if !hit {
                    continue;
                }
            }
            if public_only.is_some_and(|p| p != info.public)
                || empty_only.is_some_and(|e| e != (info.joined_members == 0))
            {
                continue;
            }
            rooms.push(info);
        }
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        match order {
            // Synapse puts rooms without a name last going forwards.
            "name" | "alphabetical" => {
                rooms.sort_by(|a, b| a.name.is_none().cmp(&b.name.is_none()).then(a.name.cmp(&b.name)))
            }
            "size" | "joined_members" => rooms.sort_by_key(|r| std::cmp::Reverse(r.joined_members)),
            "joined_local_members" => rooms.sort_by_key(|r| std::cmp::Reverse(r.joined_local_members)),
            "state_events" => rooms.sort_by_key(|r| std::cmp::Reverse(r.state_events)),
            "canonical_alias" => rooms.sort_by(|a, b| a.canonical_alias.cmp(&b.canonical_alias)),
            "version" => rooms.sort_by(|a, b| a.version.cmp(&b.version)),
            "creator" => rooms.sort_by(|a, b| a.creator.cmp(&b.creator)),
            "encryption" => rooms.sort_by(|a, b| a.encryption.cmp(&b.encryption)),
            "federatable" => rooms.sort_by_key(|r| std::cmp::Reverse(r.federatable)),
            "public" => rooms.sort_by_key(|r| std::cmp::Reverse(r.public)),
            "join_rules" => rooms.sort_by(|a, b| a.join_rules.cmp(&b.join_rules)),
            "guest_access" => rooms.sort_by(|a, b| a.guest_access.cmp(&b.guest_access)),
            "history_visibility" => rooms.sort_by(|a, b| a.history_visibility.cmp(&b.history_visibility)),
            _ => {}
        }
        if backwards {
            rooms.reverse();
        }
        let total = rooms.len();
        let page: Vec<RoomInfo> = rooms.into_iter().skip(from).take(limit).collect();
        let next_batch = if from.saturating_add(limit) < total { Some(from + limit) } else { None };
        let prev_batch = if from > 0 { Some(from.saturating_sub(limit)) } else { None };
        Ok(ok_json(&RoomPage { rooms: page, offset: from, total_rooms: total, next_batch, prev_batch }))
    })
}

fn path_room(req: &Req) -> Result<OwnedRoomId, ApiError> {
    let raw = req.param("room_id")?;
    RoomId::parse(raw).map_err(|_| ApiError::invalid_param(format!("{raw} is not a legal room ID")))
}

/// A room we know, or 404.
fn known_room(cx: &Ctx, room: &RoomId) -> Result<RoomInfo, ApiError> {
    room_info(cx, room).map_err(|_| ApiError::not_found("Room not found"))
}

/// GET /_synapse/admin/v1/rooms/{roomId}
pub fn details(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let room = path_room(&req)?;
        let info = known_room(&cx, &room)?;
        Ok(ok_json(&RoomDetails {
            info: &info,
            topic: info.topic.as_deref(),
            avatar: info.avatar.as_deref(),
            forgotten: false,
        }))
    })
}

/// GET /_synapse/admin/v1/rooms/{roomId}/members: the joined members.
pub fn members(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let room = path_room(&req)?;
        let info = known_room(&cx, &room)?;
        Ok(ok_json(&RoomMembers { total: info.members.len(), members: &info.members }))
    })
}

/// DELETE /_synapse/admin/v2/rooms/{roomId}
#[derive(Deserialize, Default)]
pub(crate) struct DeleteBody {
    new_room_user_id: Option<String>,
    #[serde(default)]
    block: bool,
    /// Purge the room's history after the shutdown (default true).
    #[serde(default)]
    purge: Option<bool>,
    #[serde(default, rename = "force_purge")]
    _force_purge: Option<bool>,
    #[serde(default, rename = "room_name")]
    _room_name: Option<String>,
    #[serde(default, rename = "message")]
    _message: Option<String>,
}

/// The answer of `DELETE v2/rooms/{room_id}`: the deletion started.
#[derive(Serialize)]
struct DeleteStarted<'a> {
    delete_id: &'a str,
}

/// A deletion's status: the answer of `GET v2/rooms/delete_status/{delete_id}`.
#[derive(Serialize)]
struct DeletionStatus {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    shutdown_room: ShutdownRoom,
}

/// The `shutdown_room` of a deletion's status: what the shutdown did.
#[derive(Serialize)]
struct ShutdownRoom {
    kicked_users: Vec<String>,
    /// Always empty here.
    failed_to_kick_users: Vec<String>,
    local_aliases: Vec<String>,
    /// Always `null`: no replacement room is made.
    new_room_id: Option<String>,
}

/// One deletion in the answer of `GET v2/rooms/{room_id}/delete_status`: its ids and status.
#[derive(Serialize)]
struct DeletionResult<'a> {
    delete_id: &'a str,
    room_id: &'a RoomId,
    #[serde(flatten)]
    status: DeletionStatus,
}

/// The answer of `GET v2/rooms/{room_id}/delete_status`: the room's recent deletions.
#[derive(Serialize)]
struct DeletionResults<'a> {
    results: Vec<DeletionResult<'a>>,
}

/// A finished deletion.
#[derive(Clone)]
struct Deletion {
    delete_id: String,
    room_id: OwnedRoomId,
    result: Result<myelin_engine::admin::Shutdown, String>,
    /// The history purge after the shutdown is still running.
    purging: bool,
}

impl Deletion {
    fn status(&self) -> DeletionStatus {
        let (status, error, kicked, aliases) = match &self.result {
            Ok(s) if self.purging => ("purging", None, s.kicked_users.clone(), s.local_aliases.clone()),
            Ok(s) => ("complete", None, s.kicked_users.clone(), s.local_aliases.clone()),
            Err(e) => ("failed", Some(e.clone()), Vec::new(), Vec::new()),
        };
        DeletionStatus {
            status,
            error,
            shutdown_room: ShutdownRoom {
                kicked_users: kicked,
                failed_to_kick_users: Vec::new(),
                local_aliases: aliases,
                new_room_id: None,
            },
        }
    }

    /// The status with the deletion's ids.
    fn result(&self) -> DeletionResult<'_> {
        DeletionResult { delete_id: &self.delete_id, room_id: &self.room_id, status: self.status() }
    }
}

/// The statuses of recent deletions (and the other admin API state kept in
/// memory: whether background updates are paused, the make_room_admin lock).
#[derive(Default)]
pub struct Deletions {
    recent: parking_lot::Mutex<VecDeque<Deletion>>,
    /// `v1/background_updates/enabled` set to false.
    pub(crate) background_updates_paused: std::sync::atomic::AtomicBool,
    /// Statuses of history purges.
    pub(crate) purges: std::sync::Arc<super::purge::Purges>,
    /// One `make_room_admin` at a time: its read of the power levels and the
    /// event it sends must not interleave with another's (one change, not two).
    pub(crate) make_room_admin: tokio::sync::Mutex<()>,
}

impl Deletions {
    fn record(&self, deletion: Deletion) {
        let mut recent = self.recent.lock();
        if recent.len() >= KEPT_DELETIONS {
            recent.pop_front();
        }
        recent.push_back(deletion);
    }

    /// Marks the purge of deletion `id` finished, failed with `error` if given.
    fn purged(&self, id: &str, error: Option<String>) {
        if let Some(d) = self.recent.lock().iter_mut().find(|d| d.delete_id == id) {
            d.purging = false;
            if let Some(e) = error {
                d.result = Err(e);
            }
        }
    }
}

/// A random opaque id (deletions, purges).
pub(super) fn random_id() -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| ApiError::unknown("no system randomness"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn delete(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let room = path_room(&req)?;
        let body: DeleteBody = parse_json_or_empty(&req.body)?;
        if body.new_room_user_id.is_some() {
            return Err(bad_request("new_room_user_id is not supported by this server"));
        }
        known_room(&cx, &room)?;
        let _ = body.block; // a shut-down room always refuses joins here
        let id = random_id()?;
        let result = cx.engine.shutdown_room(&room).await.map_err(|e| e.to_string());
        audit(&me, "delete_room", room.as_str());
        let purging = result.is_ok() && body.purge.unwrap_or(true);
        cx.deletions.record(Deletion { delete_id: id.clone(), room_id: room.clone(), result, purging });
        if purging {
            let (engine, deletions, task_id) = (cx.engine.clone(), cx.deletions.clone(), id.clone());
            let span = tracing::info_span!("room_purge", room = %room, delete_id = %id);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let outcome = engine.rooms.purge_history(&room, u64::MAX, true).await;
                    if let Err(e) = &outcome {
                        tracing::warn!(error = %e, "room purge failed");
                    }
                    deletions.purged(&task_id, outcome.err().map(|e| e.to_string()));
                },
                span,
            ));
        }
        Ok(ok_json(&DeleteStarted { delete_id: &id }))
    })
}

/// GET /_synapse/admin/v2/rooms/delete_status/{delete_id}
pub fn delete_status(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let id = req.param("delete_id")?;
        let recent = cx.deletions.recent.lock();
        let found = recent
            .iter()
            .find(|d| d.delete_id == id)
            .ok_or_else(|| ApiError::not_found(format!("delete id '{id}' not found")))?;
        Ok(ok_json(&found.status()))
    })
}

/// GET /_synapse/admin/v2/rooms/{roomId}/delete_status
pub fn delete_status_of_room(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let room = path_room(&req)?;
        let recent = cx.deletions.recent.lock();
        let results: Vec<DeletionResult> = recent.iter().filter(|d| d.room_id == room).map(Deletion::result).collect();
        if results.is_empty() {
            return Err(ApiError::not_found(format!("No delete task for room_id '{room}' found")));
        }
        Ok(ok_json(&DeletionResults { results }))
    })
}
