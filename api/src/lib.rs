//! Myelin's HTTP layer: two listeners (client over HTTP, federation over TLS),
//! routing with Matrix errors, the endpoints, and the federation transport.
//! Handlers parse, call the engine and map the result; the Matrix logic,
//! federation's included, lives in `myelin-engine`.

pub mod admin;
pub mod auth;
pub mod client_ip;
pub mod conn_limit;
pub mod error;
pub mod federation;
#[doc(hidden)]
pub mod fuzz_targets;
#[cfg(test)]
mod fuzz_tests;
mod guests;
pub mod http_util;
pub mod linger;
pub mod metrics;
pub mod ratelimit;
pub mod response;
pub mod router;
mod routes;
pub mod server;
pub mod tls;
pub mod transport;

pub use error::ApiError;
pub use server::{Running, SHUTDOWN_GRACE, StartError, start};
