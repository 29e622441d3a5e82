//! `myelin serve`: runs the homeserver until a stop signal.

use std::{path::PathBuf, sync::Arc, time::Duration};

use myelin_engine::Engine;
use tracing::Instrument;

use crate::{Failure, load_config, runtime};

pub(super) fn serve(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path.clone())?;
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = tokio::task::spawn_blocking(move || Engine::open(config))
            .await
            .map_err(|e| Failure::runtime(format!("start-up task failed: {e}")))??;
        let running = match myelin_api::start(engine.clone()).await {
            Ok(r) => r,
            Err(e) => {
                engine.shutdown();
                return Err(Failure::runtime(e.to_string()));
            }
        };
        // Start-up (RocksDB opening its column families, writing its options, pre-sizing
        // the WAL) leaves freed memory in glibc's heaps that glibc keeps: give it back.
        tokio::task::spawn_blocking(|| {
            let _span = tracing::debug_span!("release_start_up_memory").entered();
            release_freed_memory();
        });
        let trimmer =
            tokio::spawn(trim_when_quiet(engine.clone()).instrument(tracing::info_span!("task", name = "memory-trim")));
        let reloader = tokio::spawn(
            reload_on_hangup(engine.clone(), config_path).instrument(tracing::info_span!("task", name = "reload")),
        );
        wait_for_stop_signal().await;
        trimmer.abort();
        reloader.abort();
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        // A second signal during the grace period means "now".
        tokio::spawn(async {
            wait_for_stop_signal().await;
            eprintln!("myelin: second stop signal; exiting without waiting");
            std::process::exit(1);
        });
        running.shutdown(myelin_api::SHUTDOWN_GRACE).await;
        Ok(())
    })
}

/// How often the trimmer looks for a quiet period.
const TRIM_CHECK: Duration = Duration::from_secs(5);

/// Checks in a row that must find no new events before memory is given back.
const QUIET_CHECKS: u32 = 2;

/// The share of each cache's capacity (per mille) kept through a quiet period:
/// its most recently used entries, which the next requests most likely want.
const KEEP_WHEN_QUIET: u32 = 100;

/// After a burst, once no new events arrived for `QUIET_CHECKS` checks, gives
/// the memory held for speed back to the system (once per quiet period):
/// memtables are flushed, the block cache and Myelin's caches shrink to a
/// tenth of their capacity, and the allocator returns its free pages.
///
/// Under load the caches fill to their budget, which is what a budget is for;
/// but an appliance idle for hours should not hold the peak of its last burst.
/// glibc keeps freed memory in its heaps for reuse (one heap per busy thread:
/// RocksDB allocates there), so trimming must follow. A quiet period costs the
/// next reads a few cache misses, so nothing is released while events arrive.
async fn trim_when_quiet(engine: Arc<Engine>) {
    let mut last = engine.stream.current();
    let mut quiet = 0u32;
    let mut tick = tokio::time::interval(TRIM_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = engine.stream.current();
        if now != last {
            last = now;
            quiet = 0;
            continue;
        }
        quiet = quiet.saturating_add(1);
        if quiet != QUIET_CHECKS {
            continue;
        }
        let started = std::time::Instant::now();
        let db = engine.db.clone();
        match tokio::task::spawn_blocking(move || {
            let released = db.release_memory(KEEP_WHEN_QUIET);
            release_freed_memory();
            released
        })
        .await
        {
            Ok(released) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                memtable_bytes = released.memtable_bytes,
                block_cache_bytes = released.block_cache_bytes,
                cache_bytes = released.cache_bytes,
                "quiet: gave back memory held for the last burst"
            ),
            Err(e) => tracing::warn!(error = %e, "releasing memory failed"),
        }
    }
}

/// Returns the free pages of glibc's heaps (where RocksDB allocates) to the system;
/// mimalloc, Myelin's own allocator, returns its free pages by itself.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only releases memory glibc holds as free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// On SIGHUP (`systemctl reload`), re-reads the configuration file (and the
/// environment) and applies what can change while serving: the
/// `federation.allow` and `federation.deny` lists. A file that no longer
/// loads is reported and changes nothing; other keys take a restart.
async fn reload_on_hangup(engine: Arc<Engine>, config_path: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be handled here: the configuration is never re-read");
            return;
        };
        while hangup.recv().await.is_some() {
            let path = config_path.clone();
            let loaded = tokio::task::spawn_blocking(move || myelin_engine::Config::load(path.as_deref())).await;
            match loaded {
                Ok(Ok(myelin_engine::config::Loaded { config, .. })) => {
                    let changed = engine.policy.set_configured(&config.federation);
                    tracing::info!(
                        changed,
                        allow = config.federation.allow.len(),
                        deny = config.federation.deny.len(),
                        "SIGHUP: configuration re-read; federation.allow and federation.deny applied \
                         (other keys take a restart)"
                    );
                }
                Ok(Err(e)) => tracing::warn!(error = %e.0, "SIGHUP: the configuration does not load; nothing changed"),
                Err(e) => tracing::warn!(error = %e, "SIGHUP: re-reading the configuration failed"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (engine, config_path);
    }
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
