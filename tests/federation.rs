//! Two servers over real TLS on loopback: signed requests, key fetching,
//! discovery through `[federation.hosts]`, allow/deny lists.

use http::{Method, StatusCode};
use myelin_engine::{federation::xmatrix, keys::ServerKeys};
use myelin_suite::{TestServer, enc, federation_pair, https, https_with};
use serde_json::json;

#[tokio::test]
async fn a_remote_profile_is_fetched_with_a_signed_request_and_verified_key() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)),
        json!({ "displayname": "Bob of B" }),
    )
    .await;

    let profile = alice.get("/_matrix/client/v3/profile/@bob:b.test").await;
    assert_eq!(profile["displayname"], "Bob of B");
    // B verified A's signature with A's key, fetched over TLS and stored.
    let a_key = a.engine.keys.key_id().to_owned();
    assert_eq!(
        b.engine.keyring.key("a.test", &a_key, false).unwrap().as_deref(),
        Some(a.engine.keys.public_key_b64()),
        "B must have fetched and verified A's key"
    );
    let r = alice.request(Method::GET, "/_matrix/client/v3/profile/@nobody:b.test", None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unsigned_forged_and_misaddressed_requests_are_refused() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |c| c.federation.deny = vec!["c.test".into()]).await;
    b.register("bob").await;
    let fed = b.federation.unwrap();
    let path = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Ab.test";

    let r = https(fed, Method::GET, path, None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"));

    // Signed by a key A never published.
    let impostor = ServerKeys::from_seed("a.test".try_into().unwrap(), "evil", &[1u8; 32]).unwrap();
    let forged = xmatrix::sign(&impostor, "a.test", "b.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &forged)]).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED", "{}", String::from_utf8_lossy(&r.body));

    // A's real key, but for another destination.
    let elsewhere = xmatrix::sign(&a.engine.keys, "a.test", "z.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &elsewhere)]).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED");

    // A's real key over another path: the signature covers the URI.
    let other_path = xmatrix::sign(&a.engine.keys, "a.test", "b.test", "GET", "/other", None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &other_path)]).await;
    assert_eq!(r.errcode(), "M_UNAUTHORIZED");

    // The genuine request passes.
    let genuine = xmatrix::sign(&a.engine.keys, "a.test", "b.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &genuine)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["displayname"], "bob");

    // A denied origin is refused before its signature is even checked.
    let denied = ServerKeys::from_seed("c.test".try_into().unwrap(), "k", &[2u8; 32]).unwrap();
    let header = xmatrix::sign(&denied, "c.test", "b.test", "GET", path, None).unwrap();
    let r = https_with(fed, Method::GET, path, None, &[("authorization", &header)]).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn tls_verification_trusts_a_configured_ca_and_nothing_else() {
    let (a_port, s_port) = (myelin_suite::free_port(), myelin_suite::free_port());
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{a_port}").parse().unwrap();
    let s_addr: std::net::SocketAddr = format!("127.0.0.1:{s_port}").parse().unwrap();
    let b = TestServer::start_with("b.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_addr);
        c.federation.hosts.insert("s.test".into(), s_addr);
    })
    .await;
    b.register("bob").await;
    let b_addr = b.federation.unwrap();
    let b_cert = b.engine.config.data_dir.join("keys/tls.crt");

    // Trusts B's generated certificate through trusted_ca: the lookup succeeds end to end.
    let trusting = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = a_addr;
        c.federation.verify_tls = true;
        c.federation.trusted_ca = vec![b_cert.clone()];
        c.federation.hosts.insert("b.test".into(), b_addr);
    })
    .await;
    let alice = trusting.register("alice").await;
    assert_eq!(alice.get("/_matrix/client/v3/profile/@bob:b.test").await["displayname"], "bob");

    // Verifies, but does not trust B's self-signed certificate: refused at the TLS handshake.
    let strict = TestServer::start_with("s.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = s_addr;
        c.federation.verify_tls = true;
        c.federation.hosts.insert("b.test".into(), b_addr);
    })
    .await;
    let sam = strict.register("sam").await;
    let r = sam.request(Method::GET, "/_matrix/client/v3/profile/@bob:b.test", None).await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(text.contains("TLS"), "a self-signed certificate must be refused without trusted_ca: {text}");
    trusting.stop().await;
    strict.stop().await;
    b.stop().await;
}
