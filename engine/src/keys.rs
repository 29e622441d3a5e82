//! The server's ed25519 signing key and its published key document.
//!
//! Server-Server API §"Retrieving server keys" (`GET /_matrix/key/v2/server`):
//! "Homeservers publish their signing keys in a JSON object at
//! `/_matrix/key/v2/server`. The response contains a list of `verify_keys` that
//! are valid for signing federation requests made by the homeserver and for
//! signing events." The object is signed by the server itself with every key
//! in `verify_keys`, and carries `valid_until_ts`.
//!
//! The key is generated on first start and stored in `keys/signing.key` in
//! Synapse's format (`ed25519 <version> <unpadded base64 seed>`), so an
//! operator can carry a key between servers.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use ring::rand::SecureRandom;
use ruma::{
    CanonicalJsonObject, OwnedServerName,
    signatures::{Ed25519KeyPair, KeyPair},
};

use crate::EngineError;

/// How long a published key document stays valid for other servers.
pub const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The fixed PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410).
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Our signing key.
pub struct ServerKeys {
    server_name: OwnedServerName,
    key_id: String,
    pair: Ed25519KeyPair,
    public_b64: String,
    path: PathBuf,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys").field("key_id", &self.key_id).field("public", &self.public_b64).finish()
    }
}

use crate::util::now_ms;

impl ServerKeys {
    /// Loads `keys/signing.key` under `data_dir`, generating it on first start.
    pub fn load_or_generate(data_dir: &Path, server_name: OwnedServerName) -> Result<Self, EngineError> {
        let dir = data_dir.join("keys");
        let path = dir.join("signing.key");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
                let text = generate()?;
                write_private(&path, &text)?;
                tracing::info!(path = %path.display(), "generated a new server signing key");
                text
            }
            Err(e) => return Err(EngineError::io(format!("reading {}", path.display()), e)),
        };
        let (version, seed) =
            parse_key_file(&text).map_err(|m| EngineError::Keys(format!("{}: {m}", path.display())))?;
        let mut keys = Self::from_seed(server_name, &version, &seed)?;
        keys.path = path;
        Ok(keys)
    }

    /// A key pair from its 32-byte ed25519 seed and key version (not stored anywhere).
    pub fn from_seed(server_name: OwnedServerName, version: &str, seed: &[u8]) -> Result<Self, EngineError> {
        if seed.len() != 32 {
            return Err(EngineError::Keys(format!("seed has {} bytes, expected 32", seed.len())));
        }
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(seed);
        let pair = Ed25519KeyPair::from_der(&der, version.to_owned()).map_err(|e| EngineError::Keys(e.to_string()))?;
        let public_b64 = STANDARD_NO_PAD.encode(pair.public_key());
        Ok(Self { server_name, key_id: format!("ed25519:{version}"), pair, public_b64, path: PathBuf::new() })
    }

    /// The key id, `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key, unpadded base64.
    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    /// Where the key is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signs `object` in place as this server (adds to `signatures`).
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) -> Result<(), EngineError> {
        ruma::signatures::sign_json(self.server_name.as_str(), &self.pair, object)
            .map_err(|e| EngineError::Keys(format!("signing: {e}")))
    }

    /// Adds the content hash and our signature to a new event (Server-Server API §"Signing Events").
    pub fn hash_and_sign_event(
        &self,
        object: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<(), EngineError> {
        ruma::signatures::hash_and_sign_event(self.server_name.as_str(), &self.pair, object, &rules.redaction)
            .map_err(|e| EngineError::Keys(format!("signing an event: {e}")))
    }

    /// Adds our signature to someone else's event (invites), leaving its hashes alone.
    pub fn sign_event(
        &self,
        object: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<(), EngineError> {
        ruma::signatures::sign_event(self.server_name.as_str(), &self.pair, object, &rules.redaction)
            .map_err(|e| EngineError::Keys(format!("co-signing an event: {e}")))
    }

    /// Our public key as a verification map (the key store holds only ours until federation lands).
    pub fn public_key_map(&self) -> ruma::signatures::PublicKeyMap {
        let mut set = ruma::signatures::PublicKeySet::new();
        if let Ok(key) = ruma::serde::Base64::parse(&self.public_b64) {
            set.insert(self.key_id.clone(), key);
        }
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(self.server_name.to_string(), set);
        map
    }

    /// Raw signature over `message` (for callers that canonicalise themselves).
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        STANDARD_NO_PAD.encode(self.pair.sign(message).as_bytes())
    }

    /// The self-signed `/_matrix/key/v2/server` document, valid for [`KEY_VALIDITY`].
    pub fn server_key_document(&self) -> Result<CanonicalJsonObject, EngineError> {
        let valid_until = now_ms() + KEY_VALIDITY.as_millis() as u64;
        let doc = serde_json::json!({
            "server_name": self.server_name.as_str(),
            "valid_until_ts": valid_until,
            "verify_keys": { &self.key_id: { "key": &self.public_b64 } },
            "old_verify_keys": {},
        });
        let mut object: CanonicalJsonObject =
            serde_json::from_value(doc).map_err(|e| EngineError::Keys(format!("key document: {e}")))?;
        self.sign_json(&mut object)?;
        Ok(object)
    }
}

fn generate() -> Result<String, EngineError> {
    let rng = ring::rand::SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed).map_err(|_| EngineError::Keys("no system randomness".into()))?;
    let mut raw = [0u8; 6];
    rng.fill(&mut raw).map_err(|_| EngineError::Keys("no system randomness".into()))?;
    // Key versions must match [a-zA-Z0-9_]; url-safe base64 without '-' does.
    let version: String = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw).replace('-', "_");
    Ok(format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(seed)))
}

/// Installs a signing key file of Synapse's format (another server's key, for
/// `myelin import synapse`) as `keys/signing.key` under `data_dir`. Returns
/// the key id, and whether it was written now (false: that key is already
/// installed). A different key already there is an error: replacing it would
/// make this server another one to its peers.
pub fn install_key_file(data_dir: &Path, text: &str) -> Result<(String, bool), EngineError> {
    let (version, _) = parse_key_file(text).map_err(EngineError::Keys)?;
    let dir = data_dir.join("keys");
    let path = dir.join("signing.key");
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            if parse_key_file(&existing).ok() == parse_key_file(text).ok() {
                return Ok((format!("ed25519:{version}"), false));
            }
            Err(EngineError::Keys(format!("{} holds another key; not replaced", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
            write_private(&path, &format!("{}\n", line.trim()))?;
            Ok((format!("ed25519:{version}"), true))
        }
        Err(e) => Err(EngineError::io(format!("reading {}", path.display()), e)),
    }
}

fn parse_key_file(text: &str) -> Result<(String, Vec<u8>), String> {
    let line = text.lines().find(|l| !l.trim().is_empty()).ok_or("empty key file")?;
    let mut parts = line.split_whitespace();
    let (Some(alg), Some(version), Some(seed), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("expected `ed25519 <version> <base64 seed>`".into());
    };
    if alg != "ed25519" {
        return Err(format!("unsupported key algorithm `{alg}`"));
    }
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad key version `{version}`"));
    }
    let seed = STANDARD_NO_PAD.decode(seed.trim_end_matches('=')).map_err(|e| format!("seed is not base64: {e}"))?;
    if seed.len() != 32 {
        return Err(format!("seed has {} bytes, expected 32", seed.len()));
    }
    Ok((version.to_owned(), seed))
}

fn write_private(path: &Path, text: &str) -> Result<(), EngineError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| EngineError::io(format!("creating {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| EngineError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let name: OwnedServerName = "a.example".try_into().unwrap();
        let k1 = ServerKeys::load_or_generate(dir.path(), name.clone()).unwrap();
        let k2 = ServerKeys::load_or_generate(dir.path(), name).unwrap();
        assert_eq!(k1.key_id(), k2.key_id());
        assert_eq!(k1.public_key_b64(), k2.public_key_b64());
        assert!(k1.key_id().starts_with("ed25519:"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(k1.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "signing key readable by others");
        }
    }

    #[test]
    fn key_document_verifies_with_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ServerKeys::load_or_generate(dir.path(), "a.example".try_into().unwrap()).unwrap();
        let doc = keys.server_key_document().unwrap();
        let mut key_map = ruma::signatures::PublicKeyMap::new();
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(keys.key_id().to_owned(), ruma::serde::Base64::parse(keys.public_key_b64()).unwrap());
        key_map.insert("a.example".to_owned(), set);
        ruma::signatures::verify_json(&key_map, &doc).unwrap();
        // Tampering breaks it.
        let mut bad = doc.clone();
        bad.insert("server_name".into(), ruma::CanonicalJsonValue::String("b.example".into()));
        assert!(ruma::signatures::verify_json(&key_map, &bad).is_err());
    }

    /// The signing example of the spec's appendix (§"Signing Events"): key seed
    /// `YJDBA9Xn…`, key `ed25519:1`, server `domain`, a room version 1 event.
    #[test]
    fn event_hash_and_signature_match_the_known_vector() {
        // The spec's seed text carries non-zero trailing bits; decode leniently.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_encode_padding(false)
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let seed = lenient.decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        let keys = ServerKeys::from_seed("domain".try_into().unwrap(), "1", &seed).unwrap();
        let mut object: CanonicalJsonObject = serde_json::from_str(
            r#"{"room_id":"!x:domain","sender":"@a:domain","origin":"domain","origin_server_ts":1000000,
                "signatures":{},"hashes":{},"type":"X","content":{},"prev_events":[],"auth_events":[],
                "depth":3,"unsigned":{"age_ts":1000000}}"#,
        )
        .unwrap();
        let rules = ruma::RoomVersionId::V1.rules().unwrap();
        keys.hash_and_sign_event(&mut object, &rules).unwrap();
        let v = serde_json::to_value(&object).unwrap();
        assert_eq!(v["hashes"]["sha256"], "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos");
        assert_eq!(
            v["signatures"]["domain"]["ed25519:1"],
            "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        );
        // v1 verification would also want an `event_id` (to check its server);
        // v3 rules redact this event identically and check only the sender's server.
        let v3 = ruma::RoomVersionId::V3.rules().unwrap();
        assert!(matches!(
            ruma::signatures::verify_event(&keys.public_key_map(), &object, &v3),
            Ok(ruma::signatures::Verified::All)
        ));
    }

    #[test]
    fn synapse_format_key_files_are_read_and_bad_ones_refused() {
        let (v, seed) = parse_key_file("ed25519 a_AbCd nOEk2BQDAxlwhr4wOrxS5OaNcKYf8wXKVT0iqVg9b6c\n").unwrap();
        assert_eq!(v, "a_AbCd");
        assert_eq!(seed.len(), 32);
        assert!(parse_key_file("").is_err());
        assert!(parse_key_file("rsa x abc").is_err());
        assert!(parse_key_file("ed25519 bad-version nOEk2BQDAxlwhr4wOrxS5OaNcKYf8wXKVT0iqVg9b6c").is_err());
        assert!(parse_key_file("ed25519 a c2hvcnQ").is_err());
    }
}
