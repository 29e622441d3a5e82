//! Redactions and relations: what changes how an event is served.
//!
//! Client-Server API §"Redactions": once redacted, an event is served with its
//! content stripped by the room version's algorithm and
//! `unsigned.redacted_because`, everywhere. §"Event relationships" and
//! §"Aggregations of child events": events served carry bundled aggregations
//! in `unsigned.m.relations`: `m.replace` (the latest edit by the original
//! sender), `m.thread` (`latest_event`, `count`, `current_user_participated`)
//! and `m.reference` (`chunk` of event ids).
//!
//! Indexes are written in the same batch as the child event: a redaction marks
//! its target; a relation is listed under its target by timeline position.

use myelin_storage::{Batch, Direction, Stored, Table, catalog};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use super::{ArcPdu, Pdu, RoomError, Rooms};

/// One child of an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Relation {
    /// `rel_type`.
    pub rel_type: String,
    /// The child's short event id.
    pub child: u64,
    /// The child's sender.
    pub sender: String,
    /// For annotations: the `key` (the emoji).
    pub key: Option<String>,
}
impl Stored for Relation {}

const REDACTIONS: Table<u64, u64> = Table::new(&catalog::SHORTEVENTID_REDACTION);
const RELATIONS: Table<(u64, i64), Relation> = Table::new(&catalog::TARGETCOUNT_RELATION);
const THREADS: Table<(u64, u64), u64> = Table::new(&catalog::ROOMROOT_THREAD);

/// `content.m.relates_to` of an event: `(rel_type, target event id, key)`.
pub fn relates_to(pdu: &Pdu) -> Option<(String, String, Option<String>)> {
    let content = pdu.content_value();
    let rel = content.get("m.relates_to")?;
    let rel_type = rel.get("rel_type")?.as_str()?.to_owned();
    let target = rel.get("event_id")?.as_str()?.to_owned();
    let key = rel.get("key").and_then(JsonValue::as_str).map(str::to_owned);
    Some((rel_type, target, key))
}

impl Rooms {
    /// Adds the redaction and relation rows of an accepted timeline event to `batch`.
    pub(super) fn index_relations(
        &self,
        batch: &mut Batch,
        pdu: &Pdu,
        short: u64,
        count: i64,
        room: u64,
    ) -> Result<(), RoomError> {
        if let Some(target) = &pdu.redacts
            && let Some(target_short) = self.event_ids.get(&*self.db, target.as_str())?
            && let Some(meta) = self.meta_of_short(target_short)?
            && meta.room == room
        {
            REDACTIONS.put(batch, &target_short, &short)?;
        }
        if let Some((rel_type, target, key)) = relates_to(pdu)
            && let Some(target_short) = self.event_ids.get(&*self.db, &target)?
        {
            let relation = Relation { rel_type: rel_type.clone(), child: short, sender: pdu.sender.to_string(), key };
            RELATIONS.put(batch, &(target_short, count), &relation)?;
            if rel_type == "m.thread" {
                THREADS.put(batch, &(room, target_short), &(count.max(0) as u64))?;
            }
        }
        Ok(())
    }

    /// Adds to `batch` the deletion of every index row naming an event that a
    /// history purge removes: its own relation under its target, the thread it
    /// roots, the relations listed under it and the redaction marking it.
    pub(super) fn unindex_relations(
        &self,
        batch: &mut Batch,
        pdu: &Pdu,
        short: u64,
        count: i64,
        room: u64,
    ) -> Result<(), RoomError> {
        if let Some((_, target, _)) = relates_to(pdu)
            && let Some(target_short) = self.event_ids.get(&*self.db, &target)?
        {
            RELATIONS.delete(batch, &(target_short, count));
        }
        THREADS.delete(batch, &(room, short));
        for row in RELATIONS.prefix(&*self.db, &(short,), Direction::Forward)? {
            let (key, _) = row?;
            RELATIONS.delete(batch, &key);
        }
        REDACTIONS.delete(batch, &short);
        Ok(())
    }

    /// The redaction event of a redacted event.
    pub fn redaction_of(&self, short: u64) -> Result<Option<ArcPdu>, RoomError> {
        match REDACTIONS.get(&*self.db, &short)? {
            Some(r) => self.pdu_by_short(r),
            None => Ok(None),
        }
    }

    /// The children of an event, oldest first: `(count, relation)`.
    pub fn relations_of(&self, short: u64) -> Result<Vec<(i64, Relation)>, RoomError> {
        let mut out = Vec::new();
        for row in RELATIONS.prefix(&*self.db, &(short,), Direction::Forward)? {
            let ((_, count), relation) = row?;
            out.push((count, relation));
        }
        Ok(out)
    }

    /// Thread roots of a room, most recently active first: `(latest count, root short id)`.
    pub fn threads_of(&self, room_short: u64) -> Result<Vec<(i64, u64)>, RoomError> {
        let mut out = Vec::new();
        for row in THREADS.prefix(&*self.db, &(room_short,), Direction::Forward)? {
            let ((_, root), latest) = row?;
            out.push((latest as i64, root));
        }
        out.sort_by(|a, b| b.cmp(a));
        Ok(out)
    }

    /// Whether `sender` already annotated `target` with `key` (and did not redact it).
    pub fn has_annotation(&self, target_short: u64, sender: &str, key: &str) -> Result<bool, RoomError> {
        for (_, r) in self.relations_of(target_short)? {
            if r.rel_type == "m.annotation"
                && r.sender == sender
                && r.key.as_deref() == Some(key)
                && REDACTIONS.get(&*self.db, &r.child)?.is_none()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An event as a client sees it: redacted if it was, with bundled aggregations otherwise.
    pub fn format(&self, pdu: &ArcPdu, with_room_id: bool, now: u64, viewer: &UserId) -> Result<JsonValue, RoomError> {
        self.format_for(pdu, with_room_id, now, viewer, None)
    }

    /// [`Rooms::format`] for one device of the viewer: its own sends carry the
    /// transaction id they were sent with (Client-Server API §"Room event format",
    /// `unsigned.transaction_id`: "if the client being given the event is the same
    /// one which sent it"). Other devices, and other users, never see it.
    pub fn format_for(
        &self,
        pdu: &ArcPdu,
        with_room_id: bool,
        now: u64,
        viewer: &UserId,
        device: Option<&str>,
    ) -> Result<JsonValue, RoomError> {
        let mut ev = self.format_inner(pdu, with_room_id, now, viewer)?;
        if let Some(device) = device
            && pdu.sender == *viewer
            && let Some(short) = self.event_ids.get(&*self.db, pdu.event_id.as_str())?
            && let Some(sent) = super::tables::EVENT_TXNS.get(&*self.db, &short)?
            && sent.device == device
        {
            ev["unsigned"]["transaction_id"] = JsonValue::String(sent.txn);
        }
        Ok(ev)
    }

    fn format_inner(
        &self,
        pdu: &ArcPdu,
        with_room_id: bool,
        now: u64,
        viewer: &UserId,
    ) -> Result<JsonValue, RoomError> {
        let short = self.event_ids.get(&*self.db, pdu.event_id.as_str())?;
        let Some(short) = short else { return Ok(crate::events::client_event(pdu, with_room_id, now)) };
        if let Some(redaction) = self.redaction_of(short)? {
            let rules = self.rules_of_short_room(super::tables::META.get(&*self.db, &short)?.map_or(0, |m| m.room))?;
            let mut redacted = pdu.as_ref().clone();
            let stripped = pdu.redacted_json(&rules)?;
            redacted.content = serde_json::value::to_raw_value(stripped.get("content").unwrap_or(&Default::default()))
                .map_err(|e| RoomError::BadEvent(e.to_string()))?;
            let mut ev = crate::events::client_event(&redacted, with_room_id, now);
            ev["unsigned"]["redacted_because"] = crate::events::client_event(&redaction, with_room_id, now);
            return Ok(ev);
        }
        let mut ev = crate::events::client_event(pdu, with_room_id, now);
        if let Some(state_key) = pdu.state_key.as_deref() {
            // Client-Server API §"Room events": `unsigned.prev_content` is the state
            // this event replaced; clients render "changed their name from …" with it.
            let before = super::tables::META.get(&*self.db, &short)?.map_or(0, |m| m.state_before);
            if before != 0
                && let Some(prev) = self.state_pdu_at(before, &pdu.kind.to_string(), state_key)?
            {
                ev["unsigned"]["prev_content"] = prev.content_value();
                ev["unsigned"]["prev_sender"] = serde_json::json!(prev.sender);
                ev["unsigned"]["replaces_state"] = serde_json::json!(prev.event_id);
            }
        }
        let bundle = self.bundle(pdu, short, with_room_id, now, viewer)?;
        if !bundle.is_empty() {
            ev["unsigned"]["m.relations"] = JsonValue::Object(bundle);
        }
        Ok(ev)
    }

    fn bundle(
        &self,
        pdu: &ArcPdu,
        short: u64,
        with_room_id: bool,
        now: u64,
        viewer: &UserId,
    ) -> Result<serde_json::Map<String, JsonValue>, RoomError> {
        let mut bundle = serde_json::Map::new();
        let (mut edit, mut thread_count, mut thread_latest, mut participated, mut references) =
            (None, 0u64, None, false, Vec::new());
        for (_, r) in self.relations_of(short)? {
            if REDACTIONS.get(&*self.db, &r.child)?.is_some() {
                continue;
            }
            match r.rel_type.as_str() {
                // Only the original sender's edits count.
                "m.replace" if r.sender == pdu.sender.as_str() => edit = Some(r.child),
                "m.thread" => {
                    thread_count += 1;
                    thread_latest = Some(r.child);
                    participated |= r.sender == viewer.as_str();
                }
                "m.reference" => references.push(r.child),
                _ => {}
            }
        }
        if let Some(child) = edit
            && let Some(e) = self.pdu_by_short(child)?
        {
            bundle.insert("m.replace".into(), crate::events::client_event(&e, with_room_id, now));
        }
        if let Some(child) = thread_latest
            && let Some(latest) = self.pdu_by_short(child)?
        {
            participated |= pdu.sender.as_str() == viewer.as_str();
            bundle.insert(
                "m.thread".into(),
                json!({
                    "latest_event": crate::events::client_event(&latest, with_room_id, now),
                    "count": thread_count,
                    "current_user_participated": participated,
                }),
            );
        }
        if !references.is_empty() {
            let mut chunk = Vec::new();
            for child in references {
                if let Some(e) = self.pdu_by_short(child)? {
                    chunk.push(json!({ "event_id": e.event_id }));
                }
            }
            bundle.insert("m.reference".into(), json!({ "chunk": chunk }));
        }
        Ok(bundle)
    }
}
