//! Federation endpoints about rooms: the membership handshakes (resident
//! side), transactions, invites, and event, state and history retrieval.
//!
//! Each handler authenticates the origin, parses the path, query and body
//! into typed values, calls one function of `myelin_engine::federation`
//! (where the Server-Server API's rules live: `serve` for what is
//! answered, `inbound` for transactions) and maps the result.

use myelin_engine::federation::{
    inbound::{self, Transaction},
    serve::{self, InviteRequest, MissingEventsRequest},
};
use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use super::require_server;
use crate::{
    auth::query_values,
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn room_param(req: &Req) -> Result<ruma::OwnedRoomId, ApiError> {
    RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))
}

fn event_param(req: &Req) -> Result<OwnedEventId, ApiError> {
    EventId::parse(req.param("event_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))
}

fn user_param(req: &Req) -> Result<ruma::OwnedUserId, ApiError> {
    UserId::parse(req.param("user_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))
}

/// `make_join`, `make_knock`, `make_leave`.
fn make_membership(cx: Ctx, req: Req, membership: &'static str) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let (room, user) = (room_param(&req)?, user_param(&req)?);
        let supported = query_values(&req, "ver");
        let made = serve::make_membership(&cx.engine, &origin, &room, &user, membership, &supported).await?;
        Ok(ok_json(&made))
    })
}

/// GET /_matrix/federation/v1/make_join/{roomId}/{userId}
pub fn make_join(cx: Ctx, req: Req) -> HandlerFuture {
    make_membership(cx, req, "join")
}

/// GET /_matrix/federation/v1/make_knock/{roomId}/{userId}
pub fn make_knock(cx: Ctx, req: Req) -> HandlerFuture {
    make_membership(cx, req, "knock")
}

/// GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
pub fn make_leave(cx: Ctx, req: Req) -> HandlerFuture {
    make_membership(cx, req, "leave")
}

/// The authenticated origin, room, event id and signed event of a `send_*` request.
async fn signed_request(cx: &Ctx, req: &Req) -> Result<(String, ruma::OwnedRoomId, String, JsonValue), ApiError> {
    let origin = require_server(cx, req).await?;
    let room = room_param(req)?;
    let event_id = req.param("event_id")?.to_owned();
    let body: serde_json::Map<String, JsonValue> = parse_json(&req.body)?;
    Ok((origin, room, event_id, JsonValue::Object(body)))
}

/// PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}
pub fn send_knock(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (origin, room, event_id, body) = signed_request(&cx, &req).await?;
        Ok(ok_json(&serve::accept_knock(&cx.engine, &origin, &room, &event_id, &body).await?))
    })
}

/// PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
pub fn send_join(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (origin, room, event_id, body) = signed_request(&cx, &req).await?;
        Ok(ok_json(&serve::accept_join(&cx.engine, &origin, &room, &event_id, &body).await?))
    })
}

/// PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}: the deprecated form, whose
/// answer is wrapped as `[200, body]` (§"Joining Rooms", v1).
pub fn send_join_v1(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (origin, room, event_id, body) = signed_request(&cx, &req).await?;
        let answer = serve::accept_join(&cx.engine, &origin, &room, &event_id, &body).await?;
        Ok(ok_json(&json!([200, answer])))
    })
}

/// PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
pub fn send_leave(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (origin, room, event_id, body) = signed_request(&cx, &req).await?;
        serve::accept_leave(&cx.engine, &origin, &room, &event_id, &body).await?;
        Ok(crate::response::ok_empty())
    })
}

/// PUT /_matrix/federation/v1/send/{txnId}
pub fn send_transaction(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let txn_id = req.param("txn_id")?.to_owned();
        let txn = Transaction::from_body(&req.body)?;
        let answer = inbound::receive_transaction(&cx.engine, &origin, &txn_id, txn).await?;
        Ok(crate::response::text_response(http::StatusCode::OK, "application/json", answer))
    })
}

/// GET /_matrix/federation/v1/event/{eventId}
pub fn get_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        Ok(ok_json(&serve::event(&cx.engine, &origin, &event_param(&req)?)?))
    })
}

/// POST /_matrix/federation/v1/get_missing_events/{roomId}
pub fn get_missing_events(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let room = room_param(&req)?;
        let body: MissingEventsRequest = parse_json(&req.body)?;
        Ok(ok_json(&serve::missing_events(&cx.engine, &origin, &room, &body)?))
    })
}

/// PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
pub fn receive_invite(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let body: InviteRequest = parse_json(&req.body)?;
        let event_id = req.param("event_id")?.to_owned();
        Ok(ok_json(&serve::receive_invite(&cx.engine, &origin, &event_id, body).await?))
    })
}

/// GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…
pub fn backfill(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let room = room_param(&req)?;
        let from: Vec<OwnedEventId> =
            query_values(&req, "v").iter().filter_map(|v| EventId::parse(v.as_str()).ok()).collect();
        let limit = match query_values(&req, "limit").first() {
            Some(l) => l.parse::<usize>().map_err(|_| ApiError::invalid_param("`limit` must be a number"))?,
            None => 50,
        };
        Ok(ok_json(&serve::backfill(&cx.engine, &origin, &room, &from, limit)?))
    })
}

/// The `event_id` query parameter of `/state` and `/state_ids`.
fn state_event_param(req: &Req) -> Result<OwnedEventId, ApiError> {
    let id = query_values(req, "event_id")
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::missing_param("event_id is required"))?;
    EventId::parse(id.as_str()).map_err(|e| ApiError::invalid_param(e.to_string()))
}

/// GET /_matrix/federation/v1/state_ids/{roomId}?event_id=…
pub fn state_ids(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let (room, id) = (room_param(&req)?, state_event_param(&req)?);
        Ok(ok_json(&serve::state_ids(&cx.engine, &origin, &room, &id)?))
    })
}

/// GET /_matrix/federation/v1/state/{roomId}?event_id=…
pub fn state(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let (room, id) = (room_param(&req)?, state_event_param(&req)?);
        Ok(ok_json(&serve::state(&cx.engine, &origin, &room, &id)?))
    })
}

/// GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}: the event's full auth chain.
pub fn event_auth(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let (room, id) = (room_param(&req)?, event_param(&req)?);
        Ok(ok_json(&serve::event_auth(&cx.engine, &origin, &room, &id)?))
    })
}
