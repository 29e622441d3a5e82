//! The public room directory.
//!
//! Client-Server API §"Listing rooms": `GET`/`PUT /directory/list/room/{roomId}`
//! (visibility `public`/`private`; publishing needs the power to set the
//! canonical alias), `GET /publicRooms` (no authentication) and
//! `POST /publicRooms` (with `filter.generic_search_term`, `limit`,
//! `since`/`next_batch` pagination and `include_all_networks`). Entries carry
//! name, topic, avatar, canonical alias, joined member count,
//! `world_readable`, `guest_can_join`, `join_rule` and `room_type`, largest
//! rooms first. `server=` another server asks that server's directory over
//! federation; this server answers `/_matrix/federation/v1/publicRooms`.

use ruma::RoomId;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// `PUT /directory/list/room/{roomId}`.
#[derive(Deserialize)]
struct VisibilityBody {
    /// `public` or `private`; `public` when left out (checked after parsing: `M_INVALID_PARAM`).
    visibility: Option<String>,
}

/// The answer to `GET /directory/list/room/{roomId}`.
#[derive(Serialize)]
struct Visibility {
    visibility: &'static str,
}

/// `POST /publicRooms`, and the federation form another server sends or is sent.
#[derive(Deserialize, Serialize, Default)]
struct PublicRoomsBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<PublicRoomsFilter>,
    /// Only this server's own rooms are listed (no bridges); passed on to other servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    include_all_networks: Option<bool>,
    /// As `include_all_networks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    third_party_instance_id: Option<String>,
}

/// The `filter` of a public rooms search.
#[derive(Deserialize, Serialize, Default)]
struct PublicRoomsFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    generic_search_term: Option<String>,
    /// Room types to list (`null`: rooms without a type); not applied yet, passed on to other servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    room_types: Option<Vec<Option<String>>>,
}

impl PublicRoomsBody {
    fn term(&self) -> Option<String> {
        self.filter.as_ref().and_then(|f| f.generic_search_term.clone())
    }

    fn limit(&self) -> Option<usize> {
        self.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX))
    }
}

fn room_param(req: &Req) -> Result<ruma::OwnedRoomId, ApiError> {
    RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))
}

/// GET /directory/list/room/{roomId}
pub fn get_visibility(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let room = room_param(&req)?;
        if cx.engine.rooms.short_room(&room)?.is_none() {
            return Err(ApiError::not_found("unknown room"));
        }
        let public = cx.engine.directory.is_public(room.as_str())?;
        Ok(ok_json(&Visibility { visibility: if public { "public" } else { "private" } }))
    })
}

/// PUT /directory/list/room/{roomId}
pub fn set_visibility(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        if cx.engine.rooms.short_room(&room)?.is_none() {
            return Err(ApiError::not_found("unknown room"));
        }
        let body: VisibilityBody = parse_json(&req.body)?;
        let public = match body.visibility.as_deref() {
            Some("public") | None => true,
            Some("private") => false,
            Some(_) => return Err(ApiError::invalid_param("visibility must be public or private")),
        };
        let have = super::power::user_power(&cx, &room, me.user_id.as_str())?;
        let need = super::power::state_level(&cx, &room, "m.room.canonical_alias")?;
        if have < need {
            return Err(ApiError::forbidden(format!("publishing the room needs power level {need}")));
        }
        cx.engine.directory.set_public(room.as_str(), public).await?;
        Ok(ok_empty())
    })
}

/// One room of the directory.
#[derive(Serialize)]
struct PublicRoom {
    room_id: ruma::OwnedRoomId,
    num_joined_members: usize,
    world_readable: bool,
    guest_can_join: bool,
    join_rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_type: Option<String>,
}

/// A page of the directory, for clients and for other servers.
#[derive(Serialize)]
pub(crate) struct PublicRooms {
    chunk: Vec<PublicRoom>,
    total_room_count_estimate: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_batch: Option<String>,
}

fn entry(cx: &Ctx, room: &RoomId) -> Result<PublicRoom, ApiError> {
    let rooms = &cx.engine.rooms;
    let content = |kind: &str| -> Result<JsonValue, ApiError> {
        Ok(rooms.state_event(room, kind, "")?.map(|p| p.content_value()).unwrap_or(JsonValue::Null))
    };
    // A non-empty string of a state event's content.
    let text = |kind: &str, key: &str| -> Result<Option<String>, ApiError> {
        Ok(content(kind)?[key].as_str().filter(|v| !v.is_empty()).map(str::to_owned))
    };
    let joined = rooms
        .current_state(room)?
        .iter()
        .filter(|p| p.kind.to_string() == "m.room.member" && p.content_value()["membership"] == "join")
        .count();
    Ok(PublicRoom {
        room_id: room.to_owned(),
        num_joined_members: joined,
        world_readable: content("m.room.history_visibility")?["history_visibility"] == "world_readable",
        guest_can_join: content("m.room.guest_access")?["guest_access"] == "can_join",
        join_rule: content("m.room.join_rules")?["join_rule"].as_str().unwrap_or("invite").to_owned(),
        name: text("m.room.name", "name")?,
        topic: text("m.room.topic", "topic")?,
        avatar_url: text("m.room.avatar", "url")?,
        canonical_alias: text("m.room.canonical_alias", "alias")?,
        room_type: text("m.room.create", "type")?,
    })
}

pub(crate) fn list(
    cx: &Ctx,
    limit: Option<usize>,
    since: Option<String>,
    term: Option<String>,
) -> Result<PublicRooms, ApiError> {
    let term = term.map(|t| t.to_lowercase());
    let mut entries = Vec::new();
    for room in cx.engine.directory.public_rooms()? {
        let Ok(room) = RoomId::parse(room.as_str()) else { continue };
        let e = entry(cx, &room)?;
        if let Some(t) = &term {
            let hay = [e.name.as_deref(), e.topic.as_deref(), e.canonical_alias.as_deref(), Some(e.room_id.as_str())]
                .into_iter()
                .flatten()
                .any(|v| v.to_lowercase().contains(t));
            if !hay {
                continue;
            }
        }
        entries.push(e);
    }
    entries.sort_by(|a, b| {
        b.num_joined_members.cmp(&a.num_joined_members).then(a.room_id.as_str().cmp(b.room_id.as_str()))
    });
    let total = entries.len();
    let offset = match since {
        Some(token) => token
            .strip_prefix('p')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid_param("bad since token"))?,
        None => 0,
    };
    let limit = limit.unwrap_or(100).clamp(1, 500);
    let chunk: Vec<PublicRoom> = entries.into_iter().skip(offset).take(limit).collect();
    Ok(PublicRooms {
        chunk,
        total_room_count_estimate: total,
        next_batch: (offset + limit < total).then(|| format!("p{}", offset + limit)),
        prev_batch: (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit))),
    })
}

/// Another server's directory, asked over federation (`/_matrix/federation/v1/publicRooms`).
async fn remote(cx: &Ctx, server: &str, body: &PublicRoomsBody) -> Result<crate::http_util::Resp, ApiError> {
    let body = serde_json::to_value(body).map_err(|e| ApiError::unknown(e.to_string()))?;
    let resp = cx
        .engine
        .remote(server)
        .json(http::Method::POST, "/_matrix/federation/v1/publicRooms", Some(&body))
        .await
        .map_err(|e| ApiError::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("{server}'s directory: {e}")))?;
    if !resp.status.is_success() {
        return Err(ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server} answered {}", resp.status),
        ));
    }
    Ok(ok_json(&resp.json))
}

fn other_server(cx: &Ctx, req: &Req) -> Option<String> {
    query_param(req, "server").filter(|s| s != cx.engine.server_name.as_str())
}

/// GET /publicRooms
pub fn get_public_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let limit = query_param(&req, "limit").and_then(|l| l.parse::<usize>().ok());
        if let Some(server) = other_server(&cx, &req) {
            require_user(&cx, &req)?;
            let body = PublicRoomsBody {
                limit: limit.map(|l| l as u64),
                since: query_param(&req, "since"),
                ..Default::default()
            };
            return remote(&cx, &server, &body).await;
        }
        Ok(ok_json(&list(&cx, limit, query_param(&req, "since"), None)?))
    })
}

/// POST /publicRooms
pub fn post_public_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let body: PublicRoomsBody = parse_json_or_empty(&req.body)?;
        if let Some(server) = other_server(&cx, &req) {
            return remote(&cx, &server, &body).await;
        }
        let (limit, term) = (body.limit(), body.term());
        Ok(ok_json(&list(&cx, limit, body.since, term)?))
    })
}

/// GET and POST /_matrix/federation/v1/publicRooms (another server asking our directory)
pub fn federation_public_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        crate::federation::require_server(&cx, &req).await?;
        let body: PublicRoomsBody = parse_json_or_empty(&req.body)?;
        let limit = body.limit().or_else(|| query_param(&req, "limit").and_then(|l| l.parse().ok()));
        let term = body.term();
        let since = body.since.or_else(|| query_param(&req, "since"));
        Ok(ok_json(&list(&cx, limit, since, term)?))
    })
}
