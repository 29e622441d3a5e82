//! Myelin's engine: everything Matrix, nothing HTTP.
//!
//! An [`Engine`] value holds the parts of one homeserver (storage, keys,
//! counters) and is passed explicitly to whoever needs it; there is no global,
//! so tests run several servers in one process.

pub mod acl;
pub mod admin;
pub mod appservice;
pub mod backup;
pub mod cache_shares;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod e2ee;
pub mod ephemeral;
mod error;
pub mod federation;
pub mod filter;
#[doc(hidden)]
pub mod fuzz;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod guests;
pub mod in_flight;
pub mod key_backup;
pub mod keys;
pub mod login_token;
pub mod media;
pub mod net_policy;
pub mod openid;
pub mod positions;
pub mod power;
pub mod profile;
pub mod push;
pub mod pushers;
pub mod receipts;
pub mod registration_tokens;
pub mod remote_lists;
pub mod remote_media;
pub mod reports;
pub mod restricted_join;
pub mod room_creation;
pub mod room_upgrade;
pub mod rooms;
pub mod short_tokens;
pub mod sliding;
pub mod sync;
pub mod users;
pub mod util;

#[cfg(test)]
mod fuzz_tests;

use std::{path::PathBuf, sync::Arc};

pub use config::Config;
pub use error::EngineError;
use myelin_storage::{Db, StreamCounter};
/// Client and stripped formats of events (part of `rooms`, re-exported at the old path).
pub use rooms::events;
use ruma::OwnedServerName;

/// One homeserver's state.
pub struct Engine {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Our server name.
    pub server_name: OwnedServerName,
    /// The database.
    pub db: Arc<Db>,
    /// Our signing key.
    pub keys: Arc<keys::ServerKeys>,
    /// The global stream (sync token) counter.
    pub stream: StreamCounter,
    /// The rooms engine: event DAG, state, authorization.
    pub rooms: rooms::Rooms,
    /// Accounts, devices, tokens, account data.
    pub users: users::Users,
    /// End-to-end encryption keys and device-list changes.
    pub e2ee: e2ee::E2ee,
    /// Remote users whose cached device list may be served without asking their server.
    pub remote_lists: remote_lists::RemoteLists,
    /// Local room aliases.
    pub directory: directory::Directory,
    /// Typing and presence (volatile).
    pub ephemeral: Arc<ephemeral::Ephemeral>,
    /// The media repository.
    pub media: media::Media,
    /// Remote servers' signing keys.
    pub keyring: federation::keyring::KeyRing,
    /// Which servers we federate with (configured and runtime lists).
    pub policy: federation::policy::Policy,
    /// When the federation sender may try each failing destination next.
    pub backoffs: federation::backoff::Backoffs,
    /// Outbound federation: the transport, volatile EDUs, destination liveness.
    pub federation: federation::Outbound,
    /// Inbound transactions already processed.
    pub seen_txns: federation::txns::SeenTxns,
    /// Inbound PDUs waiting for auth events that could not be fetched yet (volatile).
    pub pending_pdus: federation::auth_fetch::PendingPdus,
    /// Remote media being fetched, one fetch per media (volatile).
    pub remote_fetches: remote_media::RemoteFetches,
    /// Recent key lookups per server, so forged key ids cannot make us fetch on every request.
    pub key_lookups: federation::key_fetch::KeyLookups,
    /// Push verdicts and member counts behind unread counts.
    pub unread: receipts::UnreadCache,
    /// Per room, a position at or above its newest receipt's.
    pub receipt_positions: positions::NewestPositions<ruma::OwnedRoomId>,
    /// Registered application services (bridges).
    pub appservices: Arc<appservice::Registry>,
    /// Users' pushers and the push notification queues.
    pub pushers: pushers::Pushers,
    /// Server-side backups of users' room keys.
    pub key_backups: key_backup::KeyBackups,
    /// OpenID tokens handed to third parties.
    pub openid: openid::OpenId,
    /// Single-use `m.login.token` tokens.
    pub login_tokens: login_token::LoginTokens,
    /// Content reports.
    pub reports: reports::Reports,
    /// Admin-created registration tokens.
    pub registration_tokens: registration_tokens::RegistrationTokens,
    /// Sliding-sync connections and their caches.
    pub sliding: sliding::Sliding,
    /// Per (user, device, room), the member events lazy-loading `/sync` already sent.
    pub(crate) lazy_members: sync::LazySent,
    /// Gaps in rooms' histories being filled in the background, per (origin, room).
    pub gap_fills: federation::inbound::GapFills,
    /// This engine, for the background tasks it starts itself.
    me: std::sync::Weak<Engine>,
}

impl Engine {
    /// Opens the data directory: database, then keys.
    ///
    /// The database is opened first so that a second server on the same
    /// `data_dir` fails on the lock before touching anything else.
    pub fn open(config: Config) -> Result<Arc<Self>, EngineError> {
        config.validate().map_err(|e| EngineError::Config(e.0))?;
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|e| EngineError::Config(format!("server_name: {e}")))?;
        let db_path = Self::db_path_of(&config);
        let options = config.storage.options();
        let db = Db::open(&db_path, &options)?;
        let keys = keys::ServerKeys::load_or_generate(&config.data_dir, server_name.clone())?;
        let stream = StreamCounter::load(&db, "stream")?;
        let keys = Arc::new(keys);
        let rooms = rooms::Rooms::open(db.clone(), server_name.clone(), keys.clone(), stream.clone())?;
        tracing::info!(server_name = %server_name, key_id = keys.key_id(), data_dir = %config.data_dir.display(), "engine ready");
        let appservices = rooms.appservices.clone();
        let users = users::Users::new(db.clone(), server_name.clone(), stream.clone(), &config.limits)
            .with_appservices(appservices.clone())
            .with_synapse_pepper(&config.registration.synapse_password_pepper);
        let pushers = pushers::Pushers::open(db.clone(), rooms.push_wanted.clone(), rooms.push_pending.clone())?;
        appservices.load_files(&config.appservice.registrations)?;
        for a in appservices.all().iter() {
            // A user's access token reused as an as_token would let either act as the other.
            if users.session(&a.registration.as_token)?.is_some() {
                return Err(EngineError::Config(format!(
                    "appservice registration {}: as_token: already an access token of a user",
                    a.source
                )));
            }
        }
        if !appservices.is_empty() {
            tracing::info!(appservices = appservices.all().len(), "appservices registered");
        }
        let key_watchers = appservices.clone();
        let e2ee = e2ee::E2ee::new(db.clone(), stream.clone())
            .with_change_hook(Arc::new(move || key_watchers.wake_key_watchers()));
        let directory = directory::Directory::new(db.clone());
        let ephemeral = Arc::new(ephemeral::Ephemeral::new());
        let media = media::Media::open(db.clone(), &config.data_dir, server_name.as_str())?;
        let keyring = federation::keyring::KeyRing::with_pinned(
            db.clone(),
            keys.clone(),
            server_name.to_string(),
            config.federation.trusted_keys.clone(),
        );
        let policy = federation::policy::Policy::load(db.clone(), &config.federation)?;
        let backoffs = federation::backoff::Backoffs::new(db.clone());
        let seen_txns = federation::txns::SeenTxns::new(db.clone());
        let pending_pdus = federation::auth_fetch::PendingPdus::open(db.clone())?;
        let indexed = receipts::index_existing_receipts(&db)?;
        if indexed > 0 {
            tracing::info!(receipts = indexed, "indexed existing receipts by stream position");
        }
        let indexed = users.index_existing_account_data()?;
        if indexed > 0 {
            tracing::info!(rows = indexed, "indexed existing account data by stream position");
        }
        let key_backups = key_backup::KeyBackups::new(db.clone());
        let openid = openid::tokens(db.clone());
        let login_tokens = login_token::tokens(db.clone());
        let reports = reports::Reports::new(db.clone());
        let registration_tokens = registration_tokens::RegistrationTokens::new(db.clone());
        let (unread, sliding) = (receipts::UnreadCache::new(db.caches()), sliding::Sliding::new(db.caches()));
        let lazy_members = sync::lazy_sent(db.caches());
        Ok(Arc::new_cyclic(|me| Self {
            config: Arc::new(config),
            server_name,
            db,
            keys,
            stream,
            rooms,
            users,
            e2ee,
            remote_lists: remote_lists::RemoteLists::default(),
            directory,
            ephemeral,
            media,
            keyring,
            policy,
            backoffs,
            seen_txns,
            pending_pdus,
            remote_fetches: remote_media::RemoteFetches::default(),
            key_lookups: federation::key_fetch::KeyLookups::default(),
            federation: federation::Outbound::default(),
            unread,
            receipt_positions: positions::NewestPositions::default(),
            appservices,
            pushers,
            key_backups,
            openid,
            login_tokens,
            reports,
            registration_tokens,
            sliding,
            lazy_members,
            gap_fills: federation::inbound::GapFills::default(),
            me: me.clone(),
        }))
    }

    /// This engine as an `Arc`, for a task that outlives the request starting it.
    pub(crate) fn arc(&self) -> Option<Arc<Engine>> {
        self.me.upgrade()
    }

    /// Where the RocksDB database of `config` lives.
    pub fn db_path_of(config: &Config) -> PathBuf {
        config.data_dir.join("db")
    }

    /// Writes a backup of this server's data into `target`, off the async runtime.
    pub async fn backup(self: &Arc<Self>, target: PathBuf) -> Result<backup::BackupReport, EngineError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || backup::backup(&engine.db, &engine.config.data_dir, &target))
            .await
            .map_err(|e| EngineError::Backup(format!("backup task failed: {e}")))?
    }

    /// Flushes and closes storage; later writes fail.
    pub fn shutdown(&self) {
        self.db.shutdown();
    }
}

/// The host part of a server name (`host`, `host:port`, `[v6]:port`).
pub fn config_host(server_name: &str) -> &str {
    if let Some(rest) = server_name.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server_name.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => server_name,
    }
}
