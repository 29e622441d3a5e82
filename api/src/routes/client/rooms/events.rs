//! Sending and reading events and state (Client-Server API §"Sending events to a room",
//! §"Getting events for a room"): send, state, event, members.

#[allow(unused_imports)]
use super::*;

/// PUT /rooms/{roomId}/send/{eventType}/{txnId}
pub fn send(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let room = room_param(&req)?;
        let kind = req.param("event_type")?.to_owned();
        let txn = req.param("txn_id")?.to_owned();
        // Held until the answer: a concurrent copy waits, then finds the event.
        let _claim = cx
            .engine
            .users
            .claim_txn(me.user_id.as_str(), &me.device_id, &txn)
            .await
            .ok_or_else(|| ApiError::busy("too many transactions in flight"))?;
        if let Some(event_id) = cx.engine.users.txn_event(me.user_id.as_str(), &me.device_id, &txn)? {
            return Ok(ok_json(&crate::response::EventIdAnswer { event_id: event_id.as_str() }));
        }
        let content: JsonValue = parse_json(&req.body)?;
        if !content.is_object() {
            return Err(ApiError::bad_json("event content must be a JSON object"));
        }
        super::super::relations::check_relation(&cx, &me, &room, &content)?;
        let event = NewEvent::message(TimelineEventType::from(kind), content).at(appservice_ts(&me, &req)?);
        let pdu = cx.engine.rooms.send_for_txn(&me.user_id, &room, event, Some((&me.device_id, &txn))).await?;
        if me.appservice.is_none() {
            cx.engine.presence_active(&me.user_id);
        }
        Ok(ok_json(&crate::response::EventIdAnswer { event_id: pdu.event_id.as_str() }))
    })
}

/// PUT /rooms/{roomId}/state/{eventType}/{stateKey}
pub fn put_state(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
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
            .send(
                &me.user_id,
                &room,
                NewEvent::state(TimelineEventType::from(kind.as_str()), key, content).at(appservice_ts(&me, &req)?),
            )
            .await?;
        if kind == "m.room.guest_access" {
            cx.engine.enforce_guest_access(&room).await?;
        }
        Ok(ok_json(&crate::response::EventIdAnswer { event_id: pdu.event_id.as_str() }))
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
pub(super) fn readable_event(
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
        Ok(ok_json(&MembersAnswer { chunk }))
    })
}

/// GET /rooms/{roomId}/joined_members
pub fn joined_members(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
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
        // An appservice may list a room one of its users is joined to without
        // being joined as the user it acts as (bridge bots check portals that
        // way), as Synapse allows.
        let interested = me
            .appservice
            .as_ref()
            .is_some_and(|a| joined.keys().any(|u| a.owns_user(u) || u.as_str() == a.sender.as_str()));
        if !interested {
            require_joined(&cx, &me, &room)?;
        }
        Ok(ok_json(&JoinedMembersAnswer { joined }))
    })
}

/// `/members`.
#[derive(serde::Serialize)]
struct MembersAnswer<A> {
    chunk: A,
}

/// `/joined_members`.
#[derive(serde::Serialize)]
struct JoinedMembersAnswer<A> {
    joined: A,
}
