//! One loop for every durable outbound queue: a task per key (a federation
//! destination, an appservice, a pusher), woken when rows are queued for it.
//!
//! The federation sender, the appservice sender and the push sender differ
//! in what they deliver and how they back off; how their tasks are started,
//! woken, retired and stopped is the same, and lives here.
//!
//! Guarantees: at most one live task per key; a key named while its task is
//! busy wakes it through a `Notify` permit, so the rows are taken right after
//! rather than at the next scan; a full scan runs at start-up and every
//! [`SCAN_EVERY`] as a safety net; on stop every task is aborted (delivery is
//! idempotent, so an aborted send is retried after a restart).

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tracing::Instrument;

/// How often every key is looked at even without a wake-up.
pub const SCAN_EVERY: Duration = Duration::from_secs(5);

/// A queue whose keys each get a delivery task.
pub trait KeyedQueue: Send + Sync {
    /// The task-span name (`federation_sender`, …).
    const SPAN: &'static str;

    /// Every key with something queued (the start-up and periodic scan).
    fn scan(&self) -> Vec<String>;

    /// Keys named since the last call (rows just queued).
    fn take_ready(&self) -> Vec<String>;

    /// Resolves when [`KeyedQueue::take_ready`] may have something.
    fn ready(&self) -> impl Future<Output = ()> + Send;

    /// Whether the key's task should keep running (e.g. its appservice still exists).
    fn keep(&self, key: &str) -> bool {
        let _ = key;
        true
    }

    /// The task that delivers `key`'s rows, waiting on `wake` when it has none.
    fn deliver(&self, key: String, wake: Arc<Notify>) -> impl Future<Output = ()> + Send + 'static;
}

/// Runs `queue`'s delivery tasks until `stop` fires.
pub async fn run<Q: KeyedQueue>(queue: Q, mut stop: watch::Receiver<bool>) {
    let mut tasks: HashMap<String, (JoinHandle<()>, Arc<Notify>)> = HashMap::new();
    // An interval, not a sleep per turn: under steady traffic a sleep would never end.
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut scan = true;
    loop {
        let mut keys = if scan { queue.scan() } else { Vec::new() };
        scan = false;
        keys.extend(queue.take_ready());
        tasks.retain(|key, (task, _)| {
            let keep = !task.is_finished() && queue.keep(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for key in keys {
            if let Some((_, wake)) = tasks.get(&key) {
                wake.notify_one();
                continue;
            }
            if !queue.keep(&key) {
                continue;
            }
            let wake = Arc::new(Notify::new());
            let span = tracing::info_span!("delivery", queue = Q::SPAN, key = %key);
            let task = tokio::spawn(queue.deliver(key.clone(), wake.clone()).instrument(span));
            tasks.insert(key, (task, wake));
        }
        tokio::select! {
            _ = queue.ready() => {}
            _ = tick.tick() => scan = true,
            _ = stop.changed() => break,
        }
    }
    for (_, (task, _)) in tasks {
        task.abort();
    }
}
