//! The engine's error type; the API crate maps it to Matrix error codes.

use myelin_storage::StorageError;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The signing key is missing, unreadable or cannot sign.
    #[error("signing key: {0}")]
    Keys(String),
    /// The rooms engine failed while opening.
    #[error("rooms: {0}")]
    Rooms(String),
    /// A backup or restore cannot proceed.
    #[error("backup: {0}")]
    Backup(String),
    /// A file-system operation failed.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        message: String,
    },
}

impl EngineError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        EngineError::Io { context: context.into(), message: err.to_string() }
    }
}
