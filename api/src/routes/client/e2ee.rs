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

use myelin_engine::{
    e2ee::{USAGES, Upload},
    federation::keys_query,
};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// How long a key query waits for other servers unless the client says otherwise.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

fn remote_timeout(timeout: Option<u64>) -> Duration {
    timeout.map_or(DEFAULT_REMOTE_TIMEOUT, |ms| Duration::from_millis(ms.min(30_000)))
}

/// The body of `POST /keys/upload`.
#[derive(Deserialize)]
pub(crate) struct UploadBody {
    device_keys: Option<Map<String, JsonValue>>,
    one_time_keys: Option<Map<String, JsonValue>>,
    fallback_keys: Option<Map<String, JsonValue>>,
}

/// The body of `POST /keys/query`: the devices wanted per user (none listed: all).
#[derive(Deserialize)]
pub(crate) struct QueryBody {
    #[serde(default)]
    device_keys: BTreeMap<String, Vec<String>>,
    timeout: Option<u64>,
}

/// The body of `POST /keys/claim`: the algorithm wanted per user and device.
#[derive(Deserialize)]
pub(crate) struct ClaimBody {
    #[serde(default)]
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    timeout: Option<u64>,
}

/// The body of `POST /keys/device_signing/upload`.
#[derive(Deserialize)]
pub(crate) struct CrossSigningBody {
    master_key: Option<Map<String, JsonValue>>,
    self_signing_key: Option<Map<String, JsonValue>>,
    user_signing_key: Option<Map<String, JsonValue>>,
    auth: Option<JsonValue>,
}

/// A `{user: x}` map as the engine's key functions take it.
fn as_map<T: serde::Serialize>(users: BTreeMap<String, T>) -> Map<String, JsonValue> {
    users.into_iter().map(|(user, v)| (user, serde_json::to_value(v).unwrap_or(JsonValue::Null))).collect()
}

/// POST /_matrix/client/v3/keys/upload
pub fn upload(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: UploadBody = parse_json(&req.body)?;
        // `unsigned` is served back with the display name added: it must be an object.
        if let Some(unsigned) = body.device_keys.as_ref().and_then(|k| k.get("unsigned"))
            && !unsigned.is_object()
            && !unsigned.is_null()
        {
            return Err(ApiError::bad_json("device_keys.unsigned must be an object"));
        }
        let upload = Upload {
            device_keys: body.device_keys.map(JsonValue::Object),
            one_time_keys: body.one_time_keys.unwrap_or_default(),
            fallback_keys: body.fallback_keys.unwrap_or_default(),
        };
        let done = cx.engine.e2ee.upload(me.user_id.as_str(), &me.device_id, upload).await?;
        if done.device_keys_changed {
            myelin_engine::federation::e2ee::announce_device(&cx.engine, &me.user_id, &me.device_id, false).await;
        }
        Ok(ok_json(&UploadAnswer { one_time_key_counts: done.counts }))
    })
}

/// POST /_matrix/client/v3/keys/query
pub fn query(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: QueryBody = parse_json(&req.body)?;
        let users = as_map(body.device_keys);
        let mut out = keys_query::local_keys(&cx.engine, &users, Some(&me.user_id))?;
        let timeout = remote_timeout(body.timeout);
        let mut failures = Map::new();
        let asks = keys_query::by_remote_server(&cx.engine, &users).into_iter().map(|(server, wanted)| {
            let (engine, me) = (cx.engine.clone(), me.user_id.clone());
            async move {
                let ask = keys_query::query_remote_tracked(&engine, &me, &server, wanted.clone());
                let answer = tokio::time::timeout(timeout, ask).await;
                (server, wanted, answer)
            }
        });
        for (server, wanted, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Ok(part)) => keys_query::merge_into(&mut out, &part),
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::info!(%server, reason = %why, "remote key query failed; serving cached keys");
                    failures.insert(server, json!({}));
                    keys_query::merge_into(&mut out, &keys_query::cached_keys(&cx.engine, &wanted)?);
                }
            }
        }
        keys_query::add_foreign_signatures(&cx.engine, &mut out)?;
        if let Some(o) = out.as_object_mut() {
            o.insert("failures".into(), JsonValue::Object(failures));
        }
        Ok(ok_json(&out))
    })
}

/// POST /_matrix/client/v3/keys/claim
pub fn claim(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let _me = require_user(&cx, &req)?;
        let body: ClaimBody = parse_json(&req.body)?;
        let wanted = as_map(body.one_time_keys);
        let mut keys = keys_query::claim_local(&cx.engine, &wanted).await?;
        let timeout = remote_timeout(body.timeout);
        let mut failures = Map::new();
        let asks = keys_query::by_remote_server(&cx.engine, &wanted).into_iter().map(|(server, wanted)| {
            let engine = cx.engine.clone();
            async move {
                let answer = tokio::time::timeout(timeout, keys_query::claim_remote(&engine, &server, wanted)).await;
                (server, answer)
            }
        });
        for (server, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Ok(claimed)) => keys.extend(claimed),
                _ => {
                    failures.insert(server, json!({}));
                }
            }
        }
        Ok(ok_json(&ClaimAnswer { one_time_keys: keys, failures }))
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
        Ok(ok_json(&ChangesAnswer { changed, left }))
    })
}

/// POST /_matrix/client/v3/keys/device_signing/upload
pub fn upload_cross_signing(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: CrossSigningBody = parse_json(&req.body)?;
        let mut keys = Vec::new();
        for (usage, key) in USAGES.iter().zip([body.master_key, body.self_signing_key, body.user_signing_key]) {
            if let Some(k) = key {
                keys.push((*usage, JsonValue::Object(k)));
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
            let auth = body.auth.and_then(|a| serde_json::from_value(a).ok());
            if let Some(challenge) = super::account::password_uia(&cx, &me.user_id, auth).await? {
                return Ok(challenge);
            }
        }
        if existing.is_none() && !keys.iter().any(|(u, _)| *u == "master") && !keys.is_empty() {
            return Err(ApiError::invalid_param("upload the master key first"));
        }
        if cx.engine.e2ee.set_cross_signing(me.user_id.as_str(), &keys).await? {
            myelin_engine::federation::e2ee::announce_cross_signing(&cx.engine, &me.user_id).await;
        }
        Ok(crate::response::ok_empty())
    })
}

/// POST /_matrix/client/v3/keys/signatures/upload
pub fn upload_signatures(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        // Per target user, per key id: the signed key object.
        let targets: BTreeMap<String, Map<String, JsonValue>> = parse_json(&req.body)?;
        let mut failures = Map::new();
        let mut own_changed = false;
        let mut devices_changed: BTreeSet<String> = BTreeSet::new();
        for (target, keys) in &targets {
            let Ok(target_id) = UserId::parse(target.as_str()) else { continue };
            for (key_id, signed) in keys {
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
                myelin_engine::federation::e2ee::announce_device(&cx.engine, &me.user_id, device, false).await;
            }
            myelin_engine::federation::e2ee::announce_cross_signing(&cx.engine, &me.user_id).await;
        }
        Ok(ok_json(&SignaturesAnswer { failures }))
    })
}

/// `keys/upload`: the device's one-time key counts.
#[derive(serde::Serialize)]
struct UploadAnswer<A> {
    one_time_key_counts: A,
}

/// `keys/claim`: keys claimed, and the servers that failed.
#[derive(serde::Serialize)]
struct ClaimAnswer<A, B> {
    one_time_keys: A,
    failures: B,
}

/// `keys/changes`: users whose devices changed, users no longer shared with.
#[derive(serde::Serialize)]
struct ChangesAnswer<A, B> {
    changed: A,
    left: B,
}

/// `keys/signatures/upload`: the signatures refused.
#[derive(serde::Serialize)]
struct SignaturesAnswer<A> {
    failures: A,
}
