//! Inbound transactions already processed, kept in RocksDB.
//!
//! Server-Server API §"Transactions": "The transaction ID … is used by the
//! receiving server to de-duplicate transactions" (`PUT /send/{txnId}`).
//! PDUs are idempotent by event id anyway; what this protects are the EDUs
//! of a retried transaction (to-device messages must not arrive twice), also
//! across a restart of this server. Rows older than a day are pruned: a
//! sender retries for minutes or hours, and a day bounds the table.

use std::sync::Arc;

use myelin_storage::{Batch, Db, Direction, Table, catalog};

use crate::EngineError;

const SEEN: Table<(String, String), u64> = Table::new(&catalog::ORIGINTXN_SEEN);

/// How long a processed transaction id is remembered.
pub const KEEP_MS: u64 = 24 * 60 * 60 * 1000;

/// The processed inbound transactions.
pub struct SeenTxns {
    db: Arc<Db>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl SeenTxns {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Whether `origin`'s transaction `txn` was processed already.
    pub fn seen(&self, origin: &str, txn: &str) -> Result<bool, EngineError> {
        Ok(SEEN.contains(&*self.db, &(origin.to_owned(), txn.to_owned()))?)
    }

    /// Records a processed transaction.
    ///
    /// Not synced, and not waited for (the transaction's events are durable
    /// before this is called, and the row is visible once the writer reaches
    /// it, well before a sender retries a transaction whose answer it lost): a
    /// crash that loses the row, or a retry that arrives before it, can only make
    /// the transaction be processed again, and its PDUs are then already known,
    /// its typing, receipt and presence EDUs idempotent, and to-device messages
    /// deduplicated by their own synced [`SeenTxns::record_durable`] row.
    pub fn record(&self, origin: &str, txn: &str) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        SEEN.put(&mut batch, &(origin.to_owned(), txn.to_owned()), &now_ms())?;
        self.db.submit_unsynced(batch)?;
        Ok(())
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
        let old = tokio::task::spawn_blocking(move || -> Result<Vec<(String, String)>, EngineError> {
            let mut old = Vec::new();
            for row in SEEN.iter(&*db, Direction::Forward)? {
                let (key, at) = row?;
                if at < cutoff {
                    old.push(key);
                }
            }
            Ok(old)
        })
        .await
        .map_err(|e| EngineError::Rooms(format!("pruning task failed: {e}")))??;
        if old.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        for key in &old {
            SEEN.delete(&mut batch, key);
        }
        self.db.commit(batch).await?;
        Ok(old.len())
    }
}
