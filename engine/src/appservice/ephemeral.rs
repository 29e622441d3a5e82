//! Ephemeral events for appservices that asked for them (`receive_ephemeral`,
//! MSC2409's `de.sorunome.msc2409.push_ephemeral`): typing, read receipts and
//! presence, in the `ephemeral` field of their transactions, in the form
//! clients get them in `/sync` plus `room_id` (Application Service API
//! §"Pushing events", `ephemeral`).
//!
//! They are volatile, as the spec allows: held in memory (at most 1,000 per
//! appservice) and lost on restart. Private read receipts are never pushed.

use ruma::{RoomId, UserId};
use serde_json::json;

use crate::Engine;

impl Engine {
    /// Pushes the room's current typing users to the appservices concerned.
    pub fn push_typing_to_appservices(&self, room: &RoomId) {
        if self.appservices.is_empty() {
            return;
        }
        let (users, _) = self.ephemeral.typing_in(room);
        let event = json!({ "type": "m.typing", "room_id": room, "content": { "user_ids": users } });
        self.appservices.push_ephemeral(&event, |a| self.rooms.concerns_appservice(a, room).unwrap_or(false));
    }

    /// Pushes a receipt to the appservices concerned (private receipts stay private).
    pub fn push_receipt_to_appservices(
        &self,
        room: &RoomId,
        user: &UserId,
        kind: &str,
        thread: Option<&str>,
        event_id: &str,
        ts: u64,
    ) {
        if self.appservices.is_empty() || kind == "m.read.private" {
            return;
        }
        let mut receipt = json!({ "ts": ts });
        if let Some(t) = thread {
            receipt["thread_id"] = json!(t);
        }
        let event = json!({
            "type": "m.receipt",
            "room_id": room,
            "content": { event_id: { kind: { user.as_str(): receipt } } },
        });
        self.appservices.push_ephemeral(&event, |a| self.rooms.concerns_appservice(a, room).unwrap_or(false));
    }

    /// Pushes a presence change to the appservices that own the user or are
    /// concerned with a room a local user is joined to.
    pub fn push_presence_to_appservices(&self, user: &UserId) {
        if self.appservices.is_empty() {
            return;
        }
        let Some(p) = self.ephemeral.presence(user) else { return };
        let mut content = json!({ "presence": p.state });
        if let Some(msg) = &p.status_msg {
            content["status_msg"] = json!(msg);
        }
        let event = json!({ "type": "m.presence", "sender": user, "content": content });
        let rooms: Vec<ruma::OwnedRoomId> = if user.server_name() == self.server_name {
            self.rooms
                .rooms_of(user.as_str())
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, m)| m.membership == "join")
                .map(|(r, _)| r)
                .collect()
        } else {
            Vec::new()
        };
        self.appservices.push_ephemeral(&event, |a| {
            a.owns_user(user.as_str()) || rooms.iter().any(|r| self.rooms.concerns_appservice(a, r).unwrap_or(false))
        });
    }
}
