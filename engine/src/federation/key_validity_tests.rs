//! Signing-key validity (issue #25 §2; room version 5 §"Signing key validity
//! period"): a remote `valid_until_ts` is capped at 7 days after the fetch,
//! in room versions 5 and later an event's signature counts only with a key
//! valid at the event's `origin_server_ts` (a current key up to its capped
//! `valid_until_ts`, an old one before its `expired_ts`), older versions take
//! any key the server published, and the answers are the same after a restart.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{Value as JsonValue, json};

use super::{
    pdu_check::checked_pdu,
    tests::{FakePeer, engine},
};
use crate::keys::ServerKeys;

const DAY_MS: u64 = 86_400_000;

use crate::util::now_ms;

fn current_key() -> ServerKeys {
    ServerKeys::from_seed("peer.test".try_into().unwrap(), "new", &[2u8; 32]).unwrap()
}

fn old_key() -> ServerKeys {
    ServerKeys::from_seed("peer.test".try_into().unwrap(), "old", &[1u8; 32]).unwrap()
}

/// peer.test's key document: `new` current and claimed valid for a year,
/// `old` expired `old_expired_ts`; signed by `new`.
fn key_document(old_expired_ts: u64) -> JsonValue {
    let (new, old) = (current_key(), old_key());
    let doc = json!({
        "server_name": "peer.test",
        "valid_until_ts": now_ms() + 365 * DAY_MS,
        "verify_keys": { new.key_id(): { "key": new.public_key_b64() } },
        "old_verify_keys": { old.key_id(): { "key": old.public_key_b64(), "expired_ts": old_expired_ts } },
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(doc).unwrap();
    new.sign_json(&mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

/// A message from @p:peer.test at `ts`, hashed and signed by `key`.
fn event(key: &ServerKeys, version: &RoomVersionId, ts: u64) -> JsonValue {
    let pdu = json!({
        "room_id": "!room:peer.test",
        "sender": "@p:peer.test",
        "type": "m.room.message",
        "content": { "msgtype": "m.text", "body": "hello" },
        "origin_server_ts": ts,
        "depth": 5,
        "prev_events": ["$prev"],
        "auth_events": ["$create"],
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(pdu).unwrap();
    key.hash_and_sign_event(&mut object, &version.rules().unwrap()).unwrap();
    serde_json::to_value(object).unwrap()
}

/// A peer that serves `doc` while `up`, and is unreachable (500) otherwise.
fn peer(doc: JsonValue, up: Arc<AtomicBool>) -> Arc<FakePeer> {
    FakePeer::new(move |_, req| {
        if up.load(Ordering::SeqCst) && req.path_and_query == "/_matrix/key/v2/server" {
            Ok((200, doc.clone()))
        } else {
            Ok((500, json!({ "errcode": "M_UNKNOWN" })))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_valid_until_ts_is_capped_at_seven_days_after_the_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer(key_document(0), Arc::new(AtomicBool::new(true))));
    let before = now_ms();
    let key = current_key();
    assert!(engine.server_key("peer.test", key.key_id()).await.unwrap().is_some());
    let stored = engine.keyring.stored("peer.test").unwrap().unwrap();
    assert!(stored.valid_until_ts <= now_ms() + 7 * DAY_MS, "a year was kept: {}", stored.valid_until_ts);
    assert!(stored.valid_until_ts >= before + 7 * DAY_MS - 1000, "capped below 7 days: {}", stored.valid_until_ts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_checked_against_key_validity_at_their_own_time_in_v5_and_later_and_the_same_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let now = now_ms();
    let old_expired = now - DAY_MS;
    let doc = key_document(old_expired);
    let (new, old) = (current_key(), old_key());
    let v5 = RoomVersionId::V5;
    let v4 = RoomVersionId::V4;
    // (what, event, version, accepted)
    let cases = [
        ("current key, now, v5", event(&new, &v5, now), &v5, true),
        ("current key, 8 days ahead (past the 7-day cap), v5", event(&new, &v5, now + 8 * DAY_MS), &v5, false),
        ("current key, 8 days ahead, v4 (no validity rule)", event(&new, &v4, now + 8 * DAY_MS), &v4, true),
        ("old key, before it expired, v5", event(&old, &v5, old_expired - DAY_MS), &v5, true),
        ("old key, after it expired, v5", event(&old, &v5, old_expired + 1000), &v5, false),
        ("old key, after it expired, v4", event(&old, &v4, now), &v4, true),
    ];
    let run = |engine: Arc<crate::Engine>| {
        let cases = cases.clone();
        async move {
            let mut got = Vec::new();
            for (what, json, version, _) in &cases {
                got.push((*what, checked_pdu(&engine, json, version).await.is_ok()));
            }
            got
        }
    };
    let engine = engine_with(dir.path(), peer(doc.clone(), up.clone()));
    let first = run(engine.clone()).await;
    let expected: Vec<(&str, bool)> = cases.iter().map(|(what, _, _, ok)| (*what, *ok)).collect();
    assert_eq!(first, expected);

    // Restarted on the same data with the peer gone: the stored validity gives the same answers.
    engine.shutdown();
    drop(engine);
    up.store(false, Ordering::SeqCst);
    let engine = engine_with(dir.path(), peer(doc, up));
    let second = run(engine.clone()).await;
    assert_eq!(second, expected, "after a restart");
}

fn engine_with(dir: &std::path::Path, peer: Arc<FakePeer>) -> Arc<crate::Engine> {
    engine(dir, peer)
}

/// peer.test's document signed by `new`, listing `extra` more current keys
/// and `old` expired ones (expired at 1, 2, … ms).
fn crowded_document(extra: usize, old: usize) -> JsonValue {
    let new = current_key();
    let mut verify = serde_json::Map::new();
    verify.insert(new.key_id().to_owned(), json!({ "key": new.public_key_b64() }));
    for i in 0..extra {
        verify.insert(format!("ed25519:extra{i}"), json!({ "key": new.public_key_b64() }));
    }
    let mut expired = serde_json::Map::new();
    for i in 0..old {
        expired.insert(format!("ed25519:old{i}"), json!({ "key": new.public_key_b64(), "expired_ts": i as u64 + 1 }));
    }
    let doc = json!({ "server_name": "peer.test", "valid_until_ts": now_ms() + DAY_MS,
        "verify_keys": verify, "old_verify_keys": expired });
    let mut object: CanonicalJsonObject = serde_json::from_value(doc).unwrap();
    new.sign_json(&mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_document_cannot_make_the_key_ring_hold_unbounded_keys() {
    use super::keyring::{MAX_OLD_KEYS, MAX_VERIFY_KEYS};
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), peer(key_document(0), Arc::new(AtomicBool::new(true))));
    // More current keys than any server needs: refused (each would need a signature check).
    let too_many = crowded_document(MAX_VERIFY_KEYS, 0);
    assert!(engine.keyring.accept_document("peer.test", &too_many).await.is_err());
    assert!(engine.keyring.stored("peer.test").unwrap().is_none());
    // A document too large to store is refused whole.
    assert!(engine.keyring.accept_document("peer.test", &crowded_document(0, 5_000)).await.is_err());
    assert!(engine.keyring.stored("peer.test").unwrap().is_none());
    // Many expired keys: only the latest to expire are kept.
    let set = engine.keyring.accept_document("peer.test", &crowded_document(0, 1_000)).await.unwrap();
    assert_eq!(set.old_verify_keys.len(), MAX_OLD_KEYS);
    assert!(set.old_verify_keys.contains_key("ed25519:old999"));
    assert!(!set.old_verify_keys.contains_key("ed25519:old0"));
    assert_eq!(engine.keyring.stored("peer.test").unwrap().unwrap(), set);
}
