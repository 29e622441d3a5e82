//! Building new events: prev events, auth events, depth, then hashes and
//! our signature (Server-Server API §"Signing Events").
//!
//! Room versions 1 and 2 (event ids chosen by the origin, `[id, hash]`
//! references) are read but not built: we neither create rooms in them nor,
//! as a ruma-based server, should we advertise them.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, Int, OwnedEventId, UserId,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion},
    state_res,
};

use super::{Head, NewEvent, Pdu, RoomError, Rooms, StateRef, now_ms};

impl Rooms {
    /// Builds, hashes and signs a new event of ours.
    pub(super) fn build(
        &self,
        head: &Head,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Vec<OwnedEventId>,
        state: &StateRef,
    ) -> Result<Pdu, RoomError> {
        if sender.server_name() != self.server_name {
            return Err(RoomError::Forbidden(format!("{sender} is not a user of this server")));
        }
        let mut object = self.unsigned_event(head, sender, event, prev_events, state)?;
        self.keys.hash_and_sign_event(&mut object, &head.rules).map_err(|e| RoomError::BadEvent(e.to_string()))?;
        Pdu::from_object(object, &head.rules)
    }

    /// The event as JSON, before hashes and signatures.
    pub(super) fn unsigned_event(
        &self,
        head: &Head,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Vec<OwnedEventId>,
        state: &StateRef,
    ) -> Result<CanonicalJsonObject, RoomError> {
        let rules = &head.rules;
        if rules.event_id_format == EventIdFormatVersion::V1
            || rules.events_reference_format == EventsReferenceFormatVersion::V1
        {
            return Err(RoomError::UnsupportedVersion(format!(
                "{} (sending needs room version 3 or later)",
                head.version
            )));
        }
        let content_raw = serde_json::value::to_raw_value(&event.content)
            .map_err(|e| RoomError::BadEvent(format!("content: {e}")))?;
        let auth_types = state_res::auth_types_for_event(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(RoomError::BadEvent)?;
        let mut auth_events = Vec::new();
        for (kind, key) in auth_types {
            if let Some(p) = self.state_pdu(state, &kind.to_string(), &key)? {
                auth_events.push(p.event_id.clone());
            }
        }
        let mut depth = 0;
        for prev in &prev_events {
            let meta = self.meta(prev)?.ok_or_else(|| RoomError::UnknownEvent(prev.to_string()))?;
            depth = depth.max(meta.depth);
        }
        // Built canonical directly: the content is converted once, nothing else is.
        let not_canonical = |e: String| RoomError::BadEvent(format!("not canonical JSON: {e}"));
        let text = |s: String| CanonicalJsonValue::String(s);
        let int = |n: u64| Int::try_from(n).map(CanonicalJsonValue::Integer).map_err(|e| not_canonical(e.to_string()));
        let ids = |ids: &[OwnedEventId]| CanonicalJsonValue::Array(ids.iter().map(|id| text(id.to_string())).collect());
        let mut content =
            ruma::canonical_json::to_canonical_value(&event.content).map_err(|e| not_canonical(e.to_string()))?;
        let mut object = CanonicalJsonObject::new();
        object.insert("type".into(), text(event.kind.to_string()));
        object.insert("sender".into(), text(sender.to_string()));
        object.insert("origin_server_ts".into(), int(event.origin_server_ts.unwrap_or_else(now_ms))?);
        object.insert("prev_events".into(), ids(&prev_events));
        object.insert("auth_events".into(), ids(&auth_events));
        object.insert("depth".into(), int(depth + 1)?);
        let is_create = event.kind == TimelineEventType::RoomCreate;
        if !(is_create && rules.room_id_format == ruma::room_version_rules::RoomIdFormatVersion::V2) {
            object.insert("room_id".into(), text(head.room_id.to_string()));
        }
        if let Some(key) = &event.state_key {
            object.insert("state_key".into(), text(key.clone()));
        }
        if let Some(redacts) = &event.redacts {
            if rules.redaction.content_field_redacts {
                let CanonicalJsonValue::Object(fields) = &mut content else {
                    return Err(RoomError::BadEvent("a redaction's content must be an object".into()));
                };
                fields.insert("redacts".into(), text(redacts.to_string()));
            } else {
                object.insert("redacts".into(), text(redacts.to_string()));
            }
        }
        object.insert("content".into(), content);
        Ok(object)
    }
}
