//! Typing, receipts, read markers and presence.
//!
//! Client-Server API §"Typing Notifications" (`PUT /rooms/{roomId}/typing/{userId}`),
//! §"Receipts" (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`, types
//! `m.read`, `m.read.private`, `m.fully_read`, optional `thread_id`),
//! §"Fully read markers" (`POST /rooms/{roomId}/read_markers`), §"Presence"
//! (`GET`/`PUT /presence/{userId}/status`).

use std::time::Duration;

use ruma::{EventId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{Authed, require_self, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn joined_room(cx: &Ctx, me: &Authed, req: &Req) -> Result<ruma::OwnedRoomId, ApiError> {
    let room = RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if cx.engine.rooms.membership(me.user_id.as_str(), &room)?.map(|m| m.membership).as_deref() != Some("join") {
        return Err(ApiError::forbidden(format!("you are not joined to {room}")));
    }
    Ok(room)
}

/// Queues an EDU for every other server with members in the room.
fn remote_servers(cx: &Ctx, room: &RoomId, edu: JsonValue) {
    if let Ok(servers) = cx.engine.rooms.joined_servers_now(room) {
        for server in servers.iter().filter(|s| s.as_str() != cx.engine.server_name.as_str()) {
            cx.engine.federation.queue_edu(server, edu.clone());
        }
    }
}

/// PUT /rooms/{roomId}/typing/{userId}
pub fn typing(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let room = joined_room(&cx, &me, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let typing = body["typing"].as_bool().ok_or_else(|| ApiError::bad_json("`typing` must be a boolean"))?;
        let timeout = Duration::from_millis(body["timeout"].as_u64().unwrap_or(30_000));
        cx.engine.ephemeral.set_typing(&room, &me.user_id, typing, timeout);
        let edu =
            json!({ "edu_type": "m.typing", "content": { "room_id": room, "user_id": me.user_id, "typing": typing } });
        remote_servers(&cx, &room, edu);
        Ok(ok_json(&json!({})))
    })
}

async fn mark(
    cx: &Ctx,
    me: &Authed,
    room: &RoomId,
    kind: &str,
    event: &str,
    thread: Option<&str>,
) -> Result<(), ApiError> {
    let id = EventId::parse(event).map_err(|e| ApiError::invalid_param(format!("event id: {e}")))?;
    let pdu = cx.engine.rooms.pdu(&id)?.ok_or_else(|| ApiError::not_found(format!("event {id} not found")))?;
    if pdu.room_id != room {
        return Err(ApiError::not_found(format!("event {id} is not in {room}")));
    }
    match kind {
        "m.read" | "m.read.private" => {
            cx.engine.set_receipt(room, &me.user_id, kind, thread, id.as_str()).await?;
            if kind == "m.read" {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let mut data = json!({ "ts": ts });
                if let Some(t) = thread {
                    data["thread_id"] = json!(t);
                }
                let content = json!({ room.as_str(): { "m.read": { me.user_id.as_str(): { "event_ids": [id], "data": data } } } });
                remote_servers(cx, room, json!({ "edu_type": "m.receipt", "content": content }));
            }
        }
        "m.fully_read" => {
            let content =
                serde_json::to_vec(&json!({ "event_id": id })).map_err(|e| ApiError::unknown(e.to_string()))?;
            cx.engine.users.set_account_data(me.user_id.as_str(), Some(room.as_str()), "m.fully_read", content).await?;
        }
        other => return Err(ApiError::invalid_param(format!("unknown receipt type {other}"))),
    }
    Ok(())
}

/// POST /rooms/{roomId}/receipt/{receiptType}/{eventId}
pub fn receipt(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = joined_room(&cx, &me, &req)?;
        let body: JsonValue = if req.body.is_empty() { json!({}) } else { parse_json(&req.body)? };
        let thread = body["thread_id"].as_str();
        mark(&cx, &me, &room, req.param("receipt_type")?, req.param("event_id")?, thread).await?;
        Ok(ok_json(&json!({})))
    })
}

/// POST /rooms/{roomId}/read_markers
pub fn read_markers(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = joined_room(&cx, &me, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        for kind in ["m.fully_read", "m.read", "m.read.private"] {
            if let Some(event) = body[kind].as_str() {
                mark(&cx, &me, &room, kind, event, None).await?;
            }
        }
        Ok(ok_json(&json!({})))
    })
}

/// GET /presence/{userId}/status
pub fn get_presence(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        if !cx.engine.config.presence.enabled {
            return Err(ApiError::forbidden("presence is disabled on this server"));
        }
        let user = UserId::parse(req.param("user_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        // Remote users' presence is what their servers pushed to us (`m.presence` EDUs).
        if user.server_name() == cx.engine.server_name && !cx.engine.users.exists(&user)? {
            return Err(ApiError::not_found("no such user"));
        }
        Ok(ok_json(&match cx.engine.ephemeral.presence(&user) {
            Some(p) => json!({
                "presence": p.state,
                "status_msg": p.status_msg,
                "last_active_ago": p.since.elapsed().as_millis() as u64,
                "currently_active": p.state == "online",
            }),
            None => json!({ "presence": "offline" }),
        }))
    })
}

/// PUT /presence/{userId}/status
pub fn put_presence(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        if !cx.engine.config.presence.enabled {
            return Err(ApiError::forbidden("presence is disabled on this server"));
        }
        let body: JsonValue = parse_json(&req.body)?;
        let state = body["presence"].as_str().ok_or_else(|| ApiError::bad_json("`presence` is required"))?;
        if !matches!(state, "online" | "offline" | "unavailable") {
            return Err(ApiError::invalid_param("presence must be online, offline or unavailable"));
        }
        let status_msg = body["status_msg"].as_str().map(str::to_owned);
        cx.engine.ephemeral.set_presence(&me.user_id, state, status_msg.clone());
        // Servers sharing a room with the user learn it through an `m.presence` EDU.
        let mut item = json!({ "user_id": me.user_id, "presence": state, "last_active_ago": 0, "currently_active": state == "online" });
        if let Some(m) = status_msg {
            item["status_msg"] = json!(m);
        }
        let edu = json!({ "edu_type": "m.presence", "content": { "push": [item] } });
        for server in myelin_engine::federation::e2ee::servers_sharing_rooms(&cx.engine, &me.user_id)? {
            cx.engine.federation.queue_edu(&server, edu.clone());
        }
        Ok(ok_json(&json!({})))
    })
}
