//! `myelin import synapse`, the rest of each user's settings: push rules and
//! server-side key backups (issue #23 §2).
//!
//! Push rules: Synapse keeps each user's own rules in `push_rules`
//! (`rule_id` = `global/<kind>/<id>`, `priority_class` 1 underride …
//! 5 override, `priority` within it, higher first; conditions and actions as
//! JSON), changed actions of server-default rules as `priority_class` -1, and
//! every enabled flag in `push_rules_enable`. They are replayed onto the
//! server-default ruleset here, lowest priority first (each insert goes to
//! the front of its kind), so the order is Synapse's.
//!
//! Key backups: the live versions of `e2e_room_keys_versions` keep their
//! numbers (clients remember the version they back up to) and their etags,
//! with their sessions from `e2e_room_keys`; the version counter is raised
//! past every number Synapse used, deleted versions included, so a new
//! backup never takes an old number.

use myelin_engine::{
    Engine,
    key_backup::{RoomSession, SessionKey},
};
use ruma::{
    OwnedRoomId, OwnedUserId, UserId,
    push::{
        Action, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule, PushCondition, RuleKind,
        Ruleset,
    },
};
use rusqlite::Connection;

use crate::{
    Failure,
    import_synapse::{engine_err, sql},
};

/// What this part of the import did.
#[derive(Debug, Default)]
pub(crate) struct ExtrasReport {
    /// Users whose push rules came over.
    pub push_users: usize,
    /// Rules or flags that could not be applied (malformed, unknown rule).
    pub push_refused: usize,
    /// Backup versions and sessions imported, versions already here.
    pub backup_versions: usize,
    pub backup_sessions: usize,
    pub backup_present: usize,
}

/// One row of `push_rules`: rule id, priority class, conditions, actions.
type RuleRow = (String, i64, String, String);

fn kind_of(rule_id: &str) -> Option<(RuleKind, &str)> {
    let mut parts = rule_id.splitn(3, '/');
    let (_, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((RuleKind::from(kind), id))
}

/// A user rule as Synapse stored it, in the ruleset's terms.
fn new_rule(row: &RuleRow) -> Option<NewPushRule> {
    let (rule_id, class, conditions, actions) = row;
    let (_, id) = kind_of(rule_id)?;
    let conditions: Vec<serde_json::Value> = serde_json::from_str(conditions).ok()?;
    let actions: Vec<Action> = serde_json::from_str(actions).ok()?;
    let pattern = || conditions.first()?.get("pattern")?.as_str().map(str::to_owned);
    let typed = || {
        conditions.iter().map(|c| serde_json::from_value::<PushCondition>(c.clone()).ok()).collect::<Option<Vec<_>>>()
    };
    Some(match class {
        5 => NewPushRule::Override(NewConditionalPushRule::new(id.to_owned(), typed()?, actions)),
        4 => NewPushRule::Content(NewPatternedPushRule::new(id.to_owned(), pattern()?, actions)),
        3 => NewPushRule::Room(NewSimplePushRule::new(OwnedRoomId::try_from(id).ok()?, actions)),
        2 => NewPushRule::Sender(NewSimplePushRule::new(OwnedUserId::try_from(id).ok()?, actions)),
        1 => NewPushRule::Underride(NewConditionalPushRule::new(id.to_owned(), typed()?, actions)),
        _ => return None,
    })
}

async fn push_rules(engine: &Engine, db: &Connection, report: &mut ExtrasReport) -> Result<(), Failure> {
    let mut stmt = db
        .prepare("SELECT user_name FROM push_rules UNION SELECT user_name FROM push_rules_enable ORDER BY user_name")
        .map_err(sql)?;
    let users: Vec<String> = stmt.query_map([], |r| r.get(0)).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
    let mut rules_of = db
        .prepare(
            "SELECT rule_id, priority_class, conditions, actions FROM push_rules WHERE user_name = ?1 \
             ORDER BY priority_class, priority",
        )
        .map_err(sql)?;
    let mut enables_of =
        db.prepare("SELECT rule_id, enabled FROM push_rules_enable WHERE user_name = ?1").map_err(sql)?;
    for user in users {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if !engine.users.exists(&user_id).map_err(engine_err)? {
            continue;
        }
        let mut ruleset = Ruleset::server_default(&user_id);
        let rows: Vec<RuleRow> = rules_of
            .query_map([&user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for row in &rows {
            let applied = if row.1 == -1 {
                // A server-default rule whose actions the user changed.
                let actions = serde_json::from_str::<Vec<Action>>(&row.3).ok();
                match (kind_of(&row.0), actions) {
                    (Some((kind, id)), Some(actions)) => ruleset.set_actions(kind, id, actions).is_ok(),
                    _ => false,
                }
            } else {
                new_rule(row).is_some_and(|rule| ruleset.insert(rule, None, None).is_ok())
            };
            report.push_refused += usize::from(!applied);
        }
        let enables: Vec<(String, bool)> = enables_of
            .query_map([&user], |r| Ok((r.get(0)?, r.get::<_, Option<bool>>(1)?.unwrap_or(true))))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (rule_id, enabled) in enables {
            let applied = kind_of(&rule_id).is_some_and(|(kind, id)| ruleset.set_enabled(kind, id, enabled).is_ok());
            report.push_refused += usize::from(!applied);
        }
        engine.set_push_rules(&user_id, &ruleset).await.map_err(engine_err)?;
        report.push_users += 1;
    }
    Ok(())
}

async fn key_backups(engine: &Engine, db: &Connection, report: &mut ExtrasReport) -> Result<(), Failure> {
    let highest: Option<i64> = db
        .query_row("SELECT max(CAST(version AS INTEGER)) FROM e2e_room_keys_versions", [], |r| r.get(0))
        .map_err(sql)?;
    if let Some(highest) = highest.and_then(|h| u64::try_from(h).ok()) {
        engine.key_backups.reserve_versions(highest).await.map_err(engine_err)?;
    }
    let mut stmt = db
        .prepare(
            "SELECT user_id, CAST(version AS INTEGER), algorithm, auth_data, COALESCE(etag, 0) \
             FROM e2e_room_keys_versions WHERE deleted = 0 ORDER BY user_id, CAST(version AS INTEGER)",
        )
        .map_err(sql)?;
    let versions: Vec<(String, i64, String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    let mut sessions_of = db
        .prepare(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data \
             FROM e2e_room_keys WHERE user_id = ?1 AND CAST(version AS INTEGER) = ?2",
        )
        .map_err(sql)?;
    for (user, version, algorithm, auth_data, etag) in versions {
        let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
        if !engine.users.exists(&user_id).map_err(engine_err)? {
            continue;
        }
        let sessions: Vec<RoomSession> = sessions_of
            .query_map(rusqlite::params![user, version], |r| {
                let key = SessionKey {
                    first_message_index: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    forwarded_count: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    is_verified: r.get(4)?,
                    session_data: r.get(5)?,
                };
                Ok((r.get(0)?, r.get(1)?, key))
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let n = sessions.len();
        let (version, etag) = (u64::try_from(version).unwrap_or(0), u64::try_from(etag).unwrap_or(0));
        let imported = engine
            .key_backups
            .import_version(user_id.as_str(), version, &algorithm, &auth_data, etag, sessions)
            .await
            .map_err(|e| Failure::runtime(format!("key backup {version} of {user}: {e}")))?;
        if imported {
            report.backup_versions += 1;
            report.backup_sessions += n;
        } else {
            report.backup_present += 1;
        }
    }
    Ok(())
}

/// Imports the push rules and key backups of the database's local users.
pub(crate) async fn import(engine: &Engine, db: &Connection) -> Result<ExtrasReport, Failure> {
    let mut report = ExtrasReport::default();
    push_rules(engine, db, &mut report).await?;
    key_backups(engine, db, &mut report).await?;
    Ok(report)
}
