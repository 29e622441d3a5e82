//! `myelin`: the operator's command line.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad configuration or usage
//! (unknown key, wrong type, unparsable address, data dir locked by another
//! running Myelin). Errors are one line on stderr, never a panic trace.

/// mimalloc instead of glibc malloc: see BENCHMARKS.md (allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use myelin_engine::{Config, Engine, EngineError, backup};
use myelin_storage::{Db, StorageError, StorageOptions};

#[derive(Parser)]
#[command(name = "myelin", version, about = "Myelin: a Matrix homeserver and federation engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

mod bench;

#[derive(Subcommand)]
enum BenchCommand {
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
}

#[derive(Subcommand)]
enum Command {
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
enum AdminCommand {
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
}

#[derive(Subcommand)]
enum FederationCommand {
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
}

#[derive(Subcommand)]
enum RoomCommand {
    /// Remove every local user from a room (the leaves reach the other servers),
    /// unlist it, drop its local aliases and refuse joins and invites from now on.
    Shutdown {
        /// The room id (`!…`).
        room_id: String,
    },
}

#[derive(Subcommand)]
enum MediaCommand {
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
enum UserCommand {
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
    /// List every local user.
    List,
    /// Leave every room (the leaves reach the other servers) and deactivate the account.
    Deactivate {
        /// Localpart or full user id.
        name: String,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
    fn runtime(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Config(_) | EngineError::Storage(StorageError::Locked(_)) => Failure::usage(e.to_string()),
            EngineError::Storage(StorageError::Foreign { .. } | StorageError::SchemaVersion { .. }) => {
                Failure::usage(e.to_string())
            }
            _ => Failure::runtime(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Backup { dir, config } => backup_cmd(dir, config),
        Command::Restore { backup, config } => restore_cmd(backup, config),
        Command::Bench { what } => bench_cmd(what),
        Command::Admin { what: AdminCommand::User { what }, config } => user_cmd(what, config),
        Command::Admin { what: AdminCommand::Media { what }, config } => media_cmd(what, config),
        Command::Admin { what: AdminCommand::Room { what }, config } => room_cmd(what, config),
        Command::Admin { what: AdminCommand::Federation { what }, config } => federation_cmd(what, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("myelin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn load_config(path: Option<PathBuf>) -> Result<Config, Failure> {
    let loaded = Config::load(path.as_deref()).map_err(|e| Failure::usage(e.0))?;
    init_logging();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.config)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("myelin-worker")
        .build()
        .map_err(|e| Failure::runtime(format!("starting the async runtime: {e}")))
}

fn serve(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = tokio::task::spawn_blocking(move || Engine::open(config))
            .await
            .map_err(|e| Failure::runtime(format!("start-up task failed: {e}")))??;
        let running = match myelin_api::start(engine.clone()).await {
            Ok(r) => r,
            Err(e) => {
                engine.shutdown();
                return Err(Failure::runtime(e.to_string()));
            }
        };
        // Start-up (RocksDB opening its column families, writing its options, pre-sizing
        // the WAL) leaves freed memory in glibc's heaps that glibc keeps: give it back.
        tokio::task::spawn_blocking(|| {
            let _span = tracing::debug_span!("release_start_up_memory").entered();
            release_freed_memory();
        });
        wait_for_stop_signal().await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        // A second signal during the grace period means "now".
        tokio::spawn(async {
            wait_for_stop_signal().await;
            eprintln!("myelin: second stop signal; exiting without waiting");
            std::process::exit(1);
        });
        running.shutdown(myelin_api::SHUTDOWN_GRACE).await;
        Ok(())
    })
}

/// Returns the free pages of glibc's heaps (where RocksDB allocates) to the system.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only releases memory glibc holds as free.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, Failure> {
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().map_err(|e| Failure::runtime(format!("current directory: {e}")))?;
    Ok(cwd.join(path))
}

fn backup_cmd(dir: PathBuf, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let dir = absolute(dir)?;
    let rt = runtime()?;
    let request = serde_json::json!({ "op": "backup", "dir": dir });
    let answer = rt.block_on(myelin_api::admin::request(&config.data_dir, &request)).map_err(Failure::runtime)?;
    let (bytes, files) = match answer {
        Some(answer) => {
            if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
                let error = answer.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
                return Err(Failure::runtime(format!("backup failed: {error}")));
            }
            let n = |k: &str| answer.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            (n("bytes"), n("files"))
        }
        None => {
            // No running server: open the database ourselves.
            let options = StorageOptions { cache_bytes: config.storage.cache_mb << 20, wal_bytes: 0 };
            let db = Db::open(&Engine::db_path_of(&config), &options).map_err(|e| match e {
                StorageError::Locked(_) => Failure::usage(format!(
                    "{e}; the running server's admin socket is not reachable, so it cannot be asked for a backup"
                )),
                other => Failure::from(EngineError::from(other)),
            })?;
            let report = backup::backup(&db, &config.data_dir, &dir)?;
            db.shutdown();
            (report.bytes, report.files)
        }
    };
    println!("backup written to {} ({files} files, {bytes} bytes)", dir.display());
    Ok(())
}

fn restore_cmd(from: PathBuf, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    backup::restore(&from, &config.data_dir).map_err(|e| Failure::usage(e.to_string()))?;
    println!("restored {} into {}", from.display(), config.data_dir.display());
    Ok(())
}

fn generated_password() -> Result<String, Failure> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| Failure::runtime("no system randomness"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn user_cmd(what: UserCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let mut shown_password = None;
    let request = match what {
        UserCommand::Create { name, password, admin } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let p = generated_password()?;
                    shown_password = Some(p.clone());
                    p
                }
            };
            serde_json::json!({ "op": "user_create", "name": name, "password": password, "admin": admin })
        }
        UserCommand::ResetPassword { name, password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let p = generated_password()?;
                    shown_password = Some(p.clone());
                    p
                }
            };
            serde_json::json!({ "op": "user_reset_password", "name": name, "password": password })
        }
        UserCommand::List => serde_json::json!({ "op": "user_list" }),
        UserCommand::Deactivate { name } => serde_json::json!({ "op": "user_deactivate", "name": name }),
    };
    let rt = runtime()?;
    let answer = rt.block_on(async {
        match myelin_api::admin::request(&config.data_dir, &request).await.map_err(Failure::runtime)? {
            Some(answer) => Ok::<_, Failure>(answer),
            None => {
                // No running server: open the data directory ourselves.
                let engine = tokio::task::spawn_blocking(move || Engine::open(config))
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))??;
                let op = request["op"].as_str().unwrap_or_default().to_owned();
                let result = myelin_api::admin::user_op(&engine, &op, &request).await;
                engine.shutdown();
                Ok(result.unwrap_or_else(|e| serde_json::json!({ "ok": false, "error": e })))
            }
        }
    })?;
    if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
        let error = answer.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
        return Err(Failure::usage(error.to_owned()));
    }
    if let Some(users) = answer.get("users").and_then(|u| u.as_array()) {
        for u in users {
            let flags = match (u["admin"].as_bool(), u["deactivated"].as_bool()) {
                (Some(true), _) => " admin",
                (_, Some(true)) => " deactivated",
                _ => "",
            };
            println!("{}{flags}", u["user_id"].as_str().unwrap_or_default());
        }
    } else if let Some(left) = answer.get("rooms_left").and_then(|n| n.as_u64()) {
        println!("{} deactivated; left {left} rooms", answer["user_id"].as_str().unwrap_or_default());
    } else if let Some(user) = answer.get("user_id").and_then(|u| u.as_str()) {
        match shown_password {
            Some(p) => println!("{user} password: {p}"),
            None => println!("{user}"),
        }
    }
    Ok(())
}

/// Sends one admin request to the running server, or runs it on the opened data directory.
fn admin_call(config: Config, request: &serde_json::Value) -> Result<serde_json::Value, Failure> {
    let rt = runtime()?;
    let answer = rt.block_on(async {
        match myelin_api::admin::request(&config.data_dir, request).await.map_err(Failure::runtime)? {
            Some(answer) => Ok::<_, Failure>(answer),
            None => {
                let engine = tokio::task::spawn_blocking(move || Engine::open(config))
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))??;
                let answer = myelin_api::admin::execute_offline(&engine, request).await;
                engine.shutdown();
                Ok(answer)
            }
        }
    })?;
    if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
        let error = answer.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
        return Err(Failure::usage(error.to_owned()));
    }
    Ok(answer)
}

fn federation_cmd(what: FederationCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let request = match &what {
        FederationCommand::Allow { server } => serde_json::json!({ "op": "federation_allow", "server": server }),
        FederationCommand::Deny { server } => serde_json::json!({ "op": "federation_deny", "server": server }),
        FederationCommand::Remove { server } => serde_json::json!({ "op": "federation_remove", "server": server }),
        FederationCommand::List => serde_json::json!({ "op": "federation_list" }),
    };
    let answer = admin_call(config, &request)?;
    match what {
        FederationCommand::List => {
            for e in answer["entries"].as_array().into_iter().flatten() {
                println!(
                    "{} {} ({})",
                    e["list"].as_str().unwrap_or_default(),
                    e["server"].as_str().unwrap_or_default(),
                    e["source"].as_str().unwrap_or_default()
                );
            }
        }
        FederationCommand::Allow { server } => println!("allowed {server}"),
        FederationCommand::Deny { server } => println!("denied {server}"),
        FederationCommand::Remove { server } => println!("removed {server}"),
    }
    Ok(())
}

fn bench_cmd(what: BenchCommand) -> Result<(), Failure> {
    let rt = runtime()?;
    match what {
        BenchCommand::Send { url, rooms, clients, messages, json } => {
            let r = rt.block_on(bench::send(&url, rooms, clients, messages)).map_err(Failure::runtime)?;
            let rate = r.events as f64 / r.elapsed.as_secs_f64().max(1e-9);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "send", "url": url, "rooms": rooms, "clients": clients,
                        "events": r.events, "seconds": r.elapsed.as_secs_f64(), "events_per_second": rate,
                        "p50_ms": ms(r.p50), "p95_ms": ms(r.p95), "p99_ms": ms(r.p99), "readable": r.readable,
                    })
                );
            } else {
                println!("| scenario | events | events/s | p50 ms | p95 ms | p99 ms | readable |");
                println!("|---|---|---|---|---|---|---|");
                println!(
                    "| send, {rooms} room(s), {clients} clients | {} | {rate:.0} | {:.1} | {:.1} | {:.1} | {}/{} |",
                    r.events,
                    ms(r.p50),
                    ms(r.p95),
                    ms(r.p99),
                    r.readable,
                    r.events
                );
            }
            if r.readable != r.events {
                return Err(Failure::runtime(format!(
                    "{} acknowledged events are not readable",
                    r.events - r.readable
                )));
            }
        }
        BenchCommand::Fanout { url, receivers, messages, json } => {
            let r = rt.block_on(bench::fanout(&url, receivers, messages)).map_err(Failure::runtime)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "fanout", "url": url, "receivers": receivers, "messages": messages,
                        "delivered": r.delivered, "expected": r.expected,
                        "p50_ms": ms(r.p50), "p95_ms": ms(r.p95), "p99_ms": ms(r.p99),
                    })
                );
            } else {
                println!("| scenario | delivered | p50 ms | p95 ms | p99 ms |");
                println!("|---|---|---|---|---|");
                println!(
                    "| sync fan-out, {receivers} receivers | {}/{} | {:.1} | {:.1} | {:.1} |",
                    r.delivered,
                    r.expected,
                    ms(r.p50),
                    ms(r.p95),
                    ms(r.p99)
                );
            }
            if r.delivered != r.expected {
                return Err(Failure::runtime(format!("{} of {} deliveries seen", r.delivered, r.expected)));
            }
        }
        BenchCommand::Federation { url_a, url_b, server_a, messages, senders, json } => {
            let r = rt
                .block_on(bench::federation(&url_a, &url_b, &server_a, messages, senders))
                .map_err(Failure::runtime)?;
            let rate = r.received as f64 / r.elapsed.as_secs_f64().max(1e-9);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "federation", "senders": senders, "sent": r.sent, "received": r.received,
                        "seconds": r.elapsed.as_secs_f64(), "messages_per_second": rate,
                        "p50_ms": ms(r.p50), "p99_ms": ms(r.p99), "only_in_history": r.only_in_history,
                        "last_sent_ms": ms(r.last_sent), "first_arrival_ms": ms(r.first_arrival),
                    })
                );
            } else {
                println!("| scenario | received | msgs/s end to end | p50 ms | p99 ms |");
                println!("|---|---|---|---|---|");
                println!(
                    "| federation burst | {}/{} | {rate:.0} | {:.1} | {:.1} |",
                    r.received,
                    r.sent,
                    ms(r.p50),
                    ms(r.p99)
                );
            }
            if r.received != r.sent {
                return Err(Failure::runtime(format!(
                    "{} of {} messages arrived in /sync ({} more are in the room's history only)",
                    r.received, r.sent, r.only_in_history
                )));
            }
        }
        BenchCommand::Join { url_a, url_b, server_a, members, json } => {
            let r = rt.block_on(bench::join(&url_a, &url_b, &server_a, members)).map_err(Failure::runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "join", "members": r.members, "seconds": r.elapsed.as_secs_f64(),
                        "join_request_seconds": r.join_request.as_secs_f64(),
                    })
                );
            } else {
                println!("| scenario | members | seconds until all listed | of which the join request |");
                println!("|---|---|---|---|");
                println!(
                    "| federated join | {} | {:.2} | {:.2} |",
                    r.members,
                    r.elapsed.as_secs_f64(),
                    r.join_request.as_secs_f64()
                );
            }
        }
        BenchCommand::Script { url, lines, json } => {
            let t = rt.block_on(bench::script(&url, lines)).map_err(Failure::runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "scenario": "script", "url": url, "lines": lines, "seconds": t.as_secs_f64() })
                );
            } else {
                println!("| scenario | lines | seconds |");
                println!("|---|---|---|");
                println!("| sequential script | {lines} | {:.2} |", t.as_secs_f64());
            }
        }
    }
    Ok(())
}

fn room_cmd(what: RoomCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let RoomCommand::Shutdown { room_id } = what;
    // Offline, the leaves wait in the federation queue until the next start.
    let answer = admin_call(config, &serde_json::json!({ "op": "room_shutdown", "room_id": room_id }))?;
    println!("{room_id} shut down; {} local users removed", answer["users_removed"].as_u64().unwrap_or(0));
    Ok(())
}

fn parse_duration_ms(text: &str) -> Result<u64, Failure> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 =
        number.parse().map_err(|_| Failure::usage(format!("bad duration `{text}`: expected e.g. 30d, 12h")))?;
    let factor = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" | "" => 1_000,
        other => return Err(Failure::usage(format!("bad duration unit `{other}`: use d, h, m or s"))),
    };
    Ok(n.saturating_mul(factor))
}

fn media_cmd(what: MediaCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let request = match &what {
        MediaCommand::Delete { mxc } => serde_json::json!({ "op": "media_delete", "mxc": mxc }),
        MediaCommand::PurgeRemote { older_than } => {
            serde_json::json!({ "op": "media_purge_remote", "older_than_ms": parse_duration_ms(older_than)? })
        }
    };
    let answer = admin_call(config, &request)?;
    match what {
        MediaCommand::Delete { mxc } => println!("deleted {mxc}"),
        MediaCommand::PurgeRemote { .. } => {
            println!("purged {} remote media items", answer["purged"].as_u64().unwrap_or(0))
        }
    }
    Ok(())
}
