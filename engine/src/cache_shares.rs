//! How Myelin's cache budget is shared between its caches.
//!
//! The budget is three tenths of `[storage] memory_mb` (see
//! [`crate::config::StorageConfig::options`]); each cache below gets the
//! thousandths of it given here, weighs its entries in bytes and evicts the
//! least recently used past its share. The shares follow what each cache saves:
//! events and state snapshots are read on every send and sync, so they get the
//! most. `/metrics` shows each one's bytes, capacity, hits, misses and evictions
//! (`myelin_cache_*{cache="…"}`), which is how to tell whether a share is too small.

use myelin_storage::Share;

const fn share(name: &'static str, permille: usize) -> Share {
    Share { name, permille }
}

/// Parsed events by short id (prev and auth events are read again and again).
pub const EVENTS: Share = share("events", 340);
/// State snapshot layers (the change from a parent snapshot).
pub const STATE_LAYERS: Share = share("state_layers", 80);
/// Whole state snapshots, flattened.
pub const STATE_FULL: Share = share("state_full", 120);
/// Event id → short id.
pub const EVENT_IDS: Share = share("event_ids", 30);
/// Short id → event id.
pub const EVENT_IDS_REV: Share = share("event_ids_rev", 30);
/// Room id → short id.
pub const ROOM_IDS: Share = share("room_ids", 10);
/// Short id → room id.
pub const ROOM_IDS_REV: Share = share("room_ids_rev", 10);
/// State key → short id.
pub const STATE_KEYS: Share = share("state_keys", 20);
/// Short id → state key.
pub const STATE_KEYS_REV: Share = share("state_keys_rev", 20);
/// Server name → short id.
pub const SERVERS: Share = share("servers", 5);
/// Short id → server name.
pub const SERVERS_REV: Share = share("servers_rev", 5);
/// Per room, the servers with joined members at one snapshot.
pub const SERVERS_AT: Share = share("servers_at", 20);
/// Authorization outcomes of message-like events per snapshot, sender and type.
pub const AUTHORIZED: Share = share("authorized", 20);
/// Push-rule verdicts per user and event, for unread counts.
pub const UNREAD_VERDICTS: Share = share("unread_verdicts", 60);
/// Unread tallies per user and room.
pub const UNREAD_TALLIES: Share = share("unread_tallies", 40);
/// Joined-member counts per snapshot.
pub const UNREAD_MEMBERS: Share = share("unread_members", 10);
/// Sliding sync: bump stamps per room.
pub const SLIDING_BUMPS: Share = share("sliding_bumps", 30);
/// Sliding sync: room summaries per snapshot.
pub const SLIDING_SUMMARIES: Share = share("sliding_summaries", 40);
/// Sliding sync: memberships per local user.
pub const SLIDING_MEMBERSHIPS: Share = share("sliding_memberships", 50);
/// Appservice interest per appservice and snapshot.
pub const APPSERVICE_INTEREST: Share = share("appservice_interest", 10);
/// `/sync` lazy loading: the member events each device was already sent, per room.
pub const LAZY_MEMBERS: Share = share("lazy_members", 10);
/// Sessions by access token.
pub const SESSIONS: Share = share("sessions", 40);

/// Every share, for the test that they add up to the whole budget.
pub const ALL: [Share; 22] = [
    EVENTS,
    STATE_LAYERS,
    STATE_FULL,
    EVENT_IDS,
    EVENT_IDS_REV,
    ROOM_IDS,
    ROOM_IDS_REV,
    STATE_KEYS,
    STATE_KEYS_REV,
    SERVERS,
    SERVERS_REV,
    SERVERS_AT,
    AUTHORIZED,
    UNREAD_VERDICTS,
    UNREAD_TALLIES,
    UNREAD_MEMBERS,
    SLIDING_BUMPS,
    SLIDING_SUMMARIES,
    SLIDING_MEMBERSHIPS,
    APPSERVICE_INTEREST,
    LAZY_MEMBERS,
    SESSIONS,
];

#[cfg(test)]
mod tests {
    /// The shares are the whole budget, no more, and no name is used twice.
    #[test]
    fn shares_add_up_to_the_budget() {
        let total: usize = super::ALL.iter().map(|s| s.permille).sum();
        assert_eq!(total, 1000);
        let mut names: Vec<_> = super::ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::ALL.len());
    }
}
