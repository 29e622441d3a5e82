//! The first checks on a PDU received from another server (Server-Server
//! API §"Checks performed on receipt of a PDU", steps 1–3): it is valid
//! canonical JSON of the room's version, it carries valid signatures of
//! the servers it must be signed by, and its content hash matches — else
//! it is redacted before it is used. The signing keys are fetched first,
//! each key once; in room versions 5 and later a signature counts only with a
//! key valid at the event's `origin_server_ts` (room version 5 §"Signing key
//! validity period"). Authorization (steps 4–6) is the rooms engine's.

use ruma::{CanonicalJsonObject, RoomVersionId, room_version_rules::RoomVersionRules};
use serde_json::Value as JsonValue;

use super::FederationError;
use crate::{
    Engine,
    rooms::{Pdu, version},
};

/// Makes sure the keys of every server that signed any of `objects` are
/// known, each key once: a key already stored that counts for the latest
/// event needing it (at its `origin_server_ts` when `enforce_validity`, the
/// rule of room versions 5 and later) is not fetched again; any other is
/// fetched from its server (or the notaries) unless it is valid now. A key
/// that cannot be fetched is left out: the signature check then fails for
/// the PDUs that need it.
pub async fn ensure_signing_keys<'a>(
    engine: &Engine,
    objects: impl IntoIterator<Item = &'a JsonValue>,
    enforce_validity: bool,
) -> Result<(), FederationError> {
    let mut keys: std::collections::BTreeMap<(&str, &str), u64> = std::collections::BTreeMap::new();
    for object in objects {
        let ts = object.get("origin_server_ts").and_then(JsonValue::as_u64).unwrap_or(0);
        let signatures = object.get("signatures").and_then(JsonValue::as_object);
        let required = required_signers(object);
        // Only the signatures the spec requires are checked; fetching keys for
        // any other server an event names would let one peer make us look up
        // as many servers as it lists.
        for (server, ids) in signatures.into_iter().flatten().filter(|(s, _)| required.contains(s.as_str())) {
            for id in ids.as_object().into_iter().flat_map(|ids| ids.keys()) {
                let latest = keys.entry((server.as_str(), id.as_str())).or_insert(ts);
                *latest = (*latest).max(ts);
            }
        }
    }
    for ((server, key_id), latest) in keys {
        if engine.keyring.key_at(server, key_id, enforce_validity.then_some(latest))?.is_some() {
            continue;
        }
        match engine.server_key(server, key_id).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!(%server, %key_id, "signing key not known"),
            Err(e) => tracing::debug!(%server, %key_id, error = %e, "signing key could not be fetched"),
        }
    }
    Ok(())
}

/// The servers whose signatures a PDU must carry (Server-Server API
/// §"Validating hashes and signatures on received events"): the sender's,
/// the one in an event id that has one (room versions 1 and 2), and for a
/// restricted join the server of `join_authorised_via_users_server`.
fn required_signers(object: &JsonValue) -> std::collections::BTreeSet<&str> {
    let mut out = std::collections::BTreeSet::new();
    let named = [
        object.get("sender").and_then(JsonValue::as_str),
        object.get("event_id").and_then(JsonValue::as_str),
        object.pointer("/content/join_authorised_via_users_server").and_then(JsonValue::as_str),
    ];
    out.extend(named.into_iter().flatten().filter_map(server_of));
    out
}

/// The server part of a user or (room version 1/2) event id.
fn server_of(id: &str) -> Option<&str> {
    id.split_once(':').map(|(_, server)| server).filter(|s| !s.is_empty())
}

/// The keys `object`'s signatures may be checked with: those of its signers
/// that count at its `origin_server_ts` under `rules` (see
/// [`super::keyring::KeyRing::key_at`]). A signer left out fails the check.
fn keys_for(
    engine: &Engine,
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<ruma::signatures::PublicKeyMap, FederationError> {
    use ruma::CanonicalJsonValue as V;
    let ts = match object.get("origin_server_ts") {
        Some(V::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
        _ => 0,
    };
    let at = rules.enforce_key_validity.then_some(ts);
    let mut map = ruma::signatures::PublicKeyMap::new();
    let Some(V::Object(signatures)) = object.get("signatures") else { return Ok(map) };
    for (server, ids) in signatures {
        let V::Object(ids) = ids else { continue };
        for key_id in ids.keys() {
            if let Some(key) = engine.keyring.key_at(server, key_id, at)?
                && let Ok(key) = ruma::serde::Base64::parse(&key)
            {
                map.entry(server.clone()).or_default().insert(key_id.clone(), key);
            }
        }
    }
    Ok(map)
}

/// Parses and verifies one PDU of a room version; a bad content hash gets it redacted.
pub async fn checked_pdu(
    engine: &Engine,
    json: &JsonValue,
    room_version: &RoomVersionId,
) -> Result<Pdu, FederationError> {
    let rules = version::rules(room_version)?;
    ensure_signing_keys(engine, [json], rules.enforce_key_validity).await?;
    verified_pdu(engine, json.clone(), &rules)
}

/// [`checked_pdu`] for many PDUs at once (a join's state and auth chain, some
/// thousands): the signing keys are fetched first, then the signature and hash
/// checks run on the blocking pool in one chunk per core, off the async
/// workers. Results keep the input order; the first failure in that order
/// is returned.
pub async fn checked_pdus(
    engine: &std::sync::Arc<Engine>,
    jsons: Vec<JsonValue>,
    room_version: &RoomVersionId,
) -> Result<Vec<Pdu>, FederationError> {
    let rules = version::rules(room_version)?;
    ensure_signing_keys(engine, &jsons, rules.enforce_key_validity).await?;
    let total = jsons.len();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, total.max(1));
    let chunk = total.div_ceil(workers).max(1);
    let mut rest = jsons;
    let mut tasks = Vec::with_capacity(workers);
    while !rest.is_empty() {
        let tail = rest.split_off(chunk.min(rest.len()));
        let part = std::mem::replace(&mut rest, tail);
        let (engine, rules, span) = (engine.clone(), rules.clone(), tracing::Span::current());
        tasks.push(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            part.into_iter().map(|json| verified_pdu(&engine, json, &rules)).collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut pdus = Vec::with_capacity(total);
    for task in tasks {
        let part = task.await.map_err(|e| FederationError::BadRequest(format!("PDU check task failed: {e}")))?;
        pdus.extend(part?);
    }
    Ok(pdus)
}

/// The CPU-bound part of [`checked_pdu`], once the signing keys are known.
pub fn verified_pdu(engine: &Engine, json: JsonValue, rules: &RoomVersionRules) -> Result<Pdu, FederationError> {
    let object: CanonicalJsonObject =
        serde_json::from_value(json).map_err(|e| FederationError::BadRequest(format!("not a PDU: {e}")))?;
    let keys = keys_for(engine, &object, rules)?;
    let verified = engine.rooms.verify_with_keys(&object, rules, &keys)?;
    let object = match verified {
        ruma::signatures::Verified::All => object,
        _ => ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| FederationError::BadRequest(format!("cannot redact: {e}")))?,
    };
    Ok(Pdu::from_object(object, rules)?)
}
