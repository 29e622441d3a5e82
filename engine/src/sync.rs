//! `/sync`: what changed for a user since a stream position.
//!
//! Client-Server API §"Syncing": "Synchronise the client's state with the
//! latest state on the server… `since`: a point in time to continue a sync
//! from… `timeout`: the maximum time to wait, in milliseconds, before
//! returning this request."
//!
//! Tokens are `s<position>` of the global stream counter. A response built at
//! position `p` contains every event at or below `p` that the user may see and
//! has not seen (positions are only visible once everything below is durable,
//! see `StreamCounter`), so no event falls between two syncs.
//!
//! Sections: `rooms.join` (timeline since the token, at most `limit` events
//! with `limited`/`prev_batch`; state: the full current state on the first
//! sync of a room, after a gap or with `full_state`), `rooms.invite` (stripped
//! state), `rooms.leave` (the leave, on incremental syncs; on an initial sync
//! a kick or ban always, a leave of the user's own only with `include_leave`),
//! `rooms.knock`,
//! global and per-room account data newer than the token, `m.presence` of
//! users sharing a room (changes since the token), and to-device
//! messages for the syncing device (deleted once a later sync acknowledges
//! them by passing a newer token). Timeline events pass the history
//! visibility rules (`Rooms::visible_to`). Filters: timeline `limit`,
//! `types`/`not_types`, `lazy_load_members`, `include_leave`. Joined rooms
//! carry `m.typing` and `m.receipt` ephemeral events and unread counts
//! (`crate::receipts`). Tokens are `s<stream position>_<typing serial>`, plus
//! `_<to-device position>` when a page of to-device messages was full: the next
//! sync then acknowledges (deletes) only the messages that page carried.
//! §"Extensions to /sync" (end-to-end encryption): `device_lists.changed`
//! lists users sharing a room with the syncing user whose device list
//! changed since the token (`crate::e2ee`), or who joined a shared room
//! (everyone in a room the user just joined); `left` lists users who left
//! the user's last shared room; plus the device's one-time key counts and
//! unused fallback key algorithms.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use ruma::{RoomId, UserId};
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    Engine, EngineError,
    events::{client_event, stripped_event},
    filter::EventFilter,
    rooms::{ArcPdu, RoomError, tables::Membership},
};

/// What the client asked for.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The syncing device (to-device messages are per device).
    pub device_id: String,
    /// Stream position of `since`, if any.
    pub since: Option<u64>,
    /// Typing serial of `since` (0 when absent).
    pub since_typing: u64,
    /// The to-device position `since` acknowledges, when not its stream position.
    pub since_to_device: Option<u64>,
    /// Long-poll timeout.
    pub timeout: Duration,
    /// Send the full state of every joined room.
    pub full_state: bool,
    /// Most timeline events per room.
    pub timeline_limit: usize,
    /// What of the timelines to send (`room.timeline`).
    pub timeline: EventFilter,
    /// What of the room state to send (`room.state`).
    pub state: EventFilter,
    /// Which typing and receipt events (`room.ephemeral`).
    pub ephemeral: EventFilter,
    /// Which per-room account data (`room.account_data`).
    pub room_account_data: EventFilter,
    /// Which global account data (`account_data`).
    pub account_data: EventFilter,
    /// Which presence events (`presence`).
    pub presence: EventFilter,
    /// Which rooms at all (`room.rooms`, `room.not_rooms`).
    pub rooms: EventFilter,
    /// Only these fields of each event (`event_fields`; None: all).
    pub event_fields: Option<Vec<String>>,
    /// Events as PDUs (`event_format: federation`) instead of the client format.
    pub federation_format: bool,
    /// Send only the member events of timeline senders (and the user) in state.
    pub lazy_load_members: bool,
    /// With lazy loading, send the senders' member events even when sent before.
    pub include_redundant_members: bool,
    /// Include rooms the user left in an initial sync.
    pub include_leave: bool,
    /// Users whose events are not sent (the engine fills it from `m.ignored_user_list`).
    pub ignored: HashSet<String>,
}

impl Default for SyncRequest {
    fn default() -> Self {
        Self {
            device_id: String::new(),
            since: None,
            since_typing: 0,
            since_to_device: None,
            timeout: Duration::ZERO,
            full_state: false,
            timeline_limit: 20,
            timeline: EventFilter::default(),
            state: EventFilter::default(),
            ephemeral: EventFilter::default(),
            room_account_data: EventFilter::default(),
            account_data: EventFilter::default(),
            presence: EventFilter::default(),
            rooms: EventFilter::default(),
            event_fields: None,
            federation_format: false,
            lazy_load_members: false,
            include_redundant_members: false,
            include_leave: false,
            ignored: HashSet::new(),
        }
    }
}

/// Parses a `s<pos>`, `s<pos>_<typing serial>` or `s<pos>_<typing serial>_<to-device
/// position>` sync token into the position and the typing serial.
pub fn parse_token(token: &str) -> Option<(u64, u64)> {
    parse_full_token(token).map(|(pos, typing, _)| (pos, typing))
}

/// Parses a sync token, with the to-device position it acknowledges when that is
/// not its stream position (a page of to-device messages that was full).
pub fn parse_full_token(token: &str) -> Option<(u64, u64, Option<u64>)> {
    let mut parts = token.strip_prefix('s')?.split('_');
    let pos = parts.next()?.parse().ok()?;
    let typing = match parts.next() {
        Some(t) => t.parse().ok()?,
        None => 0,
    };
    let to_device = match parts.next() {
        Some(t) => Some(t.parse::<u64>().ok()?.min(pos)),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((pos, typing, to_device))
}

/// Per (user, device, room), the member events lazy-loading `/sync` already sent
/// that device: Client-Server API §"Lazy-loading room members": "the server … may
/// not send membership events which the server believes are already cached by
/// the client" unless `include_redundant_members`. Bounded in bytes; a forgotten
/// entry only means a member event is sent again.
pub(crate) type LazySent =
    myelin_storage::SharedLru<(String, String, ruma::OwnedRoomId), HashMap<String, ruma::OwnedEventId>>;

/// The lazy-loading cache, with its share of the budget.
pub(crate) fn lazy_sent(caches: &myelin_storage::Caches) -> LazySent {
    caches.lru(crate::cache_shares::LAZY_MEMBERS, |(user, device, room), sent: &HashMap<String, ruma::OwnedEventId>| {
        user.len()
            + device.len()
            + room.as_str().len()
            + sent.iter().map(|(k, v)| k.len() + v.as_str().len() + 48).sum::<usize>()
    })
}

/// Most to-device messages one `/sync` delivers.
const TO_DEVICE_PAGE: usize = 100;

/// Pages of a room's timeline read to fill a `/sync` timeline past events the
/// user may not see (Synapse's `max_repeat`).
const FILL_PAGES: usize = 5;

/// One joined room's `/sync` timeline.
struct Timeline {
    /// Every event read, hidden ones included, oldest first.
    read: Vec<(i64, ArcPdu)>,
    /// The events sent, oldest first.
    shown: Vec<(i64, ArcPdu)>,
    /// Whether earlier events were left out.
    limited: bool,
    /// The position before the oldest event sent or read, if any was.
    prev: Option<i64>,
}

use crate::util::now_ms;

fn rooms_err(e: RoomError) -> EngineError {
    e.into()
}

fn e2ee_err(e: crate::e2ee::E2eeError) -> EngineError {
    e.into()
}

fn users_err(e: crate::users::UserError) -> EngineError {
    e.into()
}

/// Account data newer than the token: global events, and per room.
pub(crate) struct ChangedData {
    pub(crate) global: Vec<JsonValue>,
    pub(crate) rooms: HashMap<String, Vec<JsonValue>>,
}

impl Engine {
    /// Runs one `/sync` for `user`, waiting up to `req.timeout` for something new.
    pub async fn sync(&self, user: &UserId, mut req: SyncRequest) -> Result<JsonValue, EngineError> {
        let deadline = Instant::now() + req.timeout;
        req.ignored = self.ignored_users(user)?;
        let mut wake = self.stream.subscribe();
        let mut typing_wake = self.ephemeral.subscribe();
        // A sync with `since` acknowledges the to-device messages delivered before it.
        if let Some(since) = req.since {
            let acked = req.since_to_device.unwrap_or(since);
            self.users.ack_to_device(user.as_str(), &req.device_id, acked).await.map_err(users_err)?;
        }
        loop {
            // Read the position first: everything at or below it is durable and visible.
            let upto = self.stream.current();
            let since = req.since.filter(|s| *s <= upto);
            let (body, has_news) = self.sync_once(user, since, upto, &req).await?;
            if has_news || req.since.is_none() || req.full_state || Instant::now() >= deadline {
                return Ok(body);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let changed = async {
                tokio::select! {
                    r = wake.changed() => r.is_ok(),
                    r = typing_wake.changed() => r.is_ok(),
                }
            };
            match tokio::time::timeout(remaining, changed).await {
                Ok(true) => continue,
                // Timed out, or the server is shutting down: answer with what we have.
                _ => return Ok(self.sync_once(user, since, self.stream.current(), &req).await?.0),
            }
        }
    }

    /// An event as one device of `user` sees it (its own sends with their transaction id).
    pub(crate) fn serve_to(&self, pdu: &ArcPdu, now: u64, user: &UserId, device: Option<&str>) -> JsonValue {
        self.rooms.format_for(pdu, false, now, user, device).unwrap_or_else(|e| {
            tracing::warn!(event_id = %pdu.event_id, error = %e, "serving an event without its relations");
            client_event(pdu, false, now)
        })
    }

    /// An event as this sync's device sees it, in the filter's format and fields.
    fn render(&self, pdu: &ArcPdu, now: u64, user: &UserId, req: &SyncRequest) -> JsonValue {
        let mut ev = if req.federation_format {
            // The PDU as servers exchange it, with the client's `unsigned` beside it.
            let client = self.serve_to(pdu, now, user, Some(&req.device_id));
            let mut raw = serde_json::from_slice::<JsonValue>(&pdu.to_bytes()).unwrap_or_else(|_| client.clone());
            raw["event_id"] = json!(pdu.event_id);
            raw["unsigned"] = client["unsigned"].clone();
            raw
        } else {
            self.serve_to(pdu, now, user, Some(&req.device_id))
        };
        if let Some(fields) = &req.event_fields {
            ev = crate::filter::only_fields(&ev, fields);
        }
        ev
    }

    /// The users `user` ignores (§"Ignoring Users": the `ignored_users` keys of the
    /// global `m.ignored_user_list` account data).
    pub fn ignored_users(&self, user: &UserId) -> Result<HashSet<String>, EngineError> {
        let Some(bytes) = self.users.account_data(user.as_str(), None, "m.ignored_user_list").map_err(users_err)?
        else {
            return Ok(HashSet::new());
        };
        let json: JsonValue = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(json["ignored_users"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default())
    }

    /// Whether the invite `event` (or, for an invite from another server, the
    /// member event in its stripped state) was sent by an ignored user.
    pub(crate) fn invited_by_ignored(
        &self,
        user: &UserId,
        event: u64,
        state: &[JsonValue],
        ignored: &HashSet<String>,
    ) -> bool {
        let sender = match self.rooms.pdu_by_short(event) {
            Ok(Some(p)) => Some(p.sender.to_string()),
            _ => state
                .iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == user.as_str())
                .and_then(|e| e["sender"].as_str().map(str::to_owned)),
        };
        sender.is_some_and(|s| ignored.contains(&s))
    }

    /// Whether the membership event `event` (a `leave` or `ban` of `user`) was
    /// sent by someone else: a kick or a ban, not a leave of her own.
    /// An event that cannot be read here (the leave of an invite to a room this
    /// server is not in has no room version to parse it by) counts as her own.
    pub(crate) fn removed_by_other(&self, user: &UserId, event: u64) -> bool {
        match self.rooms.pdu_by_short(event) {
            Ok(pdu) => pdu.is_some_and(|p| p.sender != *user),
            Err(e) => {
                tracing::debug!(%user, error = %e, "leave event unreadable; treated as the user's own");
                false
            }
        }
    }

    pub(crate) fn changed_account_data(
        &self,
        user: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<ChangedData, EngineError> {
        let mut changed = ChangedData { global: Vec::new(), rooms: HashMap::new() };
        for (room, kind, data) in self.users.account_data_since(user.as_str(), since).map_err(users_err)? {
            if data.count > upto || since.is_some_and(|s| data.count <= s) {
                continue;
            }
            let Ok(content) = serde_json::from_slice::<JsonValue>(&data.json) else { continue };
            let event = json!({ "type": kind, "content": content });
            if room.is_empty() {
                changed.global.push(event);
            } else {
                changed.rooms.entry(room).or_default().push(event);
            }
        }
        Ok(changed)
    }

    async fn sync_once(
        &self,
        user: &UserId,
        since: Option<u64>,
        upto: u64,
        req: &SyncRequest,
    ) -> Result<(JsonValue, bool), EngineError> {
        let now = now_ms();
        let typing_serial = self.ephemeral.serial();
        let since_typing = if since.is_some() { req.since_typing } else { 0 };
        let since_i = since.map_or(0, |s| s as i64);
        let upto_i = upto as i64;
        let mut data = self.changed_account_data(user, since, upto)?;
        let (mut join, mut invite, mut leave, mut knock) = (Map::new(), Map::new(), Map::new(), Map::new());
        // Device-list tracking (§"Tracking the device list for a user"): who joined or
        // left a room shared with the user since the token.
        let mut joined_rooms = Vec::new();
        let (mut member_joins, mut member_leaves) = (BTreeSet::new(), BTreeSet::new());
        for (room_id, Membership { membership, count, event }) in
            self.rooms.rooms_of(user.as_str()).map_err(rooms_err)?
        {
            if count > upto_i {
                continue; // happened after this response's position: next time
            }
            if !req.rooms.allows_room(room_id.as_str()) {
                // Filtered out of the answer, but still shared for presence and devices.
                if membership == "join" {
                    joined_rooms.push(room_id.clone());
                }
                continue;
            }
            let fresh = since.is_none() || count > since_i;
            // A room the user was kicked or banned from is always shown, also on
            // an initial sync without `include_leave` (as Synapse does): otherwise a
            // user removed before her first sync never learns of it.
            let show_leave = since.is_some()
                || req.include_leave
                || membership == "ban"
                || (membership == "leave" && self.removed_by_other(user, event));
            match membership.as_str() {
                "join" => {
                    // A room with nothing new since the token (no event, receipt, typing
                    // change or account data) is passed without reading it: a user in
                    // hundreds of rooms paid a timeline and a receipt read for each.
                    if let Some(s) = since
                        && !fresh
                        && !req.full_state
                        && !data.rooms.contains_key(room_id.as_str())
                        && self.ephemeral.typing_changed_in(&room_id) <= since_typing
                        && self.rooms.quiet_since(&room_id, since_i).map_err(rooms_err)?
                        && self.receipts_quiet_since(&room_id, s)?
                    {
                        joined_rooms.push(room_id.clone());
                        continue;
                    }
                    let timeline = self.visible_timeline(&room_id, user, since_i, upto_i, req)?;
                    let events = &timeline.read;
                    joined_rooms.push(room_id.clone());
                    if since.is_some() {
                        self.note_member_changes(&room_id, user, fresh, events, &mut member_joins, &mut member_leaves)?;
                    }
                    let mut room_data = data.rooms.remove(room_id.as_str()).unwrap_or_default();
                    keep_wanted(&mut room_data, &req.room_account_data, room_id.as_str());
                    let mut ephemeral = self.room_ephemeral(&room_id, user, since, since_typing, fresh)?;
                    keep_wanted(&mut ephemeral, &req.ephemeral, room_id.as_str());
                    drop_ignored_ephemeral(&mut ephemeral, &req.ignored);
                    if events.is_empty() && room_data.is_empty() && ephemeral.is_empty() && !fresh && !req.full_state {
                        continue;
                    }
                    // The client has this room's state at the token unless the room is new
                    // to it or it asked for all of it again.
                    let state_since = since.filter(|_| !fresh && !req.full_state).map(|s| s as i64);
                    let mut body = self.joined_room(&room_id, user, &timeline, state_since, upto_i, req, now)?;
                    body["account_data"]["events"] = JsonValue::Array(room_data);
                    body["ephemeral"]["events"] = JsonValue::Array(ephemeral);
                    let (notes, highlights) = self.unread_counts(&room_id, user, upto_i).await?;
                    body["unread_notifications"] =
                        json!({ "notification_count": notes, "highlight_count": highlights });
                    join.insert(room_id.to_string(), body);
                }
                "invite" if fresh => {
                    let state = match self.rooms.invite_state(user, &room_id).map_err(rooms_err)? {
                        Some(state) if !self.rooms.is_local_room(&room_id) => state,
                        _ => self.stripped_state(&room_id, user)?,
                    };
                    // §"Ignoring Users": "Servers must not send room invites from ignored
                    // users to clients."
                    if !req.ignored.is_empty() && self.invited_by_ignored(user, event, &state, &req.ignored) {
                        continue;
                    }
                    invite.insert(room_id.to_string(), json!({ "invite_state": { "events": state } }));
                }
                "knock" if fresh => {
                    let state = match self.rooms.invite_state(user, &room_id).map_err(rooms_err)? {
                        Some(state) if !self.rooms.is_local_room(&room_id) => state,
                        _ => self.stripped_state(&room_id, user)?,
                    };
                    knock.insert(room_id.to_string(), json!({ "knock_state": { "events": state } }));
                }
                "leave" | "ban" if fresh && show_leave => {
                    let (events, limited) =
                        self.rooms.timeline_between(&room_id, since_i, count, req.timeline_limit).map_err(rooms_err)?;
                    let visible: Vec<&(i64, ArcPdu)> = events
                        .iter()
                        .filter(|(c, p)| {
                            req.timeline.matches(p)
                                && !ignored(req, p)
                                && self.rooms.visible_to(user, p, *c).unwrap_or(false)
                        })
                        .collect();
                    // The state up to the start of this timeline, as for a joined room, but
                    // never past the leave. A room this server holds no state of (an invite
                    // from another server that was refused) has none to give.
                    let state_since = since.filter(|_| !req.full_state).map(|s| s as i64);
                    let state = self.state_block(&room_id, user, &visible, count, state_since, req).unwrap_or_default();
                    let state: Vec<JsonValue> = state.iter().map(|p| self.render(p, now, user, req)).collect();
                    let timeline: Vec<JsonValue> =
                        visible.iter().map(|(_, p)| self.render(p, now, user, req)).collect();
                    let prev = events.first().map_or(since_i, |(c, _)| c - 1);
                    leave.insert(
                        room_id.to_string(),
                        json!({
                            "timeline": { "events": timeline, "limited": limited, "prev_batch": format!("t{prev}") },
                            "state": { "events": state },
                            "account_data": { "events": [] },
                        }),
                    );
                }
                _ => {}
            }
        }
        let pending =
            self.users.pending_to_device(user.as_str(), &req.device_id, upto, TO_DEVICE_PAGE).map_err(users_err)?;
        // A full page: the token acknowledges only what it carried, or the rest
        // (queued at or below `upto`) would be deleted unseen by the next sync.
        let to_device_ack = match pending.last() {
            Some((pos, _)) if pending.len() == TO_DEVICE_PAGE && *pos < upto => Some(*pos),
            _ => None,
        };
        let to_device: Vec<JsonValue> = pending
            .into_iter()
            .filter_map(|(_, m)| {
                let content = serde_json::from_slice::<JsonValue>(&m.content).ok()?;
                Some(json!({ "sender": m.sender, "type": m.kind, "content": content }))
            })
            .collect();
        // Members new to a room shared with the user: their presence comes along even
        // if it did not change since the token (the client never had it).
        let mut presence = self.presence_events(user, since_typing, &joined_rooms, &member_joins)?;
        let (changed, left) = match since {
            Some(s) => self.device_list_changes(user, s, upto, &joined_rooms, member_joins, member_leaves)?,
            None => (Vec::new(), Vec::new()),
        };
        presence.retain(|p| req.presence.passes("m.presence", p["sender"].as_str().unwrap_or_default()));
        presence.truncate(req.presence.limit.unwrap_or(usize::MAX));
        keep_wanted(&mut data.global, &req.account_data, "");
        let otk_counts = self.e2ee.one_time_key_counts(user.as_str(), &req.device_id).map_err(e2ee_err)?;
        let fallback_types = self.e2ee.unused_fallback_types(user.as_str(), &req.device_id).map_err(e2ee_err)?;
        let has_news = !changed.is_empty()
            || !presence.is_empty()
            || !left.is_empty()
            || !join.is_empty()
            || !invite.is_empty()
            || !leave.is_empty()
            || !knock.is_empty()
            || !data.global.is_empty()
            || !to_device.is_empty();
        let body = json!({
            "next_batch": match to_device_ack {
                Some(ack) => format!("s{upto}_{typing_serial}_{ack}"),
                None => format!("s{upto}_{typing_serial}"),
            },
            "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
            "account_data": { "events": data.global },
            "presence": { "events": presence },
            "to_device": { "events": to_device },
            "device_lists": { "changed": changed, "left": left },
            "device_one_time_keys_count": otk_counts,
            "device_unused_fallback_key_types": fallback_types,
        });
        Ok((body, has_news))
    }

    /// The `state` block of a room's sync entry (Client-Server API §"GET /sync":
    /// "Updates to the state, between the time indicated by the `since` parameter, and
    /// the start of the `timeline` (or all state up to the start of the `timeline`, if
    /// `since` is not given, or `full_state` is true)").
    ///
    /// `timeline` is what the client is sent; `since` is the position the client
    /// already has the room's state at (None: it has none). State events in the
    /// timeline are never repeated here. With lazy loading, member events only for
    /// the timeline's senders (and, when the client has no state, the user).
    fn state_block(
        &self,
        room_id: &RoomId,
        user: &UserId,
        timeline: &[&(i64, ArcPdu)],
        upto: i64,
        since: Option<i64>,
        req: &SyncRequest,
    ) -> Result<Vec<ArcPdu>, EngineError> {
        let start = match timeline.first() {
            Some((_, p)) => self.rooms.snapshot_before(&p.event_id).map_err(rooms_err)?,
            None => self.rooms.snapshot_at_position(room_id, upto).map_err(rooms_err)?,
        };
        let in_timeline: HashSet<&ruma::EventId> = timeline.iter().map(|(_, p)| &*p.event_id).collect();
        let mut state = match since {
            Some(s) => {
                let before = self.rooms.snapshot_at_position(room_id, s).map_err(rooms_err)?;
                self.rooms.state_added(before, start).map_err(rooms_err)?
            }
            None => self.rooms.state_at(start).map_err(rooms_err)?,
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
                    if let Some(p) = self.rooms.state_pdu_at(start, "m.room.member", who).map_err(rooms_err)?
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
    fn visible_timeline(
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
            let (mut events, more) = self.rooms.timeline_between(room_id, after, top, want).map_err(rooms_err)?;
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
    fn joined_room(
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
        let current = self.rooms.current_state(room_id).map_err(rooms_err)?;
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
    fn room_ephemeral(
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
            for p in self.rooms.current_state(room).map_err(rooms_err)? {
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

    /// `m.presence` events of the user and of users sharing a room with them, set after
    /// the token's serial (all known ones on a first sync).
    fn presence_events(
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
    fn shares_room(&self, who: &str, rooms: &[ruma::OwnedRoomId]) -> Result<bool, EngineError> {
        for room in rooms {
            if let Some(p) = self.rooms.state_event(room, "m.room.member", who).map_err(rooms_err)?
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
            .rooms_of(user.as_str())
            .map_err(rooms_err)?
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
        for who in self.e2ee.changed_between(since, upto).map_err(e2ee_err)? {
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
            if let Some(p) = self.rooms.state_event(room_id, kind, key).map_err(rooms_err)? {
                out.push(stripped_event(&p));
            }
        }
        Ok(out)
    }
}

/// Keeps the account-data or ephemeral events (`{type, content}`) of room `room`
/// ("" for global ones) that `filter` lets through, at most its `limit`.
fn keep_wanted(events: &mut Vec<JsonValue>, filter: &EventFilter, room: &str) {
    if !room.is_empty() && !filter.allows_room(room) {
        events.clear();
        return;
    }
    events.retain(|e| filter.passes(e["type"].as_str().unwrap_or_default(), e["sender"].as_str().unwrap_or_default()));
    events.truncate(filter.limit.unwrap_or(usize::MAX));
}

/// Whether `pdu` is hidden as the message of an ignored user (§"Ignoring Users":
/// "Servers must still send state events sent by ignored users to clients").
pub fn ignored(req: &SyncRequest, pdu: &ArcPdu) -> bool {
    !req.ignored.is_empty() && pdu.state_key.is_none() && req.ignored.contains(pdu.sender.as_str())
}

/// Takes ignored users out of `m.typing` and `m.receipt` events.
pub(crate) fn drop_ignored_ephemeral(events: &mut [JsonValue], ignored: &HashSet<String>) {
    if ignored.is_empty() {
        return;
    }
    for e in events.iter_mut() {
        if e["type"] == "m.typing"
            && let Some(ids) = e["content"]["user_ids"].as_array_mut()
        {
            ids.retain(|u| !u.as_str().is_some_and(|u| ignored.contains(u)));
        } else if e["type"] == "m.receipt"
            && let Some(by_event) = e["content"].as_object_mut()
        {
            for kinds in by_event.values_mut() {
                for users in kinds.as_object_mut().into_iter().flat_map(|k| k.values_mut()) {
                    if let Some(users) = users.as_object_mut() {
                        users.retain(|u, _| !ignored.contains(u));
                    }
                }
            }
        }
    }
}
