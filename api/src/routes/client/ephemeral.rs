//! Typing, receipts, read markers and presence.
//!
//! Client-Server API §"Typing Notifications" (`PUT /rooms/{roomId}/typing/{userId}`),
//! §"Receipts" (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`, types
//! `m.read`, `m.read.private`, `m.fully_read`, optional `thread_id`),
//! §"Fully read markers" (`POST /rooms/{roomId}/read_markers`), §"Presence"
//! (`GET`/`PUT /presence/{userId}/status`).

use std::time::Duration;

use ruma::{EventId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{Authed, require_self, require_user},
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// `PUT /rooms/{roomId}/typing/{userId}`.
#[derive(Deserialize)]
struct TypingBody {
    typing: bool,
    /// Milliseconds; 30 s when left out.
    timeout: Option<u64>,
}

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
#[derive(Deserialize)]
struct ReceiptBody {
    thread_id: Option<String>,
}

/// `POST /rooms/{roomId}/read_markers`.
#[derive(Deserialize)]
struct ReadMarkersBody {
    #[serde(rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(rename = "m.read")]
    read: Option<String>,
    #[serde(rename = "m.read.private")]
    read_private: Option<String>,
}

/// `PUT /presence/{userId}/status`.
#[derive(Deserialize)]
struct PresenceBody {
    /// `online`, `offline` or `unavailable` (checked after parsing: `M_INVALID_PARAM`).
    presence: String,
    status_msg: Option<String>,
}

/// The answer to `GET /presence/{userId}/status` for a user whose presence is known.
#[derive(Serialize)]
struct PresenceKnown<'a> {
    presence: &'a str,
    status_msg: Option<&'a str>,
    last_active_ago: u64,
    currently_active: bool,
}

/// The answer to `GET /presence/{userId}/status` for a user never seen.
#[derive(Serialize)]
struct PresenceUnknown {
    presence: &'static str,
}

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
        let body: TypingBody = parse_json(&req.body)?;
        let typing = body.typing;
        let timeout = Duration::from_millis(body.timeout.unwrap_or(30_000));
        cx.engine.ephemeral.set_typing(&room, &me.user_id, typing, timeout);
        if typing && me.appservice.is_none() {
            cx.engine.presence_active(&me.user_id);
        }
        cx.engine.push_typing_to_appservices(&room);
        let edu =
            json!({ "edu_type": "m.typing", "content": { "room_id": room, "user_id": me.user_id, "typing": typing } });
        remote_servers(&cx, &room, edu);
        Ok(ok_empty())
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
                let ts = myelin_engine::util::now_ms();
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
    if me.appservice.is_none() {
        cx.engine.presence_active(&me.user_id);
    }
    Ok(())
}

/// POST /rooms/{roomId}/receipt/{receiptType}/{eventId}
pub fn receipt(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = joined_room(&cx, &me, &req)?;
        let body: ReceiptBody = parse_json_or_empty(&req.body)?;
        let thread = body.thread_id.as_deref();
        // Receipts are stored per thread: a thread is `main` or the root event of
        // one in this room, so made-up thread ids cannot grow them.
        if let Some(t) = thread
            && t != "main"
            && !cx.engine.rooms.holds_event_in(&room, t)
        {
            return Err(ApiError::invalid_param(
                "thread_id must be \"main\" or the root event of a thread in this room",
            ));
        }
        mark(&cx, &me, &room, req.param("receipt_type")?, req.param("event_id")?, thread).await?;
        Ok(ok_empty())
    })
}

/// POST /rooms/{roomId}/read_markers
pub fn read_markers(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = joined_room(&cx, &me, &req)?;
        let body: ReadMarkersBody = parse_json(&req.body)?;
        for (kind, event) in
            [("m.fully_read", body.fully_read), ("m.read", body.read), ("m.read.private", body.read_private)]
        {
            if let Some(event) = event {
                mark(&cx, &me, &room, kind, &event, None).await?;
            }
        }
        Ok(ok_empty())
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
        Ok(match cx.engine.ephemeral.presence(&user) {
            Some(p) => ok_json(&PresenceKnown {
                presence: &p.state,
                status_msg: p.status_msg.as_deref(),
                last_active_ago: p.last_active.elapsed().as_millis() as u64,
                currently_active: p.state == "online",
            }),
            None => ok_json(&PresenceUnknown { presence: "offline" }),
        })
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
        let body: PresenceBody = parse_json(&req.body)?;
        let state = body.presence.as_str();
        if !matches!(state, "online" | "offline" | "unavailable") {
            return Err(ApiError::invalid_param("presence must be online, offline or unavailable"));
        }
        cx.engine.set_user_presence(&me.user_id, state, body.status_msg)?;
        Ok(ok_empty())
    })
}
