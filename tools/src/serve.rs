//! `myelin serve`: runs the homeserver until a stop signal.

use std::{path::PathBuf, sync::Arc, time::Duration};

use myelin_engine::Engine;
use tracing::Instrument;

use crate::{Failure, load_config, runtime};

pub(super) fn serve(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
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
        wait_for_stop_signal().await;
        trimmer.abort();
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

/// After a burst, once a check finds no new events since the previous one,
/// returns the memory the burst freed to the system (once per quiet period).
///
/// glibc keeps freed memory in its heaps for reuse, and with one heap per
/// busy thread a burst leaves hundreds of MB resident that nothing uses
/// (`BENCHMARKS.md`, "Memory"). Trimming walks the heaps and costs a few
/// milliseconds, and pages given back must be faulted in again, so it is not
/// done while events keep arriving.
async fn trim_when_quiet(engine: Arc<Engine>) {
    let mut last = engine.stream.current();
    let mut trimmed = true;
    let mut tick = tokio::time::interval(TRIM_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = engine.stream.current();
        if now != last {
            last = now;
            trimmed = false;
        } else if !trimmed {
            trimmed = true;
            let started = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
            tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "returned freed memory after a burst");
        }
    }
}

/// Returns the free pages of glibc's heaps (where RocksDB allocates) to the system.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only releases memory glibc holds as free.
    unsafe {
        libc::malloc_trim(0);
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
