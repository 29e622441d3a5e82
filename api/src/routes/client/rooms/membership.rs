//! Room membership (Client-Server API §"Room membership"): join, knock, invite, kick,
//! ban, unban, leave, forget, joined rooms; across servers through `myelin_engine::federation::membership`.

#[allow(unused_imports)]
use super::*;

pub(crate) async fn set_membership(
    cx: &Ctx,
    me: &Authed,
    room: &RoomId,
    target: &UserId,
    membership: &str,
    reason: Option<String>,
    via: Option<ruma::OwnedUserId>,
) -> Result<String, ApiError> {
    if matches!(membership, "join" | "invite" | "knock") && cx.engine.rooms.is_shutdown(room)? {
        return Err(ApiError::forbidden(format!("{room} has been shut down on this server")));
    }
    let mut content = json!({ "membership": membership });
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    if let Some(via) = via {
        content["join_authorised_via_users_server"] = json!(via);
    }
    // Joins and invites carry the target's profile, so members see names and avatars.
    if matches!(membership, "join" | "invite")
        && let Some(profile) = cx.engine.users.profile(target.as_str())?
    {
        if let Some(name) = profile.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(avatar) = profile.avatar_url {
            content["avatar_url"] = json!(avatar);
        }
    }
    if membership == "invite" && target.server_name() != cx.engine.server_name {
        return myelin_engine::federation::membership::invite_remote(&cx.engine, &me.user_id, room, target, content)
            .await
            .map_err(Into::into);
    }
    let event = NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content);
    let pdu = cx.engine.rooms.send(&me.user_id, room, event).await?;
    Ok(pdu.event_id.to_string())
}

/// A room id, or an alias resolved (here or on its server) to a room id and the
/// servers that can be asked about it.
pub(crate) async fn room_or_alias(cx: &Ctx, target: &str) -> Result<(ruma::OwnedRoomId, Vec<String>), ApiError> {
    if target.starts_with('#') {
        super::super::directory::resolve_alias(cx, target).await
    } else {
        Ok((RoomId::parse(target).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))?, Vec::new()))
    }
}

/// POST /_matrix/client/v3/rooms/{roomId}/join and /join/{roomIdOrAlias}
pub fn join(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        // The body is optional; when present it must be an object with a string `reason`.
        let body: ReasonBody = crate::http_util::parse_json_or_empty(&req.body)?;
        let room = join_as(&cx, &me, req.param("room_id")?, body.reason, named_servers(&req)).await?;
        Ok(ok_json(&crate::response::RoomIdAnswer { room_id: room.as_str() }))
    })
}

/// Joins `me` to the room `target` (an id or alias) names, through this
/// server when it is in the room, else through `named` servers (the request's
/// `via`/`server_name`) and the others it can think of. Shared by the client
/// API and the admin API's `v1/join`.
pub(crate) async fn join_as(
    cx: &Ctx,
    me: &Authed,
    target: &str,
    reason: Option<String>,
    named: Vec<String>,
) -> Result<ruma::OwnedRoomId, ApiError> {
    let (room, alias_servers) = room_or_alias(cx, target).await?;
    if cx.engine.rooms.is_shutdown(&room)? {
        return Err(ApiError::forbidden(format!("{room} has been shut down on this server")));
    }
    let known = cx.engine.rooms.short_room(&room)?.is_some() && cx.engine.rooms.room_version(&room).is_ok();
    // §"Guest Access": "Servers MUST only allow guest users to join rooms if the
    // m.room.guest_access state event is present on the room and has the
    // guest_access value can_join."
    // M_FORBIDDEN, as Synapse answers ("Guest access not allowed"); the spec names no code.
    let guest_refused = || ApiError::forbidden("this room does not let guests join");
    if me.is_guest && known && !myelin_engine::guests::guests_can_join(&cx.engine, &room)? {
        return Err(guest_refused());
    }
    // A room we hold but no user of ours is joined to any more: our copy
    // stopped growing when the last one left (nobody sends us its events),
    // so a join appended here would build on stale state and reach the
    // others only after they moved on. It goes through a resident server,
    // as a first join does (Server-Server API §"Joining Rooms"; Synapse
    // asks `is_host_in_room` the same way).
    let ours = cx.engine.server_name.as_str();
    let resident = known && cx.engine.rooms.joined_servers_now(&room)?.iter().any(|s| s == ours);
    if !resident {
        let mut servers = servers_to_ask(cx, named, &me.user_id, &room, alias_servers)?;
        if known {
            for s in cx.engine.rooms.joined_servers_now(&room)? {
                if s != ours && !servers.contains(&s) {
                    servers.push(s);
                }
            }
        }
        myelin_engine::federation::membership::join_remote(&cx.engine, &me.user_id, &room, &servers).await?;
        // A room held elsewhere shows its guest access only once joined: a
        // guest who may not be there leaves again at once.
        if me.is_guest && cx.engine.enforce_guest_access(&room).await? > 0 {
            return Err(guest_refused());
        }
        return Ok(room);
    }

    // A restricted room: the join names a user of ours who may invite.
    // When none of ours can vouch for it (we take part in none of the
    // allowed rooms, or none of ours may invite) it goes through the
    // other servers in the room, as a join from outside would.
    use myelin_engine::{federation::FederationError, restricted_join::RestrictedJoinError as R};
    match myelin_engine::restricted_join::authorising_user(&cx.engine, &room, &me.user_id) {
        Ok(via) => {
            set_membership(cx, me, &room, &me.user_id.clone(), "join", reason, via).await?;
        }
        Err(e @ (R::CannotVerify(_) | R::CannotGrant(_))) => {
            let others: Vec<String> =
                cx.engine.rooms.joined_servers_now(&room)?.into_iter().filter(|s| s != ours).collect();
            if others.is_empty() {
                return Err(FederationError::from(e).into());
            }
            myelin_engine::federation::membership::join_remote(&cx.engine, &me.user_id, &room, &others).await?;
        }
        Err(e) => return Err(FederationError::from(e).into()),
    }
    Ok(room)
}

/// The servers a request names to join through (`server_name`, `via`).
fn named_servers(req: &Req) -> Vec<String> {
    req.parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.strip_prefix("server_name=").or_else(|| p.strip_prefix("via=")))
        .filter_map(crate::http_util::percent_decode)
        .collect()
}

/// The servers to ask about a room this server does not hold: those the client
/// named (`via`, `server_name`), the alias's, the room id's, and the inviter's.
fn servers_to_ask(
    cx: &Ctx,
    named: Vec<String>,
    me: &UserId,
    room: &RoomId,
    alias_servers: Vec<String>,
) -> Result<Vec<String>, ApiError> {
    let mut servers = named;
    servers.extend(alias_servers);
    if let Some((_, server)) = room.as_str().split_once(':') {
        servers.push(server.to_owned());
    }
    // Invited over federation: the inviter's server is in the room.
    if let Some(state) = cx.engine.rooms.invite_state(me, room)?
        && let Some(inviter) = state
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == me.as_str())
            .and_then(|e| e["sender"].as_str())
            .and_then(|s| UserId::parse(s).ok())
    {
        servers.insert(0, inviter.server_name().to_string());
    }
    servers.retain(|s| s != cx.engine.server_name.as_str());
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    if servers.is_empty() {
        return Err(ApiError::not_found(format!("room {room} is not known here; name a server to ask")));
    }
    Ok(servers)
}

/// POST /_matrix/client/v3/knock/{roomIdOrAlias}
///
/// Client-Server API §"Knocking on rooms": "knocking is a way of requesting
/// an invite to a room". A room held here gets the `knock` member event
/// directly; another server's room through `make_knock`/`send_knock`.
pub fn knock(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let (room, alias_servers) = room_or_alias(&cx, req.param("room_id")?).await?;
        let body: ReasonBody = crate::http_util::parse_json_or_empty(&req.body)?;
        if cx.engine.rooms.is_local_room(&room) {
            set_membership(&cx, &me, &room, &me.user_id.clone(), "knock", body.reason, None).await?;
        } else {
            let servers = servers_to_ask(&cx, named_servers(&req), &me.user_id, &room, alias_servers)?;
            myelin_engine::federation::membership::knock_remote(&cx.engine, &me.user_id, &room, &servers, body.reason)
                .await?;
        }
        Ok(ok_json(&crate::response::RoomIdAnswer { room_id: room.as_str() }))
    })
}

#[derive(Deserialize)]
pub(crate) struct TargetBody {
    user_id: OwnedUserId,
    reason: Option<String>,
}

fn target_action(membership: &'static str) -> impl Fn(Ctx, Req) -> HandlerFuture {
    move |cx, req| {
        Box::pin(async move {
            let me = require_user(&cx, &req)?;
            if me.rate_limited() {
                cx.limiter.check(&me.user_id)?;
            }
            let room = room_param(&req)?;
            let body: TargetBody = parse_json(&req.body)?;
            if membership == "unban" {
                if membership_of(&cx, &body.user_id, &room)?.as_deref() != Some("ban")
                    && body.user_id.server_name() == cx.engine.server_name
                {
                    return Err(ApiError::forbidden(format!("{} is not banned", body.user_id)));
                }
                set_membership(&cx, &me, &room, &body.user_id, "leave", body.reason, None).await?;
            } else {
                if membership == "invite"
                    && body.user_id.server_name() == cx.engine.server_name
                    && !cx.engine.users.exists(&body.user_id)?
                {
                    // An appservice may bring an unknown user of its namespace into being.
                    cx.engine.query_appservice_user(body.user_id.as_str()).await;
                }
                set_membership(&cx, &me, &room, &body.user_id, membership, body.reason, None).await?;
            }
            Ok(crate::response::ok_empty())
        })
    }
}

/// POST /rooms/{roomId}/invite
pub fn invite(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("invite")(cx, req)
}
/// POST /rooms/{roomId}/kick
pub fn kick(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("leave")(cx, req)
}
/// POST /rooms/{roomId}/ban
pub fn ban(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("ban")(cx, req)
}
/// POST /rooms/{roomId}/unban
pub fn unban(cx: Ctx, req: Req) -> HandlerFuture {
    target_action("unban")(cx, req)
}

#[derive(Deserialize, Default)]
pub(crate) struct ReasonBody {
    reason: Option<String>,
}

/// POST /rooms/{roomId}/leave
pub fn leave(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let room = room_param(&req)?;
        let body: ReasonBody = crate::http_util::parse_json_or_empty(&req.body)?;
        if membership_of(&cx, &me.user_id, &room)?.is_none() {
            return Err(ApiError::not_found(format!("you have no membership in {room}")));
        }
        if !cx.engine.rooms.is_local_room(&room)
            && let Some(state) = cx.engine.rooms.invite_state(&me.user_id, &room)?
        {
            // Declining an invite to a room this server does not hold: ask the
            // inviter's server, then the room id's server, to take the leave.
            let mut servers: Vec<String> = state
                .iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == me.user_id.as_str())
                .and_then(|e| e["sender"].as_str())
                .and_then(|s| UserId::parse(s).ok())
                .map(|u| vec![u.server_name().to_string()])
                .unwrap_or_default();
            if let Some((_, server)) = room.as_str().split_once(':') {
                servers.push(server.to_owned());
            }
            // Room ids carry no server from version 12 on: the servers of the state's senders
            // (the creator's, for a knock) are in the room too.
            for e in &state {
                if let Some(u) = e["sender"].as_str().and_then(|s| UserId::parse(s).ok()) {
                    servers.push(u.server_name().to_string());
                }
            }
            servers.retain(|s| s != cx.engine.server_name.as_str());
            let mut seen = std::collections::HashSet::new();
            servers.retain(|s| seen.insert(s.clone()));
            myelin_engine::federation::membership::leave_remote(&cx.engine, &me.user_id, &room, &servers).await?;
            return Ok(crate::response::ok_empty());
        }
        set_membership(&cx, &me, &room, &me.user_id.clone(), "leave", body.reason, None).await?;
        Ok(crate::response::ok_empty())
    })
}

/// POST /rooms/{roomId}/forget: nothing is kept per user beyond the membership, so this only checks it.
pub fn forget(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        if membership_of(&cx, &me.user_id, &room)?.as_deref() == Some("join") {
            return Err(ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "leave the room before forgetting it",
            ));
        }
        Ok(crate::response::ok_empty())
    })
}

/// GET /joined_rooms
pub fn joined_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let rooms: Vec<String> = cx
            .engine
            .rooms
            .rooms_of(me.user_id.as_str())?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| r.to_string())
            .collect();
        Ok(ok_json(&JoinedRoomsAnswer { joined_rooms: rooms }))
    })
}

/// `/joined_rooms`.
#[derive(serde::Serialize)]
struct JoinedRoomsAnswer<A> {
    joined_rooms: A,
}
