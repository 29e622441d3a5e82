//! Per-connection memory: what each connection was last sent, so the next answer
//! carries only what changed.
//!
//! A connection is `(user, device, conn_id)`. Each answer stores a new generation of
//! its state under a new `pos`; the previous few generations are kept so a client that
//! lost an answer (or runs two requests at once) and retries with an older `pos` is
//! served from that `pos`. Anything older, or a `pos` from before a restart (the epoch
//! differs), is unknown: the client gets `M_UNKNOWN_POS` and starts afresh.
//!
//! Memory is bounded: at most [`MAX_CONNECTIONS`] connections (least recently used
//! dropped), [`PER_USER`] per user, [`GENERATIONS`] generations each, and a connection
//! idle for [`IDLE`] is forgotten.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use lru::LruCache;
use parking_lot::Mutex;
use ruma::OwnedRoomId;

/// Most connections the server remembers.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Most connections of one user.
pub const PER_USER: usize = 32;
/// Generations kept per connection.
pub const GENERATIONS: usize = 3;
/// A connection unused this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(6 * 3600);

/// What a connection was told about one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRoom {
    /// Timeline position up to which events were sent (or the membership event's, for
    /// a room the user is not joined to).
    pub upto: i64,
    /// The state snapshot its required state was computed at (0: none).
    pub snapshot: u64,
    /// The membership the room was sent with.
    pub membership: String,
    /// The `timeline_limit` it was sent with.
    pub timeline_limit: u64,
    /// The `required_state` rules it was sent with.
    pub rules: Arc<Vec<(String, String)>>,
    /// The unread counts it was sent with.
    pub counts: (u64, u64),
}

/// What one generation of a connection knows.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// The stream position the answer was built at.
    pub upto: u64,
    /// Whether this state is an answer's (false: a new connection). A fresh
    /// server answers at position 0, so `upto` alone cannot tell.
    pub answered: bool,
    /// The typing serial the answer was built at.
    pub typing: u64,
    /// The rooms sent so far.
    pub rooms: HashMap<OwnedRoomId, SentRoom>,
    /// Each list's count as last sent.
    pub lists: BTreeMap<String, u64>,
}

struct Conn {
    /// `(generation, state)`, oldest first.
    states: VecDeque<(u64, Arc<ConnState>)>,
    next: u64,
    used: Instant,
}

/// Identifies a connection.
type Key = (String, String, String);

/// Why a `pos` cannot be continued from.
#[derive(Debug, thiserror::Error)]
#[error("unknown position {0}")]
pub struct UnknownPos(pub String);

/// All connections of this server.
pub struct Connections {
    epoch: u32,
    conns: Mutex<LruCache<Key, Conn>>,
}

impl Default for Connections {
    fn default() -> Self {
        Self::new()
    }
}

impl Connections {
    /// An empty store, with a fresh epoch so positions of a previous run are unknown.
    pub fn new() -> Self {
        let cap = NonZeroUsize::new(MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN);
        // Random, so a position of an earlier run of the server is unknown, not misread.
        let epoch = ring::rand::generate::<[u8; 4]>(&ring::rand::SystemRandom::new())
            .map(|r| u32::from_be_bytes(r.expose()))
            .unwrap_or_else(|_| std::process::id());
        Self { epoch, conns: Mutex::new(LruCache::new(cap)) }
    }

    /// The state to continue from: empty without `pos`, the stored generation with one.
    pub fn resume(
        &self,
        user: &str,
        device: &str,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Result<Arc<ConnState>, UnknownPos> {
        let Some(pos) = pos else { return Ok(Arc::new(ConnState::default())) };
        let unknown = || UnknownPos(pos.to_owned());
        let (epoch, generation) = pos.split_once('_').ok_or_else(unknown)?;
        let epoch = u32::from_str_radix(epoch, 16).map_err(|_| unknown())?;
        let generation = generation.parse::<u64>().map_err(|_| unknown())?;
        if epoch != self.epoch {
            return Err(unknown());
        }
        let mut conns = self.conns.lock();
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        let conn = conns.get_mut(&key).ok_or_else(unknown)?;
        if conn.used.elapsed() > IDLE {
            conns.pop(&key);
            return Err(unknown());
        }
        conn.used = Instant::now();
        conn.states.iter().find(|(g, _)| *g == generation).map(|(_, s)| s.clone()).ok_or_else(unknown)
    }

    /// Stores the state an answer was built with and names its `pos`.
    pub fn commit(&self, user: &str, device: &str, conn_id: &str, state: ConnState) -> String {
        let mut conns = self.conns.lock();
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        if !conns.contains(&key) {
            self.make_room_for(&mut conns, user);
        }
        let conn = conns.get_or_insert_mut(key, || Conn { states: VecDeque::new(), next: 1, used: Instant::now() });
        let generation = conn.next;
        conn.next += 1;
        conn.used = Instant::now();
        conn.states.push_back((generation, Arc::new(state)));
        while conn.states.len() > GENERATIONS {
            conn.states.pop_front();
        }
        format!("{:x}_{generation}", self.epoch)
    }

    /// Forgets a connection (a request without `pos` starts it afresh).
    pub fn forget(&self, user: &str, device: &str, conn_id: &str) {
        self.conns.lock().pop(&(user.to_owned(), device.to_owned(), conn_id.to_owned()));
    }

    /// Connections remembered.
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rooms remembered over all connections and generations (a memory gauge).
    pub fn rooms_remembered(&self) -> usize {
        self.conns.lock().iter().map(|(_, c)| c.states.iter().map(|(_, s)| s.rooms.len()).sum::<usize>()).sum()
    }

    /// Drops idle connections and, past [`PER_USER`], the user's least recently used one.
    fn make_room_for(&self, conns: &mut LruCache<Key, Conn>, user: &str) {
        let idle: Vec<Key> = conns.iter().filter(|(_, c)| c.used.elapsed() > IDLE).map(|(k, _)| k.clone()).collect();
        for k in idle {
            conns.pop(&k);
        }
        let mut mine: Vec<(Instant, Key)> =
            conns.iter().filter(|(k, _)| k.0 == user).map(|(k, c)| (c.used, k.clone())).collect();
        if mine.len() >= PER_USER {
            mine.sort();
            for (_, k) in mine.into_iter().take(1) {
                conns.pop(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pos_resumes_its_own_generation_and_old_or_foreign_ones_are_unknown() {
        let conns = Connections::new();
        let first = conns.commit("@a:x", "D", "c", ConnState { upto: 5, ..Default::default() });
        let second = conns.commit("@a:x", "D", "c", ConnState { upto: 9, ..Default::default() });
        assert_eq!(conns.resume("@a:x", "D", "c", Some(&first)).unwrap().upto, 5);
        assert_eq!(conns.resume("@a:x", "D", "c", Some(&second)).unwrap().upto, 9);
        // Another connection, device or user does not share positions.
        assert!(conns.resume("@a:x", "D", "other", Some(&second)).is_err());
        assert!(conns.resume("@a:x", "E", "c", Some(&second)).is_err());
        assert!(conns.resume("@b:x", "D", "c", Some(&second)).is_err());
        // A position of another run (epoch) or garbage is unknown.
        assert!(conns.resume("@a:x", "D", "c", Some("0_1")).is_err() || conns.epoch == 0);
        assert!(conns.resume("@a:x", "D", "c", Some("zz")).is_err());
        assert!(conns.resume("@a:x", "D", "c", None).unwrap().rooms.is_empty());
        // Only the newest generations are kept.
        for n in 0..GENERATIONS {
            conns.commit("@a:x", "D", "c", ConnState { upto: 10 + n as u64, ..Default::default() });
        }
        assert!(conns.resume("@a:x", "D", "c", Some(&first)).is_err());
    }

    #[test]
    fn one_user_cannot_hold_more_than_its_share_of_connections() {
        let conns = Connections::new();
        for n in 0..(PER_USER + 10) {
            conns.commit("@a:x", "D", &format!("c{n}"), ConnState::default());
        }
        conns.commit("@b:x", "D", "c", ConnState::default());
        assert_eq!(conns.len(), PER_USER + 1);
    }
}
