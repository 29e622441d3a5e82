//! History visibility (Client-Server API §"History visibility"): who may see
//! which event, decided with the state *at that event*:
//!
//! 1. `world_readable` → everyone;
//! 2. the user's membership at the event is `join` → allowed;
//! 3. `shared` and the user joined at some point after the event (we test:
//!    is joined now, or left after the event) → allowed;
//! 4. `invited` and the user's membership at the event is `invite` → allowed;
//! 5. otherwise → denied. A user always sees their own membership events.

use ruma::UserId;

use super::{ArcPdu, RoomError, Rooms, tables::*};

impl Rooms {
    /// Whether `user` may see `pdu` (timeline position `count`).
    pub fn visible_to(&self, user: &UserId, pdu: &ArcPdu, count: i64) -> Result<bool, RoomError> {
        if pdu.state_key.as_deref() == Some(user.as_str()) && pdu.kind.to_string() == "m.room.member" {
            return Ok(true);
        }
        let Some(meta) = self.meta(&pdu.event_id)? else { return Ok(false) };
        let state = meta.state_before;
        let visibility = self
            .state_pdu_at(state, "m.room.history_visibility", "")?
            .and_then(|p| p.content_value()["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if visibility == "world_readable" {
            return Ok(true);
        }
        let at_event = self
            .state_pdu_at(state, "m.room.member", user.as_str())?
            .and_then(|p| p.content_value()["membership"].as_str().map(str::to_owned));
        if at_event.as_deref() == Some("join") {
            return Ok(true);
        }
        if visibility == "shared"
            && let Some(now) = self.membership(user.as_str(), &pdu.room_id)?
            && (now.membership == "join"
                || (now.membership != "invite" && now.count > count && self.ever_joined(user, &pdu.room_id, count)?))
        {
            return Ok(true);
        }
        Ok(visibility == "invited" && at_event.as_deref() == Some("invite"))
    }

    /// Whether `server` may receive `pdu` over federation (Server-Server API
    /// §"Retrieving events" and history visibility): `world_readable` and
    /// `shared` history go to any server in the room; `invited` and `joined`
    /// history only to a server that had a user invited or joined (or joined)
    /// at the event. The caller checks that the server is in the room.
    pub fn visible_to_server(&self, server: &str, pdu: &ArcPdu) -> Result<bool, RoomError> {
        let Some(meta) = self.meta(&pdu.event_id)? else { return Ok(false) };
        let visibility = self
            .state_pdu_at(meta.state_before, "m.room.history_visibility", "")?
            .and_then(|p| p.content_value()["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if matches!(visibility.as_str(), "world_readable" | "shared") || meta.state_before == 0 {
            return Ok(true);
        }
        // The server's own events are always its to see.
        if pdu.sender.server_name().as_str() == server {
            return Ok(true);
        }
        let suffix = format!(":{server}");
        for p in self.state_at(meta.state_before)? {
            if p.kind.to_string() != "m.room.member" || !p.state_key.as_deref().is_some_and(|k| k.ends_with(&suffix)) {
                continue;
            }
            let membership = p.content_value()["membership"].as_str().map(str::to_owned);
            match membership.as_deref() {
                Some("join") => return Ok(true),
                Some("invite") if visibility == "invited" => return Ok(true),
                _ => {}
            }
        }
        Ok(false)
    }

    /// Whether the user was joined at some point after position `after` (best effort:
    /// the membership just before their latest membership event).
    fn ever_joined(&self, user: &UserId, room: &ruma::RoomId, after: i64) -> Result<bool, RoomError> {
        let Some(m) = self.membership(user.as_str(), room)? else { return Ok(false) };
        let Some(meta) = META.get(&*self.db, &m.event)? else { return Ok(false) };
        if meta.count <= after {
            return Ok(false);
        }
        let before = self
            .state_pdu_at(meta.state_before, "m.room.member", user.as_str())?
            .and_then(|p| p.content_value()["membership"].as_str().map(str::to_owned));
        Ok(before.as_deref() == Some("join"))
    }
}
