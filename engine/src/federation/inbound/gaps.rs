//! Gap filling for inbound PDUs: unknown prev events fetched from the origin
//! with `get_missing_events`, and the spec's fallback when that cannot close
//! the gap (`/state_ids`, then `/event`, stored as outliers carrying that
//! state); each fill runs as a background task, bounded per origin and in all.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use http::Method;
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::{
    Engine,
    federation::{FederationError, auth_fetch, enc, pdu_check::checked_pdu},
    rooms::Pdu,
};

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
    pub(super) ended: tokio::sync::Notify,
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
pub(super) fn opens_gap(engine: &Engine, pdu: &Pdu) -> bool {
    pdu.prev_events.iter().any(|p| engine.rooms.meta(p).ok().flatten().is_none_or(|m| m.state_after == 0))
}

/// Fills the gap `pdu` opens in a background task (or joins the one running
/// for its origin and room), waiting for it until `deadline`; an event
/// `retried` from the pending set does not wait for a fill it did not start
/// (it waited once already; its origin's next transaction should not).
/// `Err` says why the event must wait instead.
pub(super) async fn fill_gap_until(
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
/// ([`auth_fetch`]). A peer catching up after an outage may send only
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
    let mut budget = auth_fetch::MAX_FETCH_PER_TXN;
    for p in events {
        if engine.rooms.meta(&p.event_id)?.is_none() {
            let id = p.event_id.clone();
            let missing = auth_fetch::fetch_missing_auth(engine, origin, room, version, &p, &mut budget).await;
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
        auth_fetch::fetch_event(engine, origin, room, version, &id).await
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
