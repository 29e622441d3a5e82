//! `POST /rooms/{roomId}/upgrade` (Client-Server API §"Room Upgrades"):
//! `new_version` (required) and, for version 12, `additional_creators`;
//! the answer is `{"replacement_room": …}`. The work is
//! `myelin_engine::room_upgrade`.

#[allow(unused_imports)]
use super::*;

/// The request body.
#[derive(Deserialize)]
pub(crate) struct UpgradeBody {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<OwnedUserId>,
}

/// The answer.
#[derive(serde::Serialize)]
struct Upgraded {
    replacement_room: OwnedRoomId,
}

/// POST /_matrix/client/v3/rooms/{roomId}/upgrade
pub fn upgrade(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let room = room_param(&req)?;
        let body: UpgradeBody = parse_json(&req.body)?;
        let version = RoomVersionId::try_from(body.new_version.as_str())
            .map_err(|e| ApiError::invalid_param(format!("new_version: {e}")))?;
        require_joined(&cx, &me, &room)?;
        let replacement_room = cx.engine.upgrade_room(&me.user_id, &room, version, body.additional_creators).await?;
        Ok(ok_json(&Upgraded { replacement_room }))
    })
}
