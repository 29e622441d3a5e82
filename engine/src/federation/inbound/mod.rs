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

mod gaps;

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, RoomId, RoomVersionId};
use serde::Serialize;
use serde_json::Value as JsonValue;

use super::{FederationError, pdu_check::checked_pdu, serve::acl_allows};
use crate::{
    Engine,
    rooms::{Appended, Pdu},
};
pub use gaps::{GapFills, MAX_GAP_FILLS, MAX_GAP_FILLS_PER_ORIGIN, accept_with_remote_state, fill_gap};
use gaps::{fill_gap_until, opens_gap};

/// Most PDUs a transaction may carry (Server-Server API: "up to 50").
pub const MAX_PDUS: usize = 50;
/// Most EDUs a transaction may carry ("up to 100").
pub const MAX_EDUS: usize = 100;

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
