//! The outbound federation queue's sender (Server-Server API §"Transactions").
//!
//! The queue is the `destseq_outbound` rows each event's append batch wrote.
//! One task per destination takes up to 50 queued PDUs, oldest first, sends
//! them as one transaction whose id is derived from the rows it carries (a
//! retry of the same rows reuses the id, so the receiver can deduplicate),
//! and deletes the rows only after a 200. On failure it waits with
//! exponential backoff and jitter (1 s doubling to 10 min) and tries again;
//! an inbound request from the destination does not yet shorten the wait.
//!
//! Guarantees: a row is removed only after the destination answered 200; the
//! queue survives restarts (it is in RocksDB), so a destination that was down
//! for hours gets every PDU it missed when it returns.
//!
//! Not yet: EDUs (typing, receipts) in transactions, persisted backoff,
//! per-destination metrics beyond the queue depth log line.

use std::{collections::HashMap, time::Duration};

use http::Method;
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

use crate::router::Ctx;

/// Runs the sender until `stop` fires.
pub async fn run(cx: Ctx, mut stop: watch::Receiver<bool>) {
    let mut wake = cx.engine.stream.subscribe();
    let mut tasks: HashMap<u64, JoinHandle<()>> = HashMap::new();
    loop {
        tasks.retain(|_, t| !t.is_finished());
        match cx.engine.rooms.outbound_destinations() {
            Ok(destinations) => {
                for (dest, name) in destinations {
                    if tasks.contains_key(&dest) {
                        continue;
                    }
                    let cx = cx.clone();
                    let task = tokio::spawn(tracing::Instrument::instrument(
                        deliver(cx, dest, name.clone()),
                        tracing::info_span!("federation_sender", destination = %name),
                    ));
                    tasks.insert(dest, task);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the federation queue failed"),
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => break,
        }
    }
    for (_, t) in tasks {
        t.abort();
    }
}

fn jitter(base: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base + Duration::from_millis(u64::from(nanos % 1000) * base.as_millis().min(1000) as u64 / 1000)
}

/// Delivers everything queued for one destination, then returns.
async fn deliver(cx: Ctx, dest: u64, name: String) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let batch = match cx.engine.rooms.outbound_pdus(dest, 50) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the queue failed");
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
        let txn_id = format!("m{}-{}-{}", seqs[0], seqs[seqs.len() - 1], seqs.len());
        let body = json!({
            "origin": cx.engine.server_name,
            "origin_server_ts": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            "pdus": batch.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
            "edus": [],
        });
        let path = format!("/_matrix/federation/v1/send/{txn_id}");
        match cx.federation.request(&cx.engine, &name, Method::PUT, &path, Some(&body), true).await {
            Ok(resp) if resp.status.is_success() => {
                if let Err(e) = cx.engine.rooms.outbound_delivered(dest, &seqs).await {
                    tracing::warn!(error = %e, "could not mark a transaction delivered; it will be sent again");
                    return;
                }
                metrics::counter!("myelin_federation_transactions_total", "result" => "ok").increment(1);
                backoff = Duration::from_secs(1);
            }
            Ok(resp) => {
                tracing::warn!(status = %resp.status, "destination refused a transaction; retrying later");
                metrics::counter!("myelin_federation_transactions_total", "result" => "refused").increment(1);
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(600));
            }
            Err(e) => {
                tracing::info!(error = %e, wait = ?backoff, "destination unreachable; retrying later");
                metrics::counter!("myelin_federation_transactions_total", "result" => "unreachable").increment(1);
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(600));
            }
        }
    }
}
