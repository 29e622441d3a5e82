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
    /// When it was last set (for remote users: last pushed by their server).
    pub since: Instant,
    /// When the user last did something that shows a person at the keyboard
    /// (`last_active_ago` is counted from here).
    pub last_active: Instant,
    /// The serial of the change (shared with typing; in sync tokens).
    pub changed: u64,
}

/// How long presence lasts without the activity that keeps it (Synapse's
/// `SYNC_ONLINE_TIMEOUT`, `IDLE_TIMER` and `FEDERATION_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceTimeouts {
    /// A local user with no sync in flight for this long goes `offline`.
    pub offline_after: Duration,
    /// A local `online` user not active for this long goes `unavailable`.
    pub idle_after: Duration,
    /// A remote user whose server pushed nothing for this long goes `offline`.
    pub remote_offline_after: Duration,
}

/// A local user's `/sync` requests that count for presence.
struct Syncing {
    in_flight: u32,
    last_end: Instant,
}

/// Held while a `/sync` that keeps its user online is in flight.
pub struct SyncGuard {
    ephemeral: Arc<Ephemeral>,
    user: OwnedUserId,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let mut syncing = self.ephemeral.syncing.lock();
        if let Some(s) = syncing.get_mut(&self.user) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_end = Instant::now();
        }
    }
}

/// A local user's presence change the timeouts decided (to be told to other
/// servers and appservices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// Whose presence changes.
    pub user: OwnedUserId,
    /// `offline` or `unavailable`.
    pub state: &'static str,
    /// The status message, kept.
    pub status_msg: Option<String>,
}

/// Remote users whose presence one server may have kept here at once.
pub const MAX_REMOTE_PRESENCE_PER_SERVER: usize = 10_000;
/// Remote users whose presence is kept here at once, all servers together.
pub const MAX_REMOTE_PRESENCE: usize = 50_000;

/// Typing and presence of one server.
pub struct Ephemeral {
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    serial: AtomicU64,
    notify: watch::Sender<u64>,
    presence: Mutex<HashMap<OwnedUserId, Presence>>,
    /// Per remote server, how many of its users `presence` holds (locked after `presence`).
    remote_presence: Mutex<HashMap<ruma::OwnedServerName, usize>>,
    syncing: Mutex<HashMap<OwnedUserId, Syncing>>,
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
            remote_presence: Mutex::new(HashMap::new()),
            syncing: Mutex::new(HashMap::new()),
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

    /// Sets a user's presence; `online` counts as activity.
    pub fn set_presence(&self, user: &UserId, state: &str, status_msg: Option<String>) {
        self.put_presence(user, state, status_msg, None);
    }

    /// Sets a remote user's presence as their server pushed it, with how long ago
    /// the user was last active there. A user not yet known is dropped (and
    /// counted) while their server has [`MAX_REMOTE_PRESENCE_PER_SERVER`] users
    /// here, or all servers [`MAX_REMOTE_PRESENCE`]: a server cannot grow this
    /// map by naming ever new users. Returns whether it was kept.
    pub fn set_remote_presence(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<String>,
        last_active_ago: Option<Duration>,
    ) -> bool {
        {
            let all = self.presence.lock();
            if !all.contains_key(user) {
                let mut counts = self.remote_presence.lock();
                let total: usize = counts.values().sum();
                let of_server = counts.get(user.server_name()).copied().unwrap_or(0);
                if of_server >= MAX_REMOTE_PRESENCE_PER_SERVER || total >= MAX_REMOTE_PRESENCE {
                    metrics::counter!("myelin_presence_remote_dropped_total").increment(1);
                    return false;
                }
                *counts.entry(user.server_name().to_owned()).or_insert(0) += 1;
            }
        }
        let now = Instant::now();
        let last_active = last_active_ago.map(|ago| now.checked_sub(ago).unwrap_or(now));
        self.put_presence(user, state, status_msg, Some(last_active.unwrap_or(now)));
        true
    }

    fn put_presence(&self, user: &UserId, state: &str, status_msg: Option<String>, last_active: Option<Instant>) {
        let now = Instant::now();
        let mut all = self.presence.lock();
        let previous = all.get(user).map(|p| p.last_active);
        let last_active = match last_active {
            Some(at) => at,
            None if state == "online" => now,
            None => previous.unwrap_or(now),
        };
        let changed = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        all.insert(user.to_owned(), Presence { state: state.to_owned(), status_msg, since: now, last_active, changed });
        drop(all);
        // Wakes long-polling syncs, like a typing change.
        self.notify.send_replace(changed);
    }

    /// The user did something only a person does (sent an event, a receipt):
    /// `last_active` moves to now. Returns the presence to set when that brings
    /// the user back: `unavailable` becomes `online` (as Synapse's
    /// `bump_presence_active_time`).
    pub fn mark_active(&self, user: &UserId) -> Option<Option<String>> {
        let mut all = self.presence.lock();
        let p = all.get_mut(user)?;
        p.last_active = Instant::now();
        (p.state == "unavailable").then(|| p.status_msg.clone())
    }

    /// A `/sync` of `user` that keeps them online is in flight until the guard drops.
    pub fn sync_started(self: &Arc<Self>, user: &UserId) -> SyncGuard {
        let mut syncing = self.syncing.lock();
        let entry = syncing.entry(user.to_owned()).or_insert(Syncing { in_flight: 0, last_end: Instant::now() });
        entry.in_flight += 1;
        SyncGuard { ephemeral: self.clone(), user: user.to_owned() }
    }

    /// Applies the timeouts at `now`: remote users their server stopped
    /// refreshing go `offline` here (and, once offline that long, are forgotten);
    /// local users who stopped syncing go `offline` and idle ones `unavailable` —
    /// those are returned, for the caller to tell other servers.
    pub fn timeouts(&self, local: &ruma::ServerName, t: PresenceTimeouts, now: Instant) -> Vec<TimedOut> {
        let mut syncing = self.syncing.lock();
        syncing.retain(|_, s| s.in_flight > 0 || now.saturating_duration_since(s.last_end) <= t.offline_after);
        let mut out = Vec::new();
        let mut remote_offline = Vec::new();
        let mut all = self.presence.lock();
        let mut counts = self.remote_presence.lock();
        all.retain(|user, p| {
            let quiet = now.saturating_duration_since(p.since);
            if user.server_name() != local {
                if p.state == "offline" {
                    let keep = quiet <= t.remote_offline_after;
                    if !keep && let Some(n) = counts.get_mut(user.server_name()) {
                        *n = n.saturating_sub(1);
                    }
                    return keep;
                }
                if quiet > t.remote_offline_after {
                    remote_offline.push(user.clone());
                }
                return true;
            }
            if p.state == "offline" {
                return true;
            }
            let sync = syncing.get(user);
            let in_sync = sync.is_some_and(|s| s.in_flight > 0);
            let seen = sync.map_or(p.last_active, |s| s.last_end.max(p.last_active));
            if !in_sync && now.saturating_duration_since(seen) > t.offline_after {
                out.push(TimedOut { user: user.clone(), state: "offline", status_msg: p.status_msg.clone() });
            } else if p.state == "online" && now.saturating_duration_since(p.last_active) > t.idle_after {
                out.push(TimedOut { user: user.clone(), state: "unavailable", status_msg: p.status_msg.clone() });
            }
            true
        });
        counts.retain(|_, n| *n > 0);
        drop(counts);
        for user in remote_offline {
            let changed = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(p) = all.get_mut(&user) {
                p.state = "offline".to_owned();
                p.since = now;
                p.changed = changed;
            }
            self.notify.send_replace(changed);
        }
        out
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
        let last_active_ago = self.ephemeral.presence(user).map_or(0, |p| p.last_active.elapsed().as_millis() as u64);
        let mut item = serde_json::json!({
            "user_id": user,
            "presence": state,
            "last_active_ago": last_active_ago,
            "currently_active": state == "online",
        });
        if let Some(m) = status_msg {
            item["status_msg"] = serde_json::json!(m);
        }
        let edu = serde_json::json!({ "edu_type": "m.presence", "content": { "push": [item] } });
        let servers = crate::federation::e2ee::servers_sharing_rooms(self, user)?;
        for server in servers {
            self.federation.queue_edu(&server, edu.clone());
        }
        Ok(())
    }

    /// `/sync?set_presence=`: syncing marks an offline (or never seen) user as
    /// `online` or `unavailable`; `offline` changes nothing (Client-Server API
    /// §"GET /sync": "Controls whether the client is automatically marked as online
    /// by polling this API"). A state the user set themselves otherwise stays.
    /// The user stays online while the returned guard lives, and for
    /// `[presence] offline_after_ms` after the last such sync ends.
    pub fn presence_from_sync(
        &self,
        user: &ruma::UserId,
        set_presence: &str,
    ) -> Result<Option<SyncGuard>, crate::EngineError> {
        if !self.config.presence.enabled || set_presence == "offline" {
            return Ok(None);
        }
        let guard = self.ephemeral.sync_started(user);
        let current = self.ephemeral.presence(user);
        let status = current.as_ref().and_then(|p| p.status_msg.clone());
        match current.as_ref().map(|p| p.state.as_str()) {
            None | Some("offline") => self.set_user_presence(user, set_presence, status)?,
            Some("online") if set_presence == "unavailable" => self.set_user_presence(user, set_presence, status)?,
            _ => {}
        }
        Ok(Some(guard))
    }

    /// A local user acted (sent an event, a receipt, a read marker, started
    /// typing): an idle (`unavailable`) user is `online` again.
    /// What the user asked for has happened already, so a failure here is only logged.
    pub fn presence_active(&self, user: &ruma::UserId) {
        if !self.config.presence.enabled {
            return;
        }
        if let Some(status) = self.ephemeral.mark_active(user)
            && let Err(e) = self.set_user_presence(user, "online", status)
        {
            tracing::warn!(user_id = %user, error = %e, "could not mark an active user online");
        }
    }

    /// The presence timeouts from `[presence]`.
    pub fn presence_timeouts(&self) -> PresenceTimeouts {
        let c = &self.config.presence;
        PresenceTimeouts {
            offline_after: Duration::from_millis(c.offline_after_ms),
            idle_after: Duration::from_millis(c.idle_after_ms),
            remote_offline_after: Duration::from_millis(c.remote_offline_after_ms),
        }
    }
}

/// Applies the presence timeouts until `stop`: local users who stopped syncing
/// go `offline`, idle ones `unavailable` (told to the servers sharing a room
/// with them), remote users their server stopped refreshing `offline`.
pub async fn run_timeouts(engine: Arc<crate::Engine>, mut stop: watch::Receiver<bool>) {
    if !engine.config.presence.enabled {
        return;
    }
    let t = engine.presence_timeouts();
    // Often enough that a timeout is applied within a quarter of itself.
    let tick = (t.offline_after.min(t.idle_after) / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => return,
        }
        for change in engine.ephemeral.timeouts(&engine.server_name, t, Instant::now()) {
            tracing::debug!(user_id = %change.user, state = change.state, "presence timed out");
            if let Err(e) = engine.set_user_presence(&change.user, change.state, change.status_msg) {
                tracing::warn!(user_id = %change.user, error = %e, "could not apply a presence timeout");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: PresenceTimeouts = PresenceTimeouts {
        offline_after: Duration::from_secs(30),
        idle_after: Duration::from_secs(300),
        remote_offline_after: Duration::from_secs(1800),
    };

    fn user(s: &str) -> OwnedUserId {
        UserId::parse(s).unwrap()
    }

    fn states(changes: &[TimedOut]) -> Vec<(String, &'static str)> {
        changes.iter().map(|c| (c.user.to_string(), c.state)).collect()
    }

    #[test]
    fn a_sync_in_flight_keeps_a_user_online_and_its_end_starts_the_clock() {
        let e = Arc::new(Ephemeral::new());
        let local = ruma::server_name!("here.test");
        let alice = user("@alice:here.test");
        e.set_presence(&alice, "online", Some("hi".into()));
        let guard = e.sync_started(&alice);
        let later = Instant::now() + Duration::from_secs(120);
        // Online for long past the timeout while the sync is held (idle is 300 s).
        assert!(e.timeouts(local, T, later).is_empty());
        drop(guard);
        let now = Instant::now();
        assert!(e.timeouts(local, T, now + Duration::from_secs(29)).is_empty());
        let out = e.timeouts(local, T, now + Duration::from_secs(31));
        assert_eq!(states(&out), [(alice.to_string(), "offline")]);
        assert_eq!(out[0].status_msg.as_deref(), Some("hi"), "the status message is kept");
    }

    #[test]
    fn an_online_user_idle_too_long_becomes_unavailable_and_activity_brings_them_back() {
        let e = Arc::new(Ephemeral::new());
        let local = ruma::server_name!("here.test");
        let alice = user("@alice:here.test");
        e.set_presence(&alice, "online", None);
        let _guard = e.sync_started(&alice);
        let late = Instant::now() + Duration::from_secs(301);
        assert_eq!(states(&e.timeouts(local, T, late)), [(alice.to_string(), "unavailable")]);
        e.set_presence(&alice, "unavailable", None);
        // Only an unavailable user is brought back by activity; last_active moves either way.
        assert_eq!(e.mark_active(&alice), Some(None));
        e.set_presence(&alice, "online", None);
        assert_eq!(e.mark_active(&alice), None);
        assert!(e.presence(&alice).unwrap().last_active.elapsed() < Duration::from_secs(5));
        // Unknown users are not created by activity.
        assert_eq!(e.mark_active(&user("@nobody:here.test")), None);
        assert!(e.presence(&user("@nobody:here.test")).is_none());
    }

    #[test]
    fn remote_users_go_offline_when_their_server_goes_quiet_and_are_then_forgotten() {
        let e = Arc::new(Ephemeral::new());
        let local = ruma::server_name!("here.test");
        let bob = user("@bob:there.test");
        e.set_remote_presence(&bob, "online", None, Some(Duration::from_secs(10)));
        let p = e.presence(&bob).unwrap();
        assert!(p.last_active.elapsed() >= Duration::from_secs(10), "last_active_ago is taken from the EDU");
        let before = e.serial();
        // A remote user's change is not for us to tell anyone: nothing is returned.
        assert!(e.timeouts(local, T, Instant::now() + Duration::from_secs(1801)).is_empty());
        let p = e.presence(&bob).unwrap();
        assert_eq!(p.state, "offline");
        assert!(p.changed > before, "syncs see the change");
        // Offline and quiet that long again: the entry goes, bounding the map.
        e.timeouts(local, T, Instant::now() + Duration::from_secs(3700));
        assert!(e.presence(&bob).is_none());
        // Local users who never synced are judged by their last activity.
        let carol = user("@carol:here.test");
        e.set_presence(&carol, "online", None);
        let out = e.timeouts(local, T, Instant::now() + Duration::from_secs(31));
        assert_eq!(states(&out), [(carol.to_string(), "offline")]);
    }

    #[test]
    fn one_server_cannot_fill_the_presence_map_with_ever_new_users() {
        let e = Arc::new(Ephemeral::new());
        let local = ruma::server_name!("here.test");
        for i in 0..MAX_REMOTE_PRESENCE_PER_SERVER {
            assert!(e.set_remote_presence(&user(&format!("@u{i}:flood.test")), "online", None, None));
        }
        // A new user of that server is dropped; one already known is still updated.
        assert!(!e.set_remote_presence(&user("@new:flood.test"), "online", None, None));
        assert!(e.presence(&user("@new:flood.test")).is_none());
        assert!(e.set_remote_presence(&user("@u0:flood.test"), "unavailable", None, None));
        assert_eq!(e.presence(&user("@u0:flood.test")).unwrap().state, "unavailable");
        // Other servers' users are not affected.
        assert!(e.set_remote_presence(&user("@bob:there.test"), "online", None, None));
        // Once its users are forgotten (offline, then quiet as long again), there is room again.
        e.timeouts(local, T, Instant::now() + Duration::from_secs(1801));
        e.timeouts(local, T, Instant::now() + Duration::from_secs(3700));
        assert!(e.set_remote_presence(&user("@new:flood.test"), "online", None, None));
    }
}
