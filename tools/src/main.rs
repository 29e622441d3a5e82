//! `myelin`: the operator's command line.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad configuration or usage
//! (unknown key, wrong type, unparsable address, data dir locked by another
//! running Myelin). Errors are one line on stderr, never a panic trace.

/// mimalloc instead of glibc malloc: see BENCHMARKS.md (allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin_cmds;
mod backup;
mod bench;
mod bench_appservice;
mod bench_cmd;
mod bench_keys;
mod bench_push;
mod bench_sliding;
mod bench_soak;
mod bench_synapse_db;
mod cli;
mod import_synapse;
mod serve;

use std::{path::PathBuf, process::ExitCode};

use admin_cmds::{appservice_cmd, federation_cmd, media_cmd, room_cmd, storage_cmd, user_cmd};
use backup::{backup_cmd, restore_cmd};
use bench_cmd::bench_cmd;
use clap::Parser;
use cli::{AdminCommand, Cli, Command, ImportCommand};
use myelin_engine::{Config, EngineError};
use myelin_storage::StorageError;
use serve::serve;

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
        Command::Import { what: ImportCommand::Synapse { database, postgres, media_store, signing_key, config } } => {
            let source = match (database, postgres) {
                (Some(file), _) => Ok(import_synapse::Source::Sqlite(file)),
                (None, Some(conninfo)) => Ok(import_synapse::Source::Postgres(conninfo)),
                (None, None) => Err(Failure::usage("give --database or --postgres")),
            };
            source.and_then(|s| import_synapse::import_synapse_cmd(s, media_store, signing_key, config))
        }
        Command::Bench { what } => bench_cmd(what),
        Command::Admin { what: AdminCommand::User { what }, config } => user_cmd(what, config),
        Command::Admin { what: AdminCommand::Media { what }, config } => media_cmd(what, config),
        Command::Admin { what: AdminCommand::Room { what }, config } => room_cmd(what, config),
        Command::Admin { what: AdminCommand::Federation { what }, config } => federation_cmd(what, config),
        Command::Admin { what: AdminCommand::Appservice { what }, config } => appservice_cmd(what, config),
        Command::Admin { what: AdminCommand::Storage { compact, json }, config } => storage_cmd(compact, json, config),
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
        // ruma's auth checks log every event they pass at info: a line per event.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ruma_state_res=warn"));
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
