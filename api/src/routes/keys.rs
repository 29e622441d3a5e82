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
//! knows, each document signed by its origin and by the notary. Until remote
//! key fetching lands (the federation issue) we notarise only our own keys;
//! for other servers the answer is an empty `server_keys` list, which the spec
//! allows ("the notary server may return an empty list").

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

/// GET /_matrix/key/v2/server
pub fn server_keys(cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(ok_json(&own_document(&cx)?)) })
}

#[derive(Deserialize)]
struct QueryBody {
    server_keys: BTreeMap<String, serde_json::Value>,
}

/// POST /_matrix/key/v2/query
pub fn query_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let body: QueryBody = parse_json(&req.body)?;
        let mut out = Vec::new();
        if body.server_keys.contains_key(cx.engine.server_name.as_str()) {
            out.push(own_document(&cx)?);
        }
        Ok(ok_json(&serde_json::json!({ "server_keys": out })))
    })
}

/// GET /_matrix/key/v2/query/{serverName}
pub fn query_server_keys(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let name = req.param("server_name")?;
        let out = if name == cx.engine.server_name.as_str() { vec![own_document(&cx)?] } else { Vec::new() };
        Ok(ok_json(&serde_json::json!({ "server_keys": out })))
    })
}
