//! The per-room parts of a `/sync` answer: the state block, the visible
//! timeline, a joined room's section, its ephemeral events and receipts.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// The `state` block of a room's sync entry (Client-Server API §"GET /sync":
    /// "Updates to the state, between the time indicated by the `since` parameter, and
    /// the start of the `timeline` (or all state up to the start of the `timeline`, if
    /// `since` is not given, or `full_state` is true)").
    ///
    /// `timeline` is what the client is sent; `since` is the position the client
    /// already has the room's state at (None: it has none). State events in the
    /// timeline are never repeated here. With lazy loading, member events only for
    /// the timeline's senders (and, when the client has no state, the user).
    pub(super) fn state_block(
        &self,
        room_id: &RoomId,
        user: &UserId,
        timeline: &[&(i64, ArcPdu)],
        upto: i64,
        since: Option<i64>,
        req: &SyncRequest,
    ) -> Result<Vec<ArcPdu>, EngineError> {
        let start = match timeline.first() {
            Some((_, p)) => self.rooms.snapshot_before(&p.event_id)?,
            None => self.rooms.snapshot_at_position(room_id, upto)?,
        };
        let in_timeline: HashSet<&ruma::EventId> = timeline.iter().map(|(_, p)| &*p.event_id).collect();
        let mut state = match since {
            Some(s) => {
                let before = self.rooms.snapshot_at_position(room_id, s)?;
                self.rooms.state_added(before, start)?
            }
            None => self.rooms.state_at(start)?,
        };
        state.retain(|p| !in_timeline.contains(&*p.event_id) && req.state.matches(p));
        if req.lazy_load_members {
            let mut senders: HashSet<&str> = timeline.iter().map(|(_, p)| p.sender.as_str()).collect();
            if since.is_none() {
                senders.insert(user.as_str());
            }
            state.retain(|p| {
                p.kind.to_string() != "m.room.member" || p.state_key.as_deref().is_some_and(|k| senders.contains(k))
            });
            let key = (user.to_string(), req.device_id.clone(), room_id.to_owned());
            // What this device was sent before; a client without the room's state has nothing.
            let sent_before = match since {
                Some(_) => self.lazy_members.lock().get(&key).cloned().unwrap_or_default(),
                None => HashMap::new(),
            };
            if since.is_some() {
                // The members of the timeline's senders as of its start, changed or not,
                // unless this device already has that very event.
                let have: HashSet<String> = state.iter().filter_map(|p| p.state_key.clone()).collect();
                for who in senders {
                    if have.contains(who) {
                        continue;
                    }
                    if let Some(p) = self.rooms.state_pdu_at(start, "m.room.member", who)?
                        && req.state.matches(&p)
                        && !in_timeline.contains(&*p.event_id)
                        && (req.include_redundant_members || sent_before.get(who) != Some(&p.event_id))
                    {
                        state.push(p);
                    }
                }
            }
            let mut sent = sent_before;
            let members = state.iter().chain(timeline.iter().map(|(_, p)| p));
            for p in members.filter(|p| p.kind.to_string() == "m.room.member") {
                if let Some(who) = p.state_key.as_deref() {
                    sent.insert(who.to_owned(), p.event_id.clone());
                }
            }
            self.lazy_members.lock().put(key, sent);
        }
        Ok(state)
    }

    /// The timeline of `(after, upto]` as `user` may see it: the newest
    /// `timeline_limit` events that pass the filter and history visibility,
    /// paging back past hidden events (at most [`FILL_PAGES`] pages), as
    /// Synapse's `_load_filtered_recents` does. An event that is the room's
    /// current state always passes visibility (a member may read the state
    /// anyway; SyTest "Current state appears in timeline in private history").
    pub(super) fn visible_timeline(
        &self,
        room_id: &RoomId,
        user: &UserId,
        after: i64,
        upto: i64,
        req: &SyncRequest,
    ) -> Result<Timeline, EngineError> {
        let limit = req.timeline_limit;
        let shows = |c: i64, p: &ArcPdu| -> bool {
            if !req.timeline.matches(p) || ignored(req, p) {
                return false;
            }
            if self.rooms.visible_to(user, p, c).unwrap_or(false) {
                return true;
            }
            let Some(key) = p.state_key.as_deref() else { return false };
            let current = self.rooms.state_event(room_id, &p.kind.to_string(), key).ok().flatten();
            current.is_some_and(|now| now.event_id == p.event_id)
        };
        let mut read: Vec<(i64, ArcPdu)> = Vec::new();
        let mut shown: Vec<(i64, ArcPdu)> = Vec::new();
        let mut top = upto;
        let mut limited = false;
        for page in 0..FILL_PAGES {
            let want = if page == 0 { limit } else { (limit * 2).max(10) };
            let (mut events, more) = self.rooms.timeline_between(room_id, after, top, want)?;
            if let Some((c, _)) = events.first() {
                top = c - 1;
            }
            let mut kept: Vec<(i64, ArcPdu)> = events.iter().filter(|(c, p)| shows(*c, p)).cloned().collect();
            kept.append(&mut shown);
            shown = kept;
            events.append(&mut read);
            read = events;
            limited = more;
            // Enough to show, nothing older, or no limit to fill (limit 0).
            if shown.len() >= limit || !more || limit == 0 {
                break;
            }
        }
        let excess = shown.len().saturating_sub(limit);
        shown.drain(..excess);
        limited |= excess > 0;
        let prev = match (shown.first(), read.first()) {
            (Some((c, _)), _) if excess > 0 => Some(c - 1),
            (_, Some((c, _))) => Some(c - 1),
            _ => None,
        };
        Ok(Timeline { read, shown, limited, prev })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn joined_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        t: &Timeline,
        state_since: Option<i64>,
        upto: i64,
        req: &SyncRequest,
        now: u64,
    ) -> Result<JsonValue, EngineError> {
        let timeline: Vec<&(i64, ArcPdu)> = t.shown.iter().collect();
        let limited = t.limited;
        let state = self.state_block(room_id, user, &timeline, upto, state_since, req)?;
        let state: Vec<JsonValue> = state.iter().map(|p| self.render(p, now, user, req)).collect();
        let timeline_json: Vec<JsonValue> = timeline.iter().map(|(_, p)| self.render(p, now, user, req)).collect();
        let prev = t.prev.unwrap_or(state_since.unwrap_or(upto));
        let current = self.rooms.current_state(room_id)?;
        let joined = current
            .iter()
            .filter(|p| p.kind.to_string() == "m.room.member" && p.content_value()["membership"] == "join")
            .count();
        Ok(json!({
            "timeline": { "events": timeline_json, "limited": limited, "prev_batch": format!("t{prev}") },
            "state": { "events": state },
            "account_data": { "events": [] },
            "ephemeral": { "events": [] },
            "unread_notifications": { "notification_count": 0, "highlight_count": 0 },
            "summary": { "m.joined_member_count": joined },
        }))
    }

    /// `m.typing` (when it changed since the token, or anyone types on a first sync)
    /// and `m.receipt` (receipts newer than the token; private ones only the owner's).
    pub(super) fn room_ephemeral(
        &self,
        room: &RoomId,
        user: &UserId,
        since: Option<u64>,
        since_typing: u64,
        fresh: bool,
    ) -> Result<Vec<JsonValue>, EngineError> {
        let mut out = Vec::new();
        let (typing, changed) = self.ephemeral.typing_in(room);
        if (fresh && !typing.is_empty()) || (!fresh && changed > since_typing) {
            out.push(json!({ "type": "m.typing", "content": { "user_ids": typing } }));
        }
        if let Some(receipts) = self.receipt_event(room, user, if fresh { 0 } else { since.unwrap_or(0) })? {
            out.push(receipts);
        }
        Ok(out)
    }

    /// The `m.receipt` event of the receipts set in `room` after stream position
    /// `since` (all of them at 0); private ones only the viewer's own.
    pub(crate) fn receipt_event(
        &self,
        room: &RoomId,
        user: &UserId,
        since: u64,
    ) -> Result<Option<JsonValue>, EngineError> {
        let mut content = serde_json::Map::new();
        for (who, kind, thread, receipt) in self.receipts_since(room, since)? {
            if kind == "m.read.private" && who != user.as_str() {
                continue;
            }
            let mut entry = json!({ "ts": receipt.ts });
            if !thread.is_empty() {
                entry["thread_id"] = json!(thread);
            }
            let by_event = content.entry(receipt.event_id.clone()).or_insert_with(|| json!({}));
            by_event[kind.as_str()][who.as_str()] = entry;
        }
        Ok((!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content })))
    }

    /// Notes members who joined or left `room` in this sync's timeline (everyone, when
    /// the user is new to the room): their devices must be (re)fetched or forgotten.
    pub(crate) fn note_member_changes(
        &self,
        room: &RoomId,
        user: &UserId,
        fresh: bool,
        events: &[(i64, ArcPdu)],
        joins: &mut BTreeSet<String>,
        leaves: &mut BTreeSet<String>,
    ) -> Result<(), EngineError> {
        if fresh {
            for p in self.rooms.current_state(room)? {
                if p.kind.to_string() == "m.room.member"
                    && p.content_value()["membership"] == "join"
                    && let Some(who) = p.state_key.as_deref().filter(|k| *k != user.as_str())
                {
                    joins.insert(who.to_owned());
                }
            }
            return Ok(());
        }
        for (_, p) in events {
            let Some(who) = p.state_key.as_deref().filter(|k| *k != user.as_str()) else { continue };
            if p.kind.to_string() != "m.room.member" {
                continue;
            }
            match p.content_value()["membership"].as_str() {
                Some("join") => {
                    joins.insert(who.to_owned());
                }
                Some("leave" | "ban") => {
                    leaves.insert(who.to_owned());
                }
                _ => {}
            }
        }
        Ok(())
    }
}
