//! Room aliases: `/directory/room/{roomAlias}` and `/rooms/{roomId}/aliases`
//! (Client-Server API §"Room aliases").

use http::StatusCode;
use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId};
use serde::{Deserialize, Serialize};

use crate::{
    auth::require_user,
    error::ApiError,
    http_util::{from_json_value, ok_empty, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Another server's answer to `query/directory` (Server-Server API §"Query Types").
#[derive(Deserialize)]
struct RemoteAlias {
    room_id: OwnedRoomId,
    #[serde(default)]
    servers: Vec<String>,
}

/// The alias path parameter, which must belong to this server.
pub(super) fn local_alias(cx: &Ctx, raw: &str) -> Result<OwnedRoomAliasId, ApiError> {
    let alias = RoomAliasId::parse(raw).map_err(|e| ApiError::invalid_param(format!("room alias: {e}")))?;
    if alias.server_name() != cx.engine.server_name {
        return Err(ApiError::not_found(format!("{alias} belongs to another server (resolving it needs federation)")));
    }
    Ok(alias)
}

/// Resolves any alias to its room and the servers that can join it: local
/// aliases from the directory, others by asking the alias's server
/// (Server-Server API §"Query Types", `query/directory`).
pub(super) async fn resolve_alias(cx: &Ctx, raw: &str) -> Result<(OwnedRoomId, Vec<String>), ApiError> {
    let alias = RoomAliasId::parse(raw).map_err(|e| ApiError::invalid_param(format!("room alias: {e}")))?;
    if alias.server_name() == cx.engine.server_name {
        let entry = cx
            .engine
            .resolve_local_alias(alias.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{alias} is not an alias")))?;
        let room = RoomId::parse(&entry.room_id).map_err(|e| ApiError::unknown(e.to_string()))?;
        return Ok((room, vec![cx.engine.server_name.to_string()]));
    }
    let server = alias.server_name().as_str();
    let path =
        format!("/_matrix/federation/v1/query/directory?room_alias={}", myelin_engine::federation::enc(alias.as_str()));
    let resp = cx
        .engine
        .remote(server)
        .get(&path)
        .await
        .map_err(|e| ApiError::not_found(format!("{alias} could not be resolved: {e}")))?;
    if !resp.status.is_success() {
        return Err(ApiError::not_found(format!("{server} does not know {alias}")));
    }
    let answer: RemoteAlias = from_json_value(resp.json).map_err(|e| {
        ApiError::not_found(format!("{server} answered for {alias} without a valid room_id and servers: {e}"))
    })?;
    let room = answer.room_id;
    let mut servers = answer.servers;
    servers.truncate(20);
    if !servers.iter().any(|s| s == server) {
        servers.push(server.to_owned());
    }
    Ok((room, servers))
}

/// The answer to `GET /directory/room/{roomAlias}`.
#[derive(Serialize)]
struct Resolved<'a> {
    room_id: &'a RoomId,
    servers: &'a [String],
}

/// GET /directory/room/{roomAlias}
pub fn resolve(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (room, servers) = resolve_alias(&cx, req.param("alias")?).await?;
        Ok(ok_json(&Resolved { room_id: &room, servers: &servers }))
    })
}

/// `PUT /directory/room/{roomAlias}`.
#[derive(Deserialize)]
pub(crate) struct CreateBody {
    room_id: String,
}

/// PUT /directory/room/{roomAlias}
pub fn create(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let alias = local_alias(&cx, req.param("alias")?).map_err(|e| ApiError::invalid_param(e.message))?;
        let body: CreateBody = parse_json(&req.body)?;
        let room = RoomId::parse(&body.room_id).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        if cx.engine.rooms.short_room(&room)?.is_none() {
            return Err(ApiError::not_found(format!("unknown room {room}")));
        }
        refuse_claimed_alias(&cx, &me, &alias)?;
        if !cx.engine.directory.create(alias.as_str(), room.as_str(), me.user_id.as_str()).await? {
            return Err(ApiError::new(StatusCode::CONFLICT, "M_UNKNOWN", format!("{alias} already exists")));
        }
        Ok(ok_empty())
    })
}

/// 400 `M_EXCLUSIVE` when the caller may not take `alias`: an appservice
/// claims it exclusively and the caller is not that appservice, or the caller
/// is an appservice and the alias is outside its namespaces.
pub(super) fn refuse_claimed_alias(cx: &Ctx, me: &crate::auth::Authed, alias: &RoomAliasId) -> Result<(), ApiError> {
    Ok(cx.engine.check_alias_claim(me.appservice.as_ref(), alias)?)
}

/// Whether `user` may change the room's canonical alias (by power level, or as a v12 creator).
fn can_manage_aliases(cx: &Ctx, room: &RoomId, user: &str) -> Result<bool, ApiError> {
    Ok(super::power::user_power(cx, room, user)? >= super::power::state_level(cx, room, "m.room.canonical_alias")?)
}

/// DELETE /directory/room/{roomAlias}
pub fn delete(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let alias = local_alias(&cx, req.param("alias")?)?;
        let entry = cx
            .engine
            .directory
            .resolve(alias.as_str())?
            .ok_or_else(|| ApiError::not_found(format!("{alias} is not an alias")))?;
        let room = RoomId::parse(&entry.room_id).map_err(|e| ApiError::unknown(e.to_string()))?;
        if entry.creator != me.user_id.as_str() && !can_manage_aliases(&cx, &room, me.user_id.as_str())? {
            return Err(ApiError::forbidden("only the alias's creator or a room moderator can delete it"));
        }
        cx.engine.directory.remove(alias.as_str()).await?;
        Ok(ok_empty())
    })
}

/// The answer to `GET /rooms/{roomId}/aliases`.
#[derive(Serialize)]
struct Aliases {
    aliases: Vec<String>,
}

/// GET /rooms/{roomId}/aliases
pub fn room_aliases(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        if cx.engine.rooms.membership(me.user_id.as_str(), &room)?.map(|m| m.membership).as_deref() != Some("join") {
            return Err(ApiError::forbidden(format!("you are not joined to {room}")));
        }
        Ok(ok_json(&Aliases { aliases: cx.engine.directory.aliases_of(room.as_str())? }))
    })
}
