//! What the homeserver asks an appservice (Application Service API
//! §"Querying"; §"Pinging"; §"Third-party networks").
//!
//! > `GET /_matrix/app/v1/users/{userId}`: This endpoint is invoked by the
//! > homeserver on an application service to query the existence of a given
//! > user ID. (…) The application service should create the user.
//!
//! > `GET /_matrix/app/v1/rooms/{roomAlias}`: (…) query the existence of a
//! > given room alias. The application service should create the room and
//! > associate it with the alias.
//!
//! > `GET /_matrix/app/v1/thirdparty/location?alias=` / `GET
//! > /_matrix/app/v1/thirdparty/user?userid=`: Retrieve an array of
//! > third-party network locations from a Matrix room alias (users from a
//! > Matrix User ID).
//!
//! Only appservices whose namespaces contain the id are asked, and only those
//! with a URL. A failed or refused query is "does not exist", never an error
//! for the client that looked the id up.

use std::time::{Duration, Instant};

use http::Method;

use super::Appservice;
use crate::{
    Engine,
    federation::{OutboundRequest, RawResponse, TransportError, enc},
};

/// Largest answer read for a query.
const MAX_ANSWER: usize = 1 << 20;

/// Why a ping did not succeed (Client-Server API §"Appservice ping" errors).
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The registration has no URL.
    #[error("the appservice has no URL")]
    UrlNotSet,
    /// The appservice answered with a non-2xx status.
    #[error("the appservice answered {status}")]
    BadStatus {
        /// Its status.
        status: u16,
        /// Its body, as text.
        body: String,
    },
    /// The appservice could not be reached.
    #[error("could not reach the appservice")]
    ConnectionFailed,
    /// The appservice took too long.
    #[error("the appservice did not answer in time")]
    Timeout,
}

async fn ask(
    engine: &Engine,
    a: &Appservice,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<RawResponse, TransportError> {
    let url = a.url().ok_or(TransportError::NoTransport)?.to_owned();
    let request = OutboundRequest {
        method,
        path_and_query: path,
        body: body.map(Into::into),
        authorization: Some(format!("Bearer {}", a.registration.hs_token)),
        limit: MAX_ANSWER,
        spool: None,
    };
    engine.federation.transport().send_url(&url, request).await
}

impl Engine {
    /// Asks the appservices whose user namespaces hold `user_id` whether it
    /// exists; `true` once one answers 200 (it has then registered the user).
    pub async fn query_appservice_user(&self, user_id: &str) -> bool {
        let list = self.appservices.all();
        for a in list.iter().filter(|a| a.url().is_some() && a.owns_user(user_id)) {
            let path = format!("/_matrix/app/v1/users/{}", enc(user_id));
            match ask(self, a, Method::GET, path, None).await {
                Ok(r) if r.status.is_success() => return true,
                Ok(r) => tracing::debug!(appservice = a.id(), status = %r.status, user_id, "user query: not found"),
                Err(e) => tracing::info!(appservice = a.id(), error = %e, user_id, "user query failed"),
            }
        }
        false
    }

    /// Asks the appservices whose alias namespaces hold `alias` whether it
    /// exists; `true` once one answers 200 (it has then created the room).
    pub async fn query_appservice_alias(&self, alias: &str) -> bool {
        let list = self.appservices.all();
        for a in list.iter().filter(|a| a.url().is_some() && a.owns_alias(alias)) {
            let path = format!("/_matrix/app/v1/rooms/{}", enc(alias));
            match ask(self, a, Method::GET, path, None).await {
                Ok(r) if r.status.is_success() => return true,
                Ok(r) => tracing::debug!(appservice = a.id(), status = %r.status, alias, "alias query: not found"),
                Err(e) => tracing::info!(appservice = a.id(), error = %e, alias, "alias query failed"),
            }
        }
        false
    }

    /// A local alias from the directory or, when it is not there and an
    /// appservice's alias namespaces hold it, from that appservice (which
    /// creates the room and the alias when it answers 200).
    pub async fn resolve_local_alias(
        &self,
        alias: &str,
    ) -> Result<Option<crate::directory::AliasEntry>, crate::EngineError> {
        if let Some(entry) = self.directory.resolve(alias)? {
            return Ok(Some(entry));
        }
        if self.appservices.is_empty() || !self.query_appservice_alias(alias).await {
            return Ok(None);
        }
        self.directory.resolve(alias)
    }

    /// Creates the sender user of every appservice that has none yet (its
    /// bot acts in rooms and needs an account, without a password).
    pub async fn ensure_appservice_senders(&self) -> Result<(), crate::users::UserError> {
        for a in self.appservices.all().iter() {
            if !self.users.exists(&a.sender)? {
                self.users.register(&a.sender, None, false, None, None, true).await?;
                tracing::info!(appservice = a.id(), user_id = %a.sender, "created the appservice's sender user");
            }
        }
        Ok(())
    }

    /// `POST /_matrix/app/v1/ping` to appservice `a`; how long it took.
    pub async fn ping_appservice(&self, a: &Appservice, transaction_id: Option<&str>) -> Result<Duration, PingError> {
        if a.url().is_none() {
            return Err(PingError::UrlNotSet);
        }
        let mut body = serde_json::Map::new();
        if let Some(t) = transaction_id {
            body.insert("transaction_id".into(), serde_json::Value::String(t.to_owned()));
        }
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let started = Instant::now();
        match ask(self, a, Method::POST, "/_matrix/app/v1/ping".into(), Some(body)).await {
            Ok(r) if r.status.is_success() => Ok(started.elapsed()),
            Ok(r) => Err(PingError::BadStatus {
                status: r.status.as_u16(),
                body: String::from_utf8_lossy(&r.body).chars().take(1000).collect(),
            }),
            Err(TransportError::Timeout) => Err(PingError::Timeout),
            Err(_) => Err(PingError::ConnectionFailed),
        }
    }

    /// Asks the appservices that declare `protocol` a third-party question
    /// (`protocol/{p}`, `location/{p}`, `user/{p}`); the first 200's JSON.
    pub async fn query_appservice_thirdparty(
        &self,
        kind: &str,
        protocol: &str,
        query: &str,
    ) -> Option<serde_json::Value> {
        let list = self.appservices.all();
        for a in list.iter().filter(|a| a.url().is_some() && a.registration.protocols.iter().any(|p| p == protocol)) {
            let mut path = format!("/_matrix/app/v1/thirdparty/{kind}/{}", enc(protocol));
            if !query.is_empty() {
                path.push('?');
                path.push_str(query);
            }
            match ask(self, a, Method::GET, path, None).await {
                Ok(r) if r.status.is_success() => match serde_json::from_slice(&r.body) {
                    Ok(v) => return Some(v),
                    Err(e) => tracing::info!(appservice = a.id(), error = %e, "third-party answer is not JSON"),
                },
                Ok(r) => {
                    tracing::debug!(appservice = a.id(), status = %r.status, kind, protocol, "third-party query refused")
                }
                Err(e) => tracing::info!(appservice = a.id(), error = %e, "third-party query failed"),
            }
        }
        None
    }

    /// The reverse third-party lookups: `alias` (kind `location`) or `userid`
    /// (kind `user`) asked of every appservice whose namespaces hold it; the
    /// entries of all their answers, at most [`MAX_REVERSE_ENTRIES`].
    pub async fn query_appservice_reverse(&self, kind: ReverseLookup, id: &str) -> Vec<serde_json::Value> {
        let (path, param) = match kind {
            ReverseLookup::Location => ("location", "alias"),
            ReverseLookup::User => ("user", "userid"),
        };
        let query = format!("{param}={}", enc(id));
        let mut out = Vec::new();
        let list = self.appservices.all();
        let interested = list.iter().filter(|a| {
            a.url().is_some()
                && match kind {
                    ReverseLookup::Location => a.owns_alias(id),
                    ReverseLookup::User => a.owns_user(id),
                }
        });
        for a in interested {
            let uri = format!("/_matrix/app/v1/thirdparty/{path}?{query}");
            match ask(self, a, Method::GET, uri, None).await {
                Ok(r) if r.status.is_success() => match serde_json::from_slice::<Vec<serde_json::Value>>(&r.body) {
                    Ok(entries) => out.extend(entries.into_iter().filter(serde_json::Value::is_object)),
                    Err(e) => tracing::info!(appservice = a.id(), error = %e, "third-party answer is not a JSON array"),
                },
                Ok(r) => {
                    tracing::debug!(appservice = a.id(), status = %r.status, kind = path, "reverse lookup refused")
                }
                Err(e) => tracing::info!(appservice = a.id(), error = %e, "reverse lookup failed"),
            }
            if out.len() >= MAX_REVERSE_ENTRIES {
                out.truncate(MAX_REVERSE_ENTRIES);
                break;
            }
        }
        out
    }
}

/// Most entries a reverse third-party lookup answers.
pub const MAX_REVERSE_ENTRIES: usize = 1000;

/// Which reverse third-party lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReverseLookup {
    /// Locations (bridged rooms) of a room alias.
    Location,
    /// Third-party users of a Matrix user id.
    User,
}
