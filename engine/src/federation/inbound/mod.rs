//! Inbound transactions (Server-Server API §"Transactions":
//! `PUT /_matrix/federation/v1/send/{txnId}`), and the gaps they open.
//!
//! Each PDU goes through the receipt checks in the spec's order: the
//! origin passes the room's server ACL; format, signatures and hashes
//! ([`super::pdu_check`]); unknown prev events are fetched with
//! `get_missing_events` in rounds, walking back from the unknown edge (at
//! most `federation.max_gap_events`); authorization against the state
//! before the event and soft-failure against the current state are the
//! rooms engine's (`Rooms::append_pdu_unsettled`). A gap that
//! `get_missing_events` cannot close (too large, or a peer that refuses) is
//! bridged as the spec's fallback says: the missing prev events are fetched
//! with the state before them (`/state_ids`, then `/event` for each event
//! not held here) and stored as outliers carrying that state; the new event
//! is then appended on them. Events inside the gap stay out of the
//! timeline (a history hole `/messages` backfill may fill).
//!
//! Guarantees: a transaction is answered only once every accepted event in
//! it is durable; a transaction id already processed (also before a
//! restart) is answered with the first answer's bytes without applying
//! anything again, and concurrent copies are processed once. Limits: at most [`MAX_PDUS`] PDUs and
//! [`MAX_EDUS`] EDUs per transaction (more is refused, as Synapse does).
//!
//! A transaction answers within `federation.gap_fill_wait_ms` of gap
//! filling, however large its gaps or slow its origin: each gap is filled
//! by a background task ([`GapFills`], one per origin and room, at most
//! [`MAX_GAP_FILLS_PER_ORIGIN`] per origin and [`MAX_GAP_FILLS`] in all),
//! and the transaction waits for it until that deadline. An event whose gap
//! is still being filled then is kept pending (stored, see
//! [`super::auth_fetch`]) and answered with an error saying so; it is admitted
//! as soon as the fill ends (the fill wakes [`run_pending_retries`]). A copy of
//! the event arriving meanwhile joins the running fill: no work is done twice.
//! Missing auth events are fetched within the same deadline; an event whose
//! fetch is still running then is kept pending too, and the auth events
//! already fetched stay stored for its retry.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::StreamExt;
use http::Method;
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use super::{FederationError, enc, pdu_check::checked_pdu, serve::acl_allows};
use crate::{
    Engine,
    rooms::{Appended, Pdu},
};

/// Most PDUs a transaction may carry (Server-Server API: "up to 50").
pub const MAX_PDUS: usize = 50;
/// Most EDUs a transaction may carry ("up to 100").
pub const MAX_EDUS: usize = 100;
/// Most prev events taken on a remote's state for one incoming event.
const MAX_STATE_FALLBACKS: usize = 10;
/// Most gap fills running at once for one origin.
pub const MAX_GAP_FILLS_PER_ORIGIN: usize = 8;
/// Most gap fills running at once in all.
pub const MAX_GAP_FILLS: usize = 64;

/// Gap fills running in the background, one per (origin, room).
#[derive(Default)]
pub struct GapFills {
    /// Each running fill's "done" signal.
    running: parking_lot::Mutex<HashMap<(String, OwnedRoomId), tokio::sync::watch::Receiver<bool>>>,
    /// Woken when a fill ends, so the events waiting for it are retried at once.
    ended: tokio::sync::Notify,
}

impl GapFills {
    /// How many fills are running.
    pub fn len(&self) -> usize {
        self.running.lock().len()
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `pdu` opens a gap: a prev event not held here, or held without the
/// state after it (an outlier).
fn opens_gap(engine: &Engine, pdu: &Pdu) -> bool {
    pdu.prev_events.iter().any(|p| engine.rooms.meta(p).ok().flatten().is_none_or(|m| m.state_after == 0))
}

/// Fills the gap `pdu` opens in a background task (or joins the one running
/// for its origin and room), waiting for it until `deadline`; an event
/// `retried` from the pending set does not wait for a fill it did not start
/// (it waited once already; its origin's next transaction should not).
/// `Err` says why the event must wait instead.
async fn fill_gap_until(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    pdu: &Pdu,
    deadline: tokio::time::Instant,
    retried: bool,
) -> Result<(), String> {
    let key = (origin.to_owned(), room.to_owned());
    let mut done = {
        let mut running = engine.gap_fills.running.lock();
        if let Some(done) = running.get(&key) {
            if retried {
                return Err("its missing prev events are still being fetched; kept pending".into());
            }
            done.clone()
        } else {
            let of_origin = running.keys().filter(|(o, _)| o == origin).count();
            if of_origin >= MAX_GAP_FILLS_PER_ORIGIN || running.len() >= MAX_GAP_FILLS {
                metrics::counter!("myelin_federation_gap_fills_deferred_total").increment(1);
                return Err("too many gaps are being filled; kept pending".into());
            }
            let Some(arc) = engine.arc() else {
                return Err("the server is stopping; kept pending".into());
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            running.insert(key.clone(), rx.clone());
            metrics::gauge!("myelin_federation_gap_fills").set(running.len() as f64);
            let (origin, room, version, pdu) = (key.0.clone(), key.1.clone(), version.clone(), pdu.clone());
            let span = tracing::info_span!("gap_fill", %origin, room_id = %room);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let started = std::time::Instant::now();
                    if let Err(e) = fill_gap(&arc, &origin, &room, &version, &pdu).await {
                        tracing::info!(error = %e, "filling a gap failed");
                    }
                    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "gap fill ended");
                    let mut running = arc.gap_fills.running.lock();
                    running.remove(&(origin, room));
                    metrics::gauge!("myelin_federation_gap_fills").set(running.len() as f64);
                    drop(running);
                    let _ = tx.send(true);
                    arc.gap_fills.ended.notify_one();
                },
                span,
            ));
            rx
        }
    };
    match tokio::time::timeout_at(deadline, done.wait_for(|ended| *ended)).await {
        Ok(_) => Ok(()),
        Err(_) => {
            metrics::counter!("myelin_federation_gap_fills_deferred_total").increment(1);
            Err("its missing prev events are still being fetched; kept pending".into())
        }
    }
}

/// The body of `PUT /send/{txnId}` (read with [`Transaction::from_body`]).
#[derive(Debug, Default)]
pub struct Transaction {
    /// PDUs, each checked on its own.
    pub pdus: Vec<JsonValue>,
    /// EDUs, applied after the PDUs.
    pub edus: Vec<JsonValue>,
}

impl Transaction {
    /// Reads a transaction body in one pass, taking `pdus` and `edus` out of
    /// the parsed object without copying them (the hot inbound path).
    pub fn from_body(body: &[u8]) -> Result<Self, FederationError> {
        let mut object: serde_json::Map<String, JsonValue> = serde_json::from_slice(body)
            .map_err(|e| FederationError::BadRequest(format!("not a transaction object: {e}")))?;
        let mut list = |name: &str| match object.remove(name) {
            None | Some(JsonValue::Null) => Ok(Vec::new()),
            Some(JsonValue::Array(items)) => Ok(items),
            Some(_) => Err(FederationError::BadRequest(format!("`{name}` must be an array"))),
        };
        Ok(Self { pdus: list("pdus")?, edus: list("edus")? })
    }
}

/// What became of one PDU: `{}` when it was taken, `{"error": …}` otherwise.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PduResult {
    /// Why the PDU was not taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PduResult {
    fn ok() -> Self {
        Self { error: None }
    }

    fn error(reason: impl Into<String>) -> Self {
        Self { error: Some(reason.into()) }
    }
}

/// The answer to a transaction: a result per PDU event id.
#[derive(Debug, Default, Serialize)]
pub struct TransactionResult {
    /// Per PDU.
    pub pdus: BTreeMap<String, PduResult>,
}

/// Processes one transaction from `origin` (already authenticated) and
/// returns the answer's JSON bytes.
///
/// A transaction id `origin` used before gets the first answer's bytes
/// without anything of the replay being applied; a copy arriving while the
/// first is processed waits for it (see [`super::txns`]).
pub async fn receive_transaction(
    engine: &Engine,
    origin: &str,
    txn_id: &str,
    txn: Transaction,
) -> Result<Vec<u8>, FederationError> {
    if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
        return Err(FederationError::BadRequest(format!(
            "a transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let claim = match engine.seen_txns.claim(origin, txn_id).await? {
        super::txns::Turn::Answered(body) => return Ok(body),
        super::txns::Turn::Mine(claim) => claim,
    };
    let results = process_transaction(engine, origin, txn).await?;
    let body = serde_json::to_vec(&results)
        .map_err(|e| FederationError::BadRequest(format!("cannot encode the answer: {e}")))?;
    claim.answer(&body).await?;
    Ok(body)
}

/// How often PDUs waiting for their auth events are retried when their
/// origin sends nothing (a quiet origin's would otherwise wait for its next
/// transaction).
pub const PENDING_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Retries, every `every` and whenever a gap fill ends, until `stop`, the due
/// pending PDUs of each origin that has some, as if the origin had sent an
/// empty transaction.
pub async fn run_pending_retries(
    engine: std::sync::Arc<Engine>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = engine.gap_fills.ended.notified() => {}
            _ = stop.changed() => return,
        }
        for (origin, waiting) in engine.pending_pdus.per_origin() {
            tracing::debug!(%origin, waiting, "retrying events that wait for their auth events");
            let quiet = Transaction { pdus: Vec::new(), edus: Vec::new() };
            if let Err(e) = process_transaction(&engine, &origin, quiet).await {
                tracing::warn!(%origin, error = %e, "retrying pending events failed");
            }
        }
    }
}

/// What a transaction's accepted events leave to do once all are appended.
#[derive(Default)]
struct Unsettled {
    /// Appends not yet durable, made so together before the answer.
    pending: Vec<(OwnedRoomId, myelin_storage::Pending)>,
    /// Rooms whose `m.room.guest_access` changed: this server's guests may have to leave.
    guest_access: Vec<OwnedRoomId>,
    /// Until when this transaction waits for the gaps its events open.
    gap_deadline: Option<tokio::time::Instant>,
}

/// Applies a transaction's PDUs, then its EDUs.
async fn process_transaction(
    engine: &Engine,
    origin: &str,
    txn: Transaction,
) -> Result<TransactionResult, FederationError> {
    let mut results = TransactionResult::default();
    // Accepted events are appended one after another without waiting for each
    // one's commit; all of them are made durable together before the answer.
    let mut unsettled = Unsettled {
        gap_deadline: Some(
            tokio::time::Instant::now() + std::time::Duration::from_millis(engine.config.federation.gap_fill_wait_ms),
        ),
        ..Unsettled::default()
    };
    let mut budget = super::auth_fetch::MAX_FETCH_PER_TXN;
    // PDUs of earlier transactions that waited for their auth events: tried again
    // first (their answers went with their own transactions).
    for waiting in engine.pending_pdus.take_due(origin) {
        let room = waiting.pdu.room_id.clone();
        let id = waiting.pdu.event_id.clone();
        let outcome = admit(
            engine,
            origin,
            &room,
            &waiting.version,
            waiting.pdu,
            waiting.attempts,
            true,
            &mut unsettled,
            &mut budget,
        )
        .await;
        tracing::debug!(%origin, event_id = %id, ?outcome, "retried an event that waited for its auth events");
        engine.pending_pdus.settle(origin, &id).await;
    }
    for json in &txn.pdus {
        let (id, outcome) = receive_pdu(engine, origin, json, &mut unsettled, &mut budget).await;
        if let Some(id) = id {
            results.pdus.insert(id, outcome);
        }
    }
    // Each accepted event told the writer another would follow; none will now.
    if !unsettled.pending.is_empty() {
        engine.rooms.release_held()?;
    }
    for (room, pending) in unsettled.pending {
        engine.rooms.settle(&room, pending).await?;
    }
    for room in unsettled.guest_access {
        if let Err(e) = engine.enforce_guest_access(&room).await {
            tracing::warn!(%origin, room_id = %room, error = %e, "could not apply a change of guest access");
        }
    }
    for edu in &txn.edus {
        super::edu::receive_edu(engine, origin, edu).await;
    }
    Ok(results)
}

async fn receive_pdu(
    engine: &Engine,
    origin: &str,
    json: &JsonValue,
    unsettled: &mut Unsettled,
    budget: &mut usize,
) -> (Option<String>, PduResult) {
    let Some(room) = json.get("room_id").and_then(JsonValue::as_str).and_then(|r| RoomId::parse(r).ok()) else {
        return (None, PduResult::ok());
    };
    let Ok(room_version) = engine.rooms.room_version(&room) else {
        return (None, PduResult::ok()); // not a room we are in: ignore
    };
    if !acl_allows(engine, &room, origin) {
        let id = json.get("event_id").and_then(JsonValue::as_str).map(str::to_owned);
        return (id, PduResult::error(format!("{origin} is denied by the room's server ACL")));
    }
    let pdu = match checked_pdu(engine, json, &room_version).await {
        Ok(p) => p,
        Err(e) => return (None, PduResult::error(e.to_string())),
    };
    let id = pdu.event_id.to_string();
    (Some(id), admit(engine, origin, &room, &room_version, pdu, 0, false, unsettled, budget).await)
}

/// Receipt checks 4–6 for a PDU that passed 1–3: its gap filled, its missing
/// auth events fetched ([`super::auth_fetch`]), then the rooms engine's
/// authorization. A PDU whose auth events cannot be had yet is kept pending
/// (tried `attempts` times before), not rejected; so is one whose gap is
/// still being filled at the transaction's deadline. `retried`: taken from
/// the pending set.
#[allow(clippy::too_many_arguments)]
async fn admit(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    room_version: &RoomVersionId,
    pdu: Pdu,
    attempts: u32,
    retried: bool,
    unsettled: &mut Unsettled,
    budget: &mut usize,
) -> PduResult {
    match engine.rooms.meta(&pdu.event_id) {
        Ok(Some(_)) => return PduResult::ok(),
        Ok(None) => {}
        Err(e) => return PduResult::error(e.to_string()),
    }
    if opens_gap(engine, &pdu) {
        let deadline = unsettled.gap_deadline.unwrap_or_else(tokio::time::Instant::now);
        if let Err(reason) = fill_gap_until(engine, origin, room, room_version, &pdu, deadline, retried).await {
            tracing::info!(%origin, room_id = %room, event_id = %pdu.event_id, %reason, "an event waits for its gap");
            engine.pending_pdus.keep(origin, pdu, room_version.clone(), attempts).await;
            return PduResult::error(reason);
        }
    }
    // Fetched within the transaction's deadline, like its gaps: a peer slow to
    // serve its auth events cannot hold the answer (what was fetched stays stored,
    // so the retry does not fetch it again).
    let deadline = unsettled.gap_deadline.unwrap_or_else(tokio::time::Instant::now);
    let fetch = super::auth_fetch::fetch_missing_auth(engine, origin, room, room_version, &pdu, budget);
    let Ok(missing) = tokio::time::timeout_at(deadline, fetch).await else {
        tracing::info!(%origin, room_id = %room, event_id = %pdu.event_id, attempts,
            "fetching the auth events of an event took too long; keeping it pending");
        metrics::counter!("myelin_federation_auth_fetches_deferred_total").increment(1);
        engine.pending_pdus.keep(origin, pdu, room_version.clone(), attempts + 1).await;
        return PduResult::error("its auth events are still being fetched; kept pending");
    };
    if !missing.is_empty() {
        tracing::info!(%origin, room_id = %room, event_id = %pdu.event_id, missing = missing.len(), attempts,
            "auth events of an event could not be fetched; keeping it pending");
        let reason = format!("{} auth event(s) could not be fetched yet; kept pending", missing.len());
        engine.pending_pdus.keep(origin, pdu, room_version.clone(), attempts + 1).await;
        return PduResult::error(reason);
    }
    let id = pdu.event_id.clone();
    match engine.rooms.append_pdu_unsettled(pdu, true).await {
        Ok((Appended::Accepted(p) | Appended::SoftFailed(p), pending)) => {
            unsettled.pending.extend(pending.map(|pend| (room.to_owned(), pend)));
            if p.kind == ruma::events::TimelineEventType::RoomGuestAccess
                && !unsettled.guest_access.iter().any(|r| r == room)
            {
                unsettled.guest_access.push(room.to_owned());
            }
            PduResult::ok()
        }
        Ok((Appended::Rejected(reason), _)) => {
            tracing::info!(%origin, room_id = %room, event_id = %id, %reason, "an event was rejected");
            PduResult::error(reason)
        }
        Err(e) => {
            // Its prev events are still unknown (a gap nobody could fill) or
            // storage failed: not taken, and the answer says why.
            tracing::info!(%origin, room_id = %room, event_id = %id, error = %e, "an event was not taken");
            PduResult::error(e.to_string())
        }
    }
}

/// A `get_missing_events` answer.
#[derive(Debug, Deserialize)]
struct MissingEvents {
    #[serde(default)]
    events: Vec<JsonValue>,
}

/// A `/state_ids` answer.
#[derive(Debug, Deserialize)]
struct StateIds {
    pdu_ids: Vec<OwnedEventId>,
    auth_chain_ids: Vec<OwnedEventId>,
}

/// Fetches unknown prev events of `pdu` from `origin` with `get_missing_events`,
/// round after round (100 per round, walking back from the unknown edge) until
/// every fetched event's prev events are known here, then appends them oldest
/// first, each after its missing auth events were fetched
/// ([`super::auth_fetch`]). A peer catching up after an outage may send only
/// its newest event (Synapse does): everything before it is recovered here,
/// none lost.
pub async fn fill_gap(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    pdu: &Pdu,
) -> Result<(), FederationError> {
    let known = |id: &OwnedEventId| engine.rooms.meta(id).ok().flatten().is_some();
    // Stored, but without a state after it: an outlier (a join's state, an auth
    // event). An event built on it needs the state there: fetched below.
    let stateless = |id: &OwnedEventId| engine.rooms.meta(id).ok().flatten().is_some_and(|m| m.state_after == 0);
    if pdu.prev_events.iter().all(known) {
        let outliers: Vec<OwnedEventId> = pdu.prev_events.iter().filter(|p| stateless(p)).cloned().collect();
        for prev in outliers.into_iter().take(MAX_STATE_FALLBACKS) {
            if let Err(e) = accept_with_remote_state(engine, origin, room, version, &prev).await {
                tracing::warn!(%origin, room_id = %room, event_id = %prev, error = %e, "could not fetch the state at an outlier");
            }
        }
        return Ok(());
    }
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(room.as_str()));
    let earliest = engine.rooms.extremities(room)?;
    // Not further back than our oldest timeline event: an event made beside
    // our join (in a room we just joined) reaches the room's whole history
    // through its prev events, and that history is backfill's to fetch; the
    // gap's lower edge is bridged on the remote's state below.
    let min_depth = engine.rooms.min_timeline_depth(room)?;
    let mut fetched: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut latest: Vec<OwnedEventId> = vec![pdu.event_id.clone()];
    while fetched.len() < engine.config.federation.max_gap_events {
        let body =
            json!({ "earliest_events": earliest, "latest_events": latest, "limit": 100, "min_depth": min_depth });
        let answer = match engine.remote(origin).json(Method::POST, &path, Some(&body)).await {
            Ok(a) if a.status.is_success() => a,
            Ok(a) => {
                tracing::info!(%origin, status = %a.status, "get_missing_events refused; falling back to /state_ids");
                break;
            }
            Err(e) => {
                tracing::info!(%origin, error = %e, "get_missing_events failed; falling back to /state_ids");
                break;
            }
        };
        let Ok(answer) = answer.parse::<MissingEvents>(origin) else {
            tracing::info!(%origin, "get_missing_events answered nonsense; falling back to /state_ids");
            break;
        };
        let before = fetched.len();
        for json in &answer.events {
            // Below `min_depth` is history (Synapse may send it anyway).
            if let Ok(p) = checked_pdu(engine, json, version).await
                && p.room_id == *room
                && p.depth >= min_depth
            {
                fetched.entry(p.event_id.clone()).or_insert(p);
            }
        }
        // The edge: fetched events (or the new one) with prev events still unknown.
        let edge: Vec<OwnedEventId> = fetched
            .values()
            .chain(std::iter::once(pdu))
            .filter(|p| p.prev_events.iter().any(|prev| !fetched.contains_key(prev) && !known(prev)))
            .map(|p| p.event_id.clone())
            .collect();
        if edge.is_empty() || fetched.len() == before {
            break;
        }
        latest = edge;
    }
    let mut events: Vec<Pdu> = fetched.into_values().collect();
    events.sort_by_key(|p| p.depth);
    tracing::debug!(%origin, room_id = %room, events = events.len(), "filling a gap");
    // What is still missing behind the oldest events (a gap larger than
    // `max_gap_events`, or a peer without get_missing_events): take those prev
    // events with the state the peer reports at them, as the spec's fallback says.
    let fetched_ids: HashSet<OwnedEventId> = events.iter().map(|p| p.event_id.clone()).collect();
    let mut missing: Vec<OwnedEventId> = Vec::new();
    for p in events.iter().chain(std::iter::once(pdu)) {
        for prev in &p.prev_events {
            let without_state = !fetched_ids.contains(prev) && (!known(prev) || stateless(prev));
            if without_state && !missing.contains(prev) {
                missing.push(prev.clone());
            }
        }
    }
    for prev in missing.into_iter().take(MAX_STATE_FALLBACKS) {
        if let Err(e) = accept_with_remote_state(engine, origin, room, version, &prev).await {
            tracing::warn!(%origin, room_id = %room, event_id = %prev, error = %e, "could not take an event on the remote state");
        }
    }
    // Gap events cite auth events too: those not held are fetched first, with
    // the gap's own budget, and an event whose auth events cannot be had yet
    // waits pending like a PDU of the transaction, rather than being rejected.
    let mut budget = super::auth_fetch::MAX_FETCH_PER_TXN;
    for p in events {
        if engine.rooms.meta(&p.event_id)?.is_none() {
            let id = p.event_id.clone();
            let missing = super::auth_fetch::fetch_missing_auth(engine, origin, room, version, &p, &mut budget).await;
            if !missing.is_empty() {
                tracing::info!(%origin, room_id = %room, event_id = %id, missing = missing.len(),
                    "auth events of a fetched missing event could not be fetched; keeping it pending");
                engine.pending_pdus.keep(origin, p, version.clone(), 1).await;
                continue;
            }
            // No prev event with a state here (the bridge below it could not
            // be fetched): it would be judged on no state and rejected for
            // good. It waits instead, like a PDU whose auth events are missing.
            let stateless_prevs = p
                .prev_events
                .iter()
                .all(|prev| engine.rooms.meta(prev).ok().flatten().is_none_or(|m| m.state_after == 0));
            if stateless_prevs {
                tracing::info!(%origin, room_id = %room, event_id = %id,
                    "no prev event of a fetched missing event has a state here; keeping it pending");
                engine.pending_pdus.keep(origin, p, version.clone(), 1).await;
                continue;
            }
            if let Err(e) = engine.rooms.append_pdu(p).await {
                tracing::info!(%origin, room_id = %room, event_id = %id, error = %e, "a fetched missing event was not stored");
            }
        }
    }
    Ok(())
}

/// Fetches `event_id` and the state before it from `origin` (`/state_ids`,
/// then `/event` for each event not held here, 16 at a time) and stores it
/// as an outlier with that state, so later events can be appended on it
/// (also when it is held already as an outlier without a state: an event of
/// a `send_join` state that others build on).
pub async fn accept_with_remote_state(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    event_id: &EventId,
) -> Result<(), FederationError> {
    let path = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(room.as_str()), enc(event_id.as_str()));
    let ids = engine.remote(origin).get(&path).await?;
    if !ids.status.is_success() {
        return Err(FederationError::BadResponse {
            server: origin.to_owned(),
            reason: format!("state_ids answered {}", ids.status),
        });
    }
    let ids: StateIds = ids.parse(origin)?;
    let fetch = |id: OwnedEventId| async move {
        if let Ok(Some(p)) = engine.rooms.pdu(&id) {
            return Some((*p).clone());
        }
        super::auth_fetch::fetch_event(engine, origin, room, version, &id).await
    };
    let state: Vec<Pdu> = futures_util::stream::iter(ids.pdu_ids)
        .map(fetch)
        .buffer_unordered(16)
        .filter_map(|p| async { p })
        .collect()
        .await;
    let chain: Vec<Pdu> = futures_util::stream::iter(ids.auth_chain_ids)
        .map(fetch)
        .buffer_unordered(16)
        .filter_map(|p| async { p })
        .collect()
        .await;
    let event = fetch(event_id.to_owned()).await.ok_or_else(|| FederationError::BadResponse {
        server: origin.to_owned(),
        reason: format!("{event_id} not served"),
    })?;
    tracing::info!(%origin, room_id = %room, %event_id, state = state.len(), "taking an event on the remote's state");
    engine.rooms.store_with_remote_state(event, state, chain).await?;
    Ok(())
}
