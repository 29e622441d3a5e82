//! One at a time per key: the in-flight claims behind transaction ids.
//!
//! A request with a transaction id (a client's `(user, device, txn id)`, a
//! server's `(origin, txn id)`) first takes the key's claim. A copy of it
//! arriving meanwhile waits until the claim is dropped and then finds the
//! first one's stored result; if the first failed (stored nothing), the copy
//! does the work itself.
//!
//! Guarantees: at most one holder per key at a time; an entry exists only
//! while its key is held or waited for and is removed by the last one out;
//! at most `max` keys are held or waited for at once (a new key beyond that
//! is refused, [`InFlight::claim`] returns `None`). Not guaranteed: order
//! among waiters.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// The claims of one kind of key.
pub struct InFlight<K> {
    map: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
    max: usize,
}

/// A held key; dropping it lets the next copy in.
pub struct Claim<'a, K: Hash + Eq> {
    owner: &'a InFlight<K>,
    key: Option<K>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    /// At most `max` keys at once.
    pub fn new(max: usize) -> Self {
        Self { map: Mutex::new(HashMap::new()), max }
    }

    /// Takes `key`, waiting while another holds it; `None` when `max` other
    /// keys are in flight.
    pub async fn claim(&self, key: K) -> Option<Claim<'_, K>> {
        let slot = {
            let mut map = self.map.lock();
            if map.len() >= self.max && !map.contains_key(&key) {
                return None;
            }
            map.entry(key.clone()).or_default().clone()
        };
        let guard = slot.lock_owned().await;
        Some(Claim { owner: self, key: Some(key), guard: Some(guard) })
    }

    /// How many keys are held or waited for.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no key is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq> Drop for Claim<'_, K> {
    fn drop(&mut self) {
        let mut map = self.owner.map.lock();
        // The map's handle and the guard's: nobody else waits, the entry can go.
        if let (Some(key), Some(guard)) = (self.key.take(), &self.guard)
            && Arc::strong_count(OwnedMutexGuard::mutex(guard)) <= 2
        {
            map.remove(&key);
        }
        // Released while the map is locked, so a new copy either finds the entry
        // (and queues on it) or arrives after its removal.
        self.guard = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_per_key_and_entries_go_when_done() {
        let flight = Arc::new(InFlight::<u32>::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (flight, inside) = (flight.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _claim = flight.claim(7).await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders of one key");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(flight.is_empty());
        let a = flight.claim(1).await.unwrap();
        let _b = flight.claim(2).await.unwrap();
        assert!(flight.claim(3).await.is_none(), "bounded");
        drop(a);
        assert!(flight.claim(3).await.is_some());
    }
}
