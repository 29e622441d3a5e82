//! Guests and `m.room.guest_access`.
//!
//! Client-Server API §"Guest Access", "Server behaviour": "Servers MUST only
//! allow guest users to join rooms if the m.room.guest_access state event is
//! present on the room and has the guest_access value can_join. If the
//! m.room.guest_access event is changed to stop this from being the case, the
//! server MUST set those users' m.room.member state to leave." Guests are a
//! local notion (other servers cannot tell who is one), so this server enforces
//! it for its own guests whichever server changed the room's state.

use ruma::{RoomId, UserId, events::TimelineEventType};

use crate::{
    Engine,
    rooms::{NewEvent, RoomError},
};

/// Whether the room's current `m.room.guest_access` is `can_join`.
pub fn guests_can_join(engine: &Engine, room: &RoomId) -> Result<bool, RoomError> {
    let event = engine.rooms.state_event(room, "m.room.guest_access", "")?;
    Ok(event.is_some_and(|p| p.content_value()["guest_access"] == "can_join"))
}

impl Engine {
    /// Makes this server's guests leave `room` unless guests may join it now.
    /// Returns how many left.
    pub async fn enforce_guest_access(&self, room: &RoomId) -> Result<usize, RoomError> {
        if !self.users.may_have_guests() || guests_can_join(self, room)? {
            return Ok(0);
        }
        let mut left = 0;
        for p in self.rooms.current_state(room)? {
            let Some(who) = p.state_key.as_deref() else { continue };
            if p.kind != TimelineEventType::RoomMember || p.content_value()["membership"] != "join" {
                continue;
            }
            let Ok(user) = UserId::parse(who) else { continue };
            if user.server_name() != self.server_name || !self.users.is_guest(who).unwrap_or(false) {
                continue;
            }
            let leave =
                NewEvent::state(TimelineEventType::RoomMember, who, serde_json::json!({ "membership": "leave" }));
            match self.rooms.send(&user, room, leave).await {
                Ok(_) => left += 1,
                Err(e) => tracing::warn!(room_id = %room, guest = who, error = %e,
                    "could not make a guest leave after guest access ended"),
            }
        }
        if left > 0 {
            tracing::info!(room_id = %room, left, "guests left a room that no longer lets guests join");
        }
        Ok(left)
    }
}
