//! Waiting on `/sync` for what another server delivers.

use std::time::{Duration, Instant};

use crate::Client;

/// The message bodies in `room`'s joined timeline of one `/sync` response.
pub fn bodies(sync: &serde_json::Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|evs| evs.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Syncs from the start until `room`'s timeline shows `text` (20 s at most); returns that response.
pub async fn wait_for_text(c: &Client, room: &str, text: &str) -> serde_json::Value {
    let mut since: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sync = c.sync(since.as_deref(), 2_000).await;
        if bodies(&sync, room).iter().any(|b| b == text) {
            return sync;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(Instant::now() < deadline, "{} never saw {text:?}", c.user_id);
    }
}

/// Syncs from `since` until `check` accepts a response; returns it.
pub async fn sync_until(
    c: &Client,
    since: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut since = since.to_owned();
    loop {
        let s = c.sync(Some(&since), 1_000).await;
        if check(&s) {
            return s;
        }
        since = s["next_batch"].as_str().unwrap().to_owned();
        assert!(Instant::now() < deadline, "{what} never showed in /sync");
    }
}
