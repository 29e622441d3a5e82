//! End-to-end encryption across servers.
//!
//! Server-Server API §"End-to-End Encryption": `GET /_matrix/federation/v1/user/devices/{userId}`
//! ("Gets information on all of the user's devices"), `POST
//! /_matrix/federation/v1/user/keys/query` ("Returns the current devices and
//! identity keys for the given users"), `POST /_matrix/federation/v1/user/keys/claim`
//! ("Claims one-time keys for use in pre-key messages"); §"Device Management":
//! the `m.device_list_update` EDU, sent to every server sharing a room with the
//! user when a device's keys change or it is deleted, and §"Cross-signing":
//! `m.signing_key_update`. Both EDUs are accepted only about the origin's own
//! users; they record a device-list change, so local clients see the user in
//! `/sync` `device_lists.changed` and fetch the keys again.
//!
//! Our updates carry no `prev_id` chain: a receiver that tracks the list
//! (Synapse) then re-fetches the whole list from `/user/devices`, which is
//! correct if one extra request per change. So `stream_id` only has to
//! increase: it is the current stream position, at or after every change.

use ruma::UserId;
use serde_json::{Value as JsonValue, json};

use crate::{
    error::ApiError,
    federation::require_server,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
    routes::client::e2ee::{claim_local, local_device_keys, local_keys},
};

/// Tells every server sharing a room with `user` that `device` changed (or is gone).
pub async fn announce_device(cx: &Ctx, user: &UserId, device: &str, deleted: bool) {
    // Any increasing number will do: with no `prev_id` chain the receiver re-fetches.
    let stream_id = cx.engine.stream.current();
    let mut content = json!({
        "user_id": user, "device_id": device, "stream_id": stream_id, "prev_id": [], "deleted": deleted,
    });
    if !deleted
        && let Ok(mut keys) = local_device_keys(cx, user, &[device.to_owned()])
        && let Some(mut k) = keys.remove(device)
    {
        if let Some(name) = k["unsigned"]["device_display_name"].as_str() {
            content["device_display_name"] = json!(name);
        }
        if let Some(o) = k.as_object_mut() {
            o.remove("unsigned");
        }
        content["keys"] = k;
    }
    let edu = json!({ "edu_type": "m.device_list_update", "content": content });
    if let Err(e) = super::queue_durable_edu(cx, super::servers_sharing_rooms(cx, user), &edu).await {
        tracing::warn!(user_id = %user, error = ?e, "could not queue a device list update");
    }
}

/// Forgets a deleted device's keys and tells other servers if it had any.
pub async fn device_removed(cx: &Ctx, user: &UserId, device: &str) -> Result<(), ApiError> {
    if cx.engine.e2ee.remove_device(user.as_str(), device).await? {
        announce_device(cx, user, device, true).await;
    }
    Ok(())
}

fn local_user(cx: &Ctx, raw: &str) -> Result<ruma::OwnedUserId, ApiError> {
    let user = UserId::parse(raw).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if user.server_name() != cx.engine.server_name {
        return Err(ApiError::invalid_param(format!("{user} is not a user of this server")));
    }
    Ok(user)
}

/// GET /_matrix/federation/v1/user/devices/{userId}
pub fn user_devices(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let user = local_user(&cx, req.param("user_id")?)?;
        if !cx.engine.users.exists(&user)? {
            return Err(ApiError::not_found("no such user"));
        }
        let mut devices = Vec::new();
        for (device, mut keys) in local_device_keys(&cx, &user, &[])? {
            let mut entry = json!({ "device_id": device });
            if let Some(name) = keys["unsigned"]["device_display_name"].as_str() {
                entry["device_display_name"] = json!(name);
            }
            if let Some(o) = keys.as_object_mut() {
                o.remove("unsigned");
            }
            entry["keys"] = keys;
            devices.push(entry);
        }
        // At or after the user's last device-list change, and increasing.
        let stream_id = cx.engine.stream.current();
        let mut body = json!({ "user_id": user, "stream_id": stream_id, "devices": devices });
        for (usage, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
            if let Some(k) = cx.engine.e2ee.cross_signing_key(user.as_str(), usage)? {
                body[field] = k;
            }
        }
        tracing::debug!(%origin, user_id = %user, "device list fetched over federation");
        Ok(ok_json(&body))
    })
}

/// POST /_matrix/federation/v1/user/keys/query
pub fn keys_query(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let _origin = require_server(&cx, &req).await?;
        let body: JsonValue = parse_json(&req.body)?;
        let users = body["device_keys"].as_object().cloned().unwrap_or_default();
        Ok(ok_json(&local_keys(&cx, &users, None)?))
    })
}

/// POST /_matrix/federation/v1/user/keys/claim
pub fn keys_claim(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let _origin = require_server(&cx, &req).await?;
        let body: JsonValue = parse_json(&req.body)?;
        let wanted = body["one_time_keys"].as_object().cloned().unwrap_or_default();
        Ok(ok_json(&json!({ "one_time_keys": claim_local(&cx, &wanted).await? })))
    })
}

fn origin_user(origin: &str, content: &JsonValue) -> Option<ruma::OwnedUserId> {
    let user = UserId::parse(content["user_id"].as_str()?).ok()?;
    (user.server_name().as_str() == origin).then_some(user)
}

/// An inbound `m.device_list_update`.
pub async fn receive_device_list_update(cx: &Ctx, origin: &str, content: &JsonValue) {
    let (Some(user), Some(device)) = (origin_user(origin, content), content["device_id"].as_str()) else { return };
    let keys = if content["deleted"].as_bool() == Some(true) {
        Some(None)
    } else {
        content
            .get("keys")
            .filter(|k| k["user_id"].as_str() == Some(user.as_str()) && k["device_id"].as_str() == Some(device))
            .map(Some)
    };
    if let Err(e) = cx.engine.e2ee.remote_device_changed(user.as_str(), device, keys).await {
        tracing::warn!(%origin, error = %e, "could not record a device list update");
    }
}

/// An inbound `m.signing_key_update`.
pub async fn receive_signing_key_update(cx: &Ctx, origin: &str, content: &JsonValue) {
    let Some(user) = origin_user(origin, content) else { return };
    let mut keys = Vec::new();
    for (usage, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Some(k) = content.get(field).filter(|k| k["user_id"].as_str() == Some(user.as_str())) {
            keys.push((usage, k.clone()));
        }
    }
    if let Err(e) = cx.engine.e2ee.remote_cross_signing_changed(user.as_str(), &keys).await {
        tracing::warn!(%origin, error = %e, "could not record a signing key update");
    }
}
