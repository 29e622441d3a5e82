//! `/sync`, filters and account data.
//!
//! Client-Server API §"Syncing" (`GET /sync` with `since`, `timeout`,
//! `full_state`, `filter`), §"Filtering" (`POST /user/{userId}/filter`,
//! `GET /user/{userId}/filter/{filterId}`), §"Client config"
//! (`/user/{userId}/account_data/{type}` and the per-room form).

use std::time::Duration;

use myelin_engine::sync::{SyncRequest, parse_token};
use ruma::RoomId;
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{query_param, require_self, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Longest long-poll we honour.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

fn apply_filter(req: &mut SyncRequest, filter: &JsonValue) {
    let timeline = &filter["room"]["timeline"];
    if let Some(limit) = timeline["limit"].as_u64() {
        req.timeline_limit = (limit as usize).clamp(1, 1000);
    }
    if let Some(types) = timeline["types"].as_array() {
        req.types = Some(types.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect());
    }
    if let Some(types) = timeline["not_types"].as_array() {
        req.not_types = types.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect();
    }
    req.lazy_load_members = filter["room"]["state"]["lazy_load_members"].as_bool().unwrap_or(false);
    req.include_leave = filter["room"]["include_leave"].as_bool().unwrap_or(false);
}

/// GET /_matrix/client/v3/sync
pub fn sync(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let mut request = SyncRequest { device_id: me.device_id.clone(), ..SyncRequest::default() };
        if let Some(since) = query_param(&req, "since") {
            let (pos, typing) =
                parse_token(&since).ok_or_else(|| ApiError::invalid_param(format!("bad since token {since}")))?;
            request.since = Some(pos);
            request.since_typing = typing;
        }
        if let Some(t) = query_param(&req, "timeout") {
            let ms = t.parse::<u64>().map_err(|_| ApiError::invalid_param("timeout must be milliseconds"))?;
            request.timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
        }
        request.full_state = query_param(&req, "full_state").as_deref() == Some("true");
        if let Some(filter) = query_param(&req, "filter") {
            let json: JsonValue = if filter.trim_start().starts_with('{') {
                serde_json::from_str(&filter).map_err(|e| ApiError::not_json(format!("filter: {e}")))?
            } else {
                let id = filter.parse::<u64>().map_err(|_| ApiError::invalid_param("unknown filter id"))?;
                let stored = cx
                    .engine
                    .users
                    .filter(me.user_id.as_str(), id)?
                    .ok_or_else(|| ApiError::not_found("no such filter"))?;
                serde_json::from_slice(&stored).map_err(|e| ApiError::unknown(e.to_string()))?
            };
            apply_filter(&mut request, &json);
        }
        let body = cx.engine.sync(&me.user_id, request).await?;
        Ok(ok_json(&body))
    })
}

/// POST /_matrix/client/v3/user/{userId}/filter
pub fn put_filter(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let filter: JsonValue = parse_json(&req.body)?;
        if !filter.is_object() {
            return Err(ApiError::bad_json("a filter is a JSON object"));
        }
        let id = cx.engine.users.put_filter(me.user_id.as_str(), req.body.to_vec()).await?;
        Ok(ok_json(&json!({ "filter_id": id.to_string() })))
    })
}

/// GET /_matrix/client/v3/user/{userId}/filter/{filterId}
pub fn get_filter(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let id = req.param("filter_id")?.parse::<u64>().map_err(|_| ApiError::not_found("no such filter"))?;
        let stored =
            cx.engine.users.filter(me.user_id.as_str(), id)?.ok_or_else(|| ApiError::not_found("no such filter"))?;
        let json: JsonValue = serde_json::from_slice(&stored).map_err(|e| ApiError::unknown(e.to_string()))?;
        Ok(ok_json(&json))
    })
}

fn room_of(req: &Req) -> Result<Option<String>, ApiError> {
    match req.param("room_id") {
        Ok(r) => Ok(Some(RoomId::parse(r).map_err(|e| ApiError::invalid_param(e.to_string()))?.to_string())),
        Err(_) => Ok(None),
    }
}

/// PUT /user/{userId}/account_data/{type} and /user/{userId}/rooms/{roomId}/account_data/{type}
pub fn put_account_data(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let content: JsonValue = parse_json(&req.body)?;
        if !content.is_object() {
            return Err(ApiError::bad_json("account data content must be a JSON object"));
        }
        let kind = req.param("type")?.to_owned();
        if kind == "m.fully_read" || kind == "m.push_rules" {
            return Err(ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "M_BAD_JSON",
                format!("{kind} is managed by the server"),
            ));
        }
        let room = room_of(&req)?;
        cx.engine.users.set_account_data(me.user_id.as_str(), room.as_deref(), &kind, req.body.to_vec()).await?;
        Ok(ok_json(&json!({})))
    })
}

/// GET /user/{userId}/account_data/{type} and the per-room form
pub fn get_account_data(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let room = room_of(&req)?;
        let stored = cx
            .engine
            .users
            .account_data(me.user_id.as_str(), room.as_deref(), req.param("type")?)?
            .ok_or_else(|| ApiError::not_found("no account data of that type"))?;
        let json: JsonValue = serde_json::from_slice(&stored).map_err(|e| ApiError::unknown(e.to_string()))?;
        Ok(ok_json(&json))
    })
}

/// PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
///
/// Client-Server API §"Send-to-Device messaging". Messages for users of this
/// server are queued per device (`*`: every device); other servers' users
/// need federation EDUs (the federation issue) and are refused.
pub fn send_to_device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        cx.limiter.check(&me.user_id)?;
        let kind = req.param("event_type")?.to_owned();
        let txn = format!("to_device/{}", req.param("txn_id")?);
        if cx.engine.users.txn_event(me.user_id.as_str(), &me.device_id, &txn)?.is_some() {
            return Ok(ok_json(&json!({})));
        }
        let body: JsonValue = parse_json(&req.body)?;
        let messages =
            body["messages"].as_object().ok_or_else(|| ApiError::bad_json("`messages` must be an object"))?;
        let mut queue = Vec::new();
        // Other servers' users: one `m.direct_to_device` EDU per server.
        let mut remote: std::collections::BTreeMap<String, serde_json::Map<String, JsonValue>> =
            std::collections::BTreeMap::new();
        for (user, devices) in messages {
            let user_id =
                ruma::UserId::parse(user.as_str()).map_err(|e| ApiError::invalid_param(format!("{user}: {e}")))?;
            if user_id.server_name() != cx.engine.server_name {
                if !devices.is_object() {
                    return Err(ApiError::bad_json("device map must be an object"));
                }
                remote.entry(user_id.server_name().to_string()).or_default().insert(user.clone(), devices.clone());
                continue;
            }
            let devices = devices.as_object().ok_or_else(|| ApiError::bad_json("device map must be an object"))?;
            for (device, content) in devices {
                let bytes = serde_json::to_vec(content).map_err(|e| ApiError::bad_json(e.to_string()))?;
                queue.push((user.clone(), device.clone(), bytes));
            }
        }
        if !queue.is_empty() {
            cx.engine.users.send_to_device(me.user_id.as_str(), &kind, queue).await?;
        }
        for (server, messages) in remote {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": me.user_id,
                    "type": kind,
                    "message_id": format!("{}-{}-{server}", me.device_id, req.param("txn_id")?),
                    "messages": messages,
                },
            });
            myelin_engine::federation::e2ee::queue_durable_edu(&cx.engine, [server], &edu).await?;
        }
        cx.engine.users.set_txn_event(me.user_id.as_str(), &me.device_id, &txn, "").await?;
        Ok(ok_json(&json!({})))
    })
}
