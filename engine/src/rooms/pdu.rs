//! PDUs: the parsed view of a stored event, and the hashing, id and
//! redaction rules that apply to it.
//!
//! Server-Server API §"PDUs" and §"Signing Events": a PDU is stored as the
//! canonical JSON that was hashed and signed (without `unsigned`). Its event
//! id is, per room version (§"Event IDs"): v1–v2, the `event_id` field; v3,
//! `$` + the reference hash in standard unpadded base64; v4+, URL-safe
//! unpadded base64. In room version 12 the create event has no `room_id`: the
//! room id is `!` + the create event's reference hash.
//!
//! A [`Pdu`] is parsed once from those bytes and then shared (`Arc<Pdu>`)
//! through the event cache; hot paths never parse JSON again.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UInt, UserId,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomIdFormatVersion, RoomVersionRules},
};
use serde_json::value::RawValue as RawJsonValue;

use super::RoomError;

/// A parsed, immutable event.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// The event id.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// The origin's timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// `type`.
    pub kind: TimelineEventType,
    /// `content`, raw.
    pub content: Box<RawJsonValue>,
    /// `state_key`, for state events.
    pub state_key: Option<String>,
    /// `prev_events`.
    pub prev_events: Vec<OwnedEventId>,
    /// `auth_events`.
    pub auth_events: Vec<OwnedEventId>,
    /// The event a redaction redacts (top level before v11, in `content` since).
    pub redacts: Option<OwnedEventId>,
    /// `depth`.
    pub depth: u64,
    /// Whether it failed authorization (kept for the DAG, never applied to state).
    pub rejected: bool,
    /// The canonical JSON as stored.
    pub json: Arc<CanonicalJsonObject>,
}

/// Computes the event id of `object` in a room with `rules`.
pub fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, RoomError> {
    match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => {
                EventId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(format!("event_id: {e}")))
            }
            _ => Err(RoomError::BadEvent("missing event_id (room versions 1 and 2)".into())),
        },
        _ => {
            let hash = ruma::signatures::reference_hash(object, rules)
                .map_err(|e| RoomError::BadEvent(format!("reference hash: {e}")))?;
            EventId::parse(format!("${hash}")).map_err(|e| RoomError::BadEvent(format!("event id: {e}")))
        }
    }
}

/// The room id a v12 create event defines.
pub fn room_id_from_create(create_event_id: &EventId) -> Result<OwnedRoomId, RoomError> {
    let hash = create_event_id.as_str().trim_start_matches('$');
    RoomId::parse(format!("!{hash}")).map_err(|e| RoomError::BadEvent(format!("room id from create event: {e}")))
}

fn field_str<'a>(object: &'a CanonicalJsonObject, name: &str) -> Result<&'a str, RoomError> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        Some(_) => Err(RoomError::BadEvent(format!("`{name}` is not a string"))),
        None => Err(RoomError::BadEvent(format!("missing `{name}`"))),
    }
}

fn field_uint(object: &CanonicalJsonObject, name: &str) -> Result<u64, RoomError> {
    match object.get(name) {
        Some(CanonicalJsonValue::Integer(i)) => {
            u64::try_from(i64::from(*i)).map_err(|_| RoomError::BadEvent(format!("`{name}` is negative")))
        }
        _ => Err(RoomError::BadEvent(format!("missing or non-integer `{name}`"))),
    }
}

/// Event references: plain ids (v3+) or `[id, {hashes}]` pairs (v1–v2).
fn event_refs(object: &CanonicalJsonObject, name: &str) -> Result<Vec<OwnedEventId>, RoomError> {
    let Some(CanonicalJsonValue::Array(items)) = object.get(name) else {
        return Err(RoomError::BadEvent(format!("missing or non-array `{name}`")));
    };
    items
        .iter()
        .map(|item| {
            let id = match item {
                CanonicalJsonValue::String(s) => s.as_str(),
                CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(CanonicalJsonValue::String(s)) => s.as_str(),
                    _ => return Err(RoomError::BadEvent(format!("bad reference in `{name}`"))),
                },
                _ => return Err(RoomError::BadEvent(format!("bad reference in `{name}`"))),
            };
            EventId::parse(id).map_err(|e| RoomError::BadEvent(format!("`{name}`: {e}")))
        })
        .collect()
}

impl Pdu {
    /// Parses a stored or received PDU whose id is already known.
    pub fn parse(
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<Self, RoomError> {
        let kind = TimelineEventType::from(field_str(&object, "type")?);
        let room_id = match object.get("room_id") {
            Some(CanonicalJsonValue::String(s)) => {
                RoomId::parse(s.as_str()).map_err(|e| RoomError::BadEvent(format!("room_id: {e}")))?
            }
            None if kind == TimelineEventType::RoomCreate && rules.room_id_format == RoomIdFormatVersion::V2 => {
                room_id_from_create(&event_id)?
            }
            _ => return Err(RoomError::BadEvent("missing or non-string `room_id`".into())),
        };
        let sender =
            UserId::parse(field_str(&object, "sender")?).map_err(|e| RoomError::BadEvent(format!("sender: {e}")))?;
        let ts = field_uint(&object, "origin_server_ts")?;
        let origin_server_ts = MilliSecondsSinceUnixEpoch(UInt::try_from(ts).unwrap_or(UInt::MAX));
        // Server-Server API §"PDUs": `content` is required and an object (found
        // by the PDU fuzz target: a PDU without one used to parse as `{}`).
        let content_value = match object.get("content") {
            Some(value @ CanonicalJsonValue::Object(_)) => value,
            _ => return Err(RoomError::BadEvent("missing or non-object `content`".into())),
        };
        let content =
            serde_json::value::to_raw_value(content_value).map_err(|e| RoomError::BadEvent(format!("content: {e}")))?;
        let state_key = match object.get("state_key") {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            None => None,
            Some(_) => return Err(RoomError::BadEvent("`state_key` is not a string".into())),
        };
        let redacts = if kind == TimelineEventType::RoomRedaction {
            let top = object.get("redacts");
            let inner = match object.get("content") {
                Some(CanonicalJsonValue::Object(c)) => c.get("redacts"),
                _ => None,
            };
            // v11 moved `redacts` into content; read whichever the version uses, then the other.
            let chosen = if rules.redaction.content_field_redacts { inner.or(top) } else { top.or(inner) };
            match chosen {
                Some(CanonicalJsonValue::String(s)) => EventId::parse(s.as_str()).ok(),
                _ => None,
            }
        } else {
            None
        };
        Ok(Self {
            event_id,
            room_id,
            sender,
            origin_server_ts,
            kind,
            content,
            state_key,
            prev_events: event_refs(&object, "prev_events")?,
            auth_events: event_refs(&object, "auth_events")?,
            redacts,
            depth: field_uint(&object, "depth")?,
            rejected: false,
            json: Arc::new(object),
        })
    }

    /// Parses a PDU and computes its event id from the room version.
    pub fn from_object(object: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Self, RoomError> {
        let event_id = event_id_of(&object, rules)?;
        Self::parse(event_id, object, rules)
    }

    /// The canonical JSON bytes that are stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        // The object's map is sorted: serialising it as it is gives the canonical form
        // (what `CanonicalJsonValue::Object(..).to_string()` gives, without a deep copy).
        serde_json::to_vec(&*self.json)
            .unwrap_or_else(|_| CanonicalJsonValue::Object((*self.json).clone()).to_string().into_bytes())
    }

    /// Parses stored bytes.
    pub fn from_bytes(event_id: OwnedEventId, bytes: &[u8], rules: &RoomVersionRules) -> Result<Self, RoomError> {
        let object: CanonicalJsonObject =
            serde_json::from_slice(bytes).map_err(|e| RoomError::BadEvent(format!("stored PDU: {e}")))?;
        Self::parse(event_id, object, rules)
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The event with its content stripped by the room version's redaction algorithm.
    pub fn redacted_json(&self, rules: &RoomVersionRules) -> Result<CanonicalJsonObject, RoomError> {
        ruma::canonical_json::redact((*self.json).clone(), &rules.redaction, None)
            .map_err(|e| RoomError::BadEvent(format!("redaction: {e}")))
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        // A v12 create event has no room_id field; the auth rules check that.
        self.json.contains_key("room_id").then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// What caches hand out; ruma's resolution accepts it directly (`Event for Arc<T>`).
pub type ArcPdu = Arc<Pdu>;

impl Pdu {
    /// About how many bytes this event holds outside its inline size: the
    /// parsed fields and the canonical JSON tree (what a cache of events pays).
    pub fn heap_bytes(&self) -> usize {
        let ids = |v: &[OwnedEventId]| v.iter().map(|e| e.as_str().len() + 8).sum::<usize>();
        self.event_id.as_str().len()
            + self.room_id.as_str().len()
            + self.sender.as_str().len()
            + self.content.get().len()
            + self.state_key.as_ref().map_or(0, String::len)
            + ids(&self.prev_events)
            + ids(&self.auth_events)
            + self.redacts.as_ref().map_or(0, |e| e.as_str().len())
            + json_object_heap(&self.json)
            + 16
    }
}

/// Heap bytes of a canonical JSON object: per member, its key and value
/// inline in a B-tree node (plus a share of the node), and what each owns.
fn json_object_heap(object: &CanonicalJsonObject) -> usize {
    const NODE_SHARE: usize = 16;
    object
        .iter()
        .map(|(k, v)| {
            std::mem::size_of::<String>()
                + std::mem::size_of::<CanonicalJsonValue>()
                + NODE_SHARE
                + k.len()
                + json_heap(v)
        })
        .sum()
}

fn json_heap(value: &CanonicalJsonValue) -> usize {
    match value {
        CanonicalJsonValue::String(s) => s.len(),
        CanonicalJsonValue::Array(a) => {
            a.iter().map(|v| std::mem::size_of::<CanonicalJsonValue>() + json_heap(v)).sum()
        }
        CanonicalJsonValue::Object(o) => json_object_heap(o),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use ruma::{CanonicalJsonValue, RoomVersionId};

    use super::*;

    /// The stored bytes are the canonical form (what is hashed and signed, and what
    /// the federation sender splices into transactions as they are).
    #[test]
    fn stored_bytes_are_the_canonical_form() {
        let json = serde_json::json!({
            "type": "m.room.message",
            "room_id": "!r:x",
            "sender": "@a:x",
            "content": { "body": "é \" \n \u{1} ok", "z": [1, { "b": 2, "a": null }], "msgtype": "m.text" },
            "origin_server_ts": 1,
            "depth": 3,
            "prev_events": ["$p"],
            "auth_events": [],
            "hashes": { "sha256": "x" },
            "signatures": {}
        });
        let object: CanonicalJsonObject = serde_json::from_value(json).unwrap();
        let canonical = CanonicalJsonValue::Object(object.clone()).to_string().into_bytes();
        let pdu = Pdu::from_object(object, &RoomVersionId::V12.rules().unwrap()).unwrap();
        assert_eq!(pdu.to_bytes(), canonical);
    }

    /// A PDU whose `content` is missing or not an object is refused (found by
    /// the PDU fuzz target in `fuzz_tests.rs`).
    #[test]
    fn a_pdu_without_object_content_is_refused() {
        let rules = RoomVersionId::V12.rules().unwrap();
        for content in [None, Some(serde_json::json!(5)), Some(serde_json::json!("x")), Some(serde_json::json!([]))] {
            let mut json = serde_json::json!({
                "type": "m.room.message", "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 1,
                "depth": 3, "prev_events": [], "auth_events": [], "hashes": { "sha256": "x" }, "signatures": {}
            });
            if let Some(content) = content.clone() {
                json["content"] = content;
            }
            let object: CanonicalJsonObject = serde_json::from_value(json).unwrap();
            assert!(Pdu::from_object(object, &rules).is_err(), "content {content:?} was accepted");
        }
    }
}
