//! A room's in-memory head (extremities, depth, current state, joined servers),
//! the per-room lock that guards it, and loading it from storage.

use std::{collections::BTreeMap, sync::Arc};

use myelin_storage::Direction;
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};

use super::{ArcPdu, Pdu, RoomError, Rooms, membership_of, tables::*, version};

/// The in-memory head of a room, guarded by the room lock.
#[derive(Clone)]
pub(crate) struct Head {
    pub(super) room_id: OwnedRoomId,
    pub(super) short: u64,
    pub(super) version: RoomVersionId,
    pub(super) rules: RoomVersionRules,
    /// Forward extremities: short id and event id.
    pub(super) extremities: Vec<(u64, OwnedEventId)>,
    pub(super) depth: u64,
    /// Current state snapshot (0 before the create event).
    pub(super) state: u64,
    /// Joined member count per server, from the current state.
    pub(super) servers: BTreeMap<OwnedServerName, usize>,
}

pub(super) type RoomLock = Arc<tokio::sync::Mutex<Option<Head>>>;

/// Room locks (with their cached heads) kept before the idle ones are dropped.
pub(super) const MAX_ROOM_LOCKS: usize = 20_000;

impl Rooms {
    /// The lock (and cached head) of `room_id`. A request naming a room this
    /// server does not hold still gets one, so the map is bounded: past
    /// [`MAX_ROOM_LOCKS`] every lock nobody holds and with no head loaded (a
    /// room that could not be loaded: one this server does not hold) is dropped.
    pub(super) fn lock_of(&self, room_id: &RoomId) -> RoomLock {
        let mut locks = self.locks.lock();
        if let Some(lock) = locks.get(room_id) {
            return lock.clone();
        }
        if locks.len() >= MAX_ROOM_LOCKS {
            // Only the map holds an idle lock, and under the map's mutex nobody can
            // take it meanwhile. A loaded head stays: it may carry appends whose
            // batch is not durable yet, which a head read again would miss.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1 || lock.try_lock().map_or(true, |head| head.is_some()));
            metrics::counter!("myelin_room_locks_pruned_total").increment(1);
        }
        let lock = locks.entry(room_id.to_owned()).or_default().clone();
        metrics::gauge!("myelin_room_locks").set(locks.len() as f64);
        lock
    }

    pub(super) async fn load_head(&self, room_id: &RoomId) -> Result<Head, RoomError> {
        let short = self.short_room(room_id)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let info = ROOMS.get(&*self.db, &short)?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_string()))?;
        let version =
            RoomVersionId::try_from(info.version.as_str()).map_err(|e| RoomError::UnsupportedVersion(e.to_string()))?;
        let rules = version::rules(&version)?;
        let mut extremities = Vec::new();
        for row in EXTREMITIES.prefix(&*self.db, &(short,), Direction::Forward)? {
            let ((_, ev), ()) = row?;
            let id = self.event_ids.lookup(&*self.db, ev)?.ok_or_else(|| RoomError::UnknownEvent(ev.to_string()))?;
            extremities.push((ev, EventId::parse(id.as_str()).map_err(|e| RoomError::BadEvent(e.to_string()))?));
        }
        let mut head = Head {
            room_id: room_id.to_owned(),
            short,
            version,
            rules,
            extremities,
            depth: info.depth,
            state: info.state,
            servers: BTreeMap::new(),
        };
        head.servers = self.joined_servers(head.state, None)?;
        Ok(head)
    }

    /// The head's joined servers updated by one event appended on top of it.
    pub(super) fn servers_after(
        &self,
        head: &Head,
        pdu: &Pdu,
        state_before: Option<u64>,
    ) -> Result<BTreeMap<OwnedServerName, usize>, RoomError> {
        let mut servers = head.servers.clone();
        let (TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, pdu.state_key.as_deref()) else {
            return Ok(servers);
        };
        let Ok(user) = UserId::parse(target) else { return Ok(servers) };
        let was = match state_before {
            Some(s) => self.state_pdu_at(s, "m.room.member", target)?.and_then(|p| membership_of(&p)),
            None => None,
        };
        let now = membership_of(pdu);
        let server = user.server_name().to_owned();
        match (was.as_deref() == Some("join"), now.as_deref() == Some("join")) {
            (false, true) => *servers.entry(server).or_insert(0) += 1,
            (true, false) => {
                if let Some(n) = servers.get_mut(&server) {
                    *n -= 1;
                    if *n == 0 {
                        servers.remove(&server);
                    }
                }
            }
            _ => {}
        }
        Ok(servers)
    }

    /// Joined member count per server in `snapshot`; `pending` is an event of
    /// that state that is not stored yet (the one being appended).
    pub(super) fn joined_servers(
        &self,
        snapshot: u64,
        pending: Option<(u64, &ArcPdu)>,
    ) -> Result<BTreeMap<OwnedServerName, usize>, RoomError> {
        let mut servers = BTreeMap::new();
        if snapshot == 0 {
            return Ok(servers);
        }
        for (_, short) in self.states.load(snapshot)?.iter() {
            let pdu = match pending {
                Some((s, p)) if s == *short => p.clone(),
                _ => match self.pdu_by_short(*short)? {
                    Some(p) => p,
                    None => continue,
                },
            };
            if pdu.kind == TimelineEventType::RoomMember
                && membership_of(&pdu).as_deref() == Some("join")
                && let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            {
                *servers.entry(user.server_name().to_owned()).or_insert(0) += 1;
            }
        }
        Ok(servers)
    }
}

#[cfg(test)]
mod lock_tests {
    use super::MAX_ROOM_LOCKS;

    #[test]
    fn locks_for_rooms_nobody_holds_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = myelin_storage::Db::open(&dir.path().join("db"), &Default::default()).unwrap();
        let name: ruma::OwnedServerName = "us.test".try_into().unwrap();
        let keys = std::sync::Arc::new(crate::keys::ServerKeys::load_or_generate(dir.path(), name.clone()).unwrap());
        let stream = myelin_storage::StreamCounter::load(&db, "stream").unwrap();
        let rooms = super::Rooms::open(db, name, keys, stream).unwrap();
        let held = ruma::RoomId::parse("!held:us.test").unwrap();
        let kept = rooms.lock_of(&held);
        for i in 0..MAX_ROOM_LOCKS + 5_000 {
            let id = ruma::RoomId::parse(format!("!r{i}:elsewhere.test")).unwrap();
            let _ = rooms.lock_of(&id);
        }
        assert!(rooms.locks.lock().len() <= MAX_ROOM_LOCKS, "{}", rooms.locks.lock().len());
        // A lock in use survives the pruning: the same one is handed out again.
        assert!(std::sync::Arc::ptr_eq(&kept, &rooms.lock_of(&held)));
    }
}
