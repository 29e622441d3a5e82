//! Which rooms a sliding-sync list holds: the candidates, their memberships
//! and bump stamps, the filters they pass, and per-room facts.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// The rooms the lists are made of, with their bump stamps.
    pub(super) fn list_candidates(
        &self,
        user: &UserId,
        prev: &conn::ConnState,
        upto: i64,
        ignored: &HashSet<String>,
    ) -> Result<Vec<Candidate>, EngineError> {
        let mut out = Vec::new();
        for (room_id, m, removed) in self.memberships_of(user)?.iter() {
            if m.count > upto {
                continue; // after this answer's position: next time
            }
            let shown = match m.membership.as_str() {
                "join" | "invite" | "knock" | "ban" => true,
                // Left since the last answer (the client must learn of it), or removed by someone else.
                "leave" => (prev.answered && m.count > prev.upto as i64) || *removed,
                _ => false,
            };
            if !shown
                || (m.membership == "invite"
                    && !ignored.is_empty()
                    && self.invited_by_ignored(user, m.event, &[], ignored))
            {
                continue;
            }
            let stamp = self.bump_stamp_of(room_id, m, upto)?;
            out.push(Candidate { room_id: room_id.clone(), membership: m.clone(), stamp });
        }
        Ok(out)
    }

    /// The user's memberships, read from storage only when they changed since the last
    /// read (a user in thousands of rooms paid a row, a room-id lookup and, per left
    /// room, an event read on every request).
    pub(super) fn memberships_of(&self, user: &UserId) -> Result<UserRooms, EngineError> {
        // The counter first: a change that becomes visible after it raises it again.
        let version = self.rooms.memberships_version(user.as_str());
        if let Some((v, rows)) = self.sliding.memberships.lock().get(user.as_str())
            && *v == version
        {
            return Ok(rows.clone());
        }
        let mut rows = Vec::new();
        for (room_id, m) in self.rooms.rooms_of(user.as_str())? {
            let removed = m.membership == "leave" && self.removed_by_other(user, m.event);
            rows.push((room_id, m, removed));
        }
        let rows = Arc::new(rows);
        self.sliding.memberships.lock().put(user.to_string(), (version, rows.clone()));
        Ok(rows)
    }

    /// The position a room sorts by: its newest event of a bumping type for a joined
    /// room, the membership event otherwise (or when no such event is near the top).
    pub(super) fn bump_stamp_of(&self, room_id: &RoomId, m: &Membership, upto: i64) -> Result<i64, EngineError> {
        if m.membership != "join" {
            return Ok(m.count);
        }
        let cached = self.sliding.bumps.lock().get(room_id).copied();
        if let Some((checked, stamp)) = cached
            && (checked >= upto || self.rooms.quiet_since(room_id, checked)?)
        {
            return Ok(stamp.max(m.count));
        }
        let floor = cached.map_or(i64::MIN, |(checked, _)| checked);
        let mut stamp = cached.map(|(_, s)| s);
        let events = self.rooms.timeline(
            room_id,
            Some(upto.saturating_add(1)),
            myelin_storage::Direction::Reverse,
            BUMP_SCAN,
        )?;
        let mut found = false;
        for (pos, pdu) in &events {
            if *pos <= floor {
                found = true; // the cached stamp stands
                break;
            }
            if BUMP_TYPES.contains(&pdu.kind.to_string().as_str()) {
                stamp = Some(*pos);
                found = true;
                break;
            }
        }
        if !found && events.len() == BUMP_SCAN {
            // Nothing bumping among the newest events: the oldest of them sorts it.
            stamp = events.last().map(|(p, _)| *p);
        }
        let stamp = stamp.unwrap_or(m.count);
        self.sliding.bumps.lock().put(room_id.to_owned(), (upto, stamp));
        Ok(stamp.max(m.count))
    }

    /// The rooms of the user's `m.direct` account data.
    pub(super) fn direct_rooms(&self, user: &UserId) -> Result<HashSet<String>, EngineError> {
        let Some(raw) = self.users.account_data(user.as_str(), None, "m.direct")? else {
            return Ok(HashSet::new());
        };
        let Ok(JsonValue::Object(map)) = serde_json::from_slice::<JsonValue>(&raw) else { return Ok(HashSet::new()) };
        Ok(map
            .values()
            .filter_map(JsonValue::as_array)
            .flatten()
            .filter_map(JsonValue::as_str)
            .map(str::to_owned)
            .collect())
    }

    /// Whether a candidate room passes a list's filters.
    pub(super) fn passes(
        &self,
        user: &UserId,
        c: &Candidate,
        filters: Option<&ListFilters>,
        direct: &HashSet<String>,
    ) -> Result<bool, EngineError> {
        let Some(f) = filters else { return Ok(true) };
        let invited = c.membership.membership == "invite";
        if f.is_invite.is_some_and(|want| want != invited) {
            return Ok(false);
        }
        if f.is_dm.is_some_and(|want| want != direct.contains(c.room_id.as_str())) {
            return Ok(false);
        }
        if f.is_encrypted.is_some() || f.room_types.is_some() || !f.not_room_types.is_empty() {
            let (encrypted, room_type) = self.room_facts(user, &c.room_id, &c.membership)?;
            if f.is_encrypted.is_some_and(|want| want != encrypted) {
                return Ok(false);
            }
            if let Some(types) = &f.room_types
                && !types.contains(&room_type)
            {
                return Ok(false);
            }
            if f.not_room_types.contains(&room_type) {
                return Ok(false);
            }
        }
        if !f.spaces.is_empty() {
            let mut in_space = false;
            for space in &f.spaces {
                if self.rooms.state_event(space, "m.space.child", c.room_id.as_str()).ok().flatten().is_some_and(|p| {
                    p.content_value().get("via").and_then(JsonValue::as_array).is_some_and(|v| !v.is_empty())
                }) {
                    in_space = true;
                    break;
                }
            }
            if !in_space {
                return Ok(false);
            }
        }
        if !f.tags.is_empty() || !f.not_tags.is_empty() {
            let tags: BTreeSet<String> = self
                .users
                .account_data(user.as_str(), Some(c.room_id.as_str()), "m.tag")?
                .and_then(|raw| serde_json::from_slice::<JsonValue>(&raw).ok())
                .and_then(|v| v.get("tags").and_then(JsonValue::as_object).map(|t| t.keys().cloned().collect()))
                .unwrap_or_default();
            if !f.tags.is_empty() && !f.tags.iter().any(|t| tags.contains(t)) {
                return Ok(false);
            }
            if f.not_tags.iter().any(|t| tags.contains(t)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a room is encrypted, and its creation type: from its state, or from the
    /// invite's stripped state for a room this server does not hold.
    pub(super) fn room_facts(
        &self,
        user: &UserId,
        room_id: &RoomId,
        m: &Membership,
    ) -> Result<(bool, Option<String>), EngineError> {
        let type_of = |content: &JsonValue| content.get("type").and_then(JsonValue::as_str).map(str::to_owned);
        if self.rooms.is_local_room(room_id) {
            let encrypted = self.rooms.state_event(room_id, "m.room.encryption", "")?.is_some();
            let room_type =
                self.rooms.state_event(room_id, "m.room.create", "")?.and_then(|p| type_of(&p.content_value()));
            return Ok((encrypted, room_type));
        }
        if matches!(m.membership.as_str(), "invite" | "knock")
            && let Some(state) = self.rooms.invite_state(user, room_id)?
        {
            let find = |kind: &str| state.iter().find(|e| e.get("type").and_then(JsonValue::as_str) == Some(kind));
            let encrypted = find("m.room.encryption").is_some();
            let room_type = find("m.room.create").and_then(|e| e.get("content")).and_then(type_of);
            return Ok((encrypted, room_type));
        }
        Ok((false, None))
    }

    /// `device_lists` since stream position `since`: members who joined or left a
    /// joined room in between (everyone, in a room joined in between), and users whose
    /// devices changed.
    pub(super) fn sliding_device_lists(
        &self,
        user: &UserId,
        candidates: &[Candidate],
        since: u64,
        upto: u64,
    ) -> Result<(Vec<String>, Vec<String>), EngineError> {
        let (mut joins, mut leaves) = (BTreeSet::new(), BTreeSet::new());
        let mut joined = Vec::new();
        for c in candidates.iter().filter(|c| c.membership.membership == "join") {
            joined.push(c.room_id.clone());
            if self.rooms.quiet_since(&c.room_id, since as i64)? {
                continue;
            }
            let fresh = c.membership.count > since as i64;
            let (events, _) = self.rooms.timeline_between(&c.room_id, since as i64, upto as i64, 1000)?;
            self.note_member_changes(&c.room_id, user, fresh, &events, &mut joins, &mut leaves)?;
        }
        self.device_list_changes(user, since, upto, &joined, joins, leaves)
    }
}
