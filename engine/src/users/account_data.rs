//! Account data (§"Client config"): global and per-room, with the by-position
//! index an incremental `/sync` reads.

use myelin_storage::{Batch, Direction};

use super::{ACCOUNT_DATA, ACCOUNT_DATA_BY_COUNT, AccountData, AccountDataRef, UserError, Users};

impl Users {
    /// Indexes account data stored before the by-position index existed (once, at
    /// start-up, off the async runtime); a no-op when the index has rows.
    pub(crate) fn index_existing_account_data(&self) -> Result<usize, UserError> {
        if ACCOUNT_DATA_BY_COUNT.iter(&*self.db, Direction::Forward)?.next().is_some() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        let mut n = 0;
        for row in ACCOUNT_DATA.iter(&*self.db, Direction::Forward)? {
            let ((user, room, kind), data) = row?;
            ACCOUNT_DATA_BY_COUNT.put(&mut batch, &(user, data.count), &AccountDataRef { room, kind })?;
            n += 1;
        }
        if n > 0 {
            self.db.commit_blocking(batch)?;
        }
        Ok(n)
    }

    /// Global (`room` = None) or per-room account data of `kind`.
    pub fn account_data(&self, user_id: &str, room: Option<&str>, kind: &str) -> Result<Option<Vec<u8>>, UserError> {
        let key = (user_id.to_owned(), room.unwrap_or_default().to_owned(), kind.to_owned());
        Ok(ACCOUNT_DATA.get(&*self.db, &key)?.map(|r| r.json))
    }

    /// All account data of the user: `(room or "", type, data)`.
    pub fn all_account_data(&self, user_id: &str) -> Result<Vec<(String, String, AccountData)>, UserError> {
        let mut out = Vec::new();
        for row in ACCOUNT_DATA.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let ((_, room, kind), data) = row?;
            out.push((room, kind, data));
        }
        Ok(out)
    }

    /// The user's account data written after stream position `since` (all of it for
    /// `None`): `(room or "", type, data)`. An incremental sync reads only what
    /// changed, not a row per room the user ever read or tagged.
    pub fn account_data_since(
        &self,
        user_id: &str,
        since: Option<u64>,
    ) -> Result<Vec<(String, String, AccountData)>, UserError> {
        let Some(since) = since else { return self.all_account_data(user_id) };
        let user = user_id.to_owned();
        let quiet = self.account_data_newest.none_after(user_id, since as i64, || -> Result<i64, UserError> {
            Ok(match ACCOUNT_DATA_BY_COUNT.prefix(&*self.db, &(user.clone(),), Direction::Reverse)?.next() {
                Some(row) => row?.0.1 as i64,
                None => 0,
            })
        })?;
        if quiet {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let range = (user.clone(), since.saturating_add(1))..=(user.clone(), u64::MAX);
        for row in ACCOUNT_DATA_BY_COUNT.range(&*self.db, range, Direction::Forward)? {
            let ((_, count), r) = row?;
            let key = (user.clone(), r.room, r.kind);
            match ACCOUNT_DATA.get(&*self.db, &key)? {
                Some(data) if data.count == count => out.push((key.1, key.2, data)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Stores account data at a new stream position (which wakes the user's `/sync`).
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room: Option<&str>,
        kind: &str,
        json: Vec<u8>,
    ) -> Result<(), UserError> {
        let key = (user_id.to_owned(), room.unwrap_or_default().to_owned(), kind.to_owned());
        let mut batch = Batch::new();
        let count = self.stream.next_in(&mut batch);
        // Raised before the write is handed over: never below what a reader can see.
        self.account_data_newest.raise(key.0.clone(), count as i64);
        if let Some(old) = ACCOUNT_DATA.get(&*self.db, &key)? {
            ACCOUNT_DATA_BY_COUNT.delete(&mut batch, &(key.0.clone(), old.count));
        }
        let by_count = AccountDataRef { room: key.1.clone(), kind: key.2.clone() };
        ACCOUNT_DATA_BY_COUNT.put(&mut batch, &(key.0.clone(), count), &by_count)?;
        ACCOUNT_DATA.put(&mut batch, &key, &AccountData { count, json })?;
        self.db.commit(batch).await?;
        Ok(())
    }
    /// Changes one account-data event through `change` (given the stored JSON,
    /// returning the new JSON, or None to leave it), with no other such change in between.
    pub async fn update_account_data(
        &self,
        user_id: &str,
        room: Option<&str>,
        kind: &str,
        change: impl FnOnce(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, UserError>,
    ) -> Result<(), UserError> {
        let _one_at_a_time = self.account_data_lock.lock().await;
        match change(self.account_data(user_id, room, kind)?)? {
            Some(new) => self.set_account_data(user_id, room, kind, new).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::testing::{open, service};

    #[test]
    fn account_data_of_an_older_database_is_indexed_once_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        // Rows as a database from before the index holds them.
        let mut batch = Batch::new();
        for (room, count) in [("", 4u64), ("!r:x", 6)] {
            let key = ("@a:x".to_owned(), room.to_owned(), "m.tag".to_owned());
            ACCOUNT_DATA.put(&mut batch, &key, &AccountData { count, json: b"{}".to_vec() }).unwrap();
        }
        db.commit_blocking(batch).unwrap();
        let users = service(&db);
        assert_eq!(users.index_existing_account_data().unwrap(), 2);
        assert_eq!(users.index_existing_account_data().unwrap(), 0, "indexed once");
        let since_5: Vec<String> =
            users.account_data_since("@a:x", Some(5)).unwrap().into_iter().map(|(room, _, _)| room).collect();
        assert_eq!(since_5, ["!r:x"]);
        assert_eq!(users.account_data_since("@a:x", None).unwrap().len(), 2);
        db.shutdown();
    }

    /// An incremental read with nothing newer skips the index, yet never misses
    /// a later write, nor data stored before this `Users` (a restart) existed.
    #[tokio::test]
    async fn account_data_since_sees_every_write_after_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let users = service(&db);
        let rooms = |users: &Users, since: u64| -> Vec<String> {
            users.account_data_since("@a:x", Some(since)).unwrap().into_iter().map(|(room, _, _)| room).collect()
        };
        assert!(rooms(&users, 0).is_empty());
        users.set_account_data("@a:x", Some("!r:x"), "m.tag", b"{}".to_vec()).await.unwrap();
        let first = users.account_data("@a:x", Some("!r:x"), "m.tag").unwrap();
        assert!(first.is_some());
        let after_first = users.all_account_data("@a:x").unwrap()[0].2.count;
        assert_eq!(rooms(&users, after_first - 1), ["!r:x"]);
        assert!(rooms(&users, after_first).is_empty(), "nothing newer than the token");
        users.set_account_data("@a:x", None, "m.direct", b"{}".to_vec()).await.unwrap();
        assert_eq!(rooms(&users, after_first), [""], "a write after the token is seen");
        // A new service over the same data (as after a restart) has no marks yet.
        let again = service(&db);
        assert_eq!(rooms(&again, after_first), [""]);
        assert!(rooms(&again, after_first + 1).is_empty());
        db.shutdown();
    }
}
