//! A bound on one destination's federation queue: catch-up compaction.
//!
//! A destination that is away (in backoff, or parked) still gets a row queued
//! for every event of ours in the rooms it shares with us, so its queue grows
//! with our traffic for as long as it stays away, and anyone can make that
//! happen by joining rooms from a server and then switching it off. Past
//! `federation.max_queue_per_destination` rows the queue is compacted the way
//! Synapse catches a destination up after an outage: per room only the newest
//! PDU stays. Nothing becomes unreachable for the destination: the PDU it gets
//! names prev events it lacks, which it fetches from us as the Server-Server
//! API has every server close a gap (§"Retrieving events": "If a homeserver
//! receives an event whose `prev_events` it does not have, it should request
//! them with `/get_missing_events`", and §"Backfilling" for what lies further
//! back). What the compaction keeps is then bounded by the rooms we share and
//! the devices we hold, not by how long the destination was away.
//!
//! Durable EDUs: a device-list update keeps the newest per user and device,
//! and a cross-signing key update the newest per user (the destination sees a
//! `prev_id` it does not know and asks `/user/devices`, §"Device
//! Management"); to-device messages keep the newest [`KEEP_TO_DEVICE`] (the
//! older ones are room keys for messages long sent; clients ask again for keys
//! they miss). Counted in `myelin_federation_catch_up_dropped_total{kind}`.

use std::collections::HashSet;

use myelin_storage::{Batch, Direction, Raw};
use serde::Deserialize;

use super::{
    Rooms,
    error::RoomError,
    tables::{OUTBOUND, OutboundItem, PDUS},
};

/// To-device messages kept for one destination by a compaction.
pub const KEEP_TO_DEVICE: usize = 1_000;

/// What one compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// PDU rows removed (an older event of a room with a newer one queued, or gone).
    pub pdus: usize,
    /// Durable EDU rows removed.
    pub edus: usize,
    /// Rows left.
    pub kept: usize,
}

/// The fields of a queued PDU that decide whether it stays.
#[derive(Deserialize)]
struct RoomOf<'a> {
    #[serde(borrow)]
    room_id: &'a str,
}

/// The fields of a queued EDU that decide whether it stays.
#[derive(Deserialize)]
struct EduKey {
    edu_type: String,
    #[serde(default)]
    content: EduContent,
}

#[derive(Deserialize, Default)]
struct EduContent {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

/// Which older rows a newer EDU makes unnecessary.
#[derive(Hash, PartialEq, Eq)]
enum Supersedes {
    DeviceList(String, String),
    SigningKeys(String),
}

impl Rooms {
    /// Compacts a destination's queue to the newest PDU per room and the EDUs
    /// that still matter (see the module doc). Rows queued while it runs are
    /// not touched.
    pub async fn outbound_compact(&self, dest: u64) -> Result<Compacted, RoomError> {
        let db = self.db.clone();
        let from = self.outbound_floor(dest);
        // A long queue is a long read: off the async workers.
        let (drop, compacted) = tokio::task::spawn_blocking(move || plan(&db, dest, from))
            .await
            .map_err(|e| RoomError::BadEvent(format!("queue compaction task: {e}")))??;
        for chunk in drop.chunks(10_000) {
            let mut batch = Batch::new();
            for &seq in chunk {
                OUTBOUND.delete(&mut batch, &(dest, seq));
            }
            // Unsynced as for delivered rows: a crash that loses the deletion only
            // sends the destination more than it needs.
            self.db.commit_unsynced(batch).await?;
        }
        if compacted.pdus > 0 {
            metrics::counter!("myelin_federation_catch_up_dropped_total", "kind" => "pdu")
                .increment(compacted.pdus as u64);
        }
        if compacted.edus > 0 {
            metrics::counter!("myelin_federation_catch_up_dropped_total", "kind" => "edu")
                .increment(compacted.edus as u64);
        }
        Ok(compacted)
    }
}

/// The rows to delete: read newest first, so the first row met for a room
/// (or a user and device) is the one kept.
fn plan(db: &myelin_storage::Db, dest: u64, from: u64) -> Result<(Vec<u64>, Compacted), RoomError> {
    let mut rows: Vec<(u64, OutboundItem)> = Vec::new();
    for row in OUTBOUND.range(db, (dest, from)..=(dest, u64::MAX), Direction::Forward)? {
        let ((_, seq), item) = row?;
        rows.push((seq, item));
    }
    let mut drop = Vec::new();
    let mut out = Compacted::default();
    let mut rooms_seen: HashSet<String> = HashSet::new();
    let mut superseded: HashSet<Supersedes> = HashSet::new();
    let mut to_device = 0usize;
    for (seq, item) in rows.into_iter().rev() {
        let keep = match &item {
            OutboundItem::Pdu(short) => match PDUS.get(db, short)? {
                Some(Raw(bytes)) => match serde_json::from_slice::<RoomOf>(&bytes) {
                    Ok(pdu) => rooms_seen.insert(pdu.room_id.to_owned()),
                    Err(_) => false,
                },
                None => false,
            },
            OutboundItem::Edu(bytes) => match serde_json::from_slice::<EduKey>(bytes) {
                Ok(edu) => {
                    let key = match (edu.edu_type.as_str(), edu.content.user_id, edu.content.device_id) {
                        ("m.device_list_update", Some(user), Some(device)) => {
                            Some(Supersedes::DeviceList(user, device))
                        }
                        ("m.signing_key_update", Some(user), _) => Some(Supersedes::SigningKeys(user)),
                        _ => None,
                    };
                    match key {
                        Some(key) => superseded.insert(key),
                        None if edu.edu_type == "m.direct_to_device" => {
                            to_device += 1;
                            to_device <= KEEP_TO_DEVICE
                        }
                        // Any other durable EDU: few kinds, kept.
                        None => true,
                    }
                }
                Err(_) => false,
            },
        };
        if keep {
            out.kept += 1;
        } else {
            drop.push(seq);
            match item {
                OutboundItem::Pdu(_) => out.pdus += 1,
                OutboundItem::Edu(_) => out.edus += 1,
            }
        }
    }
    Ok((drop, out))
}
