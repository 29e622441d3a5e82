//! The local admin socket: `<data_dir>/admin.sock`.
//!
//! The operator CLI (`myelin backup`, later `myelin admin …`) talks to a
//! running server through this Unix socket, because RocksDB allows one process
//! per database. Access is by file permission (0600, the server's user), which
//! fits air-gapped operations: no token, no network exposure.
//!
//! Protocol: one JSON object per line each way.
//! `{"op":"ping"}` → `{"ok":true}`;
//! `{"op":"backup","dir":"/abs/path"}` → `{"ok":true,"bytes":N,"files":N}`;
//! `{"op":"user_create","name":"..","password":"..","admin":false}`,
//! `{"op":"user_reset_password","name":"..","password":".."}`,
//! `{"op":"user_set_admin","name":"..","admin":true}`,
//! `{"op":"user_list"}` → see [`user_op`];
//! `{"op":"media_delete","mxc":"mxc://server/id"}`,
//! `{"op":"media_purge_remote","older_than_ms":N}` → `{"ok":true,"purged":N}`;
//! `{"op":"user_deactivate","name":".."}` → `{"ok":true,"user_id":"..","rooms_left":N}`;
//! `{"op":"room_shutdown","room_id":"!.."}` → `{"ok":true,"users_removed":N}`;
//! `{"op":"federation_allow"|"federation_deny"|"federation_remove","server":".."}` → `{"ok":true}`,
//! `{"op":"federation_list"}` → `{"ok":true,"entries":[{"server","list","source"}]}`;
//! `{"op":"storage_stats","compact":bool}` → `{"ok":true,"events":N,"sst_bytes":N,
//! "families":[{"name","sst_bytes","keys"}]}` (after a full compaction with `compact`);
//! failures → `{"ok":false,"error":"..."}`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use myelin_engine::Engine;
use ruma::{OwnedRoomId, OwnedServerName};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::Instrument;

/// Longest accepted request line.
const MAX_LINE: usize = 64 * 1024;

/// The admin socket path of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The admin socket, bound and private: `(listener, owner uid)`.
pub struct AdminSocket(UnixListener, u32);

/// Binds the admin socket. Called after the database is open (and locked), so
/// a socket file left behind is stale and is replaced; and before the HTTP
/// listeners are bound, so a server that takes connections also takes
/// `myelin admin …` (which would otherwise find the database locked).
pub fn bind(engine: &Engine) -> Option<AdminSocket> {
    let path = socket_path(&engine.config.data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "admin socket unavailable; `myelin backup` needs the server stopped");
            return None;
        }
    };
    // Only the server's own user may use the socket: the file is made 0600 (a
    // connect needs write permission on it), and since another user could
    // connect between bind and chmod, every peer's uid is checked as well.
    let owner = {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::metadata(&path))
        {
            Ok(meta) => meta.uid(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e,
                    "could not make the admin socket private; not serving it");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        }
    };
    tracing::info!(path = %path.display(), "admin socket listening");
    Some(AdminSocket(listener, owner))
}

/// Serves the admin socket bound by [`bind`] until `stop` fires.
pub async fn serve(engine: Arc<Engine>, socket: Option<AdminSocket>, mut stop: watch::Receiver<bool>) {
    let Some(AdminSocket(listener, owner)) = socket else { return };
    let path = socket_path(&engine.config.data_dir);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                match stream.peer_cred().map(|c| c.uid()) {
                    Ok(uid) if uid == owner || uid == 0 => {}
                    other => {
                        tracing::warn!(peer_uid = ?other.ok(), "admin socket: refused a connection from another user");
                        metrics::counter!("myelin_admin_socket_refused_total").increment(1);
                        continue;
                    }
                }
                let engine = engine.clone();
                tokio::spawn(
                    async move { session(engine, stream).await }
                        .instrument(tracing::info_span!("admin_session")),
                );
            }
            _ = stop.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn session(engine: Arc<Engine>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 16)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => execute(&engine, &req).await,
            Err(e) => json!({ "ok": false, "error": format!("request is not JSON: {e}") }),
        };
        let mut out = answer.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Runs an admin request without a running server (the CLI opened the data directory).
pub async fn execute_offline(engine: &Arc<Engine>, req: &Value) -> Value {
    execute(engine, req).await
}

/// One admin request, as the CLI sends it: `{"op": "<name>", ...fields}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Ping,
    Backup {
        dir: PathBuf,
    },
    StorageStats {
        #[serde(default)]
        compact: bool,
    },
    MediaDelete {
        mxc: String,
    },
    MediaPurgeRemote {
        #[serde(default)]
        older_than_ms: u64,
    },
    FederationAllow {
        server: OwnedServerName,
    },
    FederationDeny {
        server: OwnedServerName,
    },
    FederationRemove {
        server: OwnedServerName,
    },
    FederationList,
    FederationQueue,
    AppserviceAdd {
        /// The registration file's YAML.
        registration: String,
    },
    AppserviceRemove {
        id: String,
    },
    AppserviceList,
    RoomShutdown {
        room_id: OwnedRoomId,
    },
    UserCreate {
        name: String,
        password: String,
        #[serde(default)]
        admin: bool,
    },
    UserResetPassword {
        name: String,
        password: String,
    },
    UserSetAdmin {
        name: String,
        admin: bool,
    },
    UserDeactivate {
        name: String,
    },
    UserList,
}

async fn execute(engine: &Arc<Engine>, req: &Value) -> Value {
    let request = match Request::deserialize(req) {
        Ok(r) => r,
        Err(e) => {
            // The tagged form loses the field path; the op at least says which request it was.
            let op = req.get("op").and_then(Value::as_str).unwrap_or("(no op)");
            return json!({ "ok": false, "error": format!("bad `{op}` request: {e}") });
        }
    };
    match run(engine, request).await {
        Ok(answer) => answer,
        Err(e) => json!({ "ok": false, "error": e }),
    }
}

/// What an operator is told when an action fails: the engine's words (this
/// socket is the server's own user, so internals are not hidden from it).
fn said(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn run(engine: &Arc<Engine>, request: Request) -> Result<Value, String> {
    use myelin_engine::federation::policy::List;
    let users = &engine.users;
    Ok(match request {
        Request::Ping => json!({ "ok": true, "server_name": engine.server_name.as_str() }),
        Request::Backup { dir } => {
            tracing::info!(dir = %dir.display(), "backup requested over the admin socket");
            let r = engine.backup(dir).await.map_err(said)?;
            json!({ "ok": true, "bytes": r.bytes, "files": r.files })
        }
        Request::StorageStats { compact } => {
            let stats = engine.storage_stats(compact).await.map_err(said)?;
            let sst: u64 = stats.families.iter().map(|f| f.1).sum();
            let families: Vec<Value> = stats
                .families
                .iter()
                .filter(|f| f.1 > 0)
                .map(|(name, bytes, keys)| json!({ "name": name, "sst_bytes": bytes, "keys": keys }))
                .collect();
            json!({ "ok": true, "events": stats.events, "sst_bytes": sst, "families": families })
        }
        Request::MediaDelete { mxc } => {
            let (server, id) =
                mxc.strip_prefix("mxc://").and_then(|r| r.split_once('/')).ok_or("expected mxc://server/id")?;
            if !engine.media.delete(server, id).await.map_err(said)? {
                return Err(format!("{mxc} not found"));
            }
            json!({ "ok": true })
        }
        Request::MediaPurgeRemote { older_than_ms } => {
            let before = myelin_engine::util::now_ms().saturating_sub(older_than_ms);
            let n = engine.media.purge_remote(engine.server_name.as_str(), before).await.map_err(said)?;
            json!({ "ok": true, "purged": n })
        }
        Request::FederationAllow { server } => {
            engine.policy.set(server.as_str(), List::Allow).await.map_err(said)?;
            tracing::info!(%server, "federation allow-list entry added over the admin socket");
            json!({ "ok": true })
        }
        Request::FederationDeny { server } => {
            engine.policy.set(server.as_str(), List::Deny).await.map_err(said)?;
            tracing::info!(%server, "federation deny-list entry added over the admin socket");
            json!({ "ok": true })
        }
        Request::FederationRemove { server } => {
            if !engine.policy.remove(server.as_str()).await.map_err(said)? {
                return Err(format!("{server} has no runtime entry"));
            }
            tracing::info!(%server, "federation list entry removed over the admin socket");
            json!({ "ok": true })
        }
        Request::FederationList => {
            let entries: Vec<Value> = engine
                .policy
                .list()
                .into_iter()
                .map(|(server, list, source)| json!({ "server": server, "list": list, "source": source }))
                .collect();
            json!({ "ok": true, "entries": entries })
        }
        Request::FederationQueue => {
            let destinations = myelin_engine::federation::queue_status::queue_status(engine).map_err(said)?;
            // Inbound PDUs waiting for auth events (in memory: only a running server has any).
            let pending: serde_json::Map<String, Value> =
                engine.pending_pdus.per_origin().into_iter().map(|(o, n)| (o, json!(n))).collect();
            json!({ "ok": true, "destinations": destinations, "pending_pdus": pending })
        }
        Request::AppserviceAdd { registration } => {
            let a = engine.appservices.add(&registration).await.map_err(said)?;
            engine.ensure_appservice_senders().await.map_err(|e| format!("registered, but its sender user: {e}"))?;
            tracing::info!(appservice = a.id(), "appservice registered over the admin socket");
            json!({ "ok": true, "id": a.id(), "sender": a.sender })
        }
        Request::AppserviceRemove { id } => {
            engine.appservices.remove(&id).await.map_err(said)?;
            tracing::info!(appservice = id, "appservice removed over the admin socket");
            json!({ "ok": true })
        }
        Request::AppserviceList => {
            let mut entries = Vec::new();
            for a in engine.appservices.all().iter() {
                let depth = myelin_engine::appservice::queue::depth(&engine.db, a.id(), 1_000_000).map_err(said)?;
                entries.push(json!({
                    "id": a.id(), "url": a.url(), "sender": a.sender, "source": a.source, "queued": depth,
                }));
            }
            json!({ "ok": true, "entries": entries })
        }
        Request::RoomShutdown { room_id } => {
            let s = engine.shutdown_room(&room_id).await.map_err(said)?;
            json!({ "ok": true, "users_removed": s.kicked_users.len() })
        }
        Request::UserCreate { name, password, admin } => {
            let user_id = users.user_id_for(&name).map_err(said)?;
            users.register(&user_id, Some(&password), admin, None, None, true).await.map_err(said)?;
            json!({ "ok": true, "user_id": user_id })
        }
        Request::UserResetPassword { name, password } => {
            let user_id = users.user_id_for(&name).map_err(said)?;
            let removed = users.set_password(&user_id, &password, Some("")).await.map_err(said)?;
            engine.forget_device_keys(&user_id, &removed).await.map_err(said)?;
            json!({ "ok": true, "user_id": user_id })
        }
        Request::UserDeactivate { name } => {
            let user_id = users.user_id_for(&name).map_err(said)?;
            if users.account(&user_id).map_err(said)?.is_none() {
                return Err(format!("no user {user_id}"));
            }
            let left = engine.deactivate_user(&user_id).await.map_err(said)?;
            json!({ "ok": true, "user_id": user_id, "rooms_left": left })
        }
        Request::UserSetAdmin { name, admin } => {
            let user_id = users.user_id_for(&name).map_err(said)?;
            users.set_admin(&user_id, admin).await.map_err(said)?;
            json!({ "ok": true, "user_id": user_id, "admin": admin })
        }
        Request::UserList => {
            let list: Vec<Value> = users
                .list()
                .map_err(said)?
                .into_iter()
                .map(|(id, a)| json!({ "user_id": id, "admin": a.admin, "deactivated": a.deactivated, "created_ms": a.created_ms }))
                .collect();
            json!({ "ok": true, "users": list })
        }
    })
}

/// Sends one request to a running server's admin socket.
///
/// `Ok(None)` when no server is listening there.
pub async fn request(data_dir: &Path, req: &Value) -> Result<Option<Value>, String> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(format!("connecting to {}: {e}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut line = req.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(|e| format!("writing to the admin socket: {e}"))?;
    let mut lines = BufReader::new(read).lines();
    match lines.next_line().await {
        Ok(Some(answer)) => serde_json::from_str(&answer).map(Some).map_err(|e| format!("bad answer: {e}")),
        Ok(None) => Err("the server closed the admin socket without answering".into()),
        Err(e) => Err(format!("reading from the admin socket: {e}")),
    }
}
