//! Simplified sliding sync (MSC4186), the sync of Element X and matrix-rust-sdk.
//!
//! MSC4186: "The client sends a request with a set of *lists* … each list has
//! *ranges* of the rooms, sorted by their most recent activity (the `bump_stamp`)
//! … and *room subscriptions* for rooms the client wants regardless of the lists.
//! The server answers with the rooms in those ranges and subscriptions that have
//! changed since the `pos` the client sends, and the extensions (`to_device`,
//! `e2ee`, `account_data`, `receipts`, `typing`)." Parameters are not sticky: every
//! request carries the whole configuration. An unknown `pos` is answered with
//! `M_UNKNOWN_POS` so the client starts the connection again.
//!
//! Built on the same engine as `/sync` (memberships, timelines, state snapshots,
//! receipts, the stream counter's notifier); what a connection was sent lives in
//! [`conn::Connections`]. A room is sent in full (`initial`) the first time a
//! connection sees it, then only its news: new timeline events, state that changed
//! between the snapshot it was last sent at and now and matches the rules, and its
//! counts. A room that leaves every window keeps its record, so when it comes back
//! the connection gets what it missed.
//!
//! Rooms in the lists: joined, invited, knocked and banned rooms, rooms the user was
//! kicked from, and rooms the user left since the connection's last answer (so the
//! client learns of it), as Synapse does.

pub mod conn;
mod lists;
mod room;
pub mod types;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use myelin_storage::Caches;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

pub use conn::{Connections, UnknownPos};
pub use types::*;

use crate::{Engine, EngineError, rooms::tables::Membership};

/// Event types that move a room up its lists (MSC4186's default bump event types).
pub const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// Most events read back from a room's newest one to find its bump stamp.
const BUMP_SCAN: usize = 200;
/// Most timeline events per room and answer.
pub const MAX_TIMELINE: u64 = 500;
/// Most to-device messages per answer.
const MAX_TO_DEVICE: u64 = 1000;

/// What a sliding-sync request fails with.
#[derive(Debug, thiserror::Error)]
pub enum SlidingError {
    /// The `pos` is not (or no longer) known: start the connection again.
    #[error(transparent)]
    UnknownPos(#[from] UnknownPos),
    /// The request names something malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A user's memberships: room, membership, and for a leave whether someone else did it.
type UserRooms = Arc<Vec<(OwnedRoomId, Membership, bool)>>;

fn user_rooms_heap(rooms: &UserRooms) -> usize {
    16 + rooms
        .iter()
        .map(|(r, _, _)| std::mem::size_of::<(OwnedRoomId, Membership, bool)>() + r.as_str().len())
        .sum::<usize>()
}

/// Server-side state of sliding sync: connections, and caches keyed by immutable things.
pub struct Sliding {
    /// What each connection was sent.
    pub connections: Connections,
    /// Per room: `(position scanned up to, bump stamp there)`.
    bumps: myelin_storage::SharedLru<OwnedRoomId, (i64, i64)>,
    /// Per state snapshot: the room facts lists and rooms show (snapshots never change).
    summaries: myelin_storage::SharedLru<u64, Arc<room::Summary>>,
    /// Per local user: their memberships, with whether each leave was someone else's
    /// doing, at a membership counter (`Rooms::memberships_version`).
    memberships: myelin_storage::SharedLru<String, (u64, UserRooms)>,
}

impl Sliding {
    /// No connections yet, and empty caches with their shares of `caches`.
    pub fn new(caches: &Caches) -> Self {
        use crate::cache_shares::{SLIDING_BUMPS, SLIDING_MEMBERSHIPS, SLIDING_SUMMARIES};
        Self {
            connections: Connections::new(),
            bumps: caches.lru(SLIDING_BUMPS, |room: &OwnedRoomId, _| room.as_str().len()),
            summaries: caches.lru(SLIDING_SUMMARIES, |_, s: &Arc<room::Summary>| s.heap_bytes()),
            memberships: caches.lru(SLIDING_MEMBERSHIPS, |user: &String, (_, rooms): &(u64, UserRooms)| {
                user.capacity() + user_rooms_heap(rooms)
            }),
        }
    }
}

/// One request, as the API edge read it.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// The requesting device.
    pub device_id: String,
    /// The `pos` query parameter.
    pub pos: Option<String>,
    /// How long to wait for news when there is none.
    pub timeout: Duration,
    /// The body.
    pub body: Request,
}

/// What one room is wanted with, merged over the lists and subscriptions naming it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wanted {
    pub(crate) timeline_limit: u64,
    /// Sorted, without duplicates.
    pub(crate) rules: Vec<(String, String)>,
    /// The lists the room is in a range of.
    pub(crate) lists: Vec<String>,
    pub(crate) subscribed: bool,
}

impl Wanted {
    fn merge(&mut self, spec: &RoomSpec) {
        self.timeline_limit = self.timeline_limit.max(spec.timeline_limit.min(MAX_TIMELINE));
        for rule in &spec.required_state {
            if !self.rules.contains(rule) {
                self.rules.push(rule.clone());
            }
        }
        self.rules.sort();
    }
}

fn err(e: impl Into<EngineError>) -> EngineError {
    e.into()
}

use crate::util::now_ms;

/// One candidate room of the lists.
struct Candidate {
    room_id: OwnedRoomId,
    membership: Membership,
    stamp: i64,
}

impl Engine {
    /// Runs one sliding-sync request for `user`, waiting up to `params.timeout` for news
    /// when it continues a connection.
    pub async fn sliding_sync(&self, user: &UserId, params: Params) -> Result<Response, SlidingError> {
        for name in params.body.lists.keys() {
            if name.len() > 64 {
                return Err(SlidingError::BadRequest("list names are at most 64 bytes".into()));
            }
        }
        if params.body.lists.len() > 100 || params.body.room_subscriptions.len() > 1000 {
            return Err(SlidingError::BadRequest("at most 100 lists and 1,000 room subscriptions".into()));
        }
        let conn_id = params.body.conn_id.clone().unwrap_or_default();
        if conn_id.len() > 64 {
            return Err(SlidingError::BadRequest("conn_id is at most 64 bytes".into()));
        }
        let store = &self.sliding.connections;
        if params.pos.is_none() {
            store.forget(user.as_str(), &params.device_id, &conn_id);
        }
        let prev = store.resume(user.as_str(), &params.device_id, &conn_id, params.pos.as_deref())?;
        if let Some(td) = params.body.extensions.to_device.as_ref().filter(|t| t.enabled == Some(true))
            && let Some(since) = td.since.as_deref()
        {
            let since =
                since.parse::<u64>().map_err(|_| SlidingError::BadRequest(format!("bad to_device since {since}")))?;
            self.users.ack_to_device(user.as_str(), &params.device_id, since).await.map_err(err)?;
        }
        let deadline = Instant::now() + params.timeout;
        let mut wake = self.stream.subscribe();
        let mut typing_wake = self.ephemeral.subscribe();
        // After a timeout (or at shutdown) one last answer is built with what there is.
        let mut last = false;
        loop {
            let upto = self.stream.current();
            let (mut response, state, news) = self.sliding_once(user, &params, &prev, upto).await?;
            if news || params.pos.is_none() || last || Instant::now() >= deadline {
                response.pos = store.commit(user.as_str(), &params.device_id, &conn_id, state);
                tracing::debug!(
                    %user,
                    device = %params.device_id,
                    conn_id,
                    pos = ?params.pos,
                    next = %response.pos,
                    upto,
                    device_lists = ?response.extensions.e2ee.as_ref().map(|e| (&e.device_lists.changed, &e.device_lists.left)),
                    "sliding sync answer"
                );
                return Ok(response);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let changed = async {
                tokio::select! {
                    r = wake.changed() => r.is_ok(),
                    r = typing_wake.changed() => r.is_ok(),
                }
            };
            last = !matches!(tokio::time::timeout(remaining, changed).await, Ok(true));
        }
    }

    /// Builds one answer at stream position `upto` from the connection state `prev`;
    /// says whether it tells the client anything.
    async fn sliding_once(
        &self,
        user: &UserId,
        params: &Params,
        prev: &conn::ConnState,
        upto: u64,
    ) -> Result<(Response, conn::ConnState, bool), SlidingError> {
        let body = &params.body;
        let upto_i = upto as i64;
        let since = prev.answered.then_some(prev.upto);
        let typing_serial = self.ephemeral.serial();
        let direct = self.direct_rooms(user)?;
        // §"Ignoring Users": their messages, invites, typing and receipts are not sent.
        let ignored = self.ignored_users(user)?;
        let candidates = self.list_candidates(user, prev, upto_i, &ignored)?;

        // Lists: filter, sort by bump stamp (newest first), take the ranges.
        let mut wanted: BTreeMap<OwnedRoomId, Wanted> = BTreeMap::new();
        let mut lists_out = BTreeMap::new();
        // Rooms in a window or subscribed, with their membership and stamp: a few dozen,
        // where the candidates may be thousands (no map over all of them per request).
        let mut picked: HashMap<OwnedRoomId, (Membership, i64)> = HashMap::new();
        for (name, list) in &body.lists {
            let mut rooms: Vec<&Candidate> = Vec::new();
            for c in &candidates {
                if self.passes(user, c, list.filters.as_ref(), &direct)? {
                    rooms.push(c);
                }
            }
            rooms.sort_by(|a, b| b.stamp.cmp(&a.stamp).then_with(|| a.room_id.cmp(&b.room_id)));
            lists_out.insert(name.clone(), ListOut { count: rooms.len() as u64 });
            for &(start, end) in list.ranges.iter().take(100) {
                let end = end.min(rooms.len().saturating_sub(1) as u64);
                if rooms.is_empty() || start > end {
                    continue;
                }
                for c in &rooms[start as usize..=end as usize] {
                    picked.entry(c.room_id.clone()).or_insert_with(|| (c.membership.clone(), c.stamp));
                    let w = wanted.entry(c.room_id.clone()).or_default();
                    w.merge(&list.room);
                    if !w.lists.contains(name) {
                        w.lists.push(name.clone());
                    }
                }
            }
        }
        // Subscriptions: any room the user has a membership in, listed or not.
        for (room_id, spec) in &body.room_subscriptions {
            if !picked.contains_key(room_id) {
                let listed = candidates.iter().find(|c| c.room_id == *room_id);
                let membership = match listed {
                    Some(c) => Some(c.membership.clone()),
                    None => self.rooms.membership(user.as_str(), room_id).map_err(err)?,
                };
                match membership {
                    Some(m) if m.count <= upto_i => {
                        let stamp = self.bump_stamp_of(room_id, &m, upto_i)?;
                        picked.insert(room_id.clone(), (m, stamp));
                    }
                    // Not the user's room: nothing to show (as Synapse, no error).
                    _ => continue,
                }
            }
            let w = wanted.entry(room_id.clone()).or_default();
            w.merge(spec);
            w.subscribed = true;
        }

        // The rooms.
        let now = now_ms();
        let mut next = conn::ConnState {
            upto,
            answered: true,
            typing: typing_serial,
            rooms: prev.rooms.clone(),
            lists: lists_out.iter().map(|(k, v)| (k.clone(), v.count)).collect(),
        };
        let mut rooms_out = BTreeMap::new();
        let mut initial_rooms = HashSet::new();
        for (room_id, w) in &wanted {
            let Some((m, stamp)) = picked.get(room_id) else { continue };
            let stamp = *stamp;
            let cx = room::Cx {
                user,
                device: &params.device_id,
                upto: upto_i,
                conn_upto: prev.upto as i64,
                now,
                is_dm: direct.contains(room_id.as_str()),
                stamp,
                ignored: &ignored,
            };
            if let Some((out, sent)) = self.sliding_room(room_id, m, w, prev.rooms.get(room_id), &cx).await? {
                if out.initial {
                    initial_rooms.insert(room_id.clone());
                }
                rooms_out.insert(room_id.to_string(), out);
                next.rooms.insert(room_id.clone(), sent);
            }
        }

        // Extensions.
        let ext = &body.extensions;
        let mut extensions = ExtensionsOut::default();
        let mut news = !rooms_out.is_empty() || next.lists != prev.lists;
        if let Some(td) = ext.to_device.as_ref().filter(|t| t.enabled == Some(true)) {
            let limit = td.limit.unwrap_or(100).clamp(1, MAX_TO_DEVICE) as usize;
            let pending = self.users.pending_to_device(user.as_str(), &params.device_id, upto, limit).map_err(err)?;
            // A full page ends at its last message, so the rest is not acknowledged unseen.
            let next_batch = match pending.last() {
                Some((pos, _)) if pending.len() == limit => *pos,
                _ => upto,
            };
            let events: Vec<JsonValue> = pending
                .into_iter()
                .filter_map(|(_, m)| {
                    let content = serde_json::from_slice::<JsonValue>(&m.content).ok()?;
                    Some(json!({ "sender": m.sender, "type": m.kind, "content": content }))
                })
                .collect();
            news |= !events.is_empty();
            extensions.to_device = Some(ToDeviceOut { next_batch: next_batch.to_string(), events });
        }
        if ext.e2ee.as_ref().is_some_and(|t| t.enabled == Some(true)) {
            let mut e2ee = E2eeOut::default();
            if let Some(s) = since {
                let (changed, left) = self.sliding_device_lists(user, &candidates, s, upto)?;
                news |= !changed.is_empty() || !left.is_empty();
                e2ee.device_lists = DeviceListsOut { changed, left };
            }
            e2ee.device_one_time_keys_count =
                json!(self.e2ee.one_time_key_counts(user.as_str(), &params.device_id).map_err(err)?);
            e2ee.device_unused_fallback_key_types =
                json!(self.e2ee.unused_fallback_types(user.as_str(), &params.device_id).map_err(err)?);
            extensions.e2ee = Some(e2ee);
        }
        let in_scope = |scope: &Scoped| -> Vec<&OwnedRoomId> {
            wanted
                .iter()
                .filter(|(r, w)| {
                    let lists: Vec<&str> = w.lists.iter().map(String::as_str).collect();
                    scope.covers(&lists, w.subscribed, r.as_str())
                })
                .map(|(r, _)| r)
                .collect()
        };
        if let Some(scope) = ext.account_data.as_ref().filter(|s| s.enabled == Some(true)) {
            let changed = self.changed_account_data(user, since, upto)?;
            let mut all_rooms = if initial_rooms.is_empty() || since.is_none() {
                None
            } else {
                Some(self.changed_account_data(user, None, upto)?.rooms)
            };
            let mut out = AccountDataOut { global: changed.global, rooms: BTreeMap::new() };
            let mut changed_rooms = changed.rooms;
            for room_id in in_scope(scope) {
                let events = match all_rooms.as_mut() {
                    Some(all) if initial_rooms.contains(room_id) => all.remove(room_id.as_str()),
                    _ => changed_rooms.remove(room_id.as_str()),
                };
                if let Some(events) = events.filter(|e| !e.is_empty()) {
                    out.rooms.insert(room_id.to_string(), events);
                }
            }
            news |= !out.global.is_empty() || !out.rooms.is_empty();
            extensions.account_data = Some(out);
        }
        if let Some(scope) = ext.receipts.as_ref().filter(|s| s.enabled == Some(true)) {
            let mut out = RoomEventsOut::default();
            for room_id in in_scope(scope) {
                let from = match since {
                    Some(s) if !initial_rooms.contains(room_id) => {
                        if self.receipts_quiet_since(room_id, s)? {
                            continue;
                        }
                        s
                    }
                    _ => 0,
                };
                if let Some(mut event) = self.receipt_event(room_id, user, from)? {
                    crate::sync::drop_ignored_ephemeral(std::slice::from_mut(&mut event), &ignored);
                    out.rooms.insert(room_id.to_string(), event);
                }
            }
            news |= !out.rooms.is_empty();
            extensions.receipts = Some(out);
        }
        if let Some(scope) = ext.typing.as_ref().filter(|s| s.enabled == Some(true)) {
            let mut out = RoomEventsOut::default();
            for room_id in in_scope(scope) {
                let (mut users, changed) = self.ephemeral.typing_in(room_id);
                users.retain(|u| !ignored.contains(u.as_str()));
                let fresh = since.is_none() || initial_rooms.contains(room_id);
                if (fresh && !users.is_empty()) || (!fresh && changed > prev.typing) {
                    out.rooms
                        .insert(room_id.to_string(), json!({ "type": "m.typing", "content": { "user_ids": users } }));
                }
            }
            news |= !out.rooms.is_empty();
            extensions.typing = Some(out);
        }
        let response = Response {
            pos: String::new(),
            txn_id: body.txn_id.clone(),
            lists: lists_out,
            rooms: rooms_out,
            extensions,
        };
        Ok((response, next, news))
    }
}
