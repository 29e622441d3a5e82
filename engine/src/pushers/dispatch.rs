//! Turns pending events into queued notifications: for each local member
//! with a pusher (the invitee of an invite too), the push rules decide
//! (`Engine::evaluate`), and each of that user's pushers gets one
//! notification in the Push Gateway API's form (`format: event_id_only`
//! leaves the event's content out).

use std::{collections::HashMap, sync::Arc, time::Duration};

use myelin_storage::{Batch, Direction, Raw, Table, catalog};
use ruma::{OwnedUserId, UserId, events::TimelineEventType};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Pusher, pusher_key, sender::QUEUE};
use crate::{Engine, EngineError, rooms::ArcPdu, util::now_ms};

/// Stream position → short event id: events that may notify someone.
pub(crate) const PENDING: Table<u64, u64> = Table::new(&catalog::PUSH_PENDING);

/// Events handled per batch.
const BATCH: usize = 100;

/// A queued notification: when it was made, and the gateway request body.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Queued {
    pub created_ms: u64,
    pub body: Value,
}

/// Runs the dispatcher until `stop` fires.
pub async fn run(engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let mut floor = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match dispatch_some(&engine, &mut floor).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "push dispatch failed; retrying"),
        }
        tokio::select! {
            _ = engine.pushers.pending.notified() => {}
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
    }
}

/// Handles up to [`BATCH`] pending events; whether there may be more.
async fn dispatch_some(engine: &Engine, floor: &mut u64) -> Result<bool, EngineError> {
    // Read before the rows: every row at or below a visible position is in the read.
    let visible = engine.stream.current();
    let mut rows = Vec::new();
    for row in PENDING.range(&*engine.db, *floor.., Direction::Forward)?.take(BATCH) {
        rows.push(row?);
    }
    if rows.is_empty() {
        *floor = (*floor).max(visible.saturating_add(1));
        return Ok(false);
    }
    let mut batch = Batch::new();
    let mut touched = Vec::new();
    let mut members_at: HashMap<u64, Vec<OwnedUserId>> = HashMap::new();
    for (count, short) in &rows {
        PENDING.delete(&mut batch, count);
        let pdu = match engine.rooms.pdu_by_short(*short) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(crate::rooms::RoomError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(count, error = %e, "skipping a pending push that cannot be read");
                continue;
            }
        };
        let state = engine.rooms.meta(&pdu.event_id)?.map_or(0, |m| m.state_after);
        let members = match members_at.get(&state) {
            Some(m) => m.clone(),
            None => {
                let m = local_joined(engine, state)?;
                members_at.insert(state, m.clone());
                m
            }
        };
        let mut targets: Vec<OwnedUserId> = members;
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(invitee) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && invitee.server_name() == engine.server_name
            && pdu.content_value().get("membership").and_then(Value::as_str) == Some("invite")
            && !targets.contains(&invitee)
        {
            targets.push(invitee);
        }
        let joined = engine.rooms.state_at(state)?;
        let joined_count =
            joined.iter().filter(|p| p.kind == TimelineEventType::RoomMember && member_of(p) == Some("join")).count();
        for user in targets.iter().filter(|u| **u != pdu.sender && engine.pushers.has_pushers(u.as_str())) {
            touched.extend(notify_user(engine, &mut batch, user, &pdu, *count, &joined, joined_count).await?);
        }
    }
    engine.db.commit_unsynced(batch).await?;
    if let Some((last, _)) = rows.last() {
        *floor = (*floor).max(last.saturating_add(1).min(visible.saturating_add(1)));
    }
    touched.sort();
    touched.dedup();
    engine.pushers.announce(touched);
    Ok(rows.len() == BATCH)
}

fn member_of(p: &ArcPdu) -> Option<&'static str> {
    match p.content_value().get("membership").and_then(Value::as_str) {
        Some("join") => Some("join"),
        Some("invite") => Some("invite"),
        _ => None,
    }
}

/// Local users joined at state `snapshot`.
fn local_joined(engine: &Engine, snapshot: u64) -> Result<Vec<OwnedUserId>, EngineError> {
    let state = engine.rooms.state_at(snapshot)?;
    Ok(state
        .iter()
        .filter(|p| p.kind == TimelineEventType::RoomMember && member_of(p) == Some("join"))
        .filter_map(|p| p.state_key.as_deref().and_then(|k| UserId::parse(k).ok()))
        .filter(|u| u.server_name() == engine.server_name)
        .collect())
}

/// Queues the event's notification for each of `user`'s pushers, if their
/// rules say to notify; the keys of the pushers queued for.
async fn notify_user(
    engine: &Engine,
    batch: &mut Batch,
    user: &UserId,
    pdu: &ArcPdu,
    count: u64,
    state: &[ArcPdu],
    joined: usize,
) -> Result<Vec<String>, EngineError> {
    let rules = engine.push_rules(user)?;
    let name = engine
        .users
        .profile(user.as_str())
        .ok()
        .flatten()
        .and_then(|p| p.displayname)
        .unwrap_or_else(|| user.localpart().to_owned());
    let verdict = engine.evaluate(&rules, user, &pdu.room_id, joined, &name, pdu).await;
    if !verdict.notify {
        return Ok(Vec::new());
    }
    let unread = unread_in_all_rooms(engine, user, &pdu.room_id, count as i64).await;
    let pushers = engine.pushers.of(user.as_str())?;
    let state_content = |kind: &str, key: &str| {
        state
            .iter()
            .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(key))
            .map(|p| p.content_value())
    };
    let room_name =
        state_content("m.room.name", "").and_then(|c| c.get("name").and_then(Value::as_str).map(str::to_owned));
    let alias = state_content("m.room.canonical_alias", "")
        .and_then(|c| c.get("alias").and_then(Value::as_str).map(str::to_owned));
    let sender_name = state_content("m.room.member", pdu.sender.as_str())
        .and_then(|c| c.get("displayname").and_then(Value::as_str).map(str::to_owned));
    let mut keys = Vec::new();
    for pusher in pushers.iter().filter(|p| p.kind == "http" && p.data.url.is_some()) {
        let body = notification(
            pusher,
            pdu,
            &verdict,
            unread,
            room_name.as_deref(),
            alias.as_deref(),
            sender_name.as_deref(),
            user,
        );
        let key = pusher_key(user.as_str(), &pusher.app_id, &pusher.pushkey);
        let depth = queued_depth(engine, &key)?;
        let max = engine.config.push.max_pending.max(1);
        if depth >= max {
            // The oldest gives way: a phone shows the newest notifications.
            if let Some(row) = QUEUE.prefix(&*engine.db, &(key.clone(),), Direction::Forward)?.next() {
                let (oldest, _) = row?;
                QUEUE.delete(batch, &oldest);
                metrics::counter!("myelin_push_dropped_total", "reason" => "queue_full").increment(1);
            }
        } else {
            engine.pushers.depths.lock().insert(key.clone(), depth + 1);
        }
        let queued = serde_json::to_vec(&Queued { created_ms: now_ms(), body })
            .map_err(EngineError::encode("push notification"))?;
        QUEUE.put(batch, &(key.clone(), count), &Raw(queued))?;
        keys.push(key);
    }
    Ok(keys)
}

fn queued_depth(engine: &Engine, key: &str) -> Result<usize, EngineError> {
    if let Some(d) = engine.pushers.depths.lock().get(key) {
        return Ok(*d);
    }
    let max = engine.config.push.max_pending.max(1);
    let mut n = 0;
    for row in QUEUE.prefix(&*engine.db, &(key.to_owned(),), Direction::Forward)?.take(max) {
        row?;
        n += 1;
    }
    engine.pushers.depths.lock().insert(key.to_owned(), n);
    Ok(n)
}

/// The Push Gateway API request body for one pusher.
#[allow(clippy::too_many_arguments)]
fn notification(
    pusher: &Pusher,
    pdu: &ArcPdu,
    verdict: &crate::push::Verdict,
    unread: u64,
    room_name: Option<&str>,
    alias: Option<&str>,
    sender_name: Option<&str>,
    user: &UserId,
) -> Value {
    let mut tweaks = serde_json::Map::new();
    if let Some(sound) = &verdict.sound {
        tweaks.insert("sound".into(), json!(sound));
    }
    if verdict.highlight {
        tweaks.insert("highlight".into(), json!(true));
    }
    let mut data = serde_json::Map::new();
    if let Some(format) = &pusher.data.format {
        data.insert("format".into(), json!(format));
    }
    for (k, v) in &pusher.data.other {
        data.insert(k.clone(), v.clone());
    }
    let id_only = pusher.data.format.as_deref() == Some("event_id_only");
    let mut device = json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts / 1000,
        "data": data,
    });
    // An id-only notification carries no tweaks either (as Synapse sends it):
    // the app fetches the event and evaluates it itself.
    if !id_only {
        device["tweaks"] = Value::Object(tweaks);
    }
    // High for what rings (an invite, a call: Synapse's rule too) or
    // highlights, and for messages; a gateway may defer a low one to save
    // battery (Sygnal's webpush sends `Urgency: low`).
    let high = verdict.highlight
        || verdict.sound.is_some()
        || pdu.kind == TimelineEventType::RoomMessage
        || pdu.kind == TimelineEventType::RoomEncrypted;
    let mut n = json!({
        "event_id": pdu.event_id,
        "room_id": pdu.room_id,
        "counts": { "unread": unread },
        "devices": [device],
        "prio": if high { "high" } else { "low" },
    });
    if !id_only {
        n["type"] = json!(pdu.kind.to_string());
        n["sender"] = json!(pdu.sender);
        n["content"] = pdu.content_value();
        if let Some(name) = sender_name {
            n["sender_display_name"] = json!(name);
        }
        if let Some(name) = room_name {
            n["room_name"] = json!(name);
        }
        if let Some(alias) = alias {
            n["room_alias"] = json!(alias);
        }
        if pdu.kind == TimelineEventType::RoomMember {
            n["user_is_target"] = json!(pdu.state_key.as_deref() == Some(user.as_str()));
            n["membership"] = pdu.content_value().get("membership").cloned().unwrap_or(Value::Null);
        }
    }
    json!({ "notification": n })
}

/// Most joined rooms whose unread counts make up one notification's `counts.unread`.
const MAX_BADGE_ROOMS: usize = 2000;

/// Push Gateway API `counts.unread`: "the number of unread messages a user
/// has across all of the rooms they are a member of" (the app's badge), with
/// the notifying event's room counted up to that event. Each room's count is
/// the one `/sync` gives (its cached tally, brought up to date); at most
/// [`MAX_BADGE_ROOMS`] rooms are counted. At least 1: this event is unread.
async fn unread_in_all_rooms(engine: &Engine, user: &UserId, room: &ruma::RoomId, upto: i64) -> u64 {
    let mut total = engine.unread_counts(room, user, upto).await.map(|(n, _)| n).unwrap_or(1);
    let joined = engine.rooms.rooms_of(user.as_str()).unwrap_or_default();
    for (other, _) in joined.iter().filter(|(r, m)| m.membership == "join" && r != room).take(MAX_BADGE_ROOMS) {
        let Ok(newest) = engine.rooms.newest_position(other) else { continue };
        total += engine.unread_counts(other, user, newest).await.map(|(n, _)| n).unwrap_or(0);
    }
    total.max(1)
}
