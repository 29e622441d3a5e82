//! Rooms over the Client-Server API.
//!
//! §"Creation" (`/createRoom`), §"Room membership" (`/join`, `/invite`,
//! `/leave`, `/kick`, `/ban`, `/unban`, `/forget`, `/joined_rooms`),
//! §"Sending events to a room" (`/send/{type}/{txnId}` idempotent per device
//! and transaction, `/state/{type}/{stateKey}`), §"Getting events for a room"
//! (`/event`, `/state`, `/members`, `/joined_members`, `/messages`).
//!
//! Rooms on other servers are joined, knocked on, left and invited to through
//! `myelin_engine::federation::membership`. Reading requires being joined (or,
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
    auth::{Authed, appservice_ts, query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

use myelin_engine::util::now_ms;

/// An event as this user sees it: redacted, or with bundled relations.
fn serve(cx: &Ctx, me: &Authed, pdu: &myelin_engine::rooms::ArcPdu, with_room_id: bool, now: u64) -> JsonValue {
    cx.engine.rooms.format_for(pdu, with_room_id, now, &me.user_id, Some(&me.device_id)).unwrap_or_else(|e| {
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
pub(crate) struct CreateRoomBody {
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

mod create;
mod events;
pub(crate) mod membership;
mod messages;
pub(crate) mod reports;
pub(crate) mod upgrade;

pub use create::*;
pub use events::*;
pub use membership::*;
pub use messages::*;
pub use reports::*;
pub use upgrade::*;
