//! Hostile input to the key endpoints whose outbound requests moved into the
//! engine (`/_matrix/key/v2/server`, `/_matrix/key/v2/query`, federation
//! `/user/keys/query` and `/user/keys/claim`): wrong-typed bodies are 400
//! `M_BAD_JSON` (never 200 or a 5xx), garbage path parameters are never a
//! 5xx, and the same request twice at once has one effect.

use http::{Method, StatusCode};
use myelin_suite::{Reply, enc, federation_pair, https, signed};
use serde_json::{Value, json};

fn errcode(r: &Reply) -> Option<String> {
    serde_json::from_slice::<Value>(&r.body).ok().and_then(|j| j["errcode"].as_str().map(str::to_owned))
}

fn check_bad(r: &Reply, what: &str, failures: &mut Vec<String>) {
    if r.status != StatusCode::BAD_REQUEST || errcode(r).as_deref() != Some("M_BAD_JSON") {
        failures.push(format!("{what}: want 400 M_BAD_JSON, got {} {}", r.status, String::from_utf8_lossy(&r.body)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_endpoints_refuse_wrong_types_and_garbage_and_take_valid_bodies() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let bob = b.register("bob").await;
    let bob_id = bob.user_id.clone();
    let mut failures = Vec::new();
    // Federation /user/keys/query and /user/keys/claim, signed by a.test.
    let query = "/_matrix/federation/v1/user/keys/query";
    let claim = "/_matrix/federation/v1/user/keys/claim";
    for (path, body) in [
        (query, json!({ "device_keys": [] })),
        (query, json!({ "device_keys": "everyone" })),
        (query, json!({})),
        (query, json!([{ "device_keys": {} }])),
        (claim, json!({ "one_time_keys": [] })),
        (claim, json!({ "one_time_keys": 5 })),
        (claim, json!(["x"])),
    ] {
        let r = signed(&a, &b, Method::POST, path, Some(&body)).await;
        check_bad(&r, &format!("POST {path} {body}"), &mut failures);
    }
    for (path, body) in [
        (query, json!({ "device_keys": { &bob_id: [] } })),
        (claim, json!({ "one_time_keys": { &bob_id: { &bob.device_id: "signed_curve25519" } } })),
    ] {
        let r = signed(&a, &b, Method::POST, path, Some(&body)).await;
        if r.status != StatusCode::OK {
            failures.push(format!("POST {path} {body}: want 200, got {}", r.status));
        }
    }
    // /_matrix/key/v2/query (no authentication).
    let fed = b.federation.unwrap();
    for body in [json!({ "server_keys": [] }), json!({ "server_keys": "b.test" }), json!([])] {
        let bytes = body.to_string();
        let r = https(fed, Method::POST, "/_matrix/key/v2/query", Some(bytes.as_bytes())).await;
        check_bad(&r, &format!("POST /_matrix/key/v2/query {body}"), &mut failures);
    }
    let r = https(fed, Method::POST, "/_matrix/key/v2/query", Some(br#"{"server_keys":{"b.test":{}}}"#)).await;
    if r.status != StatusCode::OK || r.json()["server_keys"][0]["server_name"] != "b.test" {
        failures.push(format!("key query for b.test: {} {}", r.status, String::from_utf8_lossy(&r.body)));
    }
    // Garbage path parameters: a clear answer, never a 5xx.
    for garbage in ["%00", "..", "no%20such%20server!", "%F0%28%8C%28", "a:b:c:99999"] {
        let r = https(fed, Method::GET, &format!("/_matrix/key/v2/query/{garbage}"), None).await;
        if r.status.is_server_error() {
            failures.push(format!("GET key/v2/query/{garbage}: {}", r.status));
        }
        let path = format!("/_matrix/federation/v1/user/devices/{garbage}");
        let r = signed(&a, &b, Method::GET, &path, None).await;
        if r.status != StatusCode::BAD_REQUEST && r.status != StatusCode::NOT_FOUND {
            failures.push(format!("GET {path}: want 400 or 404, got {}", r.status));
        }
    }
    let r = https(fed, Method::GET, &format!("/_matrix/key/v2/server/{}", enc("junk")), None).await;
    if r.status.is_server_error() {
        failures.push(format!("GET key/v2/server/junk: {}", r.status));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_claim_twice_at_once_hands_out_a_one_time_key_once() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let bob = b.register("bob").await;
    bob.post(
        "/_matrix/client/v3/keys/upload",
        json!({ "one_time_keys": { "signed_curve25519:K1": { "key": "only-one" } } }),
    )
    .await;
    let body = json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "signed_curve25519" } } });
    let path = "/_matrix/federation/v1/user/keys/claim";
    let (first, second) =
        tokio::join!(signed(&a, &b, Method::POST, path, Some(&body)), signed(&a, &b, Method::POST, path, Some(&body)));
    assert_eq!((first.status, second.status), (StatusCode::OK, StatusCode::OK));
    let got =
        |r: &Reply| r.json()["one_time_keys"][&bob.user_id][&bob.device_id]["signed_curve25519:K1"]["key"].clone();
    let handed: Vec<Value> = [got(&first), got(&second)].into_iter().filter(|k| !k.is_null()).collect();
    assert_eq!(handed, vec![json!("only-one")], "exactly one claim gets the key: {handed:?}");
    // And the same key query twice at once answers the same.
    let query = json!({ "device_keys": { &bob.user_id: [] } });
    let qpath = "/_matrix/federation/v1/user/keys/query";
    let (q1, q2) = tokio::join!(
        signed(&a, &b, Method::POST, qpath, Some(&query)),
        signed(&a, &b, Method::POST, qpath, Some(&query))
    );
    assert_eq!(q1.status, StatusCode::OK);
    assert_eq!(q1.json()["device_keys"], q2.json()["device_keys"]);
}
