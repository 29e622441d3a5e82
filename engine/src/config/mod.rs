//! Configuration: the operator contract of `DESIGN.md`.
//!
//! Sources, later ones winning: built-in defaults, the TOML file given with
//! `--config`, then environment variables `MYELIN_<KEY>` where `__` separates
//! sections (`MYELIN_SERVER_NAME`, `MYELIN_CLIENT__LISTEN`,
//! `MYELIN_FEDERATION__VERIFY_TLS=false`).
//!
//! An unknown key in the file, a value of the wrong type or an unparsable
//! address is an error that names the key. An unknown `MYELIN_*` environment
//! variable is only a warning: environments are shared with other tools, and
//! refusing to start over a stray variable would be worse than ignoring it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod load;
mod sections;

pub use sections::{
    AppserviceConfig, ClientConfig, FederationConfig, LimitsConfig, MediaConfig, PresenceConfig, PushConfig,
    RateLimitConfig, RegistrationConfig, StorageConfig, VoipConfig,
};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Matrix server name: host or host:port, IP literals allowed.
    pub server_name: String,
    /// RocksDB, media and generated keys live here.
    pub data_dir: PathBuf,
    /// Client-Server and media API listener.
    pub client: ClientConfig,
    /// Server-Server API listener and federation policy.
    pub federation: FederationConfig,
    /// Account registration.
    pub registration: RegistrationConfig,
    /// Media repository.
    pub media: MediaConfig,
    /// Storage tuning.
    pub storage: StorageConfig,
    /// Per-user rate limits on event-creating requests.
    pub rate_limit: RateLimitConfig,
    /// Presence.
    pub presence: PresenceConfig,
    /// Application services (bridges).
    pub appservice: AppserviceConfig,
    /// Push notifications to push gateways.
    pub push: PushConfig,
    /// TURN servers handed to clients for calls (`/voip/turnServer`).
    pub voip: VoipConfig,
    /// Timeouts, connection caps and the password-hashing queue.
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            data_dir: PathBuf::from("./myelin-data"),
            client: ClientConfig::default(),
            federation: FederationConfig::default(),
            registration: RegistrationConfig::default(),
            media: MediaConfig::default(),
            storage: StorageConfig::default(),
            rate_limit: RateLimitConfig::default(),
            presence: PresenceConfig::default(),
            appservice: AppserviceConfig::default(),
            push: PushConfig::default(),
            voip: VoipConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The result of loading: the config plus warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Non-fatal findings (unknown environment variables).
    pub warnings: Vec<String>,
}

impl Config {
    /// Checks what serde cannot: the server name grammar and related values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = <&ruma::ServerName>::try_from(self.server_name.as_str()) {
            return Err(ConfigError(format!(
                "server_name: `{}` is not a valid Matrix server name: {e}",
                self.server_name
            )));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data_dir: must not be empty".into()));
        }
        for (field, list) in [("federation.allow", &self.federation.allow), ("federation.deny", &self.federation.deny)]
        {
            for name in list {
                if <&ruma::ServerName>::try_from(name.as_str()).is_err() {
                    return Err(ConfigError(format!("{field}: `{name}` is not a valid server name")));
                }
            }
        }
        for name in self.federation.insecure.keys() {
            if <&ruma::ServerName>::try_from(name.as_str()).is_err() {
                return Err(ConfigError(format!("federation.insecure: `{name}` is not a valid server name")));
            }
        }
        if self.federation.tls_cert.is_empty() != self.federation.tls_key.is_empty() {
            return Err(ConfigError("federation.tls_cert and federation.tls_key: set both or neither".into()));
        }
        let m = &self.media;
        if m.remote_cache_max_bytes != 0 && m.remote_cache_max_bytes < m.max_upload_bytes {
            return Err(ConfigError(
                "media.remote_cache_max_bytes: must be 0 (no bound) or at least media.max_upload_bytes".into(),
            ));
        }
        let r = &self.rate_limit;
        for (name, rate) in [
            ("per_second", r.per_second),
            ("login_failures_per_second", r.login_failures_per_second),
            ("login_failures_per_ip_per_second", r.login_failures_per_ip_per_second),
            ("registrations_per_second", r.registrations_per_second),
            ("federation_per_second", r.federation_per_second),
            ("key_lookups_per_second", r.key_lookups_per_second),
        ] {
            if !(rate >= 0.0 && rate.is_finite()) {
                return Err(ConfigError(format!("rate_limit.{name}: must be a number >= 0 (0 turns the limit off)")));
            }
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.header_timeout_s", limits.header_timeout_s),
            ("limits.body_timeout_s", limits.body_timeout_s),
            ("limits.handler_timeout_s", limits.handler_timeout_s),
            ("limits.hash_threads", limits.hash_threads as u64),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{key}: must be at least 1")));
            }
        }
        if self.storage.memory_mb < 16 {
            return Err(ConfigError("storage.memory_mb: must be at least 16".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
