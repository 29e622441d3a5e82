//! Operator actions that span several parts of the engine: deactivating a
//! user, shutting a room down, forgetting device keys, storage statistics.
//!
//! The admin socket (`myelin admin …`), the Synapse-compatible admin API and
//! the client API's own `/account/deactivate` all call these, so each action
//! has one definition however it is asked for.

use std::collections::BTreeSet;

use ruma::{OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde_json::json;

use crate::{Engine, EngineError, rooms::NewEvent, util::now_ms};

/// What a room shutdown did.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// The local users made to leave.
    pub kicked_users: Vec<String>,
    /// The local aliases removed.
    pub local_aliases: Vec<String>,
}

/// Sizes of the database, per column family.
#[derive(Debug, Clone)]
pub struct StorageStats {
    /// Stored events (all rooms).
    pub events: u64,
    /// `(family, SST bytes, estimated keys)` for every family.
    pub families: Vec<(&'static str, u64, u64)>,
}

impl Engine {
    /// Deactivates a local account, then forgets its device keys and makes
    /// it leave (or decline) every room. The leaves are ordinary events, so
    /// they reach every other server in those rooms through the federation
    /// queue. Returns how many rooms were left.
    ///
    /// The account is closed first, in one write that also records the work
    /// still to do; a crash after it leaves the rest to
    /// [`Engine::finish_deactivations`] at the next start, so a deactivation
    /// never stops half way with the account still usable.
    pub async fn deactivate_user(&self, user: &UserId) -> Result<usize, EngineError> {
        let devices = self.users.deactivate(user).await?;
        let left = self.finish_deactivation(user, &devices).await?;
        tracing::info!(user_id = %user, rooms_left = left, "user deactivated");
        Ok(left)
    }

    /// Finishes the deactivations a stop or crash cut off (run at start).
    /// Returns how many were finished.
    pub async fn finish_deactivations(&self) -> Result<usize, EngineError> {
        let unfinished = self.users.unfinished_deactivations()?;
        for (user, devices) in &unfinished {
            let left = self.finish_deactivation(user, devices).await?;
            tracing::info!(user_id = %user, rooms_left = left, "unfinished deactivation finished");
        }
        Ok(unfinished.len())
    }

    async fn finish_deactivation(&self, user: &UserId, devices: &[String]) -> Result<usize, EngineError> {
        self.forget_device_keys(user, devices).await?;
        let left = self.leave_rooms(user, None).await?;
        self.users.deactivation_finished(user).await?;
        Ok(left)
    }

    /// Deletes the encryption keys of these devices of `user` and tells the
    /// servers sharing a room with them (on deactivation this runs before the
    /// leaves, while they still share one).
    pub async fn forget_device_keys(&self, user: &UserId, devices: &[String]) -> Result<(), EngineError> {
        let mut servers = BTreeSet::new();
        for (room, m) in self.rooms.rooms_of(user.as_str())? {
            if m.membership == "join" {
                servers.extend(self.rooms.joined_servers_now(&room)?);
            }
        }
        servers.remove(self.server_name.as_str());
        let servers: Vec<String> = servers.into_iter().collect();
        for device in devices {
            if self.e2ee.remove_device(user.as_str(), device).await? && !servers.is_empty() {
                let edu = json!({ "edu_type": "m.device_list_update", "content": {
                    "user_id": user, "device_id": device, "stream_id": self.stream.current(),
                    "prev_id": [], "deleted": true,
                }});
                self.rooms.queue_edu(&servers, &edu).await?;
            }
        }
        Ok(())
    }

    /// Shuts a room down here: marks it so no local user can join or be
    /// invited (and remote servers cannot join through us), takes it out of the
    /// public directory, removes its local aliases, and makes every local member
    /// leave; those leaves federate. Says which users were removed.
    pub async fn shutdown_room(&self, room: &RoomId) -> Result<Shutdown, EngineError> {
        self.rooms.mark_shutdown(room, now_ms()).await?;
        self.directory.set_public(room.as_str(), false).await?;
        let mut done = Shutdown::default();
        for alias in self.directory.aliases_of(room.as_str())? {
            self.directory.remove(&alias).await?;
            done.local_aliases.push(alias);
        }
        // A room we never held any state of has no local members to remove.
        let state = match self.rooms.current_state(room) {
            Ok(state) => state,
            Err(crate::rooms::RoomError::UnknownRoom(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let members: Vec<OwnedUserId> = state
            .iter()
            .filter(|p| p.kind == TimelineEventType::RoomMember)
            .filter(|p| matches!(p.content_value()["membership"].as_str(), Some("join" | "invite" | "knock")))
            .filter_map(|p| p.state_key.as_deref().and_then(|k| UserId::parse(k).ok()))
            .filter(|u| u.server_name() == self.server_name)
            .collect();
        for user in members {
            if self.leave_rooms(&user, Some(room)).await? > 0 {
                done.kicked_users.push(user.to_string());
            }
        }
        tracing::info!(room_id = %room, users_removed = done.kicked_users.len(), "room shut down");
        Ok(done)
    }

    /// Sends `user`'s leave to `only`, or to every room they are in, invited to or knocking on.
    async fn leave_rooms(&self, user: &UserId, only: Option<&RoomId>) -> Result<usize, EngineError> {
        let mut left = 0;
        for (room, m) in self.rooms.rooms_of(user.as_str())? {
            if only.is_some_and(|o| o != room) || !matches!(m.membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let leave = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "leave" }));
            match self.rooms.send(user, &room, leave).await {
                Ok(_) => left += 1,
                // One room refusing (e.g. a ban already in place) must not stop the others.
                Err(e) => tracing::warn!(room_id = %room, user_id = %user, error = %e, "could not leave a room"),
            }
        }
        Ok(left)
    }

    /// Counts stored events and measures every column family, after a full
    /// compaction when `compact` is set. Runs off the async runtime.
    pub async fn storage_stats(&self, compact: bool) -> Result<StorageStats, EngineError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            if compact {
                tracing::info!("full compaction requested");
                db.compact_all();
            }
            let events = crate::rooms::stored_event_count(&db)?;
            Ok(StorageStats { events, families: db.family_sizes() })
        })
        .await
        .map_err(|_| EngineError::Task("storage statistics"))?
    }
}
