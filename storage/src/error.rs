//! The storage crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong below the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Another process (another running Myelin) holds the database lock.
    #[error("the database at {0} is in use by another process (is another Myelin running on this data_dir?)")]
    Locked(PathBuf),
    /// The directory holds a RocksDB database that is not Myelin's.
    #[error("{path} holds a RocksDB database that is not a Myelin database ({reason}); refusing to open it")]
    Foreign {
        /// Where the database is.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The database was written by a Myelin whose schema this binary does not know.
    #[error("{path} has Myelin storage schema version {found}; this binary reads version {expected}")]
    SchemaVersion {
        /// Where the database is.
        path: PathBuf,
        /// The version stored in the database.
        found: u32,
        /// The version this binary implements.
        expected: u32,
    },
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(String),
    /// A stored key or value could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A value could not be encoded.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// The writer thread has stopped (the database is closing).
    #[error("the database is shut down")]
    Closed,
    /// A file-system operation failed.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        message: String,
    },
}

impl StorageError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        StorageError::Io { context: context.into(), message: err.to_string() }
    }
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Rocks(e.into_string())
    }
}
