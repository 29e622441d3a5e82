//! End-to-end encryption keys on one server, as the other user's client sees them:
//! upload, query, claim (one-time then fallback), device-list changes in /sync,
//! cross-signing with user-interactive auth, signatures, deleted devices.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, device_keys, enc};
use serde_json::{Value, json};

async fn pair(s: &TestServer) -> (Client, Client) {
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    (alice, bob)
}

fn claim_body(user: &Client) -> Value {
    json!({ "one_time_keys": { user.user_id.clone(): { user.device_id.clone(): "signed_curve25519" } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_keys_are_handed_out_once_then_the_fallback_key() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = pair(&s).await;
    let up = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice.user_id, &alice.device_id, "c1"),
                "one_time_keys": { "signed_curve25519:K1": { "key": "one" } },
                "fallback_keys": { "signed_curve25519:F1": { "key": "fall", "fallback": true } },
            }),
        )
        .await;
    assert_eq!(up["one_time_key_counts"]["signed_curve25519"], 1);
    let first = bob.post("/_matrix/client/v3/keys/claim", claim_body(&alice)).await;
    assert_eq!(first["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:K1"]["key"], "one");
    let second = bob.post("/_matrix/client/v3/keys/claim", claim_body(&alice)).await;
    assert_eq!(second["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:F1"]["key"], "fall");
    let sync = alice.sync(None, 0).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]), "the fallback key was used");
    // The same key id with other content is refused.
    let again = alice
        .request(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "one_time_keys": { "signed_curve25519:K2": { "key": "x" } } })),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let clash = alice
        .request(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "one_time_keys": { "signed_curve25519:K2": { "key": "y" } } })),
        )
        .await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST);
    assert_eq!(clash.errcode(), "M_INVALID_PARAM");
    // Device keys naming another user are refused.
    let forged = alice
        .request(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": device_keys(&bob.user_id, &alice.device_id, "c9") })),
        )
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_or_deleted_device_shows_in_the_other_users_sync_and_key_query() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = pair(&s).await;
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice.user_id, &alice.device_id, "c1") }),
        )
        .await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let quiet = bob.sync(Some(&since), 0).await;
    assert_eq!(quiet["device_lists"]["changed"], json!([]), "nothing changed yet");

    alice.put(&format!("/_matrix/client/v3/devices/{}", alice.device_id), json!({ "display_name": "Laptop" })).await;
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice.user_id, &alice.device_id, "c2") }),
        )
        .await;
    let s1 = bob.sync(Some(&since), 5_000).await;
    assert_eq!(s1["device_lists"]["changed"], json!([alice.user_id]), "{s1}");
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    let keys = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(keys["keys"][format!("curve25519:{}", alice.device_id)], "c2");
    assert_eq!(keys["unsigned"]["device_display_name"], "Laptop");

    // Deleting the device (password auth) removes its keys and tells bob.
    let next = s1["next_batch"].as_str().unwrap().to_owned();
    let del = alice
        .request(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            Some(json!({
                "devices": [alice.device_id],
                "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" },
            })),
        )
        .await;
    assert_eq!(del.status, StatusCode::OK, "{}", String::from_utf8_lossy(&del.body));
    let s2 = bob.sync(Some(&next), 5_000).await;
    assert_eq!(s2["device_lists"]["changed"], json!([alice.user_id]), "{s2}");
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}), "no keys of a deleted device: {q}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signing_keys_need_the_password_to_replace_and_take_signatures() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = pair(&s).await;
    let me = alice.user_id.clone();
    let dk = device_keys(&me, &alice.device_id, "c1");
    alice.post("/_matrix/client/v3/keys/upload", json!({ "device_keys": dk })).await;
    let master = json!({ "user_id": me, "usage": ["master"], "keys": { "ed25519:MPUB": "MPUB" } });
    let ssk = json!({ "user_id": me, "usage": ["self_signing"], "keys": { "ed25519:SPUB": "SPUB" } });
    let usk = json!({ "user_id": me, "usage": ["user_signing"], "keys": { "ed25519:UPUB": "UPUB" } });
    // The first upload needs no password.
    alice
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({ "master_key": master, "self_signing_key": ssk, "user_signing_key": usk }),
        )
        .await;
    let replace = json!({ "master_key": { "user_id": me, "usage": ["master"], "keys": { "ed25519:M2": "M2" } } });
    let challenged =
        alice.request(Method::POST, "/_matrix/client/v3/keys/device_signing/upload", Some(replace.clone())).await;
    assert_eq!(challenged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenged.json()["flows"][0]["stages"][0], "m.login.password");

    // The self-signing key signs the device: bob sees the signature; bob never sees alice's user-signing key.
    let mut signed = dk.clone();
    signed["signatures"] = json!({ me.clone(): { "ed25519:SPUB": "device-signed-by-ssk" } });
    let r = alice
        .post("/_matrix/client/v3/keys/signatures/upload", json!({ me.clone(): { alice.device_id.clone(): signed } }))
        .await;
    assert_eq!(r["failures"], json!({}), "{r}");
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { me.clone(): [] } })).await;
    let sigs = &q["device_keys"][&me][&alice.device_id]["signatures"][&me];
    assert_eq!(sigs["ed25519:SPUB"], "device-signed-by-ssk");
    assert_eq!(sigs[format!("ed25519:{}", alice.device_id)], "sig-c1", "the device's own signature stays");
    assert_eq!(q["master_keys"][&me]["keys"], master["keys"]);
    assert_eq!(q["self_signing_keys"][&me]["keys"], ssk["keys"]);
    assert!(q["user_signing_keys"].get(&me).is_none(), "{q}");
    let own = alice.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { me.clone(): [] } })).await;
    assert_eq!(own["user_signing_keys"][&me]["keys"], usk["keys"]);
    // A signature over a different object is refused.
    let mut tampered = dk.clone();
    tampered["keys"]["curve25519:X"] = json!("evil");
    tampered["signatures"] = json!({ me.clone(): { "ed25519:SPUB": "x" } });
    let r = alice
        .post("/_matrix/client/v3/keys/signatures/upload", json!({ me.clone(): { alice.device_id.clone(): tampered } }))
        .await;
    assert!(r["failures"][&me].get(&alice.device_id).is_some(), "{r}");

    let with_password = {
        let mut b = replace.clone();
        b["auth"] = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" });
        b
    };
    alice.post("/_matrix/client/v3/keys/device_signing/upload", with_password).await;
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { me.clone(): [] } })).await;
    assert_eq!(q["master_keys"][&me]["keys"]["ed25519:M2"], "M2");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_that_logs_out_other_devices_forgets_their_keys() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = pair(&s).await;
    // Alice's second device, with keys.
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" });
    let phone = alice.post("/_matrix/client/v3/login", login).await;
    let phone = Client {
        token: phone["access_token"].as_str().unwrap().to_owned(),
        device_id: phone["device_id"].as_str().unwrap().to_owned(),
        ..alice.clone()
    };
    for c in [&alice, &phone] {
        c.post("/_matrix/client/v3/keys/upload", json!({ "device_keys": device_keys(&c.user_id, &c.device_id, "k") }))
            .await;
    }
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let body = json!({
        "new_password": "pass-word-2",
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" },
    });
    let r = alice.request(Method::POST, "/_matrix/client/v3/account/password", Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        phone.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Bob's client learns alice's devices changed, and only the device still logged in has keys.
    let got = bob.sync(Some(&since), 5_000).await;
    assert_eq!(got["device_lists"]["changed"], json!([alice.user_id]), "{got}");
    let q = bob.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { alice.user_id.clone(): [] } })).await;
    let devices: Vec<&String> = q["device_keys"][&alice.user_id].as_object().unwrap().keys().collect();
    assert_eq!(devices, [&alice.device_id]);
    s.stop().await;
}

/// More to-device messages than one `/sync` page: every one arrives, once. (Room keys
/// travel this way; a sync that acknowledged a page it did not carry lost them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_backlog_longer_than_a_page_arrives_whole_over_several_syncs() {
    // Past the per-user burst on purpose: 250 sends in a row.
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.rate_limit.burst = 1000;
    })
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let first = bob.sync(None, 0).await;
    let total = 250;
    for n in 0..total {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test/b{n}");
        alice.put(&path, json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } } })).await;
    }
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mut got: Vec<u64> = Vec::new();
    for _ in 0..10 {
        let r = bob.sync(Some(&since), 0).await;
        got.extend(r["to_device"]["events"].as_array().unwrap().iter().map(|e| e["content"]["n"].as_u64().unwrap()));
        since = r["next_batch"].as_str().unwrap().to_owned();
        if got.len() >= total {
            break;
        }
    }
    let expected: Vec<u64> = (0..total as u64).collect();
    assert_eq!(got, expected, "each message once, in order");
    let r = bob.sync(Some(&since), 0).await;
    assert!(r["to_device"]["events"].as_array().unwrap().is_empty());
    s.stop().await;
}
