//! The rooms engine: an append-only event DAG with materialized state snapshots.
//!
//! Spec: Server-Server API §"PDUs", §"Authorization rules", §"Checks performed
//! on receipt of a PDU"; Room Versions §"State resolution" (v2, v2.1 in v12).
//!
//! Appending an event (local or, later, from federation) is, under the room's
//! lock: compute the state before it (the head's current state when it builds
//! on all forward extremities, else the resolution of the states after its
//! prev events) → authorize it against its auth events and that state →
//! intern its ids → derive the state after it → one batch with the PDU, its
//! metadata, the timeline row, prev-event edges, the new extremities, the
//! room head and one `outbound` row per remote server in the room → group
//! commit → update the in-memory head.
//!
//! Guarantees: an event is visible (timeline, state, head) only after its
//! batch is durable; a room's appends are serialised by its lock while
//! different rooms append in parallel and share group commits; a rejected
//! local event is never stored.
//!
//! Not yet: outliers, soft-failure and rejected-event storage for events from
//! other servers (the federation issue adds the inbound path and uses
//! [`Rooms::append_pdu`]); state resolution for room version 1 (ruma does not
//! implement it).

mod build;
mod create;
mod inbound;
pub mod pdu;
mod read;
pub mod relations;
mod resolve;
pub mod search;
pub mod state;
pub mod tables;
pub mod version;
mod visibility;

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroUsize,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

pub use create::{CreateRoom, Preset};
pub use inbound::Appended;
use lru::LruCache;
use myelin_storage::{Batch, Db, Direction, Interner, Raw, StorageError, StreamCounter, catalog};
use parking_lot::Mutex;
pub use pdu::{ArcPdu, Pdu};
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res,
};
use serde_json::Value as JsonValue;
use tables::*;

use crate::keys::ServerKeys;

/// What can go wrong in the rooms engine.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The event is not allowed (authorization rules).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such room (on this server).
    #[error("unknown room {0}")]
    UnknownRoom(String),
    /// An event that must exist locally does not.
    #[error("unknown event {0}")]
    UnknownEvent(String),
    /// Malformed event or request.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// A room version we cannot serve.
    #[error("unsupported room version {0}")]
    UnsupportedVersion(String),
    /// A snapshot id with no stored layer: a storage bug.
    #[error("state snapshot {0} is missing")]
    MissingState(u64),
    /// State resolution failed.
    #[error("state resolution: {0}")]
    Resolution(String),
    /// A room alias or id that is taken.
    #[error("in use: {0}")]
    InUse(String),
}

/// An event to be created by a local user.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `type`.
    pub kind: TimelineEventType,
    /// `state_key` for state events.
    pub state_key: Option<String>,
    /// `content`.
    pub content: JsonValue,
    /// For redactions: the redacted event (placed per room version).
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    /// A state event.
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: JsonValue) -> Self {
        Self { kind: kind.into(), state_key: Some(state_key.into()), content, redacts: None }
    }

    /// A message-like event.
    pub fn message(kind: impl Into<TimelineEventType>, content: JsonValue) -> Self {
        Self { kind: kind.into(), state_key: None, content, redacts: None }
    }
}

/// The in-memory head of a room, guarded by the room lock.
#[derive(Clone)]
pub(crate) struct Head {
    room_id: OwnedRoomId,
    short: u64,
    version: RoomVersionId,
    rules: RoomVersionRules,
    /// Forward extremities: short id and event id.
    extremities: Vec<(u64, OwnedEventId)>,
    depth: u64,
    /// Current state snapshot (0 before the create event).
    state: u64,
    /// Joined member count per server, from the current state.
    servers: BTreeMap<OwnedServerName, usize>,
}

type RoomLock = Arc<tokio::sync::Mutex<Option<Head>>>;

/// A room state: stored, or freshly resolved and not stored yet.
#[derive(Clone)]
pub(crate) enum StateRef {
    /// No state (before the create event).
    Empty,
    /// A stored snapshot.
    Stored(u64),
    /// A resolved state, sorted by short state key.
    Full(Arc<state::FullState>),
}

/// What an append knows of the state before its event.
pub(crate) enum Before {
    /// Nothing yet: computed from the event's prev events, then checked against.
    FromPrevs,
    /// Given (a join over federation, whose prev events we do not have): checked
    /// against, and prev events that are not stored are skipped instead of refused.
    Given(StateRef),
    /// Computed from the prev events by the caller, who already authorized the event against it.
    Authorized(StateRef),
}

/// The rooms engine of one server.
pub struct Rooms {
    db: Arc<Db>,
    server_name: OwnedServerName,
    keys: Arc<ServerKeys>,
    stream: StreamCounter,
    event_ids: Interner,
    room_ids: Interner,
    state_keys: Interner,
    servers: Interner,
    states: state::StateStore,
    pdus: Mutex<LruCache<u64, ArcPdu>>,
    /// Appended events whose batch is not durable yet, by short id: the next append to the
    /// room may build on them before the writer has stored them (see `append_with`).
    unsettled: Arc<Mutex<HashMap<u64, (EventMeta, ArcPdu)>>>,
    versions: Mutex<HashMap<u64, RoomVersionRules>>,
    locks: Mutex<HashMap<OwnedRoomId, RoomLock>>,
    /// Public keys we verify signatures with: ours, plus remote keys as federation learns them.
    known_keys: parking_lot::RwLock<ruma::signatures::PublicKeyMap>,
    /// Per destination, a queue position below which every outbound row is delivered
    /// (deleted): reads seek past the deletions instead of stepping over each one.
    outbound_floors: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Per room, a timeline position at or above its newest event's: raised before an
    /// event's batch is handed over, so it is never below a visible event (see
    /// [`Rooms::quiet_since`]).
    newest: crate::positions::NewestPositions<OwnedRoomId>,
    /// Per room, the servers with joined members at one state snapshot (snapshots
    /// never change, so an entry is right while the room's state is that snapshot).
    servers_at: Mutex<LruCache<OwnedRoomId, (u64, Vec<String>)>>,
    /// `(state snapshot, sender, type)` of message-like events that passed the
    /// state-dependent authorization rules: for them the outcome depends on nothing
    /// else, and a snapshot never changes (see [`Rooms::authorize`]).
    authorized: Mutex<LruCache<(u64, OwnedUserId, TimelineEventType), ()>>,
    /// Destinations with rows queued since the sender last asked, and its wake-up.
    ready_destinations: Arc<(Mutex<std::collections::BTreeSet<String>>, tokio::sync::Notify)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn state_key_string(kind: &str, state_key: &str) -> String {
    // A JSON array is unambiguous whatever the strings contain.
    serde_json::to_string(&(kind, state_key)).unwrap_or_default()
}

fn membership_of(pdu: &Pdu) -> Option<String> {
    pdu.content_value().get("membership").and_then(JsonValue::as_str).map(str::to_owned)
}

impl Rooms {
    /// Opens the rooms engine over `db`.
    pub fn open(
        db: Arc<Db>,
        server_name: OwnedServerName,
        keys: Arc<ServerKeys>,
        stream: StreamCounter,
    ) -> Result<Self, RoomError> {
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            // Cached mappings: recent events (prev and auth events are looked up again and
            // again), and nearly all rooms, state keys and servers of a busy node.
            event_ids: Interner::open(&db, &catalog::EVENTID_SHORTEVENTID, &catalog::SHORTEVENTID_EVENTID)?
                .with_cache(8192),
            room_ids: Interner::open(&db, &catalog::ROOMID_SHORTROOMID, &catalog::SHORTROOMID_ROOMID)?.with_cache(4096),
            state_keys: Interner::open(&db, &catalog::STATEKEY_SHORTSTATEKEY, &catalog::SHORTSTATEKEY_STATEKEY)?
                .with_cache(8192),
            servers: Interner::open(&db, &catalog::SERVERNAME_SHORTSERVER, &catalog::SHORTSERVER_SERVERNAME)?
                .with_cache(1024),
            states: state::StateStore::open(db.clone())?,
            pdus: Mutex::new(LruCache::new(cap(65536))),
            servers_at: Mutex::new(LruCache::new(cap(4096))),
            authorized: Mutex::new(LruCache::new(cap(4096))),
            unsettled: Arc::new(Mutex::new(HashMap::new())),
            outbound_floors: Mutex::new(std::collections::BTreeMap::new()),
            newest: crate::positions::NewestPositions::default(),
            ready_destinations: Arc::new((Mutex::new(std::collections::BTreeSet::new()), tokio::sync::Notify::new())),
            versions: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            known_keys: parking_lot::RwLock::new(keys.public_key_map()),
            db,
            server_name,
            keys,
            stream,
        })
    }

    fn lock_of(&self, room_id: &RoomId) -> RoomLock {
        self.locks.lock().entry(room_id.to_owned()).or_default().clone()
    }

    /// The short id of a known room.
    pub fn short_room(&self, room_id: &RoomId) -> Result<Option<u64>, RoomError> {
        Ok(self.room_ids.get(&*self.db, room_id.as_str())?)
    }

    fn rules_of_short_room(&self, short_room: u64) -> Result<RoomVersionRules, RoomError> {
        if let Some(r) = self.versions.lock().get(&short_room) {
            return Ok(r.clone());
        }
        let info = ROOMS.get(&*self.db, &short_room)?.ok_or_else(|| RoomError::UnknownRoom(short_room.to_string()))?;
        let rules = version::rules(
            &RoomVersionId::try_from(info.version.as_str())
                .map_err(|e| RoomError::UnsupportedVersion(format!("{}: {e}", info.version)))?,
        )?;
        self.versions.lock().insert(short_room, rules.clone());
        Ok(rules)
    }

    async fn load_head(&self, room_id: &RoomId) -> Result<Head, RoomError> {
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let info = ROOMS.get(&*self.db, &short)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let version =
            RoomVersionId::try_from(info.version.as_str()).map_err(|e| RoomError::UnsupportedVersion(e.to_string()))?;
        let rules = version::rules(&version)?;
        let mut extremities = Vec::new();
        for row in EXTREMITIES.prefix(&*self.db, &(short,), Direction::Forward)? {
            let ((_, ev), ()) = row?;
            let id = self.event_ids.lookup(&*self.db, ev)?.ok_or_else(|| RoomError::UnknownEvent(ev.to_string()))?;
            extremities.push((ev, EventId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))?));
        }
        let mut head = Head {
            room_id: room_id.to_owned(),
            short,
            version,
            rules,
            extremities,
            depth: info.depth,
            state: info.state,
            servers: BTreeMap::new(),
        };
        head.servers = self.joined_servers(head.state, None)?;
        Ok(head)
    }

    /// The head's joined servers updated by one event appended on top of it.
    fn servers_after(
        &self,
        head: &Head,
        pdu: &Pdu,
        state_before: Option<u64>,
    ) -> Result<BTreeMap<OwnedServerName, usize>, RoomError> {
        let mut servers = head.servers.clone();
        let (TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, pdu.state_key.as_deref()) else {
            return Ok(servers);
        };
        let Ok(user) = UserId::parse(target) else { return Ok(servers) };
        let was = match state_before {
            Some(s) => self.state_pdu_at(s, "m.room.member", target)?.and_then(|p| membership_of(&p)),
            None => None,
        };
        let now = membership_of(pdu);
        let server = user.server_name().to_owned();
        match (was.as_deref() == Some("join"), now.as_deref() == Some("join")) {
            (false, true) => *servers.entry(server).or_insert(0) += 1,
            (true, false) => {
                if let Some(n) = servers.get_mut(&server) {
                    *n -= 1;
                    if *n == 0 {
                        servers.remove(&server);
                    }
                }
            }
            _ => {}
        }
        Ok(servers)
    }

    /// Joined member count per server in `snapshot`; `pending` is an event of
    /// that state that is not stored yet (the one being appended).
    fn joined_servers(
        &self,
        snapshot: u64,
        pending: Option<(u64, &ArcPdu)>,
    ) -> Result<BTreeMap<OwnedServerName, usize>, RoomError> {
        let mut servers = BTreeMap::new();
        if snapshot == 0 {
            return Ok(servers);
        }
        for (_, short) in self.states.load(snapshot)?.iter() {
            let pdu = match pending {
                Some((s, p)) if s == *short => p.clone(),
                _ => match self.pdu_by_short(*short)? {
                    Some(p) => p,
                    None => continue,
                },
            };
            if pdu.kind == TimelineEventType::RoomMember
                && membership_of(&pdu).as_deref() == Some("join")
                && let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            {
                *servers.entry(user.server_name().to_owned()).or_insert(0) += 1;
            }
        }
        Ok(servers)
    }

    /// Sends an event as a local user on top of the room's forward extremities.
    pub async fn send(&self, sender: &UserId, room_id: &RoomId, event: NewEvent) -> Result<ArcPdu, RoomError> {
        self.send_for_txn(sender, room_id, event, None).await
    }

    /// [`Rooms::send`] for a client transaction: the `(device, transaction id) → event`
    /// row is written in the event's own batch, so a retried request finds the event
    /// exactly when it exists, and the send costs one durable write, not two.
    pub async fn send_for_txn(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<(&str, &str)>,
    ) -> Result<ArcPdu, RoomError> {
        let lock = self.lock_of(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(room_id).await?);
        }
        let head = guard.as_mut().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let prev: Vec<OwnedEventId> = head.extremities.iter().rev().take(20).map(|(_, id)| id.clone()).collect();
        let state = StateRef::Stored(head.state);
        let pdu = self.build(head, sender, &event, prev, &state)?;
        let txn_row = txn.map(|(device, id)| (sender.to_string(), device.to_owned(), id.to_owned()));
        let (pdu, pending) = self.append_with(head, pdu, Before::FromPrevs, txn_row, false)?;
        drop(guard);
        self.settle(room_id, pending).await?;
        Ok(pdu)
    }

    /// Waits until an appended event's batch is durable. If the write failed, the
    /// room's in-memory head ran ahead of storage: it is dropped, to be reloaded.
    pub async fn settle(&self, room_id: &RoomId, pending: myelin_storage::Pending) -> Result<(), RoomError> {
        if let Err(e) = pending.durable().await {
            tracing::error!(room_id = %room_id, error = %e, "an appended event was not stored; reloading the room");
            *self.lock_of(room_id).lock().await = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// Metadata of an event by short id, including appended events not yet durable.
    pub(crate) fn meta_of_short(&self, short: u64) -> Result<Option<EventMeta>, RoomError> {
        // Memory first: an entry leaves `unsettled` only after its row is visible in
        // storage, so a miss here means the row is there. The other order can miss both
        // (row not yet written when read, entry removed right after).
        if let Some((meta, _)) = self.unsettled.lock().get(&short) {
            return Ok(Some(meta.clone()));
        }
        Ok(META.get(&*self.db, &short)?)
    }

    /// Sends an event as a local user on explicit `prev_events` (which may fork the DAG).
    pub async fn send_at(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<ArcPdu, RoomError> {
        let lock = self.lock_of(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(room_id).await?);
        }
        let head = guard.as_mut().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let before = self.state_before(head, &prev_events)?;
        let pdu = self.build(head, sender, &event, prev_events, &before)?;
        let (pdu, pending) = self.append_locked(head, pdu)?;
        drop(guard);
        self.settle(room_id, pending).await?;
        Ok(pdu)
    }

    /// The state before an event with these prev events.
    fn state_before(&self, head: &Head, prev_events: &[OwnedEventId]) -> Result<StateRef, RoomError> {
        if prev_events.is_empty() {
            return Ok(StateRef::Empty);
        }
        let mut ext: Vec<&EventId> = head.extremities.iter().map(|(_, id)| id.as_ref()).collect();
        let mut prevs: Vec<&EventId> = prev_events.iter().map(AsRef::as_ref).collect();
        ext.sort();
        prevs.sort();
        if ext == prevs && head.state != 0 {
            return Ok(StateRef::Stored(head.state));
        }
        let mut afters = Vec::with_capacity(prev_events.len());
        for prev in prev_events {
            let meta = self.meta(prev)?.ok_or_else(|| RoomError::UnknownEvent(prev.to_string()))?;
            afters.push(meta.state_after);
        }
        self.resolve_states(&head.rules, &afters, &resolve::Overlay::default())
    }

    /// Checks the authorization rules against the auth events and `state`.
    ///
    /// For a message-like event (no state key, not a redaction) the rules that
    /// read the state ask only whether the sender is joined and whether the
    /// sender's power reaches the level of the event's type: once passed for a
    /// stored snapshot, sender and type, that outcome is remembered (ruma parses
    /// the power levels on every check, a room's senders repeat). The rules on the
    /// event's own auth events are always checked.
    fn authorize(&self, rules: &RoomVersionRules, pdu: &Pdu, state: &StateRef) -> Result<(), RoomError> {
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
            self.pdu(id).ok().flatten()
        })
        .map_err(RoomError::Forbidden)?;
        if pdu.kind == TimelineEventType::RoomCreate {
            return Ok(());
        }
        if matches!(state, StateRef::Empty) {
            return Err(RoomError::Forbidden("event has no state to be authorized against".into()));
        }
        let remembered = match state {
            StateRef::Stored(snapshot) if pdu.state_key.is_none() && pdu.kind != TimelineEventType::RoomRedaction => {
                Some((*snapshot, pdu.sender.clone(), pdu.kind.clone()))
            }
            _ => None,
        };
        if let Some(key) = &remembered
            && self.authorized.lock().get(key).is_some()
        {
            return Ok(());
        }
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
            self.state_pdu(state, &kind.to_string(), key).ok().flatten()
        })
        .map_err(RoomError::Forbidden)?;
        if let Some(key) = remembered {
            self.authorized.lock().put(key, ());
        }
        Ok(())
    }

    fn append_locked(&self, head: &mut Head, pdu: Pdu) -> Result<(ArcPdu, myelin_storage::Pending), RoomError> {
        self.append_with(head, pdu, Before::FromPrevs, None, false)
    }

    /// Appends an authorized event under the room lock and hands its batch to the
    /// writer; the head moves at once, so the next event of the room can be
    /// appended while this one's batch waits for its group commit. The caller
    /// acknowledges the event only after awaiting the returned [`Pending`]
    /// (outside the lock: `settle`). Until then the event's metadata and PDU
    /// are served from `unsettled`, and its new ids from the interners' pending
    /// maps; the writer stores batches in order, so a later batch never lands
    /// without the earlier one it builds on (unless that write failed, when
    /// `settle` drops the head to be reloaded from storage).
    ///
    /// [`Pending`]: myelin_storage::Pending
    fn append_with(
        &self,
        head: &mut Head,
        pdu: Pdu,
        before: Before,
        client_txn: Option<(String, String, String)>,
        more_follow: bool,
    ) -> Result<(ArcPdu, myelin_storage::Pending), RoomError> {
        let is_create = pdu.kind == TimelineEventType::RoomCreate;
        let tolerate_gaps = matches!(before, Before::Given(_));
        if is_create && head.state != 0 {
            return Err(RoomError::Forbidden("the room already has a create event".into()));
        }
        if !is_create && pdu.prev_events.is_empty() {
            return Err(RoomError::BadEvent("event has no prev_events".into()));
        }
        // 1. The state before the event; 2. authorization against auth events and that state.
        let state_before = match before {
            Before::FromPrevs => {
                let state = self.state_before(head, &pdu.prev_events)?;
                self.authorize(&head.rules, &pdu, &state)?;
                state
            }
            Before::Given(state) => {
                self.authorize(&head.rules, &pdu, &state)?;
                state
            }
            Before::Authorized(state) => state,
        };
        // 3. Ids and the state after.
        let mut batch = Batch::new();
        let short = self.event_ids.get_or_create(&self.db, &mut batch, pdu.event_id.as_str())?;
        if self.meta_of_short(short)?.is_some() {
            return Err(RoomError::InUse(format!("event {} is already stored", pdu.event_id)));
        }
        if is_create {
            head.short = self.room_ids.get_or_create(&self.db, &mut batch, pdu.room_id.as_str())?;
        }
        let mut hint = None;
        if let Some(first) = pdu.prev_events.first() {
            hint = self.meta(first)?.map(|m| m.state_after);
        }
        let state_before = self.materialize(&mut batch, &state_before, hint)?;
        let state_before = (state_before != 0).then_some(state_before);
        let mut overlay_key = None;
        let state_after = match &pdu.state_key {
            Some(key) => {
                let kind = pdu.kind.to_string();
                let ssk = self.state_keys.get_or_create(&self.db, &mut batch, &state_key_string(&kind, key))?;
                overlay_key = Some((ssk, (kind, key.clone())));
                self.states.store_changed(&mut batch, state_before, &[(ssk, short)])?
            }
            None => state_before.unwrap_or(0),
        };
        let pdu = Arc::new(pdu);
        // 4. New extremities and the room's current state.
        let mut prev_shorts = Vec::with_capacity(pdu.prev_events.len());
        for prev in &pdu.prev_events {
            match self.event_ids.get(&*self.db, prev.as_str())? {
                Some(s) if self.meta_of_short(s)?.is_some() => prev_shorts.push(s),
                _ if tolerate_gaps => {}
                _ => return Err(RoomError::UnknownEvent(prev.to_string())),
            }
        }
        let mut extremities: Vec<(u64, OwnedEventId)> =
            head.extremities.iter().filter(|(s, _)| !prev_shorts.contains(s)).cloned().collect();
        extremities.push((short, pdu.event_id.clone()));
        let current = if extremities.len() == 1 {
            state_after
        } else {
            let mut afters = Vec::with_capacity(extremities.len());
            for (s, _) in &extremities {
                let after =
                    if *s == short { state_after } else { self.meta_of_short(*s)?.map_or(0, |m| m.state_after) };
                afters.push(after);
            }
            let overlay = resolve::Overlay { event: Some((short, pdu.clone())), state_key: overlay_key };
            let resolved = self.resolve_states(&head.rules, &afters, &overlay)?;
            self.materialize(&mut batch, &resolved, Some(state_after))?
        };
        // 5. The batch.
        let count = self.stream.next_in(&mut batch) as i64;
        let room = head.short;
        PDUS.put(&mut batch, &short, &Raw(pdu.to_bytes()))?;
        let meta =
            EventMeta { room, depth: pdu.depth, count, flags: 0, state_before: state_before.unwrap_or(0), state_after };
        META.put(&mut batch, &short, &meta)?;
        TIMELINE.put(&mut batch, &(room, count), &short)?;
        self.newest.raise(pdu.room_id.clone(), count);
        if let Some(key) = &client_txn {
            crate::users::TXNS.put(&mut batch, key, &pdu.event_id.to_string())?;
        }
        for prev in &prev_shorts {
            EDGES.put(&mut batch, &(*prev, short), &())?;
            EXTREMITIES.delete(&mut batch, &(room, *prev));
        }
        EXTREMITIES.put(&mut batch, &(room, short), &())?;
        let depth = head.depth.max(pdu.depth);
        ROOMS.put(&mut batch, &room, &RoomInfo { version: head.version.to_string(), state: current, depth })?;
        let servers = if current == head.state {
            head.servers.clone()
        } else if current == state_after && extremities.len() == 1 {
            // No resolution: only this event changed the state.
            self.servers_after(head, &pdu, state_before)?
        } else {
            self.joined_servers(current, Some((short, &pdu)))?
        };
        let mut destinations: Vec<OwnedServerName> = servers.keys().cloned().collect();
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        {
            // A member who just left or was kicked still hears about it.
            destinations.push(user.server_name().to_owned());
        }
        destinations.extend(head.servers.keys().cloned());
        destinations.sort();
        destinations.dedup();
        self.index_relations(&mut batch, &pdu, short, count, room)?;
        self.index_search(&mut batch, &pdu, short, count, room)?;
        // The local user index /sync reads.
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && target.server_name() == self.server_name
            && let Some(membership) = membership_of(&pdu)
        {
            MEMBERSHIPS.put(
                &mut batch,
                &(target.to_string(), room),
                &Membership { membership, count, event: short },
            )?;
        }
        // Each server sends its own events; we never forward another server's.
        let ours = pdu.sender.server_name() == self.server_name;
        let mut queued_to = Vec::new();
        for dest in destinations.iter().filter(|d| ours && **d != self.server_name) {
            let short_dest = self.servers.get_or_create(&self.db, &mut batch, dest.as_str())?;
            OUTBOUND.put(&mut batch, &(short_dest, count as u64), &OutboundItem::Pdu(short))?;
            queued_to.push(dest.to_string());
        }
        self.announce_queued(&mut batch, queued_to);
        // 6. Hand the batch over and move the head (durability is awaited by the caller).
        // The event is readable from memory until the write is visible; the hook runs
        // after that, so there is no moment when it is in neither place.
        self.unsettled.lock().insert(short, (meta, pdu.clone()));
        let unsettled = self.unsettled.clone();
        batch.on_durable(move || {
            unsettled.lock().remove(&short);
        });
        if more_follow {
            batch.more_follow();
        }
        let pending = match self.db.submit_pending(batch) {
            Ok(p) => p,
            Err(e) => {
                self.unsettled.lock().remove(&short);
                return Err(e.into());
            }
        };
        if is_create {
            self.versions.lock().insert(room, head.rules.clone());
        }
        head.extremities = extremities;
        head.state = current;
        head.depth = depth;
        head.servers = servers;
        self.pdus.lock().put(short, pdu.clone());
        tracing::debug!(room_id = %head.room_id, event_id = %pdu.event_id, count, "appended");
        Ok((pdu, pending))
    }
}
#[cfg(test)]
mod inbound_tests;
#[cfg(test)]
mod tests;
