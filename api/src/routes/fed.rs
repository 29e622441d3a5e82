//! Server-Server API endpoints that need request authentication.
//!
//! §"Query Types": `GET /_matrix/federation/v1/query/profile?user_id=…[&field=…]`
//! answers with a local user's `displayname` and `avatar_url` (one of them
//! when `field` is given), 404 `M_NOT_FOUND` for an unknown user.
//! `GET /_matrix/federation/v1/query/directory?room_alias=…` resolves one of
//! this server's aliases to `room_id` and the `servers` that can join it.

use ruma::{RoomAliasId, RoomId, UserId};
use serde_json::json;

use crate::{
    auth::query_param,
    error::ApiError,
    federation::require_server,
    http_util::ok_json,
    router::{Ctx, HandlerFuture, Req},
};

/// GET /_matrix/federation/v1/query/profile
pub fn query_profile(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let user = query_param(&req, "user_id").ok_or_else(|| ApiError::missing_param("user_id is required"))?;
        let user = UserId::parse(user.as_str()).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        if user.server_name() != cx.engine.server_name {
            return Err(ApiError::not_found(format!("{user} is not a user of this server")));
        }
        let profile = cx.engine.users.profile(user.as_str())?.ok_or_else(|| ApiError::not_found("no such user"))?;
        tracing::debug!(%origin, user_id = %user, "profile query over federation");
        let mut body = serde_json::Map::new();
        let field = query_param(&req, "field");
        if field.as_deref().is_none_or(|f| f == "displayname")
            && let Some(d) = profile.displayname
        {
            body.insert("displayname".into(), json!(d));
        }
        if field.as_deref().is_none_or(|f| f == "avatar_url")
            && let Some(a) = profile.avatar_url
        {
            body.insert("avatar_url".into(), json!(a));
        }
        Ok(ok_json(&serde_json::Value::Object(body)))
    })
}

/// GET /_matrix/federation/v1/query/directory
pub fn query_directory(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let origin = require_server(&cx, &req).await?;
        let raw = query_param(&req, "room_alias").ok_or_else(|| ApiError::missing_param("room_alias is required"))?;
        let alias = RoomAliasId::parse(raw.as_str()).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        if alias.server_name() != cx.engine.server_name {
            return Err(ApiError::not_found(format!("{alias} is not an alias of this server")));
        }
        let entry =
            cx.engine.resolve_local_alias(alias.as_str()).await?.ok_or_else(|| ApiError::not_found("no such alias"))?;
        let room = RoomId::parse(&entry.room_id).map_err(|e| ApiError::unknown(e.to_string()))?;
        // Every server with a joined member can serve a join; ours first.
        let mut servers = vec![cx.engine.server_name.to_string()];
        for s in cx.engine.rooms.joined_servers_now(&room).unwrap_or_default() {
            if !servers.contains(&s) {
                servers.push(s);
            }
        }
        tracing::debug!(%origin, %alias, "alias query over federation");
        Ok(ok_json(&DirectoryAnswer { room_id: room, servers }))
    })
}

/// `query/directory`.
#[derive(serde::Serialize)]
struct DirectoryAnswer<A, B> {
    room_id: A,
    servers: B,
}
