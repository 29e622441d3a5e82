//! Federation: the Server-Server API's protocol, without HTTP.
//!
//! The engine speaks to other servers through a [`transport::Transport`]
//! (`myelin-api` implements it with hyper and rustls) and owns everything
//! about what is said: signing keys and their fetching (`keyring`,
//! `key_fetch`), checks on received PDUs (`pdu_check`), the membership
//! handshakes (`membership`), inbound transactions and gap filling
//! (`inbound`, `edu`), what is served to other servers (`serve`), backfill,
//! and the outbound queue's sender loop (`sender`, `queue_status`). Inside the engine,
//! federation uses rooms; rooms never call federation (they leave rows in
//! the outbound queue and wake the sender).

pub mod auth_fetch;
pub mod backfill;
pub mod backoff;
pub mod client;
pub mod e2ee;
pub mod edu;
pub mod inbound;
pub mod key_fetch;
pub mod keyring;
pub mod keys_query;
pub mod labels;
pub mod membership;
pub mod pdu_check;
pub mod policy;
pub mod queue_status;
pub mod sender;
pub mod serve;
pub mod transport;
pub mod txns;
pub mod xmatrix;

pub use client::{Outbound, Remote, Response, enc};
pub use transport::{OutboundRequest, RawResponse, Transport, TransportError};

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
    /// Federation with the server is off or refused by the allow/deny lists.
    #[error("federation with {0} is not allowed by this server's configuration")]
    NotAllowed(String),
    /// The request did not get an answer. What failed (refused by the outbound
    /// policy, connection refused, timed out, TLS) is deliberately not in the
    /// message, which may reach a client or another server: telling them apart
    /// would make this server a port scanner. The transport logs it; the
    /// `source` keeps it for code that must know.
    #[error("{server} could not be reached")]
    Transport {
        /// The remote server.
        server: String,
        /// What failed.
        #[source]
        source: TransportError,
    },
    /// A request (from a peer, or one we were asked to make) is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request is not allowed (ACL, membership, shut-down room, wrong origin).
    #[error("{0}")]
    Forbidden(String),
    /// What was asked for is not known here.
    #[error("{0}")]
    NotFound(String),
    /// The room's version is not one the other side supports.
    #[error("the room is version {0}")]
    IncompatibleVersion(String),
    /// No server we tried could do what was asked.
    #[error("{0}")]
    Unreachable(String),
    /// A restricted room's join conditions cannot be checked here (`M_UNABLE_TO_AUTHORISE_JOIN`).
    #[error("{0}")]
    UnableToAuthoriseJoin(String),
    /// No user here may authorise a restricted join (`M_UNABLE_TO_GRANT_JOIN`).
    #[error("{0}")]
    UnableToGrantJoin(String),
    /// The rooms engine refused or failed.
    #[error(transparent)]
    Rooms(#[from] crate::rooms::RoomError),
    /// The users engine refused or failed.
    #[error(transparent)]
    Users(#[from] crate::users::UserError),
    /// End-to-end encryption storage refused or failed.
    #[error(transparent)]
    E2ee(#[from] crate::e2ee::E2eeError),
    /// Storage failed.
    #[error(transparent)]
    Engine(#[from] crate::EngineError),
}

impl From<crate::restricted_join::RestrictedJoinError> for FederationError {
    fn from(e: crate::restricted_join::RestrictedJoinError) -> Self {
        use crate::restricted_join::RestrictedJoinError as R;
        match e {
            e @ R::CannotVerify(_) => FederationError::UnableToAuthoriseJoin(e.to_string()),
            e @ R::NotAllowed { .. } => FederationError::Forbidden(e.to_string()),
            e @ R::CannotGrant(_) => FederationError::UnableToGrantJoin(e.to_string()),
            R::Rooms(e) => FederationError::Rooms(e),
        }
    }
}

impl From<myelin_storage::StorageError> for FederationError {
    fn from(e: myelin_storage::StorageError) -> Self {
        FederationError::Engine(e.into())
    }
}

#[cfg(test)]
mod auth_fetch_tests;
#[cfg(test)]
mod join_tests;
#[cfg(test)]
mod key_validity_tests;
#[cfg(test)]
mod keys_cache_tests;
#[cfg(test)]
mod sender_tests;
#[cfg(test)]
mod stuck_tests;
#[cfg(test)]
mod tests;
