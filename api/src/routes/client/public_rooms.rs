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
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

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
        Ok(ok_json(&json!({ "visibility": if public { "public" } else { "private" } })))
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
        let body: JsonValue = parse_json(&req.body)?;
        let public = match body["visibility"].as_str() {
            Some("public") => true,
            Some("private") => false,
            _ => return Err(ApiError::invalid_param("visibility must be public or private")),
        };
        let have = super::power::user_power(&cx, &room, me.user_id.as_str())?;
        let need = super::power::state_level(&cx, &room, "m.room.canonical_alias")?;
        if have < need {
            return Err(ApiError::forbidden(format!("publishing the room needs power level {need}")));
        }
        cx.engine.directory.set_public(room.as_str(), public).await?;
        Ok(ok_json(&json!({})))
    })
}

fn entry(cx: &Ctx, room: &RoomId) -> Result<JsonValue, ApiError> {
    let rooms = &cx.engine.rooms;
    let content = |kind: &str| -> Result<JsonValue, ApiError> {
        Ok(rooms.state_event(room, kind, "")?.map(|p| p.content_value()).unwrap_or(JsonValue::Null))
    };
    let joined = rooms
        .current_state(room)?
        .iter()
        .filter(|p| p.kind.to_string() == "m.room.member" && p.content_value()["membership"] == "join")
        .count();
    let mut e = json!({
        "room_id": room,
        "num_joined_members": joined,
        "world_readable": content("m.room.history_visibility")?["history_visibility"] == "world_readable",
        "guest_can_join": content("m.room.guest_access")?["guest_access"] == "can_join",
        "join_rule": content("m.room.join_rules")?["join_rule"].as_str().unwrap_or("invite"),
    });
    for (field, kind, key) in [
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("avatar_url", "m.room.avatar", "url"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
        ("room_type", "m.room.create", "type"),
    ] {
        if let Some(v) = content(kind)?[key].as_str().filter(|v| !v.is_empty()) {
            e[field] = json!(v);
        }
    }
    Ok(e)
}

pub(crate) fn list(
    cx: &Ctx,
    limit: Option<usize>,
    since: Option<String>,
    term: Option<String>,
) -> Result<JsonValue, ApiError> {
    let term = term.map(|t| t.to_lowercase());
    let mut entries = Vec::new();
    for room in cx.engine.directory.public_rooms()? {
        let Ok(room) = RoomId::parse(room.as_str()) else { continue };
        let e = entry(cx, &room)?;
        if let Some(t) = &term {
            let hay = ["name", "topic", "canonical_alias", "room_id"]
                .iter()
                .filter_map(|k| e[*k].as_str())
                .any(|v| v.to_lowercase().contains(t));
            if !hay {
                continue;
            }
        }
        entries.push(e);
    }
    entries.sort_by(|a, b| {
        b["num_joined_members"]
            .as_u64()
            .cmp(&a["num_joined_members"].as_u64())
            .then(a["room_id"].as_str().cmp(&b["room_id"].as_str()))
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
    let chunk: Vec<JsonValue> = entries.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if offset + limit < total {
        body["next_batch"] = json!(format!("p{}", offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(format!("p{}", offset.saturating_sub(limit)));
    }
    Ok(body)
}

/// Another server's directory, asked over federation (`/_matrix/federation/v1/publicRooms`).
async fn remote(cx: &Ctx, server: &str, body: JsonValue) -> Result<crate::http_util::Resp, ApiError> {
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
            return remote(&cx, &server, json!({ "limit": limit, "since": query_param(&req, "since") })).await;
        }
        Ok(ok_json(&list(&cx, limit, query_param(&req, "since"), None)?))
    })
}

/// POST /publicRooms
pub fn post_public_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let body: JsonValue = if req.body.is_empty() { json!({}) } else { parse_json(&req.body)? };
        if let Some(server) = other_server(&cx, &req) {
            return remote(&cx, &server, body).await;
        }
        let limit = body["limit"].as_u64().map(|l| l as usize);
        let since = body["since"].as_str().map(str::to_owned);
        let term = body["filter"]["generic_search_term"].as_str().map(str::to_owned);
        Ok(ok_json(&list(&cx, limit, since, term)?))
    })
}

/// GET and POST /_matrix/federation/v1/publicRooms (another server asking our directory)
pub fn federation_public_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        crate::federation::require_server(&cx, &req).await?;
        let body: JsonValue = if req.body.is_empty() { json!({}) } else { parse_json(&req.body)? };
        let limit = body["limit"]
            .as_u64()
            .map(|l| l as usize)
            .or_else(|| query_param(&req, "limit").and_then(|l| l.parse().ok()));
        let since = body["since"].as_str().map(str::to_owned).or_else(|| query_param(&req, "since"));
        let term = body["filter"]["generic_search_term"].as_str().map(str::to_owned);
        Ok(ok_json(&list(&cx, limit, since, term)?))
    })
}

/// GET /thirdparty/protocols (Client-Server API §"Third-party Networks"): the
/// protocols application services bridge to. Myelin has no application
/// service support yet, so there are none; directory UIs ask this first.
pub fn thirdparty_protocols(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        crate::auth::require_user(&cx, &req)?;
        Ok(ok_json(&serde_json::json!({})))
    })
}
