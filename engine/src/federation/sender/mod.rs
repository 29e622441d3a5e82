//! The outbound federation queue's sender (Server-Server API §"Transactions").
//!
//! The queue is the `destseq_outbound` rows each event's append batch wrote.
//! One task per destination takes up to 50 queued PDUs, oldest first, sends
//! them as one transaction whose id is derived from the rows it carries and a
//! per-run nonce (a retry of the same rows reuses the id, so the receiver can
//! deduplicate; ids never repeat across runs),
//! and deletes the rows only after the destination settled them. On failure
//! it waits with exponential backoff and jitter (1 s doubling to 2 min: links
//! here are often LAN or site-to-site, where a quick return matters more than
//! sparing a peer a retry a minute) and sends the same transaction again
//! (same rows, same id); an authenticated inbound request from the
//! destination ends the wait at once.
//!
//! What an answer settles (Server-Server API §"Transactions"):
//! - a 200 is delivered, also when it reports errors for single PDUs (logged
//!   at debug, counted in `myelin_federation_pdu_errors_total`): the spec has
//!   the sender use that answer, and resending would not change it;
//! - a 4xx for the whole transaction other than 401, 403, 408 and 429 means
//!   the destination will not take it: it is sent [`MAX_REFUSALS`] times in
//!   all (short pauses, no stored backoff: the destination is reachable),
//!   then its rows are dropped with a warning and
//!   `myelin_federation_transactions_total{result="dropped"}`, and the queue
//!   moves on — one bad transaction never blocks the ones behind it;
//! - anything else (no answer, 5xx, 401, 403, 408, 429; see [`verdict`] for
//!   why 401 and 403 are here) is retried with backoff, a 429 no sooner than
//!   its `retry_after_ms`. A destination failing so for longer than
//!   `federation.park_after_s` is *parked*: its rows are kept, nothing is
//!   dropped, but it is not retried (new rows do not wake it) until it shows
//!   life ([`super::Outbound::mark_alive`]: any authenticated request from
//!   it), which resumes it at once with a fresh window, or until the next
//!   start-up, which tries it once. `myelin_federation_destination_parked`
//!   and [`super::queue_status`] (`myelin admin federation queue`) show it.
//!
//! Guarantees: a row is removed only after the destination answered 200, or
//! refused its transaction as a whole [`MAX_REFUSALS`] times; the queue
//! survives restarts (it is in RocksDB), so a destination that was down for
//! hours, or parked, gets every PDU it missed when it returns, as a row of its
//! own while the queue holds at most `federation.max_queue_per_destination`
//! rows; past that (checked on each failed try, and every
//! [`Timings::parked_check`] while parked) the queue is compacted to the
//! newest event per room, and the destination fetches the rest from us as a
//! gap when it returns (see `rooms::catch_up`).
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
//! Metrics per destination: `myelin_federation_queue_depth`,
//! `myelin_federation_queue_oldest_age_seconds` and
//! `myelin_federation_destination_parked` (gauges),
//! `myelin_federation_transactions_total{destination,result}` (`ok`,
//! `refused`, `unreachable`, `dropped`) and `myelin_federation_pdu_errors_total`,
//! for at most [`LABELLED_DESTINATIONS`](super::labels::LABELLED_DESTINATIONS) destinations (the rest: counters under
//! `destination="other"`, no gauges).
//!
//! The backoff (next try, current step, failing since, parked) is stored per
//! destination, so a restart waits out a failing destination's backoff
//! instead of hammering it and keeps counting towards parking; it is cleared
//! by the next transaction the destination answers.

mod transaction;

use super::backoff::jitter;
use std::{sync::Arc, time::Duration};

use http::Method;
use tokio::sync::{Notify, watch};

use super::labels::{counter_label, gauge_label};
use crate::{Engine, util::now_ms};
use transaction::{Built, build};

/// How long a transaction that follows a just-delivered one waits for more
/// events to carry. Each transaction costs both servers a request signature,
/// TLS, a durable write on the receiver and a wake-up of its clients'
/// `/sync`; in a burst from one sender that overhead, not the events, filled
/// the two cores. An event after a quiet spell is sent at once.
const LINGER: Duration = Duration::from_millis(1);

/// Runs the sender until `stop` fires.
///
/// One task per destination, kept for the life of the process and woken when
/// rows are queued for it (`Rooms::take_outbound_ready`, named only after
/// their write is visible) or volatile EDUs wait. Its wake-up is a `Notify`
/// permit, so rows queued while it is busy are taken right after, never left
/// for the next scan. A full scan of the queue runs at start-up (rows left by
/// an earlier run) and every 5 s as a safety net.
pub async fn run(engine: Arc<Engine>, stop: watch::Receiver<bool>) {
    crate::delivery::run(Destinations(engine), stop).await
}

/// The federation queue, a task per destination.
struct Destinations(Arc<Engine>);

impl crate::delivery::KeyedQueue for Destinations {
    const SPAN: &'static str = "federation_sender";

    fn scan(&self) -> Vec<String> {
        match self.0.rooms.outbound_destinations() {
            Ok(d) => d.into_iter().map(|(_, name)| name).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the federation queue failed");
                Vec::new()
            }
        }
    }

    fn take_ready(&self) -> Vec<String> {
        let mut names = self.0.rooms.take_outbound_ready();
        names.extend(self.0.federation.edu_destinations());
        names
    }

    async fn ready(&self) {
        tokio::select! {
            _ = self.0.rooms.outbound_ready() => {}
            _ = self.0.federation.edu_ready.notified() => {}
        }
    }

    fn deliver(&self, key: String, wake: Arc<Notify>) -> impl std::future::Future<Output = ()> + Send + 'static {
        deliver(self.0.clone(), key, wake)
    }
}

/// A destination's task: delivers what is queued, then waits to be woken.
///
/// A parked destination is not woken by new rows (nor by the 5 s scan): only
/// by a sign of life ([`super::Outbound::mark_alive`]), which starts a fresh
/// window of `park_after_s` retries.
async fn deliver(engine: Arc<Engine>, name: String, wake: Arc<Notify>) {
    loop {
        match deliver_queued(&engine, &name).await {
            Stopped::Drained | Stopped::Failed => wake.notified().await,
            Stopped::Parked => {
                let alive = engine.federation.alive_signal(&name);
                let every = engine.federation.sender_timings().parked_check;
                // Parked, its queue still grows with the rooms it shares with us.
                loop {
                    tokio::select! {
                        _ = alive.notified() => break,
                        _ = tokio::time::sleep(every) => {
                            let cap = engine.config.federation.max_queue_per_destination;
                            if let Ok(Some(dest)) = engine.rooms.server_short(&name)
                                && let Ok(n) = engine.rooms.outbound_depth(dest, cap.saturating_add(1))
                            {
                                bound_queue(&engine, &name, dest, n).await;
                            }
                        }
                    }
                }
                tracing::info!("parked destination reached us; resuming");
                let now = now_ms();
                let fresh =
                    super::backoff::Backoff { retry_at_ms: now, step_ms: 0, failing_since_ms: now, parked: false };
                if let Err(e) = engine.backoffs.set(&name, fresh).await {
                    tracing::warn!(error = %e, "could not store that the destination is no longer parked");
                }
                set_parked_gauge(&name, false);
            }
        }
    }
}

/// The `origin_server_ts` of a stored PDU.
pub(super) fn origin_server_ts(pdu: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Ts {
        origin_server_ts: u64,
    }
    serde_json::from_slice::<Ts>(pdu).ok().map(|t| t.origin_server_ts)
}

/// How quickly the sender retries a failing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// The first wait after a failure; doubled on each further failure.
    pub first_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// How often a parked destination's queue is measured against
    /// `federation.max_queue_per_destination` (nothing else wakes it).
    pub parked_check: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(120),
            parked_check: Duration::from_secs(60),
        }
    }
}

/// How often a transaction the destination refuses as a whole (a 4xx other
/// than 401, 403, 408 and 429) is sent before its rows are dropped.
pub const MAX_REFUSALS: u32 = 5;

/// What a destination's answer to a transaction means for its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// 2xx: delivered, whatever the per-PDU results say.
    Delivered,
    /// The destination answered and will not take this transaction: sent
    /// again up to [`MAX_REFUSALS`] times, then dropped.
    Refused,
    /// Try again later, with backoff, for as long as `park_after_s` allows.
    Transient,
}

/// Sorts a whole-transaction answer.
///
/// 401 and 403 are transient here although they are 4xx: a 401 is the
/// destination failing to check our request signature, nearly always because
/// it cannot fetch our keys yet (a key server it cannot reach, a key just
/// rotated); a 403 is its server ACL or deny list, which its operator can
/// change. Neither says anything about these events, and dropping them would
/// lose them for good while it is the destination that must change; a
/// destination that keeps answering so is parked after `park_after_s`
/// instead. 408 (timeout) and 429 (rate limit) are transient by definition.
fn verdict(status: http::StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        401 | 403 | 408 | 429 => Verdict::Transient,
        400..=499 => Verdict::Refused,
        _ => Verdict::Transient,
    }
}

/// How [`deliver_queued`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Everything queued was delivered (or dropped after refusals).
    Drained,
    /// Unreachable for longer than `park_after_s`: parked.
    Parked,
    /// The queue could not be read or updated; the next wake tries again.
    Failed,
}

/// The per-PDU errors of a 200 answer: logged at debug and counted, nothing else
/// (the spec: the sender uses this response even when PDUs failed).
fn note_pdu_errors(name: &str, answer: &serde_json::Value) {
    let Some(results) = answer.get("pdus").and_then(serde_json::Value::as_object) else { return };
    let mut errors = 0u64;
    for (event_id, result) in results {
        if let Some(error) = result.get("error") {
            errors += 1;
            tracing::debug!(%event_id, %error, "destination did not take a PDU");
        }
    }
    if errors > 0 {
        metrics::counter!("myelin_federation_pdu_errors_total", "destination" => counter_label(name)).increment(errors);
    }
}

fn set_parked_gauge(name: &str, parked: bool) {
    let Some(label) = gauge_label(name) else { return };
    metrics::gauge!("myelin_federation_destination_parked", "destination" => label).set(f64::from(u8::from(parked)));
}

/// The age of the oldest queued PDU, as far as `queued` (the head of the queue) shows it.
fn set_oldest_gauge(name: &str, queued: &crate::rooms::tables::OutboundBatch) {
    let now = now_ms();
    let oldest_ms = queued.pdus.first().and_then(|(_, p)| origin_server_ts(p)).unwrap_or(now);
    let Some(label) = gauge_label(name) else { return };
    metrics::gauge!("myelin_federation_queue_oldest_age_seconds", "destination" => label)
        .set(now.saturating_sub(oldest_ms) as f64 / 1000.0);
}

/// A 429's `retry_after_ms`, when it gives one.
fn retry_after(answer: &serde_json::Value) -> Option<Duration> {
    answer.get("retry_after_ms").and_then(serde_json::Value::as_u64).map(Duration::from_millis)
}

/// Delivers everything queued for one destination, then returns.
async fn deliver_queued(engine: &Engine, name: &str) -> Stopped {
    let timings = engine.federation.sender_timings();
    let mut backoff = timings.first_backoff;
    let alive = engine.federation.alive_signal(name);
    let park_after_ms = engine.config.federation.park_after_s.saturating_mul(1000);
    let mut depth: Option<usize> = None;
    // Whether a backoff row is stored for this destination (to clear after a success).
    let mut backoff_stored = false;
    // The first failure of the current run of failures (0: not failing).
    let mut failing_since = 0u64;
    // A destination that was failing before a restart keeps its wait and step;
    // a parked one is tried once at once (and parked again if that fails).
    if let Ok(Some(stored)) = engine.backoffs.get(name) {
        backoff_stored = true;
        backoff = Duration::from_millis(stored.step_ms)
            .clamp(timings.first_backoff, timings.max_backoff.max(timings.first_backoff));
        failing_since = if stored.failing_since_ms == 0 { now_ms() } else { stored.failing_since_ms };
        let wait = Duration::from_millis(stored.retry_at_ms.saturating_sub(now_ms()));
        set_parked_gauge(name, stored.parked);
        if stored.parked {
            tracing::info!("destination was parked; trying it once");
        } else if !wait.is_zero() {
            tracing::info!(wait = ?wait, "destination was failing before; waiting out its backoff");
            tokio::select! {
                _ = tokio::time::sleep(wait.min(timings.max_backoff)) => {}
                _ = alive.notified() => backoff = timings.first_backoff,
            }
        }
    }
    // Set after a delivered transaction that emptied the queue: the destination is in
    // a burst, so the next transaction waits LINGER for more events to join it.
    let mut linger = false;
    let mut held: Option<Built> = None;
    loop {
        if std::mem::take(&mut linger) {
            tokio::time::sleep(LINGER).await;
        }
        let dest = engine.rooms.server_short(name).ok().flatten();
        let mut txn = match held.take() {
            Some(t) => t,
            None => match build(engine, name, dest, &mut depth) {
                Ok(Some(t)) => t,
                Ok(None) => return Stopped::Drained,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the queue failed");
                    return Stopped::Failed;
                }
            },
        };
        let path = format!("/_matrix/federation/v1/send/{}", txn.txn_id);
        let answer = engine.remote(name).canonical(Method::PUT, &path, txn.body.clone()).await;
        let verdict = match &answer {
            Ok(resp) => verdict(resp.status),
            Err(_) => Verdict::Transient,
        };
        let count = |result: &'static str| {
            metrics::counter!("myelin_federation_transactions_total", "destination" => counter_label(name), "result" => result)
                .increment(1);
        };
        match verdict {
            Verdict::Delivered | Verdict::Refused
                if verdict == Verdict::Delivered || txn.refusals + 1 >= MAX_REFUSALS =>
            {
                if verdict == Verdict::Delivered {
                    if let Ok(resp) = &answer {
                        note_pdu_errors(name, &resp.json);
                    }
                    count("ok");
                } else {
                    let status = answer.as_ref().map(|r| r.status.as_u16()).unwrap_or(0);
                    tracing::warn!(status, txn_id = %txn.txn_id, pdus = txn.queued.pdus.len(), edus = txn.edus,
                        "destination refused a transaction {MAX_REFUSALS} times; dropping it (those events and EDUs will not reach it)");
                    count("dropped");
                }
                let seqs = txn.queued.seqs();
                if let Some(d) = dest
                    && !seqs.is_empty()
                    && let Err(e) = engine.rooms.outbound_delivered(d, &txn.queued).await
                {
                    tracing::warn!(error = %e, "could not remove a settled transaction's rows; it will be sent again");
                    return Stopped::Failed;
                }
                depth = depth.map(|d| d.saturating_sub(txn.queued.pdus.len()));
                linger = verdict == Verdict::Delivered && !txn.queued.pdus.is_empty() && txn.queued.pdus.len() < 50;
                // It answered: whatever it thought of the transaction, it is reachable.
                if failing_since != 0 {
                    set_parked_gauge(name, false);
                }
                failing_since = 0;
                if backoff_stored && engine.backoffs.clear(name).await.is_ok() {
                    backoff_stored = false;
                }
                backoff = timings.first_backoff;
            }
            Verdict::Refused => {
                txn.refusals += 1;
                let status = answer.as_ref().map(|r| r.status.as_u16()).unwrap_or(0);
                tracing::info!(
                    status,
                    refusals = txn.refusals,
                    "destination refused a transaction; sending it again later"
                );
                count("refused");
                held = Some(txn);
                // It is reachable, so no stored backoff and no parking: only a pause.
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = alive.notified() => {}
                }
                backoff = (backoff * 2).min(timings.max_backoff);
            }
            _ => {
                match &answer {
                    Ok(resp) => {
                        tracing::info!(status = %resp.status, wait = ?backoff, "destination could not take a transaction; retrying later");
                        count("refused");
                    }
                    Err(e) => {
                        tracing::info!(error = %e, wait = ?backoff, "destination unreachable; retrying later");
                        count("unreachable");
                    }
                }
                set_oldest_gauge(name, &txn.queued);
                let now = now_ms();
                if failing_since == 0 {
                    failing_since = now;
                    set_parked_gauge(name, false);
                }
                if let Some(d) = dest
                    && let Ok(n) = engine.rooms.outbound_depth(d, 1_000_000)
                {
                    let n = bound_queue(engine, name, d, n).await;
                    depth = Some(n);
                    if let Some(label) = gauge_label(name) {
                        metrics::gauge!("myelin_federation_queue_depth", "destination" => label).set(n as f64);
                    }
                }
                let mut wait = jitter(backoff);
                if let Ok(resp) = &answer
                    && resp.status == http::StatusCode::TOO_MANY_REQUESTS
                    && let Some(asked) = retry_after(&resp.json)
                {
                    wait = wait.max(asked.min(timings.max_backoff));
                }
                let parked = park_after_ms > 0 && now.saturating_sub(failing_since) >= park_after_ms;
                let stored = super::backoff::Backoff {
                    retry_at_ms: now + wait.as_millis() as u64,
                    step_ms: backoff.as_millis() as u64,
                    failing_since_ms: failing_since,
                    parked,
                };
                match engine.backoffs.set(name, stored).await {
                    Ok(()) => backoff_stored = true,
                    Err(e) => tracing::warn!(error = %e, "could not store the destination's backoff"),
                }
                if parked {
                    // Its volatile EDUs (typing, receipts, presence) are stale by the time it returns.
                    tracing::warn!(
                        unreachable_for_s = now.saturating_sub(failing_since) / 1000,
                        queued = depth.unwrap_or(0),
                        "destination unreachable for longer than federation.park_after_s; parked: \
                         its queue is kept but not retried until it reaches us or the server restarts"
                    );
                    set_parked_gauge(name, true);
                    // A sign of life from before this last failure does not end the parking.
                    let _ = futures_util::FutureExt::now_or_never(alive.notified());
                    return Stopped::Parked;
                }
                held = Some(txn);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {
                        backoff = (backoff * 2).min(timings.max_backoff);
                    }
                    _ = alive.notified() => {
                        tracing::info!("destination reached us; retrying now");
                        backoff = timings.first_backoff;
                    }
                }
            }
        }
    }
}

/// Compacts the queue of a destination that is away once it holds more than
/// `federation.max_queue_per_destination` rows (`depth`), keeping the newest
/// event per room ([`crate::rooms::Rooms::outbound_compact`]); the depth after.
async fn bound_queue(engine: &Engine, name: &str, dest: u64, depth: usize) -> usize {
    let cap = engine.config.federation.max_queue_per_destination;
    if cap == 0 || depth <= cap {
        return depth;
    }
    match engine.rooms.outbound_compact(dest).await {
        Ok(done) => {
            tracing::warn!(
                queued = depth,
                kept = done.kept,
                pdus_dropped = done.pdus,
                edus_dropped = done.edus,
                "destination's queue passed federation.max_queue_per_destination; kept the newest event \
                 per room, which it will fill the gaps behind from us when it returns"
            );
            if let Some(label) = gauge_label(name) {
                metrics::gauge!("myelin_federation_queue_depth", "destination" => label).set(done.kept as f64);
            }
            done.kept
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not compact the destination's queue");
            depth
        }
    }
}
