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
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

/// Longest accepted request line.
const MAX_LINE: usize = 64 * 1024;

/// The admin socket path of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Serves the admin socket until `stop` fires. Called after the database is
/// open (and locked), so a socket file left behind is stale and is replaced.
pub async fn serve(engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let path = socket_path(&engine.config.data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "admin socket unavailable; `myelin backup` needs the server stopped");
            return;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    tracing::info!(path = %path.display(), "admin socket listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let engine = engine.clone();
                tokio::spawn(async move { session(engine, stream).await });
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

async fn execute(engine: &Arc<Engine>, req: &Value) -> Value {
    match req.get("op").and_then(Value::as_str) {
        Some("ping") => json!({ "ok": true, "server_name": engine.server_name.as_str() }),
        Some("backup") => {
            let Some(dir) = req.get("dir").and_then(Value::as_str) else {
                return json!({ "ok": false, "error": "backup needs `dir`" });
            };
            tracing::info!(dir, "backup requested over the admin socket");
            match engine.backup(PathBuf::from(dir)).await {
                Ok(r) => json!({ "ok": true, "bytes": r.bytes, "files": r.files }),
                Err(e) => json!({ "ok": false, "error": e.to_string() }),
            }
        }
        Some("storage_stats") => {
            let compact = req.get("compact").and_then(Value::as_bool).unwrap_or(false);
            let db = engine.db.clone();
            let stats = tokio::task::spawn_blocking(move || {
                if compact {
                    tracing::info!("full compaction requested over the admin socket");
                    db.compact_all();
                }
                let events = myelin_engine::rooms::stored_event_count(&db);
                (db.family_sizes(), events)
            })
            .await;
            match stats {
                Ok((families, Ok(events))) => {
                    let sst: u64 = families.iter().map(|f| f.1).sum();
                    let families: Vec<Value> = families
                        .iter()
                        .filter(|f| f.1 > 0)
                        .map(|(name, bytes, keys)| json!({ "name": name, "sst_bytes": bytes, "keys": keys }))
                        .collect();
                    json!({ "ok": true, "events": events, "sst_bytes": sst, "families": families })
                }
                Ok((_, Err(e))) => json!({ "ok": false, "error": e.to_string() }),
                Err(e) => json!({ "ok": false, "error": format!("storage task failed: {e}") }),
            }
        }
        Some("media_delete") => {
            let Some(mxc) = req.get("mxc").and_then(Value::as_str) else {
                return json!({ "ok": false, "error": "`mxc` is required" });
            };
            let Some((server, id)) = mxc.strip_prefix("mxc://").and_then(|r| r.split_once('/')) else {
                return json!({ "ok": false, "error": "expected mxc://server/id" });
            };
            match engine.media.delete(server, id).await {
                Ok(true) => json!({ "ok": true }),
                Ok(false) => json!({ "ok": false, "error": format!("{mxc} not found") }),
                Err(e) => json!({ "ok": false, "error": e.to_string() }),
            }
        }
        Some("media_purge_remote") => {
            let age = req.get("older_than_ms").and_then(Value::as_u64).unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            match engine.media.purge_remote(engine.server_name.as_str(), now.saturating_sub(age)).await {
                Ok(n) => json!({ "ok": true, "purged": n }),
                Err(e) => json!({ "ok": false, "error": e.to_string() }),
            }
        }
        Some(op @ ("federation_allow" | "federation_deny" | "federation_remove")) => {
            let Some(server) = req.get("server").and_then(Value::as_str) else {
                return json!({ "ok": false, "error": "`server` is required" });
            };
            if ruma::ServerName::parse(server).is_err() {
                return json!({ "ok": false, "error": format!("{server:?} is not a server name") });
            }
            use myelin_engine::federation::policy::List;
            let result = match op {
                "federation_allow" => engine.policy.set(server, List::Allow).await.map(|_| true),
                "federation_deny" => engine.policy.set(server, List::Deny).await.map(|_| true),
                _ => engine.policy.remove(server).await,
            };
            tracing::info!(op, server, "federation list changed over the admin socket");
            match result {
                Ok(true) => json!({ "ok": true }),
                Ok(false) => json!({ "ok": false, "error": format!("{server} has no runtime entry") }),
                Err(e) => json!({ "ok": false, "error": e.to_string() }),
            }
        }
        Some("federation_list") => {
            let entries: Vec<Value> = engine
                .policy
                .list()
                .into_iter()
                .map(|(server, list, source)| json!({ "server": server, "list": list, "source": source }))
                .collect();
            json!({ "ok": true, "entries": entries })
        }
        Some("federation_queue") => match myelin_engine::federation::queue_status::queue_status(engine) {
            Ok(destinations) => {
                // Inbound PDUs waiting for auth events (in memory: only a running server has any).
                let pending: serde_json::Map<String, Value> =
                    engine.pending_pdus.per_origin().into_iter().map(|(o, n)| (o, json!(n))).collect();
                json!({ "ok": true, "destinations": destinations, "pending_pdus": pending })
            }
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        },
        Some("appservice_add") => {
            let Some(yaml) = req.get("registration").and_then(Value::as_str) else {
                return json!({ "ok": false, "error": "`registration` (the file's YAML) is required" });
            };
            match engine.appservices.add(yaml).await {
                Ok(a) => {
                    if let Err(e) = engine.ensure_appservice_senders().await {
                        return json!({ "ok": false, "error": format!("registered, but its sender user: {e}") });
                    }
                    tracing::info!(appservice = a.id(), "appservice registered over the admin socket");
                    json!({ "ok": true, "id": a.id(), "sender": a.sender })
                }
                Err(e) => json!({ "ok": false, "error": e.to_string() }),
            }
        }
        Some("appservice_remove") => {
            let Some(id) = req.get("id").and_then(Value::as_str) else {
                return json!({ "ok": false, "error": "`id` is required" });
            };
            match engine.appservices.remove(id).await {
                Ok(()) => {
                    tracing::info!(appservice = id, "appservice removed over the admin socket");
                    json!({ "ok": true })
                }
                Err(e) => json!({ "ok": false, "error": e.to_string() }),
            }
        }
        Some("appservice_list") => {
            let mut entries = Vec::new();
            for a in engine.appservices.all().iter() {
                let depth = myelin_engine::appservice::queue::depth(&engine.db, a.id(), 1_000_000).unwrap_or(0);
                entries.push(json!({
                    "id": a.id(),
                    "url": a.url(),
                    "sender": a.sender,
                    "source": a.source,
                    "queued": depth,
                }));
            }
            json!({ "ok": true, "entries": entries })
        }
        Some("room_shutdown") => {
            let Some(room) = req.get("room_id").and_then(Value::as_str).and_then(|r| ruma::RoomId::parse(r).ok())
            else {
                return json!({ "ok": false, "error": "`room_id` must be a room id" });
            };
            match shutdown_room(engine, &room).await {
                Ok(s) => json!({ "ok": true, "users_removed": s.kicked_users.len() }),
                Err(e) => json!({ "ok": false, "error": e }),
            }
        }
        Some(op) if op.starts_with("user_") => match user_op(engine, op, req).await {
            Ok(v) => v,
            Err(e) => json!({ "ok": false, "error": e }),
        },
        other => json!({ "ok": false, "error": format!("unknown op {other:?}") }),
    }
}

/// User administration, shared by the admin socket and the offline CLI.
pub async fn user_op(engine: &Engine, op: &str, req: &Value) -> Result<Value, String> {
    let name = || req.get("name").and_then(Value::as_str).ok_or_else(|| "`name` is required".to_owned());
    let password = || req.get("password").and_then(Value::as_str).ok_or_else(|| "`password` is required".to_owned());
    let users = &engine.users;
    match op {
        "user_create" => {
            let user_id = users.user_id_for(name()?).map_err(|e| e.to_string())?;
            let admin = req.get("admin").and_then(Value::as_bool).unwrap_or(false);
            users.register(&user_id, Some(password()?), admin, None, None, true).await.map_err(|e| e.to_string())?;
            Ok(json!({ "ok": true, "user_id": user_id }))
        }
        "user_reset_password" => {
            let user_id = users.user_id_for(name()?).map_err(|e| e.to_string())?;
            let removed = users.set_password(&user_id, password()?, Some("")).await.map_err(|e| e.to_string())?;
            let user = ruma::UserId::parse(user_id.as_str()).map_err(|e| e.to_string())?;
            forget_device_keys(engine, &user, &removed).await?;
            Ok(json!({ "ok": true, "user_id": user_id }))
        }
        "user_deactivate" => {
            let user_id = users.user_id_for(name()?).map_err(|e| e.to_string())?;
            let user = ruma::UserId::parse(user_id.as_str()).map_err(|e| e.to_string())?;
            if users.account(&user).map_err(|e| e.to_string())?.is_none() {
                return Err(format!("no user {user}"));
            }
            let left = deactivate_user(engine, &user).await?;
            Ok(json!({ "ok": true, "user_id": user, "rooms_left": left }))
        }
        "user_set_admin" => {
            let user_id = users.user_id_for(name()?).map_err(|e| e.to_string())?;
            let admin = req
                .get("admin")
                .and_then(Value::as_bool)
                .ok_or_else(|| "`admin` (true or false) is required".to_owned())?;
            users.set_admin(&user_id, admin).await.map_err(|e| e.to_string())?;
            Ok(json!({ "ok": true, "user_id": user_id, "admin": admin }))
        }
        "user_list" => {
            let list: Vec<Value> = users
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(id, a)| json!({ "user_id": id, "admin": a.admin, "deactivated": a.deactivated, "created_ms": a.created_ms }))
                .collect();
            Ok(json!({ "ok": true, "users": list }))
        }
        other => Err(format!("unknown op {other}")),
    }
}

/// Makes a local user leave (or decline) every room, then deactivates the
/// account. The leaves are ordinary events, so they reach every other server
/// in those rooms through the federation queue. Returns how many rooms were left.
pub async fn deactivate_user(engine: &Engine, user: &ruma::UserId) -> Result<usize, String> {
    let devices: Vec<String> =
        engine.users.devices(user.as_str()).map_err(|e| e.to_string())?.into_iter().map(|(d, _)| d).collect();
    forget_device_keys(engine, user, &devices).await?;
    let left = leave_rooms(engine, user, None).await?;
    engine.users.deactivate(user).await.map_err(|e| e.to_string())?;
    tracing::info!(user_id = %user, rooms_left = left, "user deactivated");
    Ok(left)
}

/// Deletes the encryption keys of these devices of `user` and tells the servers
/// sharing a room with them (on deactivation before the leaves, while they
/// still share one).
pub async fn forget_device_keys(engine: &Engine, user: &ruma::UserId, devices: &[String]) -> Result<(), String> {
    let mut servers = std::collections::BTreeSet::new();
    for (room, m) in engine.rooms.rooms_of(user.as_str()).map_err(|e| e.to_string())? {
        if m.membership == "join" {
            servers.extend(engine.rooms.joined_servers_now(&room).unwrap_or_default());
        }
    }
    servers.remove(engine.server_name.as_str());
    let servers: Vec<String> = servers.into_iter().collect();
    for device in devices {
        if engine.e2ee.remove_device(user.as_str(), device).await.map_err(|e| e.to_string())? && !servers.is_empty() {
            let stream_id = engine.stream.current();
            let edu = serde_json::json!({ "edu_type": "m.device_list_update", "content": {
                "user_id": user, "device_id": device, "stream_id": stream_id, "prev_id": [], "deleted": true,
            }});
            engine.rooms.queue_edu(&servers, &edu).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// What a room shutdown did.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// The local users made to leave.
    pub kicked_users: Vec<String>,
    /// The local aliases removed.
    pub local_aliases: Vec<String>,
}

/// Shuts a room down here: marks it so no local user can join or be invited
/// (and remote servers cannot join through us), takes it out of the public
/// directory, removes its local aliases, and makes every local member leave;
/// those leaves federate. Says which users were removed.
pub async fn shutdown_room(engine: &Engine, room: &ruma::RoomId) -> Result<Shutdown, String> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    engine.rooms.mark_shutdown(room, now).await.map_err(|e| e.to_string())?;
    engine.directory.set_public(room.as_str(), false).await.map_err(|e| e.to_string())?;
    let mut done = Shutdown::default();
    for alias in engine.directory.aliases_of(room.as_str()).map_err(|e| e.to_string())? {
        engine.directory.remove(&alias).await.map_err(|e| e.to_string())?;
        done.local_aliases.push(alias);
    }
    let members: Vec<ruma::OwnedUserId> = match engine.rooms.current_state(room) {
        Ok(state) => state
            .iter()
            .filter(|p| p.kind == ruma::events::TimelineEventType::RoomMember)
            .filter(|p| matches!(p.content_value()["membership"].as_str(), Some("join" | "invite" | "knock")))
            .filter_map(|p| p.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()))
            .filter(|u| u.server_name() == engine.server_name)
            .collect(),
        Err(_) => Vec::new(),
    };
    for user in members {
        if leave_rooms(engine, &user, Some(room)).await? > 0 {
            done.kicked_users.push(user.to_string());
        }
    }
    tracing::info!(room_id = %room, users_removed = done.kicked_users.len(), "room shut down");
    Ok(done)
}

/// Sends `user`'s leave to `only` or to every room they are in, invited to or knocking on.
async fn leave_rooms(engine: &Engine, user: &ruma::UserId, only: Option<&ruma::RoomId>) -> Result<usize, String> {
    let mut left = 0;
    for (room, m) in engine.rooms.rooms_of(user.as_str()).map_err(|e| e.to_string())? {
        if only.is_some_and(|o| o != room.as_str()) || !matches!(m.membership.as_str(), "join" | "invite" | "knock") {
            continue;
        }
        let leave = myelin_engine::rooms::NewEvent::state(
            ruma::events::TimelineEventType::RoomMember,
            user.as_str(),
            json!({ "membership": "leave" }),
        );
        match engine.rooms.send(user, &room, leave).await {
            Ok(_) => left += 1,
            Err(e) => tracing::warn!(room_id = %room, user_id = %user, error = %e, "could not leave a room"),
        }
    }
    Ok(left)
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
