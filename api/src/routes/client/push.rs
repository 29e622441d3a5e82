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
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// `PUT /pushrules/global/{kind}/{ruleId}`.
#[derive(Deserialize)]
struct RuleBody {
    actions: Vec<Action>,
    /// `override` and `underride` rules only.
    conditions: Option<Vec<PushCondition>>,
    /// `content` rules only.
    pattern: Option<String>,
}

/// `PUT /pushrules/global/{kind}/{ruleId}/enabled`.
#[derive(Deserialize)]
struct EnabledBody {
    enabled: bool,
}

/// `PUT /pushrules/global/{kind}/{ruleId}/actions`.
#[derive(Deserialize)]
struct ActionsBody {
    actions: Vec<Action>,
}

/// One entry of `GET /notifications`.
#[derive(Serialize)]
struct Notification {
    actions: Vec<JsonValue>,
    event: JsonValue,
    read: bool,
    room_id: ruma::OwnedRoomId,
    ts: u64,
}

/// The answer to `GET /notifications`.
#[derive(Serialize)]
struct Notifications {
    notifications: Vec<Notification>,
}

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

/// The answer to `GET /pushrules/`: the rule sets by scope.
#[derive(Serialize)]
struct AllRules {
    global: JsonValue,
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
        Ok(ok_json(&AllRules { global: rules }))
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
        let body: RuleBody = parse_json(&req.body)?;
        let actions = body.actions;
        let rule = match kind.as_str() {
            "override" | "underride" => {
                let conditions = body.conditions.unwrap_or_default();
                let rule = NewConditionalPushRule::new(id.clone(), conditions, actions);
                if kind.as_str() == "override" { NewPushRule::Override(rule) } else { NewPushRule::Underride(rule) }
            }
            "content" => {
                let pattern = body.pattern.ok_or_else(|| ApiError::bad_json("content rules need a pattern"))?;
                NewPushRule::Content(NewPatternedPushRule::new(id.clone(), pattern, actions))
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
        Ok(ok_empty())
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
        Ok(ok_empty())
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
        let mut rules = cx.engine.push_rules(&me.user_id)?;
        if req.parts.uri.path().ends_with("/enabled") {
            let body: EnabledBody = parse_json(&req.body)?;
            rules.set_enabled(kind, &id, body.enabled).map_err(|e| ApiError::not_found(e.to_string()))?;
        } else {
            let body: ActionsBody = parse_json(&req.body)?;
            rules.set_actions(kind, &id, body.actions).map_err(|e| ApiError::not_found(e.to_string()))?;
        }
        cx.engine.set_push_rules(&me.user_id, &rules).await?;
        Ok(ok_empty())
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
        let now = myelin_engine::util::now_ms();
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
                found.push(Notification {
                    actions,
                    event: cx.engine.rooms.format(&pdu, true, now, &me.user_id)?,
                    read: count <= read,
                    room_id: room.clone(),
                    ts: u64::from(pdu.origin_server_ts.0),
                });
            }
        }
        found.sort_by_key(|n| std::cmp::Reverse(n.ts));
        found.truncate(limit);
        Ok(ok_json(&Notifications { notifications: found }))
    })
}
