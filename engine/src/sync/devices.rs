//! The per-user parts of a `/sync` answer: presence, device-list changes and
//! the stripped state of invites.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// `m.presence` events of the user and of users sharing a room with them, set after
    /// the token's serial (all known ones on a first sync).
    pub(super) fn presence_events(
        &self,
        user: &UserId,
        since_serial: u64,
        joined_rooms: &[ruma::OwnedRoomId],
        newly_joined: &BTreeSet<String>,
    ) -> Result<Vec<JsonValue>, EngineError> {
        if !self.config.presence.enabled {
            return Ok(Vec::new());
        }
        let now = std::time::Instant::now();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let changed = self.ephemeral.presence_since(since_serial);
        let new_members = newly_joined.iter().filter_map(|who| {
            let who = UserId::parse(who.as_str()).ok()?;
            let p = self.ephemeral.presence(&who)?;
            Some((who, p))
        });
        for (who, p) in changed.into_iter().chain(new_members.collect::<Vec<_>>()) {
            if !seen.insert(who.clone()) || (who != user && !self.shares_room(who.as_str(), joined_rooms)?) {
                continue;
            }
            let mut content = json!({
                "presence": p.state,
                "last_active_ago": now.saturating_duration_since(p.last_active).as_millis() as u64,
                "currently_active": p.state == "online",
            });
            if let Some(m) = p.status_msg {
                content["status_msg"] = json!(m);
            }
            out.push(json!({ "type": "m.presence", "sender": who, "content": content }));
        }
        Ok(out)
    }

    /// Whether `who` is joined to one of `rooms`.
    pub(crate) fn shares_room(&self, who: &str, rooms: &[ruma::OwnedRoomId]) -> Result<bool, EngineError> {
        for room in rooms {
            if let Some(p) = self.rooms.state_event(room, "m.room.member", who)?
                && p.content_value()["membership"] == "join"
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Users sharing a room with `user` whose devices changed in `(from, to]` (`/keys/changes`).
    pub fn device_list_changes_between(
        &self,
        user: &UserId,
        from: u64,
        to: u64,
    ) -> Result<(Vec<String>, Vec<String>), EngineError> {
        let joined: Vec<ruma::OwnedRoomId> = self
            .rooms
            .rooms_of(user.as_str())?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| r)
            .collect();
        self.device_list_changes(user, from, to, &joined, BTreeSet::new(), BTreeSet::new())
    }

    /// `device_lists.changed` and `.left` for an incremental sync: users sharing a room
    /// whose devices changed in `(since, upto]` or who joined one; users who left the
    /// user's last shared room.
    pub(crate) fn device_list_changes(
        &self,
        user: &UserId,
        since: u64,
        upto: u64,
        joined_rooms: &[ruma::OwnedRoomId],
        joins: BTreeSet<String>,
        leaves: BTreeSet<String>,
    ) -> Result<(Vec<String>, Vec<String>), EngineError> {
        let mut changed = joins;
        for who in self.e2ee.changed_between(since, upto)? {
            if who == user.as_str() || self.shares_room(&who, joined_rooms)? {
                changed.insert(who);
            }
        }
        let mut left = Vec::new();
        for who in leaves {
            if !changed.contains(&who) && !self.shares_room(&who, joined_rooms)? {
                left.push(who);
            }
        }
        Ok((changed.into_iter().collect(), left))
    }

    /// The stripped state an invited or knocking user sees (§"Stripped state").
    pub fn stripped_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<JsonValue>, EngineError> {
        let mut out = Vec::new();
        for (kind, key) in [
            ("m.room.create", ""),
            ("m.room.join_rules", ""),
            ("m.room.name", ""),
            ("m.room.avatar", ""),
            ("m.room.canonical_alias", ""),
            ("m.room.encryption", ""),
            ("m.room.topic", ""),
            ("m.room.member", user.as_str()),
        ] {
            if let Some(p) = self.rooms.state_event(room_id, kind, key)? {
                out.push(stripped_event(&p));
            }
        }
        Ok(out)
    }
}
