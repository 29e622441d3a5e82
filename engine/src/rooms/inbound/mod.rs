//! Events from other servers: signature verification, templates for remote
//! joins, and the append path that records rejected and soft-failed events.
//!
//! Server-Server API §"Checks performed on receipt of a PDU", in order:
//!
//! 1. valid PDU format;
//! 2. valid signatures (else drop);
//! 3. valid hashes (else redact);
//! 4. passes authorization against its auth events (else reject);
//! 5. passes authorization against the state before it (else reject);
//! 6. passes authorization against the current state (else soft-fail).
//!
//! Steps 1–3 are [`Rooms::verify`]; 4–6 are [`Rooms::append_pdu`]. Fetching
//! missing prev/auth events and remote keys belongs to the federation
//! receiver; here every prev event must already be stored.
//!
//! What is recorded: a rejected event is stored with the `REJECTED` flag and
//! the state before it, which is also its state after (it changes no state;
//! no timeline row, no edges, never an extremity), so an event built on it is
//! judged on the state before it instead of on none; a
//! soft-failed event is stored with `SOFT_FAILED`, its state before/after and
//! its edges, but no timeline row and it does not become an extremity, so
//! clients never see it and our next events do not build on it. An outlier
//! is stored with `OUTLIER` only (its place in the DAG is unknown).
//!
//! A state another server reports (a `send_join` answer, `/state_ids` at a
//! missing prev event) goes through step 4 event by event before it is used
//! ([`super::remote_state`]); a remote join is written as one batch.

use std::sync::Arc;

use myelin_storage::{Batch, Raw};
use ruma::{CanonicalJsonObject, RoomId, UserId, room_version_rules::RoomVersionRules, signatures::Verified};

use super::{ArcPdu, Before, NewEvent, Pdu, RoomError, Rooms, StateRef, tables::*};

mod backfill;

/// What happened to an event offered by another server.
#[derive(Debug, Clone)]
pub enum Appended {
    /// Accepted into the timeline and the state.
    Accepted(ArcPdu),
    /// Valid in its own history but not against the current state: stored, hidden.
    SoftFailed(ArcPdu),
    /// Failed authorization: stored as rejected, with the reason.
    Rejected(String),
}

/// Says what the auth rules made of a reported state.
pub(super) fn log_checked(room_id: &RoomId, checked: &super::remote_state::CheckedState) {
    if checked.rejected > 0 || checked.dropped > 0 {
        tracing::warn!(
            room_id = %room_id,
            rejected = checked.rejected,
            dropped = checked.dropped,
            kept = checked.state.len(),
            "a server reported room state that fails the auth rules; those events are not in the state"
        );
    }
}

impl Rooms {
    /// Learns a server's public key (federation feeds this; our own is preloaded).
    pub fn add_server_key(&self, server: &str, key_id: &str, public_b64: &str) -> Result<(), RoomError> {
        let key = ruma::serde::Base64::parse(public_b64).map_err(|e| RoomError::BadEvent(format!("key: {e}")))?;
        self.known_keys.write().entry(server.to_owned()).or_default().insert(key_id.to_owned(), key);
        Ok(())
    }

    /// Steps 1–3 of the receipt checks: format, signatures, hashes.
    ///
    /// `Verified::Signatures` means the content hash does not match: the
    /// event must be redacted before use. An error means: drop it.
    pub fn verify(&self, object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Verified, RoomError> {
        self.verify_with_keys(object, rules, &self.known_keys.read())
    }

    /// [`Rooms::verify`] with the keys given (federation picks the keys valid
    /// at the event's time from its key ring).
    pub fn verify_with_keys(
        &self,
        object: &CanonicalJsonObject,
        rules: &RoomVersionRules,
        keys: &ruma::signatures::PublicKeyMap,
    ) -> Result<Verified, RoomError> {
        ruma::state_res::check_pdu_format(object, &rules.event_format).map_err(RoomError::BadEvent)?;
        ruma::signatures::verify_event(keys, object, rules)
            .map_err(|e| RoomError::BadEvent(format!("signature check failed: {e}")))
    }

    /// An unsigned event for a remote `sender` on the room's current extremities
    /// (the `make_join`/`make_leave` template the remote server signs).
    pub async fn template(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
    ) -> Result<CanonicalJsonObject, RoomError> {
        let lock = self.lock_of(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(room_id).await?);
        }
        let head = guard.as_ref().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let prev = head.extremities.iter().rev().take(20).map(|(_, id)| id.clone()).collect();
        self.unsigned_event(head, sender, &event, prev, &StateRef::Stored(head.state))
    }

    /// Steps 4–6 for a verified event of another server whose prev events are stored.
    pub async fn append_pdu(&self, pdu: Pdu) -> Result<Appended, RoomError> {
        let room_id = pdu.room_id.clone();
        let (appended, pending) = self.append_pdu_unsettled(pdu, false).await?;
        if let Some(pending) = pending {
            self.settle(&room_id, pending).await?;
        }
        Ok(appended)
    }

    /// [`Rooms::append_pdu`] without waiting for an accepted event's batch to be
    /// durable: the caller awaits the returned handle with [`Rooms::settle`] before
    /// acknowledging (a federation transaction settles all its events at once).
    /// With `more_follow` the caller appends more events right after (and calls
    /// [`Rooms::release_held`] when done), so their writes share one disk sync.
    pub async fn append_pdu_unsettled(
        &self,
        pdu: Pdu,
        more_follow: bool,
    ) -> Result<(Appended, Option<myelin_storage::Pending>), RoomError> {
        let room_id = pdu.room_id.clone();
        let lock = self.lock_of(&room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(&room_id).await?);
        }
        let head = guard.as_mut().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        if self.meta(&pdu.event_id)?.is_some() {
            return Err(RoomError::InUse(format!("event {} is already stored", pdu.event_id)));
        }
        // 4./5. Against its auth events and the state before it.
        let before = self.state_before(head, &pdu.prev_events)?;
        if let Err(RoomError::Forbidden(reason)) = self.authorize(&head.rules, &pdu, &before) {
            // Its states are the state before it, so what builds on it has a state.
            self.store_flagged(pdu, REJECTED, Some(before)).await?;
            tracing::info!(room_id = %room_id, reason, "rejected an event that fails authorization");
            return Ok((Appended::Rejected(reason), None));
        }
        // 6. Against the current state (when that is the state before it, step 5 decided).
        let current = StateRef::Stored(head.state);
        let same_state = matches!(before, StateRef::Stored(s) if s == head.state);
        if !same_state && let Err(RoomError::Forbidden(reason)) = self.authorize(&head.rules, &pdu, &current) {
            let stored = self.store_flagged(pdu, SOFT_FAILED, Some(before)).await?;
            tracing::info!(room_id = %room_id, reason, "soft-failed an event that the current state forbids");
            return Ok((Appended::SoftFailed(stored), None));
        }
        let (pdu, pending) = self.append_with(head, pdu, Before::Authorized(before), None, more_follow)?;
        Ok((Appended::Accepted(pdu), Some(pending)))
    }

    /// Ends a run of `more_follow` appends: what the writer holds is written now.
    pub fn release_held(&self) -> Result<(), RoomError> {
        Ok(self.db.release_held()?)
    }

    /// Stores an event whose own prev events are missing here, with the state
    /// before it as another server reported it (Server-Server API §"Retrieving
    /// events": `/state_ids` at the event, then its events), so that the events
    /// built on it can be appended: a gap too large to fetch event by event.
    ///
    /// The state events and their auth chain go through the auth rules first
    /// ([`Rooms::check_remote_state`]: failures are stored rejected and left
    /// out of the state), and are stored as outliers; the event is authorized
    /// against the state kept and kept outside the timeline (rejected when that
    /// state forbids it). Returns whether it passed.
    pub async fn store_with_remote_state(
        &self,
        pdu: Pdu,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
    ) -> Result<bool, RoomError> {
        // Held with a state already: nothing to do. Held as an outlier without
        // one: it gets the state now, keeping what was decided about it.
        let held = self.meta(&pdu.event_id)?;
        if let Some(meta) = &held
            && (meta.state_after != 0 || meta.flags & OUTLIER == 0)
        {
            return Ok(meta.flags & REJECTED == 0);
        }
        let rules = super::version::rules(&self.room_version(&pdu.room_id)?)?;
        let checked = self.check_remote_state(&rules, &pdu.room_id, &state, &auth_chain)?;
        log_checked(&pdu.room_id, &checked);
        let mut batch = Batch::new();
        let room = self.room_ids.get_or_create(&self.db, &mut batch, pdu.room_id.as_str())?;
        let snapshot = self.stage_checked_state(&mut batch, room, &checked)?;
        if let Err(e) = self.db.commit(batch).await {
            self.forget_staged(&checked);
            return Err(e.into());
        }
        let before = StateRef::Stored(snapshot);
        let was_rejected = held.is_some_and(|m| m.flags & REJECTED != 0);
        let allowed = !was_rejected && self.authorize(&rules, &pdu, &before).is_ok();
        let flags = if allowed { OUTLIER } else { OUTLIER | REJECTED };
        self.store_flagged(pdu, flags, Some(before)).await?;
        Ok(allowed)
    }

    /// Stores an event whose place in the DAG is unknown (auth events of a join, say).
    pub async fn store_outlier(&self, pdu: Pdu) -> Result<ArcPdu, RoomError> {
        if self.meta(&pdu.event_id)?.is_some() {
            return self.pdu(&pdu.event_id)?.ok_or_else(|| RoomError::UnknownEvent(pdu.event_id.to_string()));
        }
        self.store_flagged(pdu, OUTLIER, None).await
    }

    /// Stores an event outside the timeline with `flags`; with a `before`
    /// state it also records its states and (unless it is rejected) its edges.
    /// A rejected event's state after is the state before it: it changes no
    /// state, and an event built on it is judged on the state it would have
    /// had without it (as Synapse does), so one rejection does not reject the
    /// branch after it.
    async fn store_flagged(&self, pdu: Pdu, flags: u8, before: Option<StateRef>) -> Result<ArcPdu, RoomError> {
        let mut batch = Batch::new();
        let short = self.event_ids.get_or_create(&self.db, &mut batch, pdu.event_id.as_str())?;
        let room = self.room_ids.get_or_create(&self.db, &mut batch, pdu.room_id.as_str())?;
        let (mut state_before, mut state_after) = (0, 0);
        if let Some(before) = before {
            let hint = match pdu.prev_events.first() {
                Some(first) => self.meta(first)?.map(|m| m.state_after),
                None => None,
            };
            state_before = self.materialize(&mut batch, &before, hint)?;
            let rejected = flags & REJECTED != 0;
            state_after = match &pdu.state_key {
                Some(_) if rejected => state_before,
                Some(key) => {
                    let name = super::state_key_string(&pdu.kind.to_string(), key);
                    let ssk = self.state_keys.get_or_create(&self.db, &mut batch, &name)?;
                    let base = (state_before != 0).then_some(state_before);
                    self.states.store_changed(&mut batch, base, &[(ssk, short)])?
                }
                None => state_before,
            };
            for prev in pdu.prev_events.iter().filter(|_| !rejected) {
                if let Some(p) = self.event_ids.get(&*self.db, prev.as_str())? {
                    EDGES.put(&mut batch, &(p, short), &())?;
                }
            }
        }
        PDUS.put(&mut batch, &short, &Raw(pdu.to_bytes()))?;
        META.put(
            &mut batch,
            &short,
            &EventMeta { room, depth: pdu.depth, count: 0, flags, state_before, state_after },
        )?;
        // An outlier with a state bridges a gap (`store_with_remote_state`):
        // the events before it are not here, and `/messages` must still find
        // them, so backfill starts from it too (`backfill_point`).
        if flags & OUTLIER != 0 && state_after != 0 {
            HOLES.put(&mut batch, &(room, short), &())?;
        }
        self.db.commit(batch).await?;
        let mut pdu = pdu;
        pdu.rejected = flags & REJECTED != 0;
        let pdu = Arc::new(pdu);
        self.pdus.lock().put(short, pdu.clone());
        Ok(pdu)
    }

    /// Enters a room that lives on other servers: the `send_join` answer gives
    /// the room state before our join event and its auth chain. Every one of
    /// those events goes through the auth rules against its own auth events
    /// ([`Rooms::check_remote_state`]); they are stored as outliers (failures
    /// flagged rejected), the state kept becomes the join's state, the join is
    /// authorized against it and becomes the first event of our timeline (its
    /// prev events are the resident server's, which we do not have: a gap
    /// backfill can fill).
    ///
    /// One batch: the outliers, the state, the room's head and the join are
    /// written together or not at all, so a join that fails (refused by the
    /// state, or a failed write) leaves nothing behind and can be tried again.
    pub async fn join_remote(
        &self,
        version: &ruma::RoomVersionId,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
        join: Pdu,
    ) -> Result<ArcPdu, RoomError> {
        let rules = super::version::rules(version)?;
        let room_id = join.room_id.clone();
        let lock = self.lock_of(&room_id);
        let mut guard = lock.lock().await;
        // A room held here already that none of our users is joined to any
        // more (a rejoin): our copy stopped when the last one left, so the
        // resident's state replaces it and the join becomes its only forward
        // extremity; the events missed meanwhile are a gap backfill can fill.
        let mut stale_extremities = Vec::new();
        let mut held = false;
        if let Some(short) = self.short_room(&room_id)?
            && ROOMS.get(&*self.db, &short)?.is_some()
        {
            if guard.is_none() {
                *guard = Some(self.load_head(&room_id).await?);
            }
            let head = guard.as_ref().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
            if head.servers.contains_key(&self.server_name) {
                return Err(RoomError::InUse(format!("{room_id} is already joined here")));
            }
            stale_extremities = head.extremities.iter().map(|(s, _)| *s).collect();
            held = true;
        }
        let mut batch = Batch::new();
        let room = self.room_ids.get_or_create(&self.db, &mut batch, room_id.as_str())?;
        // Events held here already (an invite, say) are read with the room's rules.
        self.versions.lock().insert(room, rules.clone());
        let forget_room = || {
            if !held {
                self.versions.lock().remove(&room);
            }
        };
        // 1. The state and its auth chain through the auth rules.
        let checked = match self.check_remote_state(&rules, &room_id, &state, &auth_chain) {
            Ok(c) => c,
            Err(e) => {
                forget_room();
                return Err(e);
            }
        };
        log_checked(&room_id, &checked);
        let forget = || {
            self.forget_staged(&checked);
            forget_room();
        };
        // 2. The outliers and the state kept, staged in the join's batch.
        let snapshot = match self.stage_checked_state(&mut batch, room, &checked) {
            Ok(s) => s,
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        // 3. The join, authorized against that state, in the same batch.
        let servers = match self.joined_servers(snapshot, None) {
            Ok(s) => s,
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        let mut head = super::Head {
            room_id: room_id.clone(),
            short: room,
            version: version.clone(),
            rules,
            extremities: Vec::new(),
            depth: join.depth,
            state: snapshot,
            servers,
        };
        for stale in &stale_extremities {
            super::tables::EXTREMITIES.delete(&mut batch, &(room, *stale));
        }
        let appended = self.append_in(batch, &mut head, join, Before::Given(StateRef::Stored(snapshot)), None, false);
        let (appended, pending) = match appended {
            Ok(a) => a,
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        *guard = Some(head);
        drop(guard);
        if let Err(e) = self.settle(&room_id, pending).await {
            forget();
            self.unsettled.lock().retain(|_, (_, p)| p.event_id != appended.event_id);
            return Err(e);
        }
        Ok(appended)
    }

    /// Builds and signs an event of a local user on the room's extremities without
    /// appending it (an invite that the invitee's server must co-sign first).
    pub async fn build_event(&self, sender: &UserId, room_id: &RoomId, event: NewEvent) -> Result<Pdu, RoomError> {
        let lock = self.lock_of(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head(room_id).await?);
        }
        let head = guard.as_ref().ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let prev = head.extremities.iter().rev().take(20).map(|(_, id)| id.clone()).collect();
        let state = StateRef::Stored(head.state);
        let pdu = self.build(head, sender, &event, prev, &state)?;
        self.authorize(&head.rules, &pdu, &state)?;
        Ok(pdu)
    }

    /// Records an invite of a local user to a room on another server: the
    /// invite event (as an outlier), the user's membership at a new stream
    /// position (so their `/sync` shows it) and the stripped room state sent with it.
    pub async fn record_remote_invite(
        &self,
        user: &UserId,
        invite: Pdu,
        invite_state: &[serde_json::Value],
        stream: &myelin_storage::StreamCounter,
    ) -> Result<(), RoomError> {
        self.record_outside_membership(user, "invite", invite, invite_state, stream).await
    }

    /// Records that a local user knocked on a room on another server: the knock
    /// (as an outlier), the membership `knock`, and the room's stripped state
    /// as the resident server returned it (shown in `/sync` `rooms.knock`).
    pub async fn record_remote_knock(
        &self,
        user: &UserId,
        knock: Pdu,
        knock_state: &[serde_json::Value],
        stream: &myelin_storage::StreamCounter,
    ) -> Result<(), RoomError> {
        self.record_outside_membership(user, "knock", knock, knock_state, stream).await
    }

    async fn record_outside_membership(
        &self,
        user: &UserId,
        membership: &str,
        invite: Pdu,
        invite_state: &[serde_json::Value],
        stream: &myelin_storage::StreamCounter,
    ) -> Result<(), RoomError> {
        let mut batch = Batch::new();
        let room = self.room_ids.get_or_create(&self.db, &mut batch, invite.room_id.as_str())?;
        let short = self.event_ids.get_or_create(&self.db, &mut batch, invite.event_id.as_str())?;
        if !META.contains(&*self.db, &short)? {
            PDUS.put(&mut batch, &short, &Raw(invite.to_bytes()))?;
            META.put(
                &mut batch,
                &short,
                &EventMeta { room, depth: invite.depth, count: 0, flags: OUTLIER, state_before: 0, state_after: 0 },
            )?;
        }
        let count = stream.next_in(&mut batch) as i64;
        MEMBERSHIPS.put(
            &mut batch,
            &(user.to_string(), room),
            &Membership { membership: membership.into(), count, event: short },
        )?;
        self.bump_memberships_when_durable(&mut batch, user.to_string());
        let mut state = invite_state.to_vec();
        state.push(crate::events::stripped_event(&invite));
        let json = serde_json::to_vec(&state).map_err(|e| RoomError::BadEvent(e.to_string()))?;
        INVITE_STATE.put(&mut batch, &(user.to_string(), invite.room_id.to_string()), &Raw(json))?;
        // A bridge's puppet invited from another server: the bridge must hear of it.
        self.queue_for_appservices(&mut batch, &std::sync::Arc::new(invite), short, count as u64, 0)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Records that a local user declined an invite to a room on another
    /// server: the leave event (as an outlier) when the room's server took
    /// it, the membership `leave` at a new stream position, and the stored
    /// invite state dropped.
    pub async fn record_remote_leave(
        &self,
        user: &UserId,
        room_id: &RoomId,
        leave: Option<Pdu>,
        stream: &myelin_storage::StreamCounter,
    ) -> Result<(), RoomError> {
        let mut batch = Batch::new();
        let room = self.room_ids.get_or_create(&self.db, &mut batch, room_id.as_str())?;
        let key = (user.to_string(), room);
        let event = match leave {
            Some(pdu) => {
                let short = self.event_ids.get_or_create(&self.db, &mut batch, pdu.event_id.as_str())?;
                if !META.contains(&*self.db, &short)? {
                    PDUS.put(&mut batch, &short, &Raw(pdu.to_bytes()))?;
                    META.put(
                        &mut batch,
                        &short,
                        &EventMeta {
                            room,
                            depth: pdu.depth,
                            count: 0,
                            flags: OUTLIER,
                            state_before: 0,
                            state_after: 0,
                        },
                    )?;
                }
                short
            }
            None => MEMBERSHIPS.get(&*self.db, &key)?.map(|m| m.event).unwrap_or(0),
        };
        let count = stream.next_in(&mut batch) as i64;
        MEMBERSHIPS.put(&mut batch, &key, &Membership { membership: "leave".into(), count, event })?;
        self.bump_memberships_when_durable(&mut batch, user.to_string());
        INVITE_STATE.delete(&mut batch, &(user.to_string(), room_id.to_string()));
        self.db.commit(batch).await?;
        Ok(())
    }

    /// The stripped state stored with a federated invite.
    pub fn invite_state(&self, user: &UserId, room_id: &RoomId) -> Result<Option<Vec<serde_json::Value>>, RoomError> {
        match INVITE_STATE.get(&*self.db, &(user.to_string(), room_id.to_string()))? {
            Some(Raw(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
            None => Ok(None),
        }
    }

    /// Marks the room shut down here: nobody local may join or be invited again.
    pub async fn mark_shutdown(&self, room_id: &RoomId, at_ms: u64) -> Result<(), RoomError> {
        let mut batch = Batch::new();
        SHUTDOWN.put(&mut batch, &room_id.to_string(), &at_ms)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Whether an operator shut the room down here.
    pub fn is_shutdown(&self, room_id: &RoomId) -> Result<bool, RoomError> {
        Ok(SHUTDOWN.contains(&*self.db, &room_id.to_string())?)
    }

    /// Whether this server holds the room itself (not only an invite to it).
    pub fn is_local_room(&self, room_id: &RoomId) -> bool {
        matches!(self.short_room(room_id), Ok(Some(short)) if ROOMS.get(&*self.db, &short).ok().flatten().is_some())
    }
}
