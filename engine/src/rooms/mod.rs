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

mod append;
mod appservices;
mod build;
mod catch_up;
mod create;
mod error;
pub mod events;
mod head;
pub mod import;
mod inbound;
pub mod pdu;
pub mod purge;
mod read;
pub mod relations;
mod remote_state;
mod resolve;
mod resolve_v1;
#[cfg(test)]
mod resolve_v1_tests;
pub mod search;
pub mod state;
pub mod tables;
pub mod version;
mod visibility;

use std::{collections::HashMap, sync::Arc};

pub use create::{CreateRoom, Preset, random_localpart};
pub use error::RoomError;
pub(crate) use head::Head;
use head::RoomLock;
pub use inbound::Appended;
use myelin_storage::{Batch, Db, Interner, StreamCounter, catalog};
use parking_lot::Mutex;
pub use pdu::{ArcPdu, Pdu};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::Value as JsonValue;
use tables::*;

use crate::{cache_shares as shares, keys::ServerKeys};

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
    /// `origin_server_ts` to use instead of now (an appservice's `ts` for bridged history).
    pub origin_server_ts: Option<u64>,
}

impl NewEvent {
    /// A state event.
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: JsonValue) -> Self {
        Self { kind: kind.into(), state_key: Some(state_key.into()), content, redacts: None, origin_server_ts: None }
    }

    /// A message-like event.
    pub fn message(kind: impl Into<TimelineEventType>, content: JsonValue) -> Self {
        Self { kind: kind.into(), state_key: None, content, redacts: None, origin_server_ts: None }
    }

    /// The same event with the given `origin_server_ts`.
    pub fn at(mut self, origin_server_ts: Option<u64>) -> Self {
        self.origin_server_ts = origin_server_ts;
        self
    }
}

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

/// How many events (PDUs, outliers and rejected ones included) are stored.
/// Reads every one: for operators' statistics, not for hot paths.
pub fn stored_event_count(db: &Db) -> Result<u64, RoomError> {
    let mut n = 0;
    for row in PDUS.iter(db, myelin_storage::Direction::Forward)? {
        row?;
        n += 1;
    }
    Ok(n)
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
    pdus: myelin_storage::SharedLru<u64, ArcPdu>,
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
    servers_at: myelin_storage::SharedLru<OwnedRoomId, (u64, Vec<String>)>,
    /// Moved when a remote user's membership changes, or when this server's rooms may have (see `remote_lists`).
    pub(crate) member_gens: Arc<crate::remote_lists::Generations>,
    /// `(state snapshot, sender, type)` of message-like events that passed the
    /// state-dependent authorization rules: for them the outcome depends on nothing
    /// else, and a snapshot never changes (see [`Rooms::authorize`]).
    authorized: myelin_storage::SharedLru<(u64, OwnedUserId, TimelineEventType), ()>,
    /// Registered appservices: which of them each appended event is queued for.
    pub(crate) appservices: Arc<crate::appservice::Registry>,
    /// Whether any user has a pusher: appended events then get a `push_pending` row.
    pub(crate) push_wanted: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the push dispatcher once a `push_pending` row is durable.
    pub(crate) push_pending: Arc<tokio::sync::Notify>,
    /// Destinations with rows queued since the sender last asked, and its wake-up.
    ready_destinations: Arc<(Mutex<std::collections::BTreeSet<String>>, tokio::sync::Notify)>,
    /// Per local user, a counter raised once a change of their memberships is visible
    /// (in the batch's durability hook): a reader that read the counter before the rows
    /// may keep those rows while the counter stays.
    member_versions: Arc<Mutex<HashMap<String, u64>>>,
    /// Set while another server's rooms are imported: appends are delivered nowhere.
    importing: std::sync::atomic::AtomicBool,
}

use crate::util::now_ms;

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
        let caches = db.caches().clone();
        Ok(Self {
            // Cached mappings: recent events (prev and auth events are looked up again and
            // again), and nearly all rooms, state keys and servers of a busy node.
            event_ids: Interner::open(&db, &catalog::EVENTID_SHORTEVENTID, &catalog::SHORTEVENTID_EVENTID)?.with_cache(
                &caches,
                shares::EVENT_IDS,
                shares::EVENT_IDS_REV,
            ),
            room_ids: Interner::open(&db, &catalog::ROOMID_SHORTROOMID, &catalog::SHORTROOMID_ROOMID)?.with_cache(
                &caches,
                shares::ROOM_IDS,
                shares::ROOM_IDS_REV,
            ),
            state_keys: Interner::open(&db, &catalog::STATEKEY_SHORTSTATEKEY, &catalog::SHORTSTATEKEY_STATEKEY)?
                .with_cache(&caches, shares::STATE_KEYS, shares::STATE_KEYS_REV),
            servers: Interner::open(&db, &catalog::SERVERNAME_SHORTSERVER, &catalog::SHORTSERVER_SERVERNAME)?
                .with_cache(&caches, shares::SERVERS, shares::SERVERS_REV),
            states: state::StateStore::open(db.clone())?,
            pdus: caches.lru(shares::EVENTS, |_, pdu: &ArcPdu| pdu.heap_bytes()),
            member_gens: Arc::default(),
            servers_at: caches.lru(shares::SERVERS_AT, |room: &OwnedRoomId, (_, servers)| {
                room.as_str().len() + servers.iter().map(|s| 24 + s.capacity()).sum::<usize>()
            }),
            authorized: caches.lru(shares::AUTHORIZED, |(_, user, _), _| user.as_str().len()),
            unsettled: Arc::new(Mutex::new(HashMap::new())),
            outbound_floors: Mutex::new(std::collections::BTreeMap::new()),
            newest: crate::positions::NewestPositions::default(),
            ready_destinations: Arc::new((Mutex::new(std::collections::BTreeSet::new()), tokio::sync::Notify::new())),
            member_versions: Arc::new(Mutex::new(HashMap::new())),
            versions: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            known_keys: parking_lot::RwLock::new(keys.public_key_map()),
            appservices: Arc::new(crate::appservice::Registry::open(db.clone(), server_name.as_str())?),
            push_wanted: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            push_pending: Arc::new(tokio::sync::Notify::new()),
            importing: std::sync::atomic::AtomicBool::new(false),
            db,
            server_name,
            keys,
            stream,
        })
    }

    /// The membership counter of a local user (see `member_versions`): read it before
    /// [`Rooms::rooms_of`], and the rows read stay right while it does not change.
    pub fn memberships_version(&self, user_id: &str) -> u64 {
        self.member_versions.lock().get(user_id).copied().unwrap_or(0)
    }

    /// Raises the user's membership counter once `batch` (which writes one of their
    /// membership rows) is visible.
    pub(crate) fn bump_memberships_when_durable(&self, batch: &mut Batch, user_id: String) {
        let versions = self.member_versions.clone();
        batch.on_durable(move || {
            *versions.lock().entry(user_id).or_insert(0) += 1;
        });
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
}
#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod inbound_tests;
#[cfg(test)]
mod purge_tests;
#[cfg(test)]
mod tests;
