//! Room tags.
//!
//! Client-Server API §"Room Tagging": "Users can add tags to rooms. Tags are
//! namespaced strings used to label rooms… A tag may have an `order`… The tags
//! on a room are received as single `m.tag` event in the `account_data` section
//! of a room." `GET /user/{userId}/rooms/{roomId}/tags` answers `{"tags": {…}}`;
//! `PUT …/tags/{tag}` takes the tag's content (`order`, a number, optional);
//! `DELETE …/tags/{tag}` removes it. The tags live in the room's `m.tag` account
//! data (`{"tags": {…}}`), so `/sync` and sliding sync carry them unchanged.

use serde::Deserialize;
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    auth::{require_self, require_user},
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Longest tag name, in bytes (Synapse keeps tags in a column of this size).
const MAX_TAG_BYTES: usize = 255;
/// Most tags on one room of one user.
const MAX_TAGS_PER_ROOM: usize = 100;

/// `PUT …/tags/{tag}`: the tag's content; other keys are kept as sent.
#[derive(Deserialize)]
struct TagBody {
    order: Option<f64>,
    #[serde(flatten)]
    rest: Map<String, JsonValue>,
}

fn room_of(req: &Req) -> Result<String, ApiError> {
    let room = req.param("room_id")?;
    ruma::RoomId::parse(room).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))?;
    Ok(room.to_owned())
}

fn tag_of(req: &Req) -> Result<String, ApiError> {
    let tag = req.param("tag")?;
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(ApiError::invalid_param(format!("a tag is 1 to {MAX_TAG_BYTES} bytes")));
    }
    Ok(tag.to_owned())
}

/// The tags of a stored `m.tag` event (none when absent or not of the spec's shape).
fn tags_of(stored: Option<&[u8]>) -> Map<String, JsonValue> {
    stored
        .and_then(|b| serde_json::from_slice::<JsonValue>(b).ok())
        .and_then(|v| v.get("tags").and_then(JsonValue::as_object).cloned())
        .unwrap_or_default()
}

fn m_tag(tags: Map<String, JsonValue>) -> Result<Option<Vec<u8>>, myelin_engine::users::UserError> {
    serde_json::to_vec(&json!({ "tags": tags }))
        .map(Some)
        .map_err(|e| myelin_engine::users::UserError::Engine(myelin_engine::EngineError::encode("tags")(e)))
}

/// GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags
pub fn get_tags(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let room = room_of(&req)?;
        let stored = cx.engine.users.account_data(me.user_id.as_str(), Some(&room), "m.tag")?;
        Ok(ok_json(&TagsAnswer { tags: tags_of(stored.as_deref()) }))
    })
}

/// PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
pub fn put_tag(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let (room, tag) = (room_of(&req)?, tag_of(&req)?);
        let body: TagBody = parse_json(&req.body)?;
        let mut content = body.rest;
        if let Some(order) = body.order {
            content.insert("order".into(), json!(order));
        }
        let mut too_many = false;
        cx.engine
            .users
            .update_account_data(me.user_id.as_str(), Some(&room), "m.tag", |stored| {
                let mut tags = tags_of(stored.as_deref());
                if !tags.contains_key(&tag) && tags.len() >= MAX_TAGS_PER_ROOM {
                    too_many = true;
                    return Ok(None);
                }
                tags.insert(tag, JsonValue::Object(content));
                m_tag(tags)
            })
            .await?;
        if too_many {
            return Err(ApiError::invalid_param(format!("at most {MAX_TAGS_PER_ROOM} tags on a room")));
        }
        Ok(ok_empty())
    })
}

/// DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
pub fn delete_tag(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        require_self(&me, &req, "user_id")?;
        let (room, tag) = (room_of(&req)?, tag_of(&req)?);
        cx.engine
            .users
            .update_account_data(me.user_id.as_str(), Some(&room), "m.tag", |stored| {
                let mut tags = tags_of(stored.as_deref());
                if tags.remove(&tag).is_none() {
                    return Ok(None);
                }
                m_tag(tags)
            })
            .await?;
        Ok(ok_empty())
    })
}

/// `/tags`.
#[derive(serde::Serialize)]
struct TagsAnswer<A> {
    tags: A,
}
