//! Power levels read for the checks the authorization rules leave to the
//! server (Client-Server API §"Room membership", §"Redactions", restricted
//! joins): a user's level and the level an action needs. Levels may be
//! strings in room versions 1–9 and are read as their integers.

use ruma::RoomId;
use serde_json::Value as JsonValue;

use crate::{
    rooms::{RoomError, Rooms},
    util::power_level as level,
};

/// The user's power in the room; room creators of versions that privilege them have no limit.
pub fn user_power(rooms: &Rooms, room: &RoomId, user: &str) -> Result<i64, RoomError> {
    let privileged =
        rooms.room_version(room)?.rules().is_some_and(|r| r.authorization.explicitly_privilege_room_creators);
    if privileged && let Some(create) = rooms.state_event(room, "m.room.create", "")? {
        let extra = create.content_value()["additional_creators"].clone();
        let listed = extra.as_array().is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user)));
        if create.sender.as_str() == user || listed {
            return Ok(i64::MAX);
        }
    }
    match power_levels(rooms, room)? {
        Some(pl) => Ok(level(&pl["users"][user]).or_else(|| level(&pl["users_default"])).unwrap_or(0)),
        // Without power levels the creator has 100, everyone else 0.
        None => Ok(match rooms.state_event(room, "m.room.create", "")? {
            Some(c) if c.sender.as_str() == user => 100,
            _ => 0,
        }),
    }
}

/// The room's power-levels content.
pub fn power_levels(rooms: &Rooms, room: &RoomId) -> Result<Option<JsonValue>, RoomError> {
    Ok(rooms.state_event(room, "m.room.power_levels", "")?.map(|p| p.content_value()))
}

/// A top-level threshold (`invite`, `redact`, `kick`, …), or `default` when the room sets none.
pub fn threshold(rooms: &Rooms, room: &RoomId, name: &str, default: i64) -> Result<i64, RoomError> {
    Ok(power_levels(rooms, room)?.and_then(|pl| level(&pl[name])).unwrap_or(default))
}

/// The level needed to send state event `kind`.
pub fn state_level(rooms: &Rooms, room: &RoomId, kind: &str) -> Result<i64, RoomError> {
    let pl = power_levels(rooms, room)?;
    Ok(pl.as_ref().and_then(|pl| level(&pl["events"][kind]).or_else(|| level(&pl["state_default"]))).unwrap_or(50))
}
