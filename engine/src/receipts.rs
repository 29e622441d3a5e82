//! Read receipts and unread counts.
//!
//! Client-Server API §"Receipts": `m.read` (shared with the room),
//! `m.read.private` (only the user sees it), optionally per `thread_id`.
//! Receipts are stored at a stream position, so a new receipt wakes `/sync`
//! and reaches the other members as an `m.receipt` ephemeral event.
//! §"Notifications": unread counts are the events after the user's latest
//! receipt that their push rules (`crate::push`) mark as notifying or
//! highlighting.

use myelin_storage::{Batch, Caches, Direction, Stored, Table, catalog};
use ruma::{RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{Engine, EngineError};

/// A stored receipt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The event read up to.
    pub event_id: String,
    /// When, ms.
    pub ts: u64,
    /// Stream position of the receipt.
    pub count: u64,
}
impl Stored for Receipt {}

/// Push verdicts, running counts and member counts remembered between syncs.
///
/// A `/sync` reports unread counts for every joined room, so the same events
/// were evaluated against the same push rules on every sync of every member,
/// and every sync walked all of a room's unread events again. Each (user,
/// room) keeps a running tally that a later sync extends by the events that
/// arrived since; each verdict is computed once per (user, event) and kept
/// (as Synapse keeps push actions from when an event arrived), for when a
/// moved receipt restarts a tally; a room's joined-member count once per
/// state snapshot.
pub struct UnreadCache {
    verdicts: myelin_storage::SharedLru<(String, i64), (bool, bool)>,
    tallies: myelin_storage::SharedLru<(String, String), Tally>,
    members: myelin_storage::SharedLru<u64, usize>,
}

/// A user's counts over the timeline positions `(from, upto]` of one room.
#[derive(Debug, Clone, Copy)]
struct Tally {
    from: i64,
    upto: i64,
    notes: u64,
    highlights: u64,
}

impl UnreadCache {
    /// Empty caches with their shares of `caches`.
    pub fn new(caches: &Caches) -> Self {
        use crate::cache_shares::{UNREAD_MEMBERS, UNREAD_TALLIES, UNREAD_VERDICTS};
        Self {
            verdicts: caches.lru(UNREAD_VERDICTS, |(user, _), _| user.capacity()),
            tallies: caches.lru(UNREAD_TALLIES, |(room, user), _| room.capacity() + user.capacity()),
            members: caches.lru(UNREAD_MEMBERS, myelin_storage::cache::inline),
        }
    }
}

/// `(room, user, receipt type, thread id or "")` → receipt.
const RECEIPTS: Table<(String, String, String, String), Receipt> = Table::new(&catalog::ROOMUSERTYPE_RECEIPT);

/// `(room, stream position)` → which receipt was set then. A row whose receipt has
/// since moved on (its stored position differs) is skipped when read.
const BY_COUNT: Table<(String, u64), ReceiptRef> = Table::new(&catalog::ROOMCOUNT_RECEIPT);

/// The key of a receipt, less its room.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptRef {
    user: String,
    kind: String,
    thread: String,
}
impl Stored for ReceiptRef {}

/// Indexes receipts stored before the by-position index existed (run once at start-up,
/// off the async runtime); a no-op when the index has rows or there are no receipts.
pub(crate) fn index_existing_receipts(db: &myelin_storage::Db) -> Result<usize, EngineError> {
    if BY_COUNT.iter(db, Direction::Forward)?.next().is_some() {
        return Ok(0);
    }
    let mut batch = Batch::new();
    let mut n = 0;
    for row in RECEIPTS.iter(db, Direction::Forward)? {
        let ((room, user, kind, thread), receipt) = row?;
        BY_COUNT.put(&mut batch, &(room, receipt.count), &ReceiptRef { user, kind, thread })?;
        n += 1;
    }
    if n > 0 {
        db.commit_blocking(batch)?;
    }
    Ok(n)
}

impl Engine {
    /// Stores a receipt at a new stream position.
    pub async fn set_receipt(
        &self,
        room: &RoomId,
        user: &UserId,
        kind: &str,
        thread: Option<&str>,
        event_id: &str,
    ) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        let count = self.stream.next_in(&mut batch);
        let ts = crate::util::now_ms();
        let key = (room.to_string(), user.to_string(), kind.to_owned(), thread.unwrap_or_default().to_owned());
        if let Some(old) = RECEIPTS.get(&*self.db, &key)? {
            BY_COUNT.delete(&mut batch, &(key.0.clone(), old.count));
        }
        self.receipt_positions.raise(room.to_owned(), count as i64);
        let by_count = ReceiptRef { user: key.1.clone(), kind: key.2.clone(), thread: key.3.clone() };
        BY_COUNT.put(&mut batch, &(key.0.clone(), count), &by_count)?;
        RECEIPTS.put(&mut batch, &key, &Receipt { event_id: event_id.to_owned(), ts, count })?;
        self.db.commit(batch).await?;
        self.push_receipt_to_appservices(room, user, kind, thread, event_id, ts);
        Ok(())
    }

    /// Receipts of a room newer than `since`: `(user, type, thread, receipt)`.
    ///
    /// An incremental sync reads only the receipts set after its token (through
    /// `roomcount_receipt`), not every receipt of the room: in a room of
    /// thousands whose members read as they go, every sync of every member
    /// walked all of them.
    pub fn receipts_since(
        &self,
        room: &RoomId,
        since: u64,
    ) -> Result<Vec<(String, String, String, Receipt)>, EngineError> {
        let mut out = Vec::new();
        let room = room.to_string();
        if since == 0 {
            for row in RECEIPTS.prefix(&*self.db, &(room,), Direction::Forward)? {
                let ((_, user, kind, thread), receipt) = row?;
                out.push((user, kind, thread, receipt));
            }
            return Ok(out);
        }
        let from = since.saturating_add(1);
        for row in BY_COUNT.range(&*self.db, (room.clone(), from)..=(room.clone(), u64::MAX), Direction::Forward)? {
            let ((_, count), r) = row?;
            let key = (room.clone(), r.user, r.kind, r.thread);
            // Two receipts set at once for the same key may leave a stale row: the receipt decides.
            match RECEIPTS.get(&*self.db, &key)? {
                Some(receipt) if receipt.count == count => out.push((key.1, key.2, key.3, receipt)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Whether the room has no receipt set after stream position `since`, known
    /// without reading them once the room's newest position was read (once per
    /// room and process).
    pub fn receipts_quiet_since(&self, room: &RoomId, since: u64) -> Result<bool, EngineError> {
        self.receipt_positions.none_after(room, since as i64, || {
            Ok(match BY_COUNT.prefix(&*self.db, &(room.to_string(),), Direction::Reverse)?.next() {
                Some(row) => row?.0.1 as i64,
                None => 0,
            })
        })
    }

    /// The timeline position the user has read up to in a room (latest of their receipts).
    pub fn read_upto(&self, room: &RoomId, user: &UserId) -> Result<i64, EngineError> {
        let mut best = 0i64;
        for row in RECEIPTS.prefix(&*self.db, &(room.to_string(), user.to_string()), Direction::Forward)? {
            let ((_, _, kind, _), receipt) = row?;
            if kind != "m.read" && kind != "m.read.private" {
                continue;
            }
            if let Ok(id) = ruma::EventId::parse(receipt.event_id.as_str())
                && let Ok(Some(meta)) = self.rooms.meta(&id)
            {
                best = best.max(meta.count);
            }
        }
        Ok(best)
    }

    /// `(notification_count, highlight_count)` for the user in a room: events
    /// after their latest receipt (and their join), up to the stream position
    /// `upto`, that their push rules mark as notifying / highlighting.
    ///
    /// The count continues the tally of the user's previous sync when the
    /// receipt has not moved, so a sync costs the events that arrived since,
    /// not every unread event. A single step counts at most the newest 1,000
    /// events it covers.
    pub async fn unread_counts(&self, room: &RoomId, user: &UserId, upto: i64) -> Result<(u64, u64), EngineError> {
        let read = self.read_upto(room, user)?;
        let joined_at = self.rooms.membership(user.as_str(), room).ok().flatten().map_or(0, |m| m.count);
        let from = read.max(joined_at);
        let key = (user.to_string(), room.to_string());
        let prior = self.unread.tallies.lock().get(&key).copied();
        let tally = match prior {
            // Another device of the user may sync behind this one: count afresh then.
            Some(t) if t.from == from && t.upto <= upto => t,
            _ => Tally { from, upto: from, notes: 0, highlights: 0 },
        };
        let (notes, highlights) = if tally.upto >= upto {
            (tally.notes, tally.highlights)
        } else {
            let (n, h) = self.count_between(room, user, tally.upto, upto).await?;
            (tally.notes + n, tally.highlights + h)
        };
        self.unread.tallies.lock().put(key, Tally { from, upto, notes, highlights });
        Ok((notes, highlights))
    }

    /// Notifying and highlighting events for the user among the newest 1,000
    /// of a room's timeline positions `(after, upto]`.
    async fn count_between(
        &self,
        room: &RoomId,
        user: &UserId,
        after: i64,
        upto: i64,
    ) -> Result<(u64, u64), EngineError> {
        let (events, _) = self.rooms.timeline_between(room, after, upto, 1000)?;
        if events.iter().all(|(_, p)| p.sender == user) {
            return Ok((0, 0));
        }
        let (mut notes, mut highlights) = (0, 0);
        let mut unknown = Vec::new();
        let who = user.to_string();
        {
            let mut cache = self.unread.verdicts.lock();
            for (count, pdu) in events {
                match cache.get(&(who.clone(), count)) {
                    Some(&(notify, highlight)) => {
                        notes += u64::from(notify);
                        highlights += u64::from(highlight);
                    }
                    None => unknown.push((count, pdu)),
                }
            }
        }
        if unknown.is_empty() {
            return Ok((notes, highlights));
        }
        let rules = self.push_rules(user)?;
        let members = self.joined_member_count(room)?;
        let name = self
            .users
            .profile(user.as_str())
            .ok()
            .flatten()
            .and_then(|p| p.displayname)
            .unwrap_or_else(|| user.localpart().to_owned());
        for (count, pdu) in unknown {
            let verdict = self.evaluate(&rules, user, room, members, &name, &pdu).await;
            notes += u64::from(verdict.notify);
            highlights += u64::from(verdict.highlight);
            self.unread.verdicts.lock().put((who.clone(), count), (verdict.notify, verdict.highlight));
        }
        Ok((notes, highlights))
    }

    /// Joined members of the room's current state (counted once per snapshot).
    fn joined_member_count(&self, room: &RoomId) -> Result<usize, EngineError> {
        let snapshot = self.rooms.current_snapshot(room)?;
        if let Some(&n) = self.unread.members.lock().get(&snapshot) {
            return Ok(n);
        }
        let state = self.rooms.current_state(room)?;
        let n = state
            .iter()
            .filter(|p| p.kind.to_string() == "m.room.member" && p.content_value()["membership"] == "join")
            .count();
        self.unread.members.lock().put(snapshot, n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use myelin_storage::{Batch, Db, Direction, StorageOptions};

    use super::*;

    #[test]
    fn receipts_of_an_older_database_are_indexed_once_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap();
        // Receipts as a database from before the index holds them: no index rows.
        let mut batch = Batch::new();
        for (user, count) in [("@a:x", 7u64), ("@b:x", 9)] {
            let key = ("!r:x".to_owned(), user.to_owned(), "m.read".to_owned(), String::new());
            RECEIPTS.put(&mut batch, &key, &Receipt { event_id: "$e".into(), ts: 1, count }).unwrap();
        }
        db.commit_blocking(batch).unwrap();
        assert_eq!(index_existing_receipts(&db).unwrap(), 2);
        let rows: Vec<(String, u64)> = BY_COUNT.iter(&*db, Direction::Forward).unwrap().map(|r| r.unwrap().0).collect();
        assert_eq!(rows, [("!r:x".to_owned(), 7), ("!r:x".to_owned(), 9)]);
        // Once indexed, start-up leaves it alone.
        assert_eq!(index_existing_receipts(&db).unwrap(), 0);
        db.shutdown();
    }
}
