//! The memory budget (`[storage] memory_mb`): half reaches RocksDB as its one
//! block cache, three tenths are Myelin's caches, each bounded in bytes by its
//! share; all of it visible in `/metrics`, as an operator reads it.

use http::Method;
use myelin_engine::cache_shares;
use myelin_suite::{TestServer, enc, http};
use serde_json::json;

/// The value of metric `name` (with `label`, e.g. `cache="events"`, or none) in a Prometheus text page.
fn metric(page: &str, name: &str, label: Option<&str>) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let matches = match label {
            Some(label) => key.starts_with(&format!("{name}{{")) && key.contains(label),
            None => key == name,
        };
        if matches { value.parse().ok() } else { None }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_is_split_between_rocksdb_and_caches_bounded_in_bytes() {
    const BUDGET_MB: usize = 20;
    let s = TestServer::start_with("memory.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
        c.storage.memory_mb = BUDGET_MB;
    })
    .await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    // About 4 kB per cached event (the 2 kB body raw and parsed), ~6 MB in all: more
    // than the events cache's share (35% of 3/10 of 20 MiB, about 2.1 MiB).
    let filler = "x".repeat(2000);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (alice, room, filler) = (alice.clone(), room.clone(), filler.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..375 {
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m{t}-{i}", enc(&room));
                alice.put(&path, json!({ "msgtype": "m.text", "body": format!("{t}/{i} {filler}") })).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Reading the newest page twice: the second read is answered from the cache.
    let page = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room));
    for _ in 0..2 {
        assert_eq!(alice.get(&page).await["chunk"].as_array().unwrap().len(), 50);
    }

    let r = http(s.client, Method::GET, "/metrics", None).await;
    let page = String::from_utf8_lossy(&r.body).to_string();
    let budget = (BUDGET_MB << 20) as f64;
    assert_eq!(
        metric(&page, "myelin_storage_block_cache_capacity_bytes", None),
        Some(budget / 2.0),
        "half is RocksDB's"
    );
    let caches_total = ((BUDGET_MB << 20) / 10 * 3) as f64;
    let mut sum = 0.0;
    for share in cache_shares::ALL {
        let label = format!("cache=\"{}\"", share.name);
        let capacity = metric(&page, "myelin_cache_capacity_bytes", Some(&label))
            .unwrap_or_else(|| panic!("no capacity for cache {}", share.name));
        assert_eq!(capacity, (caches_total * share.permille as f64 / 1000.0).floor(), "{}", share.name);
        let bytes = metric(&page, "myelin_cache_bytes", Some(&label)).unwrap_or(0.0);
        assert!(bytes <= capacity, "{}: {bytes} bytes over its {capacity}", share.name);
        sum += capacity;
    }
    assert!(sum <= caches_total, "the shares ({sum}) fit in three tenths of the budget ({caches_total})");

    let events = "cache=\"events\"";
    let capacity = metric(&page, "myelin_cache_capacity_bytes", Some(events)).unwrap();
    let bytes = metric(&page, "myelin_cache_bytes", Some(events)).unwrap();
    assert!(bytes > capacity * 0.8, "1,500 large events fill the events cache: {bytes} of {capacity}");
    assert!(metric(&page, "myelin_cache_evictions_total", Some(events)).unwrap_or(0.0) > 0.0, "{page}");
    assert!(metric(&page, "myelin_cache_hits_total", Some(events)).unwrap_or(0.0) > 0.0);
    let rss = metric(&page, "myelin_process_resident_bytes", None).expect("resident set reported");
    assert!(rss > 1e6, "{rss}");
    s.stop().await;
}
