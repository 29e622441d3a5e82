//! Short ids: interning long strings (event ids, room ids, user ids, server
//! names, state keys) to `u64` once, so hot keys are small and fixed-width.
//!
//! Guarantees:
//! - one string has one short id, forever; ids are never reused;
//! - an id is allocated inside the batch that first uses it, and both mapping
//!   rows (`string → id`, `id → string`) are written in that same batch, so a
//!   committed row never refers to an id whose mapping is not stored;
//! - concurrent batches interning the same new string get the same id, and
//!   each of them writes the (identical) mapping rows, so whichever commits
//!   first makes it durable and a dropped batch loses nothing;
//! - after a restart allocation resumes above the largest stored id. Id 0 is
//!   never allocated (callers may use it as "none").
//!
//! Because a stored mapping never changes, the most recently used ones are
//! kept in memory (both ways, bounded in bytes, see [`Interner::with_cache`]) with no
//! invalidation: a room's, a state key's or a server's id is read on every
//! event, and a RocksDB point read costs more than the rest of the lookup.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

use crate::{Batch, Caches, Db, Share, SharedLru, StorageError, Table, catalog::Cf, table::Read};

struct State {
    next: u64,
    /// Allocated but not yet known to be durable.
    pending: HashMap<String, u64>,
    /// The same allocations by id, for [`Interner::lookup`].
    pending_names: HashMap<u64, String>,
}

/// Stored mappings read recently, both ways (none until [`Interner::with_cache`]).
struct Cache {
    by_name: Option<SharedLru<String, u64>>,
    by_id: Option<SharedLru<u64, String>>,
}

impl Cache {
    fn keep(&mut self, name: &str, id: u64) {
        if let Some(c) = &self.by_name {
            c.lock().put(name.to_owned(), id);
        }
        if let Some(c) = &self.by_id {
            c.lock().put(id, name.to_owned());
        }
    }
}

/// A string ⇄ u64 mapping over a pair of column families.
pub struct Interner {
    forward: Table<String, u64>,
    reverse: Table<u64, String>,
    state: Arc<Mutex<State>>,
    cache: Mutex<Cache>,
}

impl Interner {
    /// Opens the interner over `forward` (`string → id`) and `reverse` (`id → string`).
    pub fn open(db: &Db, forward: &'static Cf, reverse: &'static Cf) -> Result<Self, StorageError> {
        let reverse: Table<u64, String> = Table::new(reverse);
        let next = reverse.last(db)?.map_or(1, |(id, _)| id + 1);
        Ok(Self {
            forward: Table::new(forward),
            reverse,
            state: Arc::new(Mutex::new(State { next, pending: HashMap::new(), pending_names: HashMap::new() })),
            cache: Mutex::new(Cache { by_name: None, by_id: None }),
        })
    }

    /// Keeps stored mappings in memory, both ways: string → id in a cache
    /// with `by_name` of the budget, id → string in one with `by_id`.
    pub fn with_cache(self, caches: &Caches, by_name: Share, by_id: Share) -> Self {
        {
            let mut cache = self.cache.lock();
            cache.by_name = Some(caches.lru(by_name, |k: &String, _| k.capacity()));
            cache.by_id = Some(caches.lru(by_id, |_, v: &String| v.capacity()));
        }
        self
    }

    /// The stored id of `s`: from the cache, else from `r` (and then cached).
    fn stored_id(&self, r: &impl Read, s: &str) -> Result<Option<u64>, StorageError> {
        if let Some(id) = self.cache.lock().by_name.as_ref().and_then(|c| c.lock().get(s).copied()) {
            return Ok(Some(id));
        }
        let id = self.forward.get(r, &s.to_owned())?;
        if let Some(id) = id {
            self.cache.lock().keep(s, id);
        }
        Ok(id)
    }

    /// The short id of `s`, if it has one: committed, or allocated in a batch not yet durable
    /// (a writer that builds on its own earlier, still pending batch must see it).
    pub fn get(&self, r: &impl Read, s: &str) -> Result<Option<u64>, StorageError> {
        // Pending first: an entry leaves the map only after its rows are visible, so a
        // miss here means storage has them (the other order can miss both).
        if let Some(&id) = self.state.lock().pending.get(s) {
            return Ok(Some(id));
        }
        self.stored_id(r, s)
    }

    /// The string a short id stands for: committed, or allocated in a batch not yet durable
    /// (state resolution names the events of a batch the writer has not stored yet).
    pub fn lookup(&self, r: &impl Read, id: u64) -> Result<Option<String>, StorageError> {
        // Pending first, for the same reason as in `get`.
        if let Some(name) = self.state.lock().pending_names.get(&id) {
            return Ok(Some(name.clone()));
        }
        if let Some(name) = self.cache.lock().by_id.as_ref().and_then(|c| c.lock().get(&id).cloned()) {
            return Ok(Some(name));
        }
        let name = self.reverse.get(r, &id)?;
        if let Some(name) = &name {
            self.cache.lock().keep(name, id);
        }
        Ok(name)
    }

    /// The short id of `s`, allocating one inside `batch` if `s` has none yet.
    pub fn get_or_create(&self, db: &Db, batch: &mut Batch, s: &str) -> Result<u64, StorageError> {
        if let Some(id) = self.stored_id(db, s)? {
            return Ok(id);
        }
        let key = s.to_owned();
        let mut state = self.state.lock();
        let id = match state.pending.get(s) {
            Some(&id) => id,
            None => {
                // Re-check under the lock: another batch may have committed it
                // (its hook removes the pending entry only after the write is visible).
                if let Some(id) = self.forward.get(db, &key)? {
                    return Ok(id);
                }
                let id = state.next;
                state.next += 1;
                state.pending.insert(key.clone(), id);
                state.pending_names.insert(id, key.clone());
                id
            }
        };
        drop(state);
        self.forward.put(batch, &key, &id)?;
        self.reverse.put(batch, &id, &key)?;
        let shared = self.state.clone();
        batch.on_durable(move || {
            let mut state = shared.lock();
            state.pending.remove(&key);
            state.pending_names.remove(&id);
        });
        Ok(id)
    }
}
