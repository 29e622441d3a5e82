//! Federation logic that needs no HTTP: remote signing keys and request
//! authentication. The HTTP client and listener live in `myelin-api`.

pub mod backoff;
pub mod keyring;
pub mod policy;
pub mod txns;
pub mod xmatrix;

/// Why a federation step failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The remote answered something we cannot use.
    #[error("bad response from {server}: {reason}")]
    BadResponse {
        /// The remote server.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// A signature or key check failed.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Storage failed.
    #[error(transparent)]
    Engine(#[from] crate::EngineError),
}

impl From<myelin_storage::StorageError> for FederationError {
    fn from(e: myelin_storage::StorageError) -> Self {
        FederationError::Engine(e.into())
    }
}
