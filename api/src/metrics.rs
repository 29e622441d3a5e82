//! The process-wide Prometheus recorder.
//!
//! `metrics` has one global recorder per process; several servers in one test
//! process share it. Installed on first use.
//!
//! The recorder keeps every histogram sample (each commit, each request) in a
//! buffer until it is drained, which a `/metrics` scrape does, and so does the
//! recorder's upkeep; an appliance nobody scrapes would otherwise grow by every
//! sample it ever took. A named thread runs the upkeep (a thread, not a task:
//! the recorder may be installed before or outside a runtime).

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often buffered histogram samples are folded into their summaries.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The name of the thread that drains the recorder's buffers.
pub const UPKEEP_THREAD: &str = "metrics-upkeep";

/// Installs the recorder (once), starts its upkeep, and returns its handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => {
                let upkept = h.clone();
                let started = std::thread::Builder::new().name(UPKEEP_THREAD.into()).spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkept.run_upkeep();
                    }
                });
                if let Err(e) = started {
                    tracing::warn!(error = %e, "metrics upkeep not started; histograms grow until /metrics is read");
                }
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    /// Installing the recorder starts the thread that drains histogram samples.
    #[test]
    fn installing_the_recorder_starts_its_upkeep() {
        assert!(super::handle().is_some());
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        // A new thread names itself once it runs; the kernel keeps 15 bytes of the name.
        let named = |n: &String| super::UPKEEP_THREAD.starts_with(n.as_str()) && n.len() >= 14;
        for _ in 0..100 {
            if names().iter().any(named) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("no upkeep thread among {:?}", names());
    }
}
