//! Appservice registration files (Application Service API §"Registration").
//!
//! The YAML every bridge generates:
//!
//! ```yaml
//! id: telegram
//! url: http://localhost:29317        # may be null: the appservice gets no pushes
//! as_token: <the appservice's token for the Client-Server API>
//! hs_token: <the homeserver's token for pushes to the appservice>
//! sender_localpart: telegrambot
//! namespaces:
//!   users:   [{ regex: "@telegram_.*:example.org", exclusive: true }]
//!   aliases: [{ regex: "#telegram_.*:example.org", exclusive: true }]
//!   rooms:   []
//! rate_limited: false
//! protocols: [telegram]
//! receive_ephemeral: true            # or de.sorunome.msc2409.push_ephemeral (MSC2409)
//! ```
//!
//! Keys this file does not know are ignored, as Synapse ignores them: bridges
//! add their own (`org.matrix.msc3202`, `io.element.msc4190`, …).
//!
//! Namespace regexes match from the start of the string, like Python's
//! `re.match` that Synapse uses (a bridge writing `@irc_.*` relies on that);
//! write `$` to anchor the end.

use regex::Regex;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

/// One namespace rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceRule {
    /// The pattern, matched from the start of the user id, alias or room id.
    pub regex: String,
    /// Whether only this appservice may use what matches.
    #[serde(default)]
    pub exclusive: bool,
}

/// The three namespace lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Namespaces {
    /// User ids.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub users: Vec<NamespaceRule>,
    /// Room aliases.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub aliases: Vec<NamespaceRule>,
    /// Room ids.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub rooms: Vec<NamespaceRule>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A registration as written in its file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// Unique id of the appservice.
    pub id: String,
    /// Where pushes go; `None`: the appservice only uses the Client-Server API.
    #[serde(default)]
    pub url: Option<String>,
    /// The appservice's token for the Client-Server API.
    pub as_token: String,
    /// The token the homeserver presents on pushes.
    pub hs_token: String,
    /// Localpart of the appservice's own user.
    pub sender_localpart: String,
    /// What the appservice claims.
    #[serde(default)]
    pub namespaces: Namespaces,
    /// Whether requests from its users are rate-limited (off unless `true`).
    #[serde(default)]
    pub rate_limited: Option<bool>,
    /// Third-party protocols it bridges.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub protocols: Vec<String>,
    /// Ephemeral events (typing, receipts, presence) in its transactions.
    #[serde(default)]
    pub receive_ephemeral: Option<bool>,
    /// MSC2409's older name for `receive_ephemeral`.
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    pub push_ephemeral_msc2409: Option<bool>,
    /// MSC3202: device lists and one-time key counts of its users in transactions.
    #[serde(default, rename = "org.matrix.msc3202")]
    pub msc3202: Option<bool>,
}

/// Why a registration cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct RegistrationError {
    /// The offending field (`namespaces.users[0].regex`, `as_token`, …).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> RegistrationError {
    RegistrationError { field: field.into(), reason: reason.into() }
}

/// A compiled namespace rule.
#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    exclusive: bool,
}

fn compile(field: &str, rules: &[NamespaceRule]) -> Result<Vec<Rule>, RegistrationError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // Anchored at the start only: Python's `re.match`, as Synapse matches.
            Regex::new(&format!("^(?:{})", r.regex))
                .map(|regex| Rule { regex, exclusive: r.exclusive })
                .map_err(|e| bad(format!("namespaces.{field}[{i}].regex"), e.to_string()))
        })
        .collect()
}

/// A checked registration, ready for matching.
#[derive(Debug, Clone)]
pub struct Appservice {
    /// The registration as loaded.
    pub registration: Registration,
    /// Where it came from: a file path, or `admin` for one added at run time.
    pub source: String,
    /// The appservice's own user.
    pub sender: OwnedUserId,
    users: Vec<Rule>,
    aliases: Vec<Rule>,
    rooms: Vec<Rule>,
}

impl Appservice {
    /// Checks `registration` for a server named `server_name`.
    pub fn new(registration: Registration, source: String, server_name: &str) -> Result<Self, RegistrationError> {
        if registration.id.trim().is_empty() {
            return Err(bad("id", "must not be empty"));
        }
        if registration.as_token.is_empty() {
            return Err(bad("as_token", "must not be empty"));
        }
        if registration.hs_token.is_empty() {
            return Err(bad("hs_token", "must not be empty"));
        }
        if registration.as_token == registration.hs_token {
            return Err(bad("hs_token", "must differ from as_token"));
        }
        let sender = UserId::parse(format!("@{}:{server_name}", registration.sender_localpart))
            .map_err(|e| bad("sender_localpart", e.to_string()))?;
        if let Some(url) = &registration.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad("url", format!("`{url}` is not an http:// or https:// URL")));
        }
        let users = compile("users", &registration.namespaces.users)?;
        let aliases = compile("aliases", &registration.namespaces.aliases)?;
        let rooms = compile("rooms", &registration.namespaces.rooms)?;
        Ok(Self { registration, source, sender, users, aliases, rooms })
    }

    /// Parses and checks a registration file's text.
    pub fn from_yaml(text: &str, source: String, server_name: &str) -> Result<Self, RegistrationError> {
        let registration: Registration = serde_norway::from_str(text).map_err(|e| {
            let field = e.to_string().split(':').next().unwrap_or("registration").trim().to_owned();
            RegistrationError {
                field: if field.is_empty() { "registration".into() } else { field },
                reason: e.to_string(),
            }
        })?;
        Self::new(registration, source, server_name)
    }

    /// The appservice's id.
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user` is its sender or in its user namespaces.
    pub fn owns_user(&self, user: &str) -> bool {
        user == self.sender.as_str() || self.users.iter().any(|r| r.regex.is_match(user))
    }

    /// Whether `user` is in one of its exclusive user namespaces.
    pub fn claims_user(&self, user: &str) -> bool {
        user == self.sender.as_str() || self.users.iter().any(|r| r.exclusive && r.regex.is_match(user))
    }

    /// Whether `alias` is in its alias namespaces.
    pub fn owns_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|r| r.regex.is_match(alias))
    }

    /// Whether `alias` is in one of its exclusive alias namespaces.
    pub fn claims_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|r| r.exclusive && r.regex.is_match(alias))
    }

    /// Whether `room_id` is in its room namespaces.
    pub fn owns_room(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|r| r.regex.is_match(room_id))
    }

    /// Whether it has any user namespace (besides its sender).
    pub fn has_user_namespaces(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether it has any alias namespace.
    pub fn has_alias_namespaces(&self) -> bool {
        !self.aliases.is_empty()
    }

    /// Whether it asked for typing, receipts and presence.
    pub fn receives_ephemeral(&self) -> bool {
        self.registration.receive_ephemeral.or(self.registration.push_ephemeral_msc2409).unwrap_or(false)
    }

    /// Whether to-device messages for its users are pushed to it (MSC4203,
    /// which Synapse ties to ephemeral events as well) rather than left in an
    /// inbox that no client of its users reads.
    pub fn receives_to_device(&self) -> bool {
        self.receives_ephemeral() && self.url().is_some()
    }

    /// Whether it asked for MSC3202's transaction extensions (one-time key
    /// counts and unused fallback key types of its users' devices).
    pub fn receives_key_counts(&self) -> bool {
        self.registration.msc3202.unwrap_or(false)
    }

    /// Whether requests of its users are rate-limited.
    pub fn rate_limited(&self) -> bool {
        self.registration.rate_limited.unwrap_or(false)
    }

    /// Where pushes go, without a trailing slash.
    pub fn url(&self) -> Option<&str> {
        self.registration.url.as_deref().map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAUTRIX: &str = r##"
id: telegram
url: http://localhost:29317
as_token: aaaa
hs_token: hhhh
sender_localpart: telegrambot
namespaces:
  users:
  - regex: "@telegram_.*:example.org"
    exclusive: true
  - regex: "@telegrambot:example.org"
    exclusive: true
  aliases:
  - regex: "#telegram_.*:example.org"
    exclusive: true
  rooms: null
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
org.matrix.msc3202: true
io.element.msc4190: false
"##;

    #[test]
    fn a_bridge_registration_loads_and_matches_from_the_start() {
        let a = Appservice::from_yaml(MAUTRIX, "t.yaml".into(), "example.org").unwrap();
        assert_eq!(a.id(), "telegram");
        assert_eq!(a.sender.as_str(), "@telegrambot:example.org");
        assert!(a.owns_user("@telegram_123:example.org"));
        assert!(a.claims_user("@telegram_123:example.org"));
        assert!(!a.owns_user("@alice:example.org"));
        assert!(!a.owns_user("x@telegram_1:example.org"), "anchored at the start");
        assert!(a.owns_alias("#telegram_chat:example.org"));
        assert!(!a.owns_room("!abc:example.org"));
        assert!(a.receives_ephemeral());
        assert!(!a.rate_limited());
        assert_eq!(a.url(), Some("http://localhost:29317"));
    }

    #[test]
    fn a_rocket_chat_style_registration_claims_nothing_exclusively() {
        let yaml = r##"
id: rocketchat
url: null
as_token: a1
hs_token: h1
sender_localpart: rocket.cat
namespaces:
  users: [{ regex: ".*", exclusive: false }]
  rooms: [{ regex: ".*", exclusive: false }]
  aliases: [{ regex: ".*", exclusive: false }]
"##;
        let a = Appservice::from_yaml(yaml, "rc.yaml".into(), "example.org").unwrap();
        assert!(a.owns_user("@anyone:example.org"));
        assert!(!a.claims_user("@anyone:example.org"));
        assert!(a.claims_user("@rocket.cat:example.org"), "its sender is always its own");
        assert!(a.url().is_none());
    }

    #[test]
    fn bad_registrations_name_the_field() {
        let cases = [
            (
                MAUTRIX.replace("\"@telegram_.*:example.org\"", "\"@telegram_(:example.org\""),
                "namespaces.users[0].regex",
            ),
            (MAUTRIX.replace("as_token: aaaa", "as_token: \"\""), "as_token"),
            (MAUTRIX.replace("hs_token: hhhh", "hs_token: aaaa"), "hs_token"),
            (MAUTRIX.replace("sender_localpart: telegrambot", "sender_localpart: \"a:b\""), "sender_localpart"),
            (MAUTRIX.replace("url: http://localhost:29317", "url: ftp://x"), "url"),
        ];
        for (yaml, field) in cases {
            let err = Appservice::from_yaml(&yaml, "t.yaml".into(), "example.org").unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let err = Appservice::from_yaml("id: x\n", "t.yaml".into(), "example.org").unwrap_err();
        assert!(err.reason.contains("as_token"), "{err}");
    }
}
