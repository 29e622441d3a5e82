//! Group commit vs. a plain synced RocksDB write loop.
//!
//! Every measured write is a 1 KiB batch with a WAL sync (`sync = true`):
//! - `group_commit/N`: N concurrent writers committing through Myelin's
//!   group-commit writer thread (`Db::commit`), N ∈ {1, 8, 64};
//! - `plain_rocksdb/1`: one thread calling `DB::put_opt` with `sync = true`,
//!   the baseline a naive store would get.
//!
//! Run: `cargo bench --bench storage` (or `make bench-storage`). After the
//! criterion runs, a summary with batches/s and the ratio to the baseline is
//! printed, from criterion's own estimates of this run.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use myelin_storage::{Batch, Db, Raw, StorageOptions, Table, catalog};

const ROWS: Table<(u64, u64), Raw> = Table::new(&catalog::SHORTEVENTID_PDU);
const WRITERS: [u64; 3] = [1, 8, 64];

fn value() -> Raw {
    Raw(vec![0x5a; 1024])
}

fn group_commit(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("storage");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    for writers in WRITERS {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::default()).unwrap();
        let mut seq = 0u64;
        group.bench_function(format!("group_commit/{writers}"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers);
                let base = seq;
                seq += per * writers;
                let db: Arc<Db> = db.clone();
                rt.block_on(async move {
                    let started = Instant::now();
                    let mut tasks = Vec::new();
                    for w in 0..writers {
                        let db = db.clone();
                        tasks.push(tokio::spawn(async move {
                            for i in 0..per {
                                let mut batch = Batch::new();
                                ROWS.put(&mut batch, &(w, base + i), &value()).unwrap();
                                db.commit(batch).await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Report time per batch as if exactly `iters` were written.
                    started.elapsed().mul_f64(iters as f64 / (per * writers) as f64)
                })
            })
        });
        db.shutdown();
    }

    let dir = tempfile::tempdir().unwrap();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let plain = rocksdb::DB::open(&opts, dir.path()).unwrap();
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let payload = vec![0x5a; 1024];
    let mut key = 0u64;
    group.bench_function("plain_rocksdb/1", |b| {
        b.iter(|| {
            key += 1;
            plain.put_opt(key.to_be_bytes(), &payload, &sync).unwrap();
        })
    });
    group.finish();
}

fn mean_ns(id: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/storage/{id}/new/estimates.json");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut c = Criterion::default().configure_from_args();
    group_commit(&mut c, &rt);
    c.final_summary();

    let Some(base) = mean_ns("plain_rocksdb_1") else { return };
    println!("\nsummary (this run): 1 KiB synced batches per second");
    println!("| writers | group commit batches/s | plain RocksDB single writer batches/s | ratio |");
    println!("|---|---|---|---|");
    for writers in WRITERS {
        if let Some(ns) = mean_ns(&format!("group_commit_{writers}")) {
            println!("| {writers} | {:.0} | {:.0} | {:.2}x |", 1e9 / ns, 1e9 / base, base / ns);
        }
    }
}
