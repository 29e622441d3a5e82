//! The two-server scenarios: `federation` (messages from a user on A until a
//! user on B has them all) and `join` (a user on B joining a large room on A).

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use super::{Conn, SETTLE_AFTER_SETUP, enc, percentile, public_room, register, run_id};

/// Result of the `federation` scenario.
pub struct FederationReport {
    /// Messages sent on A.
    pub sent: usize,
    /// Messages seen in B's `/sync`.
    pub received: usize,
    /// From the first send to the last arrival on B.
    pub elapsed: Duration,
    /// Per-message send-to-arrival latency p50 and p99.
    pub p50: Duration,
    pub p99: Duration,
    /// Of the messages `/sync` never showed, how many B's room history
    /// (`/messages`, read once at the end) holds: stored, but not delivered.
    pub only_in_history: usize,
    /// When the last message was sent and when the first arrived on B (from the first send).
    pub last_sent: Duration,
    pub first_arrival: Duration,
}

/// The number `n` of a `fed n` message the federation scenario sent.
fn fed_number(event: &Value) -> Option<usize> {
    event["content"]["body"].as_str()?.strip_prefix("fed ")?.parse().ok()
}

/// `federation`: a user on server A sends `messages` as fast as acknowledged
/// (from `senders` connections at once) into a room that a user on server B
/// joined; the time until B's `/sync` has delivered every one.
pub async fn federation(
    url_a: &str,
    url_b: &str,
    server_a: &str,
    messages: usize,
    senders: usize,
) -> Result<FederationReport, String> {
    let senders = senders.max(1);
    let id = run_id();
    let mut a = Conn::open(url_a).await?;
    let mut b = Conn::open(url_b).await?;
    let (ta, _) = register(&mut a, &format!("bench{id}fa")).await?;
    let (tb, _) = register(&mut b, &format!("bench{id}fb")).await?;
    let room = public_room(&mut a, &ta, json!({})).await?;
    b.ok(
        Method::POST,
        &format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(server_a)),
        Some(&tb),
        Some(json!({})),
    )
    .await?;
    let first = b.ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", Some(&tb), None).await?;
    let mut since = first["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
    eprintln!("bench federation: {messages} messages from {url_a} ({senders} sender(s)) to a user on {url_b}");
    drop(a);
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let epoch = Instant::now();
    // Sender k sends messages k, k + senders, …, each as soon as its previous one is acknowledged.
    let mut tasks = Vec::new();
    for k in 0..senders {
        let (url_a, room, ta) = (url_a.to_owned(), room.clone(), ta.clone());
        tasks.push(tokio::spawn(async move {
            let mut a = Conn::open(&url_a).await?;
            let mut sent_at = Vec::new();
            for m in (k..messages).step_by(senders) {
                sent_at.push((m, epoch.elapsed()));
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/x{m}", enc(&room));
                a.ok(Method::PUT, &path, Some(&ta), Some(json!({ "msgtype": "m.text", "body": format!("fed {m}") })))
                    .await?;
            }
            Ok::<_, String>(sent_at)
        }));
    }
    let sender = tokio::spawn(async move {
        let mut sent_at = vec![Duration::ZERO; messages];
        for t in tasks {
            for (m, at) in t.await.map_err(|e| e.to_string())?? {
                sent_at[m] = at;
            }
        }
        Ok::<_, String>(sent_at)
    });
    let mut arrivals: std::collections::HashMap<usize, Duration> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while arrivals.len() < messages && Instant::now() < deadline {
        let path = format!("/_matrix/client/v3/sync?timeout=5000&since={}", enc(&since));
        let j = b.ok(Method::GET, &path, Some(&tb), None).await?;
        let at = epoch.elapsed();
        since = j["next_batch"].as_str().ok_or("sync without next_batch")?.to_owned();
        for e in j["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten() {
            if let Some(n) = fed_number(e) {
                arrivals.entry(n).or_insert(at);
            }
        }
        // A limited timeline skips events: page them in through /messages.
        if j["rooms"]["join"][&room]["timeline"]["limited"] == true {
            let mut from = j["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().map(str::to_owned);
            while let Some(f) = from.take() {
                let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100&from={}", enc(&room), enc(&f));
                let page = b.ok(Method::GET, &path, Some(&tb), None).await?;
                let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
                let mut fresh = false;
                for e in &chunk {
                    if let Some(n) = fed_number(e)
                        && !arrivals.contains_key(&n)
                    {
                        arrivals.insert(n, at);
                        fresh = true;
                    }
                }
                if fresh {
                    from = page["end"].as_str().map(str::to_owned);
                }
            }
        }
    }
    let sent_at = sender.await.map_err(|e| e.to_string())??;
    // Messages /sync never showed: are they in B's room history at all?
    let mut only_in_history = 0;
    if arrivals.len() < messages {
        let mut from: Option<String> = None;
        for _ in 0..(messages / 100 + 20) {
            let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let page = b.ok(Method::GET, &path, Some(&tb), None).await?;
            for e in page["chunk"].as_array().into_iter().flatten() {
                if let Some(n) = fed_number(e)
                    && !arrivals.contains_key(&n)
                {
                    only_in_history += 1;
                }
            }
            match page["end"].as_str() {
                Some(end) if page["chunk"].as_array().is_some_and(|c| !c.is_empty()) => from = Some(end.to_owned()),
                _ => break,
            }
        }
    }
    let mut latencies: Vec<Duration> =
        arrivals.iter().filter_map(|(n, at)| sent_at.get(*n).map(|s| at.saturating_sub(*s))).collect();
    latencies.sort();
    let elapsed = arrivals.values().max().copied().unwrap_or_default();
    let last_sent = sent_at.iter().max().copied().unwrap_or_default();
    let first_arrival = arrivals.values().min().copied().unwrap_or_default();
    Ok(FederationReport {
        last_sent,
        first_arrival,
        sent: sent_at.len(),
        received: arrivals.len(),
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        only_in_history,
    })
}

/// Result of the `join` scenario.
pub struct JoinReport {
    /// Members on server A before the join (the owner included).
    pub members: usize,
    /// From the join request on B until B lists every member as joined.
    pub elapsed: Duration,
    /// Of which the join request itself.
    pub join_request: Duration,
}

/// `join`: a room on A with `members` joined users; a user on B joins it over
/// federation; timed until B's `/joined_members` lists all of them (full state).
pub async fn join(url_a: &str, url_b: &str, server_a: &str, members: usize) -> Result<JoinReport, String> {
    let id = run_id();
    let mut a = Conn::open(url_a).await?;
    let (owner, _) = register(&mut a, &format!("bench{id}jo")).await?;
    let room = public_room(&mut a, &owner, json!({})).await?;
    // Setup (not timed): members register and join on A, 8 at a time.
    eprintln!("bench join: filling a room on {url_a} with {members} members");
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let workers = 8usize.min(members.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, room, id, done) = (url_a.to_owned(), room.clone(), id.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&url).await?;
            let mut i = w;
            while i + 1 < members {
                let (token, _) = register(&mut c, &format!("bench{id}m{i}")).await?;
                c.ok(
                    Method::POST,
                    &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                    Some(&token),
                    Some(json!({})),
                )
                .await?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 250 == 0 {
                    eprintln!("  {n} / {members} members, {:.0} s", started.elapsed().as_secs_f64());
                }
                i += workers;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let mut b = Conn::open(url_b).await?;
    let (joiner, _) = register(&mut b, &format!("bench{id}jb")).await?;
    eprintln!("bench join: a user on {url_b} joins the {members}-member room");
    tokio::time::sleep(SETTLE_AFTER_SETUP).await;
    let start = Instant::now();
    b.ok(
        Method::POST,
        &format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(server_a)),
        Some(&joiner),
        Some(json!({})),
    )
    .await?;
    let join_request = start.elapsed();
    let want = members + 1;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
        let (status, j) = b.call(Method::GET, &path, Some(&joiner), None).await?;
        let seen = j["joined"].as_object().map_or(0, |m| m.len());
        if status == 200 && seen >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("B lists {seen} of {want} members after 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(JoinReport { members, elapsed: start.elapsed(), join_request })
}
