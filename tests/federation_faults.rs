//! Network faults between servers (issue #22 §4): federation traffic goes
//! through TCP proxies the test controls (`kit::proxy`, wired in with
//! `[federation.hosts]`).
//!
//! - A partition while both sides keep sending messages and change state
//!   concurrently, then heal: both servers converge to the same room state and
//!   both see every event. `MYELIN_PARTITION_S` sets its length (5 s by
//!   default; the "minutes" is `MYELIN_PARTITION_S=180`).
//! - A flapping link (toggled every second): nothing is lost.
//! - A black-hole peer (accepts, never answers): another destination is not
//!   slowed, and the black-holed one gets everything once it answers.
//!
//! Times to converge are printed (`--no-capture`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use myelin_suite::{
    Client, TestServer, enc, free_port,
    proxy::{FaultProxy, Link},
};
use serde_json::json;

/// A server named `name` whose federation listener is `listen`, reaching the
/// other servers through the given addresses.
async fn server(name: &str, listen: SocketAddr, hosts: &[(&str, SocketAddr)]) -> TestServer {
    let hosts: Vec<(String, SocketAddr)> = hosts.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    TestServer::start_with(name, move |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
        c.federation.listen = listen;
        c.federation.verify_tls = false;
        for (n, a) in hosts {
            c.federation.hosts.insert(n, a);
        }
    })
    .await
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Message bodies of the room as `client` sees them through `/messages`,
/// every page (a partition of minutes leaves more than one page of history).
async fn bodies(client: &Client, room: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = String::new();
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000{from}", enc(room));
        let page = client.get(&path).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        out.extend(
            chunk
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)),
        );
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={}", enc(end)),
            _ => break,
        }
    }
    out.sort();
    out
}

/// The room's current state as `(type, state_key) → event id`.
async fn state(client: &Client, room: &str) -> BTreeMap<(String, String), String> {
    let all = client.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room))).await;
    all.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn join(client: &Client, room: &str, via: &str) {
    client.post(&format!("/_matrix/client/v3/join/{}?server_name={via}", enc(room)), json!({})).await;
}

async fn wait_until_listed(client: &Client, room: &str, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let members = client.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room))).await;
        if members["joined"].get(user).is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "{user} never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both sides hold every body in `want` and the same state; how long it took.
async fn converge(a: &Client, b: &Client, room: &str, want: &[String], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (ba, bb) = (bodies(a, room).await, bodies(b, room).await);
        let (sa, sb) = (state(a, room).await, state(b, room).await);
        let complete = |got: &[String]| want.iter().all(|w| got.contains(w));
        if complete(&ba) && complete(&bb) && sa == sb {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no convergence after {limit:?}: A has {}/{} bodies, B {}/{}, states equal: {}\nA: {sa:#?}\nB: {sb:#?}",
            want.iter().filter(|w| ba.contains(w)).count(),
            want.len(),
            want.iter().filter(|w| bb.contains(w)).count(),
            want.len(),
            sa == sb
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_conflicting_state_on_both_sides_converges_after_it_heals() {
    let secs: u64 = std::env::var("MYELIN_PARTITION_S").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let (a_port, b_port) = (free_port(), free_port());
    // B reaches A through `to_a`, A reaches B through `to_b`.
    let to_a = FaultProxy::start("127.0.0.1:0", addr(a_port)).await;
    let to_b = FaultProxy::start("127.0.0.1:0", addr(b_port)).await;
    let a = server("a.test", addr(a_port), &[("b.test", to_b.addr)]).await;
    let b = server("b.test", addr(b_port), &[("a.test", to_a.addr)]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "power_level_content_override": { "users": { "@bob:b.test": 100 } },
        }))
        .await;
    join(&bob, &room, "a.test").await;
    wait_until_listed(&alice, &room, "@bob:b.test").await;

    to_a.set(Link::Down);
    to_b.set(Link::Down);
    let mut want = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0;
    while Instant::now() < deadline || i < 10 {
        alice.send_text(&room, &format!("a{i}")).await;
        bob.send_text(&room, &format!("b{i}")).await;
        want.push(format!("a{i}"));
        want.push(format!("b{i}"));
        if i == 3 {
            // Conflicting state on both sides of the partition.
            alice
                .put(
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
                    json!({ "topic": "from A" }),
                )
                .await;
            bob.put(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
                json!({ "topic": "from B" }),
            )
            .await;
            let pl = json!({ "users": { "@bob:b.test": 100 }, "events_default": 0, "state_default": 50 });
            let mut pa = pl.clone();
            pa["ban"] = json!(60);
            let mut pb = pl;
            pb["kick"] = json!(70);
            alice.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", enc(&room)), pa).await;
            bob.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", enc(&room)), pb).await;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(state(&alice, &room).await, state(&bob, &room).await, "the partition did not separate the sides");
    to_a.set(Link::Up);
    to_b.set(Link::Up);
    let took = converge(&alice, &bob, &room, &want, Duration::from_secs(150)).await;
    // Both resolved to the same topic, whichever it is.
    let ta = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room))).await;
    let tb = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room))).await;
    assert_eq!(ta, tb);
    eprintln!("partition of {secs} s, {} messages: converged {took:?} after healing", want.len());

    // A flapping link: toggled every second while both sides send.
    let mut want2 = Vec::new();
    for i in 0..8 {
        let link = if i % 2 == 0 { Link::Down } else { Link::Up };
        to_a.set(link);
        to_b.set(link);
        alice.send_text(&room, &format!("fa{i}")).await;
        bob.send_text(&room, &format!("fb{i}")).await;
        want2.push(format!("fa{i}"));
        want2.push(format!("fb{i}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    to_a.set(Link::Up);
    to_b.set(Link::Up);
    let took = converge(&alice, &bob, &room, &want2, Duration::from_secs(150)).await;
    eprintln!("flapping link, {} messages: converged {took:?} after the last toggle", want2.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_peer_does_not_slow_the_others_and_gets_everything_once_it_answers() {
    let (a_port, b_port, c_port) = (free_port(), free_port(), free_port());
    let to_b = FaultProxy::start("127.0.0.1:0", addr(b_port)).await;
    let a = server("a.test", addr(a_port), &[("b.test", to_b.addr), ("c.test", addr(c_port))]).await;
    let b = server("b.test", addr(b_port), &[("a.test", addr(a_port)), ("c.test", addr(c_port))]).await;
    let c = server("c.test", addr(c_port), &[("a.test", addr(a_port)), ("b.test", addr(b_port))]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room, "a.test").await;
    join(&carol, &room, "a.test").await;
    wait_until_listed(&alice, &room, "@bob:b.test").await;
    wait_until_listed(&alice, &room, "@carol:c.test").await;

    to_b.set(Link::BlackHole);
    let sent = Instant::now();
    let mut want = Vec::new();
    for i in 0..10 {
        alice.send_text(&room, &format!("m{i}")).await;
        want.push(format!("m{i}"));
    }
    // C gets them at once although A's requests to B hang.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = bodies(&carol, &room).await;
        if want.iter().all(|w| got.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "C was slowed by the black-holed B: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("black hole: C had all 10 after {:?}", sent.elapsed());
    // B has none of them yet, and gets all once it answers.
    let got_b = bodies(&bob, &room).await;
    assert!(!want.iter().all(|w| got_b.contains(w)), "the black hole let traffic through");
    to_b.set(Link::Up);
    let started = Instant::now();
    loop {
        let got = bodies(&bob, &room).await;
        if want.iter().all(|w| got.contains(w)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "B never caught up: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("black hole: B caught up {:?} after it answered", started.elapsed());
}
