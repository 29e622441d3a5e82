//! Building a transaction from a destination's queue: its rows and EDUs,
//! its id (derived from the rows it carries and a per-run nonce) and its
//! canonical JSON body.

use super::set_oldest_gauge;
use crate::{
    Engine,
    federation::{labels::gauge_label, xmatrix},
    util::now_ms,
};

/// A random number drawn once per process run.
static RUN_NONCE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    u64::from_be_bytes(raw)
});

/// One transaction, kept as built while it is retried: a retry sends the same
/// rows under the same id, as the spec asks ("must wait and retry for a 200
/// OK response before sending a transaction with a different txnId").
pub(super) struct Built {
    pub(super) queued: crate::rooms::tables::OutboundBatch,
    /// How many EDUs it carries (durable and volatile).
    pub(super) edus: usize,
    pub(super) txn_id: String,
    pub(super) body: Vec<u8>,
    /// Whole-transaction refusals so far.
    pub(super) refusals: u32,
}

/// A transaction's body as canonical JSON, the form it is signed in: the PDUs'
/// stored canonical bytes are spliced in, not parsed and written again. An
/// EDU that has no canonical form (a float) is left out: it could never be signed.
fn transaction_body(origin: &str, now: u64, pdus: &[(u64, Vec<u8>)], edus: &[serde_json::Value]) -> Vec<u8> {
    let mut body = Vec::with_capacity(pdus.iter().map(|(_, p)| p.len() + 1).sum::<usize>() + 256);
    // Keys in canonical (sorted) order: edus, origin, origin_server_ts, pdus.
    body.extend_from_slice(b"{\"edus\":[");
    let mut first = true;
    for edu in edus {
        match xmatrix::canonical_body(edu) {
            Ok(bytes) => {
                if !std::mem::take(&mut first) {
                    body.push(b',');
                }
                body.extend_from_slice(&bytes);
            }
            Err(e) => tracing::warn!(error = %e, "dropping an EDU that cannot be signed"),
        }
    }
    body.extend_from_slice(b"],\"origin\":");
    xmatrix::push_json_string(&mut body, origin);
    body.extend_from_slice(format!(",\"origin_server_ts\":{now},\"pdus\":[").as_bytes());
    for (i, (_, pdu)) in pdus.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(pdu);
    }
    body.extend_from_slice(b"]}");
    body
}

/// The next transaction from the queue (durable rows first, then volatile
/// EDUs up to 100 in all); `None` when nothing waits.
pub(super) fn build(
    engine: &Engine,
    name: &str,
    dest: Option<u64>,
    depth: &mut Option<usize>,
) -> Result<Option<Built>, crate::rooms::RoomError> {
    let queued = dest.map(|d| engine.rooms.outbound_batch(d, 50, 100)).transpose()?.unwrap_or_default();
    let volatile = engine.federation.take_edus(name, 100 - queued.edus.len());
    let edus: Vec<serde_json::Value> = queued.edus.iter().map(|(_, e)| e.clone()).chain(volatile).collect();
    let batch = &queued.pdus;
    let now = now_ms();
    // Queue metrics per destination: depth exactly when it fits one transaction,
    // otherwise counted on failure and decremented by what is delivered.
    if batch.len() < 50 {
        *depth = Some(batch.len());
    }
    set_oldest_gauge(name, &queued);
    if let Some(d) = depth
        && let Some(label) = gauge_label(name)
    {
        metrics::gauge!("myelin_federation_queue_depth", "destination" => label).set(*d as f64);
    }
    let seqs = queued.seqs();
    if seqs.is_empty() && edus.is_empty() {
        return Ok(None);
    }
    // Derived from the rows carried, so a retry of the same rows reuses the id, and
    // from this run's nonce, so ids never repeat across restarts or a reset database
    // (a receiver drops a transaction id it has seen, PDUs and all).
    let nonce = *RUN_NONCE;
    let txn_id = match (seqs.first(), seqs.last()) {
        (Some(first), Some(last)) => format!("m{nonce:x}-{first}-{last}-{}-{}", seqs.len(), edus.len()),
        _ => format!("e{nonce:x}-{now}-{}", edus.len()),
    };
    let body = transaction_body(engine.server_name.as_str(), now, batch, &edus);
    Ok(Some(Built { queued, edus: edus.len(), txn_id, body, refusals: 0 }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::origin_server_ts, *};

    /// The spliced body is exactly its own canonical form (what the receiver
    /// rebuilds to check the X-Matrix signature), and an unsignable EDU is left out.
    #[test]
    fn a_transaction_body_is_canonical_json() {
        let pdu = |body: &str| {
            let v = json!({ "type": "m.room.message", "content": { "body": body }, "origin_server_ts": 5 });
            xmatrix::canonical_body(&v).unwrap()
        };
        let pdus = vec![(1, pdu("plain")), (2, pdu("quote \" é \n \u{1}"))];
        let edus = vec![
            json!({ "edu_type": "m.typing", "content": { "user_id": "@a:x", "typing": true } }),
            json!({ "edu_type": "m.float", "content": { "x": 1.5 } }),
        ];
        let body = transaction_body("a.test", 42, &pdus, &edus);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(xmatrix::canonical_body(&parsed).unwrap(), body);
        assert_eq!(parsed["origin"], "a.test");
        assert_eq!(parsed["origin_server_ts"], 42);
        assert_eq!(parsed["pdus"][1]["content"]["body"], "quote \" é \n \u{1}");
        assert_eq!(parsed["edus"].as_array().unwrap().len(), 1, "the float EDU is dropped");
        assert_eq!(origin_server_ts(&pdus[0].1), Some(5));
        let empty = transaction_body("a.test", 1, &[], &[]);
        assert_eq!(empty, br#"{"edus":[],"origin":"a.test","origin_server_ts":1,"pdus":[]}"#);
    }
}
