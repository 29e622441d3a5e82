//! Membership handshakes with other servers, for local users.
//!
//! Server-Server API §"Joining Rooms": ask a resident server for a join
//! template (`GET make_join`, offering the room versions we read), sign it,
//! send it back (`PUT v2/send_join`) and receive the room state and its
//! auth chain, which are checked (signatures, hashes) before the rooms
//! engine takes them; the rooms engine then runs the authorization rules on
//! each of them against its own auth events, keeps only what passes as the
//! room state, and authorizes the join against that (`Rooms::join_remote`,
//! one batch: a join that fails leaves nothing behind). §"Knocking upon a room" and §"Leaving Rooms
//! (Rejecting Invites)" are the same dance with `make_knock`/`send_knock`
//! and `make_leave`/`send_leave`. §"Inviting to a room": an invite of
//! another server's user is co-signed by that user's server first
//! (`PUT v2/invite`) and only then appended here.
//!
//! Each handshake tries the given servers in order and stops at the first
//! that completes it; the error names the last failure.

use std::sync::Arc;

use http::Method;
use ruma::{CanonicalJsonObject, OwnedEventId, RoomId, RoomVersionId, UserId, events::TimelineEventType};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::{
    FederationError, enc,
    pdu_check::{checked_pdu, checked_pdus},
};
use crate::{
    Engine,
    rooms::{Appended, NewEvent, Pdu, version},
};

/// A `make_join`/`make_leave`/`make_knock` answer.
#[derive(Debug, Deserialize)]
struct MadeTemplate {
    /// The unsigned event to fill in.
    event: serde_json::Map<String, JsonValue>,
    /// The room's version; the spec says "1" when absent.
    room_version: Option<String>,
}

/// A `v2/send_join` answer.
#[derive(Debug, Deserialize)]
struct SendJoinAnswer {
    state: Vec<JsonValue>,
    auth_chain: Vec<JsonValue>,
    /// The join as the resident co-signed it (restricted rooms).
    event: Option<JsonValue>,
}

/// A `send_knock` answer.
#[derive(Debug, Deserialize)]
struct SendKnockAnswer {
    #[serde(default)]
    knock_room_state: Vec<JsonValue>,
}

/// A `v2/invite` answer.
#[derive(Debug, Deserialize)]
struct InviteAnswer {
    event: JsonValue,
}

/// `ver=…` for every room version we can read, as `make_*` queries carry them.
fn version_query() -> String {
    version::READABLE.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&")
}

/// Asks `server` for a membership template and signs it: the room version, the event and its id.
async fn signed_template(
    engine: &Engine,
    server: &str,
    path: &str,
    user: &UserId,
    membership: &str,
    reason: Option<&str>,
) -> Result<(RoomVersionId, CanonicalJsonObject, OwnedEventId), FederationError> {
    let answer = engine.remote(server).get(path).await?;
    if !answer.status.is_success() {
        return Err(refusal(server, &format!("make_{membership}"), &answer));
    }
    let mut made: MadeTemplate = answer.parse(server)?;
    if let Some(r) = reason
        && let Some(content) = made.event.get_mut("content").and_then(JsonValue::as_object_mut)
    {
        content.insert("reason".into(), json!(r));
    }
    sign_template(engine, made, user, membership)
        .map_err(|e| FederationError::BadResponse { server: server.to_owned(), reason: e.to_string() })
}

/// A resident's refusal as the error our client should see: a 403 and the
/// restricted-join codes are kept as they are, the rest is named.
fn refusal(server: &str, what: &str, answer: &super::client::Response) -> FederationError {
    let text = format!("{server} refused {what}: {}", answer.error_text());
    match answer.json.get("errcode").and_then(JsonValue::as_str) {
        Some("M_UNABLE_TO_AUTHORISE_JOIN") => FederationError::UnableToAuthoriseJoin(text),
        Some("M_UNABLE_TO_GRANT_JOIN") => FederationError::UnableToGrantJoin(text),
        _ if answer.status == http::StatusCode::FORBIDDEN => FederationError::Forbidden(text),
        _ => FederationError::Unreachable(text),
    }
}

/// Checks a `make_*` answer is a `membership` event for `user`, stamps,
/// hashes and signs it; returns the room version, the event and its id.
fn sign_template(
    engine: &Engine,
    made: MadeTemplate,
    user: &UserId,
    membership: &str,
) -> Result<(RoomVersionId, CanonicalJsonObject, OwnedEventId), FederationError> {
    let room_version = RoomVersionId::try_from(made.room_version.as_deref().unwrap_or("1"))
        .map_err(|e| FederationError::BadRequest(e.to_string()))?;
    let rules = version::rules(&room_version)?;
    let event = &made.event;
    let field = |name: &str| event.get(name).and_then(JsonValue::as_str);
    let content_membership = event.get("content").and_then(|c| c.get("membership")).and_then(JsonValue::as_str);
    if field("type") != Some("m.room.member")
        || field("state_key") != Some(user.as_str())
        || field("sender") != Some(user.as_str())
        || content_membership != Some(membership)
    {
        return Err(FederationError::BadRequest(format!("the {membership} template is not a {membership} of {user}")));
    }
    let mut template: CanonicalJsonObject = serde_json::from_value(JsonValue::Object(made.event))
        .map_err(|e| FederationError::BadRequest(format!("{membership} template: {e}")))?;
    template.insert(
        "origin_server_ts".into(),
        ruma::CanonicalJsonValue::Integer(ruma::Int::try_from(crate::util::now_ms()).unwrap_or_default()),
    );
    template.remove("signatures");
    template.remove("hashes");
    if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
        // Room versions 1 and 2: the origin (we, the joining server) names the
        // event; the resident server's template carries its own name.
        let id = format!("${}:{}", crate::rooms::random_localpart()?, engine.config.server_name);
        template.insert("event_id".into(), ruma::CanonicalJsonValue::String(id));
    }
    if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 || template.contains_key("origin") {
        template.insert("origin".into(), ruma::CanonicalJsonValue::String(engine.config.server_name.clone()));
    }
    engine.keys.hash_and_sign_event(&mut template, &rules)?;
    let event_id = crate::rooms::pdu::event_id_of(&template, &rules)?;
    Ok((room_version, template, event_id))
}

/// Joins a local user to a room that lives on `servers` (make_join, sign, send_join).
pub async fn join_remote(
    engine: &Arc<Engine>,
    user: &UserId,
    room: &RoomId,
    servers: &[String],
) -> Result<(), FederationError> {
    let mut last_error = FederationError::Unreachable("no server to join through".into());
    // A room we hold and take part in (a restricted join none of ours could
    // authorise): the join is one more event. One we hold but left (no user
    // of ours joined): our copy is stale, so it is joined like a new room.
    let ours = engine.server_name.as_str();
    let known = engine.rooms.room_version(room).is_ok()
        && engine.rooms.joined_servers_now(room).is_ok_and(|s| s.iter().any(|s| s == ours));
    for server in servers {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            enc(room.as_str()),
            enc(user.as_str()),
            version_query()
        );
        let (room_version, template, event_id) = match signed_template(engine, server, &path, user, "join", None).await
        {
            Ok(t) => t,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let path = format!("/_matrix/federation/v2/send_join/{}/{}", enc(room.as_str()), enc(event_id.as_str()));
        let body = serde_json::to_value(&template).map_err(|e| FederationError::BadRequest(e.to_string()))?;
        let answer = match engine.remote(server).json(Method::PUT, &path, Some(&body)).await {
            Ok(r) if r.status.is_success() => r,
            Ok(r) => {
                last_error = refusal(server, "send_join", &r);
                continue;
            }
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let answer: SendJoinAnswer = match answer.parse(server) {
            Ok(a) => a,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        // The resident may have co-signed the join (restricted rooms); prefer its copy.
        // A copy that is another event altogether is ignored: ours is the join.
        let theirs = match answer.event.filter(JsonValue::is_object) {
            Some(json) => checked_pdu(engine, &json, &room_version).await.ok().filter(|p| p.event_id == event_id),
            None => None,
        };
        let join = match theirs {
            Some(p) => p,
            None => checked_pdu(engine, &body, &room_version).await?,
        };
        if known {
            // A room we hold already, joined through another server because
            // none of our users could authorise it (a restricted room): the
            // join is one more event of it.
            return match engine.rooms.append_pdu(join).await? {
                Appended::Accepted(_) => Ok(()),
                Appended::SoftFailed(_) | Appended::Rejected(_) => {
                    Err(FederationError::Forbidden(format!("the join to {room} {server} accepted is refused here")))
                }
            };
        }
        // A room new to us (or left by all of ours): its state and auth chain, checked together so the
        // work splits evenly over the cores (a room we hold has its own).
        let state_len = answer.state.len();
        let mut both = answer.state;
        both.extend(answer.auth_chain);
        let mut state = checked_pdus(engine, both, &room_version).await?;
        let chain = state.split_off(state_len);
        engine.rooms.join_remote(&room_version, state, chain, join).await?;
        return Ok(());
    }
    Err(match last_error {
        e @ (FederationError::Forbidden(_)
        | FederationError::UnableToAuthoriseJoin(_)
        | FederationError::UnableToGrantJoin(_)) => e,
        e => FederationError::Unreachable(format!("could not join {room}: {e}")),
    })
}

/// Knocks for a local user on a room that lives on `servers` (make_knock, sign, send_knock).
pub async fn knock_remote(
    engine: &Engine,
    user: &UserId,
    room: &RoomId,
    servers: &[String],
    reason: Option<String>,
) -> Result<(), FederationError> {
    let mut last_error = String::from("no server to knock through");
    for server in servers {
        let path = format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{}",
            enc(room.as_str()),
            enc(user.as_str()),
            version_query()
        );
        let (room_version, template, event_id) =
            match signed_template(engine, server, &path, user, "knock", reason.as_deref()).await {
                Ok(t) => t,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
        let path = format!("/_matrix/federation/v1/send_knock/{}/{}", enc(room.as_str()), enc(event_id.as_str()));
        let body = serde_json::to_value(&template).map_err(|e| FederationError::BadRequest(e.to_string()))?;
        match engine.remote(server).json(Method::PUT, &path, Some(&body)).await {
            Ok(r) if r.status.is_success() => {
                let knock = checked_pdu(engine, &body, &room_version).await?;
                let answer: SendKnockAnswer = r.parse(server)?;
                engine.rooms.record_remote_knock(user, knock, &answer.knock_room_state, &engine.stream).await?;
                return Ok(());
            }
            Ok(r) => last_error = format!("{server} refused send_knock: {}", r.error_text()),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(FederationError::Forbidden(format!("could not knock on {room}: {last_error}")))
}

/// Declines a local user's invite to a room that lives on `servers`
/// (make_leave, sign, send_leave), then records the leave locally. When no
/// server takes the leave the invite is still dropped here, so a dead remote
/// server cannot pin an invite on a user's screen.
pub async fn leave_remote(
    engine: &Engine,
    user: &UserId,
    room: &RoomId,
    servers: &[String],
) -> Result<(), FederationError> {
    let mut accepted = None;
    for server in servers {
        let path = format!("/_matrix/federation/v1/make_leave/{}/{}", enc(room.as_str()), enc(user.as_str()));
        let (room_version, template, event_id) = match signed_template(engine, server, &path, user, "leave", None).await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(%server, error = %e, "make_leave failed");
                continue;
            }
        };
        let path = format!("/_matrix/federation/v2/send_leave/{}/{}", enc(room.as_str()), enc(event_id.as_str()));
        let body = serde_json::to_value(&template).map_err(|e| FederationError::BadRequest(e.to_string()))?;
        match engine.remote(server).json(Method::PUT, &path, Some(&body)).await {
            Ok(r) if r.status.is_success() => {
                accepted = Some(checked_pdu(engine, &body, &room_version).await?);
                break;
            }
            Ok(r) => tracing::info!(%server, status = %r.status, "send_leave refused"),
            Err(e) => tracing::info!(%server, error = %e, "send_leave failed"),
        }
    }
    if accepted.is_none() {
        tracing::warn!(room_id = %room, user_id = %user, "no server took the leave; dropping the invite locally");
    }
    engine.rooms.record_remote_leave(user, room, accepted, &engine.stream).await?;
    Ok(())
}

/// The stripped state an invite carries (§"Inviting to a room": `invite_room_state`).
fn invite_room_state(engine: &Engine, room: &RoomId, inviter: &UserId) -> Result<Vec<JsonValue>, FederationError> {
    let mut stripped = Vec::new();
    for kind in [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.encryption",
    ] {
        if let Some(p) = engine.rooms.state_event(room, kind, "")? {
            stripped.push(crate::events::stripped_event(&p));
        }
    }
    if let Some(p) = engine.rooms.state_event(room, "m.room.member", inviter.as_str())? {
        stripped.push(crate::events::stripped_event(&p));
    }
    Ok(stripped)
}

/// Invites a user of another server: their server co-signs first; returns the invite's event id.
pub async fn invite_remote(
    engine: &Engine,
    inviter: &UserId,
    room: &RoomId,
    invitee: &UserId,
    content: JsonValue,
) -> Result<String, FederationError> {
    let event = NewEvent::state(TimelineEventType::RoomMember, invitee.as_str(), content);
    let pdu: Pdu = engine.rooms.build_event(inviter, room, event).await?;
    let version = engine.rooms.room_version(room)?;
    let body = json!({
        "event": serde_json::to_value(pdu.json.as_ref()).map_err(|e| FederationError::BadRequest(e.to_string()))?,
        "room_version": version,
        "invite_room_state": invite_room_state(engine, room, inviter)?,
    });
    let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(room.as_str()), enc(pdu.event_id.as_str()));
    let server = invitee.server_name().to_string();
    let answer = engine
        .remote(&server)
        .json(Method::PUT, &path, Some(&body))
        .await
        .map_err(|e| FederationError::Unreachable(format!("inviting {invitee}: {e}")))?;
    if !answer.status.is_success() {
        return Err(FederationError::Forbidden(format!("{server} refused the invite: {}", answer.error_text())));
    }
    let answer: InviteAnswer = answer.parse(&server)?;
    let signed = checked_pdu(engine, &answer.event, &version).await?;
    if signed.event_id != pdu.event_id {
        return Err(FederationError::BadResponse { server, reason: "the invitee's server changed the invite".into() });
    }
    match engine.rooms.append_pdu(signed).await? {
        Appended::Accepted(p) => Ok(p.event_id.to_string()),
        Appended::SoftFailed(_) | Appended::Rejected(_) => {
            Err(FederationError::Forbidden("the invite is not allowed".into()))
        }
    }
}
