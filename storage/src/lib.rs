//! Myelin's storage: one embedded RocksDB.
//!
//! - [`catalog`]: every column family with its tuning, in one file;
//! - [`Table`]: typed tables over order-preserving [`Key`]s and [`Value`]s;
//! - [`Batch`] + [`Db::commit`]: atomic multi-family writes through the
//!   group-commit writer thread (one WAL sync per group);
//! - [`Interner`]: short ids; [`StreamCounter`]: the sync-token stream;
//! - [`Snapshot`]: consistent reads; [`Db::read`]: reads off the async runtime;
//! - [`Db::checkpoint`]: online backups;
//! - [`Caches`]: in-process caches bounded in bytes, from one budget.
//!
//! This crate knows bytes, keys and tables; it never imports Matrix types.

mod batch;
pub mod cache;
pub mod catalog;
mod codec;
mod db;
mod error;
mod intern;
mod key;
mod stream;
mod table;
mod writer;

pub use batch::Batch;
pub use cache::{ByteLru, CacheStats, Caches, Share, SharedLru};
pub use codec::{Raw, Stored, Value};
pub use db::{Db, Pending, Released, SCHEMA_IDENTITY, SCHEMA_VERSION, Snapshot, StorageOptions};
pub use error::StorageError;
pub use intern::Interner;
pub use key::{HasPrefix, Key};
pub use stream::{Reservation, StreamCounter};
pub use table::{Direction, Iter, Read, Table};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;
