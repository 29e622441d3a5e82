//! `/sync`, filters and account data.
//!
//! Client-Server API §"Syncing" (`GET /sync` with `since`, `timeout`,
//! `full_state`, `filter`), §"Filtering" (`POST /user/{userId}/filter`,
//! `GET /user/{userId}/filter/{filterId}`), §"Client config"
//! (`/user/{userId}/account_data/{type}` and the per-room form).

use std::{collections::BTreeMap, time::Duration};

use myelin_engine::{
    filter::EventFilter as EngineFilter,
    sync::{SyncRequest, parse_full_token},
};
use ruma::RoomId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    auth::{query_param, require_self, require_user},
    error::ApiError,
    http_util::{from_json_value, ok_empty, ok_json, parse_json, parse_json_param},
    router::{Ctx, HandlerFuture, Req},
};

/// Longest long-poll we honour.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

// Filters (Client-Server API §"Filtering"). Every field the spec defines is
// read, so a wrong type is refused (400 `M_BAD_JSON`, as Synapse does), even
// where `/sync` does not apply it yet; unknown fields are ignored.

/// A filter definition, as `POST /user/{userId}/filter` takes it and `/sync?filter=` may inline it.
#[derive(Deserialize, Default)]
#[allow(dead_code)]
pub(crate) struct Filter {
    pub(crate) room: Option<RoomFilter>,
    pub(crate) presence: Option<EventFilter>,
    pub(crate) account_data: Option<EventFilter>,
    pub(crate) event_fields: Option<Vec<String>>,
    pub(crate) event_format: Option<EventFormat>,
}

/// How events are served: `client` (the default) or `federation`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EventFormat {
    /// The client format.
    Client,
    /// The federation format (PDUs as they are).
    Federation,
}

/// A filter for presence and global account data.
#[derive(Deserialize, Default)]
#[allow(dead_code)]
pub(crate) struct EventFilter {
    pub(crate) limit: Option<u64>,
    pub(crate) types: Option<Vec<String>>,
    pub(crate) not_types: Option<Vec<String>>,
    pub(crate) senders: Option<Vec<String>>,
    pub(crate) not_senders: Option<Vec<String>>,
}

/// What of the rooms to include.
#[derive(Deserialize, Default)]
#[allow(dead_code)]
pub(crate) struct RoomFilter {
    pub(crate) timeline: Option<RoomEventFilter>,
    pub(crate) state: Option<RoomEventFilter>,
    pub(crate) ephemeral: Option<RoomEventFilter>,
    pub(crate) account_data: Option<RoomEventFilter>,
    pub(crate) include_leave: Option<bool>,
    pub(crate) rooms: Option<Vec<String>>,
    pub(crate) not_rooms: Option<Vec<String>>,
}

/// A filter for room events (also `POST /search`'s `filter` and `/messages?filter=`).
#[derive(Deserialize, Default)]
#[allow(dead_code)]
pub(crate) struct RoomEventFilter {
    pub(crate) limit: Option<u64>,
    pub(crate) types: Option<Vec<String>>,
    pub(crate) not_types: Option<Vec<String>>,
    pub(crate) senders: Option<Vec<String>>,
    pub(crate) not_senders: Option<Vec<String>>,
    pub(crate) rooms: Option<Vec<String>>,
    pub(crate) not_rooms: Option<Vec<String>>,
    pub(crate) contains_url: Option<bool>,
    pub(crate) lazy_load_members: Option<bool>,
    pub(crate) include_redundant_members: Option<bool>,
    pub(crate) unread_thread_notifications: Option<bool>,
}

impl RoomEventFilter {
    /// The engine's form of this filter.
    pub(crate) fn to_engine(&self) -> EngineFilter {
        EngineFilter {
            limit: self.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            types: self.types.clone(),
            not_types: self.not_types.clone().unwrap_or_default(),
            senders: self.senders.clone(),
            not_senders: self.not_senders.clone().unwrap_or_default(),
            rooms: self.rooms.clone(),
            not_rooms: self.not_rooms.clone().unwrap_or_default(),
            contains_url: self.contains_url,
        }
    }
}

impl EventFilter {
    /// The engine's form of this filter (no room rules).
    fn to_engine(&self) -> EngineFilter {
        EngineFilter {
            limit: self.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            types: self.types.clone(),
            not_types: self.not_types.clone().unwrap_or_default(),
            senders: self.senders.clone(),
            not_senders: self.not_senders.clone().unwrap_or_default(),
            ..EngineFilter::default()
        }
    }
}

fn apply_filter(req: &mut SyncRequest, filter: Filter) {
    let room = filter.room.unwrap_or_default();
    let timeline = room.timeline.unwrap_or_default();
    if let Some(limit) = timeline.limit {
        req.timeline_limit = usize::try_from(limit).unwrap_or(usize::MAX).clamp(1, 1000);
    }
    req.timeline = timeline.to_engine();
    let state = room.state.unwrap_or_default();
    req.lazy_load_members = state.lazy_load_members.unwrap_or(false);
    req.include_redundant_members = state.include_redundant_members.unwrap_or(false);
    req.state = state.to_engine();
    req.ephemeral = room.ephemeral.unwrap_or_default().to_engine();
    req.room_account_data = room.account_data.unwrap_or_default().to_engine();
    req.account_data = filter.account_data.unwrap_or_default().to_engine();
    req.presence = filter.presence.unwrap_or_default().to_engine();
    req.rooms =
        EngineFilter { rooms: room.rooms, not_rooms: room.not_rooms.unwrap_or_default(), ..EngineFilter::default() };
    req.include_leave = room.include_leave.unwrap_or(false);
    req.event_fields = filter.event_fields;
    req.federation_format = filter.event_format == Some(EventFormat::Federation);
}

/// The answer to `POST /user/{userId}/filter`.
#[derive(Serialize)]
struct FilterCreated {
    filter_id: String,
}

/// `PUT /sendToDevice/{eventType}/{txnId}`: content by user, then by device (`*`: all of them).
#[derive(Deserialize)]
pub(crate) struct ToDeviceBody {
    messages: BTreeMap<String, BTreeMap<String, Map<String, JsonValue>>>,
}

/// GET /_matrix/client/v3/sync
pub fn sync(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let mut request = SyncRequest { device_id: me.device_id.clone(), ..SyncRequest::default() };
        if let Some(since) = query_param(&req, "since") {
            let (pos, typing, to_device) =
                parse_full_token(&since).ok_or_else(|| ApiError::invalid_param(format!("bad since token {since}")))?;
            request.since = Some(pos);
            request.since_typing = typing;
            request.since_to_device = to_device;
        }
        if let Some(t) = query_param(&req, "timeout") {
            let ms = t.parse::<u64>().map_err(|_| ApiError::invalid_param("timeout must be milliseconds"))?;
            request.timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
        }
        request.full_state = match query_param(&req, "full_state").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ApiError::invalid_param("full_state must be true or false")),
        };
        let set_presence = query_param(&req, "set_presence").unwrap_or_else(|| "online".to_owned());
        if !matches!(set_presence.as_str(), "online" | "offline" | "unavailable") {
            return Err(ApiError::invalid_param("set_presence must be online, offline or unavailable"));
        }
        if let Some(filter) = query_param(&req, "filter") {
            let filter: Filter = if filter.trim_start().starts_with(['{', '[']) {
                parse_json_param("filter", &filter)?
            } else {
                let id = filter.parse::<u64>().map_err(|_| ApiError::invalid_param("unknown filter id"))?;
                let stored = cx
                    .engine
                    .users
                    .filter(me.user_id.as_str(), id)?
                    .ok_or_else(|| ApiError::not_found("no such filter"))?;
                stored_filter(&stored, id)
            };
            apply_filter(&mut request, filter);
        }
        // Held across the long-poll: a user with a sync in flight stays online.
        let _syncing = cx.engine.presence_from_sync(&me.user_id, &set_presence)?;
        let body = cx.engine.sync(&me.user_id, request).await?;
        Ok(ok_json(&body))
    })
}

/// A stored filter. Filters stored before they were checked on upload may not
/// parse; those count as no filter rather than failing every `/sync` of a
/// client that keeps the id.
fn stored_filter(stored: &[u8], id: u64) -> Filter {
    let parsed = serde_json::from_slice::<JsonValue>(stored).map_err(|e| e.to_string()).and_then(|json| {
        if json.is_object() { from_json_value(json).map_err(|e| e.to_string()) } else { Err("not an object".into()) }
    });
    parsed.unwrap_or_else(|e| {
        tracing::warn!(filter_id = id, error = %e, "a stored filter does not parse; syncing without it");
        Filter::default()
    })
}

/// POST /_matrix/client/v3/user/{userId}/filter
pub fn put_filter(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        // Checked, then kept as sent: `GET …/filter/{filterId}` gives back what was uploaded.
        let _: Filter = parse_json(&req.body)?;
        let id = cx.engine.users.put_filter(me.user_id.as_str(), req.body.to_vec()).await?;
        Ok(ok_json(&FilterCreated { filter_id: id.to_string() }))
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
        // Content is opaque to the server; it must be an object, and is kept as sent.
        let _: Map<String, JsonValue> = parse_json(&req.body)?;
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
        Ok(ok_empty())
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
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let kind = req.param("event_type")?.to_owned();
        let txn = format!("to_device/{}", req.param("txn_id")?);
        // Held until the answer: a concurrent copy waits, then finds the txn row.
        let _claim = cx
            .engine
            .users
            .claim_txn(me.user_id.as_str(), &me.device_id, &txn)
            .await
            .ok_or_else(|| ApiError::busy("too many transactions in flight"))?;
        if cx.engine.users.txn_event(me.user_id.as_str(), &me.device_id, &txn)?.is_some() {
            return Ok(ok_empty());
        }
        let body: ToDeviceBody = parse_json(&req.body)?;
        let mut queue = Vec::new();
        // Other servers' users: one `m.direct_to_device` EDU per server.
        let mut remote: BTreeMap<String, Map<String, JsonValue>> = BTreeMap::new();
        for (user, devices) in body.messages {
            let user_id =
                ruma::UserId::parse(user.as_str()).map_err(|e| ApiError::invalid_param(format!("{user}: {e}")))?;
            if user_id.server_name() != cx.engine.server_name {
                let devices: Map<String, JsonValue> =
                    devices.into_iter().map(|(device, content)| (device, JsonValue::Object(content))).collect();
                remote.entry(user_id.server_name().to_string()).or_default().insert(user, JsonValue::Object(devices));
                continue;
            }
            for (device, content) in devices {
                let bytes = serde_json::to_vec(&content).map_err(|e| ApiError::bad_json(e.to_string()))?;
                queue.push((user.clone(), device, bytes));
            }
        }
        // Remote EDUs first: they carry a message id the receiving server
        // deduplicates by, so a crash before the local batch below only makes a
        // retry queue them again harmlessly.
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
        // The local messages and the transaction row in one batch: delivered once.
        cx.engine.users.send_to_device_for_txn(me.user_id.as_str(), &kind, queue, Some((&me.device_id, &txn))).await?;
        Ok(ok_empty())
    })
}
