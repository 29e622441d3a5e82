//! Redactions, edits, reactions, threads.
//!
//! Client-Server API §"Redactions" (`PUT /rooms/{roomId}/redact/{eventId}/{txnId}`:
//! anyone may redact their own events; redacting another user's needs the
//! `redact` power level), §"Event replacements" (only the original sender may
//! edit), §"Event annotations and reactions" (a second identical annotation
//! by the same user is refused with `M_DUPLICATE_ANNOTATION`),
//! §"Relationships" (`GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`
//! with pagination and `recurse`) and §"Threading" (`GET /rooms/{roomId}/threads`).

use http::StatusCode;
use myelin_engine::rooms::{ArcPdu, NewEvent, relations::Relation};
use ruma::{EventId, RoomId, events::TimelineEventType};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{Authed, query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`; the body may be left out.
#[derive(Deserialize)]
pub(crate) struct RedactBody {
    reason: Option<String>,
}

/// The answer to a redaction: the event that redacts.
#[derive(Serialize)]
struct Sent<T: Serialize> {
    event_id: T,
}

/// A page of `/relations` or `/threads`.
#[derive(Serialize)]
struct Chunk {
    chunk: Vec<JsonValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recursion_depth: Option<u32>,
}

use myelin_engine::util::now_ms;

fn room_and_event(req: &Req) -> Result<(ruma::OwnedRoomId, ruma::OwnedEventId), ApiError> {
    let room = RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))?;
    let event =
        EventId::parse(req.param("event_id")?).map_err(|e| ApiError::invalid_param(format!("event id: {e}")))?;
    Ok((room, event))
}

fn joined(cx: &Ctx, me: &Authed, room: &RoomId) -> Result<(), ApiError> {
    if cx.engine.rooms.membership(me.user_id.as_str(), room)?.map(|m| m.membership).as_deref() != Some("join") {
        return Err(ApiError::forbidden(format!("you are not joined to {room}")));
    }
    Ok(())
}

/// A visible event of `room` by id, or 404.
fn event_in_room(cx: &Ctx, me: &Authed, room: &RoomId, id: &EventId) -> Result<(ArcPdu, u64, i64), ApiError> {
    let not_found = || ApiError::not_found(format!("event {id} not found"));
    let pdu = cx.engine.rooms.pdu(id)?.ok_or_else(not_found)?;
    let meta = cx.engine.rooms.meta(id)?.ok_or_else(not_found)?;
    if pdu.room_id != room
        || meta.count <= 0
        || meta.flags != 0
        || !cx.engine.rooms.visible_to(&me.user_id, &pdu, meta.count)?
    {
        return Err(not_found());
    }
    let short = cx.engine.rooms.short_event(id)?.ok_or_else(not_found)?;
    Ok((pdu, short, meta.count))
}

/// PUT /rooms/{roomId}/redact/{eventId}/{txnId}
pub fn redact(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let (room, target) = room_and_event(&req)?;
        let txn = format!("redact/{}", req.param("txn_id")?);
        // Held until the answer: a concurrent copy waits, then finds the redaction.
        let _claim = cx
            .engine
            .users
            .claim_txn(me.user_id.as_str(), &me.device_id, &txn)
            .await
            .ok_or_else(|| ApiError::busy("too many transactions in flight"))?;
        if let Some(event_id) = cx.engine.users.txn_event(me.user_id.as_str(), &me.device_id, &txn)? {
            return Ok(ok_json(&Sent { event_id }));
        }
        joined(&cx, &me, &room)?;
        let (pdu, _, _) = event_in_room(&cx, &me, &room, &target)?;
        if pdu.sender != me.user_id {
            let have = super::power::user_power(&cx, &room, me.user_id.as_str())?;
            let need = super::power::threshold(&cx, &room, "redact", 50)?;
            if have < need {
                return Err(ApiError::forbidden(format!(
                    "redacting others' events needs power level {need}; you have {have}"
                )));
            }
        }
        let body: RedactBody = parse_json_or_empty(&req.body)?;
        let mut content = json!({});
        if let Some(reason) = body.reason {
            content["reason"] = json!(reason);
        }
        let event = NewEvent {
            kind: TimelineEventType::RoomRedaction,
            state_key: None,
            content,
            redacts: Some(target),
            origin_server_ts: crate::auth::appservice_ts(&me, &req)?,
        };
        let sent = cx.engine.rooms.send_for_txn(&me.user_id, &room, event, Some((&me.device_id, &txn))).await?;
        Ok(ok_json(&Sent { event_id: &sent.event_id }))
    })
}

/// Checks `m.relates_to` of a message being sent: edits by the original sender only,
/// no duplicate reactions.
pub fn check_relation(cx: &Ctx, me: &Authed, room: &RoomId, content: &JsonValue) -> Result<(), ApiError> {
    let Some(rel) = content.get("m.relates_to") else { return Ok(()) };
    let (Some(rel_type), Some(target)) = (rel["rel_type"].as_str(), rel["event_id"].as_str()) else { return Ok(()) };
    let target = EventId::parse(target).map_err(|e| ApiError::invalid_param(format!("m.relates_to.event_id: {e}")))?;
    match rel_type {
        "m.replace" => {
            let (pdu, _, _) = event_in_room(cx, me, room, &target)?;
            if pdu.sender != me.user_id {
                return Err(ApiError::forbidden("only the original sender may edit an event"));
            }
            if pdu.state_key.is_some() {
                return Err(ApiError::invalid_param("state events cannot be edited"));
            }
        }
        "m.annotation" => {
            let key = rel["key"].as_str().ok_or_else(|| ApiError::invalid_param("an annotation needs a `key`"))?;
            let (_, short, _) = event_in_room(cx, me, room, &target)?;
            if cx.engine.rooms.has_annotation(short, me.user_id.as_str(), key)? {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "M_DUPLICATE_ANNOTATION",
                    "you already reacted with this key",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

fn serve(cx: &Ctx, me: &Authed, pdu: &ArcPdu, now: u64) -> JsonValue {
    cx.engine
        .rooms
        .format_for(pdu, true, now, &me.user_id, Some(&me.device_id))
        .unwrap_or_else(|_| myelin_engine::events::client_event(pdu, true, now))
}

/// GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]] (v1)
pub fn relations(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let (room, target) = room_and_event(&req)?;
        let (_, short, _) = event_in_room(&cx, &me, &room, &target)?;
        let rel_type = req.param("rel_type").ok().map(str::to_owned);
        let event_type = req.param("event_type").ok().map(str::to_owned);
        let limit = query_param(&req, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(50).clamp(1, 500);
        let forward = query_param(&req, "dir").as_deref() == Some("f");
        let recurse = query_param(&req, "recurse").as_deref() == Some("true");
        let parse = |t: Option<String>| -> Result<Option<i64>, ApiError> {
            t.map(|t| {
                t.trim_start_matches('r').parse::<i64>().map_err(|_| ApiError::invalid_param("bad pagination token"))
            })
            .transpose()
        };
        let (from, to) = (parse(query_param(&req, "from"))?, parse(query_param(&req, "to"))?);

        // Children (and, with recurse, their children up to 3 levels), by timeline position.
        let mut found: Vec<(i64, Relation)> = Vec::new();
        let mut frontier = vec![short];
        let depth = if recurse { 3 } else { 1 };
        for _ in 0..depth {
            let mut next = Vec::new();
            for parent in frontier {
                for (count, r) in cx.engine.rooms.relations_of(parent)? {
                    next.push(r.child);
                    found.push((count, r));
                }
            }
            frontier = next;
        }
        found.retain(|(_, r)| rel_type.as_ref().is_none_or(|t| *t == r.rel_type));
        found.sort_by_key(|(c, _)| *c);
        if !forward {
            found.reverse();
        }
        let now = now_ms();
        let mut chunk = Vec::new();
        let mut last = None;
        for (count, r) in found {
            let in_range = match (forward, from, to) {
                (true, Some(f), _) if count <= f => false,
                (false, Some(f), _) if count >= f => false,
                (true, _, Some(t)) if count > t => false,
                (false, _, Some(t)) if count < t => false,
                _ => true,
            };
            if !in_range {
                continue;
            }
            let Some(pdu) = cx.engine.rooms.pdu_by_short(r.child)? else { continue };
            if event_type.as_ref().is_some_and(|t| *t != pdu.kind.to_string()) {
                continue;
            }
            let Some(meta) = cx.engine.rooms.meta(&pdu.event_id)? else { continue };
            if !cx.engine.rooms.visible_to(&me.user_id, &pdu, meta.count)? {
                continue;
            }
            if chunk.len() == limit {
                break;
            }
            chunk.push(serve(&cx, &me, &pdu, now));
            last = Some(count);
        }
        let next_batch = last.filter(|_| chunk.len() == limit).map(|last| format!("r{last}"));
        Ok(ok_json(&Chunk { chunk, next_batch, recursion_depth: recurse.then_some(depth) }))
    })
}

/// GET /rooms/{roomId}/threads (v1)
pub fn threads(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        joined(&cx, &me, &room)?;
        let participated_only = query_param(&req, "include").as_deref() == Some("participated");
        let limit = query_param(&req, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(50).clamp(1, 500);
        let from = query_param(&req, "from").and_then(|f| f.parse::<usize>().ok()).unwrap_or(0);
        let room_short = cx.engine.rooms.short_room(&room)?.ok_or_else(|| ApiError::not_found("unknown room"))?;
        let now = now_ms();
        let mut chunk = Vec::new();
        let mut seen = 0;
        for (_, root) in cx.engine.rooms.threads_of(room_short)? {
            let Some(pdu) = cx.engine.rooms.pdu_by_short(root)? else { continue };
            let Some(meta) = cx.engine.rooms.meta(&pdu.event_id)? else { continue };
            if !cx.engine.rooms.visible_to(&me.user_id, &pdu, meta.count)? {
                continue;
            }
            let served = serve(&cx, &me, &pdu, now);
            if participated_only && served["unsigned"]["m.relations"]["m.thread"]["current_user_participated"] != true {
                continue;
            }
            seen += 1;
            if seen <= from {
                continue;
            }
            chunk.push(served);
            if chunk.len() == limit {
                break;
            }
        }
        let next_batch = (chunk.len() == limit).then(|| (from + limit).to_string());
        Ok(ok_json(&Chunk { chunk, next_batch, recursion_depth: None }))
    })
}
