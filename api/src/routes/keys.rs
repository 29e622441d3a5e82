//! Server keys.
//!
//! Server-Server API §"Publishing Keys" (`GET /_matrix/key/v2/server`):
//! "Homeservers publish their signing keys in a JSON object at
//! /_matrix/key/v2/server. The response contains a list of verify_keys that are
//! valid for signing federation requests made by the homeserver and for
//! signing events." The deprecated `{keyId}` path form answers the same.
//!
//! §"Querying Keys Through Another Server" (`POST /_matrix/key/v2/query`,
//! `GET /_matrix/key/v2/query/{serverName}`): a notary returns the keys it
//! knows, each document signed by its origin and by the notary. We answer
//! for ourselves and for any server whose keys we hold or can fetch (directly
//! or through our own notaries), adding our signature; a server we cannot
//! reach is left out of `server_keys`, which the spec allows.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn own_document(cx: &Ctx) -> Result<serde_json::Value, ApiError> {
    let doc = cx.engine.keys.server_key_document()?;
    serde_json::to_value(&doc).map_err(|e| ApiError::unknown(format!("serialising key document: {e}")))
}

/// `server`'s key document with our signature added, if we have or can get it.
async fn notarised(cx: &Ctx, server: &str) -> Result<Option<serde_json::Value>, ApiError> {
    if server == cx.engine.server_name.as_str() {
        return own_document(cx).map(Some);
    }
    if ruma::ServerName::parse(server).is_err() || !cx.engine.policy.allows(server) {
        return Ok(None);
    }
    let doc = match cx.engine.key_document(server).await {
        Ok(doc) => doc,
        Err(e) => {
            tracing::debug!(%server, error = %e, "no keys to notarise");
            return Ok(None);
        }
    };
    let mut object: ruma::CanonicalJsonObject =
        serde_json::from_value(doc).map_err(|e| ApiError::unknown(format!("stored key document: {e}")))?;
    cx.engine.keys.sign_json(&mut object)?;
    serde_json::to_value(&object).map(Some).map_err(|e| ApiError::unknown(e.to_string()))
}

/// GET /_matrix/key/v2/server
pub fn server_keys(cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(ok_json(&own_document(&cx)?)) })
}

#[derive(Deserialize)]
pub(crate) struct QueryBody {
    server_keys: BTreeMap<String, serde_json::Value>,
}

/// POST /_matrix/key/v2/query
pub fn query_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let body: QueryBody = parse_json(&req.body)?;
        let mut out = Vec::new();
        for server in body.server_keys.keys().take(20) {
            if let Some(doc) = notarised(&cx, server).await? {
                out.push(doc);
            }
        }
        Ok(ok_json(&ServerKeysAnswer { server_keys: out }))
    })
}

/// GET /_matrix/key/v2/query/{serverName}
pub fn query_server_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let name = req.param("server_name")?;
        let out: Vec<serde_json::Value> = notarised(&cx, name).await?.into_iter().collect();
        Ok(ok_json(&ServerKeysAnswer { server_keys: out }))
    })
}

/// A notary answer.
#[derive(serde::Serialize)]
struct ServerKeysAnswer<A> {
    server_keys: A,
}
