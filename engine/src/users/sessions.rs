//! Access tokens: the session lookup every request makes, and the in-memory
//! cache of it that every token deletion clears.

use myelin_storage::Batch;

use super::{Session, TOKENS, UserError, Users};

/// Sessions of access tokens, and a generation raised by every token deletion.
pub(super) struct SessionCache {
    pub(super) generation: u64,
    pub(super) by_token: myelin_storage::SharedLru<String, Session>,
}

impl Users {
    /// Commits a batch that deletes access tokens, then drops every remembered
    /// session (see [`Users::session`]).
    pub(super) async fn commit_token_deletions(&self, batch: Batch) -> Result<(), UserError> {
        self.db.commit(batch).await?;
        let mut cache = self.sessions.lock();
        cache.generation += 1;
        cache.by_token.lock().clear();
        Ok(())
    }

    /// The session of an access token.
    ///
    /// Valid tokens are remembered. Every change that deletes tokens (logout,
    /// device replaced or deleted, password change, deactivation) clears them
    /// after its write, and a read that started before such a clear does not
    /// store what it read (the generation moved), so a deleted token is never
    /// served from memory once its deletion has returned.
    pub fn session(&self, token: &str) -> Result<Option<Session>, UserError> {
        let generation = {
            let cache = self.sessions.lock();
            if let Some(s) = cache.by_token.lock().get(token) {
                return Ok(Some(s.clone()));
            }
            cache.generation
        };
        let session = TOKENS.get(&*self.db, &token.to_owned())?;
        if let Some(s) = &session {
            let cache = self.sessions.lock();
            if cache.generation == generation {
                cache.by_token.lock().put(token.to_owned(), s.clone());
            }
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use ruma::UserId;

    use crate::users::testing::{open, service};

    /// A remembered token stops working with every change that deletes it.
    #[tokio::test]
    async fn remembered_tokens_end_with_logout_reuse_password_change_and_deactivation() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let users = service(&db);
        let alice = UserId::parse("@alice:x").unwrap();
        let login = |device: &str| users.login(&alice, "pw-1", Some(device.to_owned()), None);
        let valid = |token: &str| users.session(token).unwrap().is_some();
        users.register(&alice, Some("pw-1"), false, None, None, true).await.unwrap();
        let (a, b, c) = (login("A").await.unwrap(), login("B").await.unwrap(), login("C").await.unwrap());
        for t in [&a, &b, &c] {
            assert!(valid(&t.access_token) && valid(&t.access_token), "read, then remembered");
        }
        users.logout(alice.as_str(), "A").await.unwrap();
        assert!(!valid(&a.access_token) && valid(&b.access_token));
        let b2 = login("B").await.unwrap();
        assert!(!valid(&b.access_token), "a reused device id replaces its token");
        assert!(valid(&b2.access_token));
        users.set_password(&alice, "pw-2", Some("C")).await.unwrap();
        assert!(!valid(&b2.access_token) && valid(&c.access_token), "other devices logged out");
        users.deactivate(&alice).await.unwrap();
        assert!(!valid(&c.access_token));
        db.shutdown();
    }
}
