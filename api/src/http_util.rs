//! Small HTTP helpers shared by every handler.

use serde::de::DeserializeOwned;

use crate::error::ApiError;
pub use crate::response::{Body, Empty, Resp, add_cors, full, json_response, ok_empty, ok_json, text_response};

pub mod strict;

/// Parses a request body, the one place request JSON meets a handler's types.
///
/// `M_NOT_JSON` if the bytes are not JSON; `M_BAD_JSON` if they are JSON but
/// not an object (every Matrix request body is one), or a field has the wrong
/// type. Where `T` has a struct, the JSON must have an object: serde alone
/// would also take an array, filling fields by position. Unknown fields are
/// ignored unless `T` says otherwise.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_document("request body", body)
}

/// Like [`parse_json`], for JSON carried in the query parameter `name` (`/sync?filter=`).
pub fn parse_json_param<T: DeserializeOwned>(name: &str, value: &str) -> Result<T, ApiError> {
    parse_document(&format!("the `{name}` parameter"), value.as_bytes())
}

fn parse_document<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::not_json(format!("{what} is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_json(format!("{what} must be a JSON object")));
    }
    from_json_value(value).map_err(|e| ApiError::bad_json(format!("{what} has the wrong shape: {e}")))
}

/// Like [`parse_json`], for endpoints whose body may be left out: an empty body reads as `{}`.
pub fn parse_json_or_empty<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.trim_ascii().is_empty() { parse_json(b"{}") } else { parse_json(body) }
}

/// Reads `T` out of JSON already parsed (a query parameter, a stored document)
/// by the rules of [`parse_json`]: structs only from objects, errors naming the field.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, strict::Error> {
    T::deserialize(strict::Strict(value))
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

/// 408 `M_UNKNOWN` for a request body that stopped arriving; the server closes
/// the connection after it.
pub fn body_timed_out(after: std::time::Duration) -> ApiError {
    let message = format!("the request body did not arrive within {} s", after.as_secs());
    ApiError::new(http::StatusCode::REQUEST_TIMEOUT, "M_UNKNOWN", message)
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
        assert_eq!(parse_json::<S>(b"").unwrap_err().errcode, "M_NOT_JSON");
        assert_eq!(parse_json::<S>(b"{\"a\":\"x\"}").unwrap_err().errcode, "M_BAD_JSON");
        assert_eq!(parse_json::<S>(b"{\"a\":1}").unwrap().a, 1);
    }

    #[derive(serde::Deserialize, Debug, Default)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        flag: bool,
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        raw: Option<serde_json::Map<String, serde_json::Value>>,
    }

    #[derive(serde::Deserialize, Debug, Default)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        n: u64,
    }

    #[test]
    fn a_struct_comes_only_from_an_object_at_any_depth() {
        for body in [&b"[]"[..], b"[true]", b"\"x\"", b"5", b"null"] {
            let e = parse_json::<Outer>(body).unwrap_err();
            assert_eq!(e.errcode, "M_BAD_JSON", "{}", String::from_utf8_lossy(body));
        }
        // serde alone would fill these structs by position.
        for body in [&br#"{"inner":[]}"#[..], br#"{"inner":[3]}"#, br#"{"list":[[]]}"#, br#"{"raw":[]}"#] {
            let e = parse_json::<Outer>(body).unwrap_err();
            assert_eq!(e.errcode, "M_BAD_JSON", "{}", String::from_utf8_lossy(body));
        }
        let ok: Outer =
            parse_json(br#"{"flag":true,"inner":{"n":3},"list":[{}],"raw":{"k":[1]},"extra":[1,{}]}"#).unwrap();
        assert!(ok.flag);
        assert_eq!(ok.inner.map(|i| i.n), Some(3));
        assert_eq!(ok.list.len(), 1);
        let none: Outer = parse_json(br#"{"inner":null,"raw":null}"#).unwrap();
        assert!(none.inner.is_none() && none.raw.is_none());
    }

    #[test]
    fn shape_errors_name_the_field() {
        let e = parse_json::<Outer>(br#"{"list":[{},{"n":"x"}]}"#).unwrap_err();
        assert!(e.message.contains("list[1].n: invalid type"), "{}", e.message);
        let e = parse_json::<Outer>(br#"{"inner":{"n":1.5}}"#).unwrap_err();
        assert!(e.message.contains("inner.n: invalid type: floating point"), "{}", e.message);
    }

    #[test]
    fn an_optional_body_may_be_empty() {
        assert!(!parse_json_or_empty::<Outer>(b"").unwrap().flag);
        assert!(!parse_json_or_empty::<Outer>(b" \r\n").unwrap().flag);
        assert!(parse_json_or_empty::<Outer>(br#"{"flag":true}"#).unwrap().flag);
        assert_eq!(parse_json_or_empty::<Outer>(b"[]").unwrap_err().errcode, "M_BAD_JSON");
        assert_eq!(parse_json_or_empty::<Outer>(b"nope").unwrap_err().errcode, "M_NOT_JSON");
    }

    #[test]
    fn untyped_and_raw_json_still_read() {
        let v: serde_json::Value = parse_json(br#"{"a":[1,{"b":null}],"c":"d"}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,{"b":null}],"c":"d"}));
        #[derive(serde::Deserialize)]
        struct WithRaw {
            pdu: Box<serde_json::value::RawValue>,
        }
        let r: WithRaw = parse_json(br#"{"pdu":{"x":1}}"#).unwrap();
        assert_eq!(r.pdu.get(), r#"{"x":1}"#);
    }

    #[test]
    fn ruma_push_types_read_as_before() {
        #[derive(serde::Deserialize, Debug)]
        struct Rule {
            actions: Vec<ruma::push::Action>,
            conditions: Vec<ruma::push::PushCondition>,
        }
        let body = br#"{"actions":["notify",{"set_tweak":"highlight"},{"set_tweak":"sound","value":"default"}],
            "conditions":[{"kind":"event_match","key":"type","pattern":"m.room.message"}]}"#;
        let rule: Rule = parse_json(body).unwrap();
        assert_eq!((rule.actions.len(), rule.conditions.len()), (3, 1));
        assert!(rule.actions[1].is_highlight());
        for bad in [&br#"{"actions":[5],"conditions":[]}"#[..], br#"{"actions":"notify","conditions":[]}"#] {
            assert_eq!(parse_json::<Rule>(bad).unwrap_err().errcode, "M_BAD_JSON");
        }
    }
}
