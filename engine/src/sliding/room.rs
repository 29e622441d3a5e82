//! One room of a sliding-sync answer: in full the first time, then its news.

use std::{collections::HashSet, sync::Arc};

use ruma::{RoomId, UserId};
use serde_json::Value as JsonValue;

use super::{RoomOut, Wanted, conn::SentRoom, types::Hero};
use crate::{
    Engine, EngineError,
    rooms::{ArcPdu, tables::Membership},
};

/// Most heroes sent for an unnamed room.
const HEROES: usize = 5;

/// What the room is built against.
pub(crate) struct Cx<'a> {
    pub(crate) user: &'a UserId,
    /// The requesting device (its own sends carry their transaction ids).
    pub(crate) device: &'a str,
    /// This answer's position.
    pub(crate) upto: i64,
    /// The connection's previous answer's position (0: none).
    pub(crate) conn_upto: i64,
    pub(crate) now: u64,
    pub(crate) is_dm: bool,
    pub(crate) stamp: i64,
    /// Users whose messages are not sent (`m.ignored_user_list`).
    pub(crate) ignored: &'a HashSet<String>,
}

/// Facts of a room at one state snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) name: Option<String>,
    pub(crate) avatar: Option<String>,
    pub(crate) joined: u64,
    pub(crate) invited: u64,
    /// Joined and invited members, up to `HEROES + 1` (the viewer may be one).
    pub(crate) members: Vec<Hero>,
}

impl Summary {
    /// About how many bytes it holds outside its inline size.
    pub(crate) fn heap_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        16 + opt(&self.name)
            + opt(&self.avatar)
            + self
                .members
                .iter()
                .map(|h| std::mem::size_of::<Hero>() + h.user_id.capacity() + opt(&h.displayname) + opt(&h.avatar_url))
                .sum::<usize>()
    }

    fn heroes(&self, user: &UserId) -> Vec<Hero> {
        self.members.iter().filter(|h| h.user_id != user.as_str()).take(HEROES).cloned().collect()
    }
}

/// Whether a state event `(kind, key)` matches one of the rules (`$LAZY` aside).
fn matches_rules(rules: &[(String, String)], kind: &str, key: &str, user: &UserId) -> bool {
    rules.iter().any(|(t, k)| (t == "*" || t == kind) && (k == "*" || k == key || (k == "$ME" && key == user.as_str())))
}

/// The members `$LAZY` sends for these timeline events: their senders, and the
/// targets of the membership events among them.
fn lazy_members<'a>(events: impl Iterator<Item = &'a ArcPdu>) -> HashSet<String> {
    let mut out = HashSet::new();
    for p in events {
        out.insert(p.sender.to_string());
        if p.kind.to_string() == "m.room.member"
            && let Some(target) = &p.state_key
        {
            out.insert(target.clone());
        }
    }
    out
}

fn wants_lazy(rules: &[(String, String)]) -> bool {
    rules.iter().any(|(t, k)| t == "m.room.member" && k == "$LAZY")
}

/// Whether the rules name only exact `(type, key)` pairs (no wildcard).
fn exact_only(rules: &[(String, String)]) -> bool {
    rules.iter().all(|(t, k)| t != "*" && k != "*")
}

impl Engine {
    /// The room's summary at its current snapshot, computed once per snapshot.
    pub(crate) fn room_summary(&self, snapshot: u64) -> Result<Arc<Summary>, EngineError> {
        if let Some(s) = self.sliding.summaries.lock().get(&snapshot) {
            return Ok(s.clone());
        }
        let mut summary = Summary::default();
        for p in self.rooms.state_at(snapshot)? {
            let content = p.content_value();
            match (p.kind.to_string().as_str(), p.state_key.as_deref()) {
                ("m.room.name", Some("")) => {
                    summary.name =
                        content.get("name").and_then(JsonValue::as_str).filter(|n| !n.is_empty()).map(str::to_owned);
                }
                ("m.room.avatar", Some("")) => {
                    summary.avatar =
                        content.get("url").and_then(JsonValue::as_str).filter(|u| !u.is_empty()).map(str::to_owned);
                }
                ("m.room.member", Some(who)) => {
                    let membership = content.get("membership").and_then(JsonValue::as_str);
                    match membership {
                        Some("join") => summary.joined += 1,
                        Some("invite") => summary.invited += 1,
                        _ => continue,
                    }
                    if summary.members.len() <= HEROES {
                        summary.members.push(Hero {
                            user_id: who.to_owned(),
                            displayname: content.get("displayname").and_then(JsonValue::as_str).map(str::to_owned),
                            avatar_url: content.get("avatar_url").and_then(JsonValue::as_str).map(str::to_owned),
                        });
                    }
                }
                _ => {}
            }
        }
        let summary = Arc::new(summary);
        self.sliding.summaries.lock().put(snapshot, summary.clone());
        Ok(summary)
    }

    /// The current state the rules ask for; `senders` resolve `$LAZY`.
    fn required_state(
        &self,
        room_id: &RoomId,
        rules: &[(String, String)],
        senders: &HashSet<String>,
        cx: &Cx<'_>,
    ) -> Result<Vec<JsonValue>, EngineError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        if exact_only(rules) {
            for (t, k) in rules {
                let key = if k == "$ME" { cx.user.as_str() } else { k.as_str() };
                if k == "$LAZY" {
                    continue;
                }
                if let Some(p) = self.rooms.state_event(room_id, t, key)?
                    && seen.insert(p.event_id.clone())
                {
                    out.push(self.serve_to(&p, cx.now, cx.user, Some(cx.device)));
                }
            }
        } else {
            for p in self.rooms.current_state(room_id)? {
                let key = p.state_key.as_deref().unwrap_or_default();
                if matches_rules(rules, &p.kind.to_string(), key, cx.user) && seen.insert(p.event_id.clone()) {
                    out.push(self.serve_to(&p, cx.now, cx.user, Some(cx.device)));
                }
            }
        }
        if wants_lazy(rules) {
            for who in senders {
                if let Some(p) = self.rooms.state_event(room_id, "m.room.member", who)?
                    && seen.insert(p.event_id.clone())
                {
                    out.push(self.serve_to(&p, cx.now, cx.user, Some(cx.device)));
                }
            }
        }
        Ok(out)
    }

    /// The timeline events of `(after, upto]` the user may see, newest `limit`; whether
    /// older ones were left out; the position before the first.
    fn sliding_timeline(
        &self,
        room_id: &RoomId,
        after: i64,
        upto: i64,
        limit: u64,
        cx: &Cx<'_>,
    ) -> Result<(Vec<(i64, ArcPdu)>, bool), EngineError> {
        if limit == 0 {
            let (newest, _) = self.rooms.timeline_between(room_id, after, upto, 1)?;
            return Ok((Vec::new(), !newest.is_empty()));
        }
        let (events, limited) = self.rooms.timeline_between(room_id, after, upto, limit as usize)?;
        // State from ignored users is still sent (§"Ignoring Users"), as in /sync.
        let hidden = |p: &ArcPdu| p.state_key.is_none() && cx.ignored.contains(p.sender.as_str());
        let visible = events
            .into_iter()
            .filter(|(c, p)| !hidden(p) && self.rooms.visible_to(cx.user, p, *c).unwrap_or(false))
            .collect();
        Ok((visible, limited))
    }

    /// The room's entry in the answer, and what the connection will remember of it;
    /// `None` when there is nothing new to tell.
    pub(crate) async fn sliding_room(
        &self,
        room_id: &RoomId,
        m: &Membership,
        w: &Wanted,
        prev: Option<&SentRoom>,
        cx: &Cx<'_>,
    ) -> Result<Option<(RoomOut, SentRoom)>, EngineError> {
        // The rules as last sent when unchanged (most rooms, most requests): no copy.
        let rules = match prev {
            Some(p) if *p.rules == w.rules => p.rules.clone(),
            _ => Arc::new(w.rules.clone()),
        };
        let same_membership = prev.is_some_and(|p| p.membership == m.membership);
        let mut sent = SentRoom {
            upto: cx.upto,
            snapshot: 0,
            membership: m.membership.clone(),
            timeline_limit: w.timeline_limit,
            rules: rules.clone(),
            counts: (0, 0),
        };
        let mut out = RoomOut { initial: !same_membership, bump_stamp: Some(cx.stamp), ..RoomOut::default() };
        out.is_dm = cx.is_dm && out.initial;
        match m.membership.as_str() {
            "invite" | "knock" => {
                if same_membership {
                    return Ok(None);
                }
                let state = match self.rooms.invite_state(cx.user, room_id)? {
                    Some(state) if !self.rooms.is_local_room(room_id) => state,
                    _ => self.stripped_state(room_id, cx.user)?,
                };
                out.name = state
                    .iter()
                    .find(|e| e.get("type").and_then(JsonValue::as_str) == Some("m.room.name"))
                    .and_then(|e| e["content"]["name"].as_str())
                    .map(str::to_owned);
                if m.membership == "invite" {
                    out.invite_state = Some(state);
                } else {
                    out.knock_state = Some(state);
                }
                sent.upto = m.count;
                return Ok(Some((out, sent)));
            }
            "leave" | "ban" => {
                if same_membership {
                    return Ok(None);
                }
                sent.upto = m.count;
                if self.rooms.short_room(room_id)?.is_none() || !self.rooms.is_local_room(room_id) {
                    // An invite to a room this server does not hold, rejected or withdrawn.
                    return Ok(Some((out, sent)));
                }
                // History up to the leave, from where the connection left off.
                let after = prev.map_or(0, |p| p.upto);
                let (events, limited) = self.sliding_timeline(room_id, after, m.count, w.timeline_limit, cx)?;
                self.fill_timeline(&mut out, &events, limited, after, cx);
                let senders = lazy_members(events.iter().map(|(_, p)| p));
                out.required_state = self.required_state(room_id, &rules, &senders, cx)?;
                // Clients learn the room is left from the user's own member event: always sent.
                if let Some(own) = self.rooms.pdu_by_short(m.event)?
                    && !events.iter().any(|(_, p)| p.event_id == own.event_id)
                    && !out.required_state.iter().any(|e| e["event_id"] == own.event_id.as_str())
                {
                    out.required_state.push(self.serve_to(&own, cx.now, cx.user, Some(cx.device)));
                }
                return Ok(Some((out, sent)));
            }
            "join" => {}
            _ => return Ok(None),
        }

        // Joined.
        let snapshot = self.rooms.current_snapshot(room_id)?;
        sent.snapshot = snapshot;
        let prev = prev.filter(|_| same_membership);
        // A quiet room (no event, no receipt since it was sent, same state) costs no more reads.
        let news = match prev {
            Some(prev) => !self.rooms.quiet_since(room_id, prev.upto)?,
            None => true,
        };
        if let Some(prev) = prev
            && !news
            && snapshot == prev.snapshot
            && w.timeline_limit <= prev.timeline_limit
            && *rules == *prev.rules
            && self.receipts_quiet_since(room_id, prev.upto.max(0) as u64)?
        {
            return Ok(None);
        }
        let summary = self.room_summary(snapshot)?;
        let (notes, highlights) = self.unread_counts(room_id, cx.user, cx.upto).await?;
        sent.counts = (notes, highlights);
        let Some(prev) = prev else {
            // First time: everything.
            let (events, limited) = self.sliding_timeline(room_id, 0, cx.upto, w.timeline_limit, cx)?;
            self.fill_timeline(&mut out, &events, limited, cx.conn_upto, cx);
            let senders = lazy_members(events.iter().map(|(_, p)| p));
            out.required_state = self.required_state(room_id, &rules, &senders, cx)?;
            out.name = summary.name.clone();
            out.avatar = summary.avatar.clone().map(JsonValue::String);
            if summary.name.is_none() {
                out.heroes = Some(summary.heroes(cx.user));
            }
            out.joined_count = Some(summary.joined);
            out.invited_count = Some(summary.invited);
            out.notification_count = Some(notes);
            out.highlight_count = Some(highlights);
            return Ok(Some((out, sent)));
        };

        let expanded = w.timeline_limit > prev.timeline_limit;
        let rules_changed = *rules != *prev.rules;
        let counts_changed = sent.counts != prev.counts;
        if !news && !expanded && !rules_changed && !counts_changed && snapshot == prev.snapshot {
            // Keep the record as it was (its position stays where the timeline was sent).
            return Ok(None);
        }
        let (events, limited) = if expanded {
            out.unstable_expanded_timeline = true;
            self.sliding_timeline(room_id, 0, cx.upto, w.timeline_limit, cx)?
        } else {
            self.sliding_timeline(room_id, prev.upto, cx.upto, w.timeline_limit, cx)?
        };
        self.fill_timeline(&mut out, &events, limited, prev.upto, cx);
        let senders = lazy_members(events.iter().filter(|(c, _)| *c > prev.upto).map(|(_, p)| p));
        if rules_changed {
            out.required_state = self.required_state(room_id, &rules, &senders, cx)?;
        } else {
            let (_, changed) = self.rooms.state_changed_since(room_id, prev.snapshot)?;
            let mut seen = HashSet::new();
            // `$LAZY` on a gapless update: every membership change, so the client's member
            // list stays whole (as Synapse); after a gap, only the timeline's senders.
            let all_members = wants_lazy(&rules) && !limited;
            for p in changed {
                let key = p.state_key.as_deref().unwrap_or_default();
                let kind = p.kind.to_string();
                let wanted = matches_rules(&rules, &kind, key, cx.user) || (all_members && kind == "m.room.member");
                if wanted && seen.insert(p.event_id.clone()) {
                    out.required_state.push(self.serve_to(&p, cx.now, cx.user, Some(cx.device)));
                }
            }
            if wants_lazy(&rules) {
                for who in &senders {
                    if let Some(p) = self.rooms.state_event(room_id, "m.room.member", who)?
                        && seen.insert(p.event_id.clone())
                    {
                        out.required_state.push(self.serve_to(&p, cx.now, cx.user, Some(cx.device)));
                    }
                }
            }
        }
        if snapshot != prev.snapshot {
            let before = self.room_summary(prev.snapshot)?;
            if before.name != summary.name {
                out.name = summary.name.clone();
            }
            if before.avatar != summary.avatar {
                out.avatar = Some(summary.avatar.clone().map_or(JsonValue::Null, JsonValue::String));
            }
            if summary.name.is_none() && (before.members != summary.members || before.name.is_some()) {
                out.heroes = Some(summary.heroes(cx.user));
            }
        }
        out.joined_count = Some(summary.joined);
        out.invited_count = Some(summary.invited);
        out.notification_count = Some(notes);
        out.highlight_count = Some(highlights);
        Ok(Some((out, sent)))
    }

    /// Puts the events into the room entry: `prev_batch`, `limited` and `num_live`
    /// (events after the position `live_after`).
    fn fill_timeline(&self, out: &mut RoomOut, events: &[(i64, ArcPdu)], limited: bool, live_after: i64, cx: &Cx<'_>) {
        out.limited = limited;
        if let Some((first, _)) = events.first() {
            out.prev_batch = Some(format!("t{}", first - 1));
        }
        let live = if live_after > 0 { events.iter().filter(|(c, _)| *c > live_after).count() } else { 0 };
        out.num_live = Some(live as u64);
        out.timeline = events.iter().map(|(_, p)| self.serve_to(p, cx.now, cx.user, Some(cx.device))).collect();
    }
}
