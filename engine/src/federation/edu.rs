//! EDUs received in a transaction (Server-Server API §"EDUs"): to-device
//! messages (§"Send-to-device messaging", delivered once per `message_id`),
//! device-list and signing-key updates ([`super::e2ee`]), presence,
//! typing and read receipts. Each is accepted only about the origin's own
//! users; one that does not parse is dropped (an EDU has no answer).

use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue};

use super::serve::acl_allows;
use crate::Engine;

/// How long a remote user's typing notice lasts without a renewal.
const TYPING_TIMEOUT: Duration = Duration::from_secs(30);
/// Most presence updates taken from one EDU.
const MAX_PRESENCE_PER_EDU: usize = 1000;

/// One EDU: its type and content.
#[derive(Debug, Deserialize)]
struct Edu {
    edu_type: String,
    #[serde(default)]
    content: JsonValue,
}

/// `m.direct_to_device` content.
#[derive(Debug, Deserialize)]
struct DirectToDevice {
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: String,
    message_id: Option<String>,
    #[serde(default)]
    messages: Map<String, JsonValue>,
}

/// `m.typing` content.
#[derive(Debug, Deserialize)]
struct Typing {
    room_id: OwnedRoomId,
    user_id: OwnedUserId,
    #[serde(default)]
    typing: bool,
}

/// `m.presence` content.
#[derive(Debug, Deserialize)]
struct Presence {
    #[serde(default)]
    push: Vec<JsonValue>,
}

/// One entry of `m.presence`'s `push`.
#[derive(Debug, Deserialize)]
struct PresenceUpdate {
    user_id: OwnedUserId,
    presence: String,
    status_msg: Option<String>,
    /// Read leniently: a malformed value only loses the activity time.
    #[serde(default)]
    last_active_ago: JsonValue,
}

/// One user's receipt in `m.receipt`.
#[derive(Debug, Deserialize)]
struct UserReceipt {
    #[serde(default)]
    event_ids: Vec<String>,
    #[serde(default)]
    data: ReceiptData,
}

/// A receipt's `data`.
#[derive(Debug, Default, Deserialize)]
struct ReceiptData {
    thread_id: Option<String>,
}

/// Applies one EDU from `origin`.
pub async fn receive_edu(engine: &Engine, origin: &str, edu: &JsonValue) {
    let Ok(edu) = Edu::deserialize(edu) else {
        tracing::debug!(%origin, "dropping an EDU that does not parse");
        return;
    };
    tracing::debug!(%origin, edu_type = %edu.edu_type, content = %edu.content, "EDU received");
    let content = &edu.content;
    match edu.edu_type.as_str() {
        "m.direct_to_device" => {
            if let Ok(message) = DirectToDevice::deserialize(content) {
                direct_to_device(engine, origin, message).await;
            }
        }
        "m.device_list_update" => super::e2ee::receive_device_list_update(engine, origin, content).await,
        "m.signing_key_update" => super::e2ee::receive_signing_key_update(engine, origin, content).await,
        "m.presence" if engine.config.presence.enabled => {
            let Ok(presence) = Presence::deserialize(content) else { return };
            for item in presence.push.iter().take(MAX_PRESENCE_PER_EDU) {
                let Ok(update) = PresenceUpdate::deserialize(item) else { continue };
                let state = update.presence.as_str();
                if update.user_id.server_name().as_str() != origin
                    || !matches!(state, "online" | "offline" | "unavailable")
                {
                    continue;
                }
                let status = update.status_msg.map(|s| s.chars().take(1000).collect());
                let ago = update.last_active_ago.as_u64().map(std::time::Duration::from_millis);
                engine.ephemeral.set_remote_presence(&update.user_id, state, status, ago);
                engine.push_presence_to_appservices(&update.user_id);
            }
        }
        "m.typing" => {
            let Ok(typing) = Typing::deserialize(content) else { return };
            if typing.user_id.server_name().as_str() != origin || !acl_allows(engine, &typing.room_id, origin) {
                return;
            }
            if !origin_in_room(engine, &typing.room_id, origin) {
                dropped("m.typing", "not_in_room");
                return;
            }
            if !user_joined(engine, &typing.room_id, &typing.user_id) {
                dropped("m.typing", "user_not_in_room");
                return;
            }
            engine.ephemeral.set_typing(&typing.room_id, &typing.user_id, typing.typing, TYPING_TIMEOUT);
            engine.push_typing_to_appservices(&typing.room_id);
        }
        "m.receipt" => receipts(engine, origin, content).await,
        _ => {}
    }
}

/// Largest to-device message content taken from another server, in bytes.
const MAX_TO_DEVICE_BYTES: usize = 64 * 1024;

/// Whether `origin` has a joined member in a room this server holds. Typing
/// and receipts for any other room are dropped: they would grow state keyed
/// by whatever room ids a peer makes up.
fn origin_in_room(engine: &Engine, room: &RoomId, origin: &str) -> bool {
    engine.rooms.joined_servers_now(room).is_ok_and(|servers| servers.iter().any(|s| s == origin))
}

/// Whether `user` is joined to `room` now. A server in a room may still not
/// speak for users of its own who are not: their typing and receipts would
/// grow per-room state with every user id it makes up.
fn user_joined(engine: &Engine, room: &RoomId, user: &UserId) -> bool {
    engine.shares_room(user.as_str(), &[room.to_owned()]).unwrap_or(false)
}

/// Counts (and logs at debug) an inbound EDU not taken, with why.
pub(super) fn dropped(edu_type: &'static str, reason: &'static str) {
    tracing::debug!(edu_type, reason, "inbound EDU dropped");
    metrics::counter!("myelin_federation_inbound_edus_dropped_total", "edu_type" => edu_type, "reason" => reason)
        .increment(1);
}

async fn direct_to_device(engine: &Engine, origin: &str, message: DirectToDevice) {
    if message.sender.server_name().as_str() != origin {
        return;
    }
    // The same message in a transaction resent under a new id (the sender restarted
    // between our 200 and its bookkeeping) is delivered once.
    let message_key = message.message_id.as_ref().map(|m| format!("to_device/{m}"));
    if let Some(key) = &message_key
        && engine.seen_txns.seen(origin, key).unwrap_or(false)
    {
        return;
    }
    let mut queue = Vec::new();
    for (user, devices) in &message.messages {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if user_id.server_name() != engine.server_name {
            continue;
        }
        for (device, body) in devices.as_object().into_iter().flatten() {
            match serde_json::to_vec(body) {
                // An olm message or a room key is a few KiB; an inbox holds up to
                // limits.max_to_device_per_device of them.
                Ok(bytes) if bytes.len() > MAX_TO_DEVICE_BYTES => dropped("m.direct_to_device", "too_large"),
                Ok(bytes) => queue.push((user.clone(), device.clone(), bytes)),
                Err(_) => {}
            }
        }
    }
    if !queue.is_empty()
        && let Err(e) = engine.users.send_to_device(message.sender.as_str(), &message.kind, queue).await
    {
        tracing::warn!(%origin, error = %e, "could not store to-device messages");
        return;
    }
    if let Some(key) = message_key
        && let Err(e) = engine.seen_txns.record_durable(origin, &key).await
    {
        tracing::warn!(%origin, error = %e, "could not remember a to-device message id");
    }
}

async fn receipts(engine: &Engine, origin: &str, content: &JsonValue) {
    for (room, kinds) in content.as_object().into_iter().flatten() {
        let Ok(room) = RoomId::parse(room.as_str()) else { continue };
        if !acl_allows(engine, &room, origin) {
            continue;
        }
        if !origin_in_room(engine, &room, origin) {
            dropped("m.receipt", "not_in_room");
            continue;
        }
        let Some(users) = kinds.get("m.read").and_then(JsonValue::as_object) else { continue };
        for (user, data) in users {
            let Ok(user) = UserId::parse(user.as_str()) else { continue };
            if user.server_name().as_str() != origin {
                continue;
            }
            if !user_joined(engine, &room, &user) {
                dropped("m.receipt", "user_not_in_room");
                continue;
            }
            let Ok(receipt) = UserReceipt::deserialize(data) else { continue };
            // A thread is `main` or a thread root this room holds: receipt rows are
            // keyed by thread, so a made-up thread id per receipt would grow them.
            if let Some(thread) = receipt.data.thread_id.as_deref()
                && thread != "main"
                && !engine.rooms.holds_event_in(&room, thread)
            {
                dropped("m.receipt", "unknown_thread");
                continue;
            }
            for event in &receipt.event_ids {
                // A receipt names an event of this room that we hold; anything else
                // would be a durable row written for whatever a peer makes up.
                if !engine.rooms.holds_event_in(&room, event) {
                    dropped("m.receipt", "unknown_event");
                    continue;
                }
                if let Err(e) =
                    engine.set_receipt(&room, &user, "m.read", receipt.data.thread_id.as_deref(), event).await
                {
                    tracing::debug!(%origin, room_id = %room, error = %e, "a remote receipt was not stored");
                }
            }
        }
    }
}
