//! The command line's clap types: every subcommand and its arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "myelin", version, about = "Myelin: a Matrix homeserver and federation engine")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Fill a Synapse SQLite database (schema made by Synapse) with generated rooms, for the import benchmark.
    SynapseDb {
        /// The Synapse database to fill.
        #[arg(long)]
        database: PathBuf,
        /// Synapse's server name.
        #[arg(long)]
        server_name: String,
        /// Synapse's signing key file: the events are signed with it.
        #[arg(long)]
        signing_key: PathBuf,
        /// Rooms to generate.
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        /// Users joining each room besides its creator.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Events in all (spread evenly over the rooms).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// Concurrent send throughput and latency, then a check that every acknowledged event is readable.
    Send {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// Rooms to spread the clients over.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Messages per client.
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One sender, N long-polling receivers: send-to-sync delivery latency.
    Fanout {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// Receivers long-polling /sync.
        #[arg(long, default_value_t = 20)]
        receivers: usize,
        /// Messages sent, 50 ms apart.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Messages sent on server A until all are in a server-B user's /sync.
    Federation {
        /// Client-Server API of server A (the room's server, the sender).
        #[arg(long)]
        url_a: String,
        /// Client-Server API of server B (the receiver).
        #[arg(long)]
        url_b: String,
        /// Server A's name, to join through.
        #[arg(long)]
        server_a: String,
        /// Messages sent.
        #[arg(long, default_value_t = 300)]
        messages: usize,
        /// Connections on A sending at once (1: one message after another).
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A user on server B joins a room on server A that has N members, until B lists them all.
    Join {
        /// Client-Server API of server A (the room's server).
        #[arg(long)]
        url_a: String,
        /// Client-Server API of server B (the joining user's).
        #[arg(long)]
        url_b: String,
        /// Server A's name, to join through.
        #[arg(long)]
        server_a: String,
        /// Members in the room before the join (its creator included).
        #[arg(long, default_value_t = 2000)]
        members: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Two users alternate sequential sends of an N-line script in one room.
    Script {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// Lines in the script.
        #[arg(long, default_value_t = 3000)]
        lines: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Simplified sliding sync (MSC4186): first and incremental answers for an account in many rooms.
    Sliding {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// Rooms the account is in.
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        /// How many of them also hold `members` other users.
        #[arg(long, default_value_t = 500)]
        big: usize,
        /// Other users in each big room.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Rooms in the list's window.
        #[arg(long, default_value_t = 20)]
        window: usize,
        /// Answers measured of each kind.
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// The server's process id, to report its memory around the measurements.
        #[arg(long)]
        pid: Option<u32>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Many users in many rooms, many events, through an appservice; then every event read back.
    Soak {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// The `as_token` of a registration whose user namespace holds `@soak-…`.
        #[arg(long)]
        as_token: String,
        /// Users to register.
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Rooms to create.
        #[arg(long, default_value_t = 10_000)]
        rooms: usize,
        /// Messages to send, spread over the rooms.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// The server's process id, to report its memory after each phase.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Events/s and latency to an appservice the bench itself plays, while clients send.
    Appservice {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// Where the bench listens as the appservice (the registration's `url`).
        #[arg(long, default_value = "127.0.0.1:29399")]
        listen: std::net::SocketAddr,
        /// The registration's `hs_token`, checked on every push.
        #[arg(long)]
        hs_token: String,
        /// Rooms to spread the clients over.
        #[arg(long, default_value_t = 20)]
        rooms: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Messages per client.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Key traffic between two servers: /keys/query of N users, /keys/claim of D devices, to-device fan-out.
    Keys {
        /// Client-Server API of server A (the asking user's).
        #[arg(long)]
        url_a: String,
        /// Client-Server API of server B (the users with keys, and their room).
        #[arg(long)]
        url_b: String,
        /// Server B's name, to join through.
        #[arg(long)]
        server_b: String,
        /// Users on B, one device each, all queried at once.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Devices claimed in each /keys/claim.
        #[arg(long, default_value_t = 500)]
        claim: usize,
        /// To-device messages sent in all.
        #[arg(long, default_value_t = 10000)]
        to_device: usize,
        /// Devices they go to (to_device / receivers each).
        #[arg(long, default_value_t = 100)]
        receivers: usize,
        /// Repetitions of the query and the claim.
        #[arg(long, default_value_t = 10)]
        samples: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Notifications delivered to a push gateway played by the bench.
    Push {
        /// Client-Server API base URL (http://host:port).
        #[arg(long, default_value = "http://127.0.0.1:8008")]
        url: String,
        /// Where the bench listens as the push gateway (the pushers' `url`).
        #[arg(long, default_value = "127.0.0.1:29398")]
        listen: std::net::SocketAddr,
        /// Receivers, each with one http pusher.
        #[arg(long, default_value_t = 20)]
        receivers: usize,
        /// Concurrent senders.
        #[arg(long, default_value_t = 5)]
        senders: usize,
        /// Messages per sender.
        #[arg(long, default_value_t = 40)]
        messages: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the homeserver (defaults: ./myelin-data, client 127.0.0.1:8008, federation 127.0.0.1:8448).
    Serve {
        /// TOML configuration file; MYELIN_* environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a consistent backup (database checkpoint, keys, media) into DIR, while serving or not.
    Backup {
        /// New directory to create.
        dir: PathBuf,
        /// TOML configuration file (to find data_dir).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load-test any homeserver over the Client-Server API.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Administer a server (running or stopped).
    Admin {
        #[command(subcommand)]
        what: AdminCommand,
        /// TOML configuration file (to find data_dir).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Bring another homeserver's data over into the configured data_dir (both servers stopped).
    Import {
        #[command(subcommand)]
        what: ImportCommand,
    },
    /// Restore a backup into the configured data_dir (must be empty; server stopped).
    Restore {
        /// A directory written by `myelin backup`.
        backup: PathBuf,
        /// TOML configuration file (to find data_dir).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ImportCommand {
    /// From a stopped Synapse's database (SQLite or PostgreSQL) and media store:
    /// accounts with their password hashes, profiles, devices with their access
    /// tokens and encryption keys, account data, rooms with their history,
    /// aliases, directory and receipts, push rules, key backups, local and
    /// cached remote media, and (with --signing-key) its signing key.
    Synapse {
        /// Synapse's SQLite database (`homeserver.db`).
        #[arg(long, required_unless_present = "postgres", conflicts_with = "postgres")]
        database: Option<PathBuf>,
        /// Synapse's PostgreSQL database instead: a libpq connection string
        /// (`host=127.0.0.1 user=synapse dbname=synapse`) or a `postgresql://` URL.
        #[arg(long)]
        postgres: Option<String>,
        /// Synapse's `media_store_path`; default with --database: `media_store` beside it.
        #[arg(long)]
        media_store: Option<PathBuf>,
        /// Synapse's signing key file (`<server>.signing.key`), to serve as this server's key.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// TOML configuration file (server_name must be Synapse's; data_dir is written).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Manage local users.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// Manage the media repository (needs the server running).
    Media {
        #[command(subcommand)]
        what: MediaCommand,
    },
    /// Manage rooms.
    Room {
        #[command(subcommand)]
        what: RoomCommand,
    },
    /// Change which servers we federate with, without a restart.
    Federation {
        #[command(subcommand)]
        what: FederationCommand,
    },
    /// Register and remove application services (bridges), without a restart.
    Appservice {
        #[command(subcommand)]
        what: AppserviceCommand,
    },
    /// Show what the database holds on disk, per column family, and bytes per stored event.
    Storage {
        /// Compact every family fully first (minutes on a large database), so the
        /// figures are what the data costs once RocksDB has settled.
        #[arg(long)]
        compact: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AppserviceCommand {
    /// Register the appservice of a registration YAML file (as bridges generate it).
    Add {
        /// Path of the registration file.
        file: PathBuf,
    },
    /// Show every registered appservice and how many events wait for it.
    List,
    /// Unregister an appservice added with `add` and drop its queue.
    Remove {
        /// The registration's `id`.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum FederationCommand {
    /// Add a server to the allow list (a non-empty allow list admits only its servers).
    Allow {
        /// Server name.
        server: String,
    },
    /// Refuse all federation with a server, both ways.
    Deny {
        /// Server name.
        server: String,
    },
    /// Remove a server's runtime entry (configured entries stay until the config changes).
    Remove {
        /// Server name.
        server: String,
    },
    /// Show the configured and runtime entries.
    List,
    /// Show each destination's outbound queue: depth, oldest event's age, and
    /// whether it is active, backing off or parked.
    Queue,
}

#[derive(Subcommand)]
pub(crate) enum RoomCommand {
    /// Remove every local user from a room (the leaves reach the other servers),
    /// unlist it, drop its local aliases and refuse joins and invites from now on.
    Shutdown {
        /// The room id (`!…`).
        room_id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum MediaCommand {
    /// Delete one media item (its file goes when nothing else uses it).
    Delete {
        /// `mxc://server/mediaId`.
        mxc: String,
    },
    /// Delete cached media of other servers older than a duration (`30d`, `12h`, `90m`, `45s`).
    PurgeRemote {
        /// Minimum age.
        #[arg(long)]
        older_than: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user (prints a generated password unless --password is given).
    Create {
        /// Localpart or full user id.
        name: String,
        /// The password.
        #[arg(long)]
        password: Option<String>,
        /// Make the user a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Set a new password and log out every device.
    ResetPassword {
        /// Localpart or full user id.
        name: String,
        /// The new password (generated and printed if absent).
        #[arg(long)]
        password: Option<String>,
    },
    /// Make a user a server administrator (admin API access), or with --off no longer.
    SetAdmin {
        /// Localpart or full user id.
        name: String,
        /// Take the admin flag away instead.
        #[arg(long)]
        off: bool,
    },
    /// List every local user.
    List,
    /// Leave every room (the leaves reach the other servers) and deactivate the account.
    Deactivate {
        /// Localpart or full user id.
        name: String,
    },
}
