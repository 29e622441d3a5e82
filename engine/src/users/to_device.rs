//! To-device messages: queued per device until its `/sync` acknowledges them.
//!
//! A message for a user of an appservice that receives ephemeral events is
//! also queued for that appservice, in the same batch, and pushed in its
//! transactions (MSC4203, `de.sorunome.msc2409.to_device`): that is how an
//! encrypting bridge gets the room keys sent to its users' devices. A user
//! in an appservice's exclusive namespace has no client of its own, so its
//! messages go only to the appservice, not into an inbox no one reads.
//!
//! Anyone in a room with a user, and any server, can send to their devices,
//! so an inbox is bounded: messages for a device the user does not have are
//! dropped, and one holding `limits.max_to_device_per_device` messages takes
//! no more until its client syncs (both counted in
//! `myelin_to_device_dropped_total{reason}`).

use myelin_storage::{Batch, Direction};

use super::{TO_DEVICE, ToDevice, UserError, Users};

impl Users {
    /// Queues to-device messages: `(user, device or "*", content)` for local users.
    pub async fn send_to_device(
        &self,
        sender: &str,
        kind: &str,
        messages: Vec<(String, String, Vec<u8>)>,
    ) -> Result<(), UserError> {
        self.send_to_device_for_txn(sender, kind, messages, None).await
    }

    /// [`Users::send_to_device`] for a client transaction: the `(sender, device,
    /// txn id)` row is written in the messages' batch, so a retry finds it
    /// exactly when the messages were queued.
    pub async fn send_to_device_for_txn(
        &self,
        sender: &str,
        kind: &str,
        messages: Vec<(String, String, Vec<u8>)>,
        txn: Option<(&str, &str)>,
    ) -> Result<(), UserError> {
        let mut batch = Batch::new();
        if let Some((device, txn)) = txn {
            super::TXNS.put(&mut batch, &(sender.to_owned(), device.to_owned(), txn.to_owned()), &String::new())?;
        }
        let count = self.stream.next_in(&mut batch);
        let mut to_appservices = Vec::new();
        for (user, device, content) in messages {
            let every = device == "*";
            let targets: Vec<String> =
                if every { self.devices(&user)?.into_iter().map(|(d, _)| d).collect() } else { vec![device] };
            let (appservices, claimed) = self.to_device_appservices(&user);
            for device in targets {
                for id in &appservices {
                    let row = crate::appservice::queue::ToDeviceRow {
                        to_user: user.clone(),
                        to_device: device.clone(),
                        sender: sender.to_owned(),
                        kind: kind.to_owned(),
                        content: content.clone(),
                    };
                    let seq = self.stream.next_in(&mut batch);
                    crate::appservice::queue::TO_DEVICE.put(&mut batch, &(id.clone(), seq), &row)?;
                    to_appservices.push(id.clone());
                }
                if claimed {
                    continue;
                }
                // "*" was expanded from the user's devices: only a named one can be unknown.
                if !every && self.device(&user, &device)?.is_none() {
                    metrics::counter!("myelin_to_device_dropped_total", "reason" => "unknown_device").increment(1);
                    continue;
                }
                if !self.inbox_has_room(&user, &device)? {
                    metrics::counter!("myelin_to_device_dropped_total", "reason" => "inbox_full").increment(1);
                    continue;
                }
                let message = ToDevice { sender: sender.to_owned(), kind: kind.to_owned(), content: content.clone() };
                // Raised before the write is handed over: never below what a reader can see.
                self.to_device_newest.raise((user.clone(), device.clone()), count as i64);
                TO_DEVICE.put(&mut batch, &(user.clone(), device, count), &message)?;
            }
        }
        if let Some(registry) = &self.appservices {
            to_appservices.sort();
            to_appservices.dedup();
            registry.announce(&mut batch, to_appservices);
        }
        self.db.commit(batch).await?;
        Ok(())
    }

    /// The appservices a to-device message for `user` is pushed to, and whether
    /// one of them claims the user exclusively (then there is no inbox for it).
    fn to_device_appservices(&self, user: &str) -> (Vec<String>, bool) {
        let Some(registry) = &self.appservices else { return (Vec::new(), false) };
        if registry.is_empty() {
            return (Vec::new(), false);
        }
        let mut ids = Vec::new();
        let mut claimed = false;
        for a in registry.all().iter().filter(|a| a.receives_to_device() && a.owns_user(user)) {
            ids.push(a.id().to_owned());
            claimed |= a.claims_user(user);
        }
        (ids, claimed)
    }

    /// Whether the device certainly has no stored to-device message: none was
    /// queued above the position its messages were acknowledged up to. Unknown
    /// (so `false`) until the device's first acknowledgement since start-up.
    fn no_to_device_stored(&self, key: &(String, String)) -> Result<bool, UserError> {
        let Some(acked) = self.to_device_acked.lock().get(key).copied() else { return Ok(false) };
        self.to_device_newest.none_after(key, acked as i64, || -> Result<i64, UserError> {
            Ok(match TO_DEVICE.prefix(&*self.db, &(key.0.clone(), key.1.clone()), Direction::Reverse)?.next() {
                Some(row) => row?.0.2 as i64,
                None => 0,
            })
        })
    }

    /// Deletes the device's messages at or below `upto` (the client has them).
    pub async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: u64) -> Result<(), UserError> {
        // A token from beyond this server's position (another database's) must not
        // mark messages not yet queued as acknowledged.
        let upto = upto.min(self.stream.current());
        let key = (user_id.to_owned(), device_id.to_owned());
        if !self.no_to_device_stored(&key)? {
            let mut batch = Batch::new();
            let range = (key.0.clone(), key.1.clone(), 0)..=(key.0.clone(), key.1.clone(), upto);
            for row in TO_DEVICE.range(&*self.db, range, Direction::Forward)? {
                TO_DEVICE.delete(&mut batch, &row?.0);
            }
            if !batch.is_empty() {
                self.db.commit(batch).await?;
                // Counted again at the next message.
                self.inboxes.sizes.lock().pop(&key);
            }
        }
        // Every message at or below `upto` is gone now.
        let mut acked = self.to_device_acked.lock();
        let at = acked.entry(key).or_insert(upto);
        *at = (*at).max(upto);
        Ok(())
    }

    /// The device's pending messages at or below `upto`, oldest first, at most `limit`.
    pub fn pending_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ToDevice)>, UserError> {
        if self.no_to_device_stored(&(user_id.to_owned(), device_id.to_owned()))? {
            return Ok(Vec::new());
        }
        let range = (user_id.to_owned(), device_id.to_owned(), 0)..=(user_id.to_owned(), device_id.to_owned(), upto);
        let mut out = Vec::new();
        for row in TO_DEVICE.range(&*self.db, range, Direction::Forward)?.take(limit) {
            let ((_, _, count), message) = row?;
            out.push((count, message));
        }
        Ok(out)
    }
}

/// Per device, how many messages its inbox holds at most (counted at the last
/// scan plus those queued since: acknowledged ones only make the real number
/// smaller), and when it was last found full.
pub(crate) struct InboxSizes {
    max: usize,
    sizes: parking_lot::Mutex<lru::LruCache<(String, String), InboxSize>>,
}

/// A remembered inbox size, and when it was last found full.
type InboxSize = (usize, Option<std::time::Instant>);

/// Devices whose inbox size is remembered.
const REMEMBERED_INBOXES: usize = 50_000;

impl InboxSizes {
    pub(crate) fn new(max: usize) -> Self {
        let cap = std::num::NonZeroUsize::new(REMEMBERED_INBOXES).unwrap_or(std::num::NonZeroUsize::MIN);
        Self { max, sizes: parking_lot::Mutex::new(lru::LruCache::new(cap)) }
    }
}

impl Users {
    /// Whether one more message fits in `device`'s inbox, counting it in if so.
    /// The inbox is counted again (at most `max` rows read) only when the
    /// remembered size reaches the cap, and a full one at most once a second.
    fn inbox_has_room(&self, user: &str, device: &str) -> Result<bool, UserError> {
        let max = self.inboxes.max;
        if max == 0 {
            return Ok(true);
        }
        let key = (user.to_owned(), device.to_owned());
        let remembered = self.inboxes.sizes.lock().get(&key).copied();
        let size = match remembered {
            Some((n, _)) if n < max => n,
            Some((_, Some(full_at))) if full_at.elapsed() < std::time::Duration::from_secs(1) => return Ok(false),
            _ => {
                let mut n = 0;
                for row in TO_DEVICE.prefix(&*self.db, &(key.0.clone(), key.1.clone()), Direction::Forward)? {
                    row?;
                    n += 1;
                    if n >= max {
                        break;
                    }
                }
                n
            }
        };
        if size >= max {
            self.inboxes.sizes.lock().put(key, (size, Some(std::time::Instant::now())));
            return Ok(false);
        }
        self.inboxes.sizes.lock().put(key, (size + 1, None));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::testing::{open, service};

    /// To-device messages: delivered until acknowledged, never hidden by the
    /// "nothing stored" shortcut, also for a new message after an acknowledgement,
    /// after a restart, and after a token from beyond the server's position.
    #[tokio::test]
    async fn to_device_messages_are_pending_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let users = service(&db);
        // Messages are kept only for devices the user has.
        let a = ruma::UserId::parse("@a:x").unwrap();
        users.register(&a, None, false, Some("D".into()), None, false).await.unwrap();
        let pending = |users: &Users| -> Vec<Vec<u8>> {
            users.pending_to_device("@a:x", "D", u64::MAX, 100).unwrap().into_iter().map(|(_, m)| m.content).collect()
        };
        let send = |body: &'static [u8]| {
            users.send_to_device("@b:x", "m.test", vec![("@a:x".into(), "D".into(), body.to_vec())])
        };
        assert!(pending(&users).is_empty());
        users.ack_to_device("@a:x", "D", 0).await.unwrap();
        send(b"one").await.unwrap();
        assert_eq!(pending(&users), [b"one".to_vec()]);
        let now = users.stream.current();
        users.ack_to_device("@a:x", "D", now).await.unwrap();
        assert!(pending(&users).is_empty(), "acknowledged messages are gone");
        send(b"two").await.unwrap();
        assert_eq!(pending(&users), [b"two".to_vec()], "a message after the acknowledgement");
        // A token far beyond the server's position acknowledges only what exists.
        users.ack_to_device("@a:x", "D", 1 << 40).await.unwrap();
        send(b"three").await.unwrap();
        assert_eq!(pending(&users), [b"three".to_vec()]);
        // A restart: no marks, the stored message is still delivered.
        let again = service(&db);
        assert_eq!(pending(&again), [b"three".to_vec()]);
        again.ack_to_device("@a:x", "D", again.stream.current()).await.unwrap();
        assert!(pending(&again).is_empty());
        db.shutdown();
    }
}
