//! Content reports (Client-Server API §"Reporting content"): the checks of
//! who may report what; storing is `myelin_engine::reports`.
//!
//! `POST /rooms/{roomId}/report/{eventId}`: 404 "The event was not found or
//! you are not currently joined to the room where the event is" — so an
//! event the reporter may not read is answered exactly like one that does
//! not exist. `POST /rooms/{roomId}/report`: 404 "The room was not found on
//! the homeserver"; a room counts as found for a reporter who has any
//! membership in it or when it is in the public room directory, so that a
//! report cannot probe for private rooms.

#[allow(unused_imports)]
use super::*;
use myelin_engine::reports::{MAX_REASON_BYTES, Report};

/// The body of a report.
#[derive(Deserialize, Default)]
pub(crate) struct ReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

fn check_reason(body: &ReportBody) -> Result<(), ApiError> {
    if body.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(ApiError::invalid_param(format!("reason: longer than {MAX_REASON_BYTES} bytes")));
    }
    if body.score.is_some_and(|s| !(-100..=0).contains(&s)) {
        return Err(ApiError::invalid_param("score: must be between -100 and 0"));
    }
    Ok(())
}

/// POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}
pub fn report_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let body: ReportBody = crate::http_util::parse_json_or_empty(&req.body)?;
        check_reason(&body)?;
        if membership_of(&cx, &me.user_id, &room)?.as_deref() != Some("join") {
            return Err(ApiError::not_found("event not found"));
        }
        let (pdu, _, _) = events::readable_event(&cx, &me, &room, &req)?;
        cx.engine
            .reports
            .add(Report {
                reporter: me.user_id.to_string(),
                room_id: room.to_string(),
                event_id: Some(pdu.event_id.to_string()),
                reason: body.reason,
                score: body.score,
                received_ms: 0,
            })
            .await?;
        tracing::info!(reporter = %me.user_id, room_id = %room, event_id = %pdu.event_id, "event reported");
        Ok(crate::http_util::ok_empty())
    })
}

/// POST /_matrix/client/v3/rooms/{roomId}/report
pub fn report_room(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let body: ReportBody = crate::http_util::parse_json_or_empty(&req.body)?;
        check_reason(&body)?;
        if membership_of(&cx, &me.user_id, &room)?.is_none() && !cx.engine.directory.is_public(room.as_str())? {
            return Err(ApiError::not_found("room not found"));
        }
        cx.engine
            .reports
            .add(Report {
                reporter: me.user_id.to_string(),
                room_id: room.to_string(),
                event_id: None,
                reason: body.reason,
                score: None,
                received_ms: 0,
            })
            .await?;
        tracing::info!(reporter = %me.user_id, room_id = %room, "room reported");
        Ok(crate::http_util::ok_empty())
    })
}
