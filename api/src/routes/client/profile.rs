//! Profiles and the user directory.
//!
//! Client-Server API §"Profiles": `GET /profile/{userId}`,
//! `GET`/`PUT /profile/{userId}/displayname` and `…/avatar_url`. "Servers
//! MUST update the `m.room.member` event of every room the user is joined
//! to" when the profile changes, so the other members see it.
//! §"User directory": `POST /user_directory/search` over users who share a
//! room with the searcher or are in a public room.

use std::collections::BTreeMap;

use myelin_engine::users::Profile;
use ruma::{UserId, events::TimelineEventType};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::require_user,
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

async fn profile_of(cx: &Ctx, req: &Req) -> Result<(ruma::OwnedUserId, Profile), ApiError> {
    let user = UserId::parse(req.param("user_id")?).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if user.server_name() != cx.engine.server_name {
        // Another server's user: ask it (Server-Server API §"Query Types").
        let path =
            format!("/_matrix/federation/v1/query/profile?user_id={}", myelin_engine::federation::enc(user.as_str()));
        let resp = cx
            .engine
            .remote(user.server_name().as_str())
            .get(&path)
            .await
            .map_err(|e| ApiError::not_found(format!("profile of {user} unavailable: {e}")))?;
        if !resp.status.is_success() {
            return Err(ApiError::not_found(format!("{} has no profile for {user}", user.server_name())));
        }
        let text = |k: &str| resp.json[k].as_str().map(str::to_owned);
        return Ok((user, Profile { displayname: text("displayname"), avatar_url: text("avatar_url") }));
    }
    let mut profile = cx.engine.users.profile(user.as_str())?;
    if profile.is_none() && !cx.engine.users.exists(&user)? && cx.engine.query_appservice_user(user.as_str()).await {
        // An appservice of the user's namespace has just registered the user.
        profile = cx.engine.users.profile(user.as_str())?;
    }
    let profile = profile.ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok((user, profile))
}

/// GET /profile/{userId}
pub fn get_profile(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let (_, p) = profile_of(&cx, &req).await?;
        let mut body = serde_json::Map::new();
        if let Some(d) = p.displayname {
            body.insert("displayname".into(), json!(d));
        }
        if let Some(a) = p.avatar_url {
            body.insert("avatar_url".into(), json!(a));
        }
        Ok(ok_json(&JsonValue::Object(body)))
    })
}

/// GET /profile/{userId}/displayname and /avatar_url
pub fn get_field(field: &'static str) -> impl Fn(Ctx, Req) -> HandlerFuture {
    move |cx, req| {
        Box::pin(async move {
            let (_, p) = profile_of(&cx, &req).await?;
            let value = if field == "displayname" { p.displayname } else { p.avatar_url };
            let value = value.ok_or_else(|| ApiError::not_found(format!("no {field} set")))?;
            Ok(ok_json(&json!({ field: value })))
        })
    }
}

/// GET /profile/{userId}/displayname
pub fn get_displayname(cx: Ctx, req: Req) -> HandlerFuture {
    get_field("displayname")(cx, req)
}

/// GET /profile/{userId}/avatar_url
pub fn get_avatar_url(cx: Ctx, req: Req) -> HandlerFuture {
    get_field("avatar_url")(cx, req)
}

fn set_field(field: &'static str) -> impl Fn(Ctx, Req) -> HandlerFuture {
    move |cx, req| {
        Box::pin(async move {
            let me = require_user(&cx, &req)?;
            if me.rate_limited() {
                cx.limiter.check(&me.user_id)?;
            }
            crate::auth::require_self(&me, &req, "user_id")?;
            let body: JsonValue = parse_json(&req.body)?;
            let value = match body.get(field) {
                Some(JsonValue::String(s)) => Some(s.clone()),
                Some(JsonValue::Null) | None => None,
                Some(_) => return Err(ApiError::bad_json(format!("`{field}` must be a string"))),
            };
            if value.as_ref().is_some_and(|v| v.len() > 1024) {
                return Err(ApiError::invalid_param(format!("`{field}` is too long")));
            }
            if field == "avatar_url" && value.as_ref().is_some_and(|v| !v.is_empty() && !v.starts_with("mxc://")) {
                return Err(ApiError::invalid_param("avatar_url must be an mxc:// URI"));
            }
            let mut profile = cx.engine.users.profile(me.user_id.as_str())?.unwrap_or_default();
            if field == "displayname" {
                profile.displayname = value;
            } else {
                profile.avatar_url = value;
            }
            // Stored, and a new member event carrying it in every joined room.
            cx.engine.set_profile_everywhere(&me.user_id, &profile).await?;
            Ok(crate::response::ok_empty())
        })
    }
}

/// PUT /profile/{userId}/displayname
pub fn put_displayname(cx: Ctx, req: Req) -> HandlerFuture {
    set_field("displayname")(cx, req)
}

/// PUT /profile/{userId}/avatar_url
pub fn put_avatar_url(cx: Ctx, req: Req) -> HandlerFuture {
    set_field("avatar_url")(cx, req)
}

#[derive(Deserialize)]
pub(crate) struct SearchBody {
    search_term: String,
    #[serde(default = "ten")]
    limit: usize,
}

fn ten() -> usize {
    10
}

/// POST /user_directory/search
pub fn search_users(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: SearchBody = parse_json(&req.body)?;
        let term = body.search_term.to_lowercase();
        let limit = body.limit.clamp(1, 100);
        let rooms = &cx.engine.rooms;
        // Candidates: members of rooms the searcher is in, and of public rooms.
        let mut room_ids: Vec<ruma::OwnedRoomId> = rooms
            .rooms_of(me.user_id.as_str())?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| r)
            .collect();
        for room in rooms.all_rooms()? {
            let public = rooms
                .state_event(&room, "m.room.join_rules", "")?
                .is_some_and(|p| p.content_value()["join_rule"] == "public");
            if public {
                room_ids.push(room);
            }
        }
        room_ids.sort();
        room_ids.dedup();
        let mut found: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for room in room_ids {
            for p in rooms.current_state(&room)? {
                let content = p.content_value();
                if p.kind != TimelineEventType::RoomMember || content["membership"] != "join" {
                    continue;
                }
                let Some(user) = p.state_key.clone() else { continue };
                let name = content["displayname"].as_str().map(str::to_owned);
                let avatar = content["avatar_url"].as_str().map(str::to_owned);
                let hit = user.to_lowercase().contains(&term)
                    || name.as_ref().is_some_and(|n| n.to_lowercase().contains(&term));
                if hit {
                    found.insert(user, (name, avatar));
                }
            }
        }
        let limited = found.len() > limit;
        let results: Vec<JsonValue> = found
            .into_iter()
            .take(limit)
            .map(|(user, (name, avatar))| json!({ "user_id": user, "display_name": name, "avatar_url": avatar }))
            .collect();
        Ok(ok_json(&UserSearchAnswer { results, limited }))
    })
}

/// `user_directory/search`.
#[derive(serde::Serialize)]
struct UserSearchAnswer<A, B> {
    results: A,
    limited: B,
}
