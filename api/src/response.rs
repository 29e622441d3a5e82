//! Response bodies and the few ways handlers build a response. Kept apart
//! from `http_util` so that `error` (which renders Matrix errors) and the
//! request helpers (which return them) do not import each other.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde::Serialize;

/// Response bodies: whole buffers or streams (media downloads).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The response type of every handler.
pub type Resp = http::Response<Body>;

/// A body from bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A 200 JSON response.
pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> Resp {
    json_response(StatusCode::OK, value)
}

/// The body of a response that carries nothing: `{}`.
#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct Empty {}

/// The answer of endpoints that created or joined a room: `{"room_id": …}`.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct RoomIdAnswer<'a> {
    /// The room.
    pub room_id: &'a str,
}

/// The answer of endpoints that sent an event: `{"event_id": …}`.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct EventIdAnswer<'a> {
    /// The event.
    pub event_id: &'a str,
}

/// A 200 response with the empty object `{}`.
pub fn ok_empty() -> Resp {
    ok_json(&Empty {})
}

/// A plain-text response.
pub fn text_response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Adds the CORS headers the Client-Server API asks for (§"Web Browser Clients").
pub fn add_cors(resp: &mut Resp) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
}
