//! Shared-secret registration, as Synapse does it (`/_synapse/admin/v1/register`,
//! Synapse admin API §"Shared-Secret Registration").
//!
//! A client asks for a nonce, then sends the nonce, the user name, the password,
//! the admin flag and a MAC: the lower-case hex HMAC-SHA1, keyed by the
//! configured `[registration] shared_secret`, of
//! `nonce NUL username NUL password NUL ("admin" | "notadmin") [NUL user_type]`,
//! every string as UTF-8 bytes, the user name as sent (before lower-casing).
//!
//! Guarantees: a nonce is accepted at most once (taking it removes it, whether
//! the MAC then matches or not), and not after [`NONCE_TTL`]; at most
//! [`MAX_NONCES`] are kept (beyond that the oldest is forgotten), so asking for
//! nonces cannot grow memory. MACs are compared in constant time. Nonces live in
//! memory only: a restart forgets them, as Synapse's do.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ring::rand::SecureRandom;

use super::UserError;
use crate::EngineError;

/// How long a nonce stays valid (Synapse's `NONCE_TIMEOUT`).
pub const NONCE_TTL: Duration = Duration::from_secs(60);

/// Most nonces kept at once.
pub const MAX_NONCES: usize = 1024;

/// The nonces handed out and not used yet.
#[derive(Default)]
pub struct Nonces {
    issued: parking_lot::Mutex<HashMap<String, Instant>>,
}

impl Nonces {
    /// A new nonce: 64 random bytes in hex, as Synapse's.
    pub fn issue(&self) -> Result<String, UserError> {
        let mut raw = [0u8; 64];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| UserError::Engine(EngineError::Keys("no system randomness".into())))?;
        let nonce: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut issued = self.issued.lock();
        issued.retain(|_, at| now.duration_since(*at) <= NONCE_TTL);
        if issued.len() >= MAX_NONCES
            && let Some(oldest) = issued.iter().min_by_key(|(_, at)| **at).map(|(n, _)| n.clone())
        {
            issued.remove(&oldest);
        }
        issued.insert(nonce.clone(), now);
        Ok(nonce)
    }

    /// Takes `nonce` out of the store: whether it was issued here and has not expired.
    pub fn take(&self, nonce: &str) -> bool {
        let now = Instant::now();
        let mut issued = self.issued.lock();
        issued.retain(|_, at| now.duration_since(*at) <= NONCE_TTL);
        issued.remove(nonce).is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.issued.lock().len()
    }
}

/// What a shared-secret registration's MAC covers.
pub struct MacInput<'a> {
    /// The nonce.
    pub nonce: &'a str,
    /// The user name as sent.
    pub username: &'a str,
    /// The password.
    pub password: &'a str,
    /// Whether the account is to be an admin.
    pub admin: bool,
    /// Synapse's `user_type` (`bot`, `support`), when sent.
    pub user_type: Option<&'a str>,
}

/// Whether `mac` (lower-case hex, as Synapse compares it) is the HMAC-SHA1 of
/// `input` keyed by `secret`; the comparison takes the same time wherever the
/// MAC differs.
pub fn mac_matches(secret: &str, input: &MacInput<'_>, mac: &str) -> bool {
    let Some(tag) = decode_lower_hex(mac) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    ring::hmac::verify(&key, &mac_message(input), &tag).is_ok()
}

fn mac_message(input: &MacInput<'_>) -> Vec<u8> {
    let mut message = Vec::with_capacity(input.nonce.len() + input.username.len() + input.password.len() + 16);
    message.extend_from_slice(input.nonce.as_bytes());
    message.push(0);
    message.extend_from_slice(input.username.as_bytes());
    message.push(0);
    message.extend_from_slice(input.password.as_bytes());
    message.push(0);
    message.extend_from_slice(if input.admin { b"admin" } else { b"notadmin" });
    if let Some(kind) = input.user_type.filter(|t| !t.is_empty()) {
        message.push(0);
        message.extend_from_slice(kind.as_bytes());
    }
    message
}

/// Lower-case hex only: Synapse compares the hex strings, so `AB` is not `ab`.
fn decode_lower_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(nonce: &'a str, admin: bool, user_type: Option<&'a str>) -> MacInput<'a> {
        MacInput { nonce, username: "pepper_roni", password: "pizza", admin, user_type }
    }

    #[test]
    fn mac_is_hmac_sha1_over_nul_separated_fields() {
        let cases = [
            (input("abc", true, None), "abc\0pepper_roni\0pizza\0admin"),
            (input("abc", false, None), "abc\0pepper_roni\0pizza\0notadmin"),
            (input("abc", false, Some("bot")), "abc\0pepper_roni\0pizza\0notadmin\0bot"),
            (input("abc", false, Some("")), "abc\0pepper_roni\0pizza\0notadmin"),
        ];
        for (i, want) in cases {
            assert_eq!(mac_message(&i), want.as_bytes());
        }
        // Python: hmac.new(b"secret", b"abc\x00pepper_roni\x00pizza\x00admin", hashlib.sha1).hexdigest()
        let hex = "93b345a2608570ecbd0c809d46ff0e089acbc4c9";
        assert!(mac_matches("secret", &input("abc", true, None), hex));
        assert!(!mac_matches("secret", &input("abc", false, None), hex), "the admin flag is covered");
        assert!(!mac_matches("other", &input("abc", true, None), hex));
        assert!(!mac_matches("secret", &input("abc", true, None), &hex.to_uppercase()), "hex compared as Synapse does");
        for bad in ["", "0", "zz", &hex[..38]] {
            assert!(!mac_matches("secret", &input("abc", true, None), bad));
        }
    }

    #[test]
    fn nonces_are_single_use_and_bounded() {
        let nonces = Nonces::default();
        let a = nonces.issue().unwrap();
        assert_eq!(a.len(), 128);
        assert!(!nonces.take("not issued"));
        assert!(nonces.take(&a));
        assert!(!nonces.take(&a), "used once");
        let first = nonces.issue().unwrap();
        for _ in 0..MAX_NONCES + 10 {
            nonces.issue().unwrap();
        }
        assert_eq!(nonces.len(), MAX_NONCES);
        assert!(!nonces.take(&first), "the oldest went first");
    }

    #[test]
    fn nonces_expire() {
        let nonces = Nonces::default();
        let a = nonces.issue().unwrap();
        if let Some(at) = nonces.issued.lock().get_mut(&a) {
            *at = at.checked_sub(NONCE_TTL + Duration::from_secs(1)).unwrap();
        }
        assert!(!nonces.take(&a));
    }
}
