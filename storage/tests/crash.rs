//! A writer process killed with SIGKILL mid-stream loses no acknowledged batch.
//!
//! The test re-runs its own binary as the child (`crash_child` below, armed by
//! an environment variable). The child commits batches from several threads
//! and prints `ACK <writer> <seq>` after each commit returns; the parent kills
//! it with SIGKILL while it is writing, reopens the database and checks that
//! every acknowledged batch is there, complete.
//!
//! The child opens with a pre-sized write-ahead log, as `myelin serve` does:
//! its batches overwrite a reused log file whose older records follow them,
//! so recovery must stop where the new records end.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use myelin_storage::{Batch, Db, Raw, StorageOptions, Table, catalog};

const ROWS: Table<(u64, u64), Raw> = Table::new(&catalog::SHORTEVENTID_PDU);
const MARK: Table<(u64, i64), u64> = Table::new(&catalog::ROOMCOUNT_SHORTEVENTID);
const CHILD_ENV: &str = "MYELIN_TEST_CRASH_CHILD_DIR";
const WRITERS: u64 = 8;
/// Larger than everything the child writes before it is killed.
const WAL_BYTES: u64 = 8 << 20;

fn payload(w: u64, seq: u64) -> Vec<u8> {
    let mut v = format!("{w}:{seq}:").into_bytes();
    v.resize(1024, b'x');
    v
}

/// The child: writes until killed (or for at most 60 s).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let options = StorageOptions { wal_bytes: WAL_BYTES, ..Default::default() };
    let db = Db::open(std::path::Path::new(&dir), &options).unwrap();
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (db, stdout) = (&db, stdout.clone());
            s.spawn(move || {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let mut b = Batch::new();
                    // Two rows in two families: both must be there, or neither.
                    ROWS.put(&mut b, &(w, seq), &Raw(payload(w, seq))).unwrap();
                    MARK.put(&mut b, &(w, seq as i64), &seq).unwrap();
                    db.commit_blocking(b).unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ACK {w} {seq}").unwrap();
                    out.flush().unwrap();
                    seq += 1;
                }
            });
        }
    });
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let started = Instant::now();
    while acked.len() < 400 {
        let line = lines.next().expect("child exited before writing enough").unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
            acked.push((parts.next().unwrap(), parts.next().unwrap()));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "child too slow");
    }
    child.kill().unwrap(); // SIGKILL on Unix
    // Acks already in the pipe were printed after their commits returned.
    for line in lines {
        if let Some(rest) = line.unwrap().strip_prefix("ACK ") {
            let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
            acked.push((parts.next().unwrap(), parts.next().unwrap()));
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "child should have been killed, not finished");

    let db = Db::open(dir.path(), &StorageOptions { wal_bytes: WAL_BYTES, ..Default::default() }).unwrap();
    for &(w, seq) in &acked {
        let row = ROWS.get(&*db, &(w, seq)).unwrap();
        assert_eq!(row.map(|r| r.0), Some(payload(w, seq)), "acknowledged batch ({w}, {seq}) lost");
        assert_eq!(MARK.get(&*db, &(w, seq as i64)).unwrap(), Some(seq), "half of batch ({w}, {seq}) lost");
    }
    // Atomicity also holds for unacknowledged batches: never one row without the other.
    for row in ROWS.iter(&*db, myelin_storage::Direction::Forward).unwrap() {
        let ((w, seq), _) = row.unwrap();
        assert!(MARK.contains(&*db, &(w, seq as i64)).unwrap(), "torn batch ({w}, {seq})");
    }
    assert!(acked.len() >= 400);
}
