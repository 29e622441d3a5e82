//! The stream counter: one global, monotonically increasing position.
//!
//! Positions are the sync tokens. A writer reserves a position, puts it in its
//! batch and commits; batches finish out of order. The *visible* position is
//! the largest `p` such that every reserved position `<= p` is either durable
//! or abandoned, so a reader that saw `p` never misses a write at or below it.
//!
//! Guarantees:
//! - positions are handed out once, strictly increasing, also across restarts
//!   (the writer persists the high-water mark in the same write as the batch);
//! - `current()` never passes a reservation that is still in flight;
//! - an abandoned reservation (its batch failed or was dropped) becomes a gap,
//!   it does not stall the counter.

use std::{collections::BTreeSet, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{Batch, Db, StorageError};

struct State {
    next: u64,
    in_flight: BTreeSet<u64>,
}

struct Inner {
    name: &'static str,
    state: Mutex<State>,
    visible: watch::Sender<u64>,
}

/// A persisted, gap-tolerant sequence whose readers only see settled positions.
#[derive(Clone)]
pub struct StreamCounter {
    inner: Arc<Inner>,
}

/// A reserved position; settled when dropped (after its batch is durable).
pub struct Reservation {
    pos: u64,
    inner: Arc<Inner>,
}

impl Reservation {
    /// The reserved position.
    pub fn pos(&self) -> u64 {
        self.pos
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock();
        state.in_flight.remove(&self.pos);
        let settled = match state.in_flight.first() {
            Some(&oldest) => oldest - 1,
            None => state.next - 1,
        };
        drop(state);
        self.inner.visible.send_if_modified(|v| {
            if settled > *v {
                *v = settled;
                true
            } else {
                false
            }
        });
    }
}

impl StreamCounter {
    /// Loads the counter persisted under `name`; a new database starts at 0.
    pub fn load(db: &Db, name: &'static str) -> Result<Self, StorageError> {
        let last = db.counter(name)?;
        let (visible, _) = watch::channel(last);
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                state: Mutex::new(State { next: last + 1, in_flight: BTreeSet::new() }),
                visible,
            }),
        })
    }

    /// Reserves the next position and ties it to `batch`: it persists with the
    /// batch and becomes visible once the batch is durable.
    pub fn next_in(&self, batch: &mut Batch) -> u64 {
        let reservation = self.reserve();
        let pos = reservation.pos;
        batch.raise_counter(self.inner.name, pos);
        batch.hold(reservation);
        pos
    }

    /// Reserves the next position without a batch (the caller must hold it in one).
    pub fn reserve(&self) -> Reservation {
        let mut state = self.inner.state.lock();
        let pos = state.next;
        state.next += 1;
        state.in_flight.insert(pos);
        Reservation { pos, inner: self.inner.clone() }
    }

    /// The newest settled position.
    pub fn current(&self) -> u64 {
        *self.inner.visible.borrow()
    }

    /// A receiver that wakes whenever the settled position advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.visible.subscribe()
    }
}
