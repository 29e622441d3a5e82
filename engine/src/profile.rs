//! Profile changes that reach every room (Client-Server API §"Profiles":
//! "when the profile of a user changes, the server should send an updated
//! `m.room.member` event to every room the user is joined to").

use ruma::{UserId, events::TimelineEventType};
use serde_json::{Value as JsonValue, json};

use crate::{Engine, EngineError, rooms::NewEvent, users::Profile};

impl Engine {
    /// Stores `user`'s profile, then sends a member event carrying it to each
    /// room the user is joined to. A room that refuses is logged and skipped.
    pub async fn set_profile_everywhere(&self, user: &UserId, profile: &Profile) -> Result<(), EngineError> {
        self.users.set_profile(user.as_str(), profile).await?;
        let rooms = self.rooms.rooms_of(user.as_str())?;
        for (room, m) in rooms {
            if m.membership != "join" {
                continue;
            }
            let current = self.rooms.state_event(&room, "m.room.member", user.as_str())?.map(|p| p.content_value());
            let mut content = match current {
                Some(JsonValue::Object(o)) => o,
                _ => serde_json::Map::from_iter([("membership".to_owned(), json!("join"))]),
            };
            content.insert("displayname".into(), json!(profile.displayname));
            content.insert("avatar_url".into(), json!(profile.avatar_url));
            content.retain(|_, v| !v.is_null());
            let event = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), JsonValue::Object(content));
            if let Err(e) = self.rooms.send(user, &room, event).await {
                tracing::warn!(room_id = %room, error = %e, "profile change not propagated to a room");
            }
        }
        Ok(())
    }
}
