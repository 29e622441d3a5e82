//! The engine's error type; the API crate maps it to Matrix error codes.
//!
//! Failures of the engine's parts keep their own types (`#[from]`), so the
//! API edge can still tell "forbidden" from "unknown room" from "disk full"
//! after an error has passed through an engine function that spans parts.

use myelin_storage::StorageError;

use crate::{e2ee::E2eeError, rooms::RoomError, users::UserError};

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A rooms-engine operation failed.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// An account, device or account-data operation failed.
    #[error(transparent)]
    User(Box<UserError>),
    /// A device-key operation failed.
    #[error(transparent)]
    E2ee(#[from] E2eeError),
    /// A pusher operation failed.
    #[error(transparent)]
    Pusher(#[from] crate::pushers::PusherError),
    /// Talking to another server failed.
    #[error(transparent)]
    Federation(Box<crate::federation::FederationError>),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The signing key is missing, unreadable or cannot sign.
    #[error("signing key: {0}")]
    Keys(String),
    /// A backup or restore cannot proceed.
    #[error("backup: {0}")]
    Backup(String),
    /// Too much of this work is in flight; the caller may retry shortly.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A value the engine built could not be encoded (a bug, not bad input).
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serializer's complaint.
        source: serde_json::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task {0} failed")]
    Task(&'static str),
    /// A file-system operation failed.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        message: String,
    },
}

impl From<UserError> for EngineError {
    fn from(e: UserError) -> Self {
        match e {
            // Unwrap rather than nest: an engine failure inside a user operation is that failure.
            UserError::Engine(inner) => inner,
            other => EngineError::User(Box::new(other)),
        }
    }
}

impl From<crate::federation::FederationError> for EngineError {
    fn from(e: crate::federation::FederationError) -> Self {
        use crate::federation::FederationError as F;
        match e {
            F::Engine(inner) => inner,
            F::Rooms(inner) => inner.into(),
            F::Users(inner) => inner.into(),
            F::E2ee(inner) => inner.into(),
            other => EngineError::Federation(Box::new(other)),
        }
    }
}

impl EngineError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        EngineError::Io { context: context.into(), message: err.to_string() }
    }

    /// Wraps a serializer failure on a value the engine built.
    pub fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| EngineError::Encode { what, source }
    }
}
