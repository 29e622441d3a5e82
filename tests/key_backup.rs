//! Server-side key backups (`/room_keys`) over real HTTP: the lifecycle of
//! versions and keys, the spec's replacement rule, wrong versions, other
//! users, etags and counts, and hostile bodies.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!room:localhost";
const OTHER_ROOM: &str = "!other:localhost";

fn auth_data(key: &str) -> Value {
    json!({ "public_key": key, "signatures": { "@alice:localhost": { "ed25519:DEV": "sig" } } })
}

fn session(is_verified: bool, first_message_index: u64, forwarded_count: u64, marker: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": marker, "ciphertext": "c", "mac": "m" },
    })
}

fn session_path(room: &str, session: &str, version: &str) -> String {
    format!("{V3}/room_keys/keys/{}/{}?version={version}", enc(room), enc(session))
}

async fn create(c: &Client, key: &str) -> String {
    let j = c
        .post(&format!("{V3}/room_keys/version"), json!({ "algorithm": ALGORITHM, "auth_data": auth_data(key) }))
        .await;
    j["version"].as_str().expect("version is a string").to_owned()
}

async fn status(c: &Client, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
    let r = c.request(method, path, body).await;
    let code = if r.body.is_empty() { String::new() } else { r.errcode() };
    (r.status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_lifecycle_from_create_to_delete() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;

    // No backup yet.
    let r = alice.request(Method::GET, &format!("{V3}/room_keys/version"), None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));

    let v1 = create(&alice, "key1").await;
    let info = alice.get(&format!("{V3}/room_keys/version")).await;
    assert_eq!(info["algorithm"], ALGORITHM);
    assert_eq!(info["auth_data"], auth_data("key1"));
    assert_eq!(info["count"], 0);
    assert_eq!(info["version"], v1.as_str());
    let etag0 = info["etag"].as_str().expect("etag is a string").to_owned();
    assert_eq!(alice.get(&format!("{V3}/room_keys/version/{v1}")).await, info);
    // The legacy prefix serves the same.
    assert_eq!(alice.get(&format!("/_matrix/client/r0/room_keys/version/{v1}")).await, info);

    // One session, then two rooms at once.
    let one = alice.put(&session_path(ROOM, "s1", &v1), session(false, 0, 0, "a")).await;
    assert_eq!(one["count"], 1);
    let etag1 = one["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag1, etag0, "etag changes when keys change");
    let got = alice.get(&session_path(ROOM, "s1", &v1)).await;
    assert_eq!(got, session(false, 0, 0, "a"));

    let bulk = json!({ "rooms": {
        ROOM: { "sessions": { "s2": session(true, 3, 1, "b") } },
        OTHER_ROOM: { "sessions": { "s3": session(false, 1, 0, "c"), "s4": session(false, 2, 0, "d") } },
    }});
    let all = alice.put(&format!("{V3}/room_keys/keys?version={v1}"), bulk).await;
    assert_eq!(all["count"], 4);
    let etag2 = all["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag2, etag1);
    let room_put = alice
        .put(
            &format!("{V3}/room_keys/keys/{}?version={v1}", enc(ROOM)),
            json!({ "sessions": { "s5": session(false, 0, 0, "e") } }),
        )
        .await;
    assert_eq!(room_put["count"], 5);

    let info = alice.get(&format!("{V3}/room_keys/version")).await;
    assert_eq!((info["count"].clone(), info["etag"].clone()), (json!(5), room_put["etag"].clone()));

    let room = alice.get(&format!("{V3}/room_keys/keys/{}?version={v1}", enc(ROOM))).await;
    let mut ids: Vec<_> = room["sessions"].as_object().unwrap().keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2", "s5"]);
    assert_eq!(room["sessions"]["s2"], session(true, 3, 1, "b"));
    let everything = alice.get(&format!("{V3}/room_keys/keys?version={v1}")).await;
    assert_eq!(everything["rooms"][OTHER_ROOM]["sessions"]["s4"], session(false, 2, 0, "d"));
    assert_eq!(everything["rooms"].as_object().unwrap().len(), 2);
    // A room without keys is empty; a session that is not there is 404.
    let empty = alice.get(&format!("{V3}/room_keys/keys/{}?version={v1}", enc("!none:localhost"))).await;
    assert_eq!(empty, json!({ "sessions": {} }));
    let r = alice.request(Method::GET, &session_path(ROOM, "nope", &v1), None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));

    // Updating the version: only auth_data changes; the algorithm and the body's version must match.
    let path = format!("{V3}/room_keys/version/{v1}");
    alice.put(&path, json!({ "algorithm": ALGORITHM, "auth_data": auth_data("key1b"), "version": v1 })).await;
    let info = alice.get(&path).await;
    assert_eq!((info["auth_data"].clone(), info["count"].clone()), (auth_data("key1b"), json!(5)));
    let other_algorithm = json!({ "algorithm": "m.other", "auth_data": {} });
    assert_eq!(
        status(&alice, Method::PUT, &path, Some(other_algorithm)).await,
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into())
    );
    let other_version = json!({ "algorithm": ALGORITHM, "auth_data": {}, "version": "999" });
    assert_eq!(
        status(&alice, Method::PUT, &path, Some(other_version)).await,
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into())
    );
    let r = alice
        .request(
            Method::PUT,
            &format!("{V3}/room_keys/version/999"),
            Some(json!({ "algorithm": ALGORITHM, "auth_data": {} })),
        )
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));

    // Deleting keys: one session, then a room; each answers the new etag and count.
    let r = alice.request(Method::DELETE, &session_path(ROOM, "s1", &v1), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let after = r.json();
    assert_eq!(after["count"], 4);
    assert_ne!(after["etag"], room_put["etag"]);
    let r = alice.request(Method::DELETE, &format!("{V3}/room_keys/keys/{}?version={v1}", enc(OTHER_ROOM)), None).await;
    assert_eq!(r.json()["count"], 2);
    let left = alice.get(&format!("{V3}/room_keys/keys?version={v1}")).await;
    assert_eq!(left["rooms"].as_object().unwrap().keys().collect::<Vec<_>>(), [ROOM]);

    // A new version becomes the current one; the old one no longer takes keys.
    let v2 = create(&alice, "key2").await;
    assert_ne!(v2, v1);
    assert_eq!(alice.get(&format!("{V3}/room_keys/version")).await["version"], v2.as_str());
    let r = alice.request(Method::PUT, &session_path(ROOM, "s9", &v1), Some(session(false, 0, 0, "z"))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"));
    assert_eq!(r.json()["current_version"], v2.as_str());
    // …but is still readable.
    assert_eq!(alice.get(&format!("{V3}/room_keys/version/{v1}")).await["count"], 2);

    // Deleting a version deletes its keys.
    let r = alice.request(Method::DELETE, &format!("{V3}/room_keys/version/{v1}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    for path in [
        format!("{V3}/room_keys/version/{v1}"),
        format!("{V3}/room_keys/keys?version={v1}"),
        session_path(ROOM, "s2", &v1),
    ] {
        let r = alice.request(Method::GET, &path, None).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"), "{path}");
    }
    let r = alice.request(Method::DELETE, &format!("{V3}/room_keys/version/{v1}"), None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND", "a deleted version cannot be deleted again");
    let r = alice.request(Method::DELETE, &format!("{V3}/room_keys/version/{v2}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = alice.request(Method::GET, &format!("{V3}/room_keys/version"), None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");

    // Version numbers are never reused: keys for a deleted version cannot land in a new one.
    let v3 = create(&alice, "key3").await;
    assert!(v3 != v1 && v3 != v2);
    let r = alice.request(Method::PUT, &session_path(ROOM, "s1", &v2), Some(session(false, 0, 0, "late"))).await;
    assert_eq!(r.errcode(), "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(alice.get(&format!("{V3}/room_keys/keys?version={v3}")).await, json!({ "rooms": {} }));

    // `version` is required for keys.
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let r = alice.request(method.clone(), &format!("{V3}/room_keys/keys"), Some(json!({ "rooms": {} }))).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"), "{method}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_session_is_replaced_only_by_a_better_one() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let v = create(&alice, "k").await;
    // (existing, uploaded, which one the server keeps)
    let cases = [
        ((false, 0, 0), (true, 9, 9), "new"), // verified beats unverified whatever the index
        ((true, 9, 9), (false, 0, 0), "old"), // unverified never replaces verified
        ((false, 5, 0), (false, 2, 9), "new"), // same verification: lower first_message_index
        ((false, 2, 0), (false, 5, 0), "old"),
        ((true, 3, 4), (true, 3, 1), "new"), // same index: lower forwarded_count
        ((true, 3, 1), (true, 3, 4), "old"),
        ((false, 1, 1), (false, 1, 1), "old"), // all equal: the existing one stays
    ];
    for (i, (old, new, kept)) in cases.into_iter().enumerate() {
        let id = format!("case{i}");
        let first = alice.put(&session_path(ROOM, &id, &v), session(old.0, old.1, old.2, "old")).await;
        let second = alice.put(&session_path(ROOM, &id, &v), session(new.0, new.1, new.2, "new")).await;
        assert_eq!(second["count"], first["count"], "case {i}: a replacement is not a new session");
        let expected =
            if kept == "new" { session(new.0, new.1, new.2, "new") } else { session(old.0, old.1, old.2, "old") };
        assert_eq!(alice.get(&session_path(ROOM, &id, &v)).await, expected, "case {i}");
        if kept == "new" {
            assert_ne!(second["etag"], first["etag"], "case {i}: a replacement changes the etag");
        } else {
            assert_eq!(second["etag"], first["etag"], "case {i}: a kept key leaves the etag alone");
        }
    }
    assert_eq!(alice.get(&format!("{V3}/room_keys/version")).await["count"], 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_see_or_touch_my_backup() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let v = create(&alice, "k").await;
    alice.put(&session_path(ROOM, "secret", &v), session(true, 0, 0, "alice's")).await;

    for path in [
        format!("{V3}/room_keys/version"),
        format!("{V3}/room_keys/version/{v}"),
        format!("{V3}/room_keys/keys?version={v}"),
        session_path(ROOM, "secret", &v),
    ] {
        let r = bob.request(Method::GET, &path, None).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"), "{path}");
    }
    let r = bob.request(Method::PUT, &session_path(ROOM, "secret", &v), Some(session(true, 0, 0, "bob's"))).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND", "bob has no backup to write into");
    for path in [format!("{V3}/room_keys/version/{v}"), session_path(ROOM, "secret", &v)] {
        let r = bob.request(Method::DELETE, &path, None).await;
        assert_eq!(r.errcode(), "M_NOT_FOUND", "{path}");
    }
    let r = bob
        .request(
            Method::PUT,
            &format!("{V3}/room_keys/version/{v}"),
            Some(json!({ "algorithm": ALGORITHM, "auth_data": {} })),
        )
        .await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");

    // Bob's own backup is his alone, and alice's is untouched.
    let bv = create(&bob, "bk").await;
    assert_eq!(bob.get(&format!("{V3}/room_keys/keys?version={bv}")).await, json!({ "rooms": {} }));
    assert_eq!(alice.get(&session_path(ROOM, "secret", &v)).await, session(true, 0, 0, "alice's"));
    assert_eq!(alice.get(&format!("{V3}/room_keys/version")).await["auth_data"], auth_data("k"));
    let r = alice.request(Method::GET, &format!("{V3}/room_keys/version"), None).await;
    assert_eq!(r.json()["version"], v.as_str());
    // Unauthenticated: 401.
    let r = myelin_suite::http(s.client, Method::GET, &format!("{V3}/room_keys/version"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backup_bodies_are_refused_naming_the_field() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let version_path = format!("{V3}/room_keys/version");

    let r = alice.request(Method::POST, &version_path, Some(json!({ "algorithm": ALGORITHM }))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_BAD_JSON"));
    assert!(r.json()["error"].as_str().unwrap().contains("auth_data"), "{}", r.json());
    let r = alice.request(Method::POST, &version_path, Some(json!({ "algorithm": 5, "auth_data": {} }))).await;
    assert!(r.json()["error"].as_str().unwrap().contains("algorithm"), "{}", r.json());
    let r = alice.request(Method::POST, &version_path, Some(json!({ "algorithm": ALGORITHM, "auth_data": "x" }))).await;
    assert_eq!(r.errcode(), "M_BAD_JSON");
    let r = alice.request(Method::POST, &version_path, Some(json!({ "algorithm": "", "auth_data": {} }))).await;
    assert_eq!(r.errcode(), "M_INVALID_PARAM");
    let huge = "x".repeat(70 * 1024);
    let r = alice
        .request(Method::POST, &version_path, Some(json!({ "algorithm": ALGORITHM, "auth_data": { "k": huge } })))
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"));

    // No backup: keys go nowhere.
    let r = alice.request(Method::PUT, &session_path(ROOM, "s", "1"), Some(session(false, 0, 0, "x"))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_NOT_FOUND"));

    let v = create(&alice, "k").await;
    let path = session_path(ROOM, "s", &v);
    let mut missing = session(false, 0, 0, "x");
    missing.as_object_mut().unwrap().remove("first_message_index");
    let r = alice.request(Method::PUT, &path, Some(missing)).await;
    assert_eq!(r.errcode(), "M_BAD_JSON");
    assert!(r.json()["error"].as_str().unwrap().contains("first_message_index"), "{}", r.json());
    let mut negative = session(false, 0, 0, "x");
    negative["forwarded_count"] = json!(-1);
    let r = alice.request(Method::PUT, &path, Some(negative)).await;
    assert!(r.json()["error"].as_str().unwrap().contains("forwarded_count"), "{}", r.json());
    let mut not_object = session(false, 0, 0, "x");
    not_object["session_data"] = json!("opaque");
    assert_eq!(alice.request(Method::PUT, &path, Some(not_object)).await.errcode(), "M_BAD_JSON");
    let nested = json!({ "rooms": { ROOM: { "sessions": { "s": { "is_verified": "yes" } } } } });
    let r = alice.request(Method::PUT, &format!("{V3}/room_keys/keys?version={v}"), Some(nested)).await;
    assert_eq!(r.errcode(), "M_BAD_JSON");
    assert!(r.json()["error"].as_str().unwrap().contains("is_verified"), "{}", r.json());

    let mut big = session(false, 0, 0, "x");
    big["session_data"]["ciphertext"] = json!("y".repeat(70 * 1024));
    let r = alice.request(Method::PUT, &path, Some(big)).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"));
    let r = alice.request(Method::PUT, &session_path("not-a-room", "s", &v), Some(session(false, 0, 0, "x"))).await;
    assert_eq!(r.errcode(), "M_INVALID_PARAM");
    let r = alice.request(Method::GET, &format!("{V3}/room_keys/version/not-a-number"), None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");

    // Nothing refused was stored.
    assert_eq!(alice.get(&format!("{V3}/room_keys/version")).await["count"], 0);
    s.stop().await;
}
