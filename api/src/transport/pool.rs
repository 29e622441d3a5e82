//! Idle keep-alive connections, bounded in destinations and in connections.
//!
//! Destinations are named by whoever makes this server reach out (a peer's
//! transaction, a user's pusher URL, a stranger's key query), so the pool
//! must not grow with them: at most `max_keys` destinations and `max_total`
//! idle connections are kept, and past either the destination used longest
//! ago loses its connections first. Dropping an idle connection closes it.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;

/// Idle connections per destination, least recently used first to go.
pub(crate) struct IdlePool<C> {
    inner: Mutex<Inner<C>>,
    per_key: usize,
    max_total: usize,
    /// `kind` label of `myelin_outbound_idle_connections`.
    kind: &'static str,
}

struct Inner<C> {
    by_key: LruCache<String, Vec<C>>,
    total: usize,
}

impl<C> IdlePool<C> {
    /// A pool of at most `max_keys` destinations, `per_key` idle connections
    /// each and `max_total` in all.
    pub(crate) fn new(kind: &'static str, max_keys: usize, per_key: usize, max_total: usize) -> Self {
        let cap = NonZeroUsize::new(max_keys.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self { inner: Mutex::new(Inner { by_key: LruCache::new(cap), total: 0 }), per_key, max_total, kind }
    }

    /// Takes one idle connection to `key`, the most recently returned.
    pub(crate) fn take(&self, key: &str) -> Option<C> {
        let mut inner = self.inner.lock();
        let idle = inner.by_key.get_mut(key)?;
        let conn = idle.pop();
        let empty = idle.is_empty();
        if empty {
            inner.by_key.pop(key);
        }
        if conn.is_some() {
            inner.total -= 1;
        }
        self.gauge(inner.total);
        conn
    }

    /// Keeps `conn` for later requests to `key`, unless that destination
    /// already has its share; makes room by dropping the connections of the
    /// destination used longest ago.
    pub(crate) fn give_back(&self, key: &str, conn: C) {
        if self.per_key == 0 || self.max_total == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.by_key.peek(key).is_some_and(|idle| idle.len() >= self.per_key) {
            return;
        }
        let is_new = !inner.by_key.contains(key);
        while inner.total >= self.max_total || (is_new && inner.by_key.len() >= inner.by_key.cap().get()) {
            let Some((_, dropped)) = inner.by_key.pop_lru() else { break };
            inner.total -= dropped.len();
            metrics::counter!("myelin_outbound_idle_evicted_total", "kind" => self.kind)
                .increment(dropped.len() as u64);
        }
        match inner.by_key.get_mut(key) {
            Some(idle) => idle.push(conn),
            None => {
                inner.by_key.put(key.to_owned(), vec![conn]);
            }
        }
        inner.total += 1;
        self.gauge(inner.total);
    }

    /// Drops every idle connection to `key`.
    pub(crate) fn forget(&self, key: &str) {
        let mut inner = self.inner.lock();
        if let Some(dropped) = inner.by_key.pop(key) {
            inner.total -= dropped.len();
        }
        self.gauge(inner.total);
    }

    /// (destinations, idle connections) held now.
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.by_key.len(), inner.total)
    }

    fn gauge(&self, total: usize) {
        metrics::gauge!("myelin_outbound_idle_connections", "kind" => self.kind).set(total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::IdlePool;

    #[test]
    fn ever_new_destinations_never_grow_the_pool_past_its_bounds() {
        let pool = IdlePool::new("test", 100, 4, 150);
        for i in 0..5_000u32 {
            for c in 0..6 {
                pool.give_back(&format!("host{i}.example"), (i, c));
            }
            let (keys, total) = pool.size();
            assert!(keys <= 100 && total <= 150, "{keys} destinations, {total} connections after {i}");
        }
        // The newest destinations are the ones kept, each with its share and no more.
        assert_eq!(pool.take("host4999.example"), Some((4999, 3)));
        assert!(pool.take("host0.example").is_none());
    }

    #[test]
    fn a_destination_in_use_keeps_its_connections_while_idle_ones_go() {
        let pool = IdlePool::new("test", 3, 2, 100);
        pool.give_back("busy", 1);
        for i in 0..10 {
            pool.give_back(&format!("other{i}"), 10 + i);
            // The busy destination is used between the others.
            let c = pool.take("busy").expect("still pooled");
            pool.give_back("busy", c);
        }
        assert_eq!(pool.take("busy"), Some(1));
        pool.forget("other9");
        assert!(pool.take("other9").is_none());
        assert_eq!(pool.size(), (1, 1), "other8 only");
    }
}
