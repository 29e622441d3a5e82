//! Small HTTP helpers shared by every handler.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Response bodies: whole buffers or streams (media downloads).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The response type of every handler.
pub type Resp = http::Response<Body>;

/// A body from bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A 200 JSON response.
pub fn ok_json(value: &serde_json::Value) -> Resp {
    json_response(StatusCode::OK, value)
}

/// A plain-text response.
pub fn text_response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Parses a JSON body: `M_NOT_JSON` if it is not JSON, `M_BAD_JSON` if the shape is wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::not_json(format!("request body is not JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_json(format!("request body has the wrong shape: {e}")))
}

/// Every value of the query parameter `name`, decoded (`?v=a&v=b` → `["a", "b"]`).
pub fn query_values(req: &crate::router::Req, name: &str) -> Vec<String> {
    let query = req.parts.uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name).map(|(_, v)| v.into_owned()).collect()
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

/// Decodes `%XX` escapes of a path segment; `None` on a bad escape or non-UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%21abc%3Aexample.org").as_deref(), Some("!abc:example.org"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn json_errors_distinguish_syntax_from_shape() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        assert_eq!(parse_json::<S>(b"{not json").unwrap_err().errcode, "M_NOT_JSON");
        assert_eq!(parse_json::<S>(b"{\"a\":\"x\"}").unwrap_err().errcode, "M_BAD_JSON");
        assert_eq!(parse_json::<S>(b"{\"a\":1}").unwrap().a, 1);
    }
}
