//! Events as clients see them (Client-Server API §"Room Events",
//! `ClientEvent` and `StrippedStateEvent`).

use serde_json::{Value as JsonValue, json};

use crate::rooms::Pdu;

/// The client format of an event; `with_room_id` for endpoints outside `/sync`.
pub fn client_event(pdu: &Pdu, with_room_id: bool, now_ms: u64) -> JsonValue {
    let ts = u64::from(pdu.origin_server_ts.0);
    let mut ev = json!({
        "type": pdu.kind.to_string(),
        "content": pdu.content_value(),
        "event_id": pdu.event_id,
        "sender": pdu.sender,
        "origin_server_ts": ts,
        "unsigned": { "age": now_ms.saturating_sub(ts) },
    });
    if let Some(key) = &pdu.state_key {
        ev["state_key"] = json!(key);
    }
    if let Some(redacts) = &pdu.redacts {
        ev["redacts"] = json!(redacts);
    }
    if with_room_id {
        ev["room_id"] = json!(pdu.room_id);
    }
    ev
}

/// The stripped form of a state event (invites, knocks).
pub fn stripped_event(pdu: &Pdu) -> JsonValue {
    json!({
        "type": pdu.kind.to_string(),
        "state_key": pdu.state_key.clone().unwrap_or_default(),
        "content": pdu.content_value(),
        "sender": pdu.sender,
    })
}
