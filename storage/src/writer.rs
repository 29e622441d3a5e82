//! The group-commit writer.
//!
//! One thread owns every write. Callers send a [`Batch`] over a channel and
//! wait; the thread takes the first waiting batch plus everything else already
//! queued (bounded by count and bytes), applies them as **one** RocksDB write
//! with **one** WAL sync, then completes each caller. Under load many callers
//! share one fsync, so throughput grows with concurrency.
//!
//! Guarantees:
//! - a caller is told `Ok` only after its batch is in a synced WAL write, so an
//!   acknowledged batch survives `kill -9` and power loss (as far as fsync does);
//! - batches of one group succeed or fail together, each stays atomic;
//! - `on_durable` hooks and stream reservations are released after the write
//!   is visible and before the caller wakes;
//! - a batch committed with `Db::commit_unsynced` (bookkeeping whose loss in a
//!   crash is harmless) is written to the WAL without a sync when its group
//!   holds only such batches, so it costs no disk flush; it becomes durable
//!   with the next synced write;
//! - counters raised by batches are persisted as the running maximum, in the
//!   same write;
//! - a batch marked `more_follow` (its caller hands over another at once, as an
//!   inbound transaction does per event) keeps the group open for that next
//!   batch, up to 1 ms from the group's first, so a burst costs one sync;
//! - a caller that would otherwise wake an idle thread and sleep until it
//!   is done writes its own batch (see [`crate::Pending::durable`]): a batch
//!   handed over with `Db::submit_pending` while nothing else is queued or
//!   being written is kept aside, and its caller, when it comes to wait,
//!   writes it and completes it itself, holding the same write lock as the
//!   thread. Any other hand-over first passes the kept batch to the thread,
//!   so the order is unchanged. This saves the two thread wake-ups a lone
//!   write costs (measured: a sequential sender's rate +20–35%, where an idle
//!   virtual CPU takes tens of microseconds to wake). Under load, when the
//!   last write shared its group or others queued behind it, every batch
//!   goes to the thread, whose groups share one sync. The caller blocks its
//!   runtime worker for that one write, so it is done only on a
//!   multi-threaded runtime with at least two workers, not while the last
//!   synced write took over [`INLINE_SYNC_MAX_US`], and not while RocksDB
//!   is stopping or delaying writes. Hooks then run on the caller's thread.
//!
//! Not guaranteed: ordering between batches from different callers beyond
//! "the order they were handed over".

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{Batch, StorageError, catalog, key::Key};

/// Most batches merged into one write.
const MAX_GROUP: usize = 1024;
/// Most payload bytes merged into one write.
const MAX_GROUP_BYTES: usize = 16 << 20;
/// Longest a group waits for the batch a `more_follow` batch announced.
const HOLD_MAX: Duration = Duration::from_millis(1);
/// A caller writes its own batch only while the last synced write took less
/// than this (microseconds): on a slow disk the thread keeps the wait off the
/// runtime's workers.
pub(crate) const INLINE_SYNC_MAX_US: u64 = 2_000;

/// What the writer thread and a caller writing its own batch share.
pub(crate) struct Shared {
    /// Held while a group is written and completed; the counters' persisted maxima.
    pub(crate) write: Mutex<HashMap<String, u64>>,
    /// Requests handed to the thread and not yet completed.
    pub(crate) queued: AtomicUsize,
    /// How long the most recent synced write took, in microseconds.
    pub(crate) last_sync_us: AtomicU64,
    /// Batches written by their own caller (for tests and metrics).
    pub(crate) caller_writes: AtomicU64,
    /// Whether the last write had company: several batches in its group, or
    /// more handed over while it ran. Callers then leave writes to the thread,
    /// whose groups share one sync, until a write goes by alone again.
    pub(crate) contended: AtomicBool,
}

pub(crate) struct Request {
    pub(crate) batch: Batch,
    /// The caller accepts losing this batch in a crash (see `Db::commit_unsynced`).
    pub(crate) unsynced: bool,
    pub(crate) done: oneshot::Sender<Result<(), StorageError>>,
}

impl Request {
    /// Whether this request may be written without a WAL sync. A batch that settles
    /// stream positions or raises a counter never is: a visible position must be a
    /// durable one, and a counter must not fall back after a crash.
    pub(crate) fn may_skip_sync(&self) -> bool {
        self.unsynced
            && self.batch.reservations.is_empty()
            && self.batch.on_durable.is_empty()
            && self.batch.counters.is_empty()
    }

    /// Whether the request asks for nothing at all (a [`crate::Db::release_held`]).
    fn is_noop(&self) -> bool {
        self.batch.ops.is_empty()
            && self.batch.counters.is_empty()
            && self.batch.on_durable.is_empty()
            && self.batch.reservations.is_empty()
    }
}

pub(crate) fn counter_key(name: &str) -> Vec<u8> {
    format!("counter/{name}").encode()
}

/// The running writer: where to send requests, its thread, its shared state.
pub(crate) type Spawned = (Sender<Request>, thread::JoinHandle<()>, Arc<Shared>);

pub(crate) fn spawn(db: Arc<rocksdb::DB>, counters: HashMap<String, u64>) -> Result<Spawned, StorageError> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        write: Mutex::new(counters),
        queued: AtomicUsize::new(0),
        last_sync_us: AtomicU64::new(0),
        caller_writes: AtomicU64::new(0),
        contended: AtomicBool::new(false),
    });
    let thread_shared = shared.clone();
    let handle = thread::Builder::new()
        .name("myelin-writer".into())
        .spawn(move || run(&db, &rx, &thread_shared))
        .map_err(|e| StorageError::io("spawning the writer thread", e))?;
    Ok((tx, handle, shared))
}

fn run(db: &rocksdb::DB, rx: &Receiver<Request>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let group = collect_group(first, rx, HOLD_MAX);
        let n = group.len();
        write_and_complete(db, shared, &mut shared.write.lock(), group, || {
            let more = shared.queued.load(Ordering::SeqCst) > n;
            shared.contended.store(n > 1 || more, Ordering::SeqCst);
            shared.queued.fetch_sub(n, Ordering::SeqCst);
        });
    }
    tracing::debug!("writer thread stopped");
}

/// Writes `group` as one RocksDB write (synced unless every batch may skip it),
/// runs `written` (the writer's own bookkeeping, done before any caller
/// wakes), then the hooks, releases the reservations and completes each
/// caller. The caller holds [`Shared::write`] (passed in as `counters`).
pub(crate) fn write_and_complete(
    db: &rocksdb::DB,
    shared: &Shared,
    counters: &mut HashMap<String, u64>,
    group: Vec<Request>,
    written: impl FnOnce(),
) {
    let mut options = rocksdb::WriteOptions::default();
    // One batch that must survive a crash syncs the whole group; a group of
    // unsynced batches only goes to the WAL (the next sync carries it to disk).
    let synced = !group.iter().all(Request::may_skip_sync);
    options.set_sync(synced);
    let noop = group.iter().all(Request::is_noop);
    let started = Instant::now();
    let result = if noop { Ok(()) } else { write_group(db, &options, &group, counters) };
    let took = started.elapsed();
    // A group that wrote nothing says nothing about the disk.
    if synced && !noop {
        shared.last_sync_us.store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    metrics::histogram!("myelin_storage_commit_seconds").record(took.as_secs_f64());
    metrics::histogram!("myelin_storage_commit_group_batches").record(group.len() as f64);
    metrics::counter!("myelin_storage_commits_total").increment(1);
    if let Err(e) = &result {
        metrics::counter!("myelin_storage_commit_errors_total").increment(1);
        tracing::error!(error = %e, batches = group.len(), "storage write failed; these writes are not stored");
    }
    written();
    for req in group {
        let Request { batch, done, .. } = req;
        if result.is_ok() {
            for hook in batch.on_durable {
                hook();
            }
        }
        // Releases stream reservations: the positions are now visible.
        drop(batch.reservations);
        let _ = done.send(result.clone());
    }
}

/// The group written with `first`: every request already queued (bounded by
/// count and bytes), and while the last one announced another
/// (`more_follow`), what arrives within `hold_max` of the group's start.
pub(crate) fn collect_group(first: Request, rx: &Receiver<Request>, hold_max: Duration) -> Vec<Request> {
    let opened = Instant::now();
    let mut bytes = first.batch.bytes;
    let mut group = vec![first];
    loop {
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.batch.bytes;
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        // The caller of the last batch announced another: waiting for it
        // costs less than a second sync right after this one.
        let announced = group.last().is_some_and(|r| r.batch.more_follow);
        if !announced || group.len() >= MAX_GROUP || bytes >= MAX_GROUP_BYTES {
            return group;
        }
        let Some(left) = hold_max.checked_sub(opened.elapsed()) else { return group };
        match rx.recv_timeout(left) {
            Ok(req) => {
                bytes += req.batch.bytes;
                group.push(req);
            }
            Err(_) => return group,
        }
    }
}

fn write_group(
    db: &rocksdb::DB,
    sync: &rocksdb::WriteOptions,
    group: &[Request],
    counters: &mut HashMap<String, u64>,
) -> Result<(), StorageError> {
    let mut wb = rocksdb::WriteBatch::default();
    let mut raised: Vec<(&str, u64)> = Vec::new();
    for req in group {
        for op in &req.batch.ops {
            let cf = db
                .cf_handle(op.cf.name)
                .ok_or_else(|| StorageError::Rocks(format!("column family {} is not open", op.cf.name)))?;
            match &op.value {
                Some(v) => wb.put_cf(cf, &op.key, v),
                None => wb.delete_cf(cf, &op.key),
            }
        }
        for &(name, value) in &req.batch.counters {
            let current = raised
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, v)| v)
                .or_else(|| counters.get(name).copied())
                .unwrap_or(0);
            if value > current {
                raised.retain(|(n, _)| *n != name);
                raised.push((name, value));
            }
        }
    }
    if !raised.is_empty() {
        let global = db
            .cf_handle(catalog::GLOBAL.name)
            .ok_or_else(|| StorageError::Rocks("global family is not open".into()))?;
        for &(name, value) in &raised {
            wb.put_cf(global, counter_key(name), value.to_be_bytes());
        }
    }
    db.write_opt(wb, sync).map_err(StorageError::from)?;
    // Only a stored maximum is remembered: after a failed write the next one
    // persists the raise again.
    for (name, value) in raised {
        counters.insert(name.to_owned(), value);
    }
    Ok(())
}
