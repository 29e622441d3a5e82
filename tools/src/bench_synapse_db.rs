//! `myelin bench synapse-db`: fills a Synapse SQLite database (its schema made
//! by a real Synapse's first start) with generated rooms, for the import
//! benchmark of issue #23 §4 (`benches/import_synapse.sh`).
//!
//! Each room (version 10) gets what a client's `createRoom` makes (create,
//! the creator's join, power levels, public join rules, shared history),
//! `members` more local users joining, then messages round-robin from its
//! members until the room has its share of the events. Every event is real:
//! hashed and signed with the key given, its event id its reference hash,
//! its auth events what the auth rules need. Written as Synapse writes them:
//! `events` (stream orderings from 1), `event_json`, `event_edges`, a state
//! group per state event as a one-row delta on the previous one
//! (`state_groups`, `state_groups_state`, `state_group_edges`),
//! `event_to_state_groups` for every event, `current_state_events`,
//! `local_current_membership`, `rooms` and `users`. One transaction.

use std::{collections::HashMap, path::Path};

use myelin_engine::{keys::ServerKeys, rooms::pdu::event_id_of};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId};
use rusqlite::{Connection, params};
use serde_json::{Value, json};

/// What was written.
pub(crate) struct Generated {
    pub rooms: usize,
    pub events: usize,
    pub users: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("writing the Synapse database: {e}")
}

/// One room's generation state.
struct RoomGen {
    room_id: String,
    prev: String,
    depth: u64,
    /// `(type, state_key)` → event id.
    state: HashMap<(String, String), String>,
    group: i64,
}

/// Writes `rooms` rooms with `members` joined users each and `events` events in all into `database`.
pub(crate) fn generate(
    database: &Path,
    server: &str,
    key_file: &Path,
    rooms: usize,
    members: usize,
    events: usize,
) -> Result<Generated, String> {
    let key_text = std::fs::read_to_string(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let mut parts = key_text.split_whitespace();
    let (_, version, seed) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let seed = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(seed).map_err(|e| format!("key: {e}"))?;
    let server_name = ruma::OwnedServerName::try_from(server).map_err(|e| format!("server name: {e}"))?;
    let keys = ServerKeys::from_seed(server_name, version, seed.as_bytes()).map_err(|e| e.to_string())?;
    let rules = RoomVersionId::V10.rules().ok_or("room version 10 unknown")?;
    let mut db = Connection::open(database).map_err(err)?;
    db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    db.pragma_update(None, "synchronous", "OFF").map_err(err)?;
    let tx = db.transaction().map_err(err)?;
    let mut stream: i64 =
        tx.query_row("SELECT COALESCE(max(stream_ordering), 0) FROM events", [], |r| r.get(0)).map_err(err)?;
    let mut group: i64 =
        tx.query_row("SELECT COALESCE(max(id), 0) FROM state_groups", [], |r| r.get(0)).map_err(err)?;
    let users = rooms * (members + 1);
    {
        let mut add_user = tx
            .prepare(
                "INSERT OR IGNORE INTO users (name, creation_ts, admin, is_guest, deactivated) VALUES (?1, 0, 0, 0, 0)",
            )
            .map_err(err)?;
        for u in 0..users {
            add_user.execute([format!("@gen{u}:{server}")]).map_err(err)?;
        }
        let mut add_room = tx
            .prepare("INSERT INTO rooms (room_id, is_public, creator, room_version) VALUES (?1, 0, ?2, '10')")
            .map_err(err)?;
        let mut add_event = tx
            .prepare(
                "INSERT INTO events (stream_ordering, topological_ordering, event_id, type, room_id, processed, outlier, \
                 depth, origin_server_ts, received_ts, sender, contains_url, instance_name, state_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, 0, ?2, ?6, ?6, ?7, 0, 'master', ?8)",
            )
            .map_err(err)?;
        let mut add_json = tx
            .prepare("INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version) VALUES (?1, ?2, '{}', ?3, 3)")
            .map_err(err)?;
        let mut add_edge = tx
            .prepare("INSERT INTO event_edges (event_id, prev_event_id, room_id, is_state) VALUES (?1, ?2, ?3, 0)")
            .map_err(err)?;
        let mut add_group =
            tx.prepare("INSERT INTO state_groups (id, room_id, event_id) VALUES (?1, ?2, ?3)").map_err(err)?;
        let mut add_group_state = tx
            .prepare("INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(err)?;
        let mut add_group_edge =
            tx.prepare("INSERT INTO state_group_edges (state_group, prev_state_group) VALUES (?1, ?2)").map_err(err)?;
        let mut add_to_group =
            tx.prepare("INSERT INTO event_to_state_groups (event_id, state_group) VALUES (?1, ?2)").map_err(err)?;
        let mut add_current = tx
            .prepare(
                "INSERT INTO current_state_events (event_id, room_id, type, state_key, membership, event_stream_ordering) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(err)?;
        let mut add_local = tx
            .prepare(
                "INSERT INTO local_current_membership (room_id, user_id, event_id, membership, event_stream_ordering) \
                 VALUES (?1, ?2, ?3, 'join', ?4)",
            )
            .map_err(err)?;
        let per_room = events / rooms.max(1);
        let mut written = 0;
        let ts0: u64 = 1_700_000_000_000;
        for r in 0..rooms {
            let room_id = format!("!gen{r}:{server}");
            let creator = format!("@gen{}:{server}", r * (members + 1));
            add_room.execute(params![room_id, creator]).map_err(err)?;
            let mut room =
                RoomGen { room_id: room_id.clone(), prev: String::new(), depth: 0, state: HashMap::new(), group: 0 };
            // Builds, signs and writes one event; returns its id.
            let mut emit = |room: &mut RoomGen,
                            sender: &str,
                            kind: &str,
                            state_key: Option<&str>,
                            content: Value,
                            auth: &[(&str, &str)]|
             -> Result<String, String> {
                room.depth += 1;
                stream += 1;
                let auth_ids: Vec<Value> = auth
                    .iter()
                    .filter_map(|(t, k)| room.state.get(&((*t).to_owned(), (*k).to_owned())).map(|id| json!(id)))
                    .collect();
                let prev: Vec<Value> = if room.prev.is_empty() { vec![] } else { vec![json!(room.prev)] };
                let ts = ts0 + stream as u64;
                let mut event = json!({
                    "auth_events": auth_ids, "content": content, "depth": room.depth, "origin_server_ts": ts,
                    "prev_events": prev, "room_id": room.room_id, "sender": sender, "type": kind,
                });
                if let Some(k) = state_key {
                    event["state_key"] = json!(k);
                }
                let mut object: CanonicalJsonObject = match serde_json::from_value::<CanonicalJsonValue>(event) {
                    Ok(CanonicalJsonValue::Object(o)) => o,
                    _ => return Err("an event that is not canonical JSON".into()),
                };
                keys.hash_and_sign_event(&mut object, &rules).map_err(|e| e.to_string())?;
                let id = event_id_of(&object, &rules).map_err(|e| e.to_string())?.to_string();
                let text = CanonicalJsonValue::Object(object).to_string();
                add_event
                    .execute(params![stream, room.depth as i64, id, kind, room.room_id, ts as i64, sender, state_key])
                    .map_err(err)?;
                add_json.execute(params![id, room.room_id, text]).map_err(err)?;
                if !room.prev.is_empty() {
                    add_edge.execute(params![id, room.prev, room.room_id]).map_err(err)?;
                }
                if let Some(k) = state_key {
                    group += 1;
                    add_group.execute(params![group, room.room_id, id]).map_err(err)?;
                    add_group_state.execute(params![group, room.room_id, kind, k, id]).map_err(err)?;
                    if room.group != 0 {
                        add_group_edge.execute(params![group, room.group]).map_err(err)?;
                    }
                    room.group = group;
                    room.state.insert((kind.to_owned(), k.to_owned()), id.clone());
                }
                add_to_group.execute(params![id, room.group]).map_err(err)?;
                room.prev = id.clone();
                Ok(id)
            };
            let create = [("m.room.create", "")];
            emit(
                &mut room,
                &creator,
                "m.room.create",
                Some(""),
                json!({ "creator": creator, "room_version": "10" }),
                &[],
            )?;
            emit(&mut room, &creator, "m.room.member", Some(&creator), json!({ "membership": "join" }), &create)?;
            let basic = [("m.room.create", ""), ("m.room.member", creator.as_str())];
            let pl = json!({ "users": { creator.clone(): 100 }, "users_default": 0, "events_default": 0, "state_default": 50 });
            emit(&mut room, &creator, "m.room.power_levels", Some(""), pl, &basic)?;
            let admin = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", creator.as_str())];
            emit(&mut room, &creator, "m.room.join_rules", Some(""), json!({ "join_rule": "public" }), &admin)?;
            emit(
                &mut room,
                &creator,
                "m.room.history_visibility",
                Some(""),
                json!({ "history_visibility": "shared" }),
                &admin,
            )?;
            let mut senders = vec![creator.clone()];
            for m in 1..=members {
                let user = format!("@gen{}:{server}", r * (members + 1) + m);
                let auth = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", "")];
                emit(&mut room, &user, "m.room.member", Some(&user), json!({ "membership": "join" }), &auth)?;
                senders.push(user);
            }
            let mut i = 0;
            while (room.depth as usize) < per_room {
                let sender = &senders[i % senders.len()];
                let auth = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender.as_str())];
                let body = json!({ "msgtype": "m.text", "body": format!("message {i} of room {r}") });
                emit(&mut room, sender, "m.room.message", None, body, &auth)?;
                i += 1;
            }
            written += room.depth as usize;
            for ((kind, key), id) in &room.state {
                let so: i64 = tx
                    .query_row("SELECT stream_ordering FROM events WHERE event_id = ?1", [id], |r| r.get(0))
                    .map_err(err)?;
                let membership = (kind == "m.room.member").then_some("join");
                add_current.execute(params![id, room_id, kind, key, membership, so]).map_err(err)?;
                if kind == "m.room.member" {
                    add_local.execute(params![room_id, key, id, so]).map_err(err)?;
                }
            }
            if (r + 1) % 100 == 0 || r + 1 == rooms {
                eprintln!("generate: rooms: {}/{rooms} ({written} events)", r + 1);
            }
        }
        drop((add_room, add_event, add_json, add_edge, add_group, add_group_state, add_group_edge, add_to_group));
        drop((add_current, add_local, add_user));
        tx.commit().map_err(err)?;
        Ok(Generated { rooms, events: written, users })
    }
}
