//! Tests that need a real database in a temp dir.

use std::{collections::HashSet, sync::Arc};

use crate::{catalog, *};

const TIMELINE: Table<(u64, i64), u64> = Table::new(&catalog::ROOMCOUNT_SHORTEVENTID);
const NAMES: Table<String, Raw> = Table::new(&catalog::EVENTID_SHORTEVENTID);

fn open(dir: &tempfile::TempDir) -> Arc<Db> {
    Db::open(dir.path(), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap()
}

fn rows(iter: Iter<'_, (u64, i64), u64>) -> Vec<(u64, i64)> {
    iter.map(|r| r.unwrap().0).collect()
}

#[tokio::test]
async fn put_get_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut b = Batch::new();
    NAMES.put(&mut b, &"$a".into(), &Raw(b"{\"x\":1}".to_vec())).unwrap();
    NAMES.put(&mut b, &"$b".into(), &Raw(vec![])).unwrap();
    db.commit(b).await.unwrap();
    assert_eq!(NAMES.get(&*db, &"$a".into()).unwrap(), Some(Raw(b"{\"x\":1}".to_vec())));
    assert!(NAMES.contains(&*db, &"$b".into()).unwrap());
    let mut b = Batch::new();
    NAMES.delete(&mut b, &"$a".into());
    db.commit(b).await.unwrap();
    assert_eq!(NAMES.get(&*db, &"$a".into()).unwrap(), None);
    assert!(NAMES.contains(&*db, &"$b".into()).unwrap());
}

#[tokio::test]
async fn prefix_and_range_iterate_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut b = Batch::new();
    for room in [1u64, 2, 3] {
        for count in [-2i64, -1, 0, 1, 5] {
            TIMELINE.put(&mut b, &(room, count), &(room * 100)).unwrap();
        }
    }
    db.commit(b).await.unwrap();

    let fwd = rows(TIMELINE.prefix(&*db, &(2u64,), Direction::Forward).unwrap());
    assert_eq!(fwd, vec![(2, -2), (2, -1), (2, 0), (2, 1), (2, 5)]);
    let rev = rows(TIMELINE.prefix(&*db, &(2u64,), Direction::Reverse).unwrap());
    assert_eq!(rev, vec![(2, 5), (2, 1), (2, 0), (2, -1), (2, -2)]);

    let r = rows(TIMELINE.range(&*db, (2u64, -1i64)..(2, 5), Direction::Forward).unwrap());
    assert_eq!(r, vec![(2, -1), (2, 0), (2, 1)]);
    let r = rows(TIMELINE.range(&*db, (2u64, -1i64)..=(2, 5), Direction::Reverse).unwrap());
    assert_eq!(r, vec![(2, 5), (2, 1), (2, 0), (2, -1)]);
    use std::ops::Bound::{Excluded, Included};
    let r = rows(TIMELINE.range(&*db, (Excluded((1u64, 5i64)), Included((2, -1))), Direction::Forward).unwrap());
    assert_eq!(r, vec![(2, -2), (2, -1)]);
    assert_eq!(TIMELINE.last(&*db).unwrap().unwrap().0, (3, 5));
    assert_eq!(rows(TIMELINE.prefix(&*db, &(9u64,), Direction::Reverse).unwrap()), vec![]);
}

#[tokio::test]
async fn snapshot_does_not_see_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut b = Batch::new();
    TIMELINE.put(&mut b, &(1, 1), &10).unwrap();
    db.commit(b).await.unwrap();
    let snap = db.snapshot();
    let mut b = Batch::new();
    TIMELINE.put(&mut b, &(1, 1), &11).unwrap();
    TIMELINE.put(&mut b, &(1, 2), &12).unwrap();
    db.commit(b).await.unwrap();
    assert_eq!(TIMELINE.get(&snap, &(1, 1)).unwrap(), Some(10));
    assert_eq!(rows(TIMELINE.prefix(&snap, &(1u64,), Direction::Forward).unwrap()), vec![(1, 1)]);
    assert_eq!(TIMELINE.get(&*db, &(1, 1)).unwrap(), Some(11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_all_land_and_share_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50i64 {
                let mut b = Batch::new();
                TIMELINE.put(&mut b, &(w, i), &(w * 1000 + i as u64)).unwrap();
                db.commit(b).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = TIMELINE.iter(&*db, Direction::Forward).unwrap().count();
    assert_eq!(n, 32 * 50);
}

#[tokio::test]
async fn data_survives_reopen_and_counters_resume() {
    let dir = tempfile::tempdir().unwrap();
    let positions: Vec<u64>;
    {
        let db = open(&dir);
        let stream = StreamCounter::load(&db, "stream").unwrap();
        let mut pos = Vec::new();
        for _ in 0..3 {
            let mut b = Batch::new();
            let p = stream.next_in(&mut b);
            TIMELINE.put(&mut b, &(1, p as i64), &p).unwrap();
            db.commit(b).await.unwrap();
            pos.push(p);
        }
        assert_eq!(stream.current(), 3);
        positions = pos;
        db.shutdown();
    }
    let db = open(&dir);
    assert_eq!(positions, vec![1, 2, 3]);
    assert_eq!(rows(TIMELINE.prefix(&*db, &(1u64,), Direction::Forward).unwrap()).len(), 3);
    let stream = StreamCounter::load(&db, "stream").unwrap();
    assert_eq!(stream.current(), 3);
    let mut b = Batch::new();
    assert_eq!(stream.next_in(&mut b), 4);
}

#[tokio::test]
async fn stream_position_waits_for_earlier_in_flight_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let stream = StreamCounter::load(&db, "stream").unwrap();
    let mut slow = Batch::new();
    let p1 = stream.next_in(&mut slow);
    let mut fast = Batch::new();
    let p2 = stream.next_in(&mut fast);
    assert!(p2 > p1);
    db.commit(fast).await.unwrap();
    // p2 is durable, but p1 is still in flight: readers must not see past it.
    assert_eq!(stream.current(), p1 - 1);
    let rx = stream.subscribe();
    db.commit(slow).await.unwrap();
    assert_eq!(stream.current(), p2);
    assert!(rx.has_changed().unwrap());
    // An abandoned reservation leaves a gap, not a stall.
    let mut dropped = Batch::new();
    let p3 = stream.next_in(&mut dropped);
    drop(dropped);
    assert_eq!(stream.current(), p3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interner_gives_one_id_per_string_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let db = open(&dir);
        // A cache smaller than the 20 strings (about 9 per direction): hits, misses and
        // evictions all happen.
        let caches = crate::Caches::new(2000);
        let interner = Arc::new(
            Interner::open(&db, &catalog::ROOMID_SHORTROOMID, &catalog::SHORTROOMID_ROOMID).unwrap().with_cache(
                &caches,
                crate::Share { name: "by_name", permille: 500 },
                crate::Share { name: "by_id", permille: 500 },
            ),
        );
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (db, interner) = (db.clone(), interner.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20 {
                    let mut b = Batch::new();
                    let id = interner.get_or_create(&db, &mut b, &format!("!room{i}:x")).unwrap();
                    db.commit(b).await.unwrap();
                    got.push(id);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        for other in &all[1..] {
            assert_eq!(other, &all[0], "two batches got different ids for one string");
        }
        let distinct: HashSet<u64> = all[0].iter().copied().collect();
        assert_eq!(distinct.len(), 20);
        assert!(!distinct.contains(&0));
        // A batch that is dropped leaves nothing behind and no hole in the mapping.
        let mut b = Batch::new();
        let lost = interner.get_or_create(&db, &mut b, "!lost:x").unwrap();
        // Before its batch is written, the id reads back both ways (a later batch built on it
        // may need its name: state resolution over an event not stored yet).
        assert_eq!(interner.get(&*db, "!lost:x").unwrap(), Some(lost));
        assert_eq!(interner.lookup(&*db, lost).unwrap().as_deref(), Some("!lost:x"));
        drop(b);
        let mut b = Batch::new();
        assert_eq!(interner.get_or_create(&db, &mut b, "!lost:x").unwrap(), lost);
        db.commit(b).await.unwrap();
        assert_eq!(interner.lookup(&*db, lost).unwrap().as_deref(), Some("!lost:x"));
        // The writers may all have found each string pending (lockstep), which caches
        // nothing; read every stored mapping twice so both caches fill, hit and evict.
        for (i, id) in all[0].iter().enumerate() {
            for _ in 0..2 {
                assert_eq!(interner.get(&*db, &format!("!room{i}:x")).unwrap(), Some(*id));
                assert_eq!(interner.lookup(&*db, *id).unwrap(), Some(format!("!room{i}:x")));
            }
        }
        for stats in caches.stats() {
            assert!(stats.hits() > 0 && stats.misses() > 0, "{stats:?}");
            assert!(stats.bytes() <= stats.capacity, "{}: {} > {}", stats.name, stats.bytes(), stats.capacity);
            assert!(stats.entries() < 20 && stats.evictions() > 0, "{}: {stats:?}", stats.name);
        }
        db.shutdown();
        all.swap_remove(0)
    };
    let db = open(&dir);
    let caches = crate::Caches::new(2000);
    let interner = Interner::open(&db, &catalog::ROOMID_SHORTROOMID, &catalog::SHORTROOMID_ROOMID).unwrap().with_cache(
        &caches,
        crate::Share { name: "by_name", permille: 500 },
        crate::Share { name: "by_id", permille: 500 },
    );
    for _ in 0..2 {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(interner.get(&*db, &format!("!room{i}:x")).unwrap(), Some(*id));
            assert_eq!(interner.lookup(&*db, *id).unwrap(), Some(format!("!room{i}:x")));
        }
    }
    let mut b = Batch::new();
    let fresh = interner.get_or_create(&db, &mut b, "!new:x").unwrap();
    assert!(fresh > *ids.iter().max().unwrap(), "ids must not be reused after restart");
}

#[test]
fn second_open_of_a_locked_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _db = open(&dir);
    match Db::open(dir.path(), &StorageOptions::default()) {
        Err(StorageError::Locked(p)) => assert_eq!(p, dir.path()),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a locked database opened twice"),
    }
}

#[test]
fn foreign_rocksdb_and_unknown_schema_are_refused() {
    let foreign = tempfile::tempdir().unwrap();
    {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, foreign.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    assert!(matches!(Db::open(foreign.path(), &StorageOptions::default()), Err(StorageError::Foreign { .. })));

    let newer = tempfile::tempdir().unwrap();
    {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&o, newer.path(), ["global"]).unwrap();
        let cf = db.cf_handle("global").unwrap();
        db.put_cf(cf, "schema".to_owned().encode(), b"myelin:999").unwrap();
    }
    match Db::open(newer.path(), &StorageOptions::default()) {
        Err(StorageError::SchemaVersion { found: 999, expected, .. }) => assert_eq!(expected, SCHEMA_VERSION),
        Err(e) => panic!("expected SchemaVersion, got {e}"),
        Ok(_) => panic!("opened a database with an unknown schema"),
    }
}

#[tokio::test]
async fn commit_after_shutdown_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.shutdown();
    let mut b = Batch::new();
    TIMELINE.put(&mut b, &(1, 1), &1).unwrap();
    assert!(matches!(db.commit(b).await, Err(StorageError::Closed)));
}

#[tokio::test]
async fn checkpoint_is_a_consistent_openable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut b = Batch::new();
    TIMELINE.put(&mut b, &(7, 7), &77).unwrap();
    db.commit(b).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("db");
    db.checkpoint(&target).unwrap();
    let mut b = Batch::new();
    TIMELINE.put(&mut b, &(7, 8), &78).unwrap();
    db.commit(b).await.unwrap();
    let copy = Db::open(&target, &StorageOptions::default()).unwrap();
    assert_eq!(TIMELINE.get(&*copy, &(7, 7)).unwrap(), Some(77));
    assert_eq!(TIMELINE.get(&*copy, &(7, 8)).unwrap(), None);
}

#[tokio::test]
async fn an_unsynced_commit_is_visible_at_once_and_kept_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(&dir);
        let mut b = Batch::new();
        NAMES.put(&mut b, &"$bookkeeping".into(), &Raw(b"1".to_vec())).unwrap();
        db.commit_unsynced(b).await.unwrap();
        assert!(NAMES.contains(&*db, &"$bookkeeping".into()).unwrap());
        // A synced write after it carries it to disk with its own.
        let mut b = Batch::new();
        NAMES.put(&mut b, &"$event".into(), &Raw(b"2".to_vec())).unwrap();
        db.commit(b).await.unwrap();
        db.shutdown();
    }
    let db = open(&dir);
    assert!(NAMES.contains(&*db, &"$bookkeeping".into()).unwrap());
    assert!(NAMES.contains(&*db, &"$event".into()).unwrap());
}

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

/// The configured budget reaches RocksDB: every family reads back the one
/// shared block cache of the configured size, and the memtables' charge shows
/// in its usage once rows are written.
#[test]
fn the_memory_budget_is_one_shared_cache_that_memtables_are_charged_to() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        StorageOptions { cache_bytes: 32 << 20, write_buffer_bytes: 8 << 20, wal_bytes: 0, app_cache_bytes: 1 << 20 };
    let db = Db::open(dir.path(), &options).unwrap();
    for cf in crate::catalog::ALL {
        assert_eq!(db.property(cf, "rocksdb.block-cache-capacity"), Some(32 << 20), "{}", cf.name);
    }
    let before = db.property(&crate::catalog::GLOBAL, "rocksdb.block-cache-usage").unwrap();
    let mut batch = crate::Batch::new();
    for i in 0..20_000u64 {
        batch.put_raw(&crate::catalog::SHORTEVENTID_PDU, i.to_be_bytes().to_vec(), vec![b'x'; 256]);
    }
    db.commit_blocking(batch).unwrap();
    assert!(db.memtable_bytes() > 1 << 20, "memtables hold the rows");
    let after = db.property(&crate::catalog::GLOBAL, "rocksdb.block-cache-usage").unwrap();
    assert!(after >= before + (1 << 20), "memtables are charged to the shared cache: {before} -> {after}");
    db.shutdown();
}

/// A quiet server gives back what it held for speed: memtables are flushed,
/// the block cache and Myelin's caches shrink to the kept share, the block
/// cache's capacity is restored for the next burst, and every row still reads.
#[test]
fn release_memory_flushes_memtables_and_shrinks_every_cache() {
    use crate::table::Read;
    let dir = tempfile::tempdir().unwrap();
    let options =
        StorageOptions { cache_bytes: 32 << 20, write_buffer_bytes: 16 << 20, wal_bytes: 0, app_cache_bytes: 1 << 20 };
    let db = Db::open(dir.path(), &options).unwrap();
    let mut batch = crate::Batch::new();
    for i in 0..20_000u64 {
        batch.put_raw(&crate::catalog::SHORTEVENTID_PDU, i.to_be_bytes().to_vec(), vec![b'x'; 256]);
    }
    db.commit_blocking(batch).unwrap();
    // Table files, then every row read once: the block cache fills with their blocks.
    db.compact_all();
    let read = |db: &Db| {
        (0..20_000u64)
            .filter(|i| {
                db.get_raw(&crate::catalog::SHORTEVENTID_PDU, &i.to_be_bytes()).unwrap().as_deref()
                    == Some(&[b'x'; 256][..])
            })
            .count()
    };
    assert_eq!(read(&db), 20_000);
    let mut batch = crate::Batch::new();
    batch.put_raw(&crate::catalog::SHORTEVENTID_PDU, b"unflushed".to_vec(), b"row".to_vec());
    for i in 0..2000u64 {
        batch.put_raw(&crate::catalog::EVENTID_SHORTEVENTID, i.to_be_bytes().to_vec(), vec![b'y'; 256]);
    }
    db.commit_blocking(batch).unwrap();
    let lru = db.caches().lru::<u64, Vec<u8>>(crate::Share { name: "t", permille: 1000 }, |_, v| v.capacity());
    for i in 0..1000u64 {
        lru.lock().put(i, vec![0; 512]);
    }
    let global = &crate::catalog::GLOBAL;
    let cached = db.property(global, "rocksdb.block-cache-usage").unwrap();
    assert!(cached > 4 << 20, "reads filled the block cache: {cached}");
    let memtables = db.memtable_bytes();
    assert!(memtables > 256 * 2000, "{memtables}");
    let app_before = lru.lock().bytes();

    let released = db.release_memory(100);
    let kept = db.property(global, "rocksdb.block-cache-usage").unwrap();
    let pinned = db.property(global, "rocksdb.block-cache-pinned-usage").unwrap();
    assert!(kept <= (32 << 20) / 10 + pinned && kept < cached, "block cache {cached} -> {kept} ({pinned} pinned)");
    assert!(released.block_cache_bytes > 0 && released.memtable_bytes > memtables / 2, "{released:?}");
    assert_eq!(
        db.property(&crate::catalog::SHORTEVENTID_PDU, "rocksdb.num-entries-active-mem-table"),
        Some(0),
        "the memtable was flushed"
    );
    assert_eq!(db.property(global, "rocksdb.block-cache-capacity"), Some(32 << 20), "capacity restored");
    let app_after = lru.lock().bytes();
    assert!(app_after <= (1 << 20) / 10 && app_after > 0, "{app_before} -> {app_after}");
    assert_eq!(released.cache_bytes, (app_before - app_after) as u64);
    assert!(lru.lock().peek(&999).is_some() && lru.lock().peek(&0).is_none(), "the most recent stay");
    assert_eq!(read(&db), 20_000, "every row still reads");
    assert_eq!(db.get_raw(&crate::catalog::SHORTEVENTID_PDU, b"unflushed").unwrap().as_deref(), Some(&b"row"[..]));
    db.shutdown();
}
