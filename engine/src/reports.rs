//! Content reports (Client-Server API §"Reporting content").
//!
//! "`POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}` — Reports an
//! event as inappropriate to the server, which may then notify the
//! appropriate people." and "`POST /_matrix/client/v3/rooms/{roomId}/report`
//! — Reports a room as inappropriate to the server". Both take an optional
//! `reason`; the event form also an optional `score` ("The score to rate this
//! content as where -100 is most offensive and 0 is inoffensive", deprecated
//! in later versions but still accepted).
//!
//! Reports are kept in `timereport_report`, ordered by when they arrived, for
//! the operator (`Reports::list`); the room and event checks happen in the
//! API handler, which knows what the reporter may see. Nothing is sent to
//! anyone else. A reason is at most [`MAX_REASON_BYTES`].

use std::sync::Arc;

use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::{EngineError, util::now_ms};

/// Longest accepted `reason`.
pub const MAX_REASON_BYTES: usize = 4096;

const REPORTS: Table<(u64, u64), Report> = Table::new(&catalog::TIMEREPORT_REPORT);
const REPORT_COUNTER: &str = "report_id";

/// One report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Who reported.
    pub reporter: String,
    /// The room reported, or the room of the event.
    pub room_id: String,
    /// The event reported; `None` for a room report.
    pub event_id: Option<String>,
    /// Why, in the reporter's words.
    pub reason: Option<String>,
    /// -100 (most offensive) to 0.
    pub score: Option<i64>,
    /// When it arrived, in ms since the epoch.
    pub received_ms: u64,
}
impl Stored for Report {}

/// The content reports of one server.
pub struct Reports {
    db: Arc<Db>,
    lock: tokio::sync::Mutex<()>,
}

impl Reports {
    /// The reports over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db, lock: tokio::sync::Mutex::new(()) }
    }

    /// Stores a report (its `received_ms` is set here).
    pub async fn add(&self, mut report: Report) -> Result<(), EngineError> {
        report.received_ms = now_ms();
        let _guard = self.lock.lock().await;
        let id = self.db.counter(REPORT_COUNTER)? + 1;
        let mut batch = Batch::new();
        batch.raise_counter(REPORT_COUNTER, id);
        REPORTS.put(&mut batch, &(report.received_ms, id), &report)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Every report, oldest first.
    pub fn list(&self) -> Result<Vec<Report>, EngineError> {
        let mut out = Vec::new();
        for row in REPORTS.iter(&*self.db, Direction::Forward)? {
            out.push(row?.1);
        }
        Ok(out)
    }
}
