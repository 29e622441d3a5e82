//! Which appservices an appended event concerns, decided in its append batch.
//!
//! Application Service API §"Pushing events": the homeserver pushes an event
//! to an appservice when its sender or (for member events) its target is in
//! the appservice's user namespaces, its room is in the room namespaces, the
//! room has an alias in the alias namespaces, or one of the appservice's
//! users is joined to the room. The last two depend on the room's state: they
//! are decided on the state after the event and remembered per snapshot.

use myelin_storage::Batch;
use ruma::events::TimelineEventType;

use super::{ArcPdu, RoomError, Rooms, membership_of};
use crate::appservice::{Appservice, queue::QUEUE};

impl Rooms {
    /// Puts a `push_pending` row into `batch` when the event may notify a
    /// local user (someone has a pusher, and the room has a local member other
    /// than the sender or the event invites one), and wakes the push
    /// dispatcher once it is durable.
    pub(super) fn queue_for_push(
        &self,
        batch: &mut Batch,
        pdu: &ArcPdu,
        short: u64,
        count: u64,
        servers: &std::collections::BTreeMap<ruma::OwnedServerName, usize>,
    ) {
        if !self.push_wanted.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let local = servers.get(&self.server_name).copied().unwrap_or(0);
        let others = if pdu.sender.server_name() == self.server_name { local.saturating_sub(1) } else { local };
        let invites_local = pdu.kind == TimelineEventType::RoomMember
            && pdu
                .state_key
                .as_deref()
                .and_then(|k| ruma::UserId::parse(k).ok())
                .is_some_and(|u| u.server_name() == self.server_name);
        if others == 0 && !invites_local {
            return;
        }
        if crate::pushers::dispatch::PENDING.put(batch, &count, &short).is_ok() {
            let wake = self.push_pending.clone();
            batch.on_durable(move || wake.notify_one());
        }
    }

    /// Puts a queue row for every appservice the event concerns into `batch`,
    /// and wakes their senders once it is durable.
    pub(crate) fn queue_for_appservices(
        &self,
        batch: &mut Batch,
        pdu: &ArcPdu,
        short: u64,
        count: u64,
        state_after: u64,
    ) -> Result<(), RoomError> {
        if self.appservices.is_empty() {
            return Ok(());
        }
        let list = self.appservices.all();
        let mut queued = Vec::new();
        for a in list.iter().filter(|a| a.url().is_some()) {
            if self.concerns(a, pdu, short, state_after)? {
                QUEUE.put(batch, &(a.id().to_owned(), count), &short)?;
                queued.push(a.id().to_owned());
            }
        }
        self.appservices.announce(batch, queued);
        Ok(())
    }

    fn concerns(&self, a: &Appservice, pdu: &ArcPdu, short: u64, state_after: u64) -> Result<bool, RoomError> {
        if a.owns_user(pdu.sender.as_str()) || a.owns_room(pdu.room_id.as_str()) {
            return Ok(true);
        }
        if pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref().is_some_and(|k| a.owns_user(k)) {
            return Ok(true);
        }
        if state_after == 0 {
            return Ok(false);
        }
        self.appservices.concerns_state(a.id(), state_after, || self.state_concerns(a, state_after, Some((short, pdu))))
    }

    /// The client form of a stored outlier whose room this server does not hold
    /// (an invite from another server), read from its JSON as received.
    pub fn outlier_client_event(&self, short: u64, now_ms: u64) -> Result<Option<serde_json::Value>, RoomError> {
        let Some(myelin_storage::Raw(bytes)) = super::tables::PDUS.get(&*self.db, &short)? else { return Ok(None) };
        let Some(event_id) = self.event_ids.lookup(&*self.db, short)? else { return Ok(None) };
        let pdu: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| RoomError::BadEvent(e.to_string()))?;
        let ts = pdu.get("origin_server_ts").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let mut event = serde_json::json!({
            "type": pdu.get("type"),
            "content": pdu.get("content"),
            "event_id": event_id,
            "sender": pdu.get("sender"),
            "room_id": pdu.get("room_id"),
            "origin_server_ts": ts,
            "unsigned": { "age": now_ms.saturating_sub(ts) },
        });
        if let Some(key) = pdu.get("state_key") {
            event["state_key"] = key.clone();
        }
        Ok(Some(event))
    }

    /// Whether the room concerns appservice `a` now: the room is in its room
    /// namespaces, or its current state has a joined member or an alias in its
    /// namespaces (for typing, receipts and presence).
    pub fn concerns_appservice(&self, a: &Appservice, room_id: &ruma::RoomId) -> Result<bool, RoomError> {
        if a.owns_room(room_id.as_str()) {
            return Ok(true);
        }
        let snapshot = self.current_snapshot(room_id)?;
        if snapshot == 0 {
            return Ok(false);
        }
        self.appservices.concerns_state(a.id(), snapshot, || self.state_concerns(a, snapshot, None))
    }

    /// Whether the state `snapshot` has a joined member in the appservice's
    /// user namespaces or a canonical alias in its alias namespaces. `pending`
    /// is an event of that state that is not stored yet.
    fn state_concerns(
        &self,
        a: &Appservice,
        snapshot: u64,
        pending: Option<(u64, &ArcPdu)>,
    ) -> Result<bool, RoomError> {
        let state = self.states.load(snapshot)?;
        for (ssk, event) in state.iter() {
            let Some(key) = self.state_keys.lookup(&*self.db, *ssk)? else { continue };
            let Ok((kind, state_key)) = serde_json::from_str::<(String, String)>(&key) else { continue };
            let wanted = match kind.as_str() {
                "m.room.member" => a.owns_user(&state_key),
                "m.room.canonical_alias" => a.has_alias_namespaces(),
                _ => false,
            };
            if !wanted {
                continue;
            }
            let event_pdu = match pending {
                Some((short, pdu)) if short == *event => pdu.clone(),
                _ => match self.pdu_by_short(*event)? {
                    Some(p) => p,
                    None => continue,
                },
            };
            if kind == "m.room.member" {
                if membership_of(&event_pdu).as_deref() == Some("join") {
                    return Ok(true);
                }
            } else {
                let content = event_pdu.content_value();
                let alias = content.get("alias").and_then(serde_json::Value::as_str);
                let alt = content.get("alt_aliases").and_then(serde_json::Value::as_array);
                let alt = alt.into_iter().flatten().filter_map(serde_json::Value::as_str);
                if alias.into_iter().chain(alt).any(|al| a.owns_alias(al)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}
