//! The end-to-end encryption keys of `myelin import synapse`: each imported
//! device's identity keys (`e2e_device_keys_json`), its unclaimed one-time keys
//! (`e2e_one_time_keys_json`) and fallback keys (`e2e_fallback_keys_json`),
//! each user's newest cross-signing keys (`e2e_cross_signing_keys`), and the
//! cross-signing signatures Synapse keeps apart (`e2e_cross_signing_signatures`),
//! merged into the keys they sign as Synapse merges them when it serves them.
//!
//! Without them a client that stayed logged in believes its keys are on the
//! server while nobody can find them: other users could no longer encrypt to
//! it. A fallback key comes over unused whatever Synapse recorded.

use std::collections::{BTreeMap, HashSet};

use myelin_engine::{Engine, e2ee::Upload};
use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::{Failure, import_synapse::sql};

/// Everything read, per device and per user.
#[derive(Default)]
pub(super) struct Keys {
    uploads: BTreeMap<(String, String), Upload>,
    cross_signing: BTreeMap<String, Vec<(String, Value)>>,
    /// `(signer, signer's key id, target user, target key or device, signature)`.
    signatures: Vec<(String, String, String, String, String)>,
}

fn object(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text).ok().filter(Value::is_object)
}

fn rows<T>(db: &Connection, query: &str, f: impl Fn(&rusqlite::Row) -> rusqlite::Result<T>) -> Result<Vec<T>, Failure> {
    let mut stmt = db.prepare(query).map_err(sql)?;
    let out: Vec<T> = stmt.query_map([], f).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
    Ok(out)
}

/// Reads the keys of `users` (the accounts imported).
pub(super) fn read(db: &Connection, users: &HashSet<String>) -> Result<Keys, Failure> {
    let mut keys = Keys::default();
    for (u, d, json) in rows(db, "SELECT user_id, device_id, key_json FROM e2e_device_keys_json", |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })? {
        if users.contains(&u)
            && let Some(v) = object(&json)
        {
            keys.uploads.entry((u, d)).or_insert_with(empty).device_keys = Some(v);
        }
    }
    // One-time and fallback keys: the same columns, into the two maps of an upload.
    for (table, fallback) in [("e2e_one_time_keys_json", false), ("e2e_fallback_keys_json", true)] {
        let query = format!("SELECT user_id, device_id, algorithm, key_id, key_json FROM {table}");
        let found: Vec<(String, String, String, String, String)> =
            rows(db, &query, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        for (u, d, alg, id, json) in found {
            if users.contains(&u)
                && let Ok(v) = serde_json::from_str::<Value>(&json)
            {
                let upload = keys.uploads.entry((u, d)).or_insert_with(empty);
                let map = if fallback { &mut upload.fallback_keys } else { &mut upload.one_time_keys };
                map.insert(format!("{alg}:{id}"), v);
            }
        }
    }
    // The newest key of each type (Synapse keeps the old ones too).
    let cross = rows(db, "SELECT user_id, keytype, keydata FROM e2e_cross_signing_keys ORDER BY stream_id", |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })?;
    let mut newest: BTreeMap<(String, String), Value> = BTreeMap::new();
    for (u, usage, json) in cross {
        if users.contains(&u)
            && let Some(v) = object(&json)
        {
            newest.insert((u, usage), v);
        }
    }
    for ((u, usage), v) in newest {
        keys.cross_signing.entry(u).or_default().push((usage, v));
    }
    keys.signatures = rows(
        db,
        "SELECT user_id, key_id, target_user_id, target_device_id, signature FROM e2e_cross_signing_signatures",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?
    .into_iter()
    .filter(|(signer, ..): &(String, String, String, String, String)| users.contains(signer))
    .collect();
    Ok(keys)
}

fn empty() -> Upload {
    Upload { device_keys: None, one_time_keys: Map::new(), fallback_keys: Map::new() }
}

/// Puts `signer`'s signature `sig` with `key_id` into `key`'s `signatures`.
fn add_signature(key: &mut Value, signer: &str, key_id: &str, sig: &str) {
    if !key["signatures"].is_object() {
        key["signatures"] = Value::Object(Map::new());
    }
    if !key["signatures"][signer].is_object() {
        key["signatures"][signer] = Value::Object(Map::new());
    }
    key["signatures"][signer][key_id] = Value::String(sig.to_owned());
}

/// Whether `target` names `key` (a cross-signing key is named by its public key).
fn names(key: &Value, target: &str) -> bool {
    key["keys"].as_object().is_some_and(|k| k.values().any(|v| v.as_str() == Some(target)))
}

/// What the key import wrote.
#[derive(Debug, Default)]
pub(super) struct KeysReport {
    pub devices: usize,
    pub one_time_keys: usize,
    pub cross_signing_users: usize,
    pub signatures: usize,
    pub refused: usize,
}

/// Writes what [`read`] found.
pub(super) async fn write(engine: &Engine, mut keys: Keys) -> Result<KeysReport, Failure> {
    let mut report = KeysReport::default();
    let local = |u: &str| ruma::UserId::parse(u).is_ok_and(|u| u.server_name() == engine.server_name);
    // Signatures into the local keys they sign; those on other servers' keys are kept apart.
    let mut foreign = Vec::new();
    for (signer, key_id, target, target_key, sig) in std::mem::take(&mut keys.signatures) {
        if !local(&target) {
            foreign.push((signer, key_id, target, target_key, sig));
            continue;
        }
        if let Some(up) = keys.uploads.get_mut(&(target.clone(), target_key.clone()))
            && let Some(device) = up.device_keys.as_mut()
        {
            add_signature(device, &signer, &key_id, &sig);
            report.signatures += 1;
        } else if let Some(k) =
            keys.cross_signing.get_mut(&target).and_then(|ks| ks.iter_mut().find(|(_, k)| names(k, &target_key)))
        {
            add_signature(&mut k.1, &signer, &key_id, &sig);
            report.signatures += 1;
        }
    }
    for ((user, device), upload) in keys.uploads {
        // Only devices that came over: keys of a device nobody can log in with serve no one.
        if engine.users.device(&user, &device).map_err(|e| Failure::runtime(e.to_string()))?.is_none() {
            continue;
        }
        let otks = upload.one_time_keys.len();
        let has_device_keys = upload.device_keys.is_some();
        match engine.e2ee.upload(&user, &device, upload).await {
            Ok(_) => {
                report.devices += usize::from(has_device_keys);
                report.one_time_keys += otks;
            }
            Err(e) => {
                eprintln!("import: keys of {user} {device} refused: {e}");
                report.refused += 1;
            }
        }
    }
    for (user, list) in keys.cross_signing {
        let list: Vec<(&str, Value)> = list.iter().map(|(u, k)| (u.as_str(), k.clone())).collect();
        match engine.e2ee.set_cross_signing(&user, &list).await {
            Ok(_) => report.cross_signing_users += 1,
            Err(e) => {
                eprintln!("import: cross-signing keys of {user} refused: {e}");
                report.refused += 1;
            }
        }
    }
    for (signer, key_id, target, target_key, sig) in foreign {
        let mut signed = Value::Object(Map::new());
        add_signature(&mut signed, &signer, &key_id, &sig);
        match engine.e2ee.add_foreign_signatures(&signer, &target, &target_key, &signed).await {
            Ok(()) => report.signatures += 1,
            Err(_) => report.refused += 1,
        }
    }
    Ok(report)
}
