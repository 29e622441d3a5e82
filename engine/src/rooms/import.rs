//! Another server's rooms brought into this one (`myelin import synapse`,
//! issue #23 §2): every event goes through the same checks as an event
//! received over federation, so what is stored here is what Myelin itself
//! would have decided, not what the other server's database claims.
//!
//! The importer hands events over in the order the other server stored them
//! (Synapse's stream order: an event after its prev events, except where the
//! other server had a gap):
//!
//! - the create event starts the room ([`Rooms::import_event`]);
//! - an event whose prev events are here is appended with Server-Server API
//!   §"Checks performed on receipt of a PDU" steps 4–6 (auth events, state
//!   before it, current state): accepted, soft-failed or rejected;
//! - an event whose prev events are not here (a join to a room that lives on
//!   another server, or a gap the other server bridged with `/state_ids`) is
//!   given the state before it as the other server knew it, and that state
//!   and its auth chain go through the auth rules first
//!   ([`Rooms::import_gap`], the path of a federated join or of a gap);
//! - history the other server backfilled goes before the room's oldest event
//!   ([`Rooms::store_backfilled`]).
//!
//! Signatures are not checked again: the other server checked them on
//! receipt, and the keys of servers long gone may not be fetchable. While an
//! engine imports ([`Rooms::begin_import`]), appended events are queued to no
//! other server, no appservice and no pusher: they are history, already
//! delivered once.

use std::sync::atomic::Ordering;

use myelin_storage::Batch;
use ruma::{RoomVersionId, events::TimelineEventType};

use super::{Appended, ArcPdu, Before, Head, Pdu, RoomError, Rooms, tables::*, version};

/// What an imported event became here.
#[derive(Debug, Clone)]
pub enum Imported {
    /// In the timeline and the state.
    Timeline(ArcPdu),
    /// Stored outside the timeline: soft-failed, or the edge of a gap.
    Hidden(ArcPdu),
    /// Failed authorization, with the reason.
    Rejected(String),
}

impl From<Appended> for Imported {
    fn from(a: Appended) -> Self {
        match a {
            Appended::Accepted(p) => Self::Timeline(p),
            Appended::SoftFailed(p) => Self::Hidden(p),
            Appended::Rejected(r) => Self::Rejected(r),
        }
    }
}

impl Rooms {
    /// Queues a stored timeline event of ours for `destinations`, as if just
    /// sent (an imported server's undelivered federation); false if the event
    /// is not in a timeline here.
    pub async fn queue_imported(&self, event_id: &ruma::EventId, destinations: &[String]) -> Result<bool, RoomError> {
        let Some(short) = self.short_event(event_id)? else { return Ok(false) };
        let Some(meta) = self.meta_of_short(short)? else { return Ok(false) };
        if meta.count <= 0 || meta.flags & PURGED != 0 {
            return Ok(false);
        }
        let mut batch = Batch::new();
        self.queue_rows(&mut batch, destinations, meta.count as u64, &OutboundItem::Pdu(short))?;
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Marks this engine as importing: appends are delivered nowhere.
    pub fn begin_import(&self) {
        self.importing.store(true, Ordering::Relaxed);
    }

    /// Whether appends are imports (see [`Rooms::begin_import`]).
    pub(super) fn is_importing(&self) -> bool {
        self.importing.load(Ordering::Relaxed)
    }

    /// Whether an event is here with a place in the DAG: an event built on it
    /// can be appended ([`Rooms::import_event`]) rather than bridged as a gap.
    pub fn holds_with_state(&self, event_id: &ruma::EventId) -> Result<bool, RoomError> {
        Ok(self.meta(event_id)?.is_some_and(|m| m.count != 0 || m.state_after != 0 || m.flags & REJECTED != 0))
    }

    /// Imports an event whose prev events are here, or the create event of a
    /// room not held here yet; `Err(InUse)` if it is stored already.
    pub async fn import_event(&self, version: &RoomVersionId, pdu: Pdu) -> Result<Imported, RoomError> {
        if pdu.kind != TimelineEventType::RoomCreate || !pdu.prev_events.is_empty() {
            return Ok(self.append_pdu(pdu).await?.into());
        }
        let room_id = pdu.room_id.clone();
        let rules = version::rules(version)?;
        let lock = self.lock_of(&room_id);
        let mut guard = lock.lock().await;
        if let Some(short) = self.short_room(&room_id)?
            && ROOMS.get(&*self.db, &short)?.is_some()
        {
            return Err(RoomError::InUse(format!("room {room_id} is already here")));
        }
        let mut head = Head {
            room_id: room_id.clone(),
            short: 0,
            version: version.clone(),
            rules,
            extremities: Vec::new(),
            depth: 0,
            state: 0,
            servers: Default::default(),
        };
        let mut batch = Batch::new();
        let staged = self.stage(&mut batch, &mut head, pdu, Before::FromPrevs, None)?;
        let short = staged.short;
        let pending = match self.db.submit_pending(batch) {
            Ok(p) => p,
            Err(e) => {
                self.unstage(&[short]);
                return Err(e.into());
            }
        };
        let pdu = self.apply(&mut head, staged);
        *guard = Some(head);
        drop(guard);
        self.settle(&room_id, pending).await?;
        Ok(Imported::Timeline(pdu))
    }

    /// [`Rooms::import_event`] without waiting for an accepted event's batch to
    /// be durable: the importer appends many events and settles them
    /// together ([`Rooms::release_held`], then [`Rooms::settle`] on each
    /// handle), so a room's history is not written one disk sync per event.
    pub async fn import_event_unsettled(
        &self,
        version: &RoomVersionId,
        pdu: Pdu,
    ) -> Result<(Imported, Option<myelin_storage::Pending>), RoomError> {
        if pdu.kind == TimelineEventType::RoomCreate && pdu.prev_events.is_empty() {
            return Ok((self.import_event(version, pdu).await?, None));
        }
        let (appended, pending) = self.append_pdu_unsettled(pdu, true).await?;
        Ok((appended.into(), pending))
    }

    /// Imports an event whose prev events are not here, on the `state` before
    /// it (with `auth_chain`, the events that state's events cite). In a room
    /// none of our users is joined to (held or not: a join, a rejoin) it
    /// enters the timeline as a federated join does; in a room we are in (a
    /// gap the other server bridged) it is kept outside the timeline with that
    /// state, as a gap from federation is, and what follows builds on it.
    pub async fn import_gap(
        &self,
        version: &RoomVersionId,
        pdu: Pdu,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
    ) -> Result<Imported, RoomError> {
        let joined_here = match self.short_room(&pdu.room_id)? {
            Some(short) if ROOMS.get(&*self.db, &short)?.is_some() => {
                let lock = self.lock_of(&pdu.room_id);
                let mut guard = lock.lock().await;
                if guard.is_none() {
                    *guard = Some(self.load_head(&pdu.room_id).await?);
                }
                guard.as_ref().is_some_and(|h| h.servers.contains_key(&self.server_name))
            }
            _ => false,
        };
        if joined_here {
            let event_id = pdu.event_id.clone();
            return Ok(if self.store_with_remote_state(pdu, state, auth_chain).await? {
                Imported::Hidden(self.pdu(&event_id)?.ok_or(RoomError::UnknownEvent(event_id.to_string()))?)
            } else {
                Imported::Rejected("the state before it forbids it".into())
            });
        }
        match self.join_remote(version, state, auth_chain, pdu).await {
            Ok(pdu) => Ok(Imported::Timeline(pdu)),
            // Not stored: a join refused by its state leaves nothing behind.
            Err(RoomError::Forbidden(reason)) => Ok(Imported::Rejected(reason)),
            Err(e) => Err(e),
        }
    }
}
