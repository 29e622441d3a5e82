//! Rooms over the Client-Server API.
//!
//! §"Creation" (`/createRoom`), §"Room membership" (`/join`, `/invite`,
//! `/leave`, `/kick`, `/ban`, `/unban`, `/forget`, `/joined_rooms`),
//! §"Sending events to a room" (`/send/{type}/{txnId}` idempotent per device
//! and transaction, `/state/{type}/{stateKey}`), §"Getting events for a room"
//! (`/event`, `/state`, `/members`, `/joined_members`, `/messages`).
//!
//! Only rooms this server knows are reachable: joining or inviting across
//! servers needs the federation issue. Reading requires being joined (or,
//! for `/messages` and `/event`, having been a member), and every event
//! served passes the room's history visibility at that event.

use myelin_engine::{
    events::client_event,
    rooms::{CreateRoom, NewEvent, Preset},
};
use myelin_storage::Direction;
use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::TimelineEventType};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{Authed, query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An event as this user sees it: redacted, or with bundled relations.
fn serve(cx: &Ctx, me: &Authed, pdu: &myelin_engine::rooms::ArcPdu, with_room_id: bool, now: u64) -> JsonValue {
    cx.engine.rooms.format(pdu, with_room_id, now, &me.user_id).unwrap_or_else(|e| {
        tracing::warn!(event_id = %pdu.event_id, error = %e, "serving an event without its relations");
        client_event(pdu, with_room_id, now)
    })
}

fn room_param(req: &Req) -> Result<OwnedRoomId, ApiError> {
    RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))
}

fn membership_of(cx: &Ctx, user: &UserId, room: &RoomId) -> Result<Option<String>, ApiError> {
    Ok(cx.engine.rooms.membership(user.as_str(), room)?.map(|m| m.membership))
}

fn require_joined(cx: &Ctx, me: &Authed, room: &RoomId) -> Result<(), ApiError> {
    if membership_of(cx, &me.user_id, room)?.as_deref() != Some("join") {
        return Err(ApiError::forbidden(format!("you are not joined to {room}")));
    }
    Ok(())
}

/// The highest timeline position the user may read: everything while joined, up to a leave.
fn readable_upto(cx: &Ctx, me: &Authed, room: &RoomId) -> Result<i64, ApiError> {
    match cx.engine.rooms.membership(me.user_id.as_str(), room)? {
        Some(m) if m.membership == "join" => Ok(i64::MAX),
        Some(m) if m.membership == "leave" || m.membership == "ban" => Ok(m.count),
        _ => Err(ApiError::forbidden(format!("you are not a member of {room}"))),
    }
}

#[derive(Deserialize, Default)]
struct StateEventBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    content: JsonValue,
}

#[derive(Deserialize, Default)]
struct CreateRoomBody {
    visibility: Option<String>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<OwnedUserId>,
    room_version: Option<String>,
    preset: Option<String>,
    #[serde(default)]
    is_direct: bool,
    #[serde(default)]
    initial_state: Vec<StateEventBody>,
    power_level_content_override: Option<JsonValue>,
    creation_content: Option<JsonValue>,
}

/// POST /_matrix/client/v3/createRoom
pub fn create_room(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let body: CreateRoomBody = if req.body.is_empty() { CreateRoomBody::default() } else { parse_json(&req.body)? };
        let preset = match body.preset.as_deref() {
            None => None,
            Some("private_chat") => Some(Preset::PrivateChat),
            Some("trusted_private_chat") => Some(Preset::TrustedPrivateChat),
            Some("public_chat") => Some(Preset::PublicChat),
            Some(other) => return Err(ApiError::invalid_param(format!("unknown preset {other}"))),
        };
        let version = match body.room_version.as_deref() {
            Some(v) => Some(RoomVersionId::try_from(v).map_err(|e| ApiError::invalid_param(e.to_string()))?),
            None => None,
        };
        let alias = match &body.room_alias_name {
            Some(name) => {
                let alias = super::directory::local_alias(&cx, &format!("#{name}:{}", cx.engine.server_name))
                    .map_err(|e| ApiError::invalid_param(e.message))?;
                if cx.engine.directory.resolve(alias.as_str())?.is_some() {
                    return Err(ApiError::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_ROOM_IN_USE",
                        format!("{alias} is taken"),
                    ));
                }
                Some(alias)
            }
            None => None,
        };
        if body.initial_state.iter().any(|e| e.kind == "m.room.create" || e.kind == "m.room.member") {
            return Err(ApiError::invalid_param("initial_state may not contain m.room.create or m.room.member events"));
        }
        // Users of other servers are invited after creation, each through their server.
        let (local_invites, remote_invites): (Vec<OwnedUserId>, Vec<OwnedUserId>) =
            body.invite.iter().cloned().partition(|u| u.server_name() == cx.engine.server_name);
        let request = CreateRoom {
            version,
            preset,
            public: body.visibility.as_deref() == Some("public"),
            name: body.name,
            topic: body.topic,
            alias: alias.clone(),
            invite: local_invites,
            is_direct: body.is_direct,
            initial_state: body
                .initial_state
                .into_iter()
                .map(|s| NewEvent::state(TimelineEventType::from(s.kind), s.state_key, s.content))
                .collect(),
            power_level_content_override: body.power_level_content_override,
            creation_content: body.creation_content,
            creator_profile: cx.engine.users.profile(me.user_id.as_str())?.map(|p| {
                let mut v = json!({});
                if let Some(d) = p.displayname {
                    v["displayname"] = json!(d);
                }
                if let Some(a) = p.avatar_url {
                    v["avatar_url"] = json!(a);
                }
                v
            }),
        };
        let publish = request.public;
        let room_id = cx.engine.rooms.create_room(&me.user_id, request).await?;
        if publish {
            cx.engine.directory.set_public(room_id.as_str(), true).await?;
        }
        if let Some(alias) = alias
            && !cx.engine.directory.create(alias.as_str(), room_id.as_str(), me.user_id.as_str()).await?
        {
            return Err(ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "M_ROOM_IN_USE",
                format!("{alias} was taken meanwhile; {room_id} has no alias"),
            ));
        }
        for invitee in &remote_invites {
            let mut content = json!({ "membership": "invite" });
            if body.is_direct {
                content["is_direct"] = json!(true);
            }
            // The room exists now: a failed remote invite is reported in the log, not as a
            // failed creation (the client can invite again).
            if let Err(e) = myelin_engine::federation::membership::invite_remote(
                &cx.engine,
                &me.user_id,
                &room_id,
                invitee,
                content,
            )
            .await
            {
                tracing::warn!(room_id = %room_id, invitee = %invitee, error = %e, "invite during room creation failed");
            }
        }
        Ok(ok_json(&json!({ "room_id": room_id })))
    })
}

async fn set_membership(
    cx: &Ctx,
    me: &Authed,
    room: &RoomId,
    target: &UserId,
    membership: &str,
    reason: Option<String>,
) -> Result<String, ApiError> {
    if matches!(membership, "join" | "invite" | "knock") && cx.engine.rooms.is_shutdown(room)? {
        return Err(ApiError::forbidden(format!("{room} has been shut down on this server")));
    }
    let mut content = json!({ "membership": membership });
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    // Joins and invites carry the target's profile, so members see names and avatars.
    if matches!(membership, "join" | "invite")
        && let Some(profile) = cx.engine.users.profile(target.as_str())?
    {
        if let Some(name) = profile.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(avatar) = profile.avatar_url {
            content["avatar_url"] = json!(avatar);
        }
    }
    if membership == "invite" && target.server_name() != cx.engine.server_name {
        return myelin_engine::federation::membership::invite_remote(&cx.engine, &me.user_id, room, target, content)
            .await
            .map_err(Into::into);
    }
    let event = NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content);
    let pdu = cx.engine.rooms.send(&me.user_id, room, event).await?;
    Ok(pdu.event_id.to_string())
}

/// A room id, or an alias resolved (here or on its server) to a room id and the
/// servers that can be asked about it.
async fn room_or_alias(cx: &Ctx, target: &str) -> Result<(ruma::OwnedRoomId, Vec<String>), ApiError> {
    if target.starts_with('#') {
        super::directory::resolve_alias(cx, target).await
    } else {
        Ok((RoomId::parse(target).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))?, Vec::new()))
    }
}

/// POST /_matrix/client/v3/rooms/{roomId}/join and /join/{roomIdOrAlias}
pub fn join(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let (room, alias_servers) = room_or_alias(&cx, req.param("room_id")?).await?;
        if cx.engine.rooms.is_shutdown(&room)? {
            return Err(ApiError::forbidden(format!("{room} has been shut down on this server")));
        }
        let known = cx.engine.rooms.short_room(&room)?.is_some() && cx.engine.rooms.room_version(&room).is_ok();
        if !known {
            let servers = servers_to_ask(&cx, &req, &me.user_id, &room, alias_servers)?;
            myelin_engine::federation::membership::join_remote(&cx.engine, &me.user_id, &room, &servers).await?;
            return Ok(ok_json(&json!({ "room_id": room })));
        }

        set_membership(&cx, &me, &room, &me.user_id.clone(), "join", None).await?;
        Ok(ok_json(&json!({ "room_id": room })))
    })
}

/// The servers to ask about a room this server does not hold: those the client
/// named (`via`, `server_name`), the alias's, the room id's, and the inviter's.
fn servers_to_ask(
    cx: &Ctx,
    req: &Req,
    me: &UserId,
    room: &RoomId,
    alias_servers: Vec<String>,
) -> Result<Vec<String>, ApiError> {
    let mut servers: Vec<String> = req
        .parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.strip_prefix("server_name=").or_else(|| p.strip_prefix("via=")))
        .filter_map(crate::http_util::percent_decode)
        .collect();
    servers.extend(alias_servers);
    if let Some((_, server)) = room.as_str().split_once(':') {
        servers.push(server.to_owned());
    }
    // Invited over federation: the inviter's server is in the room.
    if let Some(state) = cx.engine.rooms.invite_state(me, room)?
        && let Some(inviter) = state
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == me.as_str())
            .and_then(|e| e["sender"].as_str())
            .and_then(|s| UserId::parse(s).ok())
    {
        servers.insert(0, inviter.server_name().to_string());
    }
    servers.retain(|s| s != cx.engine.server_name.as_str());
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    if servers.is_empty() {
        return Err(ApiError::not_found(format!("room {room} is not known here; name a server to ask")));
    }
    Ok(servers)
}

/// POST /_matrix/client/v3/knock/{roomIdOrAlias}
///
/// Client-Server API §"Knocking on rooms": "knocking is a way of requesting
/// an invite to a room". A room held here gets the `knock` member event
/// directly; another server's room through `make_knock`/`send_knock`.
pub fn knock(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let (room, alias_servers) = room_or_alias(&cx, req.param("room_id")?).await?;
        let body: ReasonBody = if req.body.is_empty() { ReasonBody::default() } else { parse_json(&req.body)? };
        if cx.engine.rooms.is_local_room(&room) {
            set_membership(&cx, &me, &room, &me.user_id.clone(), "knock", body.reason).await?;
        } else {
            let servers = servers_to_ask(&cx, &req, &me.user_id, &room, alias_servers)?;
            myelin_engine::federation::membership::knock_remote(&cx.engine, &me.user_id, &room, &servers, body.reason)
                .await?;
        }
        Ok(ok_json(&json!({ "room_id": room })))
    })
}

#[derive(Deserialize)]
struct TargetBody {
    user_id: OwnedUserId,
    reason: Option<String>,
}

fn target_action(membership: &'static str) -> impl Fn(Ctx, Req) -> HandlerFuture {
    move |cx, req| {
        Box::pin(async move {
            let me = require_user(&cx, &req)?;
            cx.limiter.check(&me.user_id)?;
            let room = room_param(&req)?;
            let body: TargetBody = parse_json(&req.body)?;
            if membership == "unban" {
                if membership_of(&cx, &body.user_id, &room)?.as_deref() != Some("ban")
                    && body.user_id.server_name() == cx.engine.server_name
                {
                    return Err(ApiError::forbidden(format!("{} is not banned", body.user_id)));
                }
                set_membership(&cx, &me, &room, &body.user_id, "leave", body.reason).await?;
            } else {
                set_membership(&cx, &me, &room, &body.user_id, membership, body.reason).await?;
            }
            Ok(ok_json(&json!({})))
        })
    }
}

/// POST /rooms/{roomId}/invite
pub fn invite(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("invite")(cx, req)
}
/// POST /rooms/{roomId}/kick
pub fn kick(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("leave")(cx, req)
}
/// POST /rooms/{roomId}/ban
pub fn ban(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("ban")(cx, req)
}
/// POST /rooms/{roomId}/unban
pub fn unban(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("unban")(cx, req)
}

#[derive(Deserialize, Default)]
struct ReasonBody {
    reason: Option<String>,
}

/// POST /rooms/{roomId}/leave
pub fn leave(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let room = room_param(&req)?;
        let body: ReasonBody = if req.body.is_empty() { ReasonBody::default() } else { parse_json(&req.body)? };
        if membership_of(&cx, &me.user_id, &room)?.is_none() {
            return Err(ApiError::not_found(format!("you have no membership in {room}")));
        }
        if !cx.engine.rooms.is_local_room(&room)
            && let Some(state) = cx.engine.rooms.invite_state(&me.user_id, &room)?
        {
            // Declining an invite to a room this server does not hold: ask the
            // inviter's server, then the room id's server, to take the leave.
            let mut servers: Vec<String> = state
                .iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == me.user_id.as_str())
                .and_then(|e| e["sender"].as_str())
                .and_then(|s| UserId::parse(s).ok())
                .map(|u| vec![u.server_name().to_string()])
                .unwrap_or_default();
            if let Some((_, server)) = room.as_str().split_once(':') {
                servers.push(server.to_owned());
            }
            // Room ids carry no server from version 12 on: the servers of the state's senders
            // (the creator's, for a knock) are in the room too.
            for e in &state {
                if let Some(u) = e["sender"].as_str().and_then(|s| UserId::parse(s).ok()) {
                    servers.push(u.server_name().to_string());
                }
            }
            servers.retain(|s| s != cx.engine.server_name.as_str());
            let mut seen = std::collections::HashSet::new();
            servers.retain(|s| seen.insert(s.clone()));
            myelin_engine::federation::membership::leave_remote(&cx.engine, &me.user_id, &room, &servers).await?;
            return Ok(ok_json(&json!({})));
        }
        set_membership(&cx, &me, &room, &me.user_id.clone(), "leave", body.reason).await?;
        Ok(ok_json(&json!({})))
    })
}

/// POST /rooms/{roomId}/forget: nothing is kept per user beyond the membership, so this only checks it.
pub fn forget(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        if membership_of(&cx, &me.user_id, &room)?.as_deref() == Some("join") {
            return Err(ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "leave the room before forgetting it",
            ));
        }
        Ok(ok_json(&json!({})))
    })
}

/// GET /joined_rooms
pub fn joined_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let rooms: Vec<String> = cx
            .engine
            .rooms
            .rooms_of(me.user_id.as_str())?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| r.to_string())
            .collect();
        Ok(ok_json(&json!({ "joined_rooms": rooms })))
    })
}

/// PUT /rooms/{roomId}/send/{eventType}/{txnId}
pub fn send(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let room = room_param(&req)?;
        let kind = req.param("event_type")?.to_owned();
        let txn = req.param("txn_id")?.to_owned();
        if let Some(event_id) = cx.engine.users.txn_event(me.user_id.as_str(), &me.device_id, &txn)? {
            return Ok(ok_json(&json!({ "event_id": event_id })));
        }
        let content: JsonValue = parse_json(&req.body)?;
        if !content.is_object() {
            return Err(ApiError::bad_json("event content must be a JSON object"));
        }
        super::relations::check_relation(&cx, &me, &room, &content)?;
        let event = NewEvent::message(TimelineEventType::from(kind), content);
        let pdu = cx.engine.rooms.send_for_txn(&me.user_id, &room, event, Some((&me.device_id, &txn))).await?;
        Ok(ok_json(&json!({ "event_id": pdu.event_id })))
    })
}

/// PUT /rooms/{roomId}/state/{eventType}/{stateKey}
pub fn put_state(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let room = room_param(&req)?;
        let kind = req.param("event_type")?.to_owned();
        let key = req.param("state_key").map(str::to_owned).unwrap_or_default();
        let content: JsonValue = parse_json(&req.body)?;
        if !content.is_object() {
            return Err(ApiError::bad_json("event content must be a JSON object"));
        }
        if kind == "m.room.server_acl" {
            let acl = myelin_engine::acl::ServerAcl::from_content(&content).map_err(ApiError::bad_json)?;
            if !acl.allows(cx.engine.server_name.as_str()) {
                return Err(ApiError::invalid_param("this ACL would ban this server from the room"));
            }
        }
        let pdu = cx
            .engine
            .rooms
            .send(&me.user_id, &room, NewEvent::state(TimelineEventType::from(kind), key, content))
            .await?;
        Ok(ok_json(&json!({ "event_id": pdu.event_id })))
    })
}

/// GET /rooms/{roomId}/state/{eventType}/{stateKey}
pub fn get_state_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        require_joined(&cx, &me, &room)?;
        let key = req.param("state_key").map(str::to_owned).unwrap_or_default();
        let pdu = cx
            .engine
            .rooms
            .state_event(&room, req.param("event_type")?, &key)?
            .ok_or_else(|| ApiError::not_found("no such state event"))?;
        if query_param(&req, "format").as_deref() == Some("event") {
            return Ok(ok_json(&serve(&cx, &me, &pdu, true, now_ms())));
        }
        Ok(ok_json(&pdu.content_value()))
    })
}

/// GET /rooms/{roomId}/state
pub fn get_state(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        require_joined(&cx, &me, &room)?;
        let now = now_ms();
        let events: Vec<JsonValue> =
            cx.engine.rooms.current_state(&room)?.iter().map(|p| serve(&cx, &me, p, true, now)).collect();
        Ok(ok_json(&JsonValue::Array(events)))
    })
}

/// The path's `{eventId}` in `room`, if it is in the timeline `me` may read
/// (404 otherwise, so hidden events are not told apart from missing ones):
/// the event, its metadata and the last timeline position `me` may read.
fn readable_event(
    cx: &Ctx,
    me: &Authed,
    room: &RoomId,
    req: &Req,
) -> Result<(myelin_engine::rooms::ArcPdu, myelin_engine::rooms::tables::EventMeta, i64), ApiError> {
    let upto = readable_upto(cx, me, room)?;
    let event_id = EventId::parse(req.param("event_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    let not_found = || ApiError::not_found("event not found");
    let pdu = cx.engine.rooms.pdu(&event_id)?.ok_or_else(not_found)?;
    let meta = cx.engine.rooms.meta(&event_id)?.ok_or_else(not_found)?;
    if pdu.room_id != *room || meta.count <= 0 || meta.count > upto || meta.flags != 0 {
        return Err(not_found());
    }
    if !cx.engine.rooms.visible_to(&me.user_id, &pdu, meta.count)? {
        return Err(not_found());
    }
    Ok((pdu, meta, upto))
}

/// GET /rooms/{roomId}/event/{eventId}
pub fn get_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let (pdu, _, _) = readable_event(&cx, &me, &room, &req)?;
        Ok(ok_json(&serve(&cx, &me, &pdu, true, now_ms())))
    })
}

/// GET /rooms/{roomId}/members
pub fn members(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        readable_upto(&cx, &me, &room)?;
        let only = query_param(&req, "membership");
        let not = query_param(&req, "not_membership");
        let now = now_ms();
        // `at`: the state as of that pagination or sync token.
        let state = match query_param(&req, "at") {
            Some(token) => {
                let at = parse_position(&token)?;
                match cx.engine.rooms.timeline(&room, Some(at.saturating_add(1)), Direction::Reverse, 1)?.first() {
                    Some((_, p)) => {
                        let meta = cx
                            .engine
                            .rooms
                            .meta(&p.event_id)?
                            .ok_or_else(|| ApiError::unknown("event without metadata"))?;
                        cx.engine.rooms.state_at(meta.state_after)?
                    }
                    None => Vec::new(),
                }
            }
            None => cx.engine.rooms.current_state(&room)?,
        };
        let chunk: Vec<JsonValue> = state
            .iter()
            .filter(|p| p.kind == TimelineEventType::RoomMember)
            .filter(|p| {
                let m = p.content_value()["membership"].as_str().unwrap_or_default().to_owned();
                only.as_ref().is_none_or(|o| *o == m) && not.as_ref().is_none_or(|n| *n != m)
            })
            .map(|p| serve(&cx, &me, p, true, now))
            .collect();
        Ok(ok_json(&json!({ "chunk": chunk })))
    })
}

/// GET /rooms/{roomId}/joined_members
pub fn joined_members(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        require_joined(&cx, &me, &room)?;
        let mut joined = serde_json::Map::new();
        for p in cx.engine.rooms.current_state(&room)? {
            let content = p.content_value();
            if p.kind == TimelineEventType::RoomMember && content["membership"] == "join" {
                joined.insert(
                    p.state_key.clone().unwrap_or_default(),
                    json!({ "display_name": content.get("displayname"), "avatar_url": content.get("avatar_url") }),
                );
            }
        }
        Ok(ok_json(&json!({ "joined": joined })))
    })
}

fn parse_position(token: &str) -> Result<i64, ApiError> {
    let digits = token.strip_prefix('t').or_else(|| token.strip_prefix('s')).unwrap_or(token);
    // Sync tokens carry a typing serial after `_`; only the position matters here.
    let digits = digits.split('_').next().unwrap_or(digits);
    digits.parse::<i64>().map_err(|_| ApiError::invalid_param(format!("bad pagination token {token}")))
}

/// GET /rooms/{roomId}/messages
///
/// Tokens name a point between positions: `t<n>` (or a sync token `s<n>`)
/// sits after position `n`, so `dir=b` returns positions `<= n` and `dir=f`
/// positions `> n`.
pub fn messages(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let upto = readable_upto(&cx, &me, &room)?;
        let backwards = match query_param(&req, "dir").as_deref() {
            Some("b") => true,
            Some("f") => false,
            _ => return Err(ApiError::invalid_param("dir must be b or f")),
        };
        let limit = query_param(&req, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(10).clamp(1, 1000);
        let from = query_param(&req, "from").map(|t| parse_position(&t)).transpose()?;
        let to = query_param(&req, "to").map(|t| parse_position(&t)).transpose()?;
        let filter: JsonValue = match query_param(&req, "filter") {
            Some(f) => serde_json::from_str(&f).map_err(|e| ApiError::not_json(format!("filter: {e}")))?,
            None => JsonValue::Null,
        };
        let type_list = |key: &str| -> Option<Vec<String>> {
            filter[key].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        };
        let (types, not_types) = (type_list("types"), type_list("not_types").unwrap_or_default());
        let matches = |pattern: &str, kind: &str| match pattern.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => pattern == kind,
        };
        let wanted = |kind: &str| {
            !not_types.iter().any(|p| matches(p, kind))
                && types.as_ref().is_none_or(|t| t.iter().any(|p| matches(p, kind)))
        };
        let events = if backwards {
            let start = from.map_or(upto, |f| f.min(upto));
            let start = if start == i64::MAX { None } else { Some(start + 1) };
            let mut page = cx.engine.rooms.timeline(&room, start, Direction::Reverse, limit)?;
            // The start of our copy of a federated room: ask a server in it for older history.
            if page.len() < limit
                && myelin_engine::federation::backfill::backfill_room(&cx.engine, &room, limit - page.len())
                    .await
                    .unwrap_or(0)
                    > 0
            {
                page = cx.engine.rooms.timeline(&room, start, Direction::Reverse, limit)?;
            }
            page
        } else {
            cx.engine.rooms.timeline(&room, Some(from.unwrap_or(0)), Direction::Forward, limit)?
        };
        // The page boundary comes from what was read, before visibility hides anything.
        let full_page = events.len() == limit;
        let last_read = events.last().map(|(c, _)| *c);
        let events: Vec<_> = events
            .into_iter()
            .filter(|(c, _)| *c <= upto)
            .filter(|(c, _)| match (to, backwards) {
                (Some(t), true) => *c > t,
                (Some(t), false) => *c <= t,
                (None, _) => true,
            })
            .collect();
        let reached_to = events.len() < limit && to.is_some();
        let events: Vec<_> = events
            .into_iter()
            .filter(|(_, p)| wanted(&p.kind.to_string()))
            .filter(|(c, p)| cx.engine.rooms.visible_to(&me.user_id, p, *c).unwrap_or(false))
            .collect();
        let now = now_ms();
        let chunk: Vec<JsonValue> = events.iter().map(|(_, p)| serve(&cx, &me, p, true, now)).collect();
        let start = from.map_or_else(
            || if backwards { format!("s{}", cx.engine.stream.current()) } else { "t0".into() },
            |f| format!("t{f}"),
        );
        let mut body = json!({ "chunk": chunk, "start": start });
        if let Some(last) = last_read
            && full_page
            && !reached_to
        {
            body["end"] = json!(if backwards { format!("t{}", last - 1) } else { format!("t{last}") });
        }
        Ok(ok_json(&body))
    })
}

/// GET /rooms/{roomId}/context/{eventId}
///
/// §"GET /context": the event, up to `limit` visible events before and after
/// it, pagination tokens both ways, and the room state at the event.
pub fn context(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let (pdu, meta, upto) = readable_event(&cx, &me, &room, &req)?;
        let limit = query_param(&req, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(10).min(100);
        let half = limit / 2;
        let visible = |list: Vec<(i64, myelin_engine::rooms::ArcPdu)>| -> Vec<(i64, myelin_engine::rooms::ArcPdu)> {
            list.into_iter()
                .filter(|(c, p)| *c <= upto && cx.engine.rooms.visible_to(&me.user_id, p, *c).unwrap_or(false))
                .collect()
        };
        let before = visible(cx.engine.rooms.timeline(&room, Some(meta.count), Direction::Reverse, limit - half)?);
        let after = visible(cx.engine.rooms.timeline(&room, Some(meta.count), Direction::Forward, half)?);
        let now = now_ms();
        let start = before.last().map_or(meta.count - 1, |(c, _)| c - 1);
        let end = after.last().map_or(meta.count, |(c, _)| *c);
        let state: Vec<JsonValue> =
            cx.engine.rooms.state_at(meta.state_after)?.iter().map(|p| serve(&cx, &me, p, true, now)).collect();
        Ok(ok_json(&json!({
            "event": serve(&cx, &me, &pdu, true, now),
            "events_before": before.iter().map(|(_, p)| serve(&cx, &me, p, true, now)).collect::<Vec<_>>(),
            "events_after": after.iter().map(|(_, p)| serve(&cx, &me, p, true, now)).collect::<Vec<_>>(),
            "start": format!("t{start}"),
            "end": format!("t{end}"),
            "state": state,
        })))
    })
}

/// GET /rooms/{roomId}/timestamp_to_event (v1)
///
/// The visible event closest to `ts` in direction `dir`: the first at or
/// after it (`f`), or the last at or before it (`b`).
pub fn timestamp_to_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let upto = readable_upto(&cx, &me, &room)?;
        let ts = query_param(&req, "ts")
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| ApiError::missing_param("ts (milliseconds) is required"))?;
        let forward = match query_param(&req, "dir").as_deref() {
            Some("f") => true,
            Some("b") => false,
            _ => return Err(ApiError::invalid_param("dir must be f or b")),
        };
        let mut from = None;
        loop {
            let dir = if forward { Direction::Forward } else { Direction::Reverse };
            let page = cx.engine.rooms.timeline(&room, from, dir, 500)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(*last);
            for (count, pdu) in &page {
                let at = u64::from(pdu.origin_server_ts.0);
                let hit = if forward { at >= ts } else { at <= ts };
                if hit && *count <= upto && cx.engine.rooms.visible_to(&me.user_id, pdu, *count)? {
                    return Ok(ok_json(&json!({ "event_id": pdu.event_id, "origin_server_ts": at })));
                }
            }
        }
        Err(ApiError::not_found("no event found in that direction"))
    })
}
