//! Missing auth events, fetched before a PDU is authorized, and the PDUs
//! that wait for them (Server-Server API §"Checks performed on receipt of a
//! PDU", step 4: "Passes authorization rules based on the event's auth
//! events, otherwise it is rejected").
//!
//! An inbound PDU may cite auth events this server never received (the
//! sender's transaction that carried them was lost, or they lie on a branch
//! we have not seen). Before the PDU is authorized, the auth events not
//! stored here are fetched from the PDU's origin: when more than one is
//! missing, first its whole auth chain with one
//! `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}` (at most
//! [`MAX_AUTH_CHAIN`] events looked at); then each one still missing with
//! `GET /_matrix/federation/v1/event/{eventId}`, and so are the auth events of
//! those, at most [`MAX_FETCH_PER_PDU`] per PDU and [`MAX_FETCH_PER_TXN`] per
//! transaction (the `/event_auth` request counts as one). Each fetched event goes through the checks on receipt
//! (format, signatures, hashes: `pdu_check`) and the auth rules against its
//! own auth events (`Rooms::store_auth_events`), and is stored as an outlier
//! (flagged rejected when it fails: the PDU citing it is then rejected, for
//! the reason the spec gives).
//! The same holds for each event fetched to fill a gap
//! (`inbound::fill_gap`), with the gap's own budget of [`MAX_FETCH_PER_TXN`].
//!
//! A PDU whose auth events could not all be fetched is *not* rejected: it
//! is kept pending ([`PendingPdus`]) and tried again when its origin sends
//! its next transaction, after a backoff per PDU (the first retry at once,
//! then 2 s doubling to 10 min), at most [`MAX_ATTEMPTS`] times; then it is
//! given up and logged, still unstored (it can come back by any later
//! route: a retransmission, `get_missing_events`, backfill).
//!
//! Guarantees: no PDU is stored rejected because a fetch failed; at most
//! [`MAX_PENDING_PER_ORIGIN`] PDUs wait per origin and [`MAX_PENDING`] in all
//! (a PDU over the bound is not kept, and counted in
//! `myelin_federation_pending_pdus_dropped_total`); the gauge
//! `myelin_federation_pending_pdus` shows how many wait. The set is written
//! to RocksDB (`originevent_pending`) as it changes and read back at start,
//! so a restart forgets no waiting PDU. They are retried when their origin
//! sends its next transaction, and, for a quiet origin, every
//! `inbound::PENDING_RETRY_EVERY` (30 s) by a background task.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use parking_lot::Mutex;
use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId};
use serde::{Deserialize, Serialize};

use super::{enc, pdu_check::checked_pdu};
use crate::{Engine, EngineError, rooms::Pdu, util::now_ms};

/// A pending PDU as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredPending {
    /// The PDU's canonical JSON.
    json: String,
    /// Its room's version.
    version: String,
    attempts: u32,
    next_try_ms: u64,
}
impl Stored for StoredPending {}

const PENDING: Table<(String, String), StoredPending> = Table::new(&catalog::ORIGINEVENT_PENDING);

/// Most auth events fetched for one PDU.
pub const MAX_FETCH_PER_PDU: usize = 20;
/// Most auth events fetched while processing one transaction.
pub const MAX_FETCH_PER_TXN: usize = 50;
/// Most PDUs kept pending per origin.
pub const MAX_PENDING_PER_ORIGIN: usize = 50;
/// Most PDUs kept pending in all.
pub const MAX_PENDING: usize = 500;
/// Tries of a pending PDU before it is given up.
pub const MAX_ATTEMPTS: u32 = 8;

/// A `/event` answer.
#[derive(Debug, Deserialize)]
struct OneEvent {
    pdus: Vec<serde_json::Value>,
}

/// `origin`'s successful answer to `GET path` (about event `id`), parsed; `None` otherwise.
async fn served<T: serde::de::DeserializeOwned>(engine: &Engine, origin: &str, path: &str, id: &EventId) -> Option<T> {
    match engine.remote(origin).get(path).await {
        Ok(a) if a.status.is_success() => a.parse(origin).ok(),
        Ok(a) => {
            tracing::debug!(%origin, event_id = %id, %path, status = %a.status, "not served");
            None
        }
        Err(e) => {
            tracing::debug!(%origin, event_id = %id, %path, error = %e, "could not be fetched");
            None
        }
    }
}

/// A stored pending PDU, parsed again.
fn restore(stored: &StoredPending) -> Option<PendingPdu> {
    let version = RoomVersionId::try_from(stored.version.as_str()).ok()?;
    let rules = version.rules()?;
    let object: ruma::CanonicalJsonObject = serde_json::from_str(&stored.json).ok()?;
    let pdu = Pdu::from_object(object, &rules).ok()?;
    Some(PendingPdu { pdu, version, attempts: stored.attempts, next_try_ms: stored.next_try_ms })
}

/// Fetches `id` from `origin` with `/event`, checked (format, signatures,
/// hashes) and of `room`; `None` when it cannot be had.
pub(super) async fn fetch_event(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    id: &EventId,
) -> Option<Pdu> {
    let path = format!("/_matrix/federation/v1/event/{}", enc(id.as_str()));
    let answer: OneEvent = served(engine, origin, &path, id).await?;
    let json = answer.pdus.into_iter().next()?;
    let p = checked_pdu(engine, &json, version).await.ok()?;
    (p.event_id == id && p.room_id == *room).then_some(p)
}

/// Most events of an `/event_auth` answer looked at.
pub const MAX_AUTH_CHAIN: usize = 2000;

/// An `/event_auth` answer.
#[derive(Debug, Deserialize)]
struct AuthChain {
    auth_chain: Vec<serde_json::Value>,
}

/// The events of `id`'s auth chain (Server-Server API `GET
/// /_matrix/federation/v1/event_auth/{roomId}/{eventId}`) not held here,
/// each checked (format, signatures, hashes) and of `room`; empty when the
/// origin cannot serve it. At most [`MAX_AUTH_CHAIN`] events are looked at.
async fn auth_chain(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    id: &EventId,
    known: &impl Fn(&EventId) -> bool,
) -> Vec<Pdu> {
    let path = format!("/_matrix/federation/v1/event_auth/{}/{}", enc(room.as_str()), enc(id.as_str()));
    let Some(answer) = served::<AuthChain>(engine, origin, &path, id).await else { return Vec::new() };
    let Some(rules) = version.rules() else { return Vec::new() };
    let mut out = Vec::new();
    for json in answer.auth_chain.iter().take(MAX_AUTH_CHAIN) {
        // The id is a hash of the event: cheap next to the signature checks, which
        // only the events not held here need.
        let held = serde_json::from_value::<ruma::CanonicalJsonObject>(json.clone())
            .ok()
            .and_then(|o| crate::rooms::pdu::event_id_of(&o, &rules).ok())
            .is_some_and(|id| known(&id));
        if held {
            continue;
        }
        if let Ok(p) = checked_pdu(engine, json, version).await
            && p.room_id == *room
        {
            out.push(p);
        }
    }
    out
}

/// Whether `pdu`'s auth events are all stored here now.
fn missing_auth(engine: &Engine, pdu: &Pdu) -> Vec<OwnedEventId> {
    pdu.auth_events.iter().filter(|a| !matches!(engine.rooms.meta(a), Ok(Some(_)))).cloned().collect()
}

/// Fetches and stores the auth events of `pdu` not held here, and theirs,
/// spending at most [`MAX_FETCH_PER_PDU`] fetches and what is left of
/// `budget` (the transaction's). Returns the auth events still missing (all
/// of them when the fetched ones could not be stored).
pub(super) async fn fetch_missing_auth(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    pdu: &Pdu,
    budget: &mut usize,
) -> Vec<OwnedEventId> {
    let mut wanted = missing_auth(engine, pdu);
    if wanted.is_empty() {
        return wanted;
    }
    let known = |id: &EventId| matches!(engine.rooms.meta(id), Ok(Some(_)));
    // One `/event_auth` request brings the PDU's whole auth chain; what it
    // leaves missing is then asked for one event at a time.
    let mut fetched: Vec<Pdu> = if *budget > 0 && wanted.len() > 1 {
        *budget -= 1;
        auth_chain(engine, origin, room, version, &pdu.event_id, &known).await
    } else {
        Vec::new()
    };
    let mut tried: HashSet<OwnedEventId> = fetched.iter().map(|p| p.event_id.clone()).collect();
    wanted.retain(|id| !tried.contains(id));
    for p in &fetched {
        wanted.extend(p.auth_events.iter().filter(|a| !tried.contains(*a) && !known(a)).cloned());
    }
    let mut spent = 0;
    while let Some(id) = wanted.pop() {
        if !tried.insert(id.clone()) || known(&id) {
            continue;
        }
        if spent >= MAX_FETCH_PER_PDU || *budget == 0 {
            tracing::info!(%origin, event_id = %pdu.event_id, "fetch bound reached for missing auth events");
            break;
        }
        spent += 1;
        *budget -= 1;
        if let Some(p) = fetch_event(engine, origin, room, version, &id).await {
            wanted.extend(p.auth_events.iter().filter(|a| !tried.contains(*a) && !known(a)).cloned());
            fetched.push(p);
        }
    }
    if !fetched.is_empty() {
        match engine.rooms.store_auth_events(room, &fetched).await {
            Ok(stored) => tracing::debug!(%origin, room_id = %room, event_id = %pdu.event_id,
                fetched = fetched.len(), stored, "fetched missing auth events"),
            Err(e) => {
                tracing::info!(%origin, event_id = %pdu.event_id, error = %e, "could not store fetched auth events");
                return pdu.auth_events.clone();
            }
        }
    }
    missing_auth(engine, pdu)
}

/// One PDU waiting for its auth events.
#[derive(Debug, Clone)]
pub struct PendingPdu {
    /// The PDU, checked for format, signatures and hashes.
    pub pdu: Pdu,
    /// Its room's version.
    pub version: RoomVersionId,
    /// Tries so far.
    pub attempts: u32,
    /// Not retried before this time (ms since the epoch).
    pub next_try_ms: u64,
}

/// Inbound PDUs kept until their auth events can be fetched, per origin
/// (bounded; in memory, and in RocksDB when opened on a database).
#[derive(Default)]
pub struct PendingPdus {
    by_origin: Mutex<HashMap<String, VecDeque<PendingPdu>>>,
    db: Option<Arc<Db>>,
}

impl PendingPdus {
    /// The set stored in `db`, as the last run left it.
    pub fn open(db: Arc<Db>) -> Result<Self, EngineError> {
        let mut by_origin: HashMap<String, VecDeque<PendingPdu>> = HashMap::new();
        let mut loaded = 0usize;
        for row in PENDING.iter(&*db, Direction::Forward)? {
            let ((origin, id), stored) = row?;
            match restore(&stored) {
                Some(pending) if loaded < MAX_PENDING => {
                    by_origin.entry(origin).or_default().push_back(pending);
                    loaded += 1;
                }
                _ => tracing::warn!(%origin, event_id = %id, "a stored pending event could not be read back; skipped"),
            }
        }
        if loaded > 0 {
            tracing::info!(pending = loaded, "events waiting for their auth events read back");
        }
        metrics::gauge!("myelin_federation_pending_pdus").set(loaded as f64);
        Ok(Self { by_origin: Mutex::new(by_origin), db: Some(db) })
    }

    /// Stores `row` as `origin`'s pending `id`, or removes it (`None`); a failure is logged.
    async fn write(&self, origin: &str, id: &EventId, row: Option<StoredPending>) {
        let Some(db) = &self.db else { return };
        let key = (origin.to_owned(), id.to_string());
        let mut batch = Batch::new();
        let staged = match &row {
            Some(row) => PENDING.put(&mut batch, &key, row),
            None => {
                PENDING.delete(&mut batch, &key);
                Ok(())
            }
        };
        let written = match staged {
            Ok(()) => db.commit(batch).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(%origin, event_id = %id, error = %e, "could not store the pending set; kept in memory");
        }
    }

    /// Forgets `id` of `origin` in the store unless it was kept again (after a retry).
    pub(super) async fn settle(&self, origin: &str, id: &EventId) {
        let kept = self.by_origin.lock().get(origin).is_some_and(|q| q.iter().any(|p| p.pdu.event_id == id));
        if !kept {
            self.write(origin, id, None).await;
        }
    }

    /// How many PDUs wait, in all.
    pub fn len(&self) -> usize {
        self.by_origin.lock().values().map(VecDeque::len).sum()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many PDUs wait per origin.
    pub fn per_origin(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self.by_origin.lock().iter().map(|(o, q)| (o.clone(), q.len())).collect();
        out.sort();
        out
    }

    /// Keeps `pdu` (tried `attempts` times already) for `origin`'s next
    /// transaction, unless it was tried [`MAX_ATTEMPTS`] times or the set is full.
    pub(super) async fn keep(&self, origin: &str, pdu: Pdu, version: RoomVersionId, attempts: u32) {
        let id = pdu.event_id.clone();
        if attempts >= MAX_ATTEMPTS {
            tracing::warn!(%origin, event_id = %pdu.event_id, attempts,
                "giving up on an event whose auth events could not be fetched; it is not stored");
            metrics::counter!("myelin_federation_pending_pdus_dropped_total").increment(1);
            self.write(origin, &id, None).await;
            return;
        }
        // The first retry at the next transaction, then 2 s doubling to 10 min.
        let wait_s = if attempts <= 1 { 0 } else { (1u64 << (attempts - 1).min(10)).min(600) };
        let next_try_ms = now_ms() + wait_s * 1000;
        let row = StoredPending {
            json: serde_json::to_string(&*pdu.json).unwrap_or_default(),
            version: version.to_string(),
            attempts,
            next_try_ms,
        };
        let kept = {
            let mut all = self.by_origin.lock();
            let total: usize = all.values().map(VecDeque::len).sum();
            let queue = all.entry(origin.to_owned()).or_default();
            let present = queue.iter().any(|p| p.pdu.event_id == pdu.event_id);
            let kept = if !present && (queue.len() >= MAX_PENDING_PER_ORIGIN || total >= MAX_PENDING) {
                tracing::info!(%origin, event_id = %pdu.event_id, "too many events wait for auth events; not keeping this one");
                metrics::counter!("myelin_federation_pending_pdus_dropped_total").increment(1);
                false
            } else {
                if !present {
                    queue.push_back(PendingPdu { pdu, version, attempts, next_try_ms });
                }
                true
            };
            if queue.is_empty() {
                all.remove(origin);
            }
            let total: usize = all.values().map(VecDeque::len).sum();
            metrics::gauge!("myelin_federation_pending_pdus").set(total as f64);
            kept
        };
        self.write(origin, &id, kept.then_some(row)).await;
    }

    /// Takes `origin`'s pending PDUs whose retry time has come, oldest first.
    pub(super) fn take_due(&self, origin: &str) -> Vec<PendingPdu> {
        let now = now_ms();
        let mut all = self.by_origin.lock();
        let Some(queue) = all.get_mut(origin) else { return Vec::new() };
        let (due, wait): (Vec<PendingPdu>, Vec<PendingPdu>) = queue.drain(..).partition(|p| p.next_try_ms <= now);
        queue.extend(wait);
        if queue.is_empty() {
            all.remove(origin);
        }
        let total: usize = all.values().map(VecDeque::len).sum();
        drop(all);
        if !due.is_empty() {
            metrics::gauge!("myelin_federation_pending_pdus").set(total as f64);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(n: u32) -> Pdu {
        let rules = RoomVersionId::V12.rules().unwrap();
        let object = serde_json::from_value(serde_json::json!({
            "type": "m.room.message", "room_id": "!r:x.test", "sender": "@a:x.test", "content": { "n": n },
            "origin_server_ts": n, "depth": 2, "prev_events": [], "auth_events": [],
            "hashes": { "sha256": "AAAA" }, "signatures": {} }))
        .unwrap();
        Pdu::from_object(object, &rules).unwrap()
    }

    #[tokio::test]
    async fn the_pending_set_is_bounded_and_gives_up_after_max_attempts() {
        let pending = PendingPdus::default();
        for n in 0..(MAX_PENDING_PER_ORIGIN as u32 + 5) {
            pending.keep("a.test", pdu(n), RoomVersionId::V12, 1).await;
        }
        assert_eq!(pending.len(), MAX_PENDING_PER_ORIGIN, "bounded per origin");
        pending.keep("a.test", pdu(0), RoomVersionId::V12, 1).await;
        assert_eq!(pending.len(), MAX_PENDING_PER_ORIGIN, "kept once");
        let due = pending.take_due("a.test");
        assert_eq!(due.len(), MAX_PENDING_PER_ORIGIN, "the first retry is due at once");
        assert!(pending.is_empty());
        pending.keep("b.test", pdu(1), RoomVersionId::V12, 3).await;
        assert!(pending.take_due("b.test").is_empty(), "later retries wait");
        assert_eq!(pending.per_origin(), vec![("b.test".to_owned(), 1)]);
        pending.keep("c.test", pdu(2), RoomVersionId::V12, MAX_ATTEMPTS).await;
        assert_eq!(pending.len(), 1, "given up after MAX_ATTEMPTS");
    }
}
