//! Tests that need a real database in a temp dir.

use std::{collections::HashSet, sync::Arc};

use crate::{catalog, *};

const TIMELINE: Table<(u64, i64), u64> = Table::new(&catalog::ROOMCOUNT_SHORTEVENTID);
pub(crate) const NAMES: Table<String, Raw> = Table::new(&catalog::EVENTID_SHORTEVENTID);

pub(crate) fn open(dir: &tempfile::TempDir) -> Arc<Db> {
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
