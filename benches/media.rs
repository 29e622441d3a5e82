//! Media throughput against a plain file copy on the same disk (issue 6).
//!
//! - `upload`: `POST /_matrix/media/v3/upload` of a 64 MiB body over loopback
//!   HTTP into a real server (streamed to disk, hashed, fsynced, committed);
//! - `download`: `GET /_matrix/client/v1/media/download/…` of the same file;
//! - `copy`: `std::fs::copy` of a 64 MiB file plus `fsync`, in the same temp
//!   folder, the baseline a plain copy gets on this disk.
//!
//! Each is run 5 times; the table shows the median MB/s and the ratio to the copy.
//! Run: `cargo bench --bench media`.

use std::time::{Duration, Instant};

use http::Method;
use myelin_suite::{TestServer, http_with};

const SIZE: usize = 64 << 20;
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(d: Duration) -> f64 {
    SIZE as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let payload: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let (up, down) = rt.block_on(async {
        let s = TestServer::start_with("localhost", |c| {
            c.registration.enabled = true;
            c.media.max_upload_bytes = 1 << 30;
            c.rate_limit.per_second = 0.0;
        })
        .await;
        let alice = s.register("alice").await;
        let auth = format!("Bearer {}", alice.token);
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            // A different last byte each run, so every upload is a new file (no dedup shortcut).
            let mut body = payload.clone();
            body[SIZE - 1] = i as u8;
            let started = Instant::now();
            let r =
                http_with(s.client, Method::POST, "/_matrix/media/v3/upload", Some(&body), &[("authorization", &auth)])
                    .await;
            up.push(started.elapsed());
            let mxc = r.json()["content_uri"].as_str().unwrap().to_owned();
            let path = format!("/_matrix/client/v1/media/download/{}", mxc.strip_prefix("mxc://").unwrap());
            let started = Instant::now();
            let r = http_with(s.client, Method::GET, &path, None, &[("authorization", &auth)]).await;
            down.push(started.elapsed());
            assert_eq!(r.body.len(), SIZE);
        }
        s.stop().await;
        (median(up), median(down))
    });
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &payload).unwrap();
    let mut copies = Vec::new();
    for i in 0..RUNS {
        let dst = dir.path().join(format!("dst{i}.bin"));
        let started = Instant::now();
        std::fs::copy(&src, &dst).unwrap();
        std::fs::File::open(&dst).unwrap().sync_all().unwrap();
        copies.push(started.elapsed());
    }
    let copy = median(copies);
    println!("\n| operation (64 MiB, median of {RUNS}) | MB/s | ratio to plain copy |\n|---|---|---|");
    println!("| plain file copy + fsync | {:.0} | 1.00 |", mbps(copy));
    println!("| upload over HTTP | {:.0} | {:.2} |", mbps(up), mbps(up) / mbps(copy));
    println!("| download over HTTP | {:.0} | {:.2} |", mbps(down), mbps(down) / mbps(copy));
}
