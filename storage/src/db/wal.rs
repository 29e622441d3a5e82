//! Pre-sizing the write-ahead log at open, so that synced appends overwrite a
//! reused file instead of growing one.

use std::path::Path;

use crate::{catalog, error::StorageError, key::Key};

/// Filler written per WAL record while pre-sizing the log.
const WAL_FILL_CHUNK: usize = 64 << 10;
/// Tiny key written to give a WAL switch something to flush.
const WAL_SWITCH_KEY: &str = "wal-switch";

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
pub(super) fn presize_wal(rocks: &rocksdb::DB, path: &Path, target: u64) -> Result<(), StorageError> {
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
