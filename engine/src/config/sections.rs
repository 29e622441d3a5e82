//! The sections of the configuration file (`[client]`, `[federation]`, …), each
//! with its defaults.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::net_policy::IpRange;

/// `[limits]` (Myelin extension): what one client, connection or request may
/// hold. Each listener (client, federation) applies these on its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Seconds a client may take to send a request's headers (slowloris);
    /// then the connection is closed.
    pub header_timeout_s: u64,
    /// Seconds a client may take to send a request body (whole body; for
    /// media uploads, between two chunks); then 408 and the connection is closed.
    pub body_timeout_s: u64,
    /// Seconds a handler may run before it is stopped with 503 `M_UNKNOWN`;
    /// `/sync` gets this plus the long-poll wait it honours (at most 60 s).
    pub handler_timeout_s: u64,
    /// Open connections per listener; a new one beyond is closed at accept. 0: no cap.
    pub max_connections: usize,
    /// Open connections per listener from one IP address; a new one beyond is
    /// closed at accept. 0: no cap (behind a reverse proxy every client has its address).
    pub max_connections_per_ip: usize,
    /// Threads that hash and check passwords (Argon2, 7 MiB each).
    pub hash_threads: usize,
    /// Passwords waiting for a hashing thread; a login, registration or
    /// password change beyond is answered 429 `M_LIMIT_EXCEEDED`.
    pub hash_queue: usize,
    /// To-device messages waiting for one device; new ones beyond are dropped
    /// and counted (`myelin_to_device_dropped_total`). 0: no cap.
    pub max_to_device_per_device: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_timeout_s: 30,
            body_timeout_s: 30,
            handler_timeout_s: 120,
            max_connections: 4096,
            max_connections_per_ip: 128,
            hash_threads: 2,
            hash_queue: 32,
            max_to_device_per_device: 10_000,
        }
    }
}

/// `[push]` (Myelin extension).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Most notifications waiting per pusher while its gateway is down; the oldest give way.
    pub max_pending: usize,
    /// A notification not delivered within this many seconds is dropped (and counted).
    pub max_age_s: u64,
    /// Push gateways of the operator's own (`scheme://host:port`, e.g. a Sygnal
    /// on the site's network): pushers whose URL is on one of them are sent to
    /// without the outbound policy, as appservices are. Others stay checked.
    pub trusted_gateways: Vec<String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self { max_pending: 1000, max_age_s: 86_400, trusted_gateways: Vec::new() }
    }
}

impl PushConfig {
    /// Whether the push gateway at `base_url` is one of `trusted_gateways`
    /// (same scheme, host and port; a trailing slash does not matter).
    pub fn trusts_gateway(&self, base_url: &str) -> bool {
        let origin = |u: &str| -> Option<String> {
            let uri: http::Uri = u.parse().ok()?;
            let scheme = uri.scheme_str()?;
            let authority = uri.authority()?;
            let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
            Some(format!("{scheme}://{}:{port}", authority.host().to_ascii_lowercase()))
        };
        let Some(target) = origin(base_url) else { return false };
        self.trusted_gateways.iter().any(|g| origin(g).is_some_and(|g| g == target))
    }
}

/// `[voip]`: what `GET /voip/turnServer` answers. With no URIs, or URIs and
/// neither a shared secret nor a username and password, it answers `{}`, as
/// Synapse does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VoipConfig {
    /// TURN URIs, e.g. `["turn:turn.example.org:3478?transport=udp"]`.
    pub turn_uris: Vec<String>,
    /// coturn's `static-auth-secret`: credentials are minted per request
    /// (username `expiry:user_id`, password base64 HMAC-SHA1 of it).
    pub turn_shared_secret: String,
    /// Fixed credentials, used when there is no shared secret.
    pub turn_username: String,
    /// Password for `turn_username`.
    pub turn_password: String,
    /// How long minted credentials are valid, in seconds.
    pub turn_ttl_s: u64,
}

impl Default for VoipConfig {
    fn default() -> Self {
        Self {
            turn_uris: Vec::new(),
            turn_shared_secret: String::new(),
            turn_username: String::new(),
            turn_password: String::new(),
            turn_ttl_s: 86_400,
        }
    }
}

/// `[appservice]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AppserviceConfig {
    /// Paths of appservice registration YAML files (the files bridges generate).
    pub registrations: Vec<PathBuf>,
}

/// `[presence]` (Myelin extension).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Whether users may set and read presence.
    pub enabled: bool,
    /// A local user with no `/sync` in flight for this long goes `offline`
    /// (Synapse's 30 s `SYNC_ONLINE_TIMEOUT`).
    pub offline_after_ms: u64,
    /// A local `online` user who did nothing for this long goes `unavailable`
    /// (Synapse's 5 min `IDLE_TIMER`).
    pub idle_after_ms: u64,
    /// A remote user whose server sent no update for this long goes `offline`
    /// (Synapse's 30 min `FEDERATION_TIMEOUT`).
    pub remote_offline_after_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { enabled: true, offline_after_ms: 30_000, idle_after_ms: 300_000, remote_offline_after_ms: 1_800_000 }
    }
}

/// `[rate_limit]` (Myelin extension): a token bucket per user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained events per second per user; 0 turns the limit off.
    pub per_second: f64,
    /// Events a user may send in a burst.
    pub burst: u32,
    /// Wrong passwords per account per second, sustained; 0 turns the limit off.
    pub login_failures_per_second: f64,
    /// Wrong passwords an account takes in a row before the limit applies.
    pub login_failures_burst: u32,
    /// Wrong passwords per client IP address per second, sustained, whichever
    /// accounts they name (guessing one password across many accounts); 0
    /// turns the limit off.
    pub login_failures_per_ip_per_second: f64,
    /// Wrong passwords one address may send in a row before that limit applies.
    pub login_failures_per_ip_burst: u32,
    /// Accounts (and guests) one IP address may register per second, sustained; 0 turns the limit off.
    pub registrations_per_second: f64,
    /// Accounts one IP address may register in a burst.
    pub registrations_burst: u32,
    /// Authenticated requests one remote server may make per second, sustained; 0 turns the limit off.
    pub federation_per_second: f64,
    /// Requests one remote server may make in a burst.
    pub federation_burst: u32,
    /// Key lookups per second, sustained, that requests from servers not yet
    /// verified (X-Matrix checks, notary queries) may cause, all servers
    /// together; 0 turns the limit off (Myelin extension).
    pub key_lookups_per_second: f64,
    /// Such key lookups in a burst.
    pub key_lookups_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 50.0,
            burst: 200,
            login_failures_per_second: 0.2,
            login_failures_burst: 10,
            login_failures_per_ip_per_second: 1.0,
            login_failures_per_ip_burst: 50,
            registrations_per_second: 5.0,
            registrations_burst: 500,
            federation_per_second: 200.0,
            federation_burst: 2000,
            key_lookups_per_second: 10.0,
            key_lookups_burst: 100,
        }
    }
}

/// `[client]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Client-Server + media API, plain HTTP.
    pub listen: SocketAddr,
    /// Reverse proxies (CIDR ranges) whose `X-Forwarded-For` names the client:
    /// per-address limits then count the client's address, not the proxy's
    /// (Myelin extension). Empty: the header is ignored.
    pub trusted_proxies: Vec<IpRange>,
}

/// `[federation]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Whether to run the federation listener and talk to other servers.
    pub enabled: bool,
    /// Server-Server API, always TLS.
    pub listen: SocketAddr,
    /// PEM certificate chain path; empty: self-signed, generated on first start.
    pub tls_cert: String,
    /// PEM private key path; empty: generated with the certificate.
    pub tls_key: String,
    /// Verify remote servers' certificates.
    pub verify_tls: bool,
    /// Extra PEM CA files trusted for verification.
    pub trusted_ca: Vec<PathBuf>,
    /// Non-empty: federate only with these server names.
    pub allow: Vec<String>,
    /// Never federate with these server names.
    pub deny: Vec<String>,
    /// Static discovery: server name → address, ahead of the spec's resolution.
    pub hosts: BTreeMap<String, SocketAddr>,
    /// Pinned signing keys (Myelin extension, for air-gapped sites): server name →
    /// key id → unpadded base64 public key. A listed server's keys are never
    /// fetched; only these are trusted for it.
    pub trusted_keys: BTreeMap<String, BTreeMap<String, String>>,
    /// Notary servers asked for a server's keys when it cannot be asked directly
    /// (Myelin extension): each answer must carry the notary's valid signature.
    pub notaries: Vec<String>,
    /// DNS servers asked for SRV records (Myelin extension); empty: those of `/etc/resolv.conf`.
    pub dns_servers: Vec<SocketAddr>,
    /// Most events fetched with `get_missing_events` to close one gap before the
    /// event is taken on the sender's reported state instead (Myelin extension).
    pub max_gap_events: usize,
    /// Milliseconds an inbound transaction waits for the gaps its events open
    /// before it answers; a fill that takes longer goes on in the background
    /// and the events wait for it (Myelin extension).
    pub gap_fill_wait_ms: u64,
    /// Seconds a destination may stay unreachable before it is parked: its
    /// queue is kept, nothing is dropped, but it is no longer retried until it
    /// reaches us (an authenticated request) or the server restarts, when it
    /// is tried once (Myelin extension). 0: never park.
    pub park_after_s: u64,
    /// Rows a destination's queue may hold before it is compacted to the newest
    /// event per room (the destination fetches the rest as a gap; Myelin
    /// extension). 0: never compacted.
    pub max_queue_per_destination: usize,
    /// CIDR ranges outbound connections may reach although they are internal
    /// (loopback, private, link-local…; see `net_policy`), e.g. `["10.0.0.0/8"]`
    /// for an air-gapped federation (Myelin extension). Checked after DNS.
    pub ip_range_allow: Vec<IpRange>,
    /// CIDR ranges outbound connections never reach, even public ones; wins
    /// over `ip_range_allow` (Myelin extension). `[federation.hosts]` entries
    /// are exempt from both lists.
    pub ip_range_deny: Vec<IpRange>,
    /// Server name → `true`: do not verify that destination's TLS certificate
    /// (others still are, labs only; Myelin extension).
    pub insecure: BTreeMap<String, bool>,
}

/// `[registration]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Open registration (`m.login.dummy`).
    pub enabled: bool,
    /// Or: require this registration token (`m.login.registration_token`).
    pub token: String,
    /// Non-empty: enables Synapse-compatible shared-secret registration at
    /// `/_synapse/admin/v1/register` (HMAC-SHA1 with this key; Synapse's
    /// `registration_shared_secret`). Whoever knows it can create admins.
    pub shared_secret: String,
    /// With open registration, also guest accounts (`/register?kind=guest`, Client-Server
    /// API §"Guest Access"; Myelin extension). Guests only join rooms whose
    /// `m.room.guest_access` is `can_join` and only reach the endpoints the spec lists.
    pub guests: bool,
    /// A server imported from Synapse: its `password_config.pepper`, without which
    /// its users' passwords do not match their imported hashes.
    pub synapse_password_pepper: String,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token: String::new(),
            shared_secret: String::new(),
            guests: true,
            synapse_password_pepper: String::new(),
        }
    }
}

/// `[media]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest upload (and remote media) in bytes; advertised at `/media/config`.
    pub max_upload_bytes: u64,
    /// Serve the deprecated unauthenticated `/_matrix/media/v3/download|thumbnail` endpoints.
    pub legacy_unauthenticated: bool,
    /// Most bytes of other servers' media kept; past it the oldest fetched go. 0: no bound.
    pub remote_cache_max_bytes: u64,
}

/// `[storage]`: `memory_mb` is in the operator contract (`DESIGN.md`); the rest are Myelin extensions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The memory budget of the whole process in MiB (see [`StorageConfig::options`]
    /// for how it is split).
    pub memory_mb: usize,
    /// 0: the block cache is its share of `memory_mb`. Otherwise its size in MiB
    /// (older configurations; the write buffers are still charged to it).
    pub cache_mb: usize,
    /// Size in MiB the write-ahead log is given at start-up, so that syncs
    /// overwrite instead of growing a file; 0 turns it off.
    pub wal_mb: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8008)), trusted_proxies: Vec::new() }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8448)),
            tls_cert: String::new(),
            tls_key: String::new(),
            verify_tls: true,
            trusted_ca: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            hosts: BTreeMap::new(),
            trusted_keys: BTreeMap::new(),
            notaries: Vec::new(),
            dns_servers: Vec::new(),
            max_gap_events: 5000,
            gap_fill_wait_ms: 5000,
            park_after_s: 86_400,
            max_queue_per_destination: 50_000,
            ip_range_allow: Vec::new(),
            ip_range_deny: Vec::new(),
            insecure: BTreeMap::new(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self { max_upload_bytes: 50 * 1024 * 1024, legacy_unauthenticated: true, remote_cache_max_bytes: 4 << 30 }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { memory_mb: 256, cache_mb: 0, wal_mb: 64 }
    }
}

/// Below this, memtables flush so often that sends slow (`BENCHMARKS.md`, "Memory budget").
const WRITE_BUFFER_FLOOR: usize = 32 << 20;

impl StorageConfig {
    /// The storage options these settings give, splitting `memory_mb`:
    /// - half is RocksDB's one block cache (data, index and filter blocks),
    ///   which the memtables are charged to as well (a quarter of it, but at
    ///   least 32 MiB and at most half: past that the largest is flushed;
    ///   below 32 MiB the ~60 families flush so often that sends slow down);
    /// - three tenths are Myelin's in-process caches (events, state
    ///   snapshots, short ids, sessions, receipts, sliding sync), each sized
    ///   in bytes from its share;
    /// - the last fifth is left for what is not a cache: requests and
    ///   responses in flight, connections, sync state, the runtime, and the
    ///   allocator's slack.
    pub fn options(&self) -> myelin_storage::StorageOptions {
        let budget = self.memory_mb << 20;
        let cache_bytes = if self.cache_mb > 0 { self.cache_mb << 20 } else { budget / 2 };
        myelin_storage::StorageOptions {
            cache_bytes,
            write_buffer_bytes: (cache_bytes / 4).max(WRITE_BUFFER_FLOOR).min(cache_bytes / 2),
            wal_bytes: self.wal_mb << 20,
            app_cache_bytes: budget / 10 * 3,
        }
    }
}
