//! Client-Server endpoints for application services and the third-party
//! networks they bridge.
//!
//! - `POST /_matrix/client/v1/appservice/{appserviceId}/ping` (Client-Server API
//!   §"Application service ping"): the homeserver pings the appservice at
//!   `/_matrix/app/v1/ping` and answers `{"duration_ms"}`; errors
//!   `M_URL_NOT_SET`, `M_BAD_STATUS` (502), `M_CONNECTION_FAILED` (502),
//!   `M_CONNECTION_TIMEOUT` (504). Only the appservice itself may ask
//!   (another token: 403 `M_FORBIDDEN`).
//! - `PUT /directory/list/appservice/{networkId}/{roomId}` (Application Service
//!   API §"Room directories"): an appservice publishes a bridged room in the
//!   room directory (`visibility` `public`/`private`). Myelin keeps one
//!   directory; the network id is accepted and not kept apart.
//! - `GET /thirdparty/protocols`, `/thirdparty/protocol/{protocol}`,
//!   `/thirdparty/location/{protocol}`, `/thirdparty/user/{protocol}`
//!   (Client-Server API §"Third-party Networks"): asked of the appservices
//!   that declare the protocol in their registration.
//! - `GET /thirdparty/location?alias=`, `/thirdparty/user?userid=`: "Retrieve
//!   an array of third-party network locations from a Matrix room alias" (users
//!   from a user id), asked of the appservices whose namespaces hold the id;
//!   their entries are concatenated.

use std::collections::BTreeMap;

use http::StatusCode;
use myelin_engine::appservice::query::{PingError, ReverseLookup};
use ruma::{RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use crate::{
    auth::{appservice_of, query_param, require_user},
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// `POST /appservice/{appserviceId}/ping`.
#[derive(Deserialize, Default)]
struct PingBody {
    transaction_id: Option<String>,
}

/// Its answer.
#[derive(Serialize)]
struct Pong {
    duration_ms: u64,
}

/// POST /_matrix/client/v1/appservice/{appserviceId}/ping
pub fn ping(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let id = req.param("appservice_id")?;
        let caller = appservice_of(&cx, &req);
        let Some(appservice) = caller.filter(|a| a.id() == id) else {
            return Err(ApiError::forbidden("only the appservice itself may ping it"));
        };
        let body: PingBody = parse_json_or_empty(&req.body)?;
        match cx.engine.ping_appservice(&appservice, body.transaction_id.as_deref()).await {
            Ok(took) => Ok(ok_json(&Pong { duration_ms: took.as_millis() as u64 })),
            Err(PingError::UrlNotSet) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "M_URL_NOT_SET", "the appservice has no URL"))
            }
            Err(PingError::BadStatus { status, body }) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "M_BAD_STATUS",
                format!("the appservice answered with status {status}: {body}"),
            )),
            Err(PingError::ConnectionFailed) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "M_CONNECTION_FAILED",
                "could not connect to the appservice",
            )),
            Err(PingError::Timeout) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_CONNECTION_TIMEOUT",
                "the appservice did not answer in time",
            )),
        }
    })
}

/// `PUT /directory/list/appservice/{networkId}/{roomId}`.
#[derive(Deserialize)]
struct VisibilityBody {
    visibility: String,
}

/// PUT /directory/list/appservice/{networkId}/{roomId}
pub fn publish(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.appservice.is_none() {
            return Err(ApiError::forbidden("only an appservice may use this endpoint"));
        }
        let room =
            RoomId::parse(req.param("room_id")?).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))?;
        if cx.engine.rooms.short_room(&room)?.is_none() {
            return Err(ApiError::not_found("unknown room"));
        }
        let body: VisibilityBody = parse_json(&req.body)?;
        let public = match body.visibility.as_str() {
            "public" => true,
            "private" => false,
            _ => return Err(ApiError::invalid_param("visibility must be public or private")),
        };
        cx.engine.directory.set_public(room.as_str(), public).await?;
        Ok(ok_empty())
    })
}

/// GET /thirdparty/protocols: each declared protocol's metadata, as its appservice describes it.
pub fn protocols(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let mut names: Vec<String> =
            cx.engine.appservices.all().iter().flat_map(|a| a.registration.protocols.clone()).collect();
        names.sort();
        names.dedup();
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(meta) = cx.engine.query_appservice_thirdparty("protocol", &name, "").await {
                out.insert(name, meta);
            }
        }
        Ok(ok_json(&out))
    })
}

/// GET /thirdparty/protocol/{protocol}
pub fn protocol(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let name = req.param("protocol")?.to_owned();
        match cx.engine.query_appservice_thirdparty("protocol", &name, "").await {
            Some(meta) => Ok(ok_json(&meta)),
            None => Err(ApiError::not_found(format!("no appservice bridges the protocol {name}"))),
        }
    })
}

/// GET /thirdparty/location/{protocol} and /thirdparty/user/{protocol}: the
/// query string is passed on as it came.
fn lookup(kind: &'static str) -> impl Fn(Ctx, Req) -> HandlerFuture {
    move |cx, req| {
        Box::pin(async move {
            require_user(&cx, &req)?;
            let name = req.param("protocol")?.to_owned();
            // Only the fields the protocol defines are meant for the appservice; the
            // client's own access token never is.
            let query: Vec<(String, String)> = form_urlencoded::parse(req.parts.uri.query().unwrap_or("").as_bytes())
                .filter(|(k, _)| k != "access_token")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
            match cx.engine.query_appservice_thirdparty(kind, &name, &query).await {
                Some(answer) => Ok(ok_json(&answer)),
                None => Ok(ok_json(&Vec::<JsonValue>::new())),
            }
        })
    }
}

/// GET /thirdparty/location/{protocol}
pub fn locations(cx: Ctx, req: Req) -> HandlerFuture {
    lookup("location")(cx, req)
}

/// GET /thirdparty/user/{protocol}
pub fn users(cx: Ctx, req: Req) -> HandlerFuture {
    lookup("user")(cx, req)
}

/// GET /thirdparty/location?alias= and /thirdparty/user?userid=: the
/// reverse lookups, asked of the appservices whose namespaces hold the id.
fn reverse(kind: ReverseLookup, param: &'static str) -> impl Fn(Ctx, Req) -> HandlerFuture {
    move |cx, req| {
        Box::pin(async move {
            require_user(&cx, &req)?;
            let id = query_param(&req, param).ok_or_else(|| ApiError::missing_param(format!("{param} is required")))?;
            let valid = match kind {
                ReverseLookup::Location => RoomAliasId::parse(&id).is_ok(),
                ReverseLookup::User => UserId::parse(&id).is_ok(),
            };
            if !valid {
                return Err(ApiError::invalid_param(format!("{param} is not a valid Matrix id")));
            }
            Ok(ok_json(&cx.engine.query_appservice_reverse(kind, &id).await))
        })
    }
}

/// GET /thirdparty/location?alias=
pub fn locations_of_alias(cx: Ctx, req: Req) -> HandlerFuture {
    reverse(ReverseLookup::Location, "alias")(cx, req)
}

/// GET /thirdparty/user?userid=
pub fn users_of_user_id(cx: Ctx, req: Req) -> HandlerFuture {
    reverse(ReverseLookup::User, "userid")(cx, req)
}
