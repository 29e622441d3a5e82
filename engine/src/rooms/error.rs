//! The rooms engine's error type.

use myelin_storage::StorageError;

/// What can go wrong in the rooms engine.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The event is not allowed (authorization rules).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such room (on this server).
    #[error("unknown room {0}")]
    UnknownRoom(String),
    /// An event that must exist locally does not.
    #[error("unknown event {0}")]
    UnknownEvent(String),
    /// Malformed event or request.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// A room version we cannot serve.
    #[error("unsupported room version {0}")]
    UnsupportedVersion(String),
    /// A snapshot id with no stored layer: a storage bug.
    #[error("state snapshot {0} is missing")]
    MissingState(u64),
    /// State resolution failed.
    #[error("state resolution: {0}")]
    Resolution(String),
    /// A room alias or id that is taken.
    #[error("in use: {0}")]
    InUse(String),
}
