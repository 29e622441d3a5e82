//! In-process caches bounded in bytes, sharing one budget.
//!
//! `[storage] memory_mb` is the budget of the whole process (see
//! `StorageConfig::options` for the split). Myelin's own part of it is a
//! [`Caches`]: each cache asks it for a named share ([`Caches::lru`]), weighs
//! every entry it keeps (key and value, their heap included, plus a fixed
//! overhead per entry) and drops the least recently used entries once it holds
//! more than its share. Entry counts say nothing about memory: one cached
//! event may be 300 bytes or 60 KiB, one room state 20 entries or 20,000.
//!
//! Weights are estimates from sizes the cache can see cheaply (string and
//! vector lengths, JSON walked once on insert), not allocator measurements; the
//! benchmarks in `BENCHMARKS.md` check the sum against the process's RSS.
//!
//! Each cache keeps its hit, miss and eviction counts and its bytes and
//! entries, for `/metrics` ([`Caches::stats`]).
//!
//! Every cache stays reachable from its [`Caches`] (a weak handle), so that
//! when the server falls quiet [`Caches::shrink`] gives most of their memory
//! back at once: full caches are the point of a budget under load, but an
//! appliance that idles for hours should not hold the peak of its last burst.

use std::{
    borrow::Borrow,
    hash::Hash,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use lru::LruCache;
use parking_lot::Mutex;

/// What every entry costs beyond its key and value: the hash table slot, the
/// LRU list's two pointers and the node's allocation header.
pub const ENTRY_OVERHEAD: usize = 64;

/// A cache's name (the `cache` label of its metrics) and its part of the budget.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// The name.
    pub name: &'static str,
    /// Thousandths of the budget.
    pub permille: usize,
}

/// Counts of one cache, shared with `/metrics`.
#[derive(Debug)]
pub struct CacheStats {
    /// The cache's name (the `cache` label of its metrics).
    pub name: &'static str,
    /// Most bytes it may hold.
    pub capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl CacheStats {
    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// Lookups the cache could not answer.
    pub fn misses(&self) -> u64 {
        self.misses.load(Relaxed)
    }

    /// Entries dropped to stay within the capacity.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// Bytes held now (the sum of the entries' weights).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Entries held now.
    pub fn entries(&self) -> u64 {
        self.entries.load(Relaxed)
    }
}

/// Myelin's part of the memory budget, and every cache made from it.
pub struct Caches {
    total: usize,
    list: Mutex<Vec<Arc<CacheStats>>>,
    shrinkable: Mutex<Vec<Weak<dyn Shrink>>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").field("total", &self.total).field("list", &self.list).finish_non_exhaustive()
    }
}

/// A cache its owner locks like its own mutex and the budget can shrink from outside.
pub type SharedLru<K, V> = Arc<Mutex<ByteLru<K, V>>>;

/// A cache [`Caches::shrink`] can reach.
trait Shrink: Send + Sync {
    /// Drops least recently used entries until at most `permille` of the capacity is held; returns the bytes dropped.
    fn shrink(&self, permille: u32) -> usize;
}

impl<K: Hash + Eq + Send, V: Send> Shrink for Mutex<ByteLru<K, V>> {
    fn shrink(&self, permille: u32) -> usize {
        let mut lru = self.lock();
        let before = lru.bytes();
        let keep = (lru.capacity() as u128 * permille.min(1000) as u128 / 1000) as usize;
        lru.shrink_to(keep);
        before - lru.bytes()
    }
}

impl Caches {
    /// A budget of `total` bytes for in-process caches.
    pub fn new(total: usize) -> Self {
        Self { total, list: Mutex::new(Vec::new()), shrinkable: Mutex::new(Vec::new()) }
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// A new cache with `share` of the budget, behind its own lock; `heap`
    /// weighs what an entry owns outside its inline size.
    pub fn lru<K: Hash + Eq + Send + 'static, V: Send + 'static>(
        &self,
        share: Share,
        heap: fn(&K, &V) -> usize,
    ) -> SharedLru<K, V> {
        let capacity = (self.total as u128 * share.permille.min(1000) as u128 / 1000) as u64;
        let stats = Arc::new(CacheStats {
            name: share.name,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        });
        self.list.lock().push(stats.clone());
        let lru = Arc::new(Mutex::new(ByteLru {
            map: LruCache::unbounded(),
            used: 0,
            capacity: capacity as usize,
            heap,
            stats,
        }));
        let weak: Weak<dyn Shrink> = Arc::downgrade(&lru) as Weak<Mutex<ByteLru<K, V>>>;
        let mut shrinkable = self.shrinkable.lock();
        shrinkable.retain(|c| c.strong_count() > 0);
        shrinkable.push(weak);
        lru
    }

    /// Shrinks every live cache to at most `permille` of its capacity (least
    /// recently used entries go first); returns the bytes dropped.
    pub fn shrink(&self, permille: u32) -> usize {
        let live: Vec<_> = self.shrinkable.lock().iter().filter_map(Weak::upgrade).collect();
        live.iter().map(|c| c.shrink(permille)).sum()
    }

    /// The counts of every cache made so far, in the order they were made.
    pub fn stats(&self) -> Vec<Arc<CacheStats>> {
        self.list.lock().clone()
    }
}

/// A least-recently-used map bounded by the summed weight of its entries.
///
/// Not synchronised: callers keep it behind their own lock, as they did the
/// plain `LruCache` it replaces.
pub struct ByteLru<K: Hash + Eq, V> {
    map: LruCache<K, (V, usize)>,
    used: usize,
    capacity: usize,
    heap: fn(&K, &V) -> usize,
    stats: Arc<CacheStats>,
}

impl<K: Hash + Eq, V> ByteLru<K, V> {
    /// The value of `k`, marked as most recently used; counted as a hit or a miss.
    pub fn get<Q>(&mut self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        counted(&self.stats, self.map.get(k).map(|(v, _)| v))
    }

    /// The value of `k` for changing in place (its weight is not weighed again:
    /// use it only for changes that keep the size).
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        counted(&self.stats, self.map.get_mut(k).map(|(v, _)| v))
    }

    /// The value of `k` without marking it used or counting the lookup.
    pub fn peek<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.peek(k).map(|(v, _)| v)
    }

    /// Keeps `v` under `k`, then drops least recently used entries past the
    /// capacity. An entry larger than the whole capacity is not kept (and an
    /// older value of `k` is dropped): it would evict everything else.
    pub fn put(&mut self, k: K, v: V) {
        let weight = std::mem::size_of::<K>() + std::mem::size_of::<V>() + ENTRY_OVERHEAD + (self.heap)(&k, &v);
        if weight > self.capacity {
            if let Some((_, w)) = self.map.pop(&k) {
                self.used -= w;
            }
            self.publish();
            return;
        }
        if let Some((_, old)) = self.map.put(k, (v, weight)) {
            self.used -= old;
        }
        self.used += weight;
        self.shrink_to(self.capacity);
    }

    /// Removes `k`, returning its value.
    pub fn pop<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (v, w) = self.map.pop(k)?;
        self.used -= w;
        self.publish();
        Some(v)
    }

    /// Drops least recently used entries until at most `bytes` are held
    /// (counted as evictions).
    pub fn shrink_to(&mut self, bytes: usize) {
        while self.used > bytes {
            match self.map.pop_lru() {
                Some((_, (_, w))) => {
                    self.used -= w;
                    self.stats.evictions.fetch_add(1, Relaxed);
                }
                None => break,
            }
        }
        self.publish();
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.map.clear();
        self.used = 0;
        self.publish();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held (the sum of the entries' weights).
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// Most bytes it may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn publish(&self) {
        self.stats.bytes.store(self.used as u64, Relaxed);
        self.stats.entries.store(self.map.len() as u64, Relaxed);
    }
}

/// `found`, counted as a hit or a miss.
fn counted<T>(stats: &CacheStats, found: Option<T>) -> Option<T> {
    let counter = if found.is_some() { &stats.hits } else { &stats.misses };
    counter.fetch_add(1, Relaxed);
    found
}

/// Heap weight of nothing beyond the inline size.
pub fn inline<K, V>(_: &K, _: &V) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_heap(k: &String, v: &Vec<u8>) -> usize {
        k.capacity() + v.capacity()
    }

    /// Bytes, not entries, bound the cache: one big value pushes out many small ones.
    #[test]
    fn weight_bounds_the_cache_and_the_least_recent_go_first() {
        let caches = Caches::new(100_000);
        let lru = caches.lru::<String, Vec<u8>>(Share { name: "test", permille: 100 }, string_heap);
        let mut c = lru.lock();
        assert_eq!(c.capacity(), 10_000);
        for i in 0..100 {
            c.put(format!("k{i}"), vec![0; 200]);
        }
        assert!(c.bytes() <= c.capacity(), "{} > {}", c.bytes(), c.capacity());
        let small = c.len();
        assert!(small < 40 && small > 20, "about 10,000 / (200 + overhead) entries fit, got {small}");
        assert!(c.get("k0").is_none(), "the oldest went first");
        assert!(c.get("k99").is_some());
        c.put("big".into(), vec![0; 8_000]);
        assert!(c.bytes() <= c.capacity());
        assert!(c.len() < 10, "one 8 kB value left room for few others: {}", c.len());
        assert!(c.get("big").is_some());
        let stats = &caches.stats()[0];
        assert_eq!((stats.name, stats.capacity), ("test", 10_000));
        assert_eq!(stats.bytes(), c.bytes() as u64);
        assert_eq!(stats.entries(), c.len() as u64);
        assert_eq!((stats.hits(), stats.misses()), (2, 1));
        assert!(stats.evictions() >= 60, "{}", stats.evictions());
    }

    /// An entry larger than the whole cache is not kept and does not empty it.
    #[test]
    fn an_oversized_entry_is_refused_and_replaced_values_are_reweighed() {
        let caches = Caches::new(10_000);
        let lru = caches.lru::<String, Vec<u8>>(Share { name: "test", permille: 1000 }, string_heap);
        let mut c = lru.lock();
        c.put("a".into(), vec![0; 10]);
        c.put("b".into(), vec![0; 10]);
        c.put("huge".into(), vec![0; 20_000]);
        assert_eq!(c.len(), 2);
        assert!(c.peek("huge").is_none());
        let before = c.bytes();
        c.put("a".into(), vec![0; 1000]);
        assert_eq!(c.bytes(), before + 990, "the old value's weight was taken off");
        c.put("a".into(), vec![0; 20_000]);
        assert!(c.peek("a").is_none(), "an oversized replacement drops the old value too");
        assert_eq!(c.pop("b").map(|v| v.len()), Some(10));
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    /// Shrinking reaches every live cache, keeps the most recent entries, and
    /// forgets caches whose owner dropped them.
    #[test]
    fn shrink_reaches_every_live_cache_and_keeps_the_most_recent() {
        let caches = Caches::new(100_000);
        let a = caches.lru::<String, Vec<u8>>(Share { name: "a", permille: 500 }, string_heap);
        let b = caches.lru::<String, Vec<u8>>(Share { name: "b", permille: 500 }, string_heap);
        let gone = caches.lru::<String, Vec<u8>>(Share { name: "gone", permille: 100 }, string_heap);
        for i in 0..100 {
            a.lock().put(format!("k{i}"), vec![0; 300]);
            b.lock().put(format!("k{i}"), vec![0; 300]);
        }
        gone.lock().put("x".into(), vec![0; 300]);
        drop(gone);
        let before = a.lock().bytes() + b.lock().bytes();
        let dropped = caches.shrink(100);
        let after = a.lock().bytes() + b.lock().bytes();
        assert_eq!(dropped, before - after, "the bytes reported are the bytes dropped");
        for c in [&a, &b] {
            let mut c = c.lock();
            assert!(c.bytes() <= c.capacity() / 10 && !c.is_empty(), "{} of {}", c.bytes(), c.capacity());
            assert!(c.peek("k99").is_some() && c.get("k0").is_none(), "the least recent went first");
        }
        assert_eq!(caches.shrink(0), after);
        assert!(a.lock().is_empty() && b.lock().is_empty());
    }
}
