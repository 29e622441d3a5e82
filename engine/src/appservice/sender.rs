//! Pushes to appservices (Application Service API §"Pushing events":
//! `PUT /_matrix/app/v1/transactions/{txnId}`, `Authorization: Bearer <hs_token>`).
//!
//! > The application service should process the transaction and respond with a
//! > 200 OK. If the homeserver does not receive a 200 OK it should retry the
//! > transaction with the same transaction ID.
//!
//! One task per appservice with a URL, woken when rows are queued for it (after
//! their batch is durable), when ephemeral events wait, when a device list
//! changes (MSC3202 appservices only), and by a scan every 5 s.
//! A transaction carries up to 100 events, oldest first, up to 100
//! ephemeral events and up to 100 to-device messages for the appservice's
//! users (MSC4203, as `de.sorunome.msc2409.to_device`, each message with
//! `to_user_id` and `to_device_id`; durable like the events). With
//! `org.matrix.msc3202: true` a transaction also carries the one-time key
//! counts and unused fallback key types of the users it mentions, and
//! `device_lists.changed` / `.left` for the users it shares rooms with
//! (MSC3202). Before it is first sent it is stored (id, rows, body);
//! every retry sends exactly that, also after a restart, and its rows are
//! deleted only after a 2xx. On failure the sender waits with exponential
//! backoff (1 s doubling to 2 min, the federation sender's policy, stored so a
//! restart keeps it); any request the appservice makes with its token ends
//! the wait at once.
//!
//! Metrics per appservice: `myelin_appservice_queue_depth`,
//! `myelin_appservice_queue_oldest_age_seconds`,
//! `myelin_appservice_transactions_total{result}` and
//! `myelin_appservice_events_total`.

use crate::federation::backoff::jitter;
use std::{sync::Arc, time::Duration};

use http::Method;
use serde_json::value::RawValue;
use tokio::sync::{Notify, watch};

use super::queue::{self, InFlight, SenderState};
use crate::{
    Engine,
    federation::{OutboundRequest, enc},
    rooms::events::client_event,
    util::now_ms,
};

/// Most events per transaction.
const MAX_EVENTS: usize = 100;
/// Most ephemeral events per transaction.
const MAX_EPHEMERAL: usize = 100;
/// Most to-device messages per transaction.
const MAX_TO_DEVICE: usize = 100;
/// Largest answer read from an appservice.
const MAX_ANSWER: usize = 64 * 1024;

/// Runs the appservice senders until `stop` fires.
pub async fn run(engine: Arc<Engine>, stop: watch::Receiver<bool>) {
    crate::delivery::run(Appservices(engine), stop).await
}

/// The appservice push queue, a task per appservice with a URL.
struct Appservices(Arc<Engine>);

impl crate::delivery::KeyedQueue for Appservices {
    const SPAN: &'static str = "appservice_sender";

    fn scan(&self) -> Vec<String> {
        self.0.appservices.all().iter().filter(|a| a.url().is_some()).map(|a| a.id().to_owned()).collect()
    }

    fn take_ready(&self) -> Vec<String> {
        self.0.appservices.take_ready()
    }

    async fn ready(&self) {
        self.0.appservices.wait_ready().await
    }

    /// An appservice removed at run time: its task ends.
    fn keep(&self, id: &str) -> bool {
        self.0.appservices.get(id).is_some()
    }

    fn deliver(&self, key: String, wake: Arc<Notify>) -> impl std::future::Future<Output = ()> + Send + 'static {
        deliver(self.0.clone(), key, wake)
    }
}

async fn deliver(engine: Arc<Engine>, id: String, wake: Arc<Notify>) {
    let mut floor = 0;
    loop {
        if let Err(e) = deliver_queued(&engine, &id, &mut floor).await {
            tracing::warn!(error = %e, "appservice queue could not be read; retrying in 5 s");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        wake.notified().await;
    }
}

/// Builds the next transaction from the queue, or `None` when nothing waits.
fn next_transaction(
    engine: &Engine,
    id: &str,
    floor: &mut u64,
    state: &mut SenderState,
    keys_upto: &mut Option<u64>,
) -> Result<Option<InFlight>, crate::EngineError> {
    // Read before the rows: every row at or below a visible position is in the read.
    let visible = engine.stream.current();
    let rows = queue::rows(&engine.db, id, *floor, MAX_EVENTS)?;
    let to_device = queue::to_device_rows(&engine.db, id, MAX_TO_DEVICE)?;
    let ephemeral = engine.appservices.take_ephemeral(id, MAX_EPHEMERAL);
    let key_counts_for = engine.appservices.get(id).filter(|a| a.receives_key_counts());
    let cursor = queue::key_cursor(&engine.db, id)?;
    let mut concerned = Concerned { engine, rooms: None };
    let device_lists = match &key_counts_for {
        Some(a) => device_lists_changed(engine, a, &mut concerned, cursor, visible)?,
        None => Vec::new(),
    };
    // Moved once the transaction is delivered, or at once when there is none.
    *keys_upto = key_counts_for.as_ref().map(|_| visible).filter(|&v| v > cursor);
    if rows.is_empty() && ephemeral.is_empty() && to_device.is_empty() && device_lists.is_empty() {
        // Nothing below `visible` is left: later reads may start above it.
        *floor = (*floor).max(visible.saturating_add(1));
        return Ok(None);
    }
    let now = now_ms();
    let mut events: Vec<Box<RawValue>> = Vec::with_capacity(rows.len());
    // State events as JSON too (MSC3202's `left` reads their memberships),
    // and the senders (its key counts name the appservice's own).
    let mut state_events = Vec::new();
    let mut senders = std::collections::BTreeSet::new();
    let mut oldest = now;
    let raw = |v: &serde_json::Value| {
        serde_json::value::to_raw_value(v).map_err(crate::EngineError::encode("appservice event"))
    };
    for (seq, short) in &rows {
        match engine.rooms.pdu_by_short(*short) {
            Ok(Some(pdu)) => {
                oldest = oldest.min(u64::from(pdu.origin_server_ts.0));
                if key_counts_for.is_some() {
                    senders.insert(pdu.sender.to_string());
                }
                if pdu.state_key.is_none() {
                    // Most events: written straight from the stored content,
                    // without building a JSON tree of it.
                    events.push(message_event(&pdu, now)?);
                    continue;
                }
                let mut event = client_event(&pdu, true, now);
                with_state_context(engine, *short, &pdu, &mut event)?;
                events.push(raw(&event)?);
                state_events.push(event);
            }
            // Purged since it was queued: nothing to send for it.
            Ok(None) => {}
            // An invite to a room this server is not in (an outlier, no room version
            // known): sent as it was received.
            Err(crate::rooms::RoomError::UnknownRoom(_)) => match engine.rooms.outlier_client_event(*short, now) {
                Ok(Some(event)) => {
                    if let Some(sender) = event.get("sender").and_then(serde_json::Value::as_str) {
                        senders.insert(sender.to_owned());
                    }
                    events.push(raw(&event)?);
                    state_events.push(event);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(seq, error = %e, "skipping a queued event that cannot be read"),
            },
            Err(crate::rooms::RoomError::Storage(e)) => return Err(e.into()),
            Err(e) => tracing::warn!(seq, error = %e, "skipping a queued event that cannot be read"),
        }
    }
    metrics::gauge!("myelin_appservice_queue_oldest_age_seconds", "appservice" => id.to_owned())
        .set(now.saturating_sub(oldest) as f64 / 1000.0);
    let left = match &key_counts_for {
        Some(a) => device_lists_left(engine, a, &mut concerned, &state_events, &device_lists)?,
        None => Vec::new(),
    };
    let mut body = serde_json::Map::new();
    if !device_lists.is_empty() || !left.is_empty() {
        body.insert(
            "org.matrix.msc3202.device_lists".into(),
            serde_json::json!({ "changed": device_lists, "left": left }),
        );
    }
    let count = events.len();
    if !ephemeral.is_empty() {
        // Both names: the stable one, and MSC2409's that older bridges read.
        body.insert("ephemeral".into(), serde_json::Value::Array(ephemeral.clone()));
        body.insert("de.sorunome.msc2409.ephemeral".into(), serde_json::Value::Array(ephemeral));
    }
    if !to_device.is_empty() {
        let messages: Vec<serde_json::Value> = to_device.iter().map(|(_, m)| to_device_event(m)).collect();
        // The unstable name only, as Synapse sends it: MSC4203 is not merged,
        // and bridges read this one.
        body.insert("de.sorunome.msc2409.to_device".into(), serde_json::Value::Array(messages));
    }
    if let Some(a) = key_counts_for {
        // The users this transaction mentions (its sender, namespaced senders,
        // to-device recipients), as Synapse picks them.
        let mut users: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        users.insert(a.sender.to_string());
        users.extend(to_device.iter().map(|(_, m)| m.to_user.clone()));
        users.extend(senders.into_iter().filter(|s| a.owns_user(s)));
        key_counts(engine, &users, &mut body)?;
    }
    let body = transaction_body(body, &events)?;
    if state.next_txn == 0 {
        // A fresh sender (or one re-added after removal) must not repeat ids the
        // appservice saw before: start from the clock.
        state.next_txn = now;
    }
    let txn_id = state.next_txn;
    state.next_txn += 1;
    let mut seqs: Vec<u64> = rows.iter().map(|(s, _)| *s).collect();
    if let Some(last) = seqs.last() {
        // A row above `visible` may still land below one read here.
        *floor = (*floor).max(last.saturating_add(1).min(visible.saturating_add(1)));
    }
    // Removed with the event rows once delivered (positions never collide).
    seqs.extend(to_device.iter().map(|(s, _)| *s));
    Ok(Some(InFlight { txn_id, seqs, body, events: count }))
}

/// A non-state event in the client format, from the stored content as it is.
fn message_event(pdu: &crate::rooms::pdu::Pdu, now: u64) -> Result<Box<RawValue>, crate::EngineError> {
    #[derive(serde::Serialize)]
    struct Unsigned {
        age: u64,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a ruma::events::TimelineEventType,
        content: &'a RawValue,
        event_id: &'a ruma::EventId,
        sender: &'a ruma::UserId,
        origin_server_ts: u64,
        unsigned: Unsigned,
        #[serde(skip_serializing_if = "Option::is_none")]
        redacts: Option<&'a ruma::EventId>,
        room_id: &'a ruma::RoomId,
    }
    let ts = u64::from(pdu.origin_server_ts.0);
    let event = Event {
        kind: &pdu.kind,
        content: &pdu.content,
        event_id: &pdu.event_id,
        sender: &pdu.sender,
        origin_server_ts: ts,
        unsigned: Unsigned { age: now.saturating_sub(ts) },
        redacts: pdu.redacts.as_deref(),
        room_id: &pdu.room_id,
    };
    serde_json::value::to_raw_value(&event).map_err(crate::EngineError::encode("appservice event"))
}

/// The transaction's JSON: `events` as written, and `rest`'s keys.
fn transaction_body(
    rest: serde_json::Map<String, serde_json::Value>,
    events: &[Box<RawValue>],
) -> Result<Vec<u8>, crate::EngineError> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        events: &'a [Box<RawValue>],
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
    }
    serde_json::to_vec(&Body { events, rest }).map_err(crate::EngineError::encode("appservice transaction"))
}

/// Most users in one transaction's `device_lists.changed`.
const MAX_DEVICE_LISTS: usize = 1000;

/// MSC3202 `device_lists.changed`: users whose devices changed in
/// `(since, upto]` and who are joined to a room that concerns the appservice
/// (as for the rooms its events come from), the way `/sync` tells a user of
/// the devices of those sharing a room. At most [`MAX_DEVICE_LISTS`]; the
/// cursor then still moves to `upto` (a bridge that misses a change of a
/// user it shares a room with re-reads their keys at its next encryption).
fn device_lists_changed(
    engine: &Engine,
    a: &super::Appservice,
    concerned: &mut Concerned<'_>,
    since: u64,
    upto: u64,
) -> Result<Vec<String>, crate::EngineError> {
    if since >= upto {
        return Ok(Vec::new());
    }
    let changed = engine.e2ee.changed_between(since, upto)?;
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let rooms = concerned.rooms(a)?;
    let mut out = Vec::new();
    for who in changed {
        if out.len() >= MAX_DEVICE_LISTS {
            break;
        }
        if engine.shares_room(&who, rooms)? {
            out.push(who);
        }
    }
    out.sort();
    Ok(out)
}

/// MSC3202 `device_lists.left`: users who, through a leave or ban among
/// `events`, no longer share any room that concerns the appservice (a user
/// who left; when one of the appservice's own users left, the members of
/// that room), as `/sync` tells a user of those it stopped sharing a room
/// with. Users in `changed` are not also left. At most [`MAX_DEVICE_LISTS`].
fn device_lists_left(
    engine: &Engine,
    a: &super::Appservice,
    concerned: &mut Concerned<'_>,
    events: &[serde_json::Value],
    changed: &[String],
) -> Result<Vec<String>, crate::EngineError> {
    let mut candidates = std::collections::BTreeSet::new();
    for e in events {
        let (Some("m.room.member"), Some(who), Some(membership), Some(room)) = (
            e.get("type").and_then(serde_json::Value::as_str),
            e.get("state_key").and_then(serde_json::Value::as_str),
            e.pointer("/content/membership").and_then(serde_json::Value::as_str),
            e.get("room_id").and_then(serde_json::Value::as_str),
        ) else {
            continue;
        };
        if membership != "leave" && membership != "ban" {
            continue;
        }
        if !a.owns_user(who) {
            candidates.insert(who.to_owned());
            continue;
        }
        // One of the appservice's users left: its room's members may be gone from its view.
        let Ok(room) = ruma::RoomId::parse(room) else { continue };
        for pdu in engine.rooms.current_state(&room)? {
            if candidates.len() >= MAX_DEVICE_LISTS {
                break;
            }
            if pdu.kind.to_string() == "m.room.member"
                && pdu.content_value()["membership"] == "join"
                && let Some(member) = pdu.state_key.as_deref().filter(|m| !a.owns_user(m))
            {
                candidates.insert(member.to_owned());
            }
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let rooms = concerned.rooms(a)?;
    let mut out = Vec::new();
    for who in candidates {
        if out.len() >= MAX_DEVICE_LISTS {
            break;
        }
        if !changed.contains(&who) && !engine.shares_room(&who, rooms)? {
            out.push(who);
        }
    }
    Ok(out)
}

/// The rooms that concern one appservice, read once per transaction and only when needed.
struct Concerned<'a> {
    engine: &'a Engine,
    rooms: Option<Vec<ruma::OwnedRoomId>>,
}

impl Concerned<'_> {
    fn rooms(&mut self, a: &super::Appservice) -> Result<&[ruma::OwnedRoomId], crate::EngineError> {
        if self.rooms.is_none() {
            let mut rooms = Vec::new();
            for room in self.engine.rooms.all_rooms()? {
                if self.engine.rooms.concerns_appservice(a, &room)? {
                    rooms.push(room);
                }
            }
            self.rooms = Some(rooms);
        }
        Ok(self.rooms.as_deref().unwrap_or_default())
    }
}

/// MSC3202's one-time key counts and unused fallback key types of every
/// device of `users`, under the names Synapse sends (the
/// MSC's prefix; also the `key_counts` spelling of Synapse before 1.73, which
/// older bridges read). Left out when none of them has a device.
fn key_counts(
    engine: &Engine,
    users: &std::collections::BTreeSet<String>,
    body: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), crate::EngineError> {
    let mut counts = serde_json::Map::new();
    let mut fallback = serde_json::Map::new();
    for user in users {
        let mut user_counts = serde_json::Map::new();
        let mut user_fallback = serde_json::Map::new();
        for (device, _) in engine.users.devices(user)? {
            user_counts.insert(device.clone(), serde_json::json!(engine.e2ee.one_time_key_counts(user, &device)?));
            user_fallback.insert(device.clone(), serde_json::json!(engine.e2ee.unused_fallback_types(user, &device)?));
        }
        if !user_counts.is_empty() {
            counts.insert(user.clone(), serde_json::Value::Object(user_counts));
            fallback.insert(user.clone(), serde_json::Value::Object(user_fallback));
        }
    }
    if !counts.is_empty() {
        let counts = serde_json::Value::Object(counts);
        body.insert("org.matrix.msc3202.device_one_time_keys_count".into(), counts.clone());
        body.insert("org.matrix.msc3202.device_one_time_key_counts".into(), counts);
        body.insert("org.matrix.msc3202.device_unused_fallback_key_types".into(), serde_json::Value::Object(fallback));
    }
    Ok(())
}

/// A queued to-device message as MSC4203 pushes it: the to-device event
/// (`type`, `sender`, `content`) with the user and device it is for.
fn to_device_event(m: &queue::ToDeviceRow) -> serde_json::Value {
    // Stored from a parsed JSON body; an unreadable one goes as empty content.
    let content: serde_json::Value =
        serde_json::from_slice(&m.content).unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
    serde_json::json!({
        "type": m.kind,
        "sender": m.sender,
        "content": content,
        "to_user_id": m.to_user,
        "to_device_id": m.to_device,
    })
}

/// State types given to an invitee as the room's stripped state (Synapse's
/// default `room_prejoin_state`, and what Myelin puts in federated invites).
const INVITE_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.name",
    "m.room.topic",
];

/// Adds what bridges read from a state event's `unsigned`: `prev_content`,
/// `prev_sender` and `replaces_state` (the event it replaced, Client-Server
/// API §"Room events"), and `invite_room_state` on an invite (§`m.room.member`),
/// taken from the state before the event.
fn with_state_context(
    engine: &Engine,
    short: u64,
    pdu: &crate::rooms::pdu::Pdu,
    event: &mut serde_json::Value,
) -> Result<(), crate::EngineError> {
    let Some(state_key) = pdu.state_key.as_deref() else { return Ok(()) };
    let Some(meta) = engine.rooms.meta_of_short(short)? else { return Ok(()) };
    if meta.state_before == 0 {
        return Ok(());
    }
    let kind = pdu.kind.to_string();
    if let Some(prev) = engine.rooms.state_pdu_at(meta.state_before, &kind, state_key)? {
        event["unsigned"]["prev_content"] = prev.content_value();
        event["unsigned"]["prev_sender"] = serde_json::json!(prev.sender);
        event["unsigned"]["replaces_state"] = serde_json::json!(prev.event_id);
    }
    if kind == "m.room.member" && pdu.content_value()["membership"] == "invite" {
        let mut stripped = Vec::new();
        for t in INVITE_STATE_TYPES {
            if let Some(p) = engine.rooms.state_pdu_at(meta.state_before, t, "")? {
                stripped.push(crate::rooms::events::stripped_event(&p));
            }
        }
        if let Some(p) = engine.rooms.state_pdu_at(meta.state_before, "m.room.member", pdu.sender.as_str())? {
            stripped.push(crate::rooms::events::stripped_event(&p));
        }
        event["unsigned"]["invite_room_state"] = serde_json::Value::Array(stripped);
    }
    Ok(())
}

/// Delivers everything queued for one appservice, then returns.
async fn deliver_queued(engine: &Engine, id: &str, floor: &mut u64) -> Result<(), crate::EngineError> {
    // The key-change position the transaction being built covers (MSC3202); a
    // transaction stored by an earlier run does not move the cursor.
    let mut keys_upto: Option<u64> = None;
    let Some(appservice) = engine.appservices.get(id) else { return Ok(()) };
    let Some(url) = appservice.url().map(ToOwned::to_owned) else { return Ok(()) };
    let alive = engine.appservices.alive_signal(id);
    let mut state = queue::state(&engine.db, id)?;
    let wait = Duration::from_millis(state.retry_at_ms.saturating_sub(now_ms()));
    if !wait.is_zero() {
        tracing::info!(wait = ?wait, "appservice was failing before; waiting out its backoff");
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(120))) => {}
            _ = alive.notified() => state.step_ms = 0,
        }
    }
    loop {
        let in_flight = match state.in_flight.clone() {
            Some(f) => f,
            None => match next_transaction(engine, id, floor, &mut state, &mut keys_upto)? {
                Some(f) => {
                    state.in_flight = Some(f.clone());
                    queue::save_state(&engine.db, id, &state).await?;
                    f
                }
                None => {
                    if let Some(upto) = keys_upto.take() {
                        // No change concerned it: the next look starts after these.
                        queue::set_key_cursor(&engine.db, id, upto).await?;
                    }
                    metrics::gauge!("myelin_appservice_queue_depth", "appservice" => id.to_owned()).set(0.0);
                    return Ok(());
                }
            },
        };
        let request = OutboundRequest {
            method: Method::PUT,
            path_and_query: format!("/_matrix/app/v1/transactions/{}", enc(&in_flight.txn_id.to_string())),
            body: Some(in_flight.body.clone().into()),
            authorization: Some(format!("Bearer {}", appservice.registration.hs_token)),
            limit: MAX_ANSWER,
            spool: None,
        };
        let transport = engine.federation.transport();
        let outcome = transport.send_url(&url, request).await;
        match outcome {
            Ok(resp) if resp.status.is_success() => {
                queue::delivered(&engine.db, id, &state, keys_upto.take()).await?;
                state.in_flight = None;
                state.retry_at_ms = 0;
                state.step_ms = 0;
                metrics::counter!("myelin_appservice_transactions_total", "appservice" => id.to_owned(), "result" => "ok")
                    .increment(1);
                metrics::counter!("myelin_appservice_events_total", "appservice" => id.to_owned())
                    .increment(in_flight.events as u64);
                tracing::debug!(txn_id = in_flight.txn_id, events = in_flight.events, "transaction delivered");
            }
            failed => {
                let result = match &failed {
                    Ok(resp) => {
                        tracing::warn!(status = %resp.status, txn_id = in_flight.txn_id, "appservice refused a transaction; retrying later");
                        "refused"
                    }
                    Err(e) => {
                        tracing::info!(error = %e, txn_id = in_flight.txn_id, "appservice unreachable; retrying later");
                        "unreachable"
                    }
                };
                metrics::counter!("myelin_appservice_transactions_total", "appservice" => id.to_owned(), "result" => result)
                    .increment(1);
                if let Ok(n) = queue::depth(&engine.db, id, 1_000_000) {
                    metrics::gauge!("myelin_appservice_queue_depth", "appservice" => id.to_owned()).set(n as f64);
                }
                let step = Duration::from_millis(state.step_ms.clamp(1_000, 120_000));
                let wait = jitter(step);
                state.retry_at_ms = now_ms() + wait.as_millis() as u64;
                state.step_ms = (step * 2).min(Duration::from_secs(120)).as_millis() as u64;
                queue::save_state(&engine.db, id, &state).await?;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = alive.notified() => {
                        tracing::info!("appservice showed life; retrying now");
                        state.step_ms = 0;
                    }
                }
            }
        }
    }
}
