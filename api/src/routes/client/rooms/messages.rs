//! History (`/messages`, with backfill from other servers), `/context` and `/timestamp_to_event`.

#[allow(unused_imports)]
use super::*;

pub(super) fn parse_position(token: &str) -> Result<i64, ApiError> {
    let digits = token.strip_prefix('t').or_else(|| token.strip_prefix('s')).unwrap_or(token);
    // Sync tokens carry a typing serial after `_`; only the position matters here.
    let digits = digits.split('_').next().unwrap_or(digits);
    digits.parse::<i64>().map_err(|_| ApiError::invalid_param(format!("bad pagination token {token}")))
}

/// A message of an ignored user (§"Ignoring Users"; their state events are still shown).
fn hidden(ignored: &std::collections::HashSet<String>, p: &myelin_engine::rooms::ArcPdu) -> bool {
    p.state_key.is_none() && ignored.contains(p.sender.as_str())
}

/// The `limit` query parameter: an integer, or the default when absent (400 otherwise).
fn limit_param(req: &Req, default: usize) -> Result<usize, ApiError> {
    match query_param(req, "limit") {
        Some(l) => l.parse::<usize>().map_err(|_| ApiError::invalid_param("limit must be a non-negative integer")),
        None => Ok(default),
    }
}

/// The `filter` query parameter: a `RoomEventFilter` as JSON.
fn filter_param(req: &Req) -> Result<crate::routes::client::sync::RoomEventFilter, ApiError> {
    match query_param(req, "filter") {
        Some(f) => crate::http_util::parse_json_param("filter", &f),
        None => Ok(Default::default()),
    }
}

/// The member events of the senders of `events`, in the state after `at`.
fn senders_members(
    cx: &Ctx,
    me: &crate::auth::Authed,
    events: &[(i64, myelin_engine::rooms::ArcPdu)],
    at: Option<&myelin_engine::rooms::ArcPdu>,
    now: u64,
) -> Result<Vec<JsonValue>, ApiError> {
    let Some(at) = at else { return Ok(Vec::new()) };
    let Some(meta) = cx.engine.rooms.meta(&at.event_id)? else { return Ok(Vec::new()) };
    let senders: std::collections::BTreeSet<&str> = events.iter().map(|(_, p)| p.sender.as_str()).collect();
    let mut out = Vec::new();
    for who in senders {
        if let Some(p) = cx.engine.rooms.state_pdu_at(meta.state_after, "m.room.member", who)? {
            out.push(serve(cx, me, &p, true, now));
        }
    }
    Ok(out)
}

/// GET /rooms/{roomId}/messages
///
/// Tokens name a point between positions: `t<n>` (or a sync token `s<n>`)
/// sits after position `n`, so `dir=b` returns positions `<= n` and `dir=f`
/// positions `> n`.
pub fn messages(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let upto = readable_upto(&cx, &me, &room)?;
        let backwards = match query_param(&req, "dir").as_deref() {
            Some("b") => true,
            Some("f") => false,
            _ => return Err(ApiError::invalid_param("dir must be b or f")),
        };
        let limit = limit_param(&req, 10)?.clamp(1, 1000);
        let from = query_param(&req, "from").map(|t| parse_position(&t)).transpose()?;
        let to = query_param(&req, "to").map(|t| parse_position(&t)).transpose()?;
        let filter = filter_param(&req)?;
        let lazy = filter.lazy_load_members.unwrap_or(false);
        let filter = filter.to_engine();
        let ignored = cx.engine.ignored_users(&me.user_id)?;
        let wanted = |p: &myelin_engine::rooms::ArcPdu| filter.matches(p) && !hidden(&ignored, p);
        let events = if backwards {
            let start = from.map_or(upto, |f| f.min(upto));
            let start = if start == i64::MAX { None } else { Some(start + 1) };
            let mut page = cx.engine.rooms.timeline(&room, start, Direction::Reverse, limit)?;
            // The start of our copy of a federated room: ask a server in it for older history.
            if page.len() < limit
                && myelin_engine::federation::backfill::backfill_room(&cx.engine, &room, limit - page.len())
                    .await
                    .unwrap_or(0)
                    > 0
            {
                page = cx.engine.rooms.timeline(&room, start, Direction::Reverse, limit)?;
            }
            page
        } else {
            cx.engine.rooms.timeline(&room, Some(from.unwrap_or(0)), Direction::Forward, limit)?
        };
        // The page boundary comes from what was read, before visibility hides anything.
        let full_page = events.len() == limit;
        let last_read = events.last().map(|(c, _)| *c);
        let events: Vec<_> = events
            .into_iter()
            .filter(|(c, _)| *c <= upto)
            .filter(|(c, _)| match (to, backwards) {
                (Some(t), true) => *c > t,
                (Some(t), false) => *c <= t,
                (None, _) => true,
            })
            .collect();
        let reached_to = events.len() < limit && to.is_some();
        let events: Vec<_> = events
            .into_iter()
            .filter(|(_, p)| wanted(p))
            .filter(|(c, p)| cx.engine.rooms.visible_to(&me.user_id, p, *c).unwrap_or(false))
            .collect();
        let now = now_ms();
        let chunk: Vec<JsonValue> = events.iter().map(|(_, p)| serve(&cx, &me, p, true, now)).collect();
        let start = from.map_or_else(
            || if backwards { format!("s{}", cx.engine.stream.current()) } else { "t0".into() },
            |f| format!("t{f}"),
        );
        let mut body = MessagesPage { chunk, start, end: None, state: None };
        if lazy {
            // §"GET /messages" `state`: "if `lazy_load_members` is enabled in the filter
            // then this may contain the membership events for the senders of events in
            // the `chunk`" — as of the newest event of the page.
            let newest = if backwards { events.first() } else { events.last() };
            body.state = Some(senders_members(&cx, &me, &events, newest.map(|(_, p)| p), now)?);
        }
        if let Some(last) = last_read
            && full_page
            && !reached_to
        {
            body.end = Some(if backwards { format!("t{}", last - 1) } else { format!("t{last}") });
        }
        Ok(ok_json(&body))
    })
}

/// GET /rooms/{roomId}/context/{eventId}
///
/// §"GET /context": the event, up to `limit` visible events before and after
/// it, pagination tokens both ways, and the room state at the event.
pub fn context(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let (pdu, meta, upto) = readable_event(&cx, &me, &room, &req)?;
        let limit = limit_param(&req, 10)?.min(100);
        let half = limit / 2;
        let filter = filter_param(&req)?;
        let lazy = filter.lazy_load_members.unwrap_or(false);
        let filter = filter.to_engine();
        let ignored = cx.engine.ignored_users(&me.user_id)?;
        let visible = |list: Vec<(i64, myelin_engine::rooms::ArcPdu)>| -> Vec<(i64, myelin_engine::rooms::ArcPdu)> {
            list.into_iter()
                .filter(|(c, p)| {
                    *c <= upto
                        && filter.matches(p)
                        && !hidden(&ignored, p)
                        && cx.engine.rooms.visible_to(&me.user_id, p, *c).unwrap_or(false)
                })
                .collect()
        };
        let before = visible(cx.engine.rooms.timeline(&room, Some(meta.count), Direction::Reverse, limit - half)?);
        let after = visible(cx.engine.rooms.timeline(&room, Some(meta.count), Direction::Forward, half)?);
        let now = now_ms();
        let start = before.last().map_or(meta.count - 1, |(c, _)| c - 1);
        let end = after.last().map_or(meta.count, |(c, _)| *c);
        let state: Vec<JsonValue> = if lazy {
            let shown: Vec<_> = before.iter().chain(after.iter()).cloned().chain([(meta.count, pdu.clone())]).collect();
            senders_members(&cx, &me, &shown, Some(&pdu), now)?
        } else {
            cx.engine.rooms.state_at(meta.state_after)?.iter().map(|p| serve(&cx, &me, p, true, now)).collect()
        };
        Ok(ok_json(&Context {
            event: serve(&cx, &me, &pdu, true, now),
            events_before: before.iter().map(|(_, p)| serve(&cx, &me, p, true, now)).collect(),
            events_after: after.iter().map(|(_, p)| serve(&cx, &me, p, true, now)).collect(),
            start: format!("t{start}"),
            end: format!("t{end}"),
            state,
        }))
    })
}

/// GET /rooms/{roomId}/timestamp_to_event (v1)
///
/// The visible event closest to `ts` in direction `dir`: the first at or
/// after it (`f`), or the last at or before it (`b`).
pub fn timestamp_to_event(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let room = room_param(&req)?;
        let upto = readable_upto(&cx, &me, &room)?;
        let ts = query_param(&req, "ts")
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| ApiError::missing_param("ts (milliseconds) is required"))?;
        let forward = match query_param(&req, "dir").as_deref() {
            Some("f") => true,
            Some("b") => false,
            _ => return Err(ApiError::invalid_param("dir must be f or b")),
        };
        let mut from = None;
        loop {
            let dir = if forward { Direction::Forward } else { Direction::Reverse };
            let page = cx.engine.rooms.timeline(&room, from, dir, 500)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(*last);
            for (count, pdu) in &page {
                let at = u64::from(pdu.origin_server_ts.0);
                let hit = if forward { at >= ts } else { at <= ts };
                if hit && *count <= upto && cx.engine.rooms.visible_to(&me.user_id, pdu, *count)? {
                    return Ok(ok_json(&EventAt { event_id: &pdu.event_id, origin_server_ts: at }));
                }
            }
        }
        Err(ApiError::not_found("no event found in that direction"))
    })
}

/// A `/messages` page.
#[derive(serde::Serialize)]
struct MessagesPage {
    chunk: Vec<JsonValue>,
    start: String,
    /// Absent when there is nothing further in this direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    /// The senders' member events, with lazy loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<Vec<JsonValue>>,
}

/// The answer of `/context/{eventId}`.
#[derive(serde::Serialize)]
struct Context {
    event: JsonValue,
    events_before: Vec<JsonValue>,
    events_after: Vec<JsonValue>,
    start: String,
    end: String,
    state: Vec<JsonValue>,
}

/// The answer of `/timestamp_to_event`.
#[derive(serde::Serialize)]
struct EventAt<'a> {
    event_id: &'a ruma::EventId,
    origin_server_ts: u64,
}
