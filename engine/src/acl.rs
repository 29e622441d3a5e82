//! Room server ACLs (Client-Server API §"Server Access Control Lists for
//! rooms", `m.room.server_acl`): `allow` and `deny` lists of server-name globs
//! (`*` any run, `?` one character), and `allow_ip_literals`. A server is
//! allowed when it is not an IP literal (unless literals are allowed), matches
//! no `deny` glob, and matches some `allow` glob. Validated when set; the
//! federation receiver enforces it on every request it serves.

use serde_json::Value as JsonValue;

/// A parsed `m.room.server_acl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAcl {
    allow: Vec<String>,
    deny: Vec<String>,
    allow_ip_literals: bool,
}

fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative glob with backtracking on the last `*`.
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

fn host(server: &str) -> &str {
    crate::config_host(server)
}

impl ServerAcl {
    /// Validates event content: `allow`/`deny` arrays of strings, `allow_ip_literals` boolean.
    pub fn from_content(content: &JsonValue) -> Result<Self, String> {
        let list = |name: &str| -> Result<Vec<String>, String> {
            match content.get(name) {
                None | Some(JsonValue::Null) => Ok(Vec::new()),
                Some(JsonValue::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| format!("`{name}` must hold only strings")))
                    .collect(),
                Some(_) => Err(format!("`{name}` must be an array of strings")),
            }
        };
        let allow_ip_literals = match content.get("allow_ip_literals") {
            None | Some(JsonValue::Null) => true,
            Some(JsonValue::Bool(b)) => *b,
            Some(_) => return Err("`allow_ip_literals` must be a boolean".into()),
        };
        Ok(Self { allow: list("allow")?, deny: list("deny")?, allow_ip_literals })
    }

    /// Reads an ACL as it arrived in a room, where a malformed part cannot be
    /// refused any more: non-list `allow`/`deny` count as empty, non-string
    /// entries match nothing and a non-boolean `allow_ip_literals` counts as
    /// `true` (the spec does not say; this is what Synapse does).
    pub fn from_content_lenient(content: &JsonValue) -> Self {
        let list = |name: &str| -> Vec<String> {
            match content.get(name) {
                Some(JsonValue::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            }
        };
        let allow_ip_literals = content.get("allow_ip_literals").and_then(JsonValue::as_bool).unwrap_or(true);
        Self { allow: list("allow"), deny: list("deny"), allow_ip_literals }
    }

    /// Whether `server` (a server name, port allowed) may take part in the room.
    pub fn allows(&self, server: &str) -> bool {
        let host = host(server);
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if is_ip && !self.allow_ip_literals {
            return false;
        }
        if self.deny.iter().any(|d| glob_matches(d.as_bytes(), host.as_bytes())) {
            return false;
        }
        self.allow.iter().any(|a| glob_matches(a.as_bytes(), host.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn acl_cases_from_the_spec() {
        let acl = ServerAcl::from_content(&json!({
            "allow": ["*"], "deny": ["evil.com", "*.evil.com", "ba?.org"], "allow_ip_literals": false
        }))
        .unwrap();
        for (server, allowed) in [
            ("good.org", true),
            ("good.org:8448", true),
            ("evil.com", false),
            ("sub.evil.com", false),
            ("notevil.com", true),
            ("bad.org", false),
            ("baad.org", true),
            ("1.2.3.4", false),
            ("[::1]:8448", false),
            ("EVIL.COM", false),
        ] {
            assert_eq!(acl.allows(server), allowed, "{server}");
        }
        let empty = ServerAcl::from_content(&json!({})).unwrap();
        assert!(!empty.allows("anyone.org"), "no allow list means nobody");
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert!(ServerAcl::from_content(&json!({ "allow": "*" })).is_err());
        assert!(ServerAcl::from_content(&json!({ "deny": [1] })).is_err());
        assert!(ServerAcl::from_content(&json!({ "allow": ["*"], "allow_ip_literals": "no" })).is_err());
    }

    #[test]
    fn acls_from_other_servers_are_read_leniently() {
        let acl = ServerAcl::from_content_lenient(&json!({
            "allow": ["*", 7], "deny": [null, "evil.com"], "allow_ip_literals": "no"
        }));
        assert!(acl.allows("good.org"));
        assert!(acl.allows("127.0.0.1:8448"), "a non-boolean allow_ip_literals counts as true");
        assert!(!acl.allows("evil.com"));
        let bad_deny = ServerAcl::from_content_lenient(&json!({ "allow": ["*"], "deny": "evil.com" }));
        assert!(bad_deny.allows("evil.com"), "a deny that is not a list denies nobody");
        let bad_allow = ServerAcl::from_content_lenient(&json!({ "allow": "*" }));
        assert!(!bad_allow.allows("good.org"), "an allow that is not a list allows nobody");
        let wildcard_ip =
            ServerAcl::from_content(&json!({ "allow": ["127.0.0.*"], "allow_ip_literals": true })).unwrap();
        assert!(wildcard_ip.allows("127.0.0.9:8448") && !wildcard_ip.allows("10.0.0.1"));
    }
}
