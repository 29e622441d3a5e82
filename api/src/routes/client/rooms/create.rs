//! `POST /createRoom` (Client-Server API §"Creation").

#[allow(unused_imports)]
use super::*;

/// POST /_matrix/client/v3/createRoom
pub fn create_room(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let body: CreateRoomBody = crate::http_util::parse_json_or_empty(&req.body)?;
        let preset = match body.preset.as_deref() {
            None => None,
            Some("private_chat") => Some(Preset::PrivateChat),
            Some("trusted_private_chat") => Some(Preset::TrustedPrivateChat),
            Some("public_chat") => Some(Preset::PublicChat),
            Some(other) => return Err(ApiError::invalid_param(format!("unknown preset {other}"))),
        };
        let version = match body.room_version.as_deref() {
            Some(v) => Some(RoomVersionId::try_from(v).map_err(|e| ApiError::invalid_param(e.to_string()))?),
            None => None,
        };
        let alias = match &body.room_alias_name {
            Some(name) => {
                let alias = super::super::directory::local_alias(&cx, &format!("#{name}:{}", cx.engine.server_name))
                    .map_err(|e| ApiError::invalid_param(e.message))?;
                super::super::directory::refuse_claimed_alias(&cx, &me, &alias)?;
                if cx.engine.directory.resolve(alias.as_str())?.is_some() {
                    return Err(ApiError::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_ROOM_IN_USE",
                        format!("{alias} is taken"),
                    ));
                }
                Some(alias)
            }
            None => None,
        };
        if body.initial_state.iter().any(|e| e.kind == "m.room.create" || e.kind == "m.room.member") {
            return Err(ApiError::invalid_param("initial_state may not contain m.room.create or m.room.member events"));
        }
        // Users of other servers are invited after creation, each through their server.
        let (local_invites, remote_invites): (Vec<OwnedUserId>, Vec<OwnedUserId>) =
            body.invite.iter().cloned().partition(|u| u.server_name() == cx.engine.server_name);
        let request = CreateRoom {
            version,
            preset,
            public: body.visibility.as_deref() == Some("public"),
            name: body.name,
            topic: body.topic,
            alias: alias.clone(),
            invite: local_invites,
            is_direct: body.is_direct,
            initial_state: body
                .initial_state
                .into_iter()
                .map(|s| NewEvent::state(TimelineEventType::from(s.kind), s.state_key, s.content))
                .collect(),
            power_level_content_override: body.power_level_content_override,
            creation_content: body.creation_content,
            creator_profile: cx.engine.users.profile(me.user_id.as_str())?.map(|p| {
                let mut v = json!({});
                if let Some(d) = p.displayname {
                    v["displayname"] = json!(d);
                }
                if let Some(a) = p.avatar_url {
                    v["avatar_url"] = json!(a);
                }
                v
            }),
        };
        let publish = request.public;
        let room_id = cx.engine.rooms.create_room(&me.user_id, request).await?;
        if publish {
            cx.engine.directory.set_public(room_id.as_str(), true).await?;
        }
        if let Some(alias) = alias
            && !cx.engine.directory.create(alias.as_str(), room_id.as_str(), me.user_id.as_str()).await?
        {
            return Err(ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "M_ROOM_IN_USE",
                format!("{alias} was taken meanwhile; {room_id} has no alias"),
            ));
        }
        for invitee in &remote_invites {
            let mut content = json!({ "membership": "invite" });
            if body.is_direct {
                content["is_direct"] = json!(true);
            }
            // The room exists now: a failed remote invite is reported in the log, not as a
            // failed creation (the client can invite again).
            if let Err(e) = myelin_engine::federation::membership::invite_remote(
                &cx.engine,
                &me.user_id,
                &room_id,
                invitee,
                content,
            )
            .await
            {
                tracing::warn!(room_id = %room_id, invitee = %invitee, error = %e, "invite during room creation failed");
            }
        }
        Ok(ok_json(&json!({ "room_id": room_id })))
    })
}
