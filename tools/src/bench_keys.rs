//! `myelin bench keys`: end-to-end encryption key traffic between two servers.
//!
//! N users on server B register (one device each), upload device keys and
//! one-time keys, and join one room there; a user on server A joins that room
//! over federation, so A tracks every B user's device list, as an encrypting
//! client's server does. Then, from A's user, timed:
//! - `/keys/query` for all N users (Client-Server §"POST /_matrix/client/v3/keys/query"):
//!   the first answer, then `samples` more; each must list a device for every user;
//! - `/keys/claim` of one `signed_curve25519` key for each of the first D devices
//!   (§"POST /_matrix/client/v3/keys/claim"), `samples` times; each must claim all D;
//! - to-device fan-out (§"PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}"):
//!   T messages sent to the first R devices of B (T/R each, one request per R
//!   messages), while those R receivers long-poll `/sync`; timed from the first
//!   request until the last message is seen, and each message's send-to-`/sync`
//!   latency. Every message must arrive exactly once.
//!
//! The keys are well-formed but not real (no server checks the client's
//! signatures); what is measured is the servers' work, not cryptography.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http::Method;
use serde_json::{Map, json};

use crate::bench::{Conn, SETTLE_AFTER_SETUP, enc, percentile, public_room, register_device, run_id};

/// Sizes of the `keys` scenario.
pub struct KeysSizes {
    /// Users on B (each with one device).
    pub users: usize,
    /// Devices claimed per `/keys/claim`.
    pub claim: usize,
    /// To-device messages in all.
    pub to_device: usize,
    /// Devices the to-device messages go to.
    pub receivers: usize,
    /// Repetitions of the query and the claim.
    pub samples: usize,
}

/// Result of the `keys` scenario.
pub struct KeysReport {
    /// The first `/keys/query` of all users.
    pub query_first: Duration,
    /// Later queries: p50, p99.
    pub query: (Duration, Duration),
    /// `/keys/claim` of `claim` devices: p50, p99.
    pub claim: (Duration, Duration),
    /// From the first to-device request until the last message was seen.
    pub to_device_elapsed: Duration,
    /// Of which the requests.
    pub to_device_send: Duration,
    /// Send-to-`/sync` latency: p50, p99.
    pub to_device_latency: (Duration, Duration),
    /// To-device messages seen (once each).
    pub delivered: usize,
    /// Seen more than once.
    pub duplicates: usize,
}

/// A user of B: (access token, user id, device id).
type Account = (String, String, String);

/// A base64-shaped string (43 characters, like an unpadded 32-byte key) unique to `seed`.
fn fake_key(seed: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    (0..43)
        .map(|i| {
            for b in seed.bytes().chain([i as u8]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            ALPHABET[(h >> 58) as usize] as char
        })
        .collect()
}

/// Uploads device keys and `otks` signed one-time keys for the account.
async fn upload_keys(conn: &mut Conn, (token, user, device): &Account, otks: usize) -> Result<(), String> {
    let sig = |what: &str| json!({ user.as_str(): { format!("ed25519:{device}"): fake_key(&format!("{what}sig{user}")) + &fake_key(what) } });
    let mut one_time = Map::new();
    for k in 0..otks {
        let key = fake_key(&format!("otk{user}{k}"));
        one_time.insert(format!("signed_curve25519:AAAA{k:04}"), json!({ "key": key, "signatures": sig(&key) }));
    }
    let body = json!({
        "device_keys": {
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{device}"): fake_key(&format!("c{user}")),
                format!("ed25519:{device}"): fake_key(&format!("e{user}")),
            },
            "signatures": sig("device"),
        },
        "one_time_keys": one_time,
    });
    conn.ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(token), Some(body)).await?;
    Ok(())
}

/// `keys`: B's users and their keys, A's user in their room, then the three timed parts.
pub async fn keys(url_a: &str, url_b: &str, server_b: &str, sizes: &KeysSizes) -> Result<KeysReport, String> {
    let KeysSizes { users, claim, to_device, receivers, samples } = *sizes;
    let (claim, receivers) = (claim.min(users), receivers.clamp(1, users.max(1)));
    let id = run_id();
    let mut b = Conn::open(url_b).await?;
    let owner = register_device(&mut b, &format!("bench{id}ko")).await?;
    let room = public_room(&mut b, &owner.0, json!({})).await?;

    eprintln!("bench keys: {users} users with keys on {url_b}, joined to one room");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let workers = 8usize.min(users.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, room, id, done) = (url_b.to_owned(), room.clone(), id.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&url).await?;
            let mut mine = Vec::new();
            let mut i = w;
            while i < users {
                let account = register_device(&mut c, &format!("bench{id}k{i}")).await?;
                let otks = if i < claim { samples + 1 } else { 0 };
                upload_keys(&mut c, &account, otks).await?;
                c.ok(
                    Method::POST,
                    &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                    Some(&account.0),
                    Some(json!({})),
                )
                .await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 250 == 0 {
                    eprintln!("  {n} / {users} users, {:.0} s", started.elapsed().as_secs_f64());
                }
                mine.push((i, account));
                i += workers;
            }
            Ok::<_, String>(mine)
        }));
    }
    let mut accounts: Vec<(usize, Account)> = Vec::with_capacity(users);
    for t in tasks {
        accounts.extend(t.await.map_err(|e| e.to_string())??);
    }
    accounts.sort_by_key(|(i, _)| *i);
    let accounts: Vec<Account> = accounts.into_iter().map(|(_, a)| a).collect();

    let mut a = Conn::open(url_a).await?;
    let asker = register_device(&mut a, &format!("bench{id}ka")).await?;
    a.ok(
        Method::POST,
        &format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(server_b)),
        Some(&asker.0),
        Some(json!({})),
    )
    .await?;
    let want = users + 2;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
        let j = a.ok(Method::GET, &path, Some(&asker.0), None).await?;
        let seen = j["joined"].as_object().map_or(0, |m| m.len());
        if seen >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("A lists {seen} of {want} members after 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("bench keys: a user on {url_a} is in the room; setup took {:.0} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;

    // /keys/query of every user.
    let query_body = json!({
        "device_keys": accounts.iter().map(|(_, u, _)| (u.clone(), json!([]))).collect::<Map<_, _>>(),
        "timeout": 10000,
    });
    let mut query_times = Vec::new();
    let mut query_first = Duration::ZERO;
    for s in 0..=samples {
        let t = Instant::now();
        let j = a.ok(Method::POST, "/_matrix/client/v3/keys/query", Some(&asker.0), Some(query_body.clone())).await?;
        let took = t.elapsed();
        let listed =
            accounts.iter().filter(|(_, u, d)| j["device_keys"][u.as_str()][d.as_str()]["keys"].is_object()).count();
        if listed != users {
            return Err(format!(
                "/keys/query listed the device of {listed} of {users} users: failures {}",
                j["failures"]
            ));
        }
        if s == 0 {
            query_first = took;
        } else {
            query_times.push(took);
        }
    }
    query_times.sort();

    // /keys/claim of one key per device.
    let mut claim_times = Vec::new();
    if claim > 0 {
        let mut wanted = Map::new();
        for (_, u, d) in &accounts[..claim] {
            wanted.insert(u.clone(), json!({ d.as_str(): "signed_curve25519" }));
        }
        let claim_body = json!({ "one_time_keys": wanted, "timeout": 10000 });
        for _ in 0..samples.max(1) {
            let t = Instant::now();
            let j =
                a.ok(Method::POST, "/_matrix/client/v3/keys/claim", Some(&asker.0), Some(claim_body.clone())).await?;
            claim_times.push(t.elapsed());
            let got = accounts[..claim]
                .iter()
                .filter(|(_, u, d)| {
                    j["one_time_keys"][u.as_str()][d.as_str()].as_object().is_some_and(|m| !m.is_empty())
                })
                .count();
            if got != claim {
                return Err(format!("/keys/claim gave keys for {got} of {claim} devices: failures {}", j["failures"]));
            }
        }
        claim_times.sort();
    }

    // To-device fan-out: receivers long-poll, then the messages go out.
    let per = to_device.div_ceil(receivers).max(1);
    let total = per * receivers;
    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(receivers);
    let no_rooms = enc(r#"{"room":{"rooms":[]},"presence":{"types":[]},"account_data":{"types":[]}}"#);
    let mut listeners = Vec::new();
    for (token, _, _) in &accounts[..receivers] {
        let token = token.clone();
        let (url, ready, no_rooms, run, sender) =
            (url_b.to_owned(), ready_tx.clone(), no_rooms.clone(), id.clone(), asker.1.clone());
        listeners.push(tokio::spawn(async move {
            let mut c = Conn::open(&url).await?;
            let first = c
                .ok(Method::GET, &format!("/_matrix/client/v3/sync?timeout=0&filter={no_rooms}"), Some(&token), None)
                .await?;
            let mut since = first["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
            let _ = ready.send(()).await;
            let mut seen: Vec<(usize, Duration)> = Vec::new();
            let mut ids = HashSet::new();
            let mut duplicates = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while ids.len() < per && Instant::now() < deadline {
                let path = format!("/_matrix/client/v3/sync?timeout=10000&filter={no_rooms}&since={}", enc(&since));
                let j = c.ok(Method::GET, &path, Some(&token), None).await?;
                let at = epoch.elapsed();
                since = j["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
                for e in j["to_device"]["events"].as_array().into_iter().flatten() {
                    if e["sender"] != sender.as_str() || e["content"]["run"] != run.as_str() {
                        continue;
                    }
                    let Some(n) = e["content"]["n"].as_u64() else { continue };
                    if ids.insert(n) {
                        seen.push((n as usize, at));
                    } else {
                        duplicates += 1;
                    }
                }
            }
            Ok::<_, String>((seen, duplicates))
        }));
    }
    drop(ready_tx);
    for _ in 0..receivers {
        ready_rx.recv().await.ok_or("a receiver stopped before its first sync")?;
    }
    eprintln!("bench keys: {total} to-device messages to {receivers} devices on {url_b}");
    let start = epoch.elapsed();
    let mut sent_at = Vec::with_capacity(per);
    for round in 0..per {
        let mut messages = Map::new();
        for (r, (_, user, device)) in accounts[..receivers].iter().enumerate() {
            let n = round * receivers + r;
            messages.insert(user.clone(), json!({ device.as_str(): { "run": id, "n": n } }));
        }
        sent_at.push(epoch.elapsed());
        let path = format!("/_matrix/client/v3/sendToDevice/org.myelin.bench/b{id}-{round}");
        a.ok(Method::PUT, &path, Some(&asker.0), Some(json!({ "messages": messages }))).await?;
    }
    let to_device_send = epoch.elapsed() - start;
    let (mut latencies, mut duplicates, mut last) = (Vec::with_capacity(total), 0, start);
    for l in listeners {
        let (seen, dups) = l.await.map_err(|e| e.to_string())??;
        duplicates += dups;
        for (n, at) in seen {
            latencies.push(at.saturating_sub(sent_at[n / receivers]));
            last = last.max(at);
        }
    }
    latencies.sort();
    Ok(KeysReport {
        query_first,
        query: (percentile(&query_times, 0.5), percentile(&query_times, 0.99)),
        claim: (percentile(&claim_times, 0.5), percentile(&claim_times, 0.99)),
        to_device_elapsed: last - start,
        to_device_send,
        to_device_latency: (percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
        delivered: latencies.len(),
        duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::fake_key;

    #[test]
    fn fake_keys_look_like_unpadded_base64_and_differ_by_seed() {
        let (a, b) = (fake_key("a"), fake_key("b"));
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'));
        assert_ne!(a, b);
        assert_eq!(a, fake_key("a"));
    }
}
