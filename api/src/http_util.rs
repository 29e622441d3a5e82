//! Small HTTP helpers shared by every handler.

use serde::de::DeserializeOwned;

use crate::error::ApiError;
pub use crate::response::{Body, Resp, add_cors, full, json_response, ok_json, text_response};

/// Parses a JSON body: `M_NOT_JSON` if it is not JSON, `M_BAD_JSON` if the shape is wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::not_json(format!("request body is not JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_json(format!("request body has the wrong shape: {e}")))
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
