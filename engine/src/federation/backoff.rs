//! Per-destination retry state of the federation sender, kept in RocksDB so a
//! restart does not forget that a destination is down (and hammer it at once),
//! nor how long it has been down (a destination unreachable for longer than
//! `federation.park_after_s` is *parked*: see [`super::sender`]).

use std::{sync::Arc, time::Duration};

use myelin_storage::{Batch, Db, Direction, Raw, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// When to try a destination next, and since when it fails.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Backoff {
    /// Not before this time (ms since the epoch).
    pub retry_at_ms: u64,
    /// The current backoff step (ms), doubled on each failure.
    pub step_ms: u64,
    /// The first failure of the current run of failures (ms since the epoch;
    /// 0 when not known: a row written before this field existed).
    pub failing_since_ms: u64,
    /// Parked: not retried until the destination shows life (or the next start-up).
    pub parked: bool,
}
impl Stored for Backoff {}

/// The row as written before `failing_since_ms` and `parked` existed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BackoffV1 {
    retry_at_ms: u64,
    step_ms: u64,
}
impl Stored for BackoffV1 {}

const BACKOFF: Table<String, Backoff> = Table::new(&catalog::SERVERNAME_BACKOFF);
/// The same family read with the first layout, for rows an older version wrote.
const BACKOFF_V1: Table<String, BackoffV1> = Table::new(&catalog::SERVERNAME_BACKOFF);
/// The same family as bytes, to list it whatever each row's layout.
const BACKOFF_RAW: Table<String, Raw> = Table::new(&catalog::SERVERNAME_BACKOFF);

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
        let key = server.to_owned();
        match BACKOFF.get(&*self.db, &key) {
            Ok(found) => Ok(found),
            // An older row: its failures started when it was written, as far as we know.
            Err(_) => Ok(BACKOFF_V1.get(&*self.db, &key)?.map(|old| Backoff {
                retry_at_ms: old.retry_at_ms,
                step_ms: old.step_ms,
                failing_since_ms: 0,
                parked: false,
            })),
        }
    }

    /// Every destination with stored retry state (at most `max`), by name.
    pub fn list(&self, max: usize) -> Result<Vec<(String, Backoff)>, EngineError> {
        let mut out = Vec::new();
        for row in BACKOFF_RAW.iter(&*self.db, Direction::Forward)?.take(max) {
            let (server, _) = row?;
            if let Some(b) = self.get(&server)? {
                out.push((server, b));
            }
        }
        Ok(out)
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

/// `base` plus up to a second of jitter (in proportion, for bases under a
/// second), so retries of many queues do not arrive in step. Shared by the
/// federation, appservice and push senders: one backoff policy.
pub(crate) fn jitter(base: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base + Duration::from_millis(u64::from(nanos % 1000) * base.as_millis().min(1000) as u64 / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_in_the_first_layout_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &Default::default()).unwrap();
        let mut batch = Batch::new();
        BACKOFF_V1.put(&mut batch, &"old.test".to_owned(), &BackoffV1 { retry_at_ms: 7, step_ms: 2_000 }).unwrap();
        db.commit(batch).await.unwrap();
        let backoffs = Backoffs::new(db);
        let old = backoffs.get("old.test").unwrap().unwrap();
        assert_eq!((old.retry_at_ms, old.step_ms, old.failing_since_ms, old.parked), (7, 2_000, 0, false));
        let new = Backoff { retry_at_ms: 1, step_ms: 1_000, failing_since_ms: 5, parked: true };
        backoffs.set("new.test", new).await.unwrap();
        assert_eq!(backoffs.get("new.test").unwrap(), Some(new));
        let names: Vec<String> = backoffs.list(10).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, ["new.test", "old.test"]);
    }
}
