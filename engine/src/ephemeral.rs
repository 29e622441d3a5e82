//! Typing notifications and presence: volatile, in memory only.
//!
//! Client-Server API §"Typing Notifications": a user types in a room until
//! they say they stopped or their `timeout` passes; other members see the
//! `m.typing` ephemeral event in `/sync`. §"Presence": `online`, `offline`,
//! `unavailable` with an optional status message.
//!
//! Typing and presence changes carry their own serial (the `_<n>` part of sync tokens),
//! separate from the durable stream: they are never stored and may be lost
//! on restart, which the spec allows for ephemeral data.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::watch;

/// Longest typing timeout honoured.
pub const MAX_TYPING: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    changed: u64,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// `online`, `offline` or `unavailable`.
    pub state: String,
    /// Optional status message.
    pub status_msg: Option<String>,
    /// When it was last set.
    pub since: Instant,
    /// The serial of the change (shared with typing; in sync tokens).
    pub changed: u64,
}

/// Typing and presence of one server.
pub struct Ephemeral {
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    serial: AtomicU64,
    notify: watch::Sender<u64>,
    presence: Mutex<HashMap<OwnedUserId, Presence>>,
}

impl Default for Ephemeral {
    fn default() -> Self {
        Self::new()
    }
}

impl Ephemeral {
    /// Empty state.
    pub fn new() -> Self {
        let (notify, _) = watch::channel(0);
        Self {
            typing: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            notify,
            presence: Mutex::new(HashMap::new()),
        }
    }

    /// The current typing serial.
    pub fn serial(&self) -> u64 {
        self.serial.load(Ordering::SeqCst)
    }

    /// Wakes when typing changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn bump(&self, room: &RoomId, typing: &mut HashMap<OwnedRoomId, RoomTyping>) {
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        typing.entry(room.to_owned()).or_default().changed = serial;
        self.notify.send_replace(serial);
    }

    /// Starts or stops `user` typing in `room`; a start expires after `timeout`.
    pub fn set_typing(self: &Arc<Self>, room: &RoomId, user: &UserId, typing: bool, timeout: Duration) {
        let timeout = timeout.min(MAX_TYPING);
        let mut all = self.typing.lock();
        let entry = all.entry(room.to_owned()).or_default();
        let was = entry.users.contains_key(user);
        if typing {
            entry.users.insert(user.to_owned(), Instant::now() + timeout);
        } else {
            entry.users.remove(user);
        }
        if was != typing || typing {
            self.bump(room, &mut all);
        }
        drop(all);
        if typing {
            // Tell waiting syncs when the timeout ends, if nothing renewed it.
            let (this, room, user) = (self.clone(), room.to_owned(), user.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(timeout + Duration::from_millis(10)).await;
                let mut all = this.typing.lock();
                let expired =
                    all.get(&room).and_then(|r| r.users.get(&user)).is_some_and(|until| *until <= Instant::now());
                if expired {
                    if let Some(r) = all.get_mut(&room) {
                        r.users.remove(&user);
                    }
                    this.bump(&room, &mut all);
                }
            });
        }
    }

    /// The serial of `room`'s last typing change (0 for none).
    pub fn typing_changed_in(&self, room: &RoomId) -> u64 {
        self.typing.lock().get(room).map_or(0, |r| r.changed)
    }

    /// Who types in `room` now, and the serial of the room's last change.
    pub fn typing_in(&self, room: &RoomId) -> (Vec<OwnedUserId>, u64) {
        let all = self.typing.lock();
        match all.get(room) {
            Some(r) => {
                let now = Instant::now();
                let mut users: Vec<OwnedUserId> =
                    r.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u.clone()).collect();
                users.sort();
                (users, r.changed)
            }
            None => (Vec::new(), 0),
        }
    }

    /// Sets a user's presence.
    pub fn set_presence(&self, user: &UserId, state: &str, status_msg: Option<String>) {
        let mut all = self.presence.lock();
        let changed = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        all.insert(user.to_owned(), Presence { state: state.to_owned(), status_msg, since: Instant::now(), changed });
        drop(all);
        // Wakes long-polling syncs, like a typing change.
        self.notify.send_replace(changed);
    }

    /// Presences set after serial `after` (every known one for 0).
    pub fn presence_since(&self, after: u64) -> Vec<(OwnedUserId, Presence)> {
        self.presence.lock().iter().filter(|(_, p)| p.changed > after).map(|(u, p)| (u.clone(), p.clone())).collect()
    }

    /// A user's presence, if they ever set one since start.
    pub fn presence(&self, user: &UserId) -> Option<Presence> {
        self.presence.lock().get(user).cloned()
    }
}

impl crate::Engine {
    /// A local user's presence changes: kept, shown to appservices, and pushed as an
    /// `m.presence` EDU to the servers sharing a room with the user.
    pub fn set_user_presence(
        &self,
        user: &ruma::UserId,
        state: &str,
        status_msg: Option<String>,
    ) -> Result<(), crate::EngineError> {
        self.ephemeral.set_presence(user, state, status_msg.clone());
        self.push_presence_to_appservices(user);
        let mut item = serde_json::json!({
            "user_id": user,
            "presence": state,
            "last_active_ago": 0,
            "currently_active": state == "online",
        });
        if let Some(m) = status_msg {
            item["status_msg"] = serde_json::json!(m);
        }
        let edu = serde_json::json!({ "edu_type": "m.presence", "content": { "push": [item] } });
        let servers = crate::federation::e2ee::servers_sharing_rooms(self, user)
            .map_err(|e| crate::EngineError::Rooms(e.to_string()))?;
        for server in servers {
            self.federation.queue_edu(&server, edu.clone());
        }
        Ok(())
    }

    /// `/sync?set_presence=`: syncing marks an offline (or never seen) user as
    /// `online` or `unavailable`; `offline` changes nothing (Client-Server API
    /// §"GET /sync": "Controls whether the client is automatically marked as online
    /// by polling this API"). A state the user set themselves otherwise stays.
    pub fn presence_from_sync(&self, user: &ruma::UserId, set_presence: &str) -> Result<(), crate::EngineError> {
        if !self.config.presence.enabled || set_presence == "offline" {
            return Ok(());
        }
        let current = self.ephemeral.presence(user);
        let status = current.as_ref().and_then(|p| p.status_msg.clone());
        match current.as_ref().map(|p| p.state.as_str()) {
            None | Some("offline") => self.set_user_presence(user, set_presence, status),
            Some("online") if set_presence == "unavailable" => self.set_user_presence(user, set_presence, status),
            _ => Ok(()),
        }
    }
}
