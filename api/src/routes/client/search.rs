//! `POST /search` (Client-Server API §"Server Side Search"): the
//! `room_events` category over the rooms the user is joined to, with
//! `filter.rooms`/`not_rooms`/`senders`/`not_senders`/`limit`, newest first
//! (`order_by: recent`; `rank` ordering is treated the same), `next_batch`
//! pagination, and the `highlights` words. Redacted events and events the
//! user may not see are never returned.

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::sync::RoomEventFilter;
use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// `POST /search`.
#[derive(Deserialize)]
pub(crate) struct SearchBody {
    search_categories: Categories,
}

/// The categories to search; only `room_events` exists.
#[derive(Deserialize)]
struct Categories {
    room_events: Option<RoomEventsCriteria>,
}

/// What to look for among room events.
#[derive(Deserialize)]
struct RoomEventsCriteria {
    search_term: String,
    filter: Option<RoomEventFilter>,
    /// Only `content.body` is indexed; read so that its type is checked.
    #[serde(default, rename = "keys")]
    _keys: Option<Vec<String>>,
    /// `recent` and `rank` are both served newest first; read so that its type is checked.
    #[serde(default, rename = "order_by")]
    _order_by: Option<String>,
    /// Context around results is not served; read so that its type is checked.
    #[serde(default, rename = "event_context")]
    _event_context: Option<EventContext>,
    /// State is not included; read so that its type is checked.
    #[serde(default, rename = "include_state")]
    _include_state: Option<bool>,
    /// Results are not grouped; read so that its type is checked.
    #[serde(default, rename = "groupings")]
    _groupings: Option<serde_json::Map<String, JsonValue>>,
}

/// `event_context` of the search criteria (not served, only checked).
#[derive(Deserialize)]
#[allow(dead_code)]
struct EventContext {
    before_limit: Option<u64>,
    after_limit: Option<u64>,
    include_profile: Option<bool>,
}

/// The answer to `POST /search`.
#[derive(Serialize)]
struct SearchResponse {
    search_categories: ResultCategories,
}

/// Results by category.
#[derive(Serialize)]
struct ResultCategories {
    #[serde(skip_serializing_if = "Option::is_none")]
    room_events: Option<RoomEventResults>,
}

/// The `room_events` results.
#[derive(Serialize)]
struct RoomEventResults {
    results: Vec<SearchResult>,
    count: usize,
    highlights: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_batch: Option<String>,
}

/// One matching event.
#[derive(Serialize)]
struct SearchResult {
    rank: f64,
    result: JsonValue,
}

/// POST /search
pub fn search(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: SearchBody = parse_json(&req.body)?;
        // No category asked for: nothing to search (§"Server Side Search": every category is optional).
        let Some(criteria) = body.search_categories.room_events else {
            return Ok(ok_json(&SearchResponse { search_categories: ResultCategories { room_events: None } }));
        };
        let term = criteria.search_term.as_str();
        let filter = criteria.filter.unwrap_or_default();
        let (rooms_only, not_rooms) = (filter.rooms, filter.not_rooms.unwrap_or_default());
        let (senders, not_senders) = (filter.senders, filter.not_senders.unwrap_or_default());
        let limit = filter.limit.unwrap_or(10).clamp(1, 100) as usize;
        let offset = match query_param(&req, "next_batch") {
            Some(t) => t.parse::<usize>().map_err(|_| ApiError::invalid_param("bad next_batch"))?,
            None => 0,
        };
        let rooms = &cx.engine.rooms;
        let mut hits = Vec::new();
        for (room, m) in rooms.rooms_of(me.user_id.as_str())? {
            if m.membership != "join"
                || rooms_only.as_ref().is_some_and(|r| !r.iter().any(|x| x == room.as_str()))
                || not_rooms.iter().any(|x| x == room.as_str())
            {
                continue;
            }
            let Some(room_short) = rooms.short_room(&room)? else { continue };
            for (count, short) in rooms.search_room(room_short, term)? {
                hits.push((count, short, room.clone()));
            }
        }
        hits.sort_by_key(|h| std::cmp::Reverse(h.0));
        let now = myelin_engine::util::now_ms();
        let mut results = Vec::new();
        let mut matched = 0usize;
        for (count, short, _room) in hits {
            let Some(pdu) = rooms.pdu_by_short(short)? else { continue };
            if senders.as_ref().is_some_and(|s| !s.iter().any(|x| x == pdu.sender.as_str()))
                || not_senders.iter().any(|x| x == pdu.sender.as_str())
                || rooms.redaction_of(short)?.is_some()
                || !rooms.visible_to(&me.user_id, &pdu, count)?
            {
                continue;
            }
            matched += 1;
            if matched <= offset || results.len() >= limit {
                continue;
            }
            let event = rooms.format(&pdu, true, now, &me.user_id)?;
            results.push(SearchResult { rank: 1.0, result: event });
        }
        let out = RoomEventResults {
            results,
            count: matched,
            highlights: myelin_engine::rooms::search::words(term).into_iter().collect(),
            next_batch: (offset + limit < matched).then(|| (offset + limit).to_string()),
        };
        Ok(ok_json(&SearchResponse { search_categories: ResultCategories { room_events: Some(out) } }))
    })
}
