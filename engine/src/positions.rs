//! Per-room marks of the newest stored position, so a reader can tell "nothing
//! after my token" without a storage read.
//!
//! Guarantee: a mark is never below a position a reader can see. Writers raise
//! it before handing their batch over (a failed write leaves it too high, which
//! only costs a read); a room not raised since start-up has no mark, and its
//! newest stored position is read once and kept (a raise that happened meanwhile
//! wins, being higher).

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

use parking_lot::Mutex;

/// Per key, a position at or above the newest one stored under it.
pub struct NewestPositions<K> {
    marks: Mutex<HashMap<K, i64>>,
}

impl<K> Default for NewestPositions<K> {
    fn default() -> Self {
        Self { marks: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash> NewestPositions<K> {
    /// Raises `key`'s mark to `pos`; call before the write storing `pos` is handed over.
    pub fn raise(&self, key: K, pos: i64) {
        let mut marks = self.marks.lock();
        let at = marks.entry(key).or_insert(pos);
        *at = (*at).max(pos);
    }

    /// Whether nothing under `key` is newer than `since`. `stored` reads the newest
    /// stored position (0 for none), only when `key` has no mark yet.
    pub fn none_after<Q, E>(&self, key: &Q, since: i64, stored: impl FnOnce() -> Result<i64, E>) -> Result<bool, E>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(&at) = self.marks.lock().get(key) {
            return Ok(at <= since);
        }
        let stored = stored()?;
        let at = *self.marks.lock().entry(key.to_owned()).or_insert(stored);
        Ok(at <= since)
    }
}
