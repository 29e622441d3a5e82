//! Inbound transactions already processed, kept in RocksDB.
//!
//! Server-Server API §"Transactions": "The transaction ID … is used by the
//! receiving server to de-duplicate transactions" (`PUT /send/{txnId}`).
//! PDUs are idempotent by event id anyway; what this protects are the EDUs
//! of a retried transaction (to-device messages must not arrive twice), also
//! across a restart of this server, and the answer: a transaction id replayed
//! by the same origin gets the first answer's bytes, whatever the replay
//! carries.
//!
//! Guarantees: per `(origin, txn id)` at most one transaction is processed at
//! a time ([`SeenTxns::claim`]: a concurrent copy waits for the first and then
//! reads its answer); an answer is stored with a synced write before it is
//! returned, so a replay after a crash gets it too. A transaction that failed
//! (no answer stored) is processed again by the next copy. Rows older than a
//! day are pruned: a sender retries for minutes or hours, and a day bounds the
//! table. The in-flight claims ([`crate::in_flight`]) hold one entry per
//! transaction being processed or waited for: bounded by the requests in flight.

use std::sync::Arc;

use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::EngineError;

const SEEN: Table<(String, String), u64> = Table::new(&catalog::ORIGINTXN_SEEN);
const ANSWERS: Table<(String, String), Answer> = Table::new(&catalog::ORIGINTXN_ANSWER);

/// How long a processed transaction id is remembered.
pub const KEEP_MS: u64 = 24 * 60 * 60 * 1000;

/// A stored answer.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    /// When it was stored (ms).
    at: u64,
    /// The JSON bytes sent.
    body: Vec<u8>,
}

impl Stored for Answer {}

type Key = (String, String);

/// Whose turn it is for one `(origin, txn id)`.
pub enum Turn<'a> {
    /// Processed before: the first answer's bytes.
    Answered(Vec<u8>),
    /// Nobody answered it yet: process it, then [`Claim::answer`].
    Mine(Claim<'a>),
}

/// The right to process one transaction; others with the same id wait until
/// it is dropped.
pub struct Claim<'a> {
    txns: &'a SeenTxns,
    key: Key,
    _held: crate::in_flight::Claim<'a, Key>,
}

impl Claim<'_> {
    /// Stores `body` as the transaction's answer (synced) before it is sent.
    pub async fn answer(&self, body: &[u8]) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        ANSWERS.put(&mut batch, &self.key, &Answer { at: now_ms(), body: body.to_vec() })?;
        self.txns.db.commit(batch).await?;
        Ok(())
    }
}

/// The processed inbound transactions.
pub struct SeenTxns {
    db: Arc<Db>,
    in_flight: crate::in_flight::InFlight<Key>,
}

use crate::util::now_ms;

impl SeenTxns {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        // Not bounded by count: an entry lives only as long as a request of an
        // authenticated origin that holds a connection.
        Self { db, in_flight: crate::in_flight::InFlight::new(usize::MAX) }
    }

    /// The stored answer to `origin`'s transaction `txn`, if any.
    pub fn answer(&self, origin: &str, txn: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(ANSWERS.get(&*self.db, &(origin.to_owned(), txn.to_owned()))?.map(|a| a.body))
    }

    /// The stored answer, or the right to process the transaction: waits while
    /// another copy of it is being processed, then reads that one's answer.
    pub async fn claim(&self, origin: &str, txn: &str) -> Result<Turn<'_>, EngineError> {
        if let Some(body) = self.answer(origin, txn)? {
            return Ok(Turn::Answered(body));
        }
        let key = (origin.to_owned(), txn.to_owned());
        let held = self
            .in_flight
            .claim(key.clone())
            .await
            .ok_or(EngineError::Busy("too many inbound transactions in flight"))?;
        let claim = Claim { txns: self, key, _held: held };
        // The copy that held it before us may have answered meanwhile.
        match self.answer(origin, txn)? {
            Some(body) => Ok(Turn::Answered(body)),
            None => Ok(Turn::Mine(claim)),
        }
    }

    /// Whether `origin`'s transaction `txn` was processed already.
    pub fn seen(&self, origin: &str, txn: &str) -> Result<bool, EngineError> {
        Ok(SEEN.contains(&*self.db, &(origin.to_owned(), txn.to_owned()))?)
    }

    /// Records a processed id durably (to-device `message_id`s: delivering one
    /// twice is visible to the user).
    pub async fn record_durable(&self, origin: &str, key: &str) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        SEEN.put(&mut batch, &(origin.to_owned(), key.to_owned()), &now_ms())?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Forgets transactions processed more than [`KEEP_MS`] ago; returns how many.
    pub async fn prune(&self) -> Result<usize, EngineError> {
        let db = self.db.clone();
        let cutoff = now_ms().saturating_sub(KEEP_MS);
        // A full scan of a day's ids: off the async runtime.
        let (seen, answers) = tokio::task::spawn_blocking(move || -> Result<(Vec<Key>, Vec<Key>), EngineError> {
            let mut seen = Vec::new();
            for row in SEEN.iter(&*db, Direction::Forward)? {
                let (key, at) = row?;
                if at < cutoff {
                    seen.push(key);
                }
            }
            let mut answers = Vec::new();
            for row in ANSWERS.iter(&*db, Direction::Forward)? {
                let (key, answer) = row?;
                if answer.at < cutoff {
                    answers.push(key);
                }
            }
            Ok((seen, answers))
        })
        .await
        .map_err(|_| EngineError::Task("transaction pruning"))??;
        if seen.is_empty() && answers.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        for key in &seen {
            SEEN.delete(&mut batch, key);
        }
        for key in &answers {
            ANSWERS.delete(&mut batch, key);
        }
        self.db.commit(batch).await?;
        Ok(seen.len() + answers.len())
    }
}
