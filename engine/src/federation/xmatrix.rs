//! Request authentication (Server-Server API §"Request Authentication").
//!
//! "Every HTTP request made by a homeserver is authenticated using public key
//! digital signatures. The request method, target and body are signed by
//! wrapping them in a JSON object and signing it using the JSON signing
//! algorithm." The object is `{method, uri, origin, destination, content?}`;
//! the signature travels as
//! `Authorization: X-Matrix origin="…",destination="…",key="ed25519:…",sig="…"`.

use ruma::CanonicalJsonValue;
use serde_json::Value as JsonValue;

use super::FederationError;
use crate::keys::ServerKeys;

/// A parsed `X-Matrix` authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    /// The requesting server.
    pub origin: String,
    /// The server the request is for (optional before spec v1.3).
    pub destination: Option<String>,
    /// Key id used.
    pub key: String,
    /// Unpadded base64 signature.
    pub sig: String,
}

/// `content` as canonical JSON: the bytes a signed request carries as its body.
pub fn canonical_body(content: &JsonValue) -> Result<Vec<u8>, FederationError> {
    let value = ruma::canonical_json::to_canonical_value(content)
        .map_err(|e| FederationError::Unauthorized(format!("request body not canonical: {e}")))?;
    Ok(value.to_string().into_bytes())
}

/// The `Authorization` header value for a request we send.
pub fn sign(
    keys: &ServerKeys,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&JsonValue>,
) -> Result<String, FederationError> {
    let body = content.map(canonical_body).transpose()?;
    Ok(sign_canonical(keys, origin, destination, method, uri, body.as_deref()))
}

/// [`sign`] for a body that is canonical JSON already (as [`canonical_body`] makes it):
/// the signed object is written around those bytes, without parsing them.
pub fn sign_canonical(
    keys: &ServerKeys,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&[u8]>,
) -> String {
    let object = signed_object(origin, destination, method, uri, content);
    let sig = keys.sign_bytes(&object);
    format!(r#"X-Matrix origin="{origin}",destination="{destination}",key="{}",sig="{sig}""#, keys.key_id())
}

/// The canonical bytes of `{content?, destination, method, origin, uri}` around
/// a body that is canonical already.
fn signed_object(origin: &str, destination: &str, method: &str, uri: &str, content: Option<&[u8]>) -> Vec<u8> {
    // Keys in canonical (sorted) order: content, destination, method, origin, uri.
    let mut object = Vec::with_capacity(content.map_or(0, <[u8]>::len) + 160);
    object.push(b'{');
    if let Some(c) = content {
        object.extend_from_slice(b"\"content\":");
        object.extend_from_slice(c);
        object.push(b',');
    }
    for (i, (name, value)) in
        [("destination", destination), ("method", method), ("origin", origin), ("uri", uri)].into_iter().enumerate()
    {
        if i > 0 {
            object.push(b',');
        }
        push_json_string(&mut object, name);
        object.push(b':');
        push_json_string(&mut object, value);
    }
    object.push(b'}');
    object
}

/// Appends `s` as a JSON string, escaped as canonical JSON escapes it.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Escaped exactly as the canonical form of the whole object would escape it.
    let text = CanonicalJsonValue::String(s.to_owned()).to_string();
    out.extend_from_slice(text.as_bytes());
}

/// Parses an `X-Matrix …` header value.
pub fn parse(header: &str) -> Result<XMatrix, FederationError> {
    let bad = |m: &str| FederationError::Unauthorized(format!("bad X-Matrix header: {m}"));
    let rest = header.trim().strip_prefix("X-Matrix ").ok_or_else(|| bad("not an X-Matrix header"))?;
    let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| bad("parameter without a value"))?;
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "origin" => origin = Some(v),
            "destination" => destination = Some(v),
            "key" => key = Some(v),
            "sig" => sig = Some(v),
            _ => {}
        }
    }
    Ok(XMatrix {
        origin: origin.ok_or_else(|| bad("no origin"))?,
        destination,
        key: key.ok_or_else(|| bad("no key"))?,
        sig: sig.ok_or_else(|| bad("no sig"))?,
    })
}

/// Verifies a received request whose body arrived as `body`.
///
/// First over the bytes as they came, taken as the canonical form (servers send
/// the body they signed, canonical; this needs no parsing): a signature that
/// verifies over them authenticates exactly that request. Otherwise the body is
/// parsed and made canonical, as [`verify`] does.
pub fn verify_body(
    x: &XMatrix,
    public_key_b64: &str,
    our_name: &str,
    method: &str,
    uri: &str,
    body: &[u8],
) -> Result<(), FederationError> {
    let as_received = check(x, public_key_b64, our_name, method, uri, (!body.is_empty()).then_some(body));
    if as_received.is_ok() || body.is_empty() {
        return as_received;
    }
    let parsed: JsonValue =
        serde_json::from_slice(body).map_err(|e| FederationError::Unauthorized(format!("body is not JSON: {e}")))?;
    verify(x, public_key_b64, our_name, method, uri, Some(&parsed))
}

/// Verifies a received request against the origin's public key.
pub fn verify(
    x: &XMatrix,
    public_key_b64: &str,
    our_name: &str,
    method: &str,
    uri: &str,
    content: Option<&JsonValue>,
) -> Result<(), FederationError> {
    let body = content.map(canonical_body).transpose()?;
    check(x, public_key_b64, our_name, method, uri, body.as_deref())
}

/// Checks the signature over the signed object written around `content`
/// (canonical bytes), the form [`sign_canonical`] signs.
fn check(
    x: &XMatrix,
    public_key_b64: &str,
    our_name: &str,
    method: &str,
    uri: &str,
    content: Option<&[u8]>,
) -> Result<(), FederationError> {
    if !x.key.starts_with("ed25519:") {
        return Err(FederationError::Unauthorized(format!("unsupported signing key {}", x.key)));
    }
    let destination = x.destination.as_deref().unwrap_or(our_name);
    if verifies_over(public_key_b64, &x.sig, &signed_object(&x.origin, destination, method, uri, content)) {
        Ok(())
    } else {
        Err(FederationError::Unauthorized("signature check failed".into()))
    }
}

/// Whether `sig` (base64) is `public_key_b64`'s ed25519 signature of `message`.
fn verifies_over(public_key_b64: &str, sig: &str, message: &[u8]) -> bool {
    use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
    use ed25519_dalek::Verifier as _;
    let decode = |s: &str| STANDARD_NO_PAD.decode(s.trim_end_matches('=')).ok();
    let (Some(key), Some(sig)) = (decode(public_key_b64), decode(sig)) else { return false };
    let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else { return false };
    let (Ok(key), Ok(sig)) =
        (ed25519_dalek::VerifyingKey::from_bytes(&key), ed25519_dalek::Signature::from_slice(&sig))
    else {
        return false;
    };
    key.verify(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_signed_request_verifies_and_tampering_fails() {
        let keys = ServerKeys::from_seed("a.test".try_into().unwrap(), "k1", &[9u8; 32]).unwrap();
        let body = json!({ "hello": "world" });
        let header = sign(&keys, "a.test", "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&body)).unwrap();
        let x = parse(&header).unwrap();
        assert_eq!(
            (x.origin.as_str(), x.destination.as_deref(), x.key.as_str()),
            ("a.test", Some("b.test"), "ed25519:k1")
        );
        let key = keys.public_key_b64();
        verify(&x, key, "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&body)).unwrap();
        assert!(verify(&x, key, "b.test", "PUT", "/_matrix/federation/v1/send/2", Some(&body)).is_err(), "other uri");
        assert!(
            verify(&x, key, "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&json!({}))).is_err(),
            "other body"
        );
        assert!(
            verify(&x, key, "b.test", "GET", "/_matrix/federation/v1/send/1", Some(&body)).is_err(),
            "other method"
        );
        // The same request signed over its canonical bytes carries the same signature.
        let bytes = canonical_body(&body).unwrap();
        let direct = sign_canonical(&keys, "a.test", "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&bytes));
        assert_eq!(direct, header);
        let bare = sign(&keys, "a.test", "b.test", "GET", "/x?a=\"é\"", None).unwrap();
        verify(&parse(&bare).unwrap(), key, "b.test", "GET", "/x?a=\"é\"", None).unwrap();
        let other = ServerKeys::from_seed("a.test".try_into().unwrap(), "k1", &[8u8; 32]).unwrap();
        assert!(
            verify(&x, other.public_key_b64(), "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&body)).is_err()
        );
        // Received as bytes: canonical (the fast path) or not (parsed and made canonical).
        let uri = "/_matrix/federation/v1/send/1";
        verify_body(&x, key, "b.test", "PUT", uri, &bytes).unwrap();
        verify_body(&x, key, "b.test", "PUT", uri, b"{ \"hello\" : \"world\" }").unwrap();
        assert!(verify_body(&x, key, "b.test", "PUT", uri, br#"{"hello":"worlds"}"#).is_err(), "other body");
        assert!(verify_body(&x, key, "b.test", "PUT", "/other", &bytes).is_err(), "other uri");
        assert!(verify_body(&x, other.public_key_b64(), "b.test", "PUT", uri, &bytes).is_err(), "other key");
        assert!(verify_body(&x, key, "b.test", "PUT", uri, b"not json").is_err());
        verify_body(&parse(&bare).unwrap(), key, "b.test", "GET", "/x?a=\"é\"", b"").unwrap();
    }

    #[test]
    fn header_parsing_accepts_spec_forms_and_rejects_junk() {
        let x = parse(r#"X-Matrix origin=origin.hs.example.com,key="ed25519:key1",sig="ABCDEF...""#).unwrap();
        assert_eq!(x.origin, "origin.hs.example.com");
        assert_eq!(x.destination, None);
        assert!(parse("Bearer abc").is_err());
        assert!(parse(r#"X-Matrix origin="a""#).is_err());
    }
}
