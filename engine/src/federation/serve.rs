//! What this server answers other servers about its rooms.
//!
//! Server-Server API §"Joining Rooms", §"Knocking upon a room", §"Leaving
//! Rooms" (the `make_*`/`send_*` handshakes, resident side), §"Inviting to
//! a room" (co-signing an invite for one of our users), §"Retrieving
//! events" (`/event`, `/state`, `/state_ids`, `/event_auth`,
//! `get_missing_events`) and §"Backfilling". Every room-scoped read
//! requires the origin to pass the room's server ACL and to have a joined
//! member; events are served whole only when their history visibility lets
//! the origin see them, else redacted (the DAG stays walkable, the content
//! does not leak).
//!
//! Restricted rooms (versions 8+): `make_join` names one of our users who may
//! invite in `join_authorised_via_users_server`, or refuses as
//! [`crate::restricted_join`] says; `send_join` checks the allow conditions
//! again and co-signs a join naming one of our users.

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId,
    events::TimelineEventType, room_version_rules::RoomVersionRules,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use super::{FederationError, pdu_check::checked_pdu};
use crate::{
    Engine,
    rooms::{Appended, ArcPdu, NewEvent, Pdu, version},
    util::now_ms,
};

/// Whether the room's `m.room.server_acl` lets `server` take part.
pub fn acl_allows(engine: &Engine, room: &RoomId, server: &str) -> bool {
    match engine.rooms.state_event(room, "m.room.server_acl", "") {
        Ok(Some(acl)) => crate::acl::ServerAcl::from_content_lenient(&acl.content_value()).allows(server),
        _ => true,
    }
}

/// The room's server ACL check alone.
pub fn acl_check(engine: &Engine, room: &RoomId, origin: &str) -> Result<(), FederationError> {
    if acl_allows(engine, room, origin) {
        Ok(())
    } else {
        Err(FederationError::Forbidden(format!("{origin} is denied by the room's server ACL")))
    }
}

/// Room-scoped reads: the origin must pass the room's server ACL and have a joined member.
pub fn room_access(engine: &Engine, room: &RoomId, origin: &str) -> Result<(), FederationError> {
    acl_check(engine, room, origin)?;
    if !engine.rooms.joined_servers_now(room)?.iter().any(|s| s == origin) {
        return Err(FederationError::Forbidden("your server is not in this room".into()));
    }
    Ok(())
}

/// The answer to `make_join`, `make_leave` and `make_knock`: the event to sign.
#[derive(Debug, Serialize)]
pub struct MembershipTemplate {
    /// The unsigned membership event.
    pub event: CanonicalJsonObject,
    /// The room's version.
    pub room_version: RoomVersionId,
}

/// The answer to `send_join` (v2; v1 wraps it as `[200, answer]`).
#[derive(Debug, Serialize)]
pub struct JoinAccepted {
    /// Us.
    pub origin: OwnedServerName,
    /// The room state before the join.
    pub state: Vec<JsonValue>,
    /// The auth chain of that state and of the join.
    pub auth_chain: Vec<JsonValue>,
    /// The join as stored (co-signed for restricted rooms).
    pub event: JsonValue,
    /// Always false: partial state is not offered.
    pub members_omitted: bool,
    /// The servers joined now.
    pub servers_in_room: Vec<String>,
}

/// The answer to `send_knock`.
#[derive(Debug, Serialize)]
pub struct KnockAccepted {
    /// The stripped state the knocker may see.
    pub knock_room_state: Vec<JsonValue>,
}

/// The answer to `invite` (v2): the invite with our signature added.
#[derive(Debug, Serialize)]
pub struct InviteSigned {
    /// The signed event.
    pub event: JsonValue,
}

/// A transaction-shaped answer (`event`, `backfill`).
#[derive(Debug, Serialize)]
pub struct Pdus {
    /// Us.
    pub origin: OwnedServerName,
    /// When the answer was made.
    pub origin_server_ts: u64,
    /// The events.
    pub pdus: Vec<JsonValue>,
}

impl Pdus {
    fn now(engine: &Engine, pdus: Vec<JsonValue>) -> Self {
        Pdus { origin: engine.server_name.clone(), origin_server_ts: now_ms(), pdus }
    }
}

/// The answer to `get_missing_events`.
#[derive(Debug, Serialize)]
pub struct MissingEvents {
    /// The missing events, oldest first.
    pub events: Vec<JsonValue>,
}

/// The answer to `state_ids`.
#[derive(Debug, Serialize)]
pub struct StateIds {
    /// The state before the event.
    pub pdu_ids: Vec<OwnedEventId>,
    /// Its auth chain.
    pub auth_chain_ids: Vec<OwnedEventId>,
}

/// The answer to `state`.
#[derive(Debug, Serialize)]
pub struct StateAt {
    /// The state before the event.
    pub pdus: Vec<JsonValue>,
    /// Its auth chain.
    pub auth_chain: Vec<JsonValue>,
}

/// The answer to `event_auth`.
#[derive(Debug, Serialize)]
pub struct AuthChain {
    /// The event's auth chain.
    pub auth_chain: Vec<JsonValue>,
}

/// An event as served to `origin`: whole when its history visibility lets the
/// server see it, otherwise redacted.
pub fn served_json(engine: &Engine, origin: &str, rules: &RoomVersionRules, p: &ArcPdu) -> JsonValue {
    let whole = || serde_json::to_value(p.json.as_ref()).unwrap_or(JsonValue::Null);
    match engine.rooms.visible_to_server(origin, p) {
        Ok(true) => whole(),
        _ => p.redacted_json(rules).ok().and_then(|r| serde_json::to_value(r).ok()).unwrap_or(JsonValue::Null),
    }
}

fn whole_json(p: &ArcPdu) -> JsonValue {
    serde_json::to_value(p.json.as_ref()).unwrap_or(JsonValue::Null)
}

fn refuse_if_shut(engine: &Engine, room: &RoomId) -> Result<(), FederationError> {
    if engine.rooms.is_shutdown(room)? {
        return Err(FederationError::Forbidden(format!("{room} has been shut down on this server")));
    }
    Ok(())
}

/// What `make_*` checks: the room's ACL admits the origin, which asks for one
/// of its own users, in a room held here. Returns the room version.
fn membership_request(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    user: &UserId,
) -> Result<RoomVersionId, FederationError> {
    acl_check(engine, room, origin)?;
    if user.server_name().as_str() != origin {
        return Err(FederationError::Forbidden("a server can only ask for its own users".into()));
    }
    engine.rooms.room_version(room).map_err(|_| FederationError::NotFound(format!("{room} is not known here")))
}

/// `make_join`, `make_knock`, `make_leave`: the unsigned membership template.
/// Joins and knocks need a room not shut down here, in a version the asking
/// server supports (`supported`; "1" when it names none).
pub async fn make_membership(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    user: &UserId,
    membership: &str,
    supported: &[String],
) -> Result<MembershipTemplate, FederationError> {
    let version = membership_request(engine, origin, room, user)?;
    if membership != "leave" {
        refuse_if_shut(engine, room)?;
        let names_it = if supported.is_empty() {
            version.as_str() == "1"
        } else {
            supported.iter().any(|v| v == version.as_str())
        };
        if !names_it {
            return Err(FederationError::IncompatibleVersion(version.to_string()));
        }
    }
    let mut content = json!({ "membership": membership });
    // A restricted room: name the user of ours the join is authorised through
    // (refused here when the user may not join, or we cannot tell).
    if membership == "join"
        && let Some(via) = crate::restricted_join::authorising_user(engine, room, user)?
    {
        content["join_authorised_via_users_server"] = json!(via);
    }
    let event = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content);
    let template = engine.rooms.template(user, room, event).await?;
    Ok(MembershipTemplate { event: template, room_version: version })
}

/// What `send_join`, `send_knock` and `send_leave` check alike: the room's
/// ACL admits the origin (and, for joins and knocks, the room is not shut
/// down here), which sends a correctly signed `membership` event of one of
/// its own users, matching the path.
async fn signed_membership(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    event_id: &str,
    body: &JsonValue,
    membership: &str,
) -> Result<Pdu, FederationError> {
    acl_check(engine, room, origin)?;
    if membership != "leave" {
        refuse_if_shut(engine, room)?;
    }
    let version =
        engine.rooms.room_version(room).map_err(|_| FederationError::NotFound(format!("{room} is not known here")))?;
    if !body.is_object() {
        return Err(FederationError::BadRequest("the body must be the signed event".into()));
    }
    let cosigned = if membership == "join" { co_signed_join(engine, room, body, &version)? } else { None };
    let body = cosigned.as_ref().unwrap_or(body);
    let pdu = checked_pdu(engine, body, &version).await?;
    if pdu.event_id.as_str() != event_id || pdu.room_id != room {
        return Err(FederationError::BadRequest("event id or room does not match the path".into()));
    }
    if pdu.kind != TimelineEventType::RoomMember
        || pdu.content_value().get("membership").and_then(JsonValue::as_str) != Some(membership)
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || pdu.sender.server_name().as_str() != origin
    {
        return Err(FederationError::BadRequest(format!("not a {membership} of one of the origin's users")));
    }
    Ok(pdu)
}

/// A join naming one of our users in `join_authorised_via_users_server`,
/// with our signature added (the auth rules of versions 8+ require it), once
/// the joining user is checked to meet the room's allow conditions here: the
/// joining server may have skipped `make_join`, so its word is not taken.
/// `None` when the join names no user of ours.
fn co_signed_join(
    engine: &Engine,
    room: &RoomId,
    body: &JsonValue,
    version: &RoomVersionId,
) -> Result<Option<JsonValue>, FederationError> {
    let via = body.get("content").and_then(|c| c.get("join_authorised_via_users_server")).and_then(JsonValue::as_str);
    let Some(via) = via.and_then(|v| UserId::parse(v).ok()) else { return Ok(None) };
    if via.server_name() != engine.server_name {
        return Ok(None);
    }
    let joining = body
        .get("sender")
        .and_then(JsonValue::as_str)
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| FederationError::BadRequest("the join has no valid sender".into()))?;
    // Refused (403, 400) when the user may not join through us; a user who
    // needs no authoriser (invited) is signed for all the same: the auth rules
    // then judge the event as it is.
    crate::restricted_join::authorising_user(engine, room, &joining)?;
    let rules = crate::rooms::version::rules(version)?;
    let mut object: CanonicalJsonObject =
        serde_json::from_value(body.clone()).map_err(|e| FederationError::BadRequest(format!("not a PDU: {e}")))?;
    engine.keys.sign_event(&mut object, &rules)?;
    Ok(Some(serde_json::to_value(object).map_err(|e| FederationError::BadRequest(e.to_string()))?))
}

fn accepted(outcome: Appended, what: &str) -> Result<(), FederationError> {
    match outcome {
        Appended::Accepted(_) => Ok(()),
        Appended::SoftFailed(_) => {
            Err(FederationError::Forbidden(format!("the {what} is not allowed by the current state")))
        }
        Appended::Rejected(reason) => Err(FederationError::Forbidden(format!("{what} rejected: {reason}"))),
    }
}

/// `send_join`: accepts a signed join; returns the room state and auth chain before it.
pub async fn accept_join(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    event_id: &str,
    body: &JsonValue,
) -> Result<JoinAccepted, FederationError> {
    let pdu = signed_membership(engine, origin, room, event_id, body, "join").await?;
    let join_id = pdu.event_id.clone();
    // The state the join is applied to: the room's current state now.
    let state_before_snapshot = engine.rooms.current_snapshot(room)?;
    accepted(engine.rooms.append_pdu(pdu).await?, "join")?;
    let state = engine.rooms.state_at(state_before_snapshot)?;
    let ids: Vec<OwnedEventId> = state.iter().map(|p| p.event_id.clone()).chain([join_id.clone()]).collect();
    let chain = engine.rooms.auth_chain_events(&ids)?;
    let joined = engine.rooms.pdu(&join_id)?.ok_or_else(|| FederationError::NotFound("the join vanished".into()))?;
    Ok(JoinAccepted {
        origin: engine.server_name.clone(),
        state: state.iter().map(whole_json).collect(),
        auth_chain: chain.iter().map(whole_json).collect(),
        event: whole_json(&joined),
        members_omitted: false,
        servers_in_room: engine.rooms.joined_servers_now(room)?,
    })
}

/// `send_knock`: accepts a signed knock; returns the stripped state the knocker sees.
pub async fn accept_knock(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    event_id: &str,
    body: &JsonValue,
) -> Result<KnockAccepted, FederationError> {
    let pdu = signed_membership(engine, origin, room, event_id, body, "knock").await?;
    let knocker = pdu.sender.clone();
    accepted(engine.rooms.append_pdu(pdu).await?, "knock")?;
    let state = engine.stripped_state(room, &knocker)?;
    Ok(KnockAccepted { knock_room_state: state })
}

/// `send_leave`: accepts a signed leave.
pub async fn accept_leave(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    event_id: &str,
    body: &JsonValue,
) -> Result<(), FederationError> {
    let pdu = signed_membership(engine, origin, room, event_id, body, "leave").await?;
    accepted(engine.rooms.append_pdu(pdu).await?, "leave")
}

/// The body of `PUT v2/invite/{roomId}/{eventId}`.
#[derive(Debug, Deserialize)]
pub struct InviteRequest {
    /// The room's version.
    pub room_version: String,
    /// The invite event, signed by the inviting server.
    pub event: serde_json::Map<String, JsonValue>,
    /// Stripped state shown with the invite.
    #[serde(default)]
    pub invite_room_state: Vec<JsonValue>,
}

/// §"Inviting to a room": checks an invite of one of our users from the
/// origin, co-signs it and keeps it with its stripped state, so the user's
/// `/sync` shows the invite; returns the co-signed event.
pub async fn receive_invite(
    engine: &Engine,
    origin: &str,
    event_id: &str,
    body: InviteRequest,
) -> Result<InviteSigned, FederationError> {
    let room_version =
        RoomVersionId::try_from(body.room_version.as_str()).map_err(|e| FederationError::BadRequest(e.to_string()))?;
    if !version::READABLE.contains(&room_version) {
        return Err(FederationError::IncompatibleVersion(room_version.to_string()));
    }
    let pdu = checked_pdu(engine, &JsonValue::Object(body.event), &room_version).await?;
    let target = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
    let Some(target) = target.filter(|_| pdu.kind == TimelineEventType::RoomMember) else {
        return Err(FederationError::BadRequest("not a membership event".into()));
    };
    if pdu.content_value().get("membership").and_then(JsonValue::as_str) != Some("invite")
        || target.server_name() != engine.server_name
        || pdu.sender.server_name().as_str() != origin
        || pdu.event_id.as_str() != event_id
    {
        return Err(FederationError::BadRequest("not an invite from the origin for one of our users".into()));
    }
    refuse_if_shut(engine, &pdu.room_id)?;
    acl_check(engine, &pdu.room_id, origin)?;
    let known = engine.users.exists(&target)?
        || (engine.query_appservice_user(target.as_str()).await && engine.users.exists(&target)?);
    if !known {
        return Err(FederationError::NotFound(format!("{target} does not exist")));
    }
    let rules = version::rules(&room_version)?;
    let mut object = (*pdu.json).clone();
    engine.keys.sign_event(&mut object, &rules)?;
    let signed = Pdu::from_object(object, &rules)?;
    let answer = serde_json::to_value(signed.json.as_ref()).map_err(|e| FederationError::BadRequest(e.to_string()))?;
    if !engine.rooms.is_local_room(&signed.room_id) {
        engine.rooms.record_remote_invite(&target, signed, &body.invite_room_state, &engine.stream).await?;
    }
    Ok(InviteSigned { event: answer })
}

/// `GET /event/{eventId}`: one event, if the origin may see it.
pub fn event(engine: &Engine, origin: &str, id: &EventId) -> Result<Pdus, FederationError> {
    let pdu = engine.rooms.pdu(id)?.ok_or_else(|| FederationError::NotFound("event not found".into()))?;
    room_access(engine, &pdu.room_id, origin)?;
    if !engine.rooms.visible_to_server(origin, &pdu)? {
        return Err(FederationError::NotFound("event not found".into()));
    }
    Ok(Pdus::now(engine, vec![whole_json(&pdu)]))
}

/// The body of `POST get_missing_events/{roomId}`.
#[derive(Debug, Deserialize)]
pub struct MissingEventsRequest {
    /// Most events to return (10 by default, at most 100 here).
    pub limit: Option<u64>,
    /// Events the asking server has: the walk stops there.
    #[serde(default)]
    pub earliest_events: Vec<OwnedEventId>,
    /// Events whose missing ancestors are wanted.
    #[serde(default)]
    pub latest_events: Vec<OwnedEventId>,
}

/// `get_missing_events`: prev events between `latest` and `earliest`, as served to the origin.
pub fn missing_events(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    body: &MissingEventsRequest,
) -> Result<MissingEvents, FederationError> {
    room_access(engine, room, origin)?;
    let limit = body.limit.unwrap_or(10).clamp(1, 100) as usize;
    let events = engine.rooms.missing_events(&body.earliest_events, &body.latest_events, limit)?;
    let rules = version::rules(&engine.rooms.room_version(room)?)?;
    let out: Vec<JsonValue> =
        events.iter().filter(|p| p.room_id == room).map(|p| served_json(engine, origin, &rules, p)).collect();
    Ok(MissingEvents { events: out })
}

/// `backfill`: history before `from`, walking prev events back, newest first.
pub fn backfill(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    from: &[OwnedEventId],
    limit: usize,
) -> Result<Pdus, FederationError> {
    room_access(engine, room, origin)?;
    let events = engine.rooms.backfill_from(from, limit.clamp(1, 200))?;
    let rules = version::rules(&engine.rooms.room_version(room)?)?;
    let pdus: Vec<JsonValue> =
        events.iter().filter(|p| p.room_id == room).map(|p| served_json(engine, origin, &rules, p)).collect();
    Ok(Pdus::now(engine, pdus))
}

/// The state before `id` (in `room`) and its auth chain, for a server in the room.
fn state_before(
    engine: &Engine,
    origin: &str,
    room: &RoomId,
    id: &EventId,
) -> Result<(Vec<ArcPdu>, Vec<ArcPdu>), FederationError> {
    room_access(engine, room, origin)?;
    let event = engine.rooms.pdu(id)?.filter(|p| p.room_id == room);
    let meta = engine.rooms.meta(id)?;
    let (Some(_), Some(meta)) = (event, meta) else {
        return Err(FederationError::NotFound(format!("{id} is not known in {room}")));
    };
    if meta.state_before == 0 {
        return Err(FederationError::NotFound(format!("the state at {id} is not known here")));
    }
    let state = engine.rooms.state_at(meta.state_before)?;
    let ids: Vec<OwnedEventId> = state.iter().map(|p| p.event_id.clone()).collect();
    let chain = engine.rooms.auth_chain_events(&ids)?;
    Ok((state, chain))
}

/// `state_ids`: the ids of the room state before the event and of its auth chain.
pub fn state_ids(engine: &Engine, origin: &str, room: &RoomId, id: &EventId) -> Result<StateIds, FederationError> {
    let (state, chain) = state_before(engine, origin, room, id)?;
    let ids = |v: &[ArcPdu]| v.iter().map(|p| p.event_id.clone()).collect::<Vec<_>>();
    Ok(StateIds { pdu_ids: ids(&state), auth_chain_ids: ids(&chain) })
}

/// `state`: the room state before the event and its auth chain, whole.
pub fn state(engine: &Engine, origin: &str, room: &RoomId, id: &EventId) -> Result<StateAt, FederationError> {
    let (state, chain) = state_before(engine, origin, room, id)?;
    let full = |v: &[ArcPdu]| v.iter().map(whole_json).collect::<Vec<_>>();
    Ok(StateAt { pdus: full(&state), auth_chain: full(&chain) })
}

/// `event_auth`: the event's full auth chain.
pub fn event_auth(engine: &Engine, origin: &str, room: &RoomId, id: &EventId) -> Result<AuthChain, FederationError> {
    room_access(engine, room, origin)?;
    if engine.rooms.pdu(id)?.is_none_or(|p| p.room_id != room) {
        return Err(FederationError::NotFound(format!("{id} is not known in {room}")));
    }
    let chain = engine.rooms.auth_chain_events(&[id.to_owned()])?;
    Ok(AuthChain { auth_chain: chain.iter().map(whole_json).collect() })
}
