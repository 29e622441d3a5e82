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

/// A report's key: when it arrived (ms), its id.
type ReportKey = (u64, u64);

const REPORTS: Table<ReportKey, Report> = Table::new(&catalog::TIMEREPORT_REPORT);
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

/// A stored report with its id (the admin API's `report_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    /// The report's id, counting from 1.
    pub id: u64,
    /// The report.
    pub report: Report,
}

/// Which reports a page holds, as Synapse's event reports admin API filters them.
#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    /// Only event reports (not whole-room ones).
    pub events_only: bool,
    /// Only these reporters'.
    pub reporter: Option<String>,
    /// Only of this room.
    pub room_id: Option<String>,
}

impl ReportFilter {
    fn keeps(&self, r: &Report) -> bool {
        (!self.events_only || r.event_id.is_some())
            && self.reporter.as_deref().is_none_or(|u| u == r.reporter)
            && self.room_id.as_deref().is_none_or(|room| room == r.room_id)
    }
}

impl Reports {
    /// One page of the reports `filter` keeps, newest first when `backwards`,
    /// after skipping `from`, and how many it keeps in all.
    pub fn page(
        &self,
        filter: &ReportFilter,
        from: usize,
        limit: usize,
        backwards: bool,
    ) -> Result<(Vec<Numbered>, usize), EngineError> {
        let dir = if backwards { Direction::Reverse } else { Direction::Forward };
        let (mut out, mut total) = (Vec::new(), 0);
        for row in REPORTS.iter(&*self.db, dir)? {
            let ((_, id), report) = row?;
            if !filter.keeps(&report) {
                continue;
            }
            if total >= from && out.len() < limit {
                out.push(Numbered { id, report });
            }
            total += 1;
        }
        Ok((out, total))
    }

    /// The report numbered `id`.
    pub fn get(&self, id: u64) -> Result<Option<Numbered>, EngineError> {
        Ok(self.find(id)?.map(|(_, n)| n))
    }

    /// Deletes the report numbered `id`; whether it existed.
    pub async fn delete(&self, id: u64) -> Result<bool, EngineError> {
        let _guard = self.lock.lock().await;
        let Some((key, _)) = self.find(id)? else { return Ok(false) };
        let mut batch = Batch::new();
        REPORTS.delete(&mut batch, &key);
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Reports are keyed by arrival time first: finding one by id walks them
    /// (an admin's occasional lookup; reports are rate-limited user actions).
    fn find(&self, id: u64) -> Result<Option<(ReportKey, Numbered)>, EngineError> {
        for row in REPORTS.iter(&*self.db, Direction::Reverse)? {
            let (key, report) = row?;
            if key.1 == id {
                return Ok(Some((key, Numbered { id, report })));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(reporter: &str, event: Option<&str>) -> Report {
        Report {
            reporter: reporter.into(),
            room_id: "!r:s".into(),
            event_id: event.map(Into::into),
            reason: None,
            score: None,
            received_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_page_by_filter_and_are_found_and_deleted_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let reports = Reports::new(Db::open(dir.path(), &Default::default()).unwrap());
        reports.add(report("@a:s", Some("$1"))).await.unwrap();
        reports.add(report("@b:s", None)).await.unwrap();
        reports.add(report("@a:s", Some("$3"))).await.unwrap();
        let events = ReportFilter { events_only: true, ..Default::default() };
        let (page, total) = reports.page(&events, 0, 10, true).unwrap();
        assert_eq!(
            (page.iter().map(|n| n.id).collect::<Vec<_>>(), total),
            (vec![3, 1], 2),
            "newest first, events only"
        );
        let (page, total) = reports.page(&ReportFilter::default(), 1, 1, false).unwrap();
        assert_eq!((page[0].id, total), (2, 3), "skips `from`, counts all");
        let by_b = ReportFilter { reporter: Some("@b:s".into()), ..Default::default() };
        assert_eq!(reports.page(&by_b, 0, 10, false).unwrap().1, 1);
        assert_eq!(reports.get(3).unwrap().unwrap().report.event_id.as_deref(), Some("$3"));
        assert!(reports.delete(1).await.unwrap());
        assert!(!reports.delete(1).await.unwrap(), "gone");
        assert!(reports.get(1).unwrap().is_none());
        assert_eq!(reports.page(&events, 0, 10, false).unwrap().1, 1);
    }
}
