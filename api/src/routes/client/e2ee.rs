//! End-to-end encryption key endpoints.
//!
//! Client-Server API §"Key management API": `POST /keys/upload` ("Publishes
//! end-to-end encryption keys for the device"), `POST /keys/query`
//! ("Returns the current devices and identity keys for the given users"),
//! `POST /keys/claim` ("Claims one-time keys for use in pre-key messages"),
//! `GET /keys/changes` ("Gets a list of users who have updated their device
//! identity keys since a previous sync token"); §"Cross-signing":
//! `POST /keys/device_signing/upload` (user-interactive auth when a master
//! key already exists and is being replaced) and `POST /keys/signatures/upload`
//! (signatures on other servers' users' keys are kept here and merged into
//! those keys whenever this server serves them).
//!
//! Other servers' users are asked through the Server-Server API
//! (§"End-to-End Encryption": `/user/keys/query`, `/user/keys/claim`),
//! one request per server, concurrently, within the client's `timeout`
//! (10 s by default). A server that does not answer is listed in `failures`
//! and its users are answered from the last keys we fetched, if any.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use http::Method;
use myelin_engine::e2ee::{USAGES, Upload};
use ruma::UserId;
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    auth::{Authed, query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// How long a key query waits for other servers unless the client says otherwise.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

fn object(v: &JsonValue, name: &str) -> Result<Map<String, JsonValue>, ApiError> {
    match v.get(name) {
        None | Some(JsonValue::Null) => Ok(Map::new()),
        Some(JsonValue::Object(m)) => Ok(m.clone()),
        Some(_) => Err(ApiError::bad_json(format!("`{name}` must be an object"))),
    }
}

fn remote_timeout(body: &JsonValue) -> Duration {
    body["timeout"].as_u64().map_or(DEFAULT_REMOTE_TIMEOUT, |ms| Duration::from_millis(ms.min(30_000)))
}

/// POST /_matrix/client/v3/keys/upload
pub fn upload(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let upload = Upload {
            device_keys: body.get("device_keys").filter(|v| !v.is_null()).cloned(),
            one_time_keys: object(&body, "one_time_keys")?,
            fallback_keys: object(&body, "fallback_keys")?,
        };
        let done = cx.engine.e2ee.upload(me.user_id.as_str(), &me.device_id, upload).await?;
        if done.device_keys_changed {
            crate::federation::e2ee::announce_device(&cx, &me.user_id, &me.device_id, false).await;
        }
        Ok(ok_json(&json!({ "one_time_key_counts": done.counts })))
    })
}

/// A local user's device keys as served, with the device's display name added unsigned.
pub(crate) fn local_device_keys(cx: &Ctx, user: &UserId, only: &[String]) -> Result<Map<String, JsonValue>, ApiError> {
    let names: BTreeMap<String, Option<String>> =
        cx.engine.users.devices(user.as_str())?.into_iter().map(|(d, dev)| (d, dev.display_name)).collect();
    let mut out = Map::new();
    for (device, mut keys) in cx.engine.e2ee.device_keys(user.as_str())? {
        if !only.is_empty() && !only.contains(&device) {
            continue;
        }
        // Keys outlive nothing: a device that no longer exists is not served.
        let Some(name) = names.get(&device) else { continue };
        if let Some(name) = name {
            keys["unsigned"]["device_display_name"] = json!(name);
        }
        out.insert(device, keys);
    }
    Ok(out)
}

/// Collects the keys of `users` (all local): device keys, master and self-signing keys.
pub(crate) fn local_keys(
    cx: &Ctx,
    users: &Map<String, JsonValue>,
    requester: Option<&UserId>,
) -> Result<JsonValue, ApiError> {
    let (mut device_keys, mut master, mut self_signing, mut user_signing) =
        (Map::new(), Map::new(), Map::new(), Map::new());
    for (user, devices) in users {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if user_id.server_name() != cx.engine.server_name {
            continue;
        }
        let only: Vec<String> =
            devices.as_array().into_iter().flatten().filter_map(|d| d.as_str().map(str::to_owned)).collect();
        device_keys.insert(user.clone(), JsonValue::Object(local_device_keys(cx, &user_id, &only)?));
        if let Some(k) = cx.engine.e2ee.cross_signing_key(user, "master")? {
            master.insert(user.clone(), k);
        }
        if let Some(k) = cx.engine.e2ee.cross_signing_key(user, "self_signing")? {
            self_signing.insert(user.clone(), k);
        }
        // The user-signing key is private to its owner.
        if requester == Some(&*user_id)
            && let Some(k) = cx.engine.e2ee.cross_signing_key(user, "user_signing")?
        {
            user_signing.insert(user.clone(), k);
        }
    }
    let mut out = json!({ "device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing });
    if requester.is_some() {
        out["user_signing_keys"] = JsonValue::Object(user_signing);
    }
    Ok(out)
}

/// Groups a `{user: x}` map by the users' servers, other servers only.
fn by_remote_server(cx: &Ctx, users: &Map<String, JsonValue>) -> BTreeMap<String, Map<String, JsonValue>> {
    let mut out: BTreeMap<String, Map<String, JsonValue>> = BTreeMap::new();
    for (user, v) in users {
        if let Ok(u) = UserId::parse(user.as_str())
            && u.server_name() != cx.engine.server_name
        {
            out.entry(u.server_name().to_string()).or_default().insert(user.clone(), v.clone());
        }
    }
    out
}

/// Keeps only entries of `map` about users of `server` (a server answers for its own users).
fn own_users(server: &str, map: &JsonValue) -> Map<String, JsonValue> {
    map.as_object()
        .into_iter()
        .flatten()
        .filter(|(u, _)| UserId::parse(u.as_str()).is_ok_and(|u| u.server_name().as_str() == server))
        .map(|(u, v)| (u.clone(), v.clone()))
        .collect()
}

/// Asks `server` for its users' keys; caches and returns the answer.
async fn query_remote(cx: &Ctx, server: &str, users: Map<String, JsonValue>) -> Result<JsonValue, String> {
    let body = json!({ "device_keys": users });
    let answer = cx
        .federation
        .request(&cx.engine, server, Method::POST, "/_matrix/federation/v1/user/keys/query", Some(&body), true)
        .await
        .map_err(|e| e.to_string())?;
    if !answer.status.is_success() {
        return Err(format!("{server} answered {}", answer.status));
    }
    let device_keys = own_users(server, &answer.json["device_keys"]);
    let master = own_users(server, &answer.json["master_keys"]);
    let self_signing = own_users(server, &answer.json["self_signing_keys"]);
    for (user, devices) in &device_keys {
        let devices: Vec<(String, JsonValue)> = devices
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(d, k)| k["user_id"].as_str() == Some(user) && k["device_id"].as_str() == Some(d))
            .map(|(d, k)| (d.clone(), k.clone()))
            .collect();
        let mut cross = Vec::new();
        for (usage, map) in [("master", &master), ("self_signing", &self_signing)] {
            if let Some(k) = map.get(user) {
                cross.push((usage, k.clone()));
            }
        }
        // Only a full device list replaces the cache.
        if users.get(user).and_then(|d| d.as_array()).is_none_or(|d| d.is_empty())
            && let Err(e) = cx.engine.e2ee.store_remote(user, &devices, &cross).await
        {
            tracing::warn!(%server, %user, error = %e, "could not cache remote device keys");
        }
    }
    Ok(json!({ "device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing }))
}

/// Remote users' keys as last fetched (when their server does not answer).
fn cached_keys(cx: &Ctx, users: &Map<String, JsonValue>) -> Result<JsonValue, ApiError> {
    let (mut device_keys, mut master, mut self_signing) = (Map::new(), Map::new(), Map::new());
    for user in users.keys() {
        let devices: Map<String, JsonValue> = cx.engine.e2ee.device_keys(user)?.into_iter().collect();
        if !devices.is_empty() {
            device_keys.insert(user.clone(), JsonValue::Object(devices));
        }
        if let Some(k) = cx.engine.e2ee.cross_signing_key(user, "master")? {
            master.insert(user.clone(), k);
        }
        if let Some(k) = cx.engine.e2ee.cross_signing_key(user, "self_signing")? {
            self_signing.insert(user.clone(), k);
        }
    }
    Ok(json!({ "device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing }))
}

fn merge_into(out: &mut JsonValue, part: &JsonValue) {
    for section in ["device_keys", "master_keys", "self_signing_keys"] {
        for (user, v) in part[section].as_object().into_iter().flatten() {
            out[section][user] = v.clone();
        }
    }
}

/// Merges local users' signatures on other servers' users' keys into a query answer.
fn add_foreign_signatures(cx: &Ctx, out: &mut JsonValue) -> Result<(), ApiError> {
    let foreign = |u: &str| UserId::parse(u).is_ok_and(|u| u.server_name() != cx.engine.server_name);
    for section in ["master_keys", "self_signing_keys"] {
        let Some(keys) = out[section].as_object_mut() else { continue };
        for (user, key) in keys.iter_mut().filter(|(u, _)| foreign(u)) {
            let publics: Vec<String> = key["keys"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.as_str().map(str::to_owned))
                .collect();
            for public in publics {
                cx.engine.e2ee.merge_foreign_signatures(user, &public, key)?;
            }
        }
    }
    let Some(users) = out["device_keys"].as_object_mut() else { return Ok(()) };
    for (user, devices) in users.iter_mut().filter(|(u, _)| foreign(u)) {
        for (device, keys) in devices.as_object_mut().into_iter().flatten() {
            cx.engine.e2ee.merge_foreign_signatures(user, device, keys)?;
        }
    }
    Ok(())
}

/// POST /_matrix/client/v3/keys/query
pub fn query(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let users = object(&body, "device_keys")?;
        let mut out = local_keys(&cx, &users, Some(&me.user_id))?;
        let timeout = remote_timeout(&body);
        let mut failures = Map::new();
        let asks = by_remote_server(&cx, &users).into_iter().map(|(server, wanted)| {
            let cx = cx.clone();
            async move {
                let answer = tokio::time::timeout(timeout, query_remote(&cx, &server, wanted.clone())).await;
                (server, wanted, answer)
            }
        });
        for (server, wanted, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Ok(part)) => merge_into(&mut out, &part),
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e,
                        _ => "timed out".to_owned(),
                    };
                    tracing::info!(%server, reason = %why, "remote key query failed; serving cached keys");
                    failures.insert(server, json!({}));
                    merge_into(&mut out, &cached_keys(&cx, &wanted)?);
                }
            }
        }
        add_foreign_signatures(&cx, &mut out)?;
        out["failures"] = JsonValue::Object(failures);
        Ok(ok_json(&out))
    })
}

/// Claims local one-time keys: `{user: {device: algorithm}}` → `{user: {device: {key id: key}}}`.
pub(crate) async fn claim_local(cx: &Ctx, wanted: &Map<String, JsonValue>) -> Result<Map<String, JsonValue>, ApiError> {
    let mut out = Map::new();
    for (user, devices) in wanted {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if user_id.server_name() != cx.engine.server_name {
            continue;
        }
        let mut per_device = Map::new();
        for (device, algorithm) in devices.as_object().into_iter().flatten() {
            let Some(algorithm) = algorithm.as_str() else { continue };
            if let Some((key_id, key)) = cx.engine.e2ee.claim(user, device, algorithm).await? {
                per_device.insert(device.clone(), json!({ key_id: key }));
            }
        }
        out.insert(user.clone(), JsonValue::Object(per_device));
    }
    Ok(out)
}

/// POST /_matrix/client/v3/keys/claim
pub fn claim(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let _me = require_user(&cx, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let wanted = object(&body, "one_time_keys")?;
        let mut keys = claim_local(&cx, &wanted).await?;
        let timeout = remote_timeout(&body);
        let mut failures = Map::new();
        let asks = by_remote_server(&cx, &wanted).into_iter().map(|(server, wanted)| {
            let cx = cx.clone();
            async move {
                let body = json!({ "one_time_keys": wanted });
                let ask = cx.federation.request(
                    &cx.engine,
                    &server,
                    Method::POST,
                    "/_matrix/federation/v1/user/keys/claim",
                    Some(&body),
                    true,
                );
                let answer = tokio::time::timeout(timeout, ask).await;
                (server, answer)
            }
        });
        for (server, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Ok(r)) if r.status.is_success() => keys.extend(own_users(&server, &r.json["one_time_keys"])),
                _ => {
                    failures.insert(server, json!({}));
                }
            }
        }
        Ok(ok_json(&json!({ "one_time_keys": keys, "failures": failures })))
    })
}

/// GET /_matrix/client/v3/keys/changes
pub fn changes(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let token = |name: &str| -> Result<u64, ApiError> {
            let raw =
                query_param(&req, name).ok_or_else(|| ApiError::missing_param(format!("`{name}` is required")))?;
            myelin_engine::sync::parse_token(&raw)
                .map(|(pos, _)| pos)
                .ok_or_else(|| ApiError::invalid_param(format!("bad `{name}` token")))
        };
        let (from, to) = (token("from")?, token("to")?);
        let to = to.min(cx.engine.stream.current());
        let (changed, left) = cx.engine.device_list_changes_between(&me.user_id, from, to)?;
        Ok(ok_json(&json!({ "changed": changed, "left": left })))
    })
}

/// POST /_matrix/client/v3/keys/device_signing/upload
pub fn upload_cross_signing(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let mut keys = Vec::new();
        for (usage, field) in USAGES.iter().zip(["master_key", "self_signing_key", "user_signing_key"]) {
            if let Some(k) = body.get(field).filter(|k| !k.is_null()) {
                keys.push((*usage, k.clone()));
            }
        }
        // Replacing an existing master key needs the password (§"Cross-signing",
        // user-interactive auth); setting up the first one does not.
        let existing = cx.engine.e2ee.cross_signing_key(me.user_id.as_str(), "master")?;
        let replacing = match (&existing, keys.iter().find(|(u, _)| *u == "master")) {
            (Some(old), Some((_, new))) => old != new,
            _ => false,
        };
        if replacing {
            let auth = body.get("auth").cloned().and_then(|a| serde_json::from_value(a).ok());
            if let Some(challenge) = super::account::password_uia(&cx, &me.user_id, auth).await? {
                return Ok(challenge);
            }
        }
        if existing.is_none() && !keys.iter().any(|(u, _)| *u == "master") && !keys.is_empty() {
            return Err(ApiError::invalid_param("upload the master key first"));
        }
        if cx.engine.e2ee.set_cross_signing(me.user_id.as_str(), &keys).await? {
            announce_cross_signing(&cx, &me).await;
        }
        Ok(ok_json(&json!({})))
    })
}

async fn announce_cross_signing(cx: &Ctx, me: &Authed) {
    let user = me.user_id.as_str();
    let mut content = json!({ "user_id": user });
    for (usage, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Ok(Some(k)) = cx.engine.e2ee.cross_signing_key(user, usage) {
            content[field] = k;
        }
    }
    let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
    let servers = crate::federation::servers_sharing_rooms(cx, &me.user_id);
    if let Err(e) = crate::federation::queue_durable_edu(cx, servers, &edu).await {
        tracing::warn!(user_id = %me.user_id, error = ?e, "could not queue a signing key update");
    }
}

/// POST /_matrix/client/v3/keys/signatures/upload
pub fn upload_signatures(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let targets = body.as_object().ok_or_else(|| ApiError::bad_json("body must be an object"))?;
        let mut failures = Map::new();
        let mut own_changed = false;
        let mut devices_changed: BTreeSet<String> = BTreeSet::new();
        for (target, keys) in targets {
            let Ok(target_id) = UserId::parse(target.as_str()) else { continue };
            for (key_id, signed) in keys.as_object().into_iter().flatten() {
                if target_id.server_name() != cx.engine.server_name {
                    // Kept here and merged into that key whenever we serve it.
                    if let Err(e) =
                        cx.engine.e2ee.add_foreign_signatures(me.user_id.as_str(), target, key_id, signed).await
                    {
                        failures.entry(target.clone()).or_insert_with(|| json!({}))[key_id] =
                            json!({ "errcode": "M_INVALID_SIGNATURE", "error": e.to_string() });
                    }
                    continue;
                }
                match cx.engine.e2ee.add_signatures(me.user_id.as_str(), target, key_id, signed).await {
                    Ok(changed) => {
                        if changed && *target == me.user_id.as_str() {
                            own_changed = true;
                            devices_changed.insert(key_id.clone());
                        }
                    }
                    Err(e) => {
                        failures.entry(target.clone()).or_insert_with(|| json!({}))[key_id] =
                            json!({ "errcode": "M_INVALID_SIGNATURE", "error": e.to_string() });
                    }
                }
            }
        }
        if own_changed {
            let mine = cx.engine.users.devices(me.user_id.as_str())?;
            for device in devices_changed.iter().filter(|d| mine.iter().any(|(id, _)| id == *d)) {
                crate::federation::e2ee::announce_device(&cx, &me.user_id, device, false).await;
            }
            announce_cross_signing(&cx, &me).await;
        }
        Ok(ok_json(&json!({ "failures": failures })))
    })
}
