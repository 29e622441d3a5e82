//! Small helpers shared across the engine.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether `name` is a server name by the grammar of the spec's appendix
/// ("Server Name"): `hostname [ ":" port ]`, the hostname an IPv4 address, a
/// bracketed IPv6 address or a DNS name of `[A-Za-z0-9-]` labels separated
/// by single dots (no empty label: `..`, `.a`, `a.` are refused, stricter than
/// the grammar, as no resolver takes them), the port 1 to 5 digits up to 65535.
pub fn valid_server_name(name: &str) -> bool {
    let (host_ok, rest) = match name.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((v6, rest)) => (v6.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let (host, rest) = name.split_at(name.find(':').unwrap_or(name.len()));
            let labels_ok = host
                .split('.')
                .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            (!host.is_empty() && host.len() <= 255 && labels_ok, rest)
        }
    };
    let port_ok = match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => {
            (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
        }
    };
    host_ok && port_ok
}

/// Whether `id` is a media id as the spec says it should be: `[A-Za-z0-9_-]+`
/// (at most 255 characters).
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A power level as room versions 1–9 allow it: an integer or a string of one.
pub fn power_level(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for good in
            ["a", "matrix.org", "a-b.example:8448", "1.2.3.4", "1.2.3.4:1", "[::1]", "[2001:db8::1]:443", "localhost"]
        {
            assert!(valid_server_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "a..b",
            ".a",
            "a.",
            "a b",
            "evil.com/../x",
            "a:",
            "a:b",
            "a:123456",
            "a:65536",
            "[::1",
            "[x]",
            "[::1]x",
            "a:+1",
            "a\0",
            "é.example",
            ":80",
        ] {
            assert!(!valid_server_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn media_ids() {
        assert!(valid_media_id("AbC_12-x"));
        for bad in ["", "..", "a.b", "a/b", "a b", "a%2F", "\0"] {
            assert!(!valid_media_id(bad), "{bad:?}");
        }
    }
}
