//! Per-destination retry state of the federation sender, kept in RocksDB so a
//! restart does not forget that a destination is down (and hammer it at once).

use std::sync::Arc;

use myelin_storage::{Batch, Db, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// When to try a destination next.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Backoff {
    /// Not before this time (ms since the epoch).
    pub retry_at_ms: u64,
    /// The current backoff step (ms), doubled on each failure.
    pub step_ms: u64,
}
impl Stored for Backoff {}

const BACKOFF: Table<String, Backoff> = Table::new(&catalog::SERVERNAME_BACKOFF);

/// The stored retry state of every destination.
pub struct Backoffs {
    db: Arc<Db>,
}

impl Backoffs {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The retry state of `server`, if it last failed.
    pub fn get(&self, server: &str) -> Result<Option<Backoff>, EngineError> {
        Ok(BACKOFF.get(&*self.db, &server.to_owned())?)
    }

    /// Records a failure.
    pub async fn set(&self, server: &str, backoff: Backoff) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        BACKOFF.put(&mut batch, &server.to_owned(), &backoff)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Forgets the failures after a success.
    pub async fn clear(&self, server: &str) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        BACKOFF.delete(&mut batch, &server.to_owned());
        self.db.commit(batch).await?;
        Ok(())
    }
}
