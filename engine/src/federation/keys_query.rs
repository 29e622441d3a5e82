//! Device and cross-signing keys as served to clients and other servers.
//!
//! Client-Server API §"Key management API" (`/keys/query`, `/keys/claim`)
//! and Server-Server API §"End-to-End Encryption" (`/user/keys/query`,
//! `/user/keys/claim`, `/user/devices`): local users' keys come from the
//! e2ee tables; other servers' users are asked of their server (one request
//! per server) and cached, and a server that does not answer gets its
//! users served from that cache. Signatures local users made on other
//! servers' keys are merged in whenever those keys are served.

use std::collections::BTreeMap;

use http::Method;
use ruma::UserId;
use serde_json::{Map, Value as JsonValue, json};

use super::FederationError;
use crate::Engine;

/// Sets `unsigned.device_display_name` on a device-keys object, replacing an
/// `unsigned` that is not an object (a client may have uploaded anything there).
fn set_display_name(keys: &mut JsonValue, name: &str) {
    let Some(object) = keys.as_object_mut() else { return };
    let unsigned = object.entry("unsigned").or_insert_with(|| json!({}));
    if !unsigned.is_object() {
        *unsigned = json!({});
    }
    if let Some(u) = unsigned.as_object_mut() {
        u.insert("device_display_name".into(), json!(name));
    }
}

/// The display name a device-keys object carries in `unsigned`, if any.
pub fn display_name_of(keys: &JsonValue) -> Option<&str> {
    keys.get("unsigned")?.get("device_display_name")?.as_str()
}

/// A local user's device keys as served (only the devices in `only`, all when
/// empty), with each device's display name added unsigned.
pub fn local_device_keys(
    engine: &Engine,
    user: &UserId,
    only: &[String],
) -> Result<Map<String, JsonValue>, FederationError> {
    let names: BTreeMap<String, Option<String>> =
        engine.users.devices(user.as_str())?.into_iter().map(|(d, dev)| (d, dev.display_name)).collect();
    let mut out = Map::new();
    for (device, mut keys) in engine.e2ee.device_keys(user.as_str())? {
        if !only.is_empty() && !only.contains(&device) {
            continue;
        }
        // Keys outlive nothing: a device that no longer exists is not served.
        let Some(name) = names.get(&device) else { continue };
        if let Some(name) = name {
            set_display_name(&mut keys, name);
        }
        out.insert(device, keys);
    }
    Ok(out)
}

/// Collects the keys of `users` (local ones only): device keys, master and
/// self-signing keys, and the requester's own user-signing key.
pub fn local_keys(
    engine: &Engine,
    users: &Map<String, JsonValue>,
    requester: Option<&UserId>,
) -> Result<JsonValue, FederationError> {
    let (mut device_keys, mut master, mut self_signing, mut user_signing) =
        (Map::new(), Map::new(), Map::new(), Map::new());
    for (user, devices) in users {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if user_id.server_name() != engine.server_name {
            continue;
        }
        let only: Vec<String> =
            devices.as_array().into_iter().flatten().filter_map(|d| d.as_str().map(str::to_owned)).collect();
        device_keys.insert(user.clone(), JsonValue::Object(local_device_keys(engine, &user_id, &only)?));
        if let Some(k) = engine.e2ee.cross_signing_key(user, "master")? {
            master.insert(user.clone(), k);
        }
        if let Some(k) = engine.e2ee.cross_signing_key(user, "self_signing")? {
            self_signing.insert(user.clone(), k);
        }
        // The user-signing key is private to its owner.
        if requester == Some(&*user_id)
            && let Some(k) = engine.e2ee.cross_signing_key(user, "user_signing")?
        {
            user_signing.insert(user.clone(), k);
        }
    }
    let mut out = json!({ "device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing });
    if requester.is_some()
        && let Some(o) = out.as_object_mut()
    {
        o.insert("user_signing_keys".into(), JsonValue::Object(user_signing));
    }
    Ok(out)
}

/// Groups a `{user: x}` map by the users' servers, other servers only.
pub fn by_remote_server(engine: &Engine, users: &Map<String, JsonValue>) -> BTreeMap<String, Map<String, JsonValue>> {
    let mut out: BTreeMap<String, Map<String, JsonValue>> = BTreeMap::new();
    for (user, v) in users {
        if let Ok(u) = UserId::parse(user.as_str())
            && u.server_name() != engine.server_name
        {
            out.entry(u.server_name().to_string()).or_default().insert(user.clone(), v.clone());
        }
    }
    out
}

/// Keeps only entries of `map` about users of `server` (a server answers for its own users).
fn own_users(server: &str, map: Option<&JsonValue>) -> Map<String, JsonValue> {
    map.and_then(JsonValue::as_object)
        .into_iter()
        .flatten()
        .filter(|(u, _)| UserId::parse(u.as_str()).is_ok_and(|u| u.server_name().as_str() == server))
        .map(|(u, v)| (u.clone(), v.clone()))
        .collect()
}

/// Asks `server` for its users' keys; caches and returns the answer.
pub async fn query_remote(
    engine: &Engine,
    server: &str,
    users: Map<String, JsonValue>,
) -> Result<JsonValue, FederationError> {
    // An update that arrives while the query is out is newer than its answer:
    // such a user's answer is passed on but does not replace the cache.
    let before: BTreeMap<String, u64> = users.keys().map(|u| (u.clone(), engine.remote_lists.updates.of(u))).collect();
    let body = json!({ "device_keys": users });
    let answer =
        engine.remote(server).json(Method::POST, "/_matrix/federation/v1/user/keys/query", Some(&body)).await?;
    if !answer.status.is_success() {
        return Err(FederationError::BadResponse {
            server: server.to_owned(),
            reason: format!("answered {}", answer.status),
        });
    }
    let device_keys = own_users(server, answer.json.get("device_keys"));
    let master = own_users(server, answer.json.get("master_keys"));
    let self_signing = own_users(server, answer.json.get("self_signing_keys"));
    for (user, devices) in &device_keys {
        let devices: Vec<(String, JsonValue)> = devices
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(d, k)| {
                k.get("user_id").and_then(JsonValue::as_str) == Some(user)
                    && k.get("device_id").and_then(JsonValue::as_str) == Some(d)
            })
            .map(|(d, k)| (d.clone(), k.clone()))
            .collect();
        let mut cross = Vec::new();
        for (usage, map) in [("master", &master), ("self_signing", &self_signing)] {
            if let Some(k) = map.get(user) {
                cross.push((usage, k.clone()));
            }
        }
        // Only a full device list replaces the cache, and only one not overtaken.
        let overtaken = before.get(user).is_some_and(|&g| engine.remote_lists.updates.of(user) != g);
        if overtaken {
            tracing::debug!(%server, %user, "an update came in while the keys were asked for; not cached");
        }
        if !overtaken
            && users.get(user).and_then(|d| d.as_array()).is_none_or(|d| d.is_empty())
            && let Err(e) = engine.e2ee.store_remote(user, &devices, &cross).await
        {
            tracing::warn!(%server, %user, error = %e, "could not cache remote device keys");
        }
    }
    Ok(json!({ "device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing }))
}

/// Most membership lookups one query spends finding which answered users share a room with the requester.
const SHARING_LOOKUPS: usize = 20_000;

/// Asks `server` for the keys of those of its users whose cached list is not
/// trusted (see [`crate::remote_lists`]) and serves the rest from the cache;
/// users answered whole who share a room with `requester` become trusted.
pub async fn query_remote_tracked(
    engine: &Engine,
    requester: &UserId,
    server: &str,
    users: Map<String, JsonValue>,
) -> Result<JsonValue, FederationError> {
    let gens = &engine.rooms.member_gens;
    let (mut cached, mut ask) = (Map::new(), Map::new());
    for (user, devices) in users {
        let whole = devices.as_array().is_none_or(|d| d.is_empty());
        if whole && engine.remote_lists.trusted(gens, &user) {
            cached.insert(user, devices);
        } else {
            ask.insert(user, devices);
        }
    }
    tracing::debug!(%requester, %server, cached = ?cached.keys().collect::<Vec<_>>(), asked = ?ask.keys().collect::<Vec<_>>(),
        "remote key query");
    metrics::counter!("myelin_remote_key_queries_total", "answered" => "cache").increment(cached.len() as u64);
    metrics::counter!("myelin_remote_key_queries_total", "answered" => "server").increment(ask.len() as u64);
    let mut out = cached_keys(engine, &cached)?;
    if let Some(listed) = out.get_mut("device_keys").and_then(JsonValue::as_object_mut) {
        // A tracked user with no devices is still an answer: an empty list.
        for user in cached.keys() {
            listed.entry(user.clone()).or_insert_with(|| json!({}));
        }
    }
    if ask.is_empty() {
        return Ok(out);
    }
    let marks: Vec<(String, crate::remote_lists::FetchMark)> = ask
        .iter()
        .filter(|(_, d)| d.as_array().is_none_or(|d| d.is_empty()))
        .map(|(u, _)| (u.clone(), engine.remote_lists.mark(gens, u)))
        .collect();
    let started = std::time::Instant::now();
    let part = query_remote(engine, server, ask).await;
    tracing::debug!(%requester, %server, took_ms = started.elapsed().as_millis() as u64, ok = part.is_ok(),
        "remote key query answered");
    let part = part?;
    let answered: Vec<&(String, crate::remote_lists::FetchMark)> =
        marks.iter().filter(|(u, _)| part["device_keys"].get(u.as_str()).is_some_and(JsonValue::is_object)).collect();
    let candidates: Vec<&str> = answered.iter().map(|(u, _)| u.as_str()).collect();
    let sharing = sharing_a_room(engine, requester, server, &candidates)?;
    for (user, mark) in answered {
        if sharing.contains(user.as_str()) {
            engine.remote_lists.trust(user, *mark);
        }
    }
    merge_into(&mut out, &part);
    Ok(out)
}

/// Those of `users` (all of `server`) joined to a room `requester` is joined to.
fn sharing_a_room<'a>(
    engine: &Engine,
    requester: &UserId,
    server: &str,
    users: &[&'a str],
) -> Result<std::collections::HashSet<&'a str>, FederationError> {
    let mut found = std::collections::HashSet::new();
    let mut lookups = 0;
    for (room, m) in engine.rooms.rooms_of(requester.as_str())? {
        if m.membership != "join" || !engine.rooms.joined_servers_now(&room)?.iter().any(|s| s == server) {
            continue;
        }
        for user in users {
            if found.contains(user) {
                continue;
            }
            if lookups >= SHARING_LOOKUPS {
                return Ok(found);
            }
            lookups += 1;
            let joined = engine
                .rooms
                .state_event(&room, "m.room.member", user)?
                .is_some_and(|p| p.content_value().get("membership").and_then(JsonValue::as_str) == Some("join"));
            if joined {
                found.insert(*user);
            }
        }
        if found.len() == users.len() {
            break;
        }
    }
    Ok(found)
}

/// Remote users' keys as last fetched (when their server does not answer).
pub fn cached_keys(engine: &Engine, users: &Map<String, JsonValue>) -> Result<JsonValue, FederationError> {
    let (mut device_keys, mut master, mut self_signing) = (Map::new(), Map::new(), Map::new());
    for user in users.keys() {
        let devices: Map<String, JsonValue> = engine.e2ee.device_keys(user)?.into_iter().collect();
        if !devices.is_empty() {
            device_keys.insert(user.clone(), JsonValue::Object(devices));
        }
        if let Some(k) = engine.e2ee.cross_signing_key(user, "master")? {
            master.insert(user.clone(), k);
        }
        if let Some(k) = engine.e2ee.cross_signing_key(user, "self_signing")? {
            self_signing.insert(user.clone(), k);
        }
    }
    Ok(json!({ "device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing }))
}

/// Copies every user's entry of each section of `part` into `out`.
pub fn merge_into(out: &mut JsonValue, part: &JsonValue) {
    for section in ["device_keys", "master_keys", "self_signing_keys"] {
        let Some(entries) = part.get(section).and_then(JsonValue::as_object) else { continue };
        let Some(target) = out.as_object_mut() else { return };
        let target = target.entry(section).or_insert_with(|| json!({}));
        if let Some(target) = target.as_object_mut() {
            for (user, v) in entries {
                target.insert(user.clone(), v.clone());
            }
        }
    }
}

/// Merges local users' signatures on other servers' users' keys into a query answer.
pub fn add_foreign_signatures(engine: &Engine, out: &mut JsonValue) -> Result<(), FederationError> {
    let foreign = |u: &str| UserId::parse(u).is_ok_and(|u| u.server_name() != engine.server_name);
    for section in ["master_keys", "self_signing_keys"] {
        let Some(keys) = out.get_mut(section).and_then(JsonValue::as_object_mut) else { continue };
        for (user, key) in keys.iter_mut().filter(|(u, _)| foreign(u)) {
            let publics: Vec<String> = key
                .get("keys")
                .and_then(JsonValue::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.as_str().map(str::to_owned))
                .collect();
            for public in publics {
                engine.e2ee.merge_foreign_signatures(user, &public, key)?;
            }
        }
    }
    let Some(users) = out.get_mut("device_keys").and_then(JsonValue::as_object_mut) else { return Ok(()) };
    for (user, devices) in users.iter_mut().filter(|(u, _)| foreign(u)) {
        for (device, keys) in devices.as_object_mut().into_iter().flatten() {
            engine.e2ee.merge_foreign_signatures(user, device, keys)?;
        }
    }
    Ok(())
}

/// Claims local one-time keys: `{user: {device: algorithm}}` → `{user: {device: {key id: key}}}`.
pub async fn claim_local(
    engine: &Engine,
    wanted: &Map<String, JsonValue>,
) -> Result<Map<String, JsonValue>, FederationError> {
    let mut asks: Vec<(&str, &str, &str)> = Vec::new();
    let mut out = Map::new();
    for (user, devices) in wanted {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if user_id.server_name() != engine.server_name {
            continue;
        }
        out.insert(user.clone(), json!({}));
        for (device, algorithm) in devices.as_object().into_iter().flatten() {
            if let Some(algorithm) = algorithm.as_str() {
                asks.push((user.as_str(), device.as_str(), algorithm));
            }
        }
    }
    let claimed = engine.e2ee.claim_many(&asks).await?;
    for ((user, device, _), got) in asks.iter().zip(claimed) {
        if let Some((key_id, key)) = got
            && let Some(per_device) = out.get_mut(*user).and_then(JsonValue::as_object_mut)
        {
            per_device.insert((*device).to_owned(), json!({ key_id: key }));
        }
    }
    Ok(out)
}

/// Claims one-time keys of `server`'s users from that server.
pub async fn claim_remote(
    engine: &Engine,
    server: &str,
    wanted: Map<String, JsonValue>,
) -> Result<Map<String, JsonValue>, FederationError> {
    let body = json!({ "one_time_keys": wanted });
    let r = engine.remote(server).json(Method::POST, "/_matrix/federation/v1/user/keys/claim", Some(&body)).await?;
    if !r.status.is_success() {
        return Err(FederationError::BadResponse {
            server: server.to_owned(),
            reason: format!("answered {}", r.status),
        });
    }
    Ok(own_users(server, r.json.get("one_time_keys")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_name_replaces_an_unsigned_that_is_not_an_object() {
        for unsigned in [json!(1), json!("x"), json!([1]), json!(null)] {
            let mut keys = json!({ "device_id": "D", "unsigned": unsigned });
            set_display_name(&mut keys, "phone");
            assert_eq!(display_name_of(&keys), Some("phone"));
        }
        let mut keys = json!({ "device_id": "D", "unsigned": { "age": 3 } });
        set_display_name(&mut keys, "laptop");
        assert_eq!(keys["unsigned"], json!({ "age": 3, "device_display_name": "laptop" }));
        let mut not_object = json!([1, 2]);
        set_display_name(&mut not_object, "x");
        assert_eq!(not_object, json!([1, 2]));
    }
}
