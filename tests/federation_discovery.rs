//! Finding a server that has no `[federation.hosts]` entry: `.well-known`
//! delegation and SRV records.

use myelin_suite::{TestServer, enc, tiny_tls_server, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_found_through_its_well_known_delegation() {
    let b_port = myelin_suite::free_port();
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{b_port}").parse().unwrap();
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        // B is found on loopback without a hosts entry: the outbound policy must allow it.
        c.federation.ip_range_allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let a_fed = a.federation.unwrap();
    // B is "localhost" with no port: only .well-known can say where it listens.
    let b = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.federation.listen = b_addr;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_fed);
    })
    .await;
    let tls = myelin_api::tls::server_config(&b.engine.config).unwrap();
    // Binding port 443 needs root or CAP_NET_BIND_SERVICE, which the CI machine has.
    let well_known = json!({ "m.server": format!("127.0.0.1:{b_port}") }).to_string().into_bytes();
    let (_, seen, server) = tiny_tls_server("127.0.0.1:443", tls, move |path| match path {
        "/.well-known/matrix/server" => (200, "application/json", well_known.clone()),
        _ => (404, "application/json", b"{}".to_vec()),
    })
    .await;
    let hits = || seen.lock().unwrap().iter().filter(|p| p.as_str() == "/.well-known/matrix/server").count();
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    bob.put(&format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)), json!({ "displayname": "Bob" }))
        .await;

    let profile = alice.get("/_matrix/client/v3/profile/@bob:localhost").await;
    assert_eq!(profile["displayname"], "Bob");
    assert_eq!(hits(), 1, "one lookup, then the cached answer");
    alice.get("/_matrix/client/v3/profile/@bob:localhost").await;
    assert_eq!(hits(), 1);

    // A room on B, joined from A through the delegated address.
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    alice.post(&format!("/_matrix/client/v3/join/{}?server_name=localhost", enc(&room)), json!({})).await;
    bob.send_text(&room, "found you").await;
    wait_for_text(&alice, &room, "found you").await;
    server.abort();
    a.stop().await;
    b.stop().await;
}

/// A DNS answer to `query` (its id, its question): one SRV record, or NXDOMAIN.
fn srv_answer(query: &[u8], question: &[u8], record: Option<(u16, &str)>) -> Vec<u8> {
    let mut out = query[0..2].to_vec();
    // Response, recursion desired and available; NXDOMAIN without a record.
    out.extend_from_slice(&[0x81, if record.is_some() { 0x80 } else { 0x83 }]);
    out.extend_from_slice(&[0, 1, 0, u8::from(record.is_some()), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if let Some((port, target)) = record {
        out.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1]); // the question's name, SRV, IN
        out.extend_from_slice(&300u32.to_be_bytes());
        let mut data = vec![0, 10, 0, 1]; // priority 10, weight 1
        data.extend_from_slice(&port.to_be_bytes());
        for label in target.split('.') {
            data.push(label.len() as u8);
            data.extend_from_slice(label.as_bytes());
        }
        data.push(0);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// A UDP DNS server on loopback answering SRV queries for `name` with `target:port`
/// and NXDOMAIN for everything else; counts the queries it answered with a record.
async fn fake_srv_resolver(
    name: &'static str,
    target: &'static str,
    port: u16,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            let mut labels = Vec::new();
            let mut at = 12;
            while at < n && query[at] != 0 {
                let len = query[at] as usize;
                labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).into_owned());
                at += 1 + len;
            }
            let question = &query[12..(at + 5).min(n)];
            let reply = if labels.join(".") == name {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                srv_answer(query, question, Some((port, target)))
            } else {
                srv_answer(query, question, None)
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_found_through_its_srv_record() {
    let (a_port, b_port) = (myelin_suite::free_port(), myelin_suite::free_port());
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{a_port}").parse().unwrap();
    let (dns, hits) = fake_srv_resolver("_matrix-fed._tcp.b.srvtest", "localhost", b_port).await;
    let b = TestServer::start_with("b.srvtest", |c| {
        c.registration.enabled = true;
        c.federation.listen = format!("127.0.0.1:{b_port}").parse().unwrap();
        c.federation.verify_tls = false;
        c.federation.hosts.insert("a.test".into(), a_addr);
    })
    .await;
    // A knows nothing of B but its name: no hosts entry, no .well-known, only the SRV record.
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.listen = a_addr;
        c.federation.verify_tls = false;
        c.federation.dns_servers = vec![dns];
        c.federation.ip_range_allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    bob.put("/_matrix/client/v3/profile/%40bob%3Ab.srvtest/displayname", json!({ "displayname": "Bob via SRV" })).await;
    let p = alice.get("/_matrix/client/v3/profile/%40bob%3Ab.srvtest").await;
    assert_eq!(p["displayname"], "Bob via SRV");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the SRV record was asked for");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_target_on_loopback_is_not_connected_to_without_an_allowed_range() {
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = internal.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let listener = tokio::spawn(async move {
        while let Ok((tcp, _)) = internal.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(tcp);
        }
    });
    let (dns, hits) = fake_srv_resolver("_matrix-fed._tcp.evil.srvtest", "localhost", port).await;
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.dns_servers = vec![dns];
    })
    .await;
    let alice = a.register("alice").await;
    let r = alice.request(http::Method::GET, "/_matrix/client/v3/profile/%40x%3Aevil.srvtest", None).await;
    assert_eq!(r.status, http::StatusCode::NOT_FOUND);
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the SRV record was asked for");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "the SRV target on loopback was connected to");
    listener.abort();
    a.stop().await;
}
