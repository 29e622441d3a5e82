//! What `myelin admin federation queue` shows: each destination's outbound
//! queue (depth, age of its oldest PDU) and the sender's state for it, read
//! from what is stored (the queue rows and the stored backoff), so it is the
//! same whether the server runs or not.

use std::collections::HashMap;

use super::{FederationError, sender::origin_server_ts};
use crate::{Engine, util::now_ms};

/// Whether a destination's queue is being worked, waits out a backoff, or is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationState {
    /// Sent to as soon as something is queued.
    Active,
    /// Failing: retried after a wait.
    Backoff,
    /// Unreachable for longer than `federation.park_after_s`: kept, not retried.
    Parked,
}

/// One destination's queue, as `myelin admin federation queue` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestinationStatus {
    /// The server name.
    pub destination: String,
    /// Queued items (PDUs and durable EDUs), counted up to 1,000,000.
    pub depth: usize,
    /// Age of the oldest queued PDU, by its `origin_server_ts`.
    pub oldest_age_s: Option<u64>,
    /// See [`DestinationState`].
    pub state: DestinationState,
    /// How long it has been failing, when it is.
    pub failing_for_s: Option<u64>,
}

/// Every destination with queued items or a stored backoff, by name.
pub fn queue_status(engine: &Engine) -> Result<Vec<DestinationStatus>, FederationError> {
    let now = now_ms();
    let backoffs: HashMap<String, super::backoff::Backoff> = engine.backoffs.list(100_000)?.into_iter().collect();
    let mut out = Vec::new();
    let queued = engine.rooms.outbound_destinations()?;
    let mut names: Vec<(Option<u64>, String)> = queued.into_iter().map(|(d, n)| (Some(d), n)).collect();
    for name in backoffs.keys() {
        if !names.iter().any(|(_, n)| n == name) {
            names.push((None, name.clone()));
        }
    }
    names.sort_by(|a, b| a.1.cmp(&b.1));
    for (dest, name) in names {
        let (mut depth, mut oldest) = (0, None);
        if let Some(d) = dest {
            depth = engine.rooms.outbound_depth(d, 1_000_000)?;
            let first = engine.rooms.outbound_batch(d, 1, 100)?;
            oldest = first.pdus.first().and_then(|(_, p)| origin_server_ts(p)).map(|ts| now.saturating_sub(ts) / 1000);
        }
        let backoff = backoffs.get(&name);
        let state = match backoff {
            Some(b) if b.parked => DestinationState::Parked,
            Some(_) => DestinationState::Backoff,
            None => DestinationState::Active,
        };
        let failing_for_s =
            backoff.filter(|b| b.failing_since_ms != 0).map(|b| now.saturating_sub(b.failing_since_ms) / 1000);
        out.push(DestinationStatus { destination: name, depth, oldest_age_s: oldest, state, failing_for_s });
    }
    Ok(out)
}
