//! `POST /search` (Client-Server API §"Server Side Search"): the
//! `room_events` category over the rooms the user is joined to, with
//! `filter.rooms`/`not_rooms`/`senders`/`not_senders`/`limit`, newest first
//! (`order_by: recent`; `rank` ordering is treated the same), `next_batch`
//! pagination, and the `highlights` words. Redacted events and events the
//! user may not see are never returned.

use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn strings(v: &JsonValue) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
}

/// POST /search
pub fn search(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: JsonValue = parse_json(&req.body)?;
        let criteria = &body["search_categories"]["room_events"];
        let term = criteria["search_term"].as_str().ok_or_else(|| ApiError::bad_json("search_term is required"))?;
        let filter = &criteria["filter"];
        let (rooms_only, not_rooms) = (strings(&filter["rooms"]), strings(&filter["not_rooms"]).unwrap_or_default());
        let (senders, not_senders) = (strings(&filter["senders"]), strings(&filter["not_senders"]).unwrap_or_default());
        let limit = filter["limit"].as_u64().unwrap_or(10).clamp(1, 100) as usize;
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
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
            results.push(json!({ "rank": 1.0, "result": event }));
        }
        let mut out = json!({
            "results": results,
            "count": matched,
            "highlights": myelin_engine::rooms::search::words(term).into_iter().collect::<Vec<_>>(),
        });
        if offset + limit < matched {
            out["next_batch"] = json!((offset + limit).to_string());
        }
        Ok(ok_json(&json!({ "search_categories": { "room_events": out } })))
    })
}
