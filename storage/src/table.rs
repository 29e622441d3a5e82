//! Typed tables: a column family with a key type and a value type.
//!
//! Tables are `const` values declared next to the code that owns them, so a
//! misspelt table is a compile error. Reads go through [`Read`], implemented by
//! the live database and by consistent [`crate::Snapshot`]s; writes go into a
//! [`Batch`].

use std::{marker::PhantomData, ops::Bound, ops::RangeBounds};

use crate::{
    Batch,
    catalog::Cf,
    codec::Value,
    error::StorageError,
    key::{HasPrefix, Key, prefix_successor},
};

/// Iteration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// Something rows can be read from: the live database or a snapshot.
pub trait Read {
    /// Reads one raw value.
    fn get_raw(&self, cf: &'static Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Opens a raw iterator over `[lower, upper)`; `None` is unbounded.
    fn raw_iter(
        &self,
        cf: &'static Cf,
        lower: Option<Vec<u8>>,
        upper: Option<Vec<u8>>,
    ) -> Result<rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>, StorageError>;
}

/// A typed view of one column family.
pub struct Table<K, V> {
    cf: &'static Cf,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Value> Table<K, V> {
    /// Declares a table over `cf`.
    pub const fn new(cf: &'static Cf) -> Self {
        Self { cf, _types: PhantomData }
    }

    /// The underlying column family.
    pub fn cf(&self) -> &'static Cf {
        self.cf
    }

    /// Reads the value stored under `key`.
    pub fn get(&self, r: &impl Read, key: &K) -> Result<Option<V>, StorageError> {
        match r.get_raw(self.cf, &key.encode())? {
            Some(bytes) => V::from_bytes(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// True when a row exists under `key`.
    pub fn contains(&self, r: &impl Read, key: &K) -> Result<bool, StorageError> {
        Ok(r.get_raw(self.cf, &key.encode())?.is_some())
    }

    /// Adds a put of `key → value` to `batch`.
    pub fn put(&self, batch: &mut Batch, key: &K, value: &V) -> Result<(), StorageError> {
        batch.put_raw(self.cf, key.encode(), value.to_bytes()?);
        Ok(())
    }

    /// Adds a delete of `key` to `batch`.
    pub fn delete(&self, batch: &mut Batch, key: &K) {
        batch.delete_raw(self.cf, key.encode());
    }

    /// Iterates the whole table.
    pub fn iter<'r>(&self, r: &'r impl Read, dir: Direction) -> Result<Iter<'r, K, V>, StorageError> {
        Ok(Iter::new(r.raw_iter(self.cf, None, None)?, dir))
    }

    /// Iterates the rows whose key starts with the leading parts `prefix`.
    pub fn prefix<'r, P: Key>(
        &self,
        r: &'r impl Read,
        prefix: &P,
        dir: Direction,
    ) -> Result<Iter<'r, K, V>, StorageError>
    where
        K: HasPrefix<P>,
    {
        let lower = prefix.encode();
        let upper = prefix_successor(&lower);
        Ok(Iter::new(r.raw_iter(self.cf, Some(lower), upper)?, dir))
    }

    /// Iterates the rows whose key lies in `range`.
    pub fn range<'r>(
        &self,
        r: &'r impl Read,
        range: impl RangeBounds<K>,
        dir: Direction,
    ) -> Result<Iter<'r, K, V>, StorageError> {
        // Byte-string bounds: the immediate successor of an encoded key `k` is
        // `k ++ [0]`, so `> k` is `>= k ++ [0]` and `<= k` is `< k ++ [0]`.
        let lower = match range.start_bound() {
            Bound::Included(k) => Some(k.encode()),
            Bound::Excluded(k) => Some(successor(k.encode())),
            Bound::Unbounded => None,
        };
        let upper = match range.end_bound() {
            Bound::Included(k) => Some(successor(k.encode())),
            Bound::Excluded(k) => Some(k.encode()),
            Bound::Unbounded => None,
        };
        Ok(Iter::new(r.raw_iter(self.cf, lower, upper)?, dir))
    }

    /// The row with the greatest key, if any.
    pub fn last(&self, r: &impl Read) -> Result<Option<(K, V)>, StorageError> {
        self.iter(r, Direction::Reverse)?.next().transpose()
    }
}

fn successor(mut key: Vec<u8>) -> Vec<u8> {
    key.push(0);
    key
}

/// Decoded rows in key order; stops at the first error, which it yields.
pub struct Iter<'r, K, V> {
    raw: rocksdb::DBRawIteratorWithThreadMode<'r, rocksdb::DB>,
    dir: Direction,
    started: bool,
    done: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<'r, K, V> Iter<'r, K, V> {
    fn new(raw: rocksdb::DBRawIteratorWithThreadMode<'r, rocksdb::DB>, dir: Direction) -> Self {
        Self { raw, dir, started: false, done: false, _types: PhantomData }
    }
}

impl<K: Key, V: Value> Iterator for Iter<'_, K, V> {
    type Item = Result<(K, V), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match (self.started, self.dir) {
            (false, Direction::Forward) => self.raw.seek_to_first(),
            (false, Direction::Reverse) => self.raw.seek_to_last(),
            (true, Direction::Forward) => self.raw.next(),
            (true, Direction::Reverse) => self.raw.prev(),
        }
        self.started = true;
        let (Some(key), Some(value)) = (self.raw.key(), self.raw.value()) else {
            self.done = true;
            return self.raw.status().err().map(|e| Err(e.into()));
        };
        let row = K::decode(key).and_then(|k| Ok((k, V::from_bytes(value)?)));
        if row.is_err() {
            self.done = true;
        }
        Some(row)
    }
}
