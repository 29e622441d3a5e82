//! `POST /createRoom` (Client-Server API §"Creation").

#[allow(unused_imports)]
use super::*;
use myelin_engine::room_creation::RoomCreation;

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
        let room = CreateRoom {
            version,
            preset,
            public: body.visibility.as_deref() == Some("public"),
            name: body.name,
            topic: body.topic,
            alias: None,
            invite: body.invite,
            is_direct: body.is_direct,
            initial_state: body
                .initial_state
                .into_iter()
                .map(|s| NewEvent::state(TimelineEventType::from(s.kind), s.state_key, s.content))
                .collect(),
            power_level_content_override: body.power_level_content_override,
            creation_content: body.creation_content,
            creator_profile: None,
        };
        let creation = RoomCreation { room, alias_name: body.room_alias_name };
        let room_id = cx.engine.create_room_as(&me.user_id, me.appservice.as_ref(), creation).await?;
        Ok(ok_json(&Created { room_id }))
    })
}

/// The answer to `createRoom`.
#[derive(serde::Serialize)]
struct Created {
    room_id: OwnedRoomId,
}
