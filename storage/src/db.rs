//! Opening, reading, committing and closing the database.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{
    Batch, Table,
    catalog::{self, Access, Cf, Compression},
    error::StorageError,
    key::Key,
    table::Read,
    writer::{self, Request},
};

/// What the database calls itself; a different identity is someone else's data.
pub const SCHEMA_IDENTITY: &str = "myelin";
/// The storage layout version this binary reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const SCHEMA: Table<String, String> = Table::new(&catalog::GLOBAL);
const COUNTERS: Table<String, u64> = Table::new(&catalog::GLOBAL);

/// Tuning that is not part of the layout.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Total block-cache budget, shared out by the catalog's percentages.
    pub cache_bytes: usize,
    /// Size the write-ahead log is given at open (0: none); see [`Db::open`].
    pub wal_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self { cache_bytes: 256 << 20, wal_bytes: 0 }
    }
}

/// How many retired WAL files RocksDB keeps for reuse.
const RECYCLED_WALS: usize = 2;
/// Filler written per WAL record while pre-sizing the log.
const WAL_FILL_CHUNK: usize = 64 << 10;
/// Tiny key written to give a WAL switch something to flush.
const WAL_SWITCH_KEY: &str = "wal-switch";

/// The open database: the RocksDB handle plus the group-commit writer.
pub struct Db {
    pub(crate) rocks: Arc<rocksdb::DB>,
    path: PathBuf,
    writer: Mutex<Option<(Sender<Request>, JoinHandle<()>)>>,
    /// Shared with the writer thread: the write lock and its bookkeeping.
    pub(crate) shared: Arc<writer::Shared>,
    /// A batch kept for its caller to write (see [`Pending::durable`]); taken
    /// before the writer lock whenever both are held.
    kept: Mutex<Option<Kept>>,
    kept_ids: AtomicU64,
}

/// A synced batch not yet handed to the writer thread: its caller may write it.
struct Kept {
    id: u64,
    req: Request,
}

fn cf_options(cf: &Cf, total_cache: usize) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    let share = (total_cache / 100 * usize::from(cf.cache_percent)).max(1 << 20);
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(share));
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    match cf.access {
        Access::Point => {
            table.set_bloom_filter(10.0, false);
            table.set_block_size(4 << 10);
        }
        Access::Scan => table.set_block_size(16 << 10),
    }
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(match cf.compression {
        Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
        Compression::Zstd => rocksdb::DBCompressionType::Zstd,
    });
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    opts
}

fn map_open_error(path: &Path, e: rocksdb::Error) -> StorageError {
    let msg = e.into_string();
    if msg.contains("lock") || msg.contains("LOCK") {
        StorageError::Locked(path.to_owned())
    } else {
        StorageError::Rocks(msg)
    }
}

impl Db {
    /// Opens (or creates) the database at `path`, creating missing families.
    ///
    /// Refuses a RocksDB database that is not Myelin's, one with a schema
    /// version this binary does not know, and one locked by another process.
    pub fn open(path: &Path, options: &StorageOptions) -> Result<Arc<Self>, StorageError> {
        std::fs::create_dir_all(path).map_err(|e| StorageError::io(format!("creating {}", path.display()), e))?;
        let exists = path.join("CURRENT").exists();
        let mut existing: Vec<String> = Vec::new();
        if exists {
            existing = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).map_err(|e| map_open_error(path, e))?;
            if !existing.iter().any(|n| n == catalog::GLOBAL.name) {
                return Err(StorageError::Foreign {
                    path: path.to_owned(),
                    reason: format!("no `{}` column family", catalog::GLOBAL.name),
                });
            }
        }

        let mut db_opts = rocksdb::Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(256 << 20);
        // A retired WAL is reused for the next one: a synced append then
        // overwrites allocated blocks instead of growing the file, which on
        // ext4 costs no journal commit (see `presize_wal`).
        db_opts.set_recycle_log_file_num(RECYCLED_WALS);

        let mut descriptors: Vec<rocksdb::ColumnFamilyDescriptor> = catalog::ALL
            .iter()
            .map(|cf| rocksdb::ColumnFamilyDescriptor::new(cf.name, cf_options(cf, options.cache_bytes)))
            .collect();
        // Families a newer Myelin created must still be opened; RocksDB refuses otherwise.
        for name in &existing {
            if name != "default" && !catalog::ALL.iter().any(|cf| cf.name == name) {
                descriptors.push(rocksdb::ColumnFamilyDescriptor::new(name, rocksdb::Options::default()));
            }
        }
        let rocks =
            rocksdb::DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| map_open_error(path, e))?;
        let rocks = Arc::new(rocks);

        let db_view = RawView(&rocks);
        match SCHEMA.get(&db_view, &"schema".to_owned())? {
            None if !exists => {
                let mut sync = rocksdb::WriteOptions::default();
                sync.set_sync(true);
                let global = rocks
                    .cf_handle(catalog::GLOBAL.name)
                    .ok_or_else(|| StorageError::Rocks("global family missing after open".into()))?;
                let value = format!("{SCHEMA_IDENTITY}:{SCHEMA_VERSION}");
                rocks.put_cf_opt(global, "schema".to_owned().encode(), value.as_bytes(), &sync)?;
            }
            None => {
                return Err(StorageError::Foreign { path: path.to_owned(), reason: "no schema identity".into() });
            }
            Some(found) => {
                let (identity, version) = found.split_once(':').unwrap_or((found.as_str(), ""));
                if identity != SCHEMA_IDENTITY {
                    return Err(StorageError::Foreign {
                        path: path.to_owned(),
                        reason: format!("schema identity `{identity}`"),
                    });
                }
                let found = version.parse::<u32>().map_err(|_| StorageError::Foreign {
                    path: path.to_owned(),
                    reason: format!("unreadable schema version `{version}`"),
                })?;
                if found != SCHEMA_VERSION {
                    return Err(StorageError::SchemaVersion { path: path.to_owned(), found, expected: SCHEMA_VERSION });
                }
            }
        }

        let mut counters = HashMap::new();
        let prefix = "counter/";
        for row in COUNTERS.iter(&db_view, crate::Direction::Forward)? {
            let (key, value) = match row {
                Ok(kv) => kv,
                // The schema row shares the family and is not a u64.
                Err(StorageError::Corrupt(_)) => continue,
                Err(e) => return Err(e),
            };
            if let Some(name) = key.strip_prefix(prefix) {
                counters.insert(name.to_owned(), value);
            }
        }
        if options.wal_bytes > 0 {
            presize_wal(&rocks, path, options.wal_bytes)?;
        }
        let (tx, handle, shared) = writer::spawn(rocks.clone(), counters)?;
        tracing::info!(path = %path.display(), schema = SCHEMA_VERSION, "database open");
        Ok(Arc::new(Self {
            rocks,
            path: path.to_owned(),
            writer: Mutex::new(Some((tx, handle))),
            shared,
            kept: Mutex::new(None),
            kept_ids: AtomicU64::new(0),
        }))
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits `batch` through the group-commit writer; returns once durable.
    pub async fn commit(&self, batch: Batch) -> Result<(), StorageError> {
        let rx = self.submit(batch)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Commits from a thread that is not an async runtime worker.
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), StorageError> {
        let rx = self.submit(batch)?;
        rx.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// Commits bookkeeping that a crash may lose without harm (it is redone or
    /// found redundant after a restart): returns once the batch is visible to
    /// reads, without waiting for a disk flush. It reaches disk with the next
    /// synced write. A batch that settles stream positions is synced anyway.
    pub async fn commit_unsynced(&self, batch: Batch) -> Result<(), StorageError> {
        let rx = self.send_request(batch, true)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Hands bookkeeping like [`Db::commit_unsynced`]'s to the writer without
    /// waiting: it is visible to reads once the writer reaches it (batches are
    /// written in the order handed over). A failed write is logged by the
    /// writer, not reported here.
    pub fn submit_unsynced(&self, batch: Batch) -> Result<(), StorageError> {
        // Nobody waits for the outcome: the receiver is dropped at once.
        drop(self.send_request(batch, true)?);
        Ok(())
    }

    fn submit(&self, batch: Batch) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        self.send_request(batch, false)
    }

    fn send_request(
        &self,
        batch: Batch,
        unsynced: bool,
    ) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        let (done, rx) = oneshot::channel();
        self.hand_over(Request { batch, unsynced, done })?;
        Ok(rx)
    }

    /// Sends `req` to the writer thread, after the kept batch if there is one:
    /// batches are written in the order they were handed over.
    fn hand_over(&self, req: Request) -> Result<(), StorageError> {
        let mut kept = self.kept.lock();
        let guard = self.writer.lock();
        let (tx, _) = guard.as_ref().ok_or(StorageError::Closed)?;
        for req in kept.take().map(|k| k.req).into_iter().chain([req]) {
            self.send_to_thread(tx, req)?;
        }
        Ok(())
    }

    /// Sends `req` over `tx`, counted in [`writer::Shared::queued`] until the
    /// thread completes it (every send to the thread goes through here).
    fn send_to_thread(&self, tx: &Sender<Request>, req: Request) -> Result<(), StorageError> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        tx.send(req).map_err(|_| StorageError::Closed)
    }

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

    /// Ends a run of [`Batch::more_follow`] batches whose announced successor
    /// will not come: the writer stops waiting and writes what it holds.
    pub fn release_held(&self) -> Result<(), StorageError> {
        // An empty request: its group is written at once, and alone it writes nothing.
        drop(self.send_request(Batch::new(), true)?);
        Ok(())
    }

    /// The persisted value of counter `name` (0 when never raised).
    pub fn counter(&self, name: &str) -> Result<u64, StorageError> {
        Ok(COUNTERS.get(self, &format!("counter/{name}"))?.unwrap_or(0))
    }

    /// A consistent point-in-time view for several reads.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { db: self, snap: self.rocks.snapshot() }
    }

    /// Runs `f` on the blocking pool, off the async runtime: for reads that may touch disk.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> T
    where
        F: FnOnce(&Db) -> T + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Writes a consistent copy of the database into `dir` (which must not exist).
    ///
    /// Uses a RocksDB checkpoint: hard links to the immutable table files plus
    /// a copy of the live ones, safe while writes continue.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.rocks)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }

    /// Stops the writer (waiting for queued batches), flushes memtables.
    ///
    /// Later commits fail with [`StorageError::Closed`]. Idempotent.
    pub fn shutdown(&self) {
        let mut kept = self.kept.lock();
        let Some((tx, handle)) = self.writer.lock().take() else {
            return;
        };
        // A kept batch is written before the thread stops, as if handed over.
        if let Some(k) = kept.take() {
            let _ = self.send_to_thread(&tx, k.req);
        }
        drop(kept);
        drop(tx);
        if handle.join().is_err() {
            tracing::error!("writer thread panicked");
        }
        // A caller still writing its own batch finishes before the flush.
        drop(self.shared.write.lock());
        for cf in catalog::ALL {
            if let Some(handle) = self.rocks.cf_handle(cf.name)
                && let Err(e) = self.rocks.flush_cf(handle)
            {
                tracing::warn!(family = cf.name, error = %e, "flush on shutdown failed; the WAL still holds the data");
            }
        }
        tracing::info!(path = %self.path.display(), "database closed");
    }

    fn cf(&self, cf: &'static Cf) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.rocks
            .cf_handle(cf.name)
            .ok_or_else(|| StorageError::Rocks(format!("column family {} is not open", cf.name)))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Size of the live write-ahead log: the highest-numbered `*.log` file.
pub(crate) fn live_wal_len(path: &Path) -> Result<u64, StorageError> {
    let entries = std::fs::read_dir(path).map_err(|e| StorageError::io(format!("listing {}", path.display()), e))?;
    let mut newest: Option<(u64, u64)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(format!("listing {}", path.display()), e))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.is_none_or(|(n, _)| number > n) {
            let len = entry.metadata().map_err(|e| StorageError::io(format!("reading {name:?}"), e))?.len();
            newest = Some((number, len));
        }
    }
    Ok(newest.map_or(0, |(_, len)| len))
}

/// Makes the live WAL a reused file of at least `target` bytes.
///
/// Every acknowledged write ends in an fdatasync of the WAL. When that append
/// grows the file, ext4 must also commit the new size to its journal: on this
/// project's test machine ~127 µs per sync against ~90 µs for an overwrite
/// inside the file (BENCHMARKS.md). RocksDB reuses retired WAL files
/// (`recycle_log_file_num`), but only ones written since this open, so a fresh
/// start would append until the first memtable switch. Here the live WAL is
/// filled with log-only records (never applied to a table), retired, and
/// taken up again: later writes overwrite it. Its stale records carry the old
/// log number, which recovery recognises as the end of the log.
fn presize_wal(rocks: &rocksdb::DB, path: &Path, target: u64) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    let mut len = live_wal_len(path)?;
    if len >= target {
        return Ok(());
    }
    let unsynced = rocksdb::WriteOptions::default();
    let filler = vec![0u8; WAL_FILL_CHUNK];
    while len < target {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_log_data(&filler);
        rocks.write_opt(batch, &unsynced)?;
        len += WAL_FILL_CHUNK as u64;
    }
    let global = rocks
        .cf_handle(catalog::GLOBAL.name)
        .ok_or_else(|| StorageError::Rocks("global family missing after open".into()))?;
    let families: Vec<&rocksdb::ColumnFamily> = catalog::ALL.iter().filter_map(|cf| rocks.cf_handle(cf.name)).collect();
    let mut flush = rocksdb::FlushOptions::default();
    flush.set_wait(true);
    let key = WAL_SWITCH_KEY.to_owned().encode();
    // The first switch retires the filled log into the recycle list (RocksDB
    // does this after the flush returns, hence the retries); a later one takes
    // it up as the live log.
    for attempt in 0..20 {
        rocks.put_cf_opt(global, &key, b"", &unsynced)?;
        rocks.flush_cfs_opt(&families, &flush)?;
        if attempt > 0 && live_wal_len(path)? >= target {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    rocks.delete_cf_opt(global, &key, &sync)?;
    let live = live_wal_len(path)?;
    if live < target {
        tracing::warn!(wanted = target, live, "the write-ahead log could not be pre-sized; syncs will be slower");
    } else {
        tracing::debug!(bytes = live, ms = started.elapsed().as_millis() as u64, "write-ahead log pre-sized");
    }
    Ok(())
}

fn bounded_opts(lower: Option<Vec<u8>>, upper: Option<Vec<u8>>) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    if let Some(l) = lower {
        opts.set_iterate_lower_bound(l);
    }
    if let Some(u) = upper {
        opts.set_iterate_upper_bound(u);
    }
    opts
}

impl Read for Db {
    fn get_raw(&self, cf: &'static Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.rocks.get_cf(self.cf(cf)?, key)?)
    }

    fn raw_iter(
        &self,
        cf: &'static Cf,
        lower: Option<Vec<u8>>,
        upper: Option<Vec<u8>>,
    ) -> Result<rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>, StorageError> {
        Ok(self.rocks.raw_iterator_cf_opt(self.cf(cf)?, bounded_opts(lower, upper)))
    }
}

/// Reads straight from a RocksDB handle during open, before `Db` exists.
struct RawView<'a>(&'a rocksdb::DB);

impl Read for RawView<'_> {
    fn get_raw(&self, cf: &'static Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let handle = self.0.cf_handle(cf.name).ok_or_else(|| StorageError::Rocks(format!("{} not open", cf.name)))?;
        Ok(self.0.get_cf(handle, key)?)
    }

    fn raw_iter(
        &self,
        cf: &'static Cf,
        lower: Option<Vec<u8>>,
        upper: Option<Vec<u8>>,
    ) -> Result<rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>, StorageError> {
        let handle = self.0.cf_handle(cf.name).ok_or_else(|| StorageError::Rocks(format!("{} not open", cf.name)))?;
        Ok(self.0.raw_iterator_cf_opt(handle, bounded_opts(lower, upper)))
    }
}

/// A consistent, read-only, point-in-time view of the database.
pub struct Snapshot<'a> {
    db: &'a Db,
    snap: rocksdb::Snapshot<'a>,
}

impl Read for Snapshot<'_> {
    fn get_raw(&self, cf: &'static Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&self.snap);
        Ok(self.db.rocks.get_cf_opt(self.db.cf(cf)?, key, &opts)?)
    }

    fn raw_iter(
        &self,
        cf: &'static Cf,
        lower: Option<Vec<u8>>,
        upper: Option<Vec<u8>>,
    ) -> Result<rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>, StorageError> {
        let mut opts = bounded_opts(lower, upper);
        opts.set_snapshot(&self.snap);
        Ok(self.db.rocks.raw_iterator_cf_opt(self.db.cf(cf)?, opts))
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
