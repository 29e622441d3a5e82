//! `myelin import synapse`, rooms: every room's event DAG, its state, the
//! local users' invites, room aliases, the public directory and receipts
//! (issue #23 §2).
//!
//! Read from Synapse's database: `rooms` (version, published), `events` with
//! `event_json` (the PDU as Synapse stored it: its `unsigned` is Synapse's
//! own bookkeeping and is not kept; the event id is computed again and an
//! event whose id does not match is left out and counted), `rejections`,
//! `event_to_state_groups` with `state_groups_state` / `state_group_edges`
//! (a state group is the state *after* its event; the chain of deltas is
//! walked back through the edges), `local_current_membership`,
//! `room_aliases`, `receipts_linearized` and, to verify, `current_state_events`.
//!
//! Per room, in Synapse's stream order: an event whose prev events are here
//! is appended and judged by the auth rules here (`Rooms::import_event`);
//! one whose prev events Synapse never had (the join to a room of another
//! server, a gap) gets the state before it from its state group, with the
//! room's outliers as the auth chain (`Rooms::import_gap`); what Synapse
//! backfilled (negative stream orderings) goes before the oldest event.
//! Rooms Synapse holds with a partial state (a faster join not finished)
//! are left out and named. At the end each room's current state is compared
//! with Synapse's `current_state_events`; rooms that differ are named.

use std::collections::{HashMap, HashSet};

use myelin_engine::{
    Engine,
    rooms::{Pdu, RoomError, import::Imported, pdu::event_id_of, version},
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, RoomId, RoomVersionId, UserId,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
};
use rusqlite::{Connection, OptionalExtension};

use crate::{
    Failure,
    import_synapse::{engine_err, sql},
};

/// What the room import did.
#[derive(Debug, Default)]
pub(crate) struct RoomsReport {
    /// Rooms with events written here.
    pub rooms: usize,
    /// Events in the timeline.
    pub timeline: usize,
    /// Events kept outside the timeline (soft-failed, a gap's edge).
    pub hidden: usize,
    /// Events the auth rules here rejected, and how many Synapse had rejected.
    pub rejected: usize,
    pub synapse_rejected: usize,
    /// Events placed before the oldest one (Synapse's backfill).
    pub backfilled: usize,
    /// Outliers stored (a join's state and auth chain).
    pub outliers: usize,
    /// Events already here (an earlier run).
    pub present: usize,
    /// Events left out: unreadable, a wrong event id, or refused here.
    pub unreadable: usize,
    /// Rooms left out, with why.
    pub skipped_rooms: Vec<String>,
    /// Invites and knocks of local users to rooms not held here.
    pub invites: usize,
    pub aliases: usize,
    pub published: usize,
    pub receipts: usize,
    /// Rooms whose current state here is not Synapse's.
    pub state_differs: Vec<String>,
}

/// One event of a room as Synapse stored it.
struct Row {
    stream: i64,
    outlier: bool,
    synapse_rejected: bool,
    pdu: Pdu,
}

/// Parses an `event_json.json` of a room with `rules`; the id must be `event_id`.
fn parse_event(
    event_id: &str,
    json: &str,
    rules: &RoomVersionRules,
) -> Result<(Pdu, Option<CanonicalJsonValue>), String> {
    let mut object: CanonicalJsonObject = serde_json::from_str(json).map_err(|e| format!("not canonical JSON: {e}"))?;
    let unsigned = object.remove("unsigned");
    if rules.event_id_format != EventIdFormatVersion::V1 {
        object.remove("event_id");
    }
    let id = event_id_of(&object, rules).map_err(|e| e.to_string())?;
    if id.as_str() != event_id {
        return Err(format!("its content gives the event id {id}"));
    }
    let pdu = Pdu::parse(id, object, rules).map_err(|e| e.to_string())?;
    Ok((pdu, unsigned))
}

/// A room's events in Synapse's order, and how many of them do not parse.
fn room_rows(db: &Connection, room_id: &str, rules: &RoomVersionRules) -> Result<(Vec<Row>, usize), Failure> {
    let mut stmt = db
        .prepare_cached(
            "SELECT e.event_id, e.stream_ordering, e.outlier, j.json, \
             EXISTS(SELECT 1 FROM rejections r WHERE r.event_id = e.event_id) \
             FROM events e JOIN event_json j ON j.event_id = e.event_id \
             WHERE e.room_id = ?1 ORDER BY e.stream_ordering",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([room_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    let mut unreadable = 0;
    for row in rows {
        let (event_id, stream, outlier, json, synapse_rejected) = row.map_err(sql)?;
        match parse_event(&event_id, &json, rules) {
            Ok((pdu, _)) => out.push(Row { stream, outlier, synapse_rejected, pdu }),
            Err(why) => {
                tracing::warn!(room_id, event_id, why, "left out an event that does not parse");
                unreadable += 1;
            }
        }
    }
    Ok((out, unreadable))
}

/// The rows of each room of `rooms`, in order, read and parsed on a thread of
/// their own with a connection of its own (`synapse-rows`) while the rooms
/// before are imported: reading and parsing is a third of the import's work,
/// and the writer leaves the second core room for it. At most two rooms wait
/// ahead. Without a database file to open again, read on the caller's thread.
struct Prefetch {
    rx: Option<std::sync::mpsc::Receiver<RoomRows>>,
}

/// One room's rows and its count of unparsable ones, or why reading failed.
type RoomRows = Result<(Vec<Row>, usize), Failure>;

impl Prefetch {
    fn start(db: &Connection, rooms: Vec<(OwnedRoomId, RoomVersionRules)>) -> Self {
        let Some(path) = db.path().filter(|p| !p.is_empty()).map(str::to_owned) else { return Self { rx: None } };
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let spawned = std::thread::Builder::new().name("synapse-rows".into()).spawn(move || {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let own = match Connection::open_with_flags(&path, flags) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(sql(e)));
                    return;
                }
            };
            for (room, rules) in rooms {
                if tx.send(room_rows(&own, room.as_str(), &rules)).is_err() {
                    return; // the import stopped
                }
            }
        });
        Self { rx: spawned.is_ok().then_some(rx) }
    }

    /// The next room's rows (the room given at the same place to [`Prefetch::start`]).
    fn next(&self, db: &Connection, room: &RoomId, rules: &RoomVersionRules) -> RoomRows {
        match &self.rx {
            Some(rx) => rx.recv().map_err(|_| Failure::runtime("the Synapse reader thread stopped"))?,
            None => room_rows(db, room.as_str(), rules),
        }
    }
}

/// A state as Synapse records it: `(type, state_key)` → event id.
type SynapseState = HashMap<(String, String), String>;

/// The state after `event_id` as Synapse recorded it.
fn state_after(db: &Connection, event_id: &str) -> Result<Option<SynapseState>, Failure> {
    let group: Option<i64> = db
        .query_row("SELECT state_group FROM event_to_state_groups WHERE event_id = ?1", [event_id], |r| r.get(0))
        .optional()
        .map_err(sql)?;
    let Some(mut group) = group else { return Ok(None) };
    let mut chain = vec![group];
    let mut edge =
        db.prepare_cached("SELECT prev_state_group FROM state_group_edges WHERE state_group = ?1").map_err(sql)?;
    while let Some(prev) = edge.query_row([group], |r| r.get::<_, i64>(0)).optional().map_err(sql)? {
        if chain.contains(&prev) || chain.len() > 100_000 {
            return Err(Failure::runtime(format!("state group {group}: its delta chain loops")));
        }
        chain.push(prev);
        group = prev;
    }
    let mut rows = db
        .prepare_cached("SELECT type, state_key, event_id FROM state_groups_state WHERE state_group = ?1")
        .map_err(sql)?;
    let mut state = HashMap::new();
    // Oldest first: a later delta replaces what an earlier one set.
    for g in chain.iter().rev() {
        let it = rows.query_map([g], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?))).map_err(sql)?;
        for row in it {
            let (slot, id): ((String, String), String) = row.map_err(sql)?;
            state.insert(slot, id);
        }
    }
    Ok(Some(state))
}

/// The state before `pdu`, which Synapse gave a state group but whose prev
/// events it did not have: its state after, with its own slot taken back to
/// what its auth events say was there (the previous membership or power
/// levels), or emptied.
fn state_before(db: &Connection, pdu: &Pdu, by_id: &HashMap<String, usize>, rows: &[Row]) -> Result<Vec<Pdu>, Failure> {
    let Some(mut state) = state_after(db, pdu.event_id.as_str())? else { return Ok(Vec::new()) };
    if let Some(key) = &pdu.state_key {
        let slot = (pdu.kind.to_string(), key.clone());
        if state.get(&slot).is_some_and(|id| id == pdu.event_id.as_str()) {
            let earlier = pdu.auth_events.iter().find(|a| {
                by_id.get(a.as_str()).is_some_and(|&i| {
                    let p = &rows[i].pdu;
                    p.kind.to_string() == slot.0 && p.state_key.as_deref() == Some(slot.1.as_str())
                })
            });
            match earlier {
                Some(a) => state.insert(slot, a.to_string()),
                None => state.remove(&slot),
            };
        }
    }
    Ok(state.values().filter_map(|id| by_id.get(id.as_str()).map(|&i| rows[i].pdu.clone())).collect())
}

/// Appended events handed to the writer before their durability is awaited.
const SETTLE_EVERY: usize = 512;

/// Writes what the writer holds and waits until every appended event is durable.
async fn settle(engine: &Engine, room_id: &RoomId, pending: &mut Vec<myelin_storage::Pending>) -> Result<(), Failure> {
    if pending.is_empty() {
        return Ok(());
    }
    engine.rooms.release_held().map_err(engine_err)?;
    for p in pending.drain(..) {
        engine.rooms.settle(room_id, p).await.map_err(engine_err)?;
    }
    Ok(())
}

fn count(report: &mut RoomsReport, imported: Imported) {
    match imported {
        Imported::Timeline(_) => report.timeline += 1,
        Imported::Hidden(_) => report.hidden += 1,
        Imported::Rejected(_) => report.rejected += 1,
    }
}

/// Imports one room's events; returns whether the room is held here after.
async fn import_room(
    engine: &Engine,
    db: &Connection,
    room_id: &RoomId,
    version: &RoomVersionId,
    (rows, unreadable): (Vec<Row>, usize),
    report: &mut RoomsReport,
) -> Result<bool, Failure> {
    report.unreadable += unreadable;
    let by_id: HashMap<String, usize> = rows.iter().enumerate().map(|(i, r)| (r.pdu.event_id.to_string(), i)).collect();
    let outliers: Vec<Pdu> = rows.iter().filter(|r| r.outlier).map(|r| r.pdu.clone()).collect();
    let rooms = &engine.rooms;
    let mut backfilled = Vec::new();
    let mut pending = Vec::new();
    // A room this server never knew holds exactly what this run put in it, so
    // "already here?" is answered from memory, not with a read per event and
    // per prev event; until a gap stores outliers, which only storage knows.
    let mut fresh = matches!(rooms.current_snapshot(room_id), Err(RoomError::UnknownRoom(_)));
    let mut here: HashSet<ruma::OwnedEventId> = HashSet::new();
    for row in rows.iter().filter(|r| !r.outlier) {
        if row.stream < 0 {
            backfilled.push(row.pdu.clone());
            continue;
        }
        let pdu = row.pdu.clone();
        let held = |id: &ruma::EventId| -> Result<bool, Failure> {
            if fresh { Ok(here.contains(id)) } else { rooms.holds_with_state(id).map_err(engine_err) }
        };
        if held(&pdu.event_id)? {
            report.present += 1;
            continue;
        }
        report.synapse_rejected += usize::from(row.synapse_rejected);
        let mut prevs_here = true;
        for p in &pdu.prev_events {
            prevs_here &= held(p)?;
        }
        let event_id = pdu.event_id.clone();
        let outcome = if prevs_here {
            rooms.import_event_unsettled(version, pdu).await
        } else {
            settle(engine, room_id, &mut pending).await?;
            fresh = false;
            let state = state_before(db, &pdu, &by_id, &rows)?;
            rooms.import_gap(version, pdu, state, outliers.clone()).await.map(|i| (i, None))
        };
        match outcome {
            Ok((imported, handle)) => {
                here.insert(event_id);
                count(report, imported);
                pending.extend(handle);
                if pending.len() >= SETTLE_EVERY {
                    settle(engine, room_id, &mut pending).await?;
                }
            }
            Err(RoomError::Storage(e)) => return Err(engine_err(e)),
            Err(RoomError::InUse(_)) => report.present += 1,
            Err(e) => {
                tracing::warn!(room_id = %room_id, event_id = %row.pdu.event_id, error = %e, "left out an event");
                report.unreadable += 1;
            }
        }
    }
    settle(engine, room_id, &mut pending).await?;
    // Held here: the room has a current state (one never entered has no head).
    let held = match rooms.current_snapshot(room_id) {
        Ok(snapshot) => snapshot != 0,
        Err(RoomError::UnknownRoom(_)) => false,
        Err(e) => return Err(engine_err(e)),
    };
    if held && !backfilled.is_empty() {
        report.backfilled += rooms.store_backfilled(room_id, backfilled).await.map_err(engine_err)?;
    }
    for o in &outliers {
        if rooms.meta(&o.event_id).map_err(engine_err)?.is_some() {
            report.outliers += 1;
        }
    }
    Ok(held)
}

/// Synapse's current state of a room and ours: the event ids, sorted.
fn same_current_state(engine: &Engine, db: &Connection, room_id: &RoomId) -> Result<bool, Failure> {
    let mut stmt = db.prepare_cached("SELECT event_id FROM current_state_events WHERE room_id = ?1").map_err(sql)?;
    let mut theirs: Vec<String> =
        stmt.query_map([room_id.as_str()], |r| r.get(0)).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
    let mut ours: Vec<String> =
        engine.rooms.current_state(room_id).map_err(engine_err)?.iter().map(|p| p.event_id.to_string()).collect();
    theirs.sort();
    ours.sort();
    Ok(theirs == ours)
}

/// Invites and knocks of local users to rooms not held here, with the
/// stripped state Synapse kept in the event's `unsigned`.
async fn outside_memberships(engine: &Engine, db: &Connection, report: &mut RoomsReport) -> Result<(), Failure> {
    let mut stmt = db
        .prepare(
            "SELECT m.room_id, m.user_id, m.membership, j.json, COALESCE(r.room_version, '1'), m.event_id \
             FROM local_current_membership m JOIN event_json j ON j.event_id = m.event_id \
             LEFT JOIN rooms r ON r.room_id = m.room_id WHERE m.membership IN ('invite', 'knock')",
        )
        .map_err(sql)?;
    type Outside = (String, String, String, String, String, String);
    let rows: Vec<Outside> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    for (room, user, membership, json, version, event_id) in rows {
        let (Ok(room_id), Ok(user_id)) = (RoomId::parse(room.as_str()), UserId::parse(user.as_str())) else { continue };
        if engine.rooms.membership(user_id.as_str(), &room_id).map_err(engine_err)?.is_some() {
            continue; // held with the room, or an earlier run
        }
        let Ok(rules) = version::rules(&RoomVersionId::try_from(version.as_str()).unwrap_or(RoomVersionId::V1)) else {
            continue;
        };
        let Ok((pdu, unsigned)) = parse_event(&event_id, &json, &rules) else {
            report.unreadable += 1;
            continue;
        };
        let field = if membership == "invite" { "invite_room_state" } else { "knock_room_state" };
        let stripped: Vec<serde_json::Value> = match unsigned {
            Some(CanonicalJsonValue::Object(u)) => match u.get(field) {
                Some(CanonicalJsonValue::Array(items)) => items.iter().map(|v| v.clone().into()).collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let stored = if membership == "invite" {
            engine.rooms.record_remote_invite(&user_id, pdu, &stripped, &engine.stream).await
        } else {
            engine.rooms.record_remote_knock(&user_id, pdu, &stripped, &engine.stream).await
        };
        stored.map_err(engine_err)?;
        report.invites += 1;
    }
    Ok(())
}

/// Aliases of this server, the published rooms and the receipts, of rooms held here.
async fn directory_and_receipts(
    engine: &Engine,
    db: &Connection,
    server: &str,
    held: &HashSet<OwnedRoomId>,
    report: &mut RoomsReport,
) -> Result<(), Failure> {
    let mut stmt = db.prepare("SELECT room_alias, room_id, creator FROM room_aliases").map_err(sql)?;
    let aliases: Vec<(String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    for (alias, room, creator) in aliases {
        let ours = alias.ends_with(&format!(":{server}"));
        let Ok(room_id) = RoomId::parse(room.as_str()) else { continue };
        if ours && held.contains(&room_id) {
            let created = engine.directory.create(&alias, &room, creator.as_deref().unwrap_or_default()).await;
            report.aliases += usize::from(created.map_err(engine_err)?);
        }
    }
    let mut stmt = db.prepare("SELECT room_id FROM rooms WHERE is_public = 1").map_err(sql)?;
    let public: Vec<String> = stmt.query_map([], |r| r.get(0)).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
    for room in public {
        if RoomId::parse(room.as_str()).is_ok_and(|r| held.contains(&r)) {
            engine.directory.set_public(&room, true).await.map_err(engine_err)?;
            report.published += 1;
        }
    }
    let mut stmt = db
        .prepare(
            "SELECT room_id, receipt_type, user_id, event_id, thread_id FROM receipts_linearized ORDER BY stream_id",
        )
        .map_err(sql)?;
    let receipts: Vec<(String, String, String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    for (room, kind, user, event, thread) in receipts {
        let (Ok(room_id), Ok(user_id)) = (RoomId::parse(room.as_str()), UserId::parse(user.as_str())) else { continue };
        if held.contains(&room_id) {
            engine.set_receipt(&room_id, &user_id, &kind, thread.as_deref(), &event).await.map_err(engine_err)?;
            report.receipts += 1;
        }
    }
    Ok(())
}

/// Imports every room of the database into `engine`.
pub(crate) async fn import(engine: &Engine, db: &Connection, server: &str) -> Result<RoomsReport, Failure> {
    engine.rooms.begin_import();
    let mut report = RoomsReport::default();
    let mut stmt = db.prepare("SELECT room_id, room_version FROM rooms ORDER BY room_id").map_err(sql)?;
    let rooms: Vec<(String, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
    let partial: HashSet<String> = match db.prepare("SELECT room_id FROM partial_state_rooms") {
        Ok(mut s) => s.query_map([], |r| r.get(0)).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?,
        Err(_) => HashSet::new(), // older Synapse: no faster joins
    };
    let mut todo = Vec::new();
    for (room, version) in &rooms {
        let Ok(room_id) = RoomId::parse(room.as_str()) else {
            report.skipped_rooms.push(format!("{room}: not a room id"));
            continue;
        };
        if partial.contains(room) {
            report.skipped_rooms.push(format!("{room}: Synapse holds only a partial state (a join not finished)"));
            continue;
        }
        let version = RoomVersionId::try_from(version.as_deref().unwrap_or("1")).unwrap_or(RoomVersionId::V1);
        let Ok(rules) = version::rules(&version) else {
            report.skipped_rooms.push(format!("{room}: room version {version} is not supported here"));
            continue;
        };
        todo.push((room_id, version, rules));
    }
    let prefetch = Prefetch::start(db, todo.iter().map(|(r, _, rules)| (r.clone(), rules.clone())).collect());
    let started = std::time::Instant::now();
    let mut held = HashSet::new();
    let total = todo.len();
    for (i, (room_id, version, rules)) in todo.iter().enumerate() {
        let room = room_id.to_string();
        let rows = prefetch.next(db, room_id, rules)?;
        if import_room(engine, db, room_id, version, rows, &mut report).await? {
            report.rooms += 1;
            if !same_current_state(engine, db, room_id)? {
                report.state_differs.push(room.clone());
            }
            held.insert(room_id.to_owned());
        }
        let events = report.timeline + report.hidden + report.rejected + report.present;
        let rate = events as f64 / started.elapsed().as_secs_f64().max(0.001);
        let left = (total - i - 1) as f64 * started.elapsed().as_secs_f64() / (i + 1) as f64;
        eprintln!("import: rooms: {}/{total} ({events} events, {rate:.0}/s, about {left:.0} s left)", i + 1);
    }
    outside_memberships(engine, db, &mut report).await?;
    directory_and_receipts(engine, db, server, &held, &mut report).await?;
    Ok(report)
}
