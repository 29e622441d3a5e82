//! `myelin import synapse`: brings a stopped Synapse's accounts over into this
//! server's data directory (issue #23 §2, first part).
//!
//! Read from Synapse's SQLite database (opened read-only): `users` (password
//! hashes, bcrypt, which log in here as they are; creation time in seconds;
//! admin, guest and deactivated flags), `profiles` (display name, avatar),
//! `devices` with each device's newest non-expiring `access_tokens` row (so
//! clients stay logged in with the token they hold), `account_data` /
//! `room_account_data`, and the devices' and users' encryption keys
//! (`keys`). With `--signing-key`, Synapse's signing key file
//! becomes this server's, so peers see the same server.
//!
//! Then the rooms: every room's events, state, local users' invites, room
//! aliases, the public directory and receipts (`rooms`).
//!
//! Push rules and key backups (`extras`), and the
//! media store's files (`media`).
//!
//! A Synapse on PostgreSQL is first copied into a SQLite staging file
//! (`pg`) and read from there.
//!
//! Last, what Synapse had not delivered to other servers is queued again
//! (`outbox`), so peers catch up without a re-join.
//!
//! Safety: the server names must match; a Synapse whose pid file names a live
//! process is refused; Myelin must be stopped (its data directory lock). A
//! second run continues: what is already here is left alone and counted.

mod extras;
mod keys;
mod media;
mod outbox;
mod pg;
mod rooms;

use std::path::{Path, PathBuf};

use myelin_engine::{
    Config, Engine,
    users::import::{ImportCount, ImportedAccount, ImportedDevice},
};
use rusqlite::{Connection, OpenFlags};

use crate::{Failure, load_config, runtime};

/// Rows written per batch (and per progress line).
const BATCH: usize = 1000;

/// A failed read of Synapse's database.
pub(crate) fn sql(e: rusqlite::Error) -> Failure {
    Failure::runtime(format!("reading the Synapse database: {e}"))
}

/// A failed write into Myelin's database.
pub(crate) fn engine_err(e: impl std::fmt::Display) -> Failure {
    Failure::runtime(format!("writing the Myelin database: {e}"))
}

/// Refuses a Synapse that is running: a process holds the database file open
/// (Synapse keeps its SQLite connections open while it runs), or its
/// `homeserver.pid` (written when daemonized, beside the database) names a
/// live process.
fn refuse_running(database: &Path) -> Result<(), Failure> {
    let refuse = |pid: &str, how: &str| {
        Err(Failure::usage(format!("Synapse is running (pid {pid}, {how}): stop it before importing")))
    };
    if let Some(pid) = holder_of(database) {
        return refuse(&pid, &format!("it has {} open", database.display()));
    }
    let pid_file = database.parent().unwrap_or(Path::new(".")).join("homeserver.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = text.trim().parse::<u32>()
        // Linux lists every live process under /proc.
        && pid > 0
        && Path::new("/proc").join(pid.to_string()).exists()
    {
        return refuse(&pid.to_string(), &pid_file.display().to_string());
    }
    Ok(())
}

/// A process (other than this one) with `file` open, found through `/proc/*/fd`.
fn holder_of(file: &Path) -> Option<String> {
    let target = std::fs::canonicalize(file).ok()?;
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Other users' processes are not readable: they are not this operator's Synapse.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target)) {
            return Some(pid);
        }
    }
    None
}

/// The server name of the database's users (they must all be of one server).
fn server_name_of(db: &Connection) -> Result<Option<String>, Failure> {
    let mut stmt = db.prepare("SELECT name FROM users LIMIT 1").map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let Some(row) = rows.next().map_err(sql)? else { return Ok(None) };
    let name: String = row.get(0).map_err(sql)?;
    Ok(name.split_once(':').map(|(_, server)| server.to_owned()))
}

fn progress(table: &str, done: usize, total: usize) {
    eprintln!("import: {table}: {done}/{total}");
}

fn count_rows(db: &Connection, query: &str) -> Result<usize, Failure> {
    let n: i64 = db.query_row(query, [], |r| r.get(0)).map_err(sql)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn accounts(db: &Connection, server: &str) -> Result<Vec<ImportedAccount>, Failure> {
    // Profiles are keyed by localpart (full_user_id is newer and may be null).
    let mut stmt = db
        .prepare(
            "SELECT u.name, u.password_hash, u.creation_ts, u.admin, u.is_guest, u.deactivated, \
             p.displayname, p.avatar_url FROM users u \
             LEFT JOIN profiles p ON p.user_id = substr(u.name, 2, instr(u.name, ':') - 2) \
             ORDER BY u.name",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let (name, hash, created_s, admin, guest, deactivated, displayname, avatar_url) = row.map_err(sql)?;
        let user_id = ruma::UserId::parse(name.as_str())
            .map_err(|e| Failure::runtime(format!("users: `{name}` is not a user id: {e}")))?;
        if user_id.server_name().as_str() != server {
            return Err(Failure::runtime(format!("users: `{name}` is not of server {server}")));
        }
        out.push(ImportedAccount {
            user_id,
            password_hash: hash.unwrap_or_default(),
            // Synapse keeps seconds.
            created_ms: u64::try_from(created_s.unwrap_or(0)).unwrap_or(0).saturating_mul(1000),
            admin: admin.unwrap_or(0) != 0,
            guest: guest.unwrap_or(0) != 0,
            deactivated: deactivated.unwrap_or(0) != 0,
            displayname,
            avatar_url,
        });
    }
    Ok(out)
}

fn devices(db: &Connection) -> Result<Vec<ImportedDevice>, Failure> {
    // Hidden devices are Synapse's stand-ins for cross-signing keys, not devices.
    // Tokens with an expiry belong to refresh-token logins: Myelin's tokens do
    // not expire, so those clients log in again rather than keep a token longer.
    let mut stmt = db
        .prepare(
            "SELECT d.user_id, d.device_id, d.display_name, d.last_seen, \
             (SELECT t.token FROM access_tokens t WHERE t.user_id = d.user_id AND t.device_id = d.device_id \
              AND t.valid_until_ms IS NULL AND t.puppets_user_id IS NULL ORDER BY t.id DESC LIMIT 1) \
             FROM devices d WHERE COALESCE(d.hidden, 0) = 0 ORDER BY d.user_id, d.device_id",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ImportedDevice {
                user_id: r.get(0)?,
                device_id: r.get(1)?,
                display_name: r.get(2)?,
                last_seen_ts: u64::try_from(r.get::<_, Option<i64>>(3)?.unwrap_or(0)).unwrap_or(0),
                token: r.get(4)?,
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
}

/// `(user, room or None, type, content)` of every account-data row.
type AccountDataRow = (String, Option<String>, String, String);

fn account_data(db: &Connection) -> Result<Vec<AccountDataRow>, Failure> {
    let mut out = Vec::new();
    let queries = [
        "SELECT user_id, NULL, account_data_type, content FROM account_data ORDER BY stream_id",
        "SELECT user_id, room_id, account_data_type, content FROM room_account_data ORDER BY stream_id",
    ];
    for q in queries {
        let mut stmt = db.prepare(q).map_err(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(sql)?;
        for row in rows {
            out.push(row.map_err(sql)?);
        }
    }
    Ok(out)
}

fn report(table: &str, c: ImportCount) {
    println!("{table}: {} imported, {} already here", c.imported, c.present);
}

fn add(total: &mut ImportCount, c: ImportCount) {
    total.imported += c.imported;
    total.present += c.present;
}

/// Where Synapse's database is.
pub(super) enum Source {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string.
    Postgres(String),
}

/// Removes the staging copy of a PostgreSQL database when the import ends, however it ends.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the import into the configured data directory.
pub(super) fn import_synapse_cmd(
    source: Source,
    media_store: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    config_path: Option<PathBuf>,
) -> Result<(), Failure> {
    let config: Config = load_config(config_path)?;
    let (database, media_store, _staging) = match source {
        Source::Sqlite(database) => {
            if !database.is_file() {
                return Err(Failure::usage(format!("{}: no such database file", database.display())));
            }
            refuse_running(&database)?;
            let beside = database.parent().unwrap_or(Path::new(".")).join("media_store");
            (database.clone(), media_store.unwrap_or(beside), Staging(None))
        }
        Source::Postgres(conninfo) => {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| Failure::runtime(format!("{}: {e}", config.data_dir.display())))?;
            let staging = config.data_dir.join("synapse-import.sqlite");
            let guard = Staging(Some(staging.clone()));
            pg::stage(&conninfo, &staging)?;
            (staging, media_store.unwrap_or_default(), guard)
        }
    };
    let db = Connection::open_with_flags(&database, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| Failure::usage(format!("{}: not a readable SQLite database: {e}", database.display())))?;
    let server = config.server_name.clone();
    if let Some(theirs) = server_name_of(&db)?
        && theirs != server
    {
        return Err(Failure::usage(format!(
            "the database is Synapse server {theirs}'s, but server_name here is {server}: they must be the same"
        )));
    }
    // Before the engine opens: it would generate a key of its own.
    if let Some(path) = signing_key {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Failure::usage(format!("{}: cannot read the signing key: {e}", path.display())))?;
        let (key_id, written) = myelin_engine::keys::install_key_file(&config.data_dir, &text)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        println!("signing key: {key_id} {}", if written { "installed" } else { "already installed" });
    }
    let accounts = accounts(&db, &server)?;
    let devices = devices(&db)?;
    let data = account_data(&db)?;
    let imported: std::collections::HashSet<String> = accounts.iter().map(|a| a.user_id.to_string()).collect();
    let keys = keys::read(&db, &imported)?;
    let skipped_tokens = count_rows(
        &db,
        "SELECT count(*) FROM access_tokens WHERE device_id IS NULL OR valid_until_ms IS NOT NULL \
         OR puppets_user_id IS NOT NULL",
    )?;
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = tokio::task::spawn_blocking(move || Engine::open(config))
            .await
            .map_err(|e| Failure::runtime(format!("opening the database: {e}")))??;
        let mut total = ImportCount::default();
        for (i, chunk) in accounts.chunks(BATCH).enumerate() {
            add(&mut total, engine.users.import_accounts(chunk).await.map_err(|e| Failure::runtime(e.to_string()))?);
            progress("users", (i * BATCH + chunk.len()).min(accounts.len()), accounts.len());
        }
        report("users", total);
        let mut total = ImportCount::default();
        for (i, chunk) in devices.chunks(BATCH).enumerate() {
            add(&mut total, engine.users.import_devices(chunk).await.map_err(|e| Failure::runtime(e.to_string()))?);
            progress("devices", (i * BATCH + chunk.len()).min(devices.len()), devices.len());
        }
        report("devices", total);
        let with_token = devices.iter().filter(|d| d.token.is_some()).count();
        println!(
            "access tokens: {with_token} carried over; {skipped_tokens} not (no device, expiring, or puppet tokens)"
        );
        let mut written = 0;
        for (user, room, kind, content) in &data {
            // Only valid JSON objects of local users: the server serves them back as they are.
            let is_object = serde_json::from_str::<serde_json::Value>(content).is_ok_and(|v| v.is_object());
            if !is_object || !accounts.iter().any(|a| a.user_id.as_str() == user) {
                continue;
            }
            engine
                .users
                .set_account_data(user, room.as_deref(), kind, content.as_bytes().to_vec())
                .await
                .map_err(|e| Failure::runtime(e.to_string()))?;
            written += 1;
        }
        println!("account data: {written} of {} written", data.len());
        let k = keys::write(&engine, keys).await?;
        println!(
            "encryption keys: {} devices' identity keys, {} one-time keys, cross-signing keys of {} users, {} signatures; {} refused",
            k.devices, k.one_time_keys, k.cross_signing_users, k.signatures, k.refused
        );
        let rooms_started = std::time::Instant::now();
        let r = rooms::import(&engine, &db, &server).await?;
        let rooms_elapsed = rooms_started.elapsed();
        println!(
            "rooms: {} imported; events: {} in the timeline, {} outside it (soft-failed or a gap's edge), \
             {} rejected here ({} rejected by Synapse), {} backfilled history, {} outliers, {} already here, {} left out",
            r.rooms, r.timeline, r.hidden, r.rejected, r.synapse_rejected, r.backfilled, r.outliers, r.present,
            r.unreadable
        );
        println!(
            "invites and knocks: {}; aliases: {}; published rooms: {}; receipts: {}",
            r.invites, r.aliases, r.published, r.receipts
        );
        for skipped in &r.skipped_rooms {
            println!("room left out: {skipped}");
        }
        for room in &r.state_differs {
            println!("room state differs from Synapse's: {room}");
        }
        let x = extras::import(&engine, &db).await?;
        println!(
            "push rules: {} users' rules ({} rules or flags refused); key backups: {} versions with {} sessions \
             imported, {} already here",
            x.push_users, x.push_refused, x.backup_versions, x.backup_sessions, x.backup_present
        );
        let m = if !media_store.as_os_str().is_empty() && media_store.is_dir() {
            media::import(&engine, &db, &media_store, &server).await?
        } else {
            println!("media: no media store at {}; give it with --media-store", media_store.display());
            Default::default()
        };
        println!(
            "media: {} local and {} cached remote files imported, {} already here, {} rows without a file",
            m.local, m.remote, m.present, m.missing
        );
        let o = outbox::import(&engine, &db, &server).await?;
        println!(
            "federation: {} (room, server) pairs behind Synapse's sends get the room's newest event again; \
             {} undelivered to-device messages queued",
            o.pdus, o.to_device
        );
        // Verify: every account and device read is now here.
        let mut missing = 0;
        for a in &accounts {
            if !engine.users.exists(&a.user_id).map_err(|e| Failure::runtime(e.to_string()))? {
                missing += 1;
            }
        }
        for d in &devices {
            let here = engine.users.device(&d.user_id, &d.device_id).map_err(|e| Failure::runtime(e.to_string()))?;
            if here.is_none() && accounts.iter().any(|a| a.user_id.as_str() == d.user_id) {
                missing += 1;
            }
        }
        engine.shutdown();
        let events = r.timeline + r.hidden + r.rejected + r.backfilled;
        let seconds = rooms_elapsed.as_secs_f64();
        println!(
            "rooms took {seconds:.1} s ({:.0} events/s); peak memory {} MiB",
            events as f64 / seconds.max(1e-9),
            crate::bench_sliding::status_kib(std::process::id(), "VmHWM").unwrap_or(0) / 1024
        );
        if missing > 0 {
            return Err(Failure::runtime(format!("verification: {missing} accounts or devices are missing")));
        }
        println!(
            "verified: {} accounts and {} devices present; {} rooms with Synapse's current state, {} without",
            accounts.len(),
            devices.len(),
            r.rooms - r.state_differs.len(),
            r.state_differs.len()
        );
        Ok(())
    })
}
