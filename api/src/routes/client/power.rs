//! Power-level lookups for checks the authorization rules leave to the
//! Client-Server API (redacting others' events, deleting aliases), through
//! [`myelin_engine::power`].

use myelin_engine::power;
use ruma::RoomId;

use crate::{error::ApiError, router::Ctx};

/// The user's power in the room; room creators of versions that privilege them have no limit.
pub fn user_power(cx: &Ctx, room: &RoomId, user: &str) -> Result<i64, ApiError> {
    Ok(power::user_power(&cx.engine.rooms, room, user)?)
}

/// A top-level power-levels threshold (`redact`, `kick`, …) with the spec's default.
pub fn threshold(cx: &Ctx, room: &RoomId, name: &str, default: i64) -> Result<i64, ApiError> {
    Ok(power::threshold(&cx.engine.rooms, room, name, default)?)
}

/// The level needed to send state event `kind`.
pub fn state_level(cx: &Ctx, room: &RoomId, kind: &str) -> Result<i64, ApiError> {
    Ok(power::state_level(&cx.engine.rooms, room, kind)?)
}
