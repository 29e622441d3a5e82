//! Atomic write batches across column families.
//!
//! A [`Batch`] is built by a caller (usually through typed tables) and handed
//! to the group-commit writer, which applies it together with other waiting
//! batches in one RocksDB write. Either every operation of a batch is durable
//! or none is.

use crate::{catalog::Cf, stream::Reservation};

pub(crate) struct Op {
    pub(crate) cf: &'static Cf,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

type Hook = Box<dyn FnOnce() + Send>;

/// A set of writes that commit atomically.
#[derive(Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    pub(crate) counters: Vec<(&'static str, u64)>,
    pub(crate) on_durable: Vec<Hook>,
    pub(crate) reservations: Vec<Reservation>,
    pub(crate) bytes: usize,
    /// The caller hands over another batch right after this one.
    pub(crate) more_follow: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts raw bytes; prefer a typed [`crate::Table`].
    pub fn put_raw(&mut self, cf: &'static Cf, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push(Op { cf, key, value: Some(value) });
    }

    /// Deletes a raw key; prefer a typed [`crate::Table`].
    pub fn delete_raw(&mut self, cf: &'static Cf, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push(Op { cf, key, value: None });
    }

    /// Raises the persisted counter `name` to at least `value` in the same write.
    ///
    /// The writer keeps the maximum, so batches that commit out of order never
    /// move a counter backwards.
    pub fn raise_counter(&mut self, name: &'static str, value: u64) {
        self.counters.push((name, value));
    }

    /// Holds a stream reservation until this batch is durable and visible.
    pub fn hold(&mut self, reservation: Reservation) {
        self.reservations.push(reservation);
    }

    /// Runs `hook` once the batch is durable, before the committer is woken:
    /// on the writer thread, or on the committing task's thread when it wrote
    /// its own batch (see [`crate::Pending::durable`]). Hooks must be quick,
    /// must not block (they may run on a runtime worker) and must not shut
    /// the database down (the write lock is held while they run).
    pub fn on_durable(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.on_durable.push(Box::new(hook));
    }

    /// Tells the writer that the caller hands over another batch right after
    /// this one (or calls [`crate::Db::release_held`]): the writer waits for it,
    /// up to a millisecond, so that both share one disk sync instead of two.
    pub fn more_follow(&mut self) {
        self.more_follow = true;
    }

    /// Number of put/delete operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.counters.is_empty()
    }

    /// Approximate payload size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }
}
