//! End-to-end encryption endpoints for other servers.
//!
//! Server-Server API §"End-to-End Encryption": `GET /_matrix/federation/v1/user/devices/{userId}`
//! ("Gets information on all of the user's devices"), `POST
//! /_matrix/federation/v1/user/keys/query` ("Returns the current devices and
//! identity keys for the given users"), `POST /_matrix/federation/v1/user/keys/claim`
//! ("Claims one-time keys for use in pre-key messages"). The device-list
//! EDUs are `myelin_engine::federation::e2ee`'s.

use myelin_engine::federation::keys_query;
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    error::ApiError,
    federation::require_server,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn local_user(cx: &Ctx, raw: &str) -> Result<ruma::OwnedUserId, ApiError> {
    let user = UserId::parse(raw).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if user.server_name() != cx.engine.server_name {
        return Err(ApiError::invalid_param(format!("{user} is not a user of this server")));
    }
    Ok(user)
}

/// GET /_matrix/federation/v1/user/devices/{userId}
pub fn user_devices(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let user = local_user(&cx, req.param("user_id")?)?;
        if !cx.engine.users.exists(&user)? {
            return Err(ApiError::not_found("no such user"));
        }
        let mut devices = Vec::new();
        for (device, mut keys) in keys_query::local_device_keys(&cx.engine, &user, &[])? {
            let mut entry = Map::new();
            entry.insert("device_id".into(), json!(device));
            if let Some(name) = keys_query::display_name_of(&keys) {
                entry.insert("device_display_name".into(), json!(name));
            }
            if let Some(o) = keys.as_object_mut() {
                o.remove("unsigned");
            }
            entry.insert("keys".into(), keys);
            devices.push(JsonValue::Object(entry));
        }
        // At or after the user's last device-list change, and increasing.
        let stream_id = cx.engine.stream.current();
        let mut body = Map::new();
        body.insert("user_id".into(), json!(user));
        body.insert("stream_id".into(), json!(stream_id));
        body.insert("devices".into(), JsonValue::Array(devices));
        for (usage, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
            if let Some(k) = cx.engine.e2ee.cross_signing_key(user.as_str(), usage)? {
                body.insert(field.into(), k);
            }
        }
        tracing::debug!(%origin, user_id = %user, "device list fetched over federation");
        Ok(ok_json(&JsonValue::Object(body)))
    })
}

/// The body of `POST /user/keys/query`.
#[derive(Debug, Deserialize)]
pub(crate) struct KeysQuery {
    device_keys: Map<String, JsonValue>,
}

/// POST /_matrix/federation/v1/user/keys/query
pub fn keys_query(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let _origin = require_server(&cx, &req).await?;
        let body: KeysQuery = parse_json(&req.body)?;
        Ok(ok_json(&keys_query::local_keys(&cx.engine, &body.device_keys, None)?))
    })
}

/// The body of `POST /user/keys/claim`.
#[derive(Debug, Deserialize)]
pub(crate) struct KeysClaim {
    one_time_keys: Map<String, JsonValue>,
}

/// POST /_matrix/federation/v1/user/keys/claim
pub fn keys_claim(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let _origin = require_server(&cx, &req).await?;
        let body: KeysClaim = parse_json(&req.body)?;
        Ok(ok_json(&ClaimedKeys { one_time_keys: keys_query::claim_local(&cx.engine, &body.one_time_keys).await? }))
    })
}

/// `user/keys/claim`.
#[derive(serde::Serialize)]
struct ClaimedKeys<A> {
    one_time_keys: A,
}
