//! Registration per client address and federation per origin server are rate
//! limited (issue #25 §2): over the budget, 429 `M_LIMIT_EXCEEDED` with
//! `retry_after_ms`, nothing created; a request whose `X-Matrix` signature
//! does not check out spends nobody's budget, and forged key ids cost at most
//! one key lookup per server per window. Behind a trusted reverse proxy the
//! client's address is the one the proxy names in `X-Forwarded-For`.

use http::{Method, StatusCode};
use myelin_engine::federation::xmatrix;
use myelin_suite::{TestServer, federation_pair, http, http_with, https_with, signed_get, tiny_tls_server};
use serde_json::json;

async fn register(s: &TestServer, name: &str) -> myelin_suite::Reply {
    let body = json!({ "username": name, "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
    http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_from_one_address_are_limited_and_nothing_is_created_over_the_limit() {
    let s = TestServer::start_with("reglimit.test", |c| {
        c.registration.enabled = true;
        c.registration.guests = true;
        c.rate_limit.registrations_burst = 3;
        c.rate_limit.registrations_per_second = 2.0;
    })
    .await;
    // The UIA round trip (no `auth`) is not a registration and costs nothing.
    for _ in 0..5 {
        let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(b"{\"username\":\"x\"}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&r.body));
    }
    for name in ["r1", "r2"] {
        let r = register(&s, name).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    // A guest counts as a registration from that address.
    let guest = http(s.client, Method::POST, "/_matrix/client/v3/register?kind=guest", Some(b"{}")).await;
    assert_eq!(guest.status, StatusCode::OK, "{}", String::from_utf8_lossy(&guest.body));
    let over = register(&s, "r4").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&over.body));
    assert_eq!(over.errcode(), "M_LIMIT_EXCEEDED");
    let retry = over.json()["retry_after_ms"].as_u64();
    assert!(retry.is_some_and(|ms| ms > 0 && ms <= 500), "retry_after_ms {retry:?}");
    let guest = http(s.client, Method::POST, "/_matrix/client/v3/register?kind=guest", Some(b"{}")).await;
    assert_eq!(guest.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&guest.body));
    // The refused account does not exist.
    let available = http(s.client, Method::GET, "/_matrix/client/v3/register/available?username=r4", None).await;
    assert_eq!(available.status, StatusCode::OK, "{}", String::from_utf8_lossy(&available.body));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let later = register(&s, "r4").await;
    assert_eq!(later.status, StatusCode::OK, "the bucket refills: {}", String::from_utf8_lossy(&later.body));
    s.stop().await;
}

/// Registers `name` as the client `forwarded_for` behind a proxy on loopback.
async fn register_via(s: &TestServer, name: &str, forwarded_for: &str) -> myelin_suite::Reply {
    let body = json!({ "username": name, "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
    let headers = [("x-forwarded-for", forwarded_for)];
    http_with(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes()), &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget_and_elsewhere_the_header_is_ignored() {
    let limits = |c: &mut myelin_engine::Config| {
        c.registration.enabled = true;
        c.rate_limit.registrations_burst = 2;
        c.rate_limit.registrations_per_second = 0.01;
    };
    let proxied = TestServer::start_with("proxied.test", |c| {
        limits(c);
        c.client.trusted_proxies = vec![serde_json::from_value(json!("127.0.0.1")).unwrap()];
    })
    .await;
    // Two clients behind the proxy: each gets the whole budget, and no more.
    for (name, client) in [("p1", "198.51.100.1"), ("p2", "198.51.100.1"), ("q1", "198.51.100.2")] {
        let r = register_via(&proxied, name, client).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", String::from_utf8_lossy(&r.body));
    }
    let over = register_via(&proxied, "p3", "198.51.100.1").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&over.body));
    // What the client wrote itself, left of what the proxy appended, changes nothing.
    let spoofed = register_via(&proxied, "p4", "203.0.113.50, 198.51.100.1").await;
    assert_eq!(spoofed.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&spoofed.body));
    let q2 = register_via(&proxied, "q2", "198.51.100.2").await;
    assert_eq!(q2.status, StatusCode::OK, "{}", String::from_utf8_lossy(&q2.body));
    proxied.stop().await;

    // No trusted proxy configured: a header naming a new address each time is ignored.
    let direct = TestServer::start_with("direct.test", limits).await;
    for (i, name) in ["d1", "d2"].into_iter().enumerate() {
        let r = register_via(&direct, name, &format!("198.51.100.{}", 10 + i)).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", String::from_utf8_lossy(&r.body));
    }
    let over = register_via(&direct, "d3", "198.51.100.99").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&over.body));
    direct.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_server_over_its_budget_is_told_to_wait_and_forged_requests_spend_nothing() {
    let (a, b) = federation_pair(
        "fa.test",
        "fb.test",
        |_| {},
        |c| {
            c.rate_limit.federation_burst = 4;
            c.rate_limit.federation_per_second = 2.0;
        },
    )
    .await;
    let path = "/_matrix/federation/v1/publicRooms";
    // Signed with b's own key but claiming to be fa.test: refused, and fa.test's budget untouched.
    for _ in 0..10 {
        let header = xmatrix::sign(&b.engine.keys, "fa.test", "fb.test", "GET", path, None).unwrap();
        let forged = https_with(b.federation.unwrap(), Method::GET, path, None, &[("authorization", &header)]).await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&forged.body));
    }
    for i in 0..4 {
        let r = signed_get(&a, &b, path).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", String::from_utf8_lossy(&r.body));
    }
    let over = signed_get(&a, &b, path).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&over.body));
    assert_eq!(over.errcode(), "M_LIMIT_EXCEEDED");
    assert!(over.json()["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", String::from_utf8_lossy(&over.body));
    // Unauthenticated endpoints are not counted against anyone.
    let version = https_with(b.federation.unwrap(), Method::GET, "/_matrix/federation/v1/version", None, &[]).await;
    assert_eq!(version.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(signed_get(&a, &b, path).await.status, StatusCode::OK, "the bucket refills");
    a.stop().await;
    b.stop().await;
}

/// A TLS host on loopback that answers every request 404 (no keys to give),
/// with the paths it was asked; its temp dir lives as long as the first item.
async fn keyless_host()
-> (tempfile::TempDir, std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>)
{
    let dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(dir.path(), "keyless.test")).unwrap();
    let (addr, seen, server) =
        tiny_tls_server("127.0.0.1:0", tls, |_| (404, "application/json", br#"{"errcode":"M_NOT_FOUND"}"#.to_vec()))
            .await;
    (dir, addr, seen, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_key_ids_cost_one_key_lookup_not_one_per_request() {
    // "keyless.test" answers every path 404: its keys cannot be had.
    let (_dir, addr, seen, server) = keyless_host().await;
    let b = TestServer::start_with("victim.test", |c| {
        c.federation.verify_tls = false;
        c.federation.hosts.insert("keyless.test".into(), addr);
    })
    .await;
    let path = "/_matrix/federation/v1/publicRooms";
    // A well-formed signature (64 bytes, unpadded base64) that no key will verify.
    let sig = "A".repeat(86);
    let mut requests = Vec::new();
    for i in 0..20 {
        let header = format!(
            "X-Matrix origin=\"keyless.test\",destination=\"victim.test\",key=\"ed25519:forged{i}\",sig=\"{sig}\""
        );
        let fed = b.federation.unwrap();
        requests.push(tokio::spawn(async move {
            https_with(fed, Method::GET, path, None, &[("authorization", &header)]).await.status
        }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    // The unauthenticated notary endpoint shares the same throttle.
    let q = https_with(b.federation.unwrap(), Method::GET, "/_matrix/key/v2/query/keyless.test", None, &[]).await;
    assert!(
        q.status.is_client_error() || q.json()["server_keys"].as_array().is_some_and(|k| k.is_empty()),
        "{}",
        String::from_utf8_lossy(&q.body)
    );
    let asked = seen.lock().unwrap().iter().filter(|p| p.starts_with("/_matrix/key/")).count();
    assert_eq!(asked, 1, "twenty forged requests and a notary query made {asked} key fetches");
    // After the failure window the server is asked again.
    tokio::time::sleep(myelin_engine::federation::key_fetch::RECHECK_AFTER_FAILURE).await;
    let header =
        format!("X-Matrix origin=\"keyless.test\",destination=\"victim.test\",key=\"ed25519:x\",sig=\"{sig}\"");
    let r = https_with(b.federation.unwrap(), Method::GET, path, None, &[("authorization", &header)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let asked = seen.lock().unwrap().iter().filter(|p| p.starts_with("/_matrix/key/")).count();
    assert_eq!(asked, 2);
    server.abort();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_ever_new_servers_cost_at_most_the_key_lookup_budget() {
    // Twenty made-up servers, all pointing at one host that has no keys to give.
    let (_dir, addr, seen, server) = keyless_host().await;
    let b = TestServer::start_with("victim.test", |c| {
        c.federation.verify_tls = false;
        for i in 0..21 {
            c.federation.hosts.insert(format!("s{i}.test"), addr);
        }
        c.rate_limit.key_lookups_burst = 5;
        c.rate_limit.key_lookups_per_second = 0.001;
    })
    .await;
    let path = "/_matrix/federation/v1/publicRooms";
    let sig = "A".repeat(86);
    for i in 0..20 {
        let header =
            format!("X-Matrix origin=\"s{i}.test\",destination=\"victim.test\",key=\"ed25519:k\",sig=\"{sig}\"");
        let r = https_with(b.federation.unwrap(), Method::GET, path, None, &[("authorization", &header)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&r.body));
    }
    let asked = || seen.lock().unwrap().iter().filter(|p| p.starts_with("/_matrix/key/")).count();
    assert_eq!(asked(), 5, "twenty new server names made {} key fetches", asked());
    // The unauthenticated notary endpoint draws on the same budget.
    let q = https_with(b.federation.unwrap(), Method::GET, "/_matrix/key/v2/query/s20.test", None, &[]).await;
    assert!(
        q.status.is_client_error() || q.json()["server_keys"].as_array().is_some_and(|k| k.is_empty()),
        "{}",
        String::from_utf8_lossy(&q.body)
    );
    assert_eq!(asked(), 5, "the notary query was not charged");
    server.abort();
    b.stop().await;
}
