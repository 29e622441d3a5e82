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

    /// Takes the claim on a client transaction id before anything is built for
    /// it: a concurrent request with the same `(user, device, txn id)` waits
    /// here until the claim is dropped, and then finds the first one's
    /// [`Users::txn_event`] row (written in the event's own batch, before the
    /// first request answers and drops its claim). `None` when
    /// [`super::MAX_TXNS_IN_FLIGHT`] transactions are in flight.
    pub async fn claim_txn(
        &self,
        user_id: &str,
        device_id: &str,
        txn: &str,
    ) -> Option<crate::in_flight::Claim<'_, super::TxnKey>> {
        self.txn_claims.claim((user_id.to_owned(), device_id.to_owned(), txn.to_owned())).await
    }

    /// The event id a transaction already produced.
    pub fn txn_event(&self, user_id: &str, device_id: &str, txn: &str) -> Result<Option<String>, UserError> {
        Ok(TXNS.get(&*self.db, &(user_id.to_owned(), device_id.to_owned(), txn.to_owned()))?)
    }
}
