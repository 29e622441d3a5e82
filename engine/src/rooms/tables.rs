//! The rooms engine's tables (layouts in `myelin_storage::catalog`).

use myelin_storage::{Raw, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

/// Event flag: known without its place in the DAG (no timeline row).
pub const OUTLIER: u8 = 1;
/// Event flag: passed auth against its own state but failed against the current state.
pub const SOFT_FAILED: u8 = 2;
/// Event flag: failed authorization; kept for the DAG, never applied.
pub const REJECTED: u8 = 4;
/// Event flag: its body was deleted by a history purge; metadata kept for the DAG.
pub const PURGED: u8 = 8;

/// What we know about a stored event besides its JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventMeta {
    /// Short room id.
    pub room: u64,
    /// `depth` of the PDU.
    pub depth: u64,
    /// Timeline position (`(room, count)` key); 0 for outliers.
    pub count: i64,
    /// [`OUTLIER`] | [`SOFT_FAILED`] | [`REJECTED`] | [`PURGED`].
    pub flags: u8,
    /// Snapshot of the state before the event (0 if unknown: outliers).
    pub state_before: u64,
    /// Snapshot of the state after the event.
    pub state_after: u64,
}
impl Stored for EventMeta {}

/// A room's durable head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// Room version string.
    pub version: String,
    /// Snapshot of the current state (the resolution of the extremities' states).
    pub state: u64,
    /// Greatest depth in the room.
    pub depth: u64,
}
impl Stored for RoomInfo {}

/// What a destination's queue row carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum OutboundItem {
    /// A PDU by short event id.
    Pdu(u64),
    /// An EDU that must survive restarts (to-device messages, device-list updates), as JSON.
    Edu(Vec<u8>),
}
impl Stored for OutboundItem {}

/// One transaction's worth of a destination's queue.
#[derive(Debug, Default)]
pub struct OutboundBatch {
    /// `(sequence, PDU)`: the stored canonical JSON bytes, sent as they are.
    pub pdus: Vec<(u64, Vec<u8>)>,
    /// `(sequence, EDU JSON)`.
    pub edus: Vec<(u64, serde_json::Value)>,
    /// Rows with nothing left to send, to delete with the delivered ones.
    pub stale: Vec<u64>,
    /// Every row of the queue below this position is in this batch or already
    /// deleted; once the batch is delivered, reads may start here.
    pub floor: u64,
}

impl OutboundBatch {
    /// Every row this batch accounts for.
    pub fn seqs(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .pdus
            .iter()
            .map(|(s, _)| *s)
            .chain(self.edus.iter().map(|(s, _)| *s))
            .chain(self.stale.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }
}

/// Short event id → canonical PDU JSON.
pub const PDUS: Table<u64, Raw> = Table::new(&catalog::SHORTEVENTID_PDU);
/// Short event id → metadata.
pub const META: Table<u64, EventMeta> = Table::new(&catalog::SHORTEVENTID_EVENTMETA);
/// `(short room id, count)` → short event id.
pub const TIMELINE: Table<(u64, i64), u64> = Table::new(&catalog::ROOMCOUNT_SHORTEVENTID);
/// Short event id → the device and transaction id of a client's send.
pub const EVENT_TXNS: Table<u64, SentWith> = Table::new(&catalog::SHORTEVENTID_TXN);

/// The device and transaction id a client sent an event with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentWith {
    /// The sending device.
    pub device: String,
    /// The client's transaction id.
    pub txn: String,
}
impl Stored for SentWith {}
/// `(short room id, short event id)` → (): forward extremities.
pub const EXTREMITIES: Table<(u64, u64), ()> = Table::new(&catalog::ROOMEVENT_EXTREMITY);
/// `(short room id, short event id)` → (): gap edges taken on a remote's
/// state, whose history `/messages` backfill still fetches.
pub const HOLES: Table<(u64, u64), ()> = Table::new(&catalog::ROOMEVENT_HOLE);
/// `(prev short event id, child short event id)` → ().
pub const EDGES: Table<(u64, u64), ()> = Table::new(&catalog::PREVEVENT_CHILDEVENT);
/// Short room id → room head.
pub const ROOMS: Table<u64, RoomInfo> = Table::new(&catalog::SHORTROOMID_ROOMINFO);
/// `(short server, stream position)` → queued item: the durable federation queue.
pub const OUTBOUND: Table<(u64, u64), OutboundItem> = Table::new(&catalog::DESTSEQ_OUTBOUND);

/// A local user's membership in a room, as of the last member event about them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Membership {
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// Timeline position of that member event.
    pub count: i64,
    /// Short id of that member event.
    pub event: u64,
}
impl Stored for Membership {}

/// `(local user id, short room id)` → membership: which rooms a user's `/sync` covers.
pub const MEMBERSHIPS: Table<(String, u64), Membership> = Table::new(&catalog::USERROOM_MEMBERSHIP);

/// `(local user id, room id)` → stripped state JSON of a federated invite.
pub const INVITE_STATE: Table<(String, String), Raw> = Table::new(&catalog::USERROOM_INVITESTATE);
/// Rooms shut down by the operator: room id → when (ms).
pub const SHUTDOWN: Table<String, u64> = Table::new(&catalog::ROOMID_SHUTDOWN);
