//! Device lists across servers (Server-Server API §"Device Management",
//! §"Cross-signing"): the `m.device_list_update` EDU, sent to every server
//! sharing a room with the user when a device's keys change or it is
//! deleted, and `m.signing_key_update`. Both are durable queue rows (a user
//! must not miss a new device), and both are accepted only about the
//! origin's own users; they record a device-list change, so local clients
//! see the user in `/sync` `device_lists.changed` and fetch the keys again.
//!
//! Our updates carry no `prev_id` chain: a receiver that tracks the list
//! (Synapse) then re-fetches the whole list from `/user/devices`, which is
//! correct if one extra request per change. So `stream_id` only has to
//! increase: it is the current stream position, at or after every change.

use std::collections::BTreeSet;

use ruma::UserId;
use serde_json::{Value as JsonValue, json};

use super::FederationError;
use super::keys_query;
use crate::Engine;

/// Other servers with a member joined to a room `user` is joined to: who hears of the user's changes.
pub fn servers_sharing_rooms(engine: &Engine, user: &UserId) -> Result<BTreeSet<String>, FederationError> {
    let mut servers = BTreeSet::new();
    for (room, m) in engine.rooms.rooms_of(user.as_str())? {
        if m.membership == "join" {
            servers.extend(engine.rooms.joined_servers_now(&room)?);
        }
    }
    servers.remove(engine.server_name.as_str());
    Ok(servers)
}

/// Queues an EDU that must not be lost for `servers` in the durable federation queue.
pub async fn queue_durable_edu(
    engine: &Engine,
    servers: impl IntoIterator<Item = String>,
    edu: &JsonValue,
) -> Result<(), FederationError> {
    let servers: Vec<String> = servers.into_iter().collect();
    if servers.is_empty() {
        return Ok(());
    }
    engine.rooms.queue_edu(&servers, edu).await?;
    engine.federation.edu_ready.notify_one();
    Ok(())
}

/// Tells every server sharing a room with `user` that `device` changed (or is gone).
pub async fn announce_device(engine: &Engine, user: &UserId, device: &str, deleted: bool) {
    // Any increasing number will do: with no `prev_id` chain the receiver re-fetches.
    let stream_id = engine.stream.current();
    let mut content = serde_json::Map::new();
    content.insert("user_id".into(), json!(user));
    content.insert("device_id".into(), json!(device));
    content.insert("stream_id".into(), json!(stream_id));
    content.insert("prev_id".into(), json!([]));
    content.insert("deleted".into(), json!(deleted));
    if !deleted
        && let Ok(mut keys) = keys_query::local_device_keys(engine, user, &[device.to_owned()])
        && let Some(mut k) = keys.remove(device)
    {
        if let Some(name) = keys_query::display_name_of(&k) {
            content.insert("device_display_name".into(), json!(name));
        }
        if let Some(o) = k.as_object_mut() {
            o.remove("unsigned");
        }
        content.insert("keys".into(), k);
    }
    let edu = json!({ "edu_type": "m.device_list_update", "content": content });
    let servers = servers_sharing_rooms(engine, user);
    tracing::debug!(user_id = %user, device, ?servers, "announcing a device list update");
    let queued = match servers {
        Ok(servers) => queue_durable_edu(engine, servers, &edu).await,
        Err(e) => Err(e),
    };
    if let Err(e) = queued {
        tracing::warn!(user_id = %user, error = %e, "could not queue a device list update");
    }
}

/// Tells every server sharing a room with `user` about their cross-signing keys.
pub async fn announce_cross_signing(engine: &Engine, user: &UserId) {
    let mut content = serde_json::Map::new();
    content.insert("user_id".into(), json!(user));
    for (usage, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Ok(Some(k)) = engine.e2ee.cross_signing_key(user.as_str(), usage) {
            content.insert(field.into(), k);
        }
    }
    let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
    let queued = match servers_sharing_rooms(engine, user) {
        Ok(servers) => queue_durable_edu(engine, servers, &edu).await,
        Err(e) => Err(e),
    };
    if let Err(e) = queued {
        tracing::warn!(user_id = %user, error = %e, "could not queue a signing key update");
    }
}

/// Forgets a deleted device's keys (telling other servers if it had any)
/// and the pushers it set: a logged-out phone gets no more notifications.
pub async fn device_removed(engine: &Engine, user: &UserId, device: &str) -> Result<(), FederationError> {
    if let Err(e) = engine.pushers.remove_device(user.as_str(), device).await {
        tracing::warn!(%user, device, error = %e, "could not remove the device's pushers");
    }
    if engine.e2ee.remove_device(user.as_str(), device).await? {
        announce_device(engine, user, device, true).await;
    }
    Ok(())
}

fn origin_user(origin: &str, content: &JsonValue) -> Option<ruma::OwnedUserId> {
    let user = UserId::parse(content.get("user_id")?.as_str()?).ok()?;
    (user.server_name().as_str() == origin).then_some(user)
}

use super::edu::dropped;

/// Most bytes of one remote device's keys or one cross-signing key kept.
const MAX_KEYS_BYTES: usize = 16 * 1024;

/// Whether `user` (of another server) is joined to a room this server holds:
/// only then do its device-list and signing-key updates concern anyone here
/// (as Synapse decides). Without it a peer could store keys and change-log
/// rows for every user id it makes up.
fn shares_a_room_here(engine: &Engine, user: &UserId) -> bool {
    engine.rooms.all_rooms().is_ok_and(|rooms| engine.shares_room(user.as_str(), &rooms).unwrap_or(false))
}

/// Whether this server holds cached keys of `user`'s `device`.
fn holds_device(engine: &Engine, user: &UserId, device: &str) -> bool {
    engine.e2ee.device_keys(user.as_str()).is_ok_and(|d| d.iter().any(|(id, _)| id == device))
}

/// An inbound `m.device_list_update`.
pub async fn receive_device_list_update(engine: &Engine, origin: &str, content: &JsonValue) {
    let device = content.get("device_id").and_then(JsonValue::as_str);
    let (Some(user), Some(device)) = (origin_user(origin, content), device) else { return };
    let deleted = content.get("deleted").and_then(JsonValue::as_bool) == Some(true);
    // A deletion of a device still cached is applied without a shared room: it
    // only removes, and a deactivated user's leave can arrive before it.
    let concerns_us = shares_a_room_here(engine, &user) || (deleted && holds_device(engine, &user, device));
    if !concerns_us {
        dropped("m.device_list_update", "no_shared_room");
        return;
    }
    if content.get("keys").is_some_and(|k| k.to_string().len() > MAX_KEYS_BYTES) {
        dropped("m.device_list_update", "too_large");
        return;
    }
    let keys = if deleted {
        Some(None)
    } else {
        content
            .get("keys")
            .filter(|k| {
                k.get("user_id").and_then(JsonValue::as_str) == Some(user.as_str())
                    && k.get("device_id").and_then(JsonValue::as_str) == Some(device)
            })
            .map(Some)
    };
    tracing::debug!(%origin, user_id = %user, device, "device list update received");
    // Before the change is visible (a client told of it must not be answered
    // from the list cached before it) and after (a query that started in
    // between must not be trusted).
    engine.remote_lists.updates.bump(user.as_str());
    if let Err(e) = engine.e2ee.remote_device_changed(user.as_str(), device, keys).await {
        tracing::warn!(%origin, error = %e, "could not record a device list update");
    }
    engine.remote_lists.updates.bump(user.as_str());
}

/// An inbound `m.signing_key_update`.
pub async fn receive_signing_key_update(engine: &Engine, origin: &str, content: &JsonValue) {
    let Some(user) = origin_user(origin, content) else { return };
    if !shares_a_room_here(engine, &user) {
        dropped("m.signing_key_update", "no_shared_room");
        return;
    }
    if content.to_string().len() > 2 * MAX_KEYS_BYTES {
        dropped("m.signing_key_update", "too_large");
        return;
    }
    let mut keys = Vec::new();
    for (usage, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Some(k) =
            content.get(field).filter(|k| k.get("user_id").and_then(JsonValue::as_str) == Some(user.as_str()))
        {
            keys.push((usage, k.clone()));
        }
    }
    // Around the change, as for a device-list update.
    engine.remote_lists.updates.bump(user.as_str());
    if let Err(e) = engine.e2ee.remote_cross_signing_changed(user.as_str(), &keys).await {
        tracing::warn!(%origin, error = %e, "could not record a signing key update");
    }
    engine.remote_lists.updates.bump(user.as_str());
}
