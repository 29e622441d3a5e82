//! Admin actions inside rooms (Synapse admin API), and logging in as a user.
//!
//! - §"Room State API": `GET /_synapse/admin/v1/rooms/<room_id>/state`
//!   ("allows the server admin to get the state of a room"): `{"state": [...]}`.
//! - §"Edit Room Membership API": `POST /_synapse/admin/v1/join/<room_id_or_alias>`
//!   with `{"user_id"}` ("join a user account with a given user_id to a room
//!   … You can only modify the membership of local users. The server
//!   administrator must be in the room and have permission to invite users"
//!   when the room is not public: the admin invites, then the user joins).
//! - §"Make Room Admin API": `POST /_synapse/admin/v1/rooms/<room_id_or_alias>/make_room_admin`
//!   ("Grants another user the highest power available to a local user who is
//!   in the room. If the user is not in the room, and it is not publicly
//!   joinable, then invite the user"; the user defaults to the caller).
//! - §"Login as a user": `POST /_synapse/admin/v1/users/<user_id>/login`
//!   (`{"access_token"}`). Unlike Synapse, the token belongs to a new device
//!   (named "admin login") that the user sees in `/devices`; `valid_until_ms`
//!   is refused, since Myelin's tokens do not expire.

use myelin_engine::{rooms::NewEvent, util::now_ms};
use ruma::{OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{audit, bad_request, path_user, require_admin};
use crate::{
    auth::Authed,
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    response::RoomIdAnswer,
    router::{Ctx, HandlerFuture, Req},
    routes::client::rooms::membership::{join_as, room_or_alias, set_membership},
};

/// The room path parameter, held here (404 "Room not found" otherwise).
async fn held_room(cx: &Ctx, req: &Req) -> Result<ruma::OwnedRoomId, ApiError> {
    let raw = req.param("room_id")?;
    if !raw.starts_with('!') && !raw.starts_with('#') {
        return Err(ApiError::invalid_param(format!("{raw} was not legal room ID or room alias")));
    }
    let (room, _) = room_or_alias(cx, raw).await?;
    if cx.engine.rooms.room_version(&room).is_err() || cx.engine.rooms.current_state(&room)?.is_empty() {
        return Err(ApiError::not_found("Room not found"));
    }
    Ok(room)
}

/// The answer of `GET v1/rooms/{room_id}/state`: the room's current state events.
#[derive(Serialize)]
struct RoomState {
    state: Vec<Value>,
}

/// GET /_synapse/admin/v1/rooms/{roomId}/state
pub fn state(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let room = held_room(&cx, &req).await?;
        let now = now_ms();
        let state: Vec<Value> = cx
            .engine
            .rooms
            .current_state(&room)?
            .iter()
            .map(|p| myelin_engine::events::client_event(p, true, now))
            .collect();
        Ok(ok_json(&RoomState { state }))
    })
}

/// A local, existing user named by an admin request.
fn local_user(cx: &Ctx, user: &UserId, not_local: &str) -> Result<(), ApiError> {
    if user.server_name() != cx.engine.server_name {
        return Err(bad_request(not_local));
    }
    match cx.engine.users.account(user)? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("User not found")),
    }
}

/// Acting as `user` (no device: nothing it does needs one).
fn acting_as(cx: &Ctx, user: &UserId) -> Result<Authed, ApiError> {
    Ok(Authed {
        user_id: user.to_owned(),
        device_id: String::new(),
        token: String::new(),
        appservice: None,
        is_guest: cx.engine.users.is_guest(user.as_str())?,
    })
}

fn membership(cx: &Ctx, user: &UserId, room: &RoomId) -> Result<Option<String>, ApiError> {
    Ok(cx.engine.rooms.membership(user.as_str(), room)?.map(|m| m.membership))
}

fn join_rule(cx: &Ctx, room: &RoomId) -> Result<Option<String>, ApiError> {
    Ok(cx
        .engine
        .rooms
        .state_event(room, "m.room.join_rules", "")?
        .and_then(|p| p.content_value()["join_rule"].as_str().map(str::to_owned)))
}

/// The body of `v1/join` (and of `make_room_admin`, where it is optional).
#[derive(Deserialize, Default)]
pub(crate) struct UserBody {
    user_id: Option<OwnedUserId>,
}

/// POST /_synapse/admin/v1/join/{roomIdOrAlias}
pub fn join(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let body: UserBody = parse_json(&req.body)?;
        let user = body.user_id.ok_or_else(|| ApiError::missing_param("Missing params: ['user_id']"))?;
        local_user(&cx, &user, "This endpoint can only be used with local users")?;
        let target = req.param("room_id")?.to_owned();
        if !target.starts_with('!') && !target.starts_with('#') {
            return Err(ApiError::invalid_param(format!("{target} was not legal room ID or room alias")));
        }
        let (room, _) = room_or_alias(&cx, &target).await?;
        let held = cx.engine.rooms.room_version(&room).is_ok();
        if held
            && membership(&cx, &user, &room)?.as_deref() != Some("join")
            && join_rule(&cx, &room)?.is_some_and(|r| r != "public")
        {
            // The admin invites; the admin's own power in the room decides.
            set_membership(&cx, &me, &room, &user, "invite", None, None).await?;
        }
        let joined = join_as(&cx, &acting_as(&cx, &user)?, room.as_str(), None, Vec::new()).await?;
        audit(&me, "join_user", &format!("{user} {joined}"));
        Ok(ok_json(&RoomIdAnswer { room_id: joined.as_str() }))
    })
}

/// The highest level a local member of `room` holds and which of them holds it.
fn local_admin(cx: &Ctx, room: &RoomId) -> Result<Option<(OwnedUserId, i64)>, ApiError> {
    let ours = cx.engine.server_name.as_str();
    let mut best: Option<(OwnedUserId, i64)> = None;
    for pdu in cx.engine.rooms.current_state(room)? {
        if pdu.kind != TimelineEventType::RoomMember || pdu.content_value()["membership"] != "join" {
            continue;
        }
        let Some(user) = pdu.state_key.as_deref().and_then(|u| UserId::parse(u).ok()) else { continue };
        if user.server_name().as_str() != ours {
            continue;
        }
        let power = myelin_engine::power::user_power(&cx.engine.rooms, room, user.as_str())?;
        if best.as_ref().is_none_or(|(u, p)| power > *p || (power == *p && user < *u)) {
            best = Some((user, power));
        }
    }
    Ok(best)
}

/// POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin
pub fn make_room_admin(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let body: UserBody = parse_json_or_empty(&req.body)?;
        let user = body.user_id.unwrap_or_else(|| me.user_id.clone());
        local_user(&cx, &user, "Only local users can be admins of this room")?;
        let room = held_room(&cx, &req).await?;
        let _one_at_a_time = cx.deletions.make_room_admin.lock().await;
        let needed = myelin_engine::power::state_level(&cx.engine.rooms, &room, "m.room.power_levels")?;
        let (admin, power) = local_admin(&cx, &room)?
            .filter(|(_, p)| *p >= needed)
            .ok_or_else(|| bad_request("No local admin user in room"))?;
        let mut content = myelin_engine::power::power_levels(&cx.engine.rooms, &room)?
            .unwrap_or_else(|| json!({ "users": { admin.as_str(): 100 } }));
        // A creator of a room version that privileges creators has unlimited
        // power, which no power level can name: the user gets the highest
        // level listed (at least 100) instead.
        let level = if power == i64::MAX {
            content["users"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| myelin_engine::util::power_level(v))
                .max()
                .unwrap_or(100)
                .max(100)
        } else {
            power
        };
        let current = myelin_engine::power::user_power(&cx.engine.rooms, &room, user.as_str())?;
        if current < level {
            if !content["users"].is_object() {
                content["users"] = json!({});
            }
            content["users"][user.as_str()] = json!(level);
            let event = NewEvent::state(TimelineEventType::RoomPowerLevels, "", content);
            cx.engine.rooms.send(&admin, &room, event).await?;
        }
        if membership(&cx, &user, &room)?.as_deref() != Some("join")
            && join_rule(&cx, &room)?.is_none_or(|r| r != "public")
        {
            set_membership(&cx, &acting_as(&cx, &admin)?, &room, &user, "invite", None, None).await?;
        }
        audit(&me, "make_room_admin", &format!("{user} {room}"));
        Ok(ok_empty())
    })
}

/// The body of `v1/users/{userId}/login`.
#[derive(Deserialize, Default)]
pub(crate) struct LoginAsBody {
    valid_until_ms: Option<u64>,
}

/// The answer of `POST v1/users/{user_id}/login`: the new access token.
#[derive(Serialize)]
struct LoggedInAs<'a> {
    access_token: &'a str,
}

/// POST /_synapse/admin/v1/users/{userId}/login
pub fn login_as(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        let body: LoginAsBody = parse_json_or_empty(&req.body)?;
        if body.valid_until_ms.is_some() {
            return Err(bad_request("valid_until_ms is not supported: access tokens here do not expire"));
        }
        local_user(&cx, &user, "Only local users can be logged in as")?;
        if user == me.user_id {
            return Err(bad_request("Cannot use admin API to login as self"));
        }
        let login = cx.engine.users.login_trusted(&user, None, Some("admin login".into())).await?;
        audit(&me, "login_as", user.as_str());
        Ok(ok_json(&LoggedInAs { access_token: &login.access_token }))
    })
}
