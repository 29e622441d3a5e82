//! Push rules and notifications.
//!
//! Client-Server API §"Push Rules: API": `GET /pushrules/` and
//! `/pushrules/global/`, `GET`/`PUT`/`DELETE /pushrules/global/{kind}/{ruleId}`
//! (with `before`/`after`), `…/enabled` and `…/actions`; server-default
//! rules (ids starting with `.`) can be enabled, disabled and given new
//! actions but not replaced or removed. §"Listing Notifications":
//! `GET /notifications` (recent notifying events of the user's rooms,
//! newest first, `only=highlight`, `limit`).

use ruma::push::{
    Action, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule, PushCondition, RuleKind,
};
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

fn kind_of(req: &Req) -> Result<RuleKind, ApiError> {
    if req.param("scope")? != "global" {
        return Err(ApiError::invalid_param("only the global scope exists"));
    }
    let kind = req.param("kind")?;
    match kind {
        "override" | "underride" | "sender" | "room" | "content" => Ok(RuleKind::from(kind)),
        other => Err(ApiError::invalid_param(format!("unknown rule kind {other}"))),
    }
}

fn rule_json(rules: &ruma::push::Ruleset, kind: &RuleKind, id: &str) -> Option<JsonValue> {
    let all = serde_json::to_value(rules).ok()?;
    all[kind.as_str()].as_array()?.iter().find(|r| r["rule_id"] == id).cloned()
}

/// GET /pushrules/ and /pushrules/global/
pub fn get_all(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let rules =
            serde_json::to_value(cx.engine.push_rules(&me.user_id)?).map_err(|e| ApiError::unknown(e.to_string()))?;
        if req.parts.uri.path().contains("/pushrules/global") {
            return Ok(ok_json(&rules));
        }
        Ok(ok_json(&json!({ "global": rules })))
    })
}

/// GET /pushrules/global/{kind}/{ruleId}
pub fn get_rule(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let kind = kind_of(&req)?;
        let rules = cx.engine.push_rules(&me.user_id)?;
        let rule =
            rule_json(&rules, &kind, req.param("rule_id")?).ok_or_else(|| ApiError::not_found("no such push rule"))?;
        Ok(ok_json(&rule))
    })
}

/// PUT /pushrules/global/{kind}/{ruleId}
pub fn put_rule(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let kind = kind_of(&req)?;
        let id = req.param("rule_id")?.to_owned();
        let body: JsonValue = parse_json(&req.body)?;
        let actions: Vec<Action> =
            serde_json::from_value(body["actions"].clone()).map_err(|e| ApiError::bad_json(format!("actions: {e}")))?;
        let rule = match kind.as_str() {
            "override" | "underride" => {
                let conditions: Vec<PushCondition> =
                    serde_json::from_value(body.get("conditions").cloned().unwrap_or(json!([])))
                        .map_err(|e| ApiError::bad_json(format!("conditions: {e}")))?;
                let rule = NewConditionalPushRule::new(id.clone(), conditions, actions);
                if kind.as_str() == "override" { NewPushRule::Override(rule) } else { NewPushRule::Underride(rule) }
            }
            "content" => {
                let pattern =
                    body["pattern"].as_str().ok_or_else(|| ApiError::bad_json("content rules need a pattern"))?;
                NewPushRule::Content(NewPatternedPushRule::new(id.clone(), pattern.to_owned(), actions))
            }
            "room" => {
                let room = ruma::RoomId::parse(id.as_str()).map_err(|e| ApiError::invalid_param(e.to_string()))?;
                NewPushRule::Room(NewSimplePushRule::new(room, actions))
            }
            _ => {
                let user = ruma::UserId::parse(id.as_str()).map_err(|e| ApiError::invalid_param(e.to_string()))?;
                NewPushRule::Sender(NewSimplePushRule::new(user, actions))
            }
        };
        let mut rules = cx.engine.push_rules(&me.user_id)?;
        let (before, after) = (query_param(&req, "before"), query_param(&req, "after"));
        rules.insert(rule, after.as_deref(), before.as_deref()).map_err(|e| ApiError::invalid_param(e.to_string()))?;
        cx.engine.set_push_rules(&me.user_id, &rules).await?;
        Ok(ok_json(&json!({})))
    })
}

/// DELETE /pushrules/global/{kind}/{ruleId}
pub fn delete_rule(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let kind = kind_of(&req)?;
        let mut rules = cx.engine.push_rules(&me.user_id)?;
        rules.remove(kind, req.param("rule_id")?).map_err(|e| ApiError::not_found(e.to_string()))?;
        cx.engine.set_push_rules(&me.user_id, &rules).await?;
        Ok(ok_json(&json!({})))
    })
}

/// GET /pushrules/global/{kind}/{ruleId}/enabled and /actions
pub fn get_attribute(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let kind = kind_of(&req)?;
        let rules = cx.engine.push_rules(&me.user_id)?;
        let rule =
            rule_json(&rules, &kind, req.param("rule_id")?).ok_or_else(|| ApiError::not_found("no such push rule"))?;
        let attr = if req.parts.uri.path().ends_with("/enabled") { "enabled" } else { "actions" };
        Ok(ok_json(&json!({ attr: rule[attr] })))
    })
}

/// PUT /pushrules/global/{kind}/{ruleId}/enabled and /actions
pub fn put_attribute(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let kind = kind_of(&req)?;
        let id = req.param("rule_id")?.to_owned();
        let body: JsonValue = parse_json(&req.body)?;
        let mut rules = cx.engine.push_rules(&me.user_id)?;
        if req.parts.uri.path().ends_with("/enabled") {
            let enabled = body["enabled"].as_bool().ok_or_else(|| ApiError::bad_json("`enabled` must be a boolean"))?;
            rules.set_enabled(kind, &id, enabled).map_err(|e| ApiError::not_found(e.to_string()))?;
        } else {
            let actions: Vec<Action> = serde_json::from_value(body["actions"].clone())
                .map_err(|e| ApiError::bad_json(format!("actions: {e}")))?;
            rules.set_actions(kind, &id, actions).map_err(|e| ApiError::not_found(e.to_string()))?;
        }
        cx.engine.set_push_rules(&me.user_id, &rules).await?;
        Ok(ok_json(&json!({})))
    })
}

/// GET /notifications
pub fn notifications(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let only_highlight = query_param(&req, "only").as_deref() == Some("highlight");
        let limit = query_param(&req, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
        let rules = cx.engine.push_rules(&me.user_id)?;
        let name = cx
            .engine
            .users
            .profile(me.user_id.as_str())?
            .and_then(|p| p.displayname)
            .unwrap_or_else(|| me.user_id.localpart().to_owned());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut found = Vec::new();
        for (room, m) in cx.engine.rooms.rooms_of(me.user_id.as_str())? {
            if m.membership != "join" {
                continue;
            }
            let read = cx.engine.read_upto(&room, &me.user_id)?;
            let members = cx
                .engine
                .rooms
                .current_state(&room)?
                .iter()
                .filter(|p| p.kind.to_string() == "m.room.member" && p.content_value()["membership"] == "join")
                .count();
            for (count, pdu) in cx.engine.rooms.timeline(&room, None, myelin_storage::Direction::Reverse, 100)? {
                if count <= m.count || !cx.engine.rooms.visible_to(&me.user_id, &pdu, count)? {
                    continue;
                }
                let verdict = cx.engine.evaluate(&rules, &me.user_id, &room, members, &name, &pdu).await;
                if !verdict.notify || (only_highlight && !verdict.highlight) {
                    continue;
                }
                let mut actions = vec![json!("notify")];
                if verdict.highlight {
                    actions.push(json!({ "set_tweak": "highlight" }));
                }
                found.push((
                    u64::from(pdu.origin_server_ts.0),
                    json!({
                        "actions": actions,
                        "event": cx.engine.rooms.format(&pdu, true, now, &me.user_id)?,
                        "read": count <= read,
                        "room_id": room,
                        "ts": u64::from(pdu.origin_server_ts.0),
                    }),
                ));
            }
        }
        found.sort_by_key(|(ts, _)| std::cmp::Reverse(*ts));
        let list: Vec<JsonValue> = found.into_iter().take(limit).map(|(_, n)| n).collect();
        Ok(ok_json(&json!({ "notifications": list })))
    })
}
