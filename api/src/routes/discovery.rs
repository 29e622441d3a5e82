//! Discovery endpoints.
//!
//! - Client-Server API §"GET /_matrix/client/versions": "Gets the versions of
//!   the specification supported by the server."
//! - Client-Server API §"GET /.well-known/matrix/client": tells clients the
//!   homeserver base URL.
//! - Server-Server API §"GET /.well-known/matrix/server": delegates federation
//!   to `m.server` (`<hostname>[:<port>]`).
//! - Server-Server API §"GET /_matrix/federation/v1/version": the
//!   implementation name and version.

use std::collections::BTreeMap;

use http::header;
use serde::Serialize;

use crate::{
    error::ApiError,
    http_util::ok_json,
    router::{Ctx, HandlerFuture, Req},
    tls::server_host,
};

/// Every Client-Server spec version we answer to, oldest first.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4",
    "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16",
];

/// The `/versions` answer.
#[derive(Serialize)]
struct Versions {
    versions: &'static [&'static str],
    unstable_features: BTreeMap<&'static str, bool>,
}

/// GET /_matrix/client/versions
pub fn versions(_cx: Ctx, _req: Req) -> HandlerFuture {
    // Simplified sliding sync (MSC4186): matrix-rust-sdk looks for this flag.
    let body = Versions {
        versions: SPEC_VERSIONS,
        unstable_features: BTreeMap::from([("org.matrix.simplified_msc3575", true)]),
    };
    Box::pin(async move { Ok(ok_json(&body)) })
}

/// The `/.well-known/matrix/client` answer.
#[derive(Serialize)]
struct WellKnownClient {
    #[serde(rename = "m.homeserver")]
    homeserver: BaseUrl,
}

/// A homeserver's base URL.
#[derive(Serialize)]
struct BaseUrl {
    base_url: String,
}

/// The `/.well-known/matrix/server` answer.
#[derive(Serialize)]
struct WellKnownServer {
    #[serde(rename = "m.server")]
    server: String,
}

/// The federation `/version` answer.
#[derive(Serialize)]
struct FederationVersion {
    server: Implementation,
}

/// This implementation's name and version.
#[derive(Serialize)]
struct Implementation {
    name: &'static str,
    version: &'static str,
}

/// GET /.well-known/matrix/client
pub fn well_known_client(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        // The client reached us at this Host; that is the base URL it should keep using.
        let host = req
            .parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| cx.engine.config.client.listen.to_string());
        Ok(ok_json(&WellKnownClient { homeserver: BaseUrl { base_url: format!("http://{host}") } }))
    })
}

/// GET /.well-known/matrix/server
pub fn well_known_server(cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move {
        let config = &cx.engine.config;
        if !config.federation.enabled {
            return Err(ApiError::not_found("federation is disabled on this server"));
        }
        let host = server_host(&config.server_name);
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        let port = cx.federation_addr.map_or(config.federation.listen.port(), |a| a.port());
        Ok(ok_json(&WellKnownServer { server: format!("{host}:{port}") }))
    })
}

/// GET /_matrix/federation/v1/version
pub fn federation_version(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move {
        Ok(ok_json(&FederationVersion {
            server: Implementation { name: "Myelin", version: env!("CARGO_PKG_VERSION") },
        }))
    })
}
