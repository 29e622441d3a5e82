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
    rooms::{ArcPdu, tables::Membership},
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

mod devices;
mod rooms;

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
            self.users.ack_to_device(user.as_str(), &req.device_id, acked).await?;
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
        let Some(bytes) = self.users.account_data(user.as_str(), None, "m.ignored_user_list")? else {
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
        for (room, kind, data) in self.users.account_data_since(user.as_str(), since)? {
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
        for (room_id, Membership { membership, count, event }) in self.rooms.rooms_of(user.as_str())? {
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
                        && self.rooms.quiet_since(&room_id, since_i)?
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
                    let state = match self.rooms.invite_state(user, &room_id)? {
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
                    let state = match self.rooms.invite_state(user, &room_id)? {
                        Some(state) if !self.rooms.is_local_room(&room_id) => state,
                        _ => self.stripped_state(&room_id, user)?,
                    };
                    knock.insert(room_id.to_string(), json!({ "knock_state": { "events": state } }));
                }
                "leave" | "ban" if fresh && show_leave => {
                    let (events, limited) =
                        self.rooms.timeline_between(&room_id, since_i, count, req.timeline_limit)?;
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
        let pending = self.users.pending_to_device(user.as_str(), &req.device_id, upto, TO_DEVICE_PAGE)?;
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
        let otk_counts = self.e2ee.one_time_key_counts(user.as_str(), &req.device_id)?;
        let fallback_types = self.e2ee.unused_fallback_types(user.as_str(), &req.device_id)?;
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
