//! The kept (inline) batch path: a batch handed over while the writer is idle is
//! kept back and written on its caller's thread when the caller awaits its [`Pending`].

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::oneshot;

use super::{Db, Kept};
use crate::{
    Batch,
    error::StorageError,
    writer::{self, Request},
};

impl Db {
    /// Hands `batch` to the group-commit writer without waiting; the returned
    /// handle resolves once it is durable. Batches are written in the order
    /// they were handed over, so a later batch may build on an earlier one's
    /// rows (kept in the caller's memory until then).
    ///
    /// When nothing else is queued or being written, the batch is kept back
    /// instead and [`Pending::durable`] writes it on the caller's thread (the
    /// writer module explains why and when); any hand-over before that sends
    /// it to the writer first. So await `durable` (or drop the handle) right
    /// away: until then a kept batch is neither written nor visible, and
    /// stream positions after its reservations wait for it.
    pub fn submit_pending(self: &Arc<Self>, batch: Batch) -> Result<Pending, StorageError> {
        let (done, rx) = oneshot::channel();
        let req = Request { batch, unsynced: false, done };
        if !req.batch.more_follow && may_block_a_worker() {
            let mut kept = self.kept.lock();
            if self.writer.lock().is_none() {
                return Err(StorageError::Closed);
            }
            let idle = kept.is_none()
                && self.shared.queued.load(Ordering::SeqCst) == 0
                && !self.shared.contended.load(Ordering::SeqCst)
                && !self.shared.write.is_locked()
                && self.shared.last_sync_us.load(Ordering::Relaxed) < writer::INLINE_SYNC_MAX_US
                && !self.writes_slowed();
            if idle {
                let id = self.kept_ids.fetch_add(1, Ordering::Relaxed);
                *kept = Some(Kept { id, req });
                return Ok(Pending { rx, kept: Some((self.clone(), id)) });
            }
        }
        self.hand_over(req)?;
        Ok(Pending { rx, kept: None })
    }

    /// Whether RocksDB is stopping or delaying writes (too many memtables or
    /// level-0 files): a write now could block its caller for long.
    pub(crate) fn writes_slowed(&self) -> bool {
        let int = |name: &str| self.rocks.property_int_value(name).ok().flatten().unwrap_or(0);
        int("rocksdb.is-write-stopped") > 0 || int("rocksdb.actual-delayed-write-rate") > 0
    }

    /// Writes the kept batch `id` on this thread if it is still kept and the
    /// writer is idle; otherwise it is (or now goes) with the writer thread.
    fn write_kept(&self, id: u64) {
        let mut kept = self.kept.lock();
        if kept.as_ref().is_none_or(|k| k.id != id) {
            return;
        }
        let guard = self.writer.lock();
        let Some((tx, _)) = guard.as_ref() else {
            // Closed: dropping the request tells its caller so.
            kept.take();
            return;
        };
        let Some(mut counters) = self.shared.write.try_lock() else {
            if let Some(k) = kept.take() {
                // A failed send drops the request: its caller is told Closed.
                let _ = self.send_to_thread(tx, k.req);
            }
            return;
        };
        let Some(k) = kept.take() else { return };
        // Holding the write lock keeps every later batch behind this one.
        drop(guard);
        drop(kept);
        self.shared.caller_writes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("myelin_storage_caller_writes_total").increment(1);
        writer::write_and_complete(&self.rocks, &self.shared, &mut counters, vec![k.req], || {
            // Batches that queued behind this one say the load is back.
            self.shared.contended.store(self.shared.queued.load(Ordering::SeqCst) > 0, Ordering::SeqCst);
        });
    }

    /// Sends the kept batch `id` to the writer if it is still kept (its
    /// [`Pending`] was dropped unawaited: the batch is written all the same).
    fn release_kept(&self, id: u64) {
        let mut kept = self.kept.lock();
        if kept.as_ref().is_some_and(|k| k.id == id)
            && let Some(k) = kept.take()
            && let Some((tx, _)) = self.writer.lock().as_ref()
        {
            let _ = self.send_to_thread(tx, k.req);
        }
    }

    /// How many batches their own callers wrote (see [`Pending::durable`]).
    #[cfg(test)]
    pub(crate) fn caller_writes(&self) -> u64 {
        self.shared.caller_writes.load(Ordering::Relaxed)
    }
}

/// A batch handed to the writer: await [`Pending::durable`] before acknowledging it.
#[must_use = "a pending batch is not durable until awaited"]
pub struct Pending {
    rx: oneshot::Receiver<Result<(), StorageError>>,
    /// Set when the batch was kept back for this caller to write.
    kept: Option<(Arc<Db>, u64)>,
}

impl Pending {
    /// Waits until the batch is in a synced write (or failed). A batch kept
    /// back for its caller (see [`Db::submit_pending`]) is written here, on
    /// this thread, when the writer is still idle.
    pub async fn durable(mut self) -> Result<(), StorageError> {
        if let Some((db, id)) = self.kept.take() {
            db.write_kept(id);
        }
        (&mut self.rx).await.map_err(|_| StorageError::Closed)?
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((db, id)) = self.kept.take() {
            db.release_kept(id);
        }
    }
}

/// Whether the current thread is a worker of a runtime that has another
/// worker to carry on while this one writes a batch and waits for its sync.
fn may_block_a_worker() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread && h.metrics().num_workers() >= 2
    })
}
