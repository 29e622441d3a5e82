//! Event filters as `/sync`, `/messages` and `/context` apply them.
//!
//! Client-Server API §"Filtering", `RoomEventFilter`: "`types`: A list of event
//! types to include. If this list is absent then all event types are included.
//! A `'*'` can be used as a wildcard to match any sequence of characters.
//! `not_types`: A list of event types to exclude… takes precedence… `senders`,
//! `not_senders`, `rooms`, `not_rooms`… `contains_url`: If `true`, includes only
//! events with a `url` key in their content. If `false`, excludes those events."
//! And `Filter.event_fields`: "List of event fields to include… A literal `.`
//! character in a field name may be escaped using a `\`." The API parses the
//! JSON; this module holds what was asked and answers for each event.

use serde_json::{Map, Value as JsonValue};

use crate::rooms::Pdu;

/// One `RoomEventFilter` (or `EventFilter`: the room fields stay unset).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Most events (None: the endpoint's default).
    pub limit: Option<usize>,
    /// Only these types (glob patterns); None: all.
    pub types: Option<Vec<String>>,
    /// Never these types (glob patterns).
    pub not_types: Vec<String>,
    /// Only these senders; None: all.
    pub senders: Option<Vec<String>>,
    /// Never these senders.
    pub not_senders: Vec<String>,
    /// Only these rooms; None: all.
    pub rooms: Option<Vec<String>>,
    /// Never these rooms.
    pub not_rooms: Vec<String>,
    /// Only events with (`true`) or without (`false`) a `content.url`.
    pub contains_url: Option<bool>,
}

impl EventFilter {
    /// Whether an event of `kind` sent by `sender` passes the type and sender rules.
    pub fn passes(&self, kind: &str, sender: &str) -> bool {
        if self.not_types.iter().any(|t| glob(t, kind)) || self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        self.types.as_ref().is_none_or(|t| t.iter().any(|p| glob(p, kind)))
            && self.senders.as_ref().is_none_or(|s| s.iter().any(|x| x == sender))
    }

    /// Whether `pdu` passes every rule of the filter.
    pub fn matches(&self, pdu: &Pdu) -> bool {
        if !self.passes(&pdu.kind.to_string(), pdu.sender.as_str()) || !self.allows_room(pdu.room_id.as_str()) {
            return false;
        }
        match self.contains_url {
            Some(want) => pdu.content_value().get("url").is_some_and(JsonValue::is_string) == want,
            None => true,
        }
    }

    /// Whether the room rules let `room` through.
    pub fn allows_room(&self, room: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room) && self.rooms.as_ref().is_none_or(|r| r.iter().any(|x| x == room))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut tail) = text.strip_prefix(head) else { return false };
    let parts: Vec<&str> = rest.split('*').collect();
    let (middle, last) = parts.split_at(parts.len() - 1);
    for part in middle {
        match tail.find(part) {
            Some(i) => tail = &tail[i + part.len()..],
            None => return false,
        }
    }
    tail.len() >= last[0].len() && tail.ends_with(last[0])
}

/// Keeps only `fields` (dotted paths, `\.` a literal dot) of a client event.
pub fn only_fields(event: &JsonValue, fields: &[String]) -> JsonValue {
    let mut out = Map::new();
    for field in fields {
        let path = split_path(field);
        if let Some(value) = lookup(event, &path) {
            insert(&mut out, &path, value.clone());
        }
    }
    JsonValue::Object(out)
}

fn split_path(field: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => parts.last_mut().map_or((), |p| p.push(next)),
                None => parts.last_mut().map_or((), |p| p.push('\\')),
            },
            '.' => parts.push(String::new()),
            _ => parts.last_mut().map_or((), |p| p.push(c)),
        }
    }
    parts
}

fn lookup<'a>(value: &'a JsonValue, path: &[String]) -> Option<&'a JsonValue> {
    path.iter().try_fold(value, |v, key| v.as_object()?.get(key))
}

fn insert(out: &mut Map<String, JsonValue>, path: &[String], value: JsonValue) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = out;
    for key in parents {
        let entry = at.entry(key.clone()).or_insert_with(|| JsonValue::Object(Map::new()));
        let JsonValue::Object(next) = entry else { return };
        at = next;
    }
    at.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_any_run_of_characters() {
        for (p, t, want) in [
            ("m.room.*", "m.room.message", true),
            ("m.room.*", "m.roo", false),
            ("*", "", true),
            ("*.message", "m.room.message", true),
            ("m.*.message", "m.room.message", true),
            ("m.*.name", "m.room.message", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("m.room.message", "m.room.message", true),
            ("m.room.message", "m.room.messages", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn only_fields_keeps_the_named_paths_and_escaped_dots() {
        let ev = json!({
            "type": "m.room.message",
            "content": { "body": "hi", "msgtype": "m.text", "a.b": 1 },
            "sender": "@a:x",
            "unsigned": { "age": 5 },
        });
        let fields = ["type".to_owned(), "content.body".to_owned(), "content.a\\.b".to_owned(), "nope.x".to_owned()];
        assert_eq!(
            only_fields(&ev, &fields),
            json!({ "type": "m.room.message", "content": { "body": "hi", "a.b": 1 } })
        );
    }

    #[test]
    fn not_types_and_not_senders_win() {
        let f = EventFilter {
            types: Some(vec!["m.*".into()]),
            not_types: vec!["m.room.member".into()],
            senders: Some(vec!["@a:x".into(), "@b:x".into()]),
            not_senders: vec!["@b:x".into()],
            ..EventFilter::default()
        };
        assert!(f.passes("m.room.message", "@a:x"));
        assert!(!f.passes("m.room.member", "@a:x"));
        assert!(!f.passes("m.room.message", "@b:x"));
        assert!(!f.passes("m.room.message", "@c:x"));
        assert!(!f.passes("org.other", "@a:x"));
    }
}
