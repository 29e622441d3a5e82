//! Operator endpoints: Prometheus metrics and a liveness check.

use http::StatusCode;

use crate::{
    http_util::text_response,
    router::{Ctx, HandlerFuture, Req},
};

/// GET /metrics: Prometheus text exposition. The storage memory gauges are
/// read from RocksDB at each scrape: `myelin_storage_block_cache_bytes`
/// (usage of the one shared cache, memtable charges included),
/// `myelin_storage_block_cache_capacity_bytes` and `myelin_storage_memtable_bytes`;
/// those of Myelin's own caches from their counts (`myelin_cache_bytes`,
/// `_capacity_bytes`, `_entries`, `_hits_total`, `_misses_total`,
/// `_evictions_total`, each labelled `cache`); and the process's resident set
/// from `/proc/self/status` (`myelin_process_resident_bytes`).
pub fn metrics(cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move {
        let db = cx.engine.db.clone();
        let (usage, capacity, memtables) = tokio::task::spawn_blocking(move || {
            let global = &myelin_storage::catalog::GLOBAL;
            (
                db.property(global, "rocksdb.block-cache-usage").unwrap_or(0),
                db.property(global, "rocksdb.block-cache-capacity").unwrap_or(0),
                db.memtable_bytes(),
            )
        })
        .await
        .unwrap_or((0, 0, 0));
        metrics::gauge!("myelin_storage_block_cache_bytes").set(usage as f64);
        metrics::gauge!("myelin_storage_block_cache_capacity_bytes").set(capacity as f64);
        metrics::gauge!("myelin_storage_memtable_bytes").set(memtables as f64);
        for c in cx.engine.db.caches().stats() {
            metrics::gauge!("myelin_cache_bytes", "cache" => c.name).set(c.bytes() as f64);
            metrics::gauge!("myelin_cache_capacity_bytes", "cache" => c.name).set(c.capacity as f64);
            metrics::gauge!("myelin_cache_entries", "cache" => c.name).set(c.entries() as f64);
            metrics::counter!("myelin_cache_hits_total", "cache" => c.name).absolute(c.hits());
            metrics::counter!("myelin_cache_misses_total", "cache" => c.name).absolute(c.misses());
            metrics::counter!("myelin_cache_evictions_total", "cache" => c.name).absolute(c.evictions());
        }
        if let Some(rss) = resident_bytes() {
            metrics::gauge!("myelin_process_resident_bytes").set(rss as f64);
        }
        let sliding = &cx.engine.sliding.connections;
        metrics::gauge!("myelin_sliding_sync_connections").set(sliding.len() as f64);
        metrics::gauge!("myelin_sliding_sync_rooms_remembered").set(sliding.rooms_remembered() as f64);
        let body = crate::metrics::handle().map(|h| h.render()).unwrap_or_default();
        Ok(text_response(StatusCode::OK, "text/plain; version=0.0.4", body))
    })
}

/// The process's resident set in bytes (Linux only: `VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// GET /health
pub fn health(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(text_response(StatusCode::OK, "text/plain", "OK")) })
}
