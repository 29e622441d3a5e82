//! Opening, reading, committing and closing the database.

mod inline;
mod wal;

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
pub use inline::Pending;
use parking_lot::Mutex;
use tokio::sync::oneshot;
#[cfg(test)]
pub(crate) use wal::live_wal_len;
use wal::presize_wal;

use crate::{
    Batch, Caches, Table,
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
    /// The one block cache every family shares (index and filter blocks
    /// included), which the memtables are charged to as well.
    pub cache_bytes: usize,
    /// Most memory all memtables together may hold (charged to the block
    /// cache); past it the largest is flushed. 0: RocksDB's per-family defaults.
    pub write_buffer_bytes: usize,
    /// Size the write-ahead log is given at open (0: none); see [`Db::open`].
    pub wal_bytes: u64,
    /// Budget of the in-process caches made from [`Db::caches`].
    pub app_cache_bytes: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self { cache_bytes: 128 << 20, write_buffer_bytes: 32 << 20, wal_bytes: 0, app_cache_bytes: 64 << 20 }
    }
}

/// How many retired WAL files RocksDB keeps for reuse.
const RECYCLED_WALS: usize = 2;

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
    caches: Arc<Caches>,
    /// The one block cache every family reads through, and its configured capacity.
    block_cache: (rocksdb::Cache, usize),
}

/// What [`Db::release_memory`] gave back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Released {
    /// Memtable bytes written out to table files.
    pub memtable_bytes: u64,
    /// Block cache bytes dropped.
    pub block_cache_bytes: u64,
    /// Bytes dropped from Myelin's own caches.
    pub cache_bytes: u64,
}

/// A synced batch not yet handed to the writer thread: its caller may write it.
struct Kept {
    id: u64,
    req: Request,
}

/// Memtable size per family: small, since ~60 families share one write
/// budget (RocksDB's default of 64 MiB each would let memtables alone grow
/// to gigabytes).
const MEMTABLE_BYTES: usize = 8 << 20;

fn cf_options(cf: &Cf, cache: &rocksdb::Cache) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    // One cache for every family: a hot family may use what a cold one does
    // not, and the total stays what the operator configured. (The catalog's
    // `cache_percent` was a per-family split; it now only documents heat.)
    table.set_block_cache(cache);
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
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_max_write_buffer_number(2);
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
        let cache_capacity = options.cache_bytes.max(1 << 20);
        let cache = rocksdb::Cache::new_lru_cache(cache_capacity);
        if options.write_buffer_bytes > 0 {
            // Memtables are charged to the block cache: the two together stay
            // within `cache_bytes` (the memory budget), and the writers are not
            // stalled (`false`): a flush is started instead.
            let wbm = rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
                options.write_buffer_bytes,
                false,
                cache.clone(),
            );
            db_opts.set_write_buffer_manager(&wbm);
        }

        let mut descriptors: Vec<rocksdb::ColumnFamilyDescriptor> = catalog::ALL
            .iter()
            .map(|cf| rocksdb::ColumnFamilyDescriptor::new(cf.name, cf_options(cf, &cache)))
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
            caches: Arc::new(Caches::new(options.app_cache_bytes)),
            block_cache: (cache, cache_capacity),
        }))
    }

    /// An integer property of family `cf` (`rocksdb.block-cache-capacity`,
    /// `rocksdb.block-cache-usage`, `rocksdb.cur-size-all-mem-tables`, …).
    pub fn property(&self, cf: &Cf, name: &str) -> Option<u64> {
        let handle = self.rocks.cf_handle(cf.name)?;
        self.rocks.property_int_value_cf(handle, name).ok().flatten()
    }

    /// Rewrites every family into its last level, with that level's
    /// compression (what the data costs on disk once RocksDB has settled).
    /// Blocking: minutes on a large database.
    pub fn compact_all(&self) {
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for cf in catalog::ALL {
            if let Some(handle) = self.rocks.cf_handle(cf.name) {
                self.rocks.compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &options);
            }
        }
    }

    /// Gives back the memory held for speed, for a server fallen quiet:
    /// memtables are flushed to table files (which also shortens the next
    /// recovery), and the block cache and Myelin's caches keep only
    /// `keep_permille` of their capacity, least recently used entries going
    /// first. Blocking (flushes wait for their files): call it off the runtime.
    pub fn release_memory(&self, keep_permille: u32) -> Released {
        let mut released = Released { memtable_bytes: self.memtable_bytes(), ..Default::default() };
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        for cf in catalog::ALL {
            let Some(handle) = self.rocks.cf_handle(cf.name) else { continue };
            let unflushed = self.property(cf, "rocksdb.num-entries-active-mem-table").unwrap_or(0) > 0
                || self.property(cf, "rocksdb.num-immutable-mem-table").unwrap_or(0) > 0;
            if unflushed && let Err(e) = self.rocks.flush_cf_opt(handle, &flush) {
                tracing::warn!(family = cf.name, error = %e, "flush while releasing memory failed");
            }
        }
        released.memtable_bytes = released.memtable_bytes.saturating_sub(self.memtable_bytes());
        // A lower capacity evicts unpinned blocks at once; the capacity is then restored
        // so the next burst may fill the cache again.
        let (cache, capacity) = &self.block_cache;
        let mut cache = cache.clone();
        let before = cache.get_usage();
        let keep = (*capacity as u128 * keep_permille.min(1000) as u128 / 1000) as usize;
        cache.set_capacity(keep.max(1));
        released.block_cache_bytes = before.saturating_sub(cache.get_usage()) as u64;
        cache.set_capacity(*capacity);
        released.cache_bytes = self.caches.shrink(keep_permille) as u64;
        released
    }

    /// Per family: its name, bytes in table files, and estimated keys.
    pub fn family_sizes(&self) -> Vec<(&'static str, u64, u64)> {
        catalog::ALL
            .iter()
            .map(|cf| {
                let bytes = self.property(cf, "rocksdb.total-sst-files-size").unwrap_or(0);
                let keys = self.property(cf, "rocksdb.estimate-num-keys").unwrap_or(0);
                (cf.name, bytes, keys)
            })
            .collect()
    }

    /// Memtable bytes of every family together.
    pub fn memtable_bytes(&self) -> u64 {
        catalog::ALL.iter().filter_map(|cf| self.property(cf, "rocksdb.cur-size-all-mem-tables")).sum()
    }

    /// The in-process caches' share of the memory budget, for every component
    /// opened over this database.
    pub fn caches(&self) -> &Arc<Caches> {
        &self.caches
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
