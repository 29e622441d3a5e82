//! Filters (§"Filtering") and transaction ids (§"Transaction identifiers").

use myelin_storage::{Batch, Direction, Raw};

use super::{FILTERS, TXNS, UserError, Users};

impl Users {
    /// Stores a filter and returns its id.
    pub async fn put_filter(&self, user_id: &str, json: Vec<u8>) -> Result<u64, UserError> {
        let _guard = self.create_lock.lock().await;
        let next = match FILTERS.prefix(&*self.db, &(user_id.to_owned(),), Direction::Reverse)?.next() {
            Some(row) => row?.0.1 + 1,
            None => 0,
        };
        let mut batch = Batch::new();
        FILTERS.put(&mut batch, &(user_id.to_owned(), next), &Raw(json))?;
        self.db.commit(batch).await?;
        Ok(next)
    }

    /// A stored filter.
    pub fn filter(&self, user_id: &str, id: u64) -> Result<Option<Vec<u8>>, UserError> {
        Ok(FILTERS.get(&*self.db, &(user_id.to_owned(), id))?.map(|r| r.0))
    }

    /// The event id a transaction already produced.
    pub fn txn_event(&self, user_id: &str, device_id: &str, txn: &str) -> Result<Option<String>, UserError> {
        Ok(TXNS.get(&*self.db, &(user_id.to_owned(), device_id.to_owned(), txn.to_owned()))?)
    }

    /// Remembers the event a transaction produced.
    pub async fn set_txn_event(
        &self,
        user_id: &str,
        device_id: &str,
        txn: &str,
        event_id: &str,
    ) -> Result<(), UserError> {
        let mut batch = Batch::new();
        TXNS.put(&mut batch, &(user_id.to_owned(), device_id.to_owned(), txn.to_owned()), &event_id.to_owned())?;
        self.db.commit(batch).await?;
        Ok(())
    }
}
