//! The durable appservice queue and its sender's stored state.
//!
//! A row `(appservice id, stream position) → short event id` is written in
//! the same batch as the event it names (`rooms::appservices`), so a stored
//! event is always queued for every appservice it concerns. Rows are deleted
//! only after the appservice answered 2xx to the transaction that carried them.
//!
//! The transaction in flight is stored before it is first sent (its id, the
//! rows it carries and its exact body): a retry, also after a restart, sends
//! the same transaction with the same id, so the appservice can drop a
//! repeat, as the spec asks it to.

use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// `(appservice id, stream position)` → short event id.
pub(crate) const QUEUE: Table<(String, u64), u64> = Table::new(&catalog::APPSERVICESEQ_EVENT);
/// Appservice id → its sender's state.
const SENDER: Table<String, SenderState> = Table::new(&catalog::APPSERVICE_SENDER);
/// `(appservice id, stream position)` → a to-device message for one of its users.
///
/// Positions come from the same stream as [`QUEUE`]'s, so a transaction's
/// `seqs` name rows of either table without ambiguity.
pub(crate) const TO_DEVICE: Table<(String, u64), ToDeviceRow> = Table::new(&catalog::APPSERVICESEQ_TODEVICE);

/// Appservice id → the key-change position its delivered transactions covered.
const KEY_CURSOR: Table<String, u64> = Table::new(&catalog::APPSERVICE_KEYCURSOR);

/// Where appservice `id`'s next `device_lists` starts (0: from the beginning).
pub fn key_cursor(db: &Db, id: &str) -> Result<u64, EngineError> {
    Ok(KEY_CURSOR.get(db, &id.to_owned())?.unwrap_or(0))
}

/// Moves appservice `id`'s key cursor to `upto` (unsynced: a lost move only
/// repeats some `device_lists` entries).
pub async fn set_key_cursor(db: &Db, id: &str, upto: u64) -> Result<(), EngineError> {
    let mut batch = Batch::new();
    KEY_CURSOR.put(&mut batch, &id.to_owned(), &upto)?;
    db.commit_unsynced(batch).await?;
    Ok(())
}

/// A to-device message queued for an appservice (MSC4203).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToDeviceRow {
    /// The appservice's user it is for.
    pub to_user: String,
    /// That user's device.
    pub to_device: String,
    /// Who sent it.
    pub sender: String,
    /// Event type.
    pub kind: String,
    /// Content JSON.
    pub content: Vec<u8>,
}
impl Stored for ToDeviceRow {}

/// Up to `max` queued to-device messages of appservice `id`, oldest first.
pub fn to_device_rows(db: &Db, id: &str, max: usize) -> Result<Vec<(u64, ToDeviceRow)>, EngineError> {
    let id = id.to_owned();
    let mut out = Vec::new();
    for row in TO_DEVICE.range(db, (id.clone(), 0)..=(id, u64::MAX), Direction::Forward)?.take(max) {
        let ((_, seq), message) = row?;
        out.push((seq, message));
    }
    Ok(out)
}

/// A transaction that was built and may have been sent, not yet acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InFlight {
    /// Its transaction id.
    pub txn_id: u64,
    /// The queue rows it carries.
    pub seqs: Vec<u64>,
    /// The JSON body, exactly as first sent.
    pub body: Vec<u8>,
    /// Events it carries (for metrics).
    pub events: usize,
}

/// What an appservice's sender keeps across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SenderState {
    /// The id of the next new transaction.
    pub next_txn: u64,
    /// The transaction being delivered.
    pub in_flight: Option<InFlight>,
    /// Not before this time (ms since the epoch), after a failure.
    pub retry_at_ms: u64,
    /// The current backoff step (ms); 0 when the last attempt succeeded.
    pub step_ms: u64,
}
impl Stored for SenderState {}

/// The stored state of appservice `id`'s sender.
pub fn state(db: &Db, id: &str) -> Result<SenderState, EngineError> {
    Ok(SENDER.get(db, &id.to_owned())?.unwrap_or_default())
}

/// Stores the sender state (synced: a transaction id handed out must not be reused).
pub async fn save_state(db: &Db, id: &str, state: &SenderState) -> Result<(), EngineError> {
    let mut batch = Batch::new();
    SENDER.put(&mut batch, &id.to_owned(), state)?;
    db.commit(batch).await?;
    Ok(())
}

/// Up to `max` queued rows of appservice `id` from position `from`, oldest first.
pub fn rows(db: &Db, id: &str, from: u64, max: usize) -> Result<Vec<(u64, u64)>, EngineError> {
    let id = id.to_owned();
    let mut out = Vec::new();
    for row in QUEUE.range(db, (id.clone(), from)..=(id, u64::MAX), Direction::Forward)?.take(max) {
        let ((_, seq), short) = row?;
        out.push((seq, short));
    }
    Ok(out)
}

/// How many events wait for appservice `id`, counting at most `cap`.
pub fn depth(db: &Db, id: &str, cap: usize) -> Result<usize, EngineError> {
    let id = id.to_owned();
    let mut n = 0;
    for row in QUEUE.range(db, (id.clone(), 0)..=(id, u64::MAX), Direction::Forward)?.take(cap) {
        row?;
        n += 1;
    }
    Ok(n)
}

/// Removes a delivered transaction's rows and moves on to the next transaction
/// id, and the key cursor to `keys_upto` when the transaction carried
/// `device_lists` up to there.
///
/// Not synced: a crash that loses it sends the same transaction (same id) again.
pub async fn delivered(db: &Db, id: &str, state: &SenderState, keys_upto: Option<u64>) -> Result<(), EngineError> {
    let mut batch = Batch::new();
    if let Some(upto) = keys_upto {
        KEY_CURSOR.put(&mut batch, &id.to_owned(), &upto)?;
    }
    if let Some(f) = &state.in_flight {
        for seq in &f.seqs {
            // An event row or a to-device row (positions are unique across both):
            // deleted where it is, so the other table gets no tombstone. A
            // tombstone per delivered event in the to-device table made every
            // `to_device_rows` scan walk all of them (a quarter of the server's
            // CPU at 10,000 events/s to one appservice).
            let key = (id.to_owned(), *seq);
            if QUEUE.get(db, &key)?.is_some() {
                QUEUE.delete(&mut batch, &key);
            } else if TO_DEVICE.get(db, &key)?.is_some() {
                TO_DEVICE.delete(&mut batch, &key);
            }
        }
    }
    let next = SenderState { next_txn: state.next_txn, in_flight: None, retry_at_ms: 0, step_ms: 0 };
    SENDER.put(&mut batch, &id.to_owned(), &next)?;
    db.commit_unsynced(batch).await?;
    Ok(())
}

/// Puts the deletion of everything stored for appservice `id` into `batch`.
pub(crate) fn forget(db: &Db, batch: &mut Batch, id: &str) -> Result<(), myelin_storage::StorageError> {
    let key = id.to_owned();
    for row in QUEUE.range(db, (key.clone(), 0)..=(key.clone(), u64::MAX), Direction::Forward)? {
        let (k, _) = row?;
        QUEUE.delete(batch, &k);
    }
    for row in TO_DEVICE.range(db, (key.clone(), 0)..=(key.clone(), u64::MAX), Direction::Forward)? {
        let (k, _) = row?;
        TO_DEVICE.delete(batch, &k);
    }
    SENDER.delete(batch, &key);
    KEY_CURSOR.delete(batch, &key);
    Ok(())
}
