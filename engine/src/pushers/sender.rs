//! Posts queued notifications to push gateways (Push Gateway API
//! §"`POST /_matrix/push/v1/notify`"), one task per pusher, oldest first.
//!
//! > `rejected`: A list of all pushkeys given in the notification request
//! > that are not valid. (…) Homeservers should remove these pushkeys.
//!
//! A notification is deleted after a 2xx. A 4xx other than 429 means the
//! gateway will never take it: it is dropped and counted. Anything else
//! (5xx, 429, no answer) is retried with backoff from 1 s to 2 min. One
//! older than `push.max_age_s` is dropped unsent, counted.

use crate::federation::backoff::jitter;
use std::{sync::Arc, time::Duration};

use http::Method;
use myelin_storage::{Batch, Direction, Raw, Table, catalog};
use tokio::sync::{Notify, watch};

use super::dispatch::Queued;
use crate::{Engine, federation::OutboundRequest, util::now_ms};

/// `(pusher key, stream position)` → a queued notification.
pub(crate) const QUEUE: Table<(String, u64), Raw> = Table::new(&catalog::PUSHERCOUNT_NOTIFICATION);

/// Runs the senders until `stop` fires.
pub async fn run(engine: Arc<Engine>, stop: watch::Receiver<bool>) {
    crate::delivery::run(PushQueues(engine), stop).await
}

/// The push notification queues, a task per pusher.
struct PushQueues(Arc<Engine>);

impl crate::delivery::KeyedQueue for PushQueues {
    const SPAN: &'static str = "push_sender";

    fn scan(&self) -> Vec<String> {
        self.0.pushers.queued_keys().unwrap_or_default()
    }

    fn take_ready(&self) -> Vec<String> {
        self.0.pushers.take_ready()
    }

    async fn ready(&self) {
        self.0.pushers.ready_notify.notified().await
    }

    fn deliver(&self, key: String, wake: Arc<Notify>) -> impl std::future::Future<Output = ()> + Send + 'static {
        deliver(self.0.clone(), key, wake)
    }
}

/// Splits a gateway URL into its base (`scheme://authority`) and path.
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let scheme_len = url.len() - rest.len();
    let slash = rest.find('/').unwrap_or(rest.len());
    let base = url[..scheme_len + slash].to_owned();
    let path = if slash == rest.len() { "/".to_owned() } else { rest[slash..].to_owned() };
    Some((base, path))
}

/// Delivers one pusher's queue, then waits to be woken; ends when the pusher is gone.
async fn deliver(engine: Arc<Engine>, key: String, wake: Arc<Notify>) {
    let Ok((user, app_id, pushkey)) = serde_json::from_str::<(String, String, String)>(&key) else { return };
    let mut backoff = Duration::from_secs(1);
    loop {
        let pusher = match engine.pushers.get(&user, &app_id, &pushkey) {
            Ok(Some(p)) => p,
            _ => return,
        };
        let Some((base, path)) = pusher.data.url.as_deref().and_then(split_url) else { return };
        let next = QUEUE.prefix(&*engine.db, &(key.clone(),), Direction::Forward).ok().and_then(|mut it| it.next());
        let ((_, count), Raw(bytes)) = match next {
            Some(Ok(row)) => row,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the push queue failed");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            None => {
                engine.pushers.depths.lock().insert(key.clone(), 0);
                wake.notified().await;
                continue;
            }
        };
        let row_key = (key.clone(), count);
        let queued: Option<Queued> = serde_json::from_slice(&bytes).ok();
        let too_old = queued
            .as_ref()
            .is_none_or(|q| now_ms().saturating_sub(q.created_ms) > engine.config.push.max_age_s.saturating_mul(1000));
        if too_old {
            metrics::counter!("myelin_push_dropped_total", "reason" => "too_old").increment(1);
            drop_row(&engine, &key, &row_key).await;
            continue;
        }
        let Some(queued) = queued else { continue };
        let body = serde_json::to_vec(&queued.body).unwrap_or_default();
        let request = OutboundRequest {
            method: Method::POST,
            path_and_query: path,
            body: Some(body.into()),
            authorization: None,
            limit: 64 * 1024,
            spool: None,
        };
        // A user chose the URL: checked by the outbound policy, unless the
        // operator named the gateway as their own.
        let transport = engine.federation.transport();
        let sent = if engine.config.push.trusts_gateway(&base) {
            transport.send_url(&base, request).await
        } else {
            transport.send_user_url(&base, request).await
        };
        match sent {
            Ok(resp) if resp.status.is_success() => {
                backoff = Duration::from_secs(1);
                metrics::counter!("myelin_push_notifications_total", "result" => "ok").increment(1);
                drop_row(&engine, &key, &row_key).await;
                let rejected: Vec<String> = serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .ok()
                    .and_then(|v| v.get("rejected").cloned())
                    .and_then(|r| serde_json::from_value(r).ok())
                    .unwrap_or_default();
                if rejected.contains(&pushkey) {
                    tracing::info!(%user, %app_id, "the gateway rejected the pushkey; removing the pusher");
                    let _ = engine.pushers.remove(&user, &app_id, &pushkey).await;
                    return;
                }
            }
            Ok(resp) if resp.status.is_client_error() && resp.status.as_u16() != 429 => {
                tracing::warn!(status = %resp.status, "the push gateway refused a notification; dropping it");
                metrics::counter!("myelin_push_dropped_total", "reason" => "refused").increment(1);
                drop_row(&engine, &key, &row_key).await;
            }
            failed => {
                match &failed {
                    Ok(resp) => {
                        tracing::info!(status = %resp.status, wait = ?backoff, "push gateway unavailable; retrying")
                    }
                    Err(e) => tracing::info!(error = %e, wait = ?backoff, "push gateway unreachable; retrying"),
                }
                metrics::counter!("myelin_push_notifications_total", "result" => "retry").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = wake.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(120));
            }
        }
    }
}

async fn drop_row(engine: &Engine, key: &str, row: &(String, u64)) {
    let mut batch = Batch::new();
    QUEUE.delete(&mut batch, row);
    if let Err(e) = engine.db.commit_unsynced(batch).await {
        tracing::warn!(error = %e, "could not remove a sent notification; it may be sent again");
    }
    if let Some(d) = engine.pushers.depths.lock().get_mut(key) {
        *d = d.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn gateway_urls_split_into_base_and_path() {
        assert_eq!(
            split_url("https://push.example.org/_matrix/push/v1/notify"),
            Some(("https://push.example.org".into(), "/_matrix/push/v1/notify".into()))
        );
        assert_eq!(split_url("http://127.0.0.1:5000/x"), Some(("http://127.0.0.1:5000".into(), "/x".into())));
        assert_eq!(split_url("ftp://x/y"), None);
    }
}
