//! Rooms across servers: joins, the transaction endpoint, missing events.
//!
//! Server-Server API §"Joining Rooms": a server that wants a user in a room
//! asks a resident server for a join template (`GET make_join`), signs it and
//! sends it back (`PUT v2/send_join`), receiving the room state and its auth
//! chain. §"Transactions": `PUT /_matrix/federation/v1/send/{txnId}` carries
//! PDUs and EDUs; each PDU goes through the receipt checks
//! (`Rooms::verify`, `Rooms::append_pdu`); when its prev events are unknown,
//! they are fetched with `get_missing_events` first, in rounds, until the
//! gap is closed (at most `federation.max_gap_events`).
//! §"Retrieving events": `GET /event/{eventId}`, `POST get_missing_events`.
//!
//! §"Knocking upon a room": `make_knock`/`send_knock` served, and used for
//! local users knocking on other servers' rooms (the answer's stripped state
//! is what the knocker's `/sync` shows under `rooms.knock`).
//!
//! A gap that `get_missing_events` cannot close (larger than
//! `federation.max_gap_events`, 5,000 by default, or a peer that refuses) is
//! bridged as the spec's fallback says: the missing prev events are fetched
//! with the state before them (`/state_ids`, then `/event` for each event not
//! held here) and stored as outliers carrying that state; the new event is
//! then appended on them. The events inside the gap stay out of the timeline
//! (a history hole `/messages` backfill may fill).

use std::collections::HashMap;

use http::{Method, StatusCode};
use myelin_engine::rooms::{Appended, NewEvent, Pdu, version};
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomId, RoomVersionId, UserId, events::TimelineEventType};
use serde_json::{Value as JsonValue, json};

use super::require_server;
use crate::{
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Learns the keys of every server that signed any of `objects`, each key once,
/// so `Rooms::verify` can check them.
pub async fn ensure_signing_keys<'a>(
    cx: &Ctx,
    objects: impl IntoIterator<Item = &'a JsonValue>,
) -> Result<(), ApiError> {
    let mut keys: std::collections::BTreeSet<(&str, &str)> = std::collections::BTreeSet::new();
    for object in objects {
        for (server, ids) in object["signatures"].as_object().into_iter().flatten() {
            for id in ids.as_object().into_iter().flat_map(|ids| ids.keys()) {
                keys.insert((server.as_str(), id.as_str()));
            }
        }
    }
    for (server, key_id) in keys {
        if let Ok(Some(key)) = cx.federation.server_key(&cx.engine, server, key_id).await {
            cx.engine.rooms.add_server_key(server, key_id, &key)?;
        }
    }
    Ok(())
}

/// Parses and verifies one PDU of a room version; a bad content hash gets it redacted.
pub async fn checked_pdu(cx: &Ctx, json: &JsonValue, room_version: &RoomVersionId) -> Result<Pdu, ApiError> {
    let rules = version::rules(room_version)?;
    ensure_signing_keys(cx, [json]).await?;
    verified_pdu(&cx.engine, json.clone(), &rules)
}

/// [`checked_pdu`] for many PDUs at once (a join's state and auth chain, some
/// thousands): the signing keys are fetched first, then the signature and hash
/// checks run on the blocking pool in one chunk per core, off the async
/// workers. Results keep the input order; the first failure in that order
/// is returned.
pub async fn checked_pdus(cx: &Ctx, jsons: Vec<JsonValue>, room_version: &RoomVersionId) -> Result<Vec<Pdu>, ApiError> {
    let rules = version::rules(room_version)?;
    ensure_signing_keys(cx, &jsons).await?;
    let total = jsons.len();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, total.max(1));
    let chunk = total.div_ceil(workers).max(1);
    let mut rest = jsons;
    let mut tasks = Vec::with_capacity(workers);
    while !rest.is_empty() {
        let tail = rest.split_off(chunk.min(rest.len()));
        let part = std::mem::replace(&mut rest, tail);
        let (engine, rules, span) = (cx.engine.clone(), rules.clone(), tracing::Span::current());
        tasks.push(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            part.into_iter().map(|json| verified_pdu(&engine, json, &rules)).collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut pdus = Vec::with_capacity(total);
    for task in tasks {
        pdus.extend(task.await.map_err(|e| ApiError::unknown(format!("PDU check task failed: {e}")))??);
    }
    Ok(pdus)
}

/// The CPU-bound part of [`checked_pdu`], once the signing keys are known.
fn verified_pdu(
    engine: &myelin_engine::Engine,
    json: JsonValue,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<Pdu, ApiError> {
    let object: CanonicalJsonObject = serde_json::from_value(json).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let verified = engine.rooms.verify(&object, rules)?;
    let object = match verified {
        ruma::signatures::Verified::All => object,
        _ => ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| ApiError::bad_json(e.to_string()))?,
    };
    Ok(Pdu::from_object(object, rules)?)
}

fn room_param(req: &Req) -> Result<ruma::OwnedRoomId, ApiError> {
    RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))
}

/// What `make_join` and `make_leave` check alike: an authenticated origin the
/// room's ACL admits, asking for one of its own users, in a room held here.
async fn membership_request(
    cx: &Ctx,
    req: &Req,
) -> Result<(ruma::OwnedRoomId, ruma::OwnedUserId, RoomVersionId), ApiError> {
    let origin = require_server(cx, req).await?;
    let room = room_param(req)?;
    acl_check(cx, &room, &origin)?;
    let user = UserId::parse(req.param("user_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if user.server_name().as_str() != origin {
        return Err(ApiError::forbidden("a server can only ask for its own users"));
    }
    let version =
        cx.engine.rooms.room_version(&room).map_err(|_| ApiError::not_found(format!("{room} is not known here")))?;
    Ok((room, user, version))
}

/// The unsigned membership event template a `make_*` request answers with.
async fn membership_template(
    cx: &Ctx,
    room: &RoomId,
    user: &UserId,
    version: &RoomVersionId,
    membership: &str,
) -> Result<crate::http_util::Resp, ApiError> {
    let event = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": membership }));
    let template = cx.engine.rooms.template(user, room, event).await?;
    Ok(ok_json(&json!({ "event": template, "room_version": version })))
}

/// GET /_matrix/federation/v1/make_join/{roomId}/{userId}
pub fn make_join(cx: Ctx, req: Req) -> HandlerFuture {
    make_entry(cx, req, "join")
}

/// GET /_matrix/federation/v1/make_knock/{roomId}/{userId}
pub fn make_knock(cx: Ctx, req: Req) -> HandlerFuture {
    make_entry(cx, req, "knock")
}

/// `make_join` and `make_knock`: the template, if the asking server supports the room's version.
fn make_entry(cx: Ctx, req: Req, membership: &'static str) -> HandlerFuture {
    Box::pin(async move {
        let (room, user, version) = membership_request(&cx, &req).await?;
        if cx.engine.rooms.is_shutdown(&room)? {
            return Err(ApiError::forbidden(format!("{room} has been shut down on this server")));
        }
        let supported: Vec<String> = req
            .parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.strip_prefix("ver="))
            .map(str::to_owned)
            .collect();
        let supported = if supported.is_empty() { vec!["1".to_owned()] } else { supported };
        if !supported.iter().any(|v| v == version.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("the room is version {version}"),
            )
            .with_room_version(version.as_str()));
        }
        membership_template(&cx, &room, &user, &version, membership).await
    })
}

/// PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}
///
/// Server-Server API §"Knocking upon a room": the signed knock is accepted
/// into the room and answered with the stripped state the knocker sees.
pub fn send_knock(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (room, pdu) = signed_membership(&cx, &req, "knock", true).await?;
        let knocker = pdu.sender.clone();
        match cx.engine.rooms.append_pdu(pdu).await? {
            Appended::Accepted(_) => {}
            Appended::SoftFailed(_) => {
                return Err(ApiError::forbidden("the knock is not allowed by the current state"));
            }
            Appended::Rejected(reason) => return Err(ApiError::forbidden(format!("knock rejected: {reason}"))),
        }
        let state = cx.engine.stripped_state(&room, &knocker)?;
        Ok(ok_json(&json!({ "knock_room_state": state })))
    })
}

/// Knocks for a local user on a room that lives on `servers` (make_knock, sign, send_knock).
pub async fn knock_remote(
    cx: &Ctx,
    user: &UserId,
    room: &RoomId,
    servers: &[String],
    reason: Option<String>,
) -> Result<(), ApiError> {
    let mut last_error = String::from("no server to knock through");
    let versions: String = version::READABLE.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&");
    for server in servers {
        let path = format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{versions}",
            crate::routes::client::enc_query(room.as_str()),
            crate::routes::client::enc_query(user.as_str())
        );
        let mut made = match cx.federation.request(&cx.engine, server, Method::GET, &path, None, true).await {
            Ok(r) if r.status.is_success() => r.json,
            Ok(r) => {
                last_error =
                    format!("{server} refused make_knock: {}", r.json["error"].as_str().unwrap_or(r.status.as_str()));
                continue;
            }
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        if let Some(r) = &reason {
            made["event"]["content"]["reason"] = json!(r);
        }
        let (room_version, template, event_id) = sign_template(cx, &made, user, "knock")?;
        let path = format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            crate::routes::client::enc_query(room.as_str()),
            crate::routes::client::enc_query(event_id.as_str())
        );
        let body = serde_json::to_value(&template).map_err(|e| ApiError::unknown(e.to_string()))?;
        match cx.federation.request(&cx.engine, server, Method::PUT, &path, Some(&body), true).await {
            Ok(r) if r.status.is_success() => {
                let knock = checked_pdu(cx, &body, &room_version).await?;
                let state: Vec<JsonValue> = r.json["knock_room_state"].as_array().cloned().unwrap_or_default();
                cx.engine.rooms.record_remote_knock(user, knock, &state, &cx.engine.stream).await?;
                return Ok(());
            }
            Ok(r) => {
                last_error =
                    format!("{server} refused send_knock: {}", r.json["error"].as_str().unwrap_or(r.status.as_str()));
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(ApiError::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", format!("could not knock on {room}: {last_error}")))
}

/// What `send_join` and `send_leave` check alike: an authenticated origin the
/// room's ACL admits (and, for joins, a room not shut down here) sends a
/// correctly signed `membership` event of one of its own users, matching the path.
async fn signed_membership(
    cx: &Ctx,
    req: &Req,
    membership: &str,
    refuse_if_shut: bool,
) -> Result<(ruma::OwnedRoomId, Pdu), ApiError> {
    let origin = require_server(cx, req).await?;
    let room = room_param(req)?;
    acl_check(cx, &room, &origin)?;
    if refuse_if_shut && cx.engine.rooms.is_shutdown(&room)? {
        return Err(ApiError::forbidden(format!("{room} has been shut down on this server")));
    }
    let version =
        cx.engine.rooms.room_version(&room).map_err(|_| ApiError::not_found(format!("{room} is not known here")))?;
    let json: JsonValue = parse_json(&req.body)?;
    let pdu = checked_pdu(cx, &json, &version).await?;
    if pdu.event_id.as_str() != req.param("event_id")? || pdu.room_id != room {
        return Err(ApiError::bad_json("event id or room does not match the path"));
    }
    if pdu.kind != TimelineEventType::RoomMember
        || pdu.content_value()["membership"] != membership
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || pdu.sender.server_name().as_str() != origin
    {
        return Err(ApiError::bad_json(format!("not a {membership} of one of the origin's users")));
    }
    Ok((room, pdu))
}

/// PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
pub fn send_join(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(ok_json(&accept_join(&cx, &req).await?)) })
}

/// PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}: the deprecated form, whose
/// answer is wrapped as `[200, body]` (§"Joining Rooms", v1).
pub fn send_join_v1(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(ok_json(&json!([200, accept_join(&cx, &req).await?]))) })
}

/// Accepts a signed join and returns the room state and auth chain before it.
async fn accept_join(cx: &Ctx, req: &Req) -> Result<JsonValue, ApiError> {
    let (room, pdu) = signed_membership(cx, req, "join", true).await?;
    let join_id = pdu.event_id.clone();
    let state_before_snapshot = {
        // The state the join is applied to: the room's current state now.
        cx.engine.rooms.current_snapshot(&room)?
    };
    match cx.engine.rooms.append_pdu(pdu).await? {
        Appended::Accepted(_) => {}
        Appended::SoftFailed(_) => return Err(ApiError::forbidden("the join is not allowed by the current state")),
        Appended::Rejected(reason) => return Err(ApiError::forbidden(format!("join rejected: {reason}"))),
    }
    let state = cx.engine.rooms.state_at(state_before_snapshot)?;
    let ids: Vec<OwnedEventId> = state.iter().map(|p| p.event_id.clone()).chain([join_id.clone()]).collect();
    let chain = cx.engine.rooms.auth_chain_events(&ids)?;
    let to_json = |p: &myelin_engine::rooms::ArcPdu| serde_json::to_value(p.json.as_ref()).unwrap_or(JsonValue::Null);
    let joined = cx.engine.rooms.pdu(&join_id)?.ok_or_else(|| ApiError::unknown("join vanished"))?;
    Ok(json!({
        "origin": cx.engine.server_name,
        "state": state.iter().map(to_json).collect::<Vec<_>>(),
        "auth_chain": chain.iter().map(to_json).collect::<Vec<_>>(),
        "event": to_json(&joined),
        "members_omitted": false,
        "servers_in_room": cx.engine.rooms.joined_servers_now(&room)?,
    }))
}

/// Joins a local user to a room that lives on `servers` (make_join, sign, send_join).
pub async fn join_remote(cx: &Ctx, user: &UserId, room: &RoomId, servers: &[String]) -> Result<(), ApiError> {
    let mut last_error = String::from("no server to join through");
    let versions: String = version::READABLE.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&");
    for server in servers {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{versions}",
            crate::routes::client::enc_query(room.as_str()),
            crate::routes::client::enc_query(user.as_str())
        );
        let made = match cx.federation.request(&cx.engine, server, Method::GET, &path, None, true).await {
            Ok(r) if r.status.is_success() => r.json,
            Ok(r) => {
                last_error =
                    format!("{server} refused make_join: {}", r.json["error"].as_str().unwrap_or(r.status.as_str()));
                continue;
            }
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let (room_version, template, event_id) = sign_template(cx, &made, user, "join")?;
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            crate::routes::client::enc_query(room.as_str()),
            crate::routes::client::enc_query(event_id.as_str())
        );
        let body = serde_json::to_value(&template).map_err(|e| ApiError::unknown(e.to_string()))?;
        let mut answer = match cx.federation.request(&cx.engine, server, Method::PUT, &path, Some(&body), true).await {
            Ok(r) if r.status.is_success() => r.json,
            Ok(r) => {
                last_error =
                    format!("{server} refused send_join: {}", r.json["error"].as_str().unwrap_or(r.status.as_str()));
                continue;
            }
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        // State and auth chain checked together, so the work splits evenly over the cores.
        let mut take = |name: &str| match answer[name].take() {
            JsonValue::Array(list) => list,
            _ => Vec::new(),
        };
        let mut both = take("state");
        let state_len = both.len();
        both.extend(take("auth_chain"));
        let mut state = checked_pdus(cx, both, &room_version).await?;
        let chain = state.split_off(state_len);
        // The resident may have co-signed the join (restricted rooms); prefer its copy.
        let join_json = if answer["event"].is_object() { answer["event"].clone() } else { body };
        let join = checked_pdu(cx, &join_json, &room_version).await?;
        cx.engine.rooms.join_remote(&room_version, state, chain, join).await?;
        return Ok(());
    }
    Err(ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("could not join {room}: {last_error}")))
}

/// Checks a `make_join`/`make_leave` answer is a `membership` event for
/// `user`, stamps, hashes and signs it; returns the room version, the event and its id.
fn sign_template(
    cx: &Ctx,
    made: &JsonValue,
    user: &UserId,
    membership: &str,
) -> Result<(RoomVersionId, CanonicalJsonObject, OwnedEventId), ApiError> {
    let room_version = RoomVersionId::try_from(made["room_version"].as_str().unwrap_or("1"))
        .map_err(|e| ApiError::bad_json(e.to_string()))?;
    let rules = version::rules(&room_version)?;
    let event = &made["event"];
    if event["type"] != "m.room.member"
        || event["state_key"] != user.as_str()
        || event["sender"] != user.as_str()
        || event["content"]["membership"] != membership
    {
        return Err(ApiError::bad_json(format!("the {membership} template is not a {membership} of {user}")));
    }
    let mut template: CanonicalJsonObject =
        serde_json::from_value(event.clone()).map_err(|e| ApiError::bad_json(format!("{membership} template: {e}")))?;
    template.insert(
        "origin_server_ts".into(),
        ruma::CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or_default()),
    );
    template.remove("signatures");
    template.remove("hashes");
    cx.engine.keys.hash_and_sign_event(&mut template, &rules)?;
    let event_id = myelin_engine::rooms::pdu::event_id_of(&template, &rules)?;
    Ok((room_version, template, event_id))
}

/// GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
pub fn make_leave(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (room, user, version) = membership_request(&cx, &req).await?;
        membership_template(&cx, &room, &user, &version, "leave").await
    })
}

/// PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
pub fn send_leave(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (_, pdu) = signed_membership(&cx, &req, "leave", false).await?;
        match cx.engine.rooms.append_pdu(pdu).await? {
            Appended::Accepted(_) => Ok(ok_json(&json!({}))),
            Appended::SoftFailed(_) => Err(ApiError::forbidden("the leave is not allowed by the current state")),
            Appended::Rejected(reason) => Err(ApiError::forbidden(format!("leave rejected: {reason}"))),
        }
    })
}

/// Declines a local user's invite to a room that lives on `servers`
/// (make_leave, sign, send_leave), then records the leave locally. When no
/// server takes the leave the invite is still dropped here, so a dead remote
/// server cannot pin an invite on a user's screen.
pub async fn leave_remote(cx: &Ctx, user: &UserId, room: &RoomId, servers: &[String]) -> Result<(), ApiError> {
    let mut accepted = None;
    for server in servers {
        let path = format!(
            "/_matrix/federation/v1/make_leave/{}/{}",
            crate::routes::client::enc_query(room.as_str()),
            crate::routes::client::enc_query(user.as_str())
        );
        let made = match cx.federation.request(&cx.engine, server, Method::GET, &path, None, true).await {
            Ok(r) if r.status.is_success() => r.json,
            Ok(r) => {
                tracing::info!(%server, status = %r.status, "make_leave refused");
                continue;
            }
            Err(e) => {
                tracing::info!(%server, error = %e, "make_leave failed");
                continue;
            }
        };
        let (room_version, template, event_id) = sign_template(cx, &made, user, "leave")?;
        let path = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            crate::routes::client::enc_query(room.as_str()),
            crate::routes::client::enc_query(event_id.as_str())
        );
        let body = serde_json::to_value(&template).map_err(|e| ApiError::unknown(e.to_string()))?;
        match cx.federation.request(&cx.engine, server, Method::PUT, &path, Some(&body), true).await {
            Ok(r) if r.status.is_success() => {
                accepted = Some(checked_pdu(cx, &body, &room_version).await?);
                break;
            }
            Ok(r) => tracing::info!(%server, status = %r.status, "send_leave refused"),
            Err(e) => tracing::info!(%server, error = %e, "send_leave failed"),
        }
    }
    if accepted.is_none() {
        tracing::warn!(room_id = %room, user_id = %user, "no server took the leave; dropping the invite locally");
    }
    cx.engine.rooms.record_remote_leave(user, room, accepted, &cx.engine.stream).await?;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// PUT /_matrix/federation/v1/send/{txnId}
pub fn send_transaction(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let txn = req.param("txn_id")?.to_owned();
        // A retried transaction we already processed (also before a restart): its EDUs
        // must not be applied twice.
        if cx.engine.seen_txns.seen(&origin, &txn)? {
            return Ok(ok_json(&json!({ "pdus": {} })));
        }
        let body: JsonValue = parse_json(&req.body)?;
        let mut results: HashMap<String, JsonValue> = HashMap::new();
        // Accepted events are appended one after another without waiting for each
        // one's commit; all of them are made durable together before the 200.
        let mut unsettled = Vec::new();
        for json in body["pdus"].as_array().into_iter().flatten().take(50) {
            let (id, outcome) = receive_pdu(&cx, &origin, json, &mut unsettled).await;
            if let Some(id) = id {
                results.insert(id, outcome);
            }
        }
        // Each accepted event told the writer another would follow; none will now.
        if !unsettled.is_empty() {
            cx.engine.rooms.release_held()?;
        }
        for (room, pending) in unsettled {
            cx.engine.rooms.settle(&room, pending).await?;
        }
        for edu in body["edus"].as_array().into_iter().flatten().take(100) {
            tracing::debug!(%origin, edu_type = ?edu["edu_type"].as_str(), content = %edu["content"], "EDU received");
            receive_edu(&cx, &origin, edu).await;
        }
        cx.engine.seen_txns.record(&origin, &txn)?;
        Ok(ok_json(&json!({ "pdus": results })))
    })
}

async fn receive_pdu(
    cx: &Ctx,
    origin: &str,
    json: &JsonValue,
    unsettled: &mut Vec<(ruma::OwnedRoomId, myelin_storage::Pending)>,
) -> (Option<String>, JsonValue) {
    let Some(room) = json["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()) else {
        return (None, json!({}));
    };
    let Ok(room_version) = cx.engine.rooms.room_version(&room) else {
        return (None, json!({})); // not a room we are in: ignore
    };
    if !acl_allows(cx, &room, origin) {
        let id = json["event_id"].as_str().map(str::to_owned);
        return (id, json!({ "error": format!("{origin} is denied by the room's server ACL") }));
    }
    let pdu = match checked_pdu(cx, json, &room_version).await {
        Ok(p) => p,
        Err(e) => return (None, json!({ "error": e.message })),
    };
    let id = pdu.event_id.to_string();
    if cx.engine.rooms.meta(&pdu.event_id).ok().flatten().is_some() {
        return (Some(id), json!({}));
    }
    if let Err(e) = fill_gap(cx, origin, &room, &room_version, &pdu).await {
        return (Some(id), json!({ "error": e.message }));
    }
    match cx.engine.rooms.append_pdu_unsettled(pdu, true).await {
        Ok((Appended::Accepted(_) | Appended::SoftFailed(_), pending)) => {
            unsettled.extend(pending.map(|p| (room.clone(), p)));
            (Some(id), json!({}))
        }
        Ok((Appended::Rejected(reason), _)) => (Some(id), json!({ "error": reason })),
        Err(e) => (Some(id), json!({ "error": e.to_string() })),
    }
}

/// Fetches unknown prev events of `pdu` from `origin` with `get_missing_events`,
/// round after round (100 per round, walking back from the unknown edge) until
/// every fetched event's prev events are known here, then appends them oldest
/// first. A peer catching up after an outage may send only its newest event
/// (Synapse does): everything before it is recovered here, none lost.
async fn fill_gap(cx: &Ctx, origin: &str, room: &RoomId, version: &RoomVersionId, pdu: &Pdu) -> Result<(), ApiError> {
    let known = |id: &OwnedEventId| cx.engine.rooms.meta(id).ok().flatten().is_some();
    if pdu.prev_events.iter().all(known) {
        return Ok(());
    }
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", crate::routes::client::enc_query(room.as_str()));
    let earliest = cx.engine.rooms.extremities(room)?;
    let mut fetched: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut latest: Vec<OwnedEventId> = vec![pdu.event_id.clone()];
    while fetched.len() < cx.engine.config.federation.max_gap_events {
        let body = json!({ "earliest_events": earliest, "latest_events": latest, "limit": 100, "min_depth": 0 });
        let answer = match cx.federation.request(&cx.engine, origin, Method::POST, &path, Some(&body), true).await {
            Ok(a) if a.status.is_success() => a,
            Ok(a) => {
                tracing::info!(%origin, status = %a.status, "get_missing_events refused; falling back to /state_ids");
                break;
            }
            Err(e) => {
                tracing::info!(%origin, error = %e, "get_missing_events failed; falling back to /state_ids");
                break;
            }
        };
        let before = fetched.len();
        for json in answer.json["events"].as_array().into_iter().flatten() {
            if let Ok(p) = checked_pdu(cx, json, version).await
                && p.room_id == *room
            {
                fetched.entry(p.event_id.clone()).or_insert(p);
            }
        }
        // The edge: fetched events (or the new one) with prev events still unknown.
        let edge: Vec<OwnedEventId> = fetched
            .values()
            .chain(std::iter::once(pdu))
            .filter(|p| p.prev_events.iter().any(|prev| !fetched.contains_key(prev) && !known(prev)))
            .map(|p| p.event_id.clone())
            .collect();
        if edge.is_empty() || fetched.len() == before {
            break;
        }
        latest = edge;
    }
    let mut events: Vec<Pdu> = fetched.into_values().collect();
    events.sort_by_key(|p| p.depth);
    tracing::debug!(%origin, room_id = %room, events = events.len(), "filling a gap");
    // What is still missing behind the oldest events (a gap larger than `max_gap_events`, or a
    // peer without get_missing_events): take those prev events with the state
    // the peer reports at them, as the spec's fallback says.
    let fetched_ids: std::collections::HashSet<OwnedEventId> = events.iter().map(|p| p.event_id.clone()).collect();
    let mut missing: Vec<OwnedEventId> = Vec::new();
    for p in events.iter().chain(std::iter::once(pdu)) {
        for prev in &p.prev_events {
            if !fetched_ids.contains(prev) && !known(prev) && !missing.contains(prev) {
                missing.push(prev.clone());
            }
        }
    }
    for prev in missing.into_iter().take(MAX_STATE_FALLBACKS) {
        if let Err(e) = accept_with_remote_state(cx, origin, room, version, &prev).await {
            tracing::warn!(%origin, room_id = %room, event_id = %prev, error = %e.message, "could not take an event on the remote state");
        }
    }
    for p in events {
        if cx.engine.rooms.meta(&p.event_id)?.is_none() {
            let _ = cx.engine.rooms.append_pdu(p).await;
        }
    }
    Ok(())
}

/// Most prev events taken on a remote's state for one incoming event.
const MAX_STATE_FALLBACKS: usize = 4;

/// Fetches `event_id` and the state before it from `origin` (`/state_ids`,
/// then `/event` for each event not held here, 16 at a time) and stores it
/// as an outlier with that state, so later events can be appended on it.
async fn accept_with_remote_state(
    cx: &Ctx,
    origin: &str,
    room: &RoomId,
    version: &RoomVersionId,
    event_id: &EventId,
) -> Result<(), ApiError> {
    use futures_util::StreamExt;
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        crate::routes::client::enc_query(room.as_str()),
        crate::routes::client::enc_query(event_id.as_str())
    );
    let ids = cx
        .federation
        .request(&cx.engine, origin, Method::GET, &path, None, true)
        .await
        .map_err(|e| ApiError::unknown(format!("state_ids: {e}")))?;
    if !ids.status.is_success() {
        return Err(ApiError::unknown(format!("state_ids answered {}", ids.status)));
    }
    let list = |name: &str| -> Vec<OwnedEventId> {
        ids.json[name]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().and_then(|s| EventId::parse(s).ok()))
            .collect()
    };
    let (state_ids, chain_ids) = (list("pdu_ids"), list("auth_chain_ids"));
    let fetch = |id: OwnedEventId| async move {
        if let Ok(Some(p)) = cx.engine.rooms.pdu(&id) {
            return Some((*p).clone());
        }
        let path = format!("/_matrix/federation/v1/event/{}", crate::routes::client::enc_query(id.as_str()));
        let answer = cx.federation.request(&cx.engine, origin, Method::GET, &path, None, true).await.ok()?;
        let json = answer.json["pdus"].as_array()?.first()?.clone();
        let p = checked_pdu(cx, &json, version).await.ok()?;
        (p.event_id == id && p.room_id == *room).then_some(p)
    };
    let state: Vec<Pdu> = futures_util::stream::iter(state_ids)
        .map(fetch)
        .buffer_unordered(16)
        .filter_map(|p| async { p })
        .collect()
        .await;
    let chain: Vec<Pdu> = futures_util::stream::iter(chain_ids)
        .map(fetch)
        .buffer_unordered(16)
        .filter_map(|p| async { p })
        .collect()
        .await;
    let event = fetch(event_id.to_owned()).await.ok_or_else(|| ApiError::unknown(format!("{event_id} not served")))?;
    tracing::info!(%origin, room_id = %room, %event_id, state = state.len(), "taking an event on the remote's state");
    cx.engine.rooms.store_with_remote_state(event, state, chain).await?;
    Ok(())
}

/// Whether the room's `m.room.server_acl` lets `server` take part.
/// An event as served to `origin`: whole when its history visibility lets the
/// server see it, otherwise redacted (the DAG stays walkable, the content does not leak).
fn served_json(
    cx: &Ctx,
    origin: &str,
    rules: &ruma::room_version_rules::RoomVersionRules,
    p: &myelin_engine::rooms::ArcPdu,
) -> JsonValue {
    let whole = || serde_json::to_value(p.json.as_ref()).unwrap_or(JsonValue::Null);
    match cx.engine.rooms.visible_to_server(origin, p) {
        Ok(true) => whole(),
        _ => p.redacted_json(rules).ok().and_then(|r| serde_json::to_value(r).ok()).unwrap_or(JsonValue::Null),
    }
}

/// Room-scoped reads: the origin must pass the room's server ACL and have a joined member.
fn room_access(cx: &Ctx, room: &RoomId, origin: &str) -> Result<(), ApiError> {
    if !acl_allows(cx, room, origin) {
        return Err(ApiError::forbidden(format!("{origin} is denied by the room's server ACL")));
    }
    if !cx.engine.rooms.joined_servers_now(room)?.contains(&origin.to_owned()) {
        return Err(ApiError::forbidden("your server is not in this room"));
    }
    Ok(())
}

/// The room's server ACL check alone, as a Matrix error.
fn acl_check(cx: &Ctx, room: &RoomId, origin: &str) -> Result<(), ApiError> {
    if acl_allows(cx, room, origin) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("{origin} is denied by the room's server ACL")))
    }
}

fn acl_allows(cx: &Ctx, room: &RoomId, server: &str) -> bool {
    match cx.engine.rooms.state_event(room, "m.room.server_acl", "") {
        Ok(Some(acl)) => {
            myelin_engine::acl::ServerAcl::from_content(&acl.content_value()).is_ok_and(|a| a.allows(server))
        }
        _ => true,
    }
}

async fn receive_edu(cx: &Ctx, origin: &str, edu: &JsonValue) {
    let content = &edu["content"];
    match edu["edu_type"].as_str() {
        Some("m.direct_to_device") => {
            let (Some(sender), Some(kind)) = (content["sender"].as_str(), content["type"].as_str()) else { return };
            if UserId::parse(sender).map(|u| u.server_name().as_str() != origin).unwrap_or(true) {
                return;
            }
            // The same message in a transaction resent under a new id (the sender restarted
            // between our 200 and its bookkeeping) is delivered once.
            let message_key = content["message_id"].as_str().map(|m| format!("to_device/{m}"));
            if let Some(key) = &message_key
                && cx.engine.seen_txns.seen(origin, key).unwrap_or(false)
            {
                return;
            }
            let mut queue = Vec::new();
            for (user, devices) in content["messages"].as_object().into_iter().flatten() {
                let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
                if user_id.server_name() != cx.engine.server_name {
                    continue;
                }
                for (device, message) in devices.as_object().into_iter().flatten() {
                    if let Ok(bytes) = serde_json::to_vec(message) {
                        queue.push((user.clone(), device.clone(), bytes));
                    }
                }
            }
            if !queue.is_empty()
                && let Err(e) = cx.engine.users.send_to_device(sender, kind, queue).await
            {
                tracing::warn!(%origin, error = %e, "could not store to-device messages");
                return;
            }
            if let Some(key) = message_key
                && let Err(e) = cx.engine.seen_txns.record_durable(origin, &key).await
            {
                tracing::warn!(%origin, error = %e, "could not remember a to-device message id");
            }
        }
        Some("m.device_list_update") => super::e2ee::receive_device_list_update(cx, origin, content).await,
        Some("m.signing_key_update") => super::e2ee::receive_signing_key_update(cx, origin, content).await,
        Some("m.presence") if cx.engine.config.presence.enabled => {
            for item in content["push"].as_array().into_iter().flatten().take(1000) {
                let Some(user) = item["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else { continue };
                let state = item["presence"].as_str().unwrap_or_default();
                if user.server_name().as_str() != origin || !matches!(state, "online" | "offline" | "unavailable") {
                    continue;
                }
                let status = item["status_msg"].as_str().map(|s| s.chars().take(1000).collect());
                cx.engine.ephemeral.set_presence(&user, state, status);
            }
        }
        Some("m.typing") => {
            let (Some(room), Some(user)) = (
                content["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()),
                content["user_id"].as_str().and_then(|u| UserId::parse(u).ok()),
            ) else {
                return;
            };
            if user.server_name().as_str() != origin || !acl_allows(cx, &room, origin) {
                return;
            }
            let typing = content["typing"].as_bool().unwrap_or(false);
            cx.engine.ephemeral.set_typing(&room, &user, typing, std::time::Duration::from_secs(30));
        }
        Some("m.receipt") => {
            for (room, kinds) in content.as_object().into_iter().flatten() {
                let Ok(room) = RoomId::parse(room.as_str()) else { continue };
                if !acl_allows(cx, &room, origin) {
                    continue;
                }
                for (kind, users) in kinds.as_object().into_iter().flatten() {
                    if kind != "m.read" {
                        continue;
                    }
                    for (user, data) in users.as_object().into_iter().flatten() {
                        let Ok(user) = UserId::parse(user.as_str()) else { continue };
                        if user.server_name().as_str() != origin {
                            continue;
                        }
                        let thread = data["data"]["thread_id"].as_str();
                        for event in data["event_ids"].as_array().into_iter().flatten().filter_map(JsonValue::as_str) {
                            let _ = cx.engine.set_receipt(&room, &user, "m.read", thread, event).await;
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// GET /_matrix/federation/v1/event/{eventId}
pub fn get_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let id = EventId::parse(req.param("event_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        let pdu = cx.engine.rooms.pdu(&id)?.ok_or_else(|| ApiError::not_found("event not found"))?;
        room_access(&cx, &pdu.room_id, &origin)?;
        if !cx.engine.rooms.visible_to_server(&origin, &pdu)? {
            return Err(ApiError::not_found("event not found"));
        }
        Ok(ok_json(&json!({
            "origin": cx.engine.server_name,
            "origin_server_ts": now_ms(),
            "pdus": [serde_json::to_value(pdu.json.as_ref()).unwrap_or(JsonValue::Null)],
        })))
    })
}

/// POST /_matrix/federation/v1/get_missing_events/{roomId}
pub fn get_missing_events(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let room = room_param(&req)?;
        room_access(&cx, &room, &origin)?;
        let body: JsonValue = parse_json(&req.body)?;
        let ids = |k: &str| -> Vec<OwnedEventId> {
            body[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .filter_map(|s| EventId::parse(s).ok())
                .collect()
        };
        let limit = body["limit"].as_u64().unwrap_or(10).clamp(1, 100) as usize;
        let events = cx.engine.rooms.missing_events(&ids("earliest_events"), &ids("latest_events"), limit)?;
        let rules = version::rules(&cx.engine.rooms.room_version(&room)?)?;
        let out: Vec<JsonValue> =
            events.iter().filter(|p| p.room_id == room).map(|p| served_json(&cx, &origin, &rules, p)).collect();
        Ok(ok_json(&json!({ "events": out })))
    })
}

/// PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
///
/// §"Inviting to a room": the inviting server sends the invite event, signed
/// by it; we check it invites one of our users, co-sign it and keep it, with
/// the stripped room state, so the user's `/sync` shows the invite.
pub fn receive_invite(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let body: JsonValue = parse_json(&req.body)?;
        let room_version = RoomVersionId::try_from(body["room_version"].as_str().unwrap_or("1"))
            .map_err(|e| ApiError::bad_json(e.to_string()))?;
        if !version::READABLE.contains(&room_version) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                "unsupported room version",
            )
            .with_room_version(room_version.as_str()));
        }
        let pdu = checked_pdu(&cx, &body["event"], &room_version).await?;
        let target = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let Some(target) = target.filter(|_| pdu.kind == TimelineEventType::RoomMember) else {
            return Err(ApiError::bad_json("not a membership event"));
        };
        if pdu.content_value()["membership"] != "invite"
            || target.server_name() != cx.engine.server_name
            || pdu.sender.server_name().as_str() != origin
            || pdu.event_id.as_str() != req.param("event_id")?
        {
            return Err(ApiError::bad_json("not an invite from the origin for one of our users"));
        }
        if cx.engine.rooms.is_shutdown(&pdu.room_id)? {
            return Err(ApiError::forbidden(format!("{} has been shut down on this server", pdu.room_id)));
        }
        acl_check(&cx, &pdu.room_id, &origin)?;
        if !cx.engine.users.exists(&target)? {
            return Err(ApiError::not_found(format!("{target} does not exist")));
        }
        let rules = version::rules(&room_version)?;
        let mut object = (*pdu.json).clone();
        cx.engine.keys.sign_event(&mut object, &rules)?;
        let signed = Pdu::from_object(object, &rules)?;
        let state: Vec<JsonValue> = body["invite_room_state"].as_array().cloned().unwrap_or_default();
        let answer = serde_json::to_value(signed.json.as_ref()).map_err(|e| ApiError::unknown(e.to_string()))?;
        if !cx.engine.rooms.is_local_room(&signed.room_id) {
            cx.engine.rooms.record_remote_invite(&target, signed, &state, &cx.engine.stream).await?;
        }
        Ok(ok_json(&json!({ "event": answer })))
    })
}

/// Invites a user of another server: their server co-signs first (§"Inviting to a room").
pub async fn invite_remote(
    cx: &Ctx,
    inviter: &UserId,
    room: &RoomId,
    invitee: &UserId,
    content: JsonValue,
) -> Result<String, ApiError> {
    let event = NewEvent::state(TimelineEventType::RoomMember, invitee.as_str(), content);
    let pdu = cx.engine.rooms.build_event(inviter, room, event).await?;
    let version = cx.engine.rooms.room_version(room)?;
    let mut stripped = Vec::new();
    for kind in [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.encryption",
    ] {
        if let Some(p) = cx.engine.rooms.state_event(room, kind, "")? {
            stripped.push(myelin_engine::events::stripped_event(&p));
        }
    }
    if let Some(p) = cx.engine.rooms.state_event(room, "m.room.member", inviter.as_str())? {
        stripped.push(myelin_engine::events::stripped_event(&p));
    }
    let body = json!({
        "event": serde_json::to_value(pdu.json.as_ref()).map_err(|e| ApiError::unknown(e.to_string()))?,
        "room_version": version,
        "invite_room_state": stripped,
    });
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        crate::routes::client::enc_query(room.as_str()),
        crate::routes::client::enc_query(pdu.event_id.as_str())
    );
    let server = invitee.server_name().to_string();
    let answer = cx
        .federation
        .request(&cx.engine, &server, Method::PUT, &path, Some(&body), true)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("inviting {invitee}: {e}")))?;
    if !answer.status.is_success() {
        let reason = answer.json["error"].as_str().unwrap_or(answer.status.as_str()).to_owned();
        return Err(ApiError::forbidden(format!("{server} refused the invite: {reason}")));
    }
    let signed = checked_pdu(cx, &answer.json["event"], &version).await?;
    if signed.event_id != pdu.event_id {
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", "the invitee's server changed the invite"));
    }
    match cx.engine.rooms.append_pdu(signed).await? {
        Appended::Accepted(p) => Ok(p.event_id.to_string()),
        Appended::SoftFailed(_) | Appended::Rejected(_) => Err(ApiError::forbidden("the invite is not allowed")),
    }
}

/// GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…
///
/// §"Backfilling": history before the given events, walking prev events back,
/// newest first, for a server that has members in the room.
pub fn backfill(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let room = room_param(&req)?;
        room_access(&cx, &room, &origin)?;
        let query = req.parts.uri.query().unwrap_or_default();
        let from: Vec<OwnedEventId> = query
            .split('&')
            .filter_map(|p| p.strip_prefix("v="))
            .filter_map(crate::http_util::percent_decode)
            .filter_map(|v| EventId::parse(v.as_str()).ok())
            .collect();
        let limit = query
            .split('&')
            .find_map(|p| p.strip_prefix("limit="))
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(50)
            .clamp(1, 200);
        let events = cx.engine.rooms.backfill_from(&from, limit)?;
        let rules = version::rules(&cx.engine.rooms.room_version(&room)?)?;
        let pdus: Vec<JsonValue> =
            events.iter().filter(|p| p.room_id == room).map(|p| served_json(&cx, &origin, &rules, p)).collect();
        Ok(ok_json(&json!({ "origin": cx.engine.server_name, "origin_server_ts": now_ms(), "pdus": pdus })))
    })
}

/// The state before `event_id` (in `room`) and its auth chain, for a server in the room.
async fn state_before(
    cx: &Ctx,
    req: &Req,
) -> Result<(Vec<myelin_engine::rooms::ArcPdu>, Vec<myelin_engine::rooms::ArcPdu>), ApiError> {
    let origin = require_server(cx, req).await?;
    let room = room_param(req)?;
    room_access(cx, &room, &origin)?;
    let id =
        crate::auth::query_param(req, "event_id").ok_or_else(|| ApiError::missing_param("event_id is required"))?;
    let id = EventId::parse(id.as_str()).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    let event = cx.engine.rooms.pdu(&id)?.filter(|p| p.room_id == room);
    let meta = cx.engine.rooms.meta(&id)?;
    let (Some(_), Some(meta)) = (event, meta) else {
        return Err(ApiError::not_found(format!("{id} is not known in {room}")));
    };
    if meta.state_before == 0 {
        return Err(ApiError::not_found(format!("the state at {id} is not known here")));
    }
    let state = cx.engine.rooms.state_at(meta.state_before)?;
    let ids: Vec<OwnedEventId> = state.iter().map(|p| p.event_id.clone()).collect();
    let chain = cx.engine.rooms.auth_chain_events(&ids)?;
    Ok((state, chain))
}

/// GET /_matrix/federation/v1/state_ids/{roomId}?event_id=…
///
/// §"Retrieving events": the ids of the room state before the event and of its auth chain.
pub fn state_ids(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (state, chain) = state_before(&cx, &req).await?;
        let ids = |v: &[myelin_engine::rooms::ArcPdu]| v.iter().map(|p| p.event_id.to_string()).collect::<Vec<_>>();
        Ok(ok_json(&json!({ "pdu_ids": ids(&state), "auth_chain_ids": ids(&chain) })))
    })
}

/// GET /_matrix/federation/v1/state/{roomId}?event_id=…
pub fn state(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (state, chain) = state_before(&cx, &req).await?;
        let full = |v: &[myelin_engine::rooms::ArcPdu]| {
            v.iter().map(|p| serde_json::to_value(p.json.as_ref()).unwrap_or(JsonValue::Null)).collect::<Vec<_>>()
        };
        Ok(ok_json(&json!({ "pdus": full(&state), "auth_chain": full(&chain) })))
    })
}

/// GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}: the event's full auth chain.
pub fn event_auth(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let room = room_param(&req)?;
        room_access(&cx, &room, &origin)?;
        let id = EventId::parse(req.param("event_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        if cx.engine.rooms.pdu(&id)?.is_none_or(|p| p.room_id != room) {
            return Err(ApiError::not_found(format!("{id} is not known in {room}")));
        }
        let chain = cx.engine.rooms.auth_chain_events(&[id])?;
        let full: Vec<JsonValue> =
            chain.iter().map(|p| serde_json::to_value(p.json.as_ref()).unwrap_or(JsonValue::Null)).collect();
        Ok(ok_json(&json!({ "auth_chain": full })))
    })
}

/// Fetches up to `limit` events of history before the room's oldest local event
/// from a server in the room; returns how many were stored.
pub async fn backfill_room(cx: &Ctx, room: &RoomId, limit: usize) -> Result<usize, ApiError> {
    let from = cx.engine.rooms.backfill_point(room)?;
    if from.is_empty() {
        return Ok(0);
    }
    let version = cx.engine.rooms.room_version(room)?;
    let ours = cx.engine.server_name.as_str();
    let servers: Vec<String> = cx.engine.rooms.joined_servers_now(room)?.into_iter().filter(|s| s != ours).collect();
    let vs: String = from
        .iter()
        .map(|v| format!("v={}", crate::routes::client::enc_query(v.as_str())))
        .collect::<Vec<_>>()
        .join("&");
    let path = format!(
        "/_matrix/federation/v1/backfill/{}?{vs}&limit={limit}",
        crate::routes::client::enc_query(room.as_str())
    );
    for server in servers {
        let Ok(resp) = cx.federation.request(&cx.engine, &server, Method::GET, &path, None, true).await else {
            continue;
        };
        if !resp.status.is_success() {
            continue;
        }
        let mut pdus = Vec::new();
        for json in resp.json["pdus"].as_array().into_iter().flatten() {
            match checked_pdu(cx, json, &version).await {
                Ok(p) => pdus.push(p),
                Err(e) => tracing::info!(error = %e.message, "dropping a backfilled event that fails its checks"),
            }
        }
        return Ok(cx.engine.rooms.store_backfilled(room, pdus).await?);
    }
    Ok(0)
}
