//! Requests to other servers, as the protocol code makes them.
//!
//! [`Outbound`] is the engine's side of federation traffic: it holds the
//! [`Transport`], checks the allow/deny lists before anything leaves, signs
//! requests (Server-Server API §"Request Authentication": the method, target
//! and canonical body wrapped in an object and signed with our key), and
//! parses JSON answers. It also holds the sender's volatile state: the
//! in-memory EDU queue per destination (typing, receipts, presence — the
//! spec allows losing them on restart) and the "destination is alive"
//! signals that cut a sender's backoff short.
//!
//! Bounds: at most [`MAX_VOLATILE_EDUS`] volatile EDUs wait per destination
//! (older ones are kept, newer ones dropped and counted in
//! `myelin_federation_edus_dropped_total`).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::{Method, StatusCode};
use parking_lot::{Mutex, RwLock};
use serde_json::Value as JsonValue;
use tokio::sync::Notify;

use super::{
    FederationError,
    transport::{MAX_RESPONSE, NoTransport, OutboundRequest, RawResponse, SharedTransport},
    xmatrix,
};
use crate::Engine;

/// Volatile EDUs kept per destination while it cannot be reached.
pub const MAX_VOLATILE_EDUS: usize = 1000;

/// A JSON answer from another server.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// The body as JSON (`Null` when it was not JSON).
    pub json: JsonValue,
}

impl Response {
    /// The answer's Matrix `error` text, or its status when it has none.
    pub fn error_text(&self) -> String {
        self.json.get("error").and_then(JsonValue::as_str).map_or_else(|| self.status.to_string(), str::to_owned)
    }

    /// The body as `T`, when the request succeeded and the body has that shape.
    pub fn parse<T: serde::de::DeserializeOwned>(self, server: &str) -> Result<T, FederationError> {
        serde_json::from_value(self.json)
            .map_err(|e| FederationError::BadResponse { server: server.to_owned(), reason: e.to_string() })
    }
}

/// The engine's outbound federation state: transport, volatile EDUs, liveness.
pub struct Outbound {
    transport: RwLock<SharedTransport>,
    /// EDUs waiting for the next transaction to each destination (volatile).
    edus: Mutex<HashMap<String, Vec<JsonValue>>>,
    /// Wakes the sender when EDUs or durable rows are queued outside an event append.
    pub edu_ready: Notify,
    /// Per destination: fires when it shows life (an authenticated inbound request).
    alive: Mutex<HashMap<String, Arc<Notify>>>,
    /// How fast the sender retries (shortened by tests).
    timings: Mutex<super::sender::Timings>,
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            transport: RwLock::new(Arc::new(NoTransport)),
            edus: Mutex::new(HashMap::new()),
            edu_ready: Notify::new(),
            alive: Mutex::new(HashMap::new()),
            timings: Mutex::new(super::sender::Timings::default()),
        }
    }
}

impl Outbound {
    /// Installs the transport every later request goes through.
    pub fn set_transport(&self, transport: SharedTransport) {
        *self.transport.write() = transport;
    }

    /// The current transport.
    pub fn transport(&self) -> SharedTransport {
        self.transport.read().clone()
    }

    /// Sets how fast the sender retries failing destinations (tests; taken by
    /// each destination's next run of deliveries).
    pub fn set_sender_timings(&self, timings: super::sender::Timings) {
        *self.timings.lock() = timings;
    }

    /// How fast the sender retries failing destinations.
    pub fn sender_timings(&self) -> super::sender::Timings {
        *self.timings.lock()
    }

    /// The signal that `server` is reachable again (see [`Outbound::mark_alive`]).
    pub fn alive_signal(&self, server: &str) -> Arc<Notify> {
        self.alive.lock().entry(server.to_owned()).or_default().clone()
    }

    /// Records that `server` just reached us: a sender backing off from it
    /// retries now, and a parked one resumes.
    pub fn mark_alive(&self, server: &str) {
        if let Some(n) = self.alive.lock().get(server) {
            n.notify_one();
        }
    }

    /// Queues a volatile EDU for `server`'s next transaction.
    pub fn queue_edu(&self, server: &str, edu: JsonValue) {
        let mut all = self.edus.lock();
        let queue = all.entry(server.to_owned()).or_default();
        if queue.len() < MAX_VOLATILE_EDUS {
            queue.push(edu);
        } else {
            metrics::counter!("myelin_federation_edus_dropped_total").increment(1);
        }
        drop(all);
        self.edu_ready.notify_one();
    }

    /// Takes up to `max` queued volatile EDUs for `server`.
    pub fn take_edus(&self, server: &str, max: usize) -> Vec<JsonValue> {
        let mut all = self.edus.lock();
        let Some(queue) = all.get_mut(server) else { return Vec::new() };
        let n = queue.len().min(max);
        let taken = queue.drain(..n).collect();
        if queue.is_empty() {
            all.remove(server);
        }
        taken
    }

    /// Puts volatile EDUs back in front after a failed send.
    pub fn requeue_edus(&self, server: &str, edus: Vec<JsonValue>) {
        if edus.is_empty() {
            return;
        }
        let mut all = self.edus.lock();
        let queue = all.entry(server.to_owned()).or_default();
        let rest = std::mem::take(queue);
        *queue = edus.into_iter().chain(rest).take(MAX_VOLATILE_EDUS).collect();
    }

    /// Destinations with volatile EDUs waiting.
    pub fn edu_destinations(&self) -> Vec<String> {
        self.edus.lock().iter().filter(|(_, q)| !q.is_empty()).map(|(d, _)| d.clone()).collect()
    }
}

/// Requests to one remote server, made by an engine.
#[derive(Clone, Copy)]
pub struct Remote<'a> {
    engine: &'a Engine,
    server: &'a str,
}

impl Engine {
    /// Requests to `server`.
    pub fn remote<'a>(&'a self, server: &'a str) -> Remote<'a> {
        Remote { engine: self, server }
    }
}

impl Remote<'_> {
    /// A signed request with an optional JSON body; the answer parsed as JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&JsonValue>,
    ) -> Result<Response, FederationError> {
        let bytes = body.map(xmatrix::canonical_body).transpose()?;
        self.bytes_as_json(method, path, bytes, true).await
    }

    /// A signed GET.
    pub async fn get(&self, path: &str) -> Result<Response, FederationError> {
        self.json(Method::GET, path, None).await
    }

    /// An unsigned request (key documents, which need no authentication).
    pub async fn unsigned(
        &self,
        method: Method,
        path: &str,
        body: Option<&JsonValue>,
    ) -> Result<Response, FederationError> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| FederationError::Unauthorized(format!("request body: {e}")))?;
        self.bytes_as_json(method, path, bytes, false).await
    }

    /// A signed request whose body is canonical JSON already (a transaction
    /// spliced from stored PDUs): signed and sent as it is.
    pub async fn canonical(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Response, FederationError> {
        self.bytes_as_json(method, path, Some(body), true).await
    }

    async fn bytes_as_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        signed: bool,
    ) -> Result<Response, FederationError> {
        let raw = self.raw(method, path, body, signed, MAX_RESPONSE).await?;
        let json = serde_json::from_slice(&raw.body).unwrap_or(JsonValue::Null);
        Ok(Response { status: raw.status, json })
    }

    /// Sends one request (canonical JSON body when `signed`) and returns the raw
    /// answer, at most `limit` body bytes. Refused before anything leaves when
    /// the name is not a valid server name, federation is off or the
    /// allow/deny lists exclude the server.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        signed: bool,
        limit: usize,
    ) -> Result<RawResponse, FederationError> {
        self.send(method, path, body, signed, limit, None).await
    }

    /// A `GET` whose 2xx answer body is written to `spool` (at most `limit`
    /// bytes) instead of memory; other answers come back in memory.
    pub async fn download(
        &self,
        path: &str,
        signed: bool,
        limit: usize,
        spool: std::path::PathBuf,
    ) -> Result<RawResponse, FederationError> {
        self.send(Method::GET, path, None, signed, limit, Some(spool)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        signed: bool,
        limit: usize,
        spool: Option<std::path::PathBuf>,
    ) -> Result<RawResponse, FederationError> {
        let engine = self.engine;
        if !crate::util::valid_server_name(self.server) {
            return Err(FederationError::BadRequest(format!("not a valid server name: {:?}", self.server)));
        }
        if !engine.policy.allows(self.server) {
            return Err(FederationError::NotAllowed(self.server.to_owned()));
        }
        let authorization = signed.then(|| {
            xmatrix::sign_canonical(
                &engine.keys,
                engine.server_name.as_str(),
                self.server,
                method.as_str(),
                path,
                body.as_deref(),
            )
        });
        let request = OutboundRequest {
            method,
            path_and_query: path.to_owned(),
            body: body.map(Bytes::from),
            authorization,
            limit,
            spool,
        };
        let transport = engine.federation.transport();
        transport
            .send(self.server, request)
            .await
            .map_err(|source| FederationError::Transport { server: self.server.to_owned(), source })
    }
}

/// What [`enc`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes one path segment or query value.
pub fn enc(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, UNRESERVED).to_string()
}
