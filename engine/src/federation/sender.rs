//! The outbound federation queue's sender (Server-Server API §"Transactions").
//!
//! The queue is the `destseq_outbound` rows each event's append batch wrote.
//! One task per destination takes up to 50 queued PDUs, oldest first, sends
//! them as one transaction whose id is derived from the rows it carries and a
//! per-run nonce (a retry of the same rows reuses the id, so the receiver can
//! deduplicate; ids never repeat across runs),
//! and deletes the rows only after a 200. On failure it waits with
//! exponential backoff and jitter (1 s doubling to 2 min: links here are
//! often LAN or site-to-site, where a quick return matters more than sparing
//! a peer a retry a minute) and tries again; an authenticated inbound request
//! from the destination ends the wait at once.
//!
//! Guarantees: a row is removed only after the destination answered 200; the
//! queue survives restarts (it is in RocksDB), so a destination that was down
//! for hours gets every PDU it missed when it returns.
//!
//! A transaction that follows one just delivered (the queue was emptied by it)
//! waits [`LINGER`] (1 ms) first, so a burst travels in fewer, fuller
//! transactions; a first event after a quiet spell is not delayed.
//!
//! EDUs ride along, up to 100 per transaction. Those a user must not lose —
//! to-device messages (`m.direct_to_device`) and device-list updates — are
//! rows of the same durable queue (`OutboundItem::Edu`), removed only after a
//! 200 like PDUs. Typing, receipts and presence come from an in-memory queue
//! per destination: volatile, they may be lost on restart, which the spec allows.
//!
//! Metrics per destination: `myelin_federation_queue_depth` and
//! `myelin_federation_queue_oldest_age_seconds` (gauges), and
//! `myelin_federation_transactions_total{destination,result}`.
//!
//! The backoff (next try, current step) is stored per destination, so a
//! restart waits out a failing destination's backoff instead of hammering it;
//! it is cleared by the next delivered transaction.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::Method;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::xmatrix;
use crate::{Engine, util::now_ms};

/// How long a transaction that follows a just-delivered one waits for more
/// events to carry. Each transaction costs both servers a request signature,
/// TLS, a durable write on the receiver and a wake-up of its clients'
/// `/sync`; in a burst from one sender that overhead, not the events, filled
/// the two cores. An event after a quiet spell is sent at once.
const LINGER: Duration = Duration::from_millis(1);

/// A random number drawn once per process run.
static RUN_NONCE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    u64::from_be_bytes(raw)
});

/// Runs the sender until `stop` fires.
///
/// One task per destination, kept for the life of the process and woken when
/// rows are queued for it (`Rooms::take_outbound_ready`, named only after
/// their write is visible) or volatile EDUs wait. Its wake-up is a `Notify`
/// permit, so rows queued while it is busy are taken right after, never left
/// for the next scan. A full scan of the queue runs at start-up (rows left by
/// an earlier run) and every 5 s as a safety net.
pub async fn run(engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let mut tasks: HashMap<String, (JoinHandle<()>, Arc<Notify>)> = HashMap::new();
    let mut scan = true;
    // An interval, not a sleep per turn: under steady traffic a sleep would never end.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let mut names = if scan {
            match engine.rooms.outbound_destinations() {
                Ok(d) => d.into_iter().map(|(_, name)| name).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the federation queue failed");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        scan = false;
        names.extend(engine.rooms.take_outbound_ready());
        names.extend(engine.federation.edu_destinations());
        for name in names {
            match tasks.get(&name) {
                Some((task, wake)) if !task.is_finished() => wake.notify_one(),
                _ => {
                    let wake = Arc::new(Notify::new());
                    let task = tokio::spawn(tracing::Instrument::instrument(
                        deliver(engine.clone(), name.clone(), wake.clone()),
                        tracing::info_span!("federation_sender", destination = %name),
                    ));
                    tasks.insert(name, (task, wake));
                }
            }
        }
        tokio::select! {
            _ = engine.rooms.outbound_ready() => {}
            _ = engine.federation.edu_ready.notified() => {}
            _ = tick.tick() => scan = true,
            _ = stop.changed() => break,
        }
    }
    for (_, (t, _)) in tasks {
        t.abort();
    }
}

/// A destination's task: delivers what is queued, then waits to be woken.
async fn deliver(engine: Arc<Engine>, name: String, wake: Arc<Notify>) {
    loop {
        deliver_queued(&engine, &name).await;
        wake.notified().await;
    }
}

fn jitter(base: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base + Duration::from_millis(u64::from(nanos % 1000) * base.as_millis().min(1000) as u64 / 1000)
}

/// The `origin_server_ts` of a stored PDU.
fn origin_server_ts(pdu: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Ts {
        origin_server_ts: u64,
    }
    serde_json::from_slice::<Ts>(pdu).ok().map(|t| t.origin_server_ts)
}

/// A transaction's body as canonical JSON, the form it is signed in: the PDUs'
/// stored canonical bytes are spliced in, not parsed and written again. An
/// EDU that has no canonical form (a float) is left out: it could never be signed.
fn transaction_body(origin: &str, now: u64, pdus: &[(u64, Vec<u8>)], edus: &[serde_json::Value]) -> Vec<u8> {
    let mut body = Vec::with_capacity(pdus.iter().map(|(_, p)| p.len() + 1).sum::<usize>() + 256);
    // Keys in canonical (sorted) order: edus, origin, origin_server_ts, pdus.
    body.extend_from_slice(b"{\"edus\":[");
    let mut first = true;
    for edu in edus {
        match xmatrix::canonical_body(edu) {
            Ok(bytes) => {
                if !std::mem::take(&mut first) {
                    body.push(b',');
                }
                body.extend_from_slice(&bytes);
            }
            Err(e) => tracing::warn!(error = %e, "dropping an EDU that cannot be signed"),
        }
    }
    body.extend_from_slice(b"],\"origin\":");
    xmatrix::push_json_string(&mut body, origin);
    body.extend_from_slice(format!(",\"origin_server_ts\":{now},\"pdus\":[").as_bytes());
    for (i, (_, pdu)) in pdus.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(pdu);
    }
    body.extend_from_slice(b"]}");
    body
}

/// Delivers everything queued for one destination, then returns.
async fn deliver_queued(engine: &Engine, name: &str) {
    let mut backoff = Duration::from_secs(1);
    let alive = engine.federation.alive_signal(name);
    let mut depth: Option<usize> = None;
    // Whether a backoff row is stored for this destination (to clear after a success).
    let mut backoff_stored = false;
    // A destination that was failing before a restart keeps its wait and step.
    if let Ok(Some(stored)) = engine.backoffs.get(name) {
        backoff_stored = true;
        backoff = Duration::from_millis(stored.step_ms.clamp(1_000, 120_000));
        let wait = Duration::from_millis(stored.retry_at_ms.saturating_sub(now_ms()));
        if !wait.is_zero() {
            tracing::info!(wait = ?wait, "destination was failing before; waiting out its backoff");
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(120))) => {}
                _ = alive.notified() => backoff = Duration::from_secs(1),
            }
        }
    }
    // Set after a delivered transaction that emptied the queue: the destination is in
    // a burst, so the next transaction waits LINGER for more events to join it.
    let mut linger = false;
    loop {
        if std::mem::take(&mut linger) {
            tokio::time::sleep(LINGER).await;
        }
        let dest = engine.rooms.server_short(name).ok().flatten();
        let queued = match dest.map(|d| engine.rooms.outbound_batch(d, 50, 100)).transpose() {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the queue failed");
                return;
            }
        };
        // Durable EDUs first (they are in the queue's order), then volatile ones up to 100.
        let volatile = engine.federation.take_edus(name, 100 - queued.edus.len());
        let volatile_count = volatile.len();
        let edus: Vec<serde_json::Value> = queued.edus.iter().map(|(_, e)| e.clone()).chain(volatile).collect();
        let batch = &queued.pdus;
        let now = now_ms();
        // Queue metrics per destination: depth exactly when it fits one transaction,
        // otherwise counted on failure and decremented by what is delivered.
        if batch.len() < 50 {
            depth = Some(batch.len());
        }
        let oldest_ms = batch.first().and_then(|(_, p)| origin_server_ts(p)).unwrap_or(now);
        metrics::gauge!("myelin_federation_queue_oldest_age_seconds", "destination" => name.to_owned())
            .set(now.saturating_sub(oldest_ms) as f64 / 1000.0);
        if let Some(d) = depth {
            metrics::gauge!("myelin_federation_queue_depth", "destination" => name.to_owned()).set(d as f64);
        }
        let seqs = queued.seqs();
        if seqs.is_empty() && edus.is_empty() {
            return;
        }
        // Derived from the rows carried, so a retry of the same rows reuses the id, and
        // from this run's nonce, so ids never repeat across restarts or a reset database
        // (a receiver drops a transaction id it has seen, PDUs and all).
        let nonce = *RUN_NONCE;
        let txn_id = match (seqs.first(), seqs.last()) {
            (Some(first), Some(last)) => format!("m{nonce:x}-{first}-{last}-{}-{}", seqs.len(), edus.len()),
            _ => format!("e{nonce:x}-{now}-{}", edus.len()),
        };
        let body = transaction_body(engine.server_name.as_str(), now, batch, &edus);
        let path = format!("/_matrix/federation/v1/send/{txn_id}");
        match engine.remote(name).canonical(Method::PUT, &path, body).await {
            Ok(resp) if resp.status.is_success() => {
                if let Some(d) = dest
                    && !seqs.is_empty()
                    && let Err(e) = engine.rooms.outbound_delivered(d, &queued).await
                {
                    tracing::warn!(error = %e, "could not mark a transaction delivered; it will be sent again");
                    return;
                }
                metrics::counter!("myelin_federation_transactions_total", "destination" => name.to_owned(), "result" => "ok")
                    .increment(1);
                depth = depth.map(|d| d.saturating_sub(batch.len()));
                linger = !batch.is_empty() && batch.len() < 50;
                if backoff_stored && engine.backoffs.clear(name).await.is_ok() {
                    backoff_stored = false;
                }
                backoff = Duration::from_secs(1);
            }
            failed => {
                match failed {
                    Ok(resp) => {
                        tracing::warn!(status = %resp.status, "destination refused a transaction; retrying later");
                        metrics::counter!("myelin_federation_transactions_total", "destination" => name.to_owned(), "result" => "refused")
                            .increment(1);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, wait = ?backoff, "destination unreachable; retrying later");
                        metrics::counter!("myelin_federation_transactions_total", "destination" => name.to_owned(), "result" => "unreachable")
                            .increment(1);
                    }
                }
                // Durable EDUs are still in the queue; only the volatile ones go back in memory.
                let skip = edus.len() - volatile_count;
                engine.federation.requeue_edus(name, edus[skip..].to_vec());
                if let Some(d) = dest
                    && let Ok(n) = engine.rooms.outbound_depth(d, 1_000_000)
                {
                    depth = Some(n);
                    metrics::gauge!("myelin_federation_queue_depth", "destination" => name.to_owned()).set(n as f64);
                }
                let wait = jitter(backoff);
                let stored = super::backoff::Backoff {
                    retry_at_ms: now_ms() + wait.as_millis() as u64,
                    step_ms: backoff.as_millis() as u64,
                };
                match engine.backoffs.set(name, stored).await {
                    Ok(()) => backoff_stored = true,
                    Err(e) => tracing::warn!(error = %e, "could not store the destination's backoff"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {
                        backoff = (backoff * 2).min(Duration::from_secs(120));
                    }
                    _ = alive.notified() => {
                        tracing::info!("destination reached us; retrying now");
                        backoff = Duration::from_secs(1);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The spliced body is exactly its own canonical form (what the receiver
    /// rebuilds to check the X-Matrix signature), and an unsignable EDU is left out.
    #[test]
    fn a_transaction_body_is_canonical_json() {
        let pdu = |body: &str| {
            let v = json!({ "type": "m.room.message", "content": { "body": body }, "origin_server_ts": 5 });
            xmatrix::canonical_body(&v).unwrap()
        };
        let pdus = vec![(1, pdu("plain")), (2, pdu("quote \" é \n \u{1}"))];
        let edus = vec![
            json!({ "edu_type": "m.typing", "content": { "user_id": "@a:x", "typing": true } }),
            json!({ "edu_type": "m.float", "content": { "x": 1.5 } }),
        ];
        let body = transaction_body("a.test", 42, &pdus, &edus);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(xmatrix::canonical_body(&parsed).unwrap(), body);
        assert_eq!(parsed["origin"], "a.test");
        assert_eq!(parsed["origin_server_ts"], 42);
        assert_eq!(parsed["pdus"][1]["content"]["body"], "quote \" é \n \u{1}");
        assert_eq!(parsed["edus"].as_array().unwrap().len(), 1, "the float EDU is dropped");
        assert_eq!(origin_server_ts(&pdus[0].1), Some(5));
        let empty = transaction_body("a.test", 1, &[], &[]);
        assert_eq!(empty, br#"{"edus":[],"origin":"a.test","origin_server_ts":1,"pdus":[]}"#);
    }
}
