//! Matrix errors at the HTTP edge: one type, one mapping from engine errors.
//!
//! Client-Server API §"Standard error response": "Any errors which occur at
//! the Matrix API level MUST return a 'standard error response'":
//! `{"errcode": "M_...", "error": "..."}`.

use http::StatusCode;
use myelin_engine::{EngineError, rooms::RoomError, users::UserError};

use crate::response::{Resp, json_response};

/// An error answered to a client or a server.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Matrix error code.
    pub errcode: &'static str,
    /// Human-readable message.
    pub message: String,
    /// For `M_LIMIT_EXCEEDED`: when to try again.
    pub retry_after_ms: Option<u64>,
    /// For `M_INCOMPATIBLE_ROOM_VERSION`: the room's version.
    pub room_version: Option<String>,
    /// For `M_WRONG_ROOM_KEYS_VERSION`: the user's current backup version.
    pub current_version: Option<String>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            retry_after_ms: None,
            room_version: None,
            current_version: None,
        }
    }

    /// 404 `M_UNRECOGNIZED`: no such endpoint.
    pub fn unrecognized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", message)
    }

    /// 405 `M_UNRECOGNIZED`: the endpoint exists with other methods.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "method not allowed on this endpoint")
    }

    /// 413 `M_TOO_LARGE`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", format!("request body exceeds {limit} bytes"))
    }

    /// 400 `M_NOT_JSON`.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    /// 400 `M_BAD_JSON`: valid JSON, wrong shape.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }

    /// 502 `M_UNKNOWN`: another server could not be reached. The one answer for a
    /// destination refused by the outbound policy, a refused connection, a
    /// timeout and a TLS failure alike, so that nobody learns which it was.
    pub fn unreachable() -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", "the server could not be reached")
    }

    /// 500 `M_UNKNOWN`.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", message)
    }

    /// The standard error response.
    pub fn into_response(self) -> Resp {
        let mut body = serde_json::json!({ "errcode": self.errcode, "error": self.message });
        if let Some(ms) = self.retry_after_ms {
            body["retry_after_ms"] = serde_json::json!(ms);
        }
        if let Some(v) = &self.room_version {
            body["room_version"] = serde_json::json!(v);
        }
        if let Some(v) = &self.current_version {
            body["current_version"] = serde_json::json!(v);
        }
        let mut resp = json_response(self.status, &body);
        if let Some(ms) = self.retry_after_ms
            && let Ok(v) = http::HeaderValue::from_str(&ms.div_ceil(1000).to_string())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

impl ApiError {
    /// What the caller learns of an internal failure: that it failed (details
    /// stay in the log), or, when the disk is full, 507 with a message saying
    /// so, so that a client (and its user) knows to retry later rather than
    /// suspect its request.
    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        let text = e.to_string();
        if text.contains("No space left on device") || text.contains("ENOSPC") {
            metrics::counter!("myelin_storage_full_refusals_total").increment(1);
            let mut err = ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "M_UNKNOWN",
                "the server's storage is full; nothing was stored, try again later",
            );
            err.retry_after_ms = Some(10_000);
            return err;
        }
        ApiError::unknown("internal server error")
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Room(e) => e.into(),
            EngineError::User(e) => (*e).into(),
            EngineError::E2ee(e) => e.into(),
            EngineError::Federation(e) => (*e).into(),
            EngineError::Busy(what) => ApiError::busy(what),
            e => {
                tracing::error!(error = %e, "request failed in the engine");
                ApiError::internal(&e)
            }
        }
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", m),
            RoomError::UnknownRoom(m) => ApiError::not_found(format!("unknown room {m}")),
            RoomError::UnknownEvent(m) => ApiError::not_found(format!("unknown event {m}")),
            RoomError::BadEvent(m) => ApiError::bad_json(m),
            RoomError::UnsupportedVersion(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                format!("unsupported room version {m}"),
            ),
            RoomError::InUse(m) => ApiError::new(StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", m),
            other => {
                tracing::error!(error = %other, "rooms engine failure");
                ApiError::internal(&other)
            }
        }
    }
}

impl From<myelin_engine::federation::FederationError> for ApiError {
    fn from(e: myelin_engine::federation::FederationError) -> Self {
        use myelin_engine::federation::FederationError as F;
        match e {
            F::BadRequest(m) => ApiError::bad_json(m),
            F::Forbidden(m) => ApiError::forbidden(m),
            F::NotFound(m) => ApiError::not_found(m),
            F::Unauthorized(m) => ApiError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", m),
            F::NotAllowed(server) => {
                ApiError::forbidden(format!("federation with {server} is not allowed by this server's configuration"))
            }
            F::IncompatibleVersion(v) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("the room is version {v}"),
            )
            .with_room_version(&v),
            F::Transport { server, source } => {
                tracing::debug!(%server, error = %source, "answering that a server could not be reached");
                ApiError::unreachable()
            }
            F::UnableToAuthoriseJoin(m) => ApiError::new(StatusCode::BAD_REQUEST, "M_UNABLE_TO_AUTHORISE_JOIN", m),
            F::UnableToGrantJoin(m) => ApiError::new(StatusCode::BAD_REQUEST, "M_UNABLE_TO_GRANT_JOIN", m),
            e @ (F::Unreachable(_) | F::BadResponse { .. }) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", e.to_string())
            }
            F::Rooms(e) => e.into(),
            F::Users(e) => e.into(),
            F::E2ee(e) => e.into(),
            F::Engine(e) => e.into(),
        }
    }
}

impl From<myelin_engine::e2ee::E2eeError> for ApiError {
    fn from(e: myelin_engine::e2ee::E2eeError) -> Self {
        match e {
            myelin_engine::e2ee::E2eeError::Invalid(m) => ApiError::invalid_param(m),
            myelin_engine::e2ee::E2eeError::Storage(e) => EngineError::from(e).into(),
        }
    }
}

impl From<myelin_engine::key_backup::KeyBackupError> for ApiError {
    fn from(e: myelin_engine::key_backup::KeyBackupError) -> Self {
        use myelin_engine::key_backup::KeyBackupError as K;
        match e {
            K::NotFound(m) => ApiError::not_found(m),
            K::WrongVersion { sent, current } => {
                let message = format!("version {sent} is not the current backup version {current}");
                let mut err = ApiError::new(StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION", message);
                err.current_version = Some(current);
                err
            }
            K::Invalid(m) => ApiError::invalid_param(m),
            K::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", m),
            K::Storage(e) => EngineError::from(e).into(),
        }
    }
}

impl From<myelin_engine::room_creation::CreateRoomError> for ApiError {
    fn from(e: myelin_engine::room_creation::CreateRoomError) -> Self {
        use myelin_engine::room_creation::CreateRoomError as C;
        match e {
            C::InvalidAlias(m) => ApiError::invalid_param(format!("room alias: {m}")),
            C::Exclusive(m) => ApiError::new(StatusCode::BAD_REQUEST, "M_EXCLUSIVE", m),
            e @ C::AliasInUse(_) => ApiError::new(StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", e.to_string()),
            C::BadInitialState(m) => ApiError::invalid_param(m),
            C::Engine(e) => e.into(),
        }
    }
}

impl From<myelin_engine::remote_media::RemoteMediaError> for ApiError {
    fn from(e: myelin_engine::remote_media::RemoteMediaError) -> Self {
        use myelin_engine::remote_media::RemoteMediaError as R;
        match e {
            R::NotFound => ApiError::not_found("media not found"),
            R::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                format!("the media is larger than this server's limit of {limit} bytes"),
            ),
            R::Busy => ApiError::busy("too many remote media fetches in flight; try again shortly"),
            // A transport failure becomes the same "could not be reached" as every other.
            R::Federation(e) => e.into(),
            e @ R::BadAnswer { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", e.to_string()),
            R::Engine(e) => e.into(),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::InUse => ApiError::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "user id already taken"),
            UserError::InvalidUsername(m) => ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", m),
            UserError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", m),
            UserError::NotFound(m) => ApiError::not_found(m),
            UserError::Busy { retry_after_ms } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "M_LIMIT_EXCEEDED",
                    "too many passwords are being checked; try again shortly",
                );
                err.retry_after_ms = Some(retry_after_ms);
                err
            }
            UserError::Engine(e) => e.into(),
        }
    }
}

impl ApiError {
    /// Adds the room version to an `M_INCOMPATIBLE_ROOM_VERSION` error.
    pub fn with_room_version(mut self, version: &str) -> Self {
        self.room_version = Some(version.to_owned());
        self
    }

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    /// 429 `M_LIMIT_EXCEEDED`: too much in flight server-wide; try again in a second.
    pub fn busy(message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", message);
        err.retry_after_ms = Some(1000);
        err
    }

    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", message)
    }
}
