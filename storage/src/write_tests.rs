//! Tests of the write path: which batches skip the sync, the pre-sized WAL,
//! held and pending batches, and when callers write themselves.

#[allow(unused_imports)]
use std::{collections::HashSet, sync::Arc};

use crate::{
    tests::{NAMES, open},
    *,
};

#[test]
fn only_plain_unsynced_batches_skip_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let stream = StreamCounter::load(&db, "stream").unwrap();
    let request =
        |batch: Batch, unsynced: bool| writer::Request { batch, unsynced, done: tokio::sync::oneshot::channel().0 };
    assert!(request(Batch::new(), true).may_skip_sync());
    assert!(!request(Batch::new(), false).may_skip_sync());
    // A batch settling a stream position must be durable before readers see the position.
    let mut positioned = Batch::new();
    stream.next_in(&mut positioned);
    assert!(!request(positioned, true).may_skip_sync());
    let mut hooked = Batch::new();
    hooked.on_durable(|| {});
    assert!(!request(hooked, true).may_skip_sync());
    let mut counting = Batch::new();
    counting.raise_counter("c", 3);
    assert!(!request(counting, true).may_skip_sync());
}

/// With `wal_bytes`, the live log is already that large when `open` returns
/// (a reused file, so a synced append does not grow it), and data written
/// into it is read back after a reopen.
#[tokio::test]
async fn a_presized_wal_is_the_live_log_and_keeps_writes() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        cache_bytes: 8 << 20,
        write_buffer_bytes: 2 << 20,
        wal_bytes: 2 << 20,
        app_cache_bytes: 1 << 20,
    };
    let db = Db::open(dir.path(), &options).unwrap();
    let before = crate::db::live_wal_len(dir.path()).unwrap();
    assert!(before >= 2 << 20, "live WAL is {before} bytes");
    let mut b = Batch::new();
    NAMES.put(&mut b, &"$kept".into(), &Raw(b"{}".to_vec())).unwrap();
    db.commit(b).await.unwrap();
    assert_eq!(crate::db::live_wal_len(dir.path()).unwrap(), before, "a synced write did not grow the file");
    drop(db);
    let db = Db::open(dir.path(), &options).unwrap();
    assert!(NAMES.contains(&*db, &"$kept".into()).unwrap());
    assert!(crate::db::live_wal_len(dir.path()).unwrap() >= 2 << 20);
}

/// A batch marked `more_follow` keeps its group open for the next batch
/// (here one that comes 50 ms later, within a 5 s hold), so both share one
/// write; without the mark, or after the hold, the group closes at once.
#[test]
fn a_batch_announcing_another_waits_for_it_in_one_group() {
    let request = |batch: Batch| writer::Request { batch, unsynced: false, done: tokio::sync::oneshot::channel().0 };
    let marked = || {
        let mut b = Batch::new();
        b.more_follow();
        b
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let late = |tx: crossbeam_channel::Sender<writer::Request>, batch: Batch| {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = tx.send(request(batch));
        })
    };
    let hold = std::time::Duration::from_secs(5);

    let sender = late(tx.clone(), Batch::new());
    let group = writer::collect_group(request(marked()), &rx, hold);
    assert_eq!(group.len(), 2, "the announced batch joined the group");
    sender.join().unwrap();

    let sender = late(tx.clone(), Batch::new());
    let group = writer::collect_group(request(Batch::new()), &rx, hold);
    assert_eq!(group.len(), 1, "an unmarked batch does not wait");
    sender.join().unwrap();
    assert_eq!(rx.try_recv().map(|r| r.batch.is_empty()).ok(), Some(true));

    let sender = late(tx.clone(), Batch::new());
    let group = writer::collect_group(request(marked()), &rx, std::time::Duration::from_millis(5));
    assert_eq!(group.len(), 1, "the hold is bounded");
    sender.join().unwrap();
}

/// After `release_held` a held batch is written and durable, and a release
/// with nothing held is harmless (a group of only releases writes nothing).
#[tokio::test]
async fn release_held_writes_a_held_batch_without_waiting_for_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut b = Batch::new();
    NAMES.put(&mut b, &"$held".into(), &Raw(b"{}".to_vec())).unwrap();
    b.more_follow();
    let pending = db.submit_pending(b).unwrap();
    db.release_held().unwrap();
    pending.durable().await.unwrap();
    assert!(NAMES.contains(&*db, &"$held".into()).unwrap());
    db.release_held().unwrap();
    let mut b = Batch::new();
    NAMES.put(&mut b, &"$after".into(), &Raw(vec![])).unwrap();
    db.commit(b).await.unwrap();
    assert!(NAMES.contains(&*db, &"$after".into()).unwrap());
}

fn put(key: &str, value: &[u8]) -> Batch {
    let mut b = Batch::new();
    NAMES.put(&mut b, &key.into(), &Raw(value.to_vec())).unwrap();
    b
}

/// On a runtime with two workers, a lone pending batch is written by the
/// caller that waits for it, and is there after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_pending_batch_is_written_by_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.submit_pending(put("$lone", b"1")).unwrap().durable().await.unwrap();
    assert_eq!(db.caller_writes(), 1);
    assert!(NAMES.contains(&*db, &"$lone".into()).unwrap());
    drop(db);
    let db = open(&dir);
    assert!(NAMES.contains(&*db, &"$lone".into()).unwrap());
}

/// A batch kept for its caller goes to the writer ahead of any batch handed
/// over after it, so a later write of the same key wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_batch_is_written_before_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let first = db.submit_pending(put("$k", b"first")).unwrap();
    db.commit(put("$k", b"second")).await.unwrap();
    first.durable().await.unwrap();
    assert_eq!(db.caller_writes(), 0, "the later hand-over took the kept batch along");
    assert_eq!(NAMES.get(&*db, &"$k".into()).unwrap().map(|r| r.0), Some(b"second".to_vec()));
}

/// A pending batch dropped without being awaited is still written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pending_batch_is_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    drop(db.submit_pending(put("$dropped", b"1")).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !NAMES.contains(&*db, &"$dropped".into()).unwrap() {
        assert!(std::time::Instant::now() < deadline, "the dropped batch was never written");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Without a second worker to carry on, the writer thread writes every batch.
#[tokio::test]
async fn a_single_threaded_caller_leaves_the_write_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.submit_pending(put("$one", b"1")).unwrap().durable().await.unwrap();
    assert_eq!(db.caller_writes(), 0);
    assert!(NAMES.contains(&*db, &"$one".into()).unwrap());
}

/// A batch kept when the database shuts down is written before it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_batch_is_written_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let kept = db.submit_pending(put("$late", b"1")).unwrap();
    db.shutdown();
    assert!(kept.durable().await.is_ok());
    drop(db);
    let db = open(&dir);
    assert!(NAMES.contains(&*db, &"$late".into()).unwrap());
}

/// After a write that shared its group, the next lone batch goes to the
/// thread; once a write has gone by alone, callers write their own again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_leave_writes_to_the_thread_while_writes_have_company() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut first = put("$a", b"1");
    first.more_follow();
    let held = db.submit_pending(first).unwrap();
    db.commit(put("$b", b"1")).await.unwrap();
    held.durable().await.unwrap();
    db.submit_pending(put("$c", b"1")).unwrap().durable().await.unwrap();
    assert_eq!(db.caller_writes(), 0, "the group of two said the writes had company");
    // As a sequential sender's next event would, come after the writer let go;
    // and whatever this disk's sync took, the slow-disk guard is not under test here.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    db.shared.last_sync_us.store(0, std::sync::atomic::Ordering::Relaxed);
    db.submit_pending(put("$d", b"1")).unwrap().durable().await.unwrap();
    assert_eq!(db.caller_writes(), 1, "a write went by alone since");
}

/// After a slow sync, a lone batch is left to the writer thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_slow_sync_callers_leave_writes_to_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.shared.last_sync_us.store(writer::INLINE_SYNC_MAX_US + 1, std::sync::atomic::Ordering::Relaxed);
    db.submit_pending(put("$slow", b"1")).unwrap().durable().await.unwrap();
    assert_eq!(db.caller_writes(), 0);
    assert!(NAMES.contains(&*db, &"$slow".into()).unwrap());
}

/// The RocksDB properties the write-stall guard reads exist (an unknown
/// name would read as "no stall" forever).
#[test]
fn the_write_stall_properties_are_known() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    for name in ["rocksdb.is-write-stopped", "rocksdb.actual-delayed-write-rate"] {
        assert_eq!(db.rocks.property_int_value(name).unwrap(), Some(0), "{name}");
    }
    assert!(!db.writes_slowed());
}

/// A group that writes nothing (here an empty synced commit) says nothing
/// about the disk: the slow-sync measure stays.
#[tokio::test]
async fn an_empty_write_does_not_reset_the_slow_sync_measure() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.shared.last_sync_us.store(5_000, std::sync::atomic::Ordering::Relaxed);
    db.commit(Batch::new()).await.unwrap();
    assert_eq!(db.shared.last_sync_us.load(std::sync::atomic::Ordering::Relaxed), 5_000);
}
