//! Room-state snapshots: layered diffs with content-addressed ids.
//!
//! A *state* is a sorted set of entries `(short state key, short event id)`,
//! one per `(type, state_key)`. A snapshot id names one state forever.
//!
//! Storage (`shortstatehash_statelayer`): either a **full** layer (the whole
//! sorted state) or a **diff** layer (a parent id plus added/replaced entries
//! and removed keys). Identical states share one id: the SHA-256 of the sorted
//! 16-byte entries maps to it (`statehash_shortstatehash`).
//!
//! Bounding lookups: a new diff is put on the candidate parent only if that
//! parent's chain is shorter than [`MAX_DEPTH`] and its own diff is at least as
//! large as the new one; otherwise the candidate's diff is folded in and the
//! grandparent becomes the candidate. Above a full layer, a diff bigger than a
//! quarter of the state becomes a new full layer. So a chain has at most
//! `MAX_DEPTH` diffs over one full layer, upper diffs are small, and a lookup
//! costs at most `MAX_DEPTH + 1` binary searches whatever the room's history.
//!
//! Guarantees: an id is never reused and never changes meaning; a diff's
//! parent is stored in the same or an earlier batch; reading one key never
//! loads a whole state (it walks cached layers).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use myelin_storage::{Batch, Db, Stored, Table, catalog};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::RoomError;

/// Most diff layers above a full layer.
pub const MAX_DEPTH: u8 = 6;

/// One entry: `(short state key, short event id)`.
pub type Entry = (u64, u64);

/// A whole state, sorted by state key.
pub type FullState = Vec<Entry>;

/// One stored layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    /// `None` for a full layer.
    pub parent: Option<u64>,
    /// Number of diff layers from here down to the full layer (0 = full).
    pub depth: u8,
    /// Added or replaced entries (the whole state, for a full layer), sorted.
    pub added: Vec<Entry>,
    /// Removed state keys, sorted.
    pub removed: Vec<u64>,
}
impl Stored for Layer {}

const LAYERS: Table<u64, Layer> = Table::new(&catalog::SHORTSTATEHASH_STATELAYER);
const HASHES: Table<Vec<u8>, u64> = Table::new(&catalog::STATEHASH_SHORTSTATEHASH);

/// The snapshot store of one server.
pub struct StateStore {
    db: Arc<Db>,
    next: AtomicU64,
    layers: myelin_storage::SharedLru<u64, Arc<Layer>>,
    full: myelin_storage::SharedLru<u64, Arc<FullState>>,
    /// States stored in batches not yet known to be durable, by hash.
    pending: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    /// Their layers, pinned until durable: the LRU may evict, and storage does not
    /// have them yet (appends build on states still in flight).
    pending_layers: Arc<Mutex<HashMap<u64, Arc<Layer>>>>,
}

fn hash_state(state: &[Entry]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, e) in state {
        ctx.update(&k.to_be_bytes());
        ctx.update(&e.to_be_bytes());
    }
    ctx.finish().as_ref().to_vec()
}

/// The change from `from` to `to`: entries to add or replace, keys to remove.
pub fn diff(from: &[Entry], to: &[Entry]) -> (Vec<Entry>, Vec<u64>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < from.len() || j < to.len() {
        match (from.get(i), to.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    added.push(*b);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                removed.push(a.0);
                i += 1;
            }
            (Some(_), Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (Some(a), None) => {
                removed.push(a.0);
                i += 1;
            }
            (None, Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, removed)
}

/// Applies `added`/`removed` to a sorted state.
pub fn apply(base: &[Entry], added: &[Entry], removed: &[u64]) -> FullState {
    let mut map: BTreeMap<u64, u64> = base.iter().copied().collect();
    for k in removed {
        map.remove(k);
    }
    for (k, e) in added {
        map.insert(*k, *e);
    }
    map.into_iter().collect()
}

impl StateStore {
    /// Opens the store; ids continue above the largest stored one.
    pub fn open(db: Arc<Db>) -> Result<Self, RoomError> {
        let next = LAYERS.last(&*db)?.map_or(1, |(id, _)| id + 1);
        let caches = db.caches().clone();
        Ok(Self {
            db,
            next: AtomicU64::new(next),
            layers: caches.lru(crate::cache_shares::STATE_LAYERS, |_, l: &Arc<Layer>| {
                16 + l.added.capacity() * std::mem::size_of::<Entry>() + l.removed.capacity() * 8
            }),
            full: caches.lru(crate::cache_shares::STATE_FULL, |_, s: &Arc<FullState>| {
                16 + s.capacity() * std::mem::size_of::<Entry>()
            }),
            pending: Arc::new(Mutex::new(HashMap::new())),
            pending_layers: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn layer(&self, id: u64) -> Result<Arc<Layer>, RoomError> {
        if let Some(l) = self.layers.lock().get(&id) {
            return Ok(l.clone());
        }
        // Memory before storage: a pinned layer is unpinned only once it is stored.
        if let Some(l) = self.pending_layers.lock().get(&id) {
            return Ok(l.clone());
        }
        let layer = LAYERS.get(&*self.db, &id)?.ok_or(RoomError::MissingState(id))?;
        let layer = Arc::new(layer);
        self.layers.lock().put(id, layer.clone());
        Ok(layer)
    }

    /// The whole state of snapshot `id`.
    pub fn load(&self, id: u64) -> Result<Arc<FullState>, RoomError> {
        if let Some(s) = self.full.lock().get(&id) {
            return Ok(s.clone());
        }
        let layer = self.layer(id)?;
        let state = match layer.parent {
            None => Arc::new(layer.added.clone()),
            Some(parent) => {
                let base = self.load(parent)?;
                Arc::new(apply(&base, &layer.added, &layer.removed))
            }
        };
        self.full.lock().put(id, state.clone());
        Ok(state)
    }

    /// The event for one state key in snapshot `id`, without loading the whole state.
    pub fn get(&self, id: u64, state_key: u64) -> Result<Option<u64>, RoomError> {
        let mut current = Some(id);
        while let Some(layer_id) = current {
            let layer = self.layer(layer_id)?;
            if let Ok(i) = layer.added.binary_search_by_key(&state_key, |e| e.0) {
                return Ok(Some(layer.added[i].1));
            }
            if layer.removed.binary_search(&state_key).is_ok() {
                return Ok(None);
            }
            current = layer.parent;
        }
        Ok(None)
    }

    /// Depth of the chain under snapshot `id` (0 for a full layer).
    pub fn depth(&self, id: u64) -> Result<u8, RoomError> {
        Ok(self.layer(id)?.depth)
    }

    /// Stores `state` (sorted by key) as a snapshot, preferably as a diff over
    /// `parent_hint`, inside `batch`. Returns the existing id when the same
    /// state is already stored.
    pub fn store(&self, batch: &mut Batch, state: FullState, parent_hint: Option<u64>) -> Result<u64, RoomError> {
        debug_assert!(state.windows(2).all(|w| w[0].0 < w[1].0), "state must be sorted by key");
        let hash = hash_state(&state);
        let pending_id = self.pending.lock().get(&hash).copied();
        if let Some(id) = pending_id {
            // Stored by a batch that may not commit: write the same rows again here.
            let cached = self.pending_layers.lock().get(&id).cloned();
            if let Some(layer) = cached {
                LAYERS.put(batch, &id, &layer)?;
                HASHES.put(batch, &hash, &id)?;
            }
            return Ok(id);
        }
        if let Some(id) = HASHES.get(&*self.db, &hash)? {
            return Ok(id);
        }
        let layer = self.choose_layer(&state, parent_hint)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        LAYERS.put(batch, &id, &layer)?;
        HASHES.put(batch, &hash, &id)?;
        let layer = Arc::new(layer);
        self.pending.lock().insert(hash.clone(), id);
        self.pending_layers.lock().insert(id, layer.clone());
        let (pending, pinned) = (self.pending.clone(), self.pending_layers.clone());
        batch.on_durable(move || {
            pending.lock().remove(&hash);
            pinned.lock().remove(&id);
        });
        self.layers.lock().put(id, layer);
        self.full.lock().put(id, Arc::new(state));
        Ok(id)
    }

    /// Stores `base` plus `changes` (entries to add or replace).
    pub fn store_changed(&self, batch: &mut Batch, base: Option<u64>, changes: &[Entry]) -> Result<u64, RoomError> {
        let state = match base {
            Some(b) => {
                let mut sorted = changes.to_vec();
                sorted.sort_unstable();
                apply(&self.load(b)?, &sorted, &[])
            }
            None => {
                let map: BTreeMap<u64, u64> = changes.iter().copied().collect();
                map.into_iter().collect()
            }
        };
        self.store(batch, state, base)
    }

    fn choose_layer(&self, state: &FullState, parent_hint: Option<u64>) -> Result<Layer, RoomError> {
        let full_layer = || Layer { parent: None, depth: 0, added: state.clone(), removed: Vec::new() };
        let mut candidate = parent_hint;
        while let Some(c) = candidate {
            let layer = self.layer(c)?;
            let base = self.load(c)?;
            let (added, removed) = diff(&base, state);
            let size = added.len() + removed.len();
            if layer.parent.is_none() {
                // Over a full layer: a diff unless it is a large part of the state.
                if size * 4 > base.len().max(16) {
                    return Ok(full_layer());
                }
                return Ok(Layer { parent: Some(c), depth: 1, added, removed });
            }
            let own = layer.added.len() + layer.removed.len();
            if layer.depth < MAX_DEPTH && size <= own {
                return Ok(Layer { parent: Some(c), depth: layer.depth + 1, added, removed });
            }
            candidate = layer.parent;
        }
        Ok(full_layer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Arc<Db>, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        // Caches of a few kB: tests that need evictions get them with a few hundred states.
        let options =
            myelin_storage::StorageOptions { cache_bytes: 8 << 20, app_cache_bytes: 64 << 10, ..Default::default() };
        let db = Db::open(dir.path(), &options).unwrap();
        let store = StateStore::open(db.clone()).unwrap();
        (dir, db, store)
    }

    #[test]
    fn diff_and_apply_are_inverse() {
        let a = vec![(1, 10), (2, 20), (4, 40)];
        let b = vec![(1, 10), (2, 21), (3, 30)];
        let (added, removed) = diff(&a, &b);
        assert_eq!(added, vec![(2, 21), (3, 30)]);
        assert_eq!(removed, vec![4]);
        assert_eq!(apply(&a, &added, &removed), b);
    }

    #[test]
    fn identical_states_share_an_id_and_lookups_match_full_loads() {
        let (_dir, db, store) = open();
        let mut batch = Batch::new();
        let s1 = store.store_changed(&mut batch, None, &[(1, 100), (2, 200)]).unwrap();
        let again = store.store_changed(&mut batch, None, &[(2, 200), (1, 100)]).unwrap();
        assert_eq!(s1, again);
        db.commit_blocking(batch).unwrap();
        let mut batch = Batch::new();
        let s2 = store.store_changed(&mut batch, Some(s1), &[(3, 300)]).unwrap();
        db.commit_blocking(batch).unwrap();
        assert_eq!(store.get(s2, 3).unwrap(), Some(300));
        assert_eq!(store.get(s2, 1).unwrap(), Some(100));
        assert_eq!(store.get(s2, 9).unwrap(), None);
        assert_eq!(*store.load(s2).unwrap(), vec![(1, 100), (2, 200), (3, 300)]);
    }

    #[test]
    fn a_state_in_flight_stays_readable_when_the_cache_evicts_it() {
        let (_dir, db, store) = open();
        let mut in_flight = Batch::new();
        let id = store.store_changed(&mut in_flight, None, &[(1, 100), (2, 200)]).unwrap();
        // More states than the layer and full-state caches hold, all committed.
        for i in 0..5000u64 {
            let mut batch = Batch::new();
            store.store_changed(&mut batch, None, &[(10 + i, i)]).unwrap();
            db.commit_blocking(batch).unwrap();
        }
        assert!(store.layers.lock().len() < 1000, "the layer cache evicted");
        store.full.lock().clear();
        assert_eq!(*store.load(id).unwrap(), vec![(1, 100), (2, 200)], "read before its batch is stored");
        db.commit_blocking(in_flight).unwrap();
        assert!(store.pending_layers.lock().is_empty(), "unpinned once durable");
        assert_eq!(store.get(id, 2).unwrap(), Some(200));
    }

    #[test]
    fn chains_stay_shallow_over_a_long_history() {
        let (dir, db, store) = open();
        let mut current = None;
        let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
        let mut ids = Vec::new();
        for i in 0..2000u64 {
            // A room where members join (new keys) and some change (replacements).
            let key = if i % 3 == 0 { i / 3 % 50 } else { 1000 + i };
            expected.insert(key, i + 1);
            let mut batch = Batch::new();
            let id = store.store_changed(&mut batch, current, &[(key, i + 1)]).unwrap();
            db.commit_blocking(batch).unwrap();
            assert!(store.depth(id).unwrap() <= MAX_DEPTH);
            current = Some(id);
            ids.push((id, expected.clone()));
        }
        // After a restart (cold caches) every snapshot still reads back exactly.
        drop(store);
        db.shutdown();
        drop(db);
        let db = Db::open(dir.path(), &myelin_storage::StorageOptions { cache_bytes: 8 << 20, ..Default::default() })
            .unwrap();
        let store = StateStore::open(db.clone()).unwrap();
        for (id, want) in ids.iter().step_by(97) {
            let want: FullState = want.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(*store.load(*id).unwrap(), want);
            for (k, v) in want.iter().step_by(37) {
                assert_eq!(store.get(*id, *k).unwrap(), Some(*v));
            }
        }
    }
}
