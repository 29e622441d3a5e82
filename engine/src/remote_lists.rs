//! Which other servers' users have a cached device list this server may serve
//! without asking their server again.
//!
//! Server-Server API §"Device Management": "servers must send
//! `m.device_list_update` EDUs to all the servers who share a room with a
//! given local user", and a server that tracks a user's list keeps it current
//! from those EDUs. So while this server shares a room with a remote user,
//! the list it fetched last stays right until an update arrives; Synapse
//! answers `/keys/query` for such users from its cache. Three things end that
//! guarantee, and each moves a generation:
//! - an `m.device_list_update` or `m.signing_key_update` about the user (the
//!   EDU's own keys are cached, but we do not follow `prev_id` chains, so the
//!   next query asks again);
//! - a membership change of the user in a room we hold (a leave may end the
//!   last shared room, and updates stop coming);
//! - this server joining or leaving a room, or a state resolution (any shared
//!   room may have come or gone): every user's generation moves.
//!
//! A list is trusted when it was fetched whole, the requester shared a room
//! with the user then, and neither generation moved since the fetch began.
//! Everything here is in memory and bounded: after a restart, or once an
//! entry is evicted, the next query asks the user's server again.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;

/// Users remembered with their own generation; the rest share the floor.
const GENERATION_ENTRIES: usize = 20_000;
/// Users whose fetched list is remembered as trusted.
const TRACKED_ENTRIES: usize = 50_000;

/// Per-user change counters with a bounded memory: a user not remembered
/// has the floor, which only rises (on eviction and on [`Generations::bump_all`]).
pub struct Generations {
    inner: Mutex<GenInner>,
}

struct GenInner {
    counter: u64,
    floor: u64,
    users: LruCache<String, u64>,
}

impl Default for Generations {
    fn default() -> Self {
        Self::with_capacity(GENERATION_ENTRIES)
    }
}

impl Generations {
    /// Counters remembering at most `entries` users.
    pub fn with_capacity(entries: usize) -> Self {
        let cap = NonZeroUsize::new(entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self { inner: Mutex::new(GenInner { counter: 0, floor: 0, users: LruCache::new(cap) }) }
    }

    /// The user's generation now.
    pub fn of(&self, user: &str) -> u64 {
        let mut g = self.inner.lock();
        let floor = g.floor;
        g.users.get(user).copied().unwrap_or(floor)
    }

    /// Something about `user` changed.
    pub fn bump(&self, user: &str) {
        let mut g = self.inner.lock();
        g.counter += 1;
        let c = g.counter;
        if let Some((evicted, at)) = g.users.push(user.to_owned(), c)
            && evicted != user
        {
            // Forgetting a user's own generation must not make it look unchanged.
            g.floor = g.floor.max(at);
        }
    }

    /// Something about every user may have changed.
    pub fn bump_all(&self) {
        let mut g = self.inner.lock();
        g.counter += 1;
        g.floor = g.counter;
        g.users.clear();
    }
}

/// The remote users whose cached list is trusted, with the generations it was fetched at.
pub struct RemoteLists {
    /// Moved by device-list and signing-key EDUs.
    pub updates: Generations,
    tracked: Mutex<LruCache<String, (u64, u64)>>,
}

impl Default for RemoteLists {
    fn default() -> Self {
        let cap = NonZeroUsize::new(TRACKED_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Self { updates: Generations::default(), tracked: Mutex::new(LruCache::new(cap)) }
    }
}

/// The generations a fetch began at; [`RemoteLists::trust`] takes it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchMark {
    members: u64,
    updates: u64,
}

impl RemoteLists {
    /// Call before asking the user's server: what a later [`RemoteLists::trust`] compares against.
    pub fn mark(&self, members: &Generations, user: &str) -> FetchMark {
        FetchMark { members: members.of(user), updates: self.updates.of(user) }
    }

    /// The whole list fetched from `mark` on is now cached and the user shares a room with us.
    pub fn trust(&self, user: &str, mark: FetchMark) {
        self.tracked.lock().put(user.to_owned(), (mark.members, mark.updates));
        metrics::gauge!("myelin_remote_device_lists_tracked").set(self.tracked.lock().len() as f64);
    }

    /// Whether the cached list of `user` may be served without asking their server.
    pub fn trusted(&self, members: &Generations, user: &str) -> bool {
        let Some((m, u)) = self.tracked.lock().get(user).copied() else { return false };
        if members.of(user) == m && self.updates.of(user) == u {
            return true;
        }
        self.tracked.lock().pop(user);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_stays_trusted_until_the_user_or_everyone_changes() {
        let (members, lists) = (Generations::default(), RemoteLists::default());
        let mark = lists.mark(&members, "@u:b");
        lists.trust("@u:b", mark);
        assert!(lists.trusted(&members, "@u:b"));
        members.bump("@other:b");
        assert!(lists.trusted(&members, "@u:b"), "another user's change is not this one's");
        lists.updates.bump("@u:b");
        assert!(!lists.trusted(&members, "@u:b"), "a device-list update ends the trust");

        lists.trust("@u:b", lists.mark(&members, "@u:b"));
        members.bump("@u:b");
        assert!(!lists.trusted(&members, "@u:b"), "a membership change ends it");

        lists.trust("@u:b", lists.mark(&members, "@u:b"));
        members.bump_all();
        assert!(!lists.trusted(&members, "@u:b"), "this server joining or leaving a room ends it");
    }

    #[test]
    fn a_change_during_the_fetch_is_not_forgotten() {
        let (members, lists) = (Generations::default(), RemoteLists::default());
        let mark = lists.mark(&members, "@u:b");
        lists.updates.bump("@u:b"); // an update arrives while the answer is on its way
        lists.trust("@u:b", mark);
        assert!(!lists.trusted(&members, "@u:b"));
    }

    #[test]
    fn a_change_is_not_forgotten_when_its_counter_is_evicted() {
        let (members, lists) = (Generations::with_capacity(2), RemoteLists::default());
        lists.trust("@u:b", lists.mark(&members, "@u:b"));
        lists.trust("@v:b", lists.mark(&members, "@v:b"));
        members.bump("@u:b"); // u changes...
        members.bump("@x:b");
        members.bump("@y:b"); // ...and that counter is evicted
        assert!(!lists.trusted(&members, "@u:b"), "a forgotten change counter must not read as unchanged");
        assert!(!lists.trusted(&members, "@v:b"), "the floor moved past what @v:b was fetched at");
        lists.trust("@v:b", lists.mark(&members, "@v:b"));
        assert!(lists.trusted(&members, "@v:b"), "fetched again after the floor moved");
    }
}
