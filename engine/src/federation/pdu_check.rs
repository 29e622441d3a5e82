//! The first checks on a PDU received from another server (Server-Server
//! API §"Checks performed on receipt of a PDU", steps 1–3): it is valid
//! canonical JSON of the room's version, it carries valid signatures of
//! the servers it must be signed by, and its content hash matches — else
//! it is redacted before it is used. The signing keys are fetched first,
//! each key once. Authorization (steps 4–6) is the rooms engine's.

use ruma::{CanonicalJsonObject, RoomVersionId, room_version_rules::RoomVersionRules};
use serde_json::Value as JsonValue;

use super::FederationError;
use crate::{
    Engine,
    rooms::{Pdu, version},
};

/// Learns the keys of every server that signed any of `objects`, each key
/// once, so `Rooms::verify` can check them. A key that cannot be fetched is
/// left out: the signature check then fails for the PDUs that need it.
pub async fn ensure_signing_keys<'a>(
    engine: &Engine,
    objects: impl IntoIterator<Item = &'a JsonValue>,
) -> Result<(), FederationError> {
    let mut keys: std::collections::BTreeSet<(&str, &str)> = std::collections::BTreeSet::new();
    for object in objects {
        let signatures = object.get("signatures").and_then(JsonValue::as_object);
        for (server, ids) in signatures.into_iter().flatten() {
            for id in ids.as_object().into_iter().flat_map(|ids| ids.keys()) {
                keys.insert((server.as_str(), id.as_str()));
            }
        }
    }
    for (server, key_id) in keys {
        match engine.server_key(server, key_id).await {
            Ok(Some(key)) => engine.rooms.add_server_key(server, key_id, &key)?,
            Ok(None) => tracing::debug!(%server, %key_id, "signing key not known"),
            Err(e) => tracing::debug!(%server, %key_id, error = %e, "signing key could not be fetched"),
        }
    }
    Ok(())
}

/// Parses and verifies one PDU of a room version; a bad content hash gets it redacted.
pub async fn checked_pdu(
    engine: &Engine,
    json: &JsonValue,
    room_version: &RoomVersionId,
) -> Result<Pdu, FederationError> {
    let rules = version::rules(room_version)?;
    ensure_signing_keys(engine, [json]).await?;
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
    ensure_signing_keys(engine, &jsons).await?;
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
    let verified = engine.rooms.verify(&object, rules)?;
    let object = match verified {
        ruma::signatures::Verified::All => object,
        _ => ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| FederationError::BadRequest(format!("cannot redact: {e}")))?,
    };
    Ok(Pdu::from_object(object, rules)?)
}
