//! The cache of remote users' device lists against updates that race a query
//! (issue #20): a client told of a change is never answered from the list
//! cached before it, and a query's answer that an update overtook does not
//! replace the newer keys the update brought.

use std::{sync::Arc, time::Duration};

use serde_json::{Map, Value as JsonValue, json};

use super::{
    e2ee::receive_device_list_update,
    keys_query::{cached_keys, query_remote, query_remote_tracked},
    tests::{FakePeer, room_with_a_remote_member},
};

const BOB: &str = "@bob:peer.test";

fn keys(signature: &str) -> JsonValue {
    json!({ "user_id": BOB, "device_id": "PHONE", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { "ed25519:PHONE": "k" }, "signatures": { BOB: { "ed25519:PHONE": signature } } })
}

fn bob() -> Map<String, JsonValue> {
    [(BOB.to_owned(), json!([]))].into_iter().collect()
}

fn cached_signature(engine: &crate::Engine) -> JsonValue {
    let out = cached_keys(engine, &bob()).unwrap();
    out["device_keys"][BOB]["PHONE"]["signatures"][BOB]["ed25519:PHONE"].clone()
}

/// A peer whose `/user/keys/query` answers with bob's device signed `old`.
fn peer_answering_old_keys() -> Arc<FakePeer> {
    FakePeer::new(|_, req| {
        if req.path_and_query.contains("/user/keys/query") {
            Ok((200, json!({ "device_keys": { BOB: { "PHONE": keys("old") } } })))
        } else {
            Ok((404, json!({ "errcode": "M_NOT_FOUND" })))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_overtaken_by_a_device_list_update_does_not_replace_its_keys() {
    let peer = peer_answering_old_keys();
    let dir = tempfile::tempdir().unwrap();
    let (engine, _remote, _room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    peer.slow_down("/user/keys/query", Duration::from_millis(400));
    let asking = {
        let engine = engine.clone();
        tokio::spawn(async move { query_remote(&engine, "peer.test", bob()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While the query is out, bob's server sends the newer keys.
    let update = json!({ "user_id": BOB, "device_id": "PHONE", "stream_id": 2, "prev_id": [], "keys": keys("new") });
    receive_device_list_update(&engine, "peer.test", &update).await;
    assert_eq!(cached_signature(&engine), "new");
    let answer = asking.await.unwrap().unwrap();
    assert_eq!(answer["device_keys"][BOB]["PHONE"]["signatures"][BOB]["ed25519:PHONE"], "old", "the answer itself");
    assert_eq!(cached_signature(&engine), "new", "the older answer replaced the update's keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_trusted_before_an_update_is_asked_for_again_after_it() {
    let peer = peer_answering_old_keys();
    let dir = tempfile::tempdir().unwrap();
    let (engine, _remote, _room) = room_with_a_remote_member(dir.path(), peer.clone()).await;
    let alice = ruma::UserId::parse("@alice:us.test").unwrap();
    let asked = || peer.paths().iter().filter(|p| p.contains("/user/keys/query")).count();
    query_remote_tracked(&engine, &alice, "peer.test", bob()).await.unwrap();
    query_remote_tracked(&engine, &alice, "peer.test", bob()).await.unwrap();
    assert_eq!(asked(), 1, "a trusted list is answered from the cache");
    let update = json!({ "user_id": BOB, "device_id": "PHONE", "stream_id": 2, "prev_id": [], "keys": keys("new") });
    receive_device_list_update(&engine, "peer.test", &update).await;
    query_remote_tracked(&engine, &alice, "peer.test", bob()).await.unwrap();
    assert_eq!(asked(), 2, "after an update the list is asked for again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_deletion_reaches_the_cache_after_the_last_shared_room_is_gone() {
    // A deactivated user leaves her rooms and her devices are deleted: the
    // leave can arrive before the deletion, and the cached keys must still go.
    let peer = peer_answering_old_keys();
    let dir = tempfile::tempdir().unwrap();
    let (engine, _remote, _room) = room_with_a_remote_member(dir.path(), peer).await;
    const CAROL: &str = "@carol:peer.test";
    let device = json!({ "user_id": CAROL, "device_id": "LAPTOP", "algorithms": [], "keys": {}, "signatures": {} });
    engine.e2ee.store_remote(CAROL, &[("LAPTOP".to_owned(), device.clone())], &[]).await.unwrap();
    let other = json!({ "user_id": CAROL, "device_id": "NEW", "stream_id": 3, "prev_id": [], "keys":
        { "user_id": CAROL, "device_id": "NEW", "algorithms": [], "keys": {}, "signatures": {} } });
    receive_device_list_update(&engine, "peer.test", &other).await;
    assert_eq!(engine.e2ee.device_keys(CAROL).unwrap().len(), 1, "a new device of a user sharing no room is dropped");
    let deleted = json!({ "user_id": CAROL, "device_id": "LAPTOP", "stream_id": 4, "prev_id": [], "deleted": true });
    receive_device_list_update(&engine, "peer.test", &deleted).await;
    assert!(engine.e2ee.device_keys(CAROL).unwrap().is_empty(), "the deleted device's keys stayed cached");
}
