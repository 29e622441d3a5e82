//! The `myelin` binary as an operator runs it: `myelin serve` in an empty
//! folder, signals, bad configuration, a second server on the same data,
//! backup while serving and restore.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use http::{Method, StatusCode};
use myelin_suite::{free_port, http, http_with, https, myelin_bin, procs::wait_serving};

struct Proc {
    child: Child,
    client: SocketAddr,
    federation: SocketAddr,
    /// Where the child's stderr goes (kept for an early exit's reason).
    stderr: tempfile::NamedTempFile,
}

/// Starts `myelin serve` in `cwd` and waits until it answers. A start that
/// fails because a port picked by `free_port` was taken in between (another
/// test bound it first) is retried on fresh ports.
async fn start_serve(cwd: &Path, extra_env: &[(&str, String)]) -> Proc {
    for _ in 0..3 {
        let mut p = spawn_serve(cwd, extra_env);
        let data_dir = extra_env
            .iter()
            .find(|(k, _)| *k == "MYELIN_DATA_DIR")
            .map_or_else(|| cwd.join("myelin-data"), |(_, v)| PathBuf::from(v));
        if wait_ready(&mut p, &data_dir).await {
            return p;
        }
        let why = std::fs::read_to_string(p.stderr.path()).unwrap_or_default();
        assert!(why.contains("cannot listen"), "myelin serve exited early: {why}");
    }
    panic!("myelin serve found its ports taken three times");
}

fn spawn_serve(cwd: &Path, extra_env: &[(&str, String)]) -> Proc {
    let (client, federation) = (free_port(), free_port());
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(myelin_bin());
    cmd.arg("serve")
        .current_dir(cwd)
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr.reopen().unwrap());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        client: format!("127.0.0.1:{client}").parse().unwrap(),
        federation: format!("127.0.0.1:{federation}").parse().unwrap(),
        stderr,
    }
}

/// Waits until the server has bound its listeners and answers `/health`
/// (true) or exits (false).
async fn wait_ready(p: &mut Proc, data_dir: &Path) -> bool {
    if !wait_serving(&mut p.child, data_dir).await {
        return false;
    }
    assert_eq!(http(p.client, Method::GET, "/health", None).await.status, StatusCode::OK);
    true
}

fn sigterm(p: &Proc) {
    let status = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(p: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = p.child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Verifies the self-signature of a key document with ruma and, independently, with ring.
fn assert_self_signed(doc: &serde_json::Value, server_name: &str) -> String {
    let object: ruma::CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
    let verify_keys = doc["verify_keys"].as_object().unwrap();
    assert_eq!(verify_keys.len(), 1);
    let (key_id, key) = verify_keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"));
    let key_b64 = key["key"].as_str().unwrap();

    let mut set = ruma::signatures::PublicKeySet::new();
    set.insert(key_id.clone(), ruma::serde::Base64::parse(key_b64).unwrap());
    let mut map = ruma::signatures::PublicKeyMap::new();
    map.insert(server_name.to_owned(), set);
    ruma::signatures::verify_json(&map, &object).expect("ruma rejects the self-signature");

    // The same check by hand: canonical JSON without `signatures`, ed25519 via ring.
    let mut unsigned = object.clone();
    unsigned.remove("signatures");
    unsigned.remove("unsigned");
    let canonical = ruma::CanonicalJsonValue::Object(unsigned).to_string();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let sig = b64.decode(doc["signatures"][server_name][key_id].as_str().unwrap()).unwrap();
    let public = b64.decode(key_b64).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(canonical.as_bytes(), &sig)
        .expect("ring rejects the self-signature");
    key_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_in_an_empty_folder_answers_and_stops_cleanly_on_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    let mut p = start_serve(cwd.path(), &[]).await;

    let r = http(p.client, Method::GET, "/_matrix/client/versions", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["versions"].as_array().unwrap().iter().any(|v| v == "v1.1"));

    let r = https(p.federation, Method::GET, "/_matrix/key/v2/server", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(doc["server_name"], "localhost");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(doc["valid_until_ts"].as_u64().unwrap() > now_ms + 3_600_000, "key must stay valid for a while");
    let key_id = assert_self_signed(&doc, "localhost");

    let r = https(p.federation, Method::GET, "/_matrix/federation/v1/version", None).await;
    assert_eq!(r.json()["server"]["name"], "Myelin");
    let r =
        https(p.federation, Method::POST, "/_matrix/key/v2/query", Some(br#"{"server_keys":{"localhost":{}}}"#)).await;
    assert_eq!(r.json()["server_keys"][0]["verify_keys"][&key_id]["key"], doc["verify_keys"][&key_id]["key"]);

    assert!(cwd.path().join("myelin-data/db/CURRENT").is_file(), "data goes to ./myelin-data by default");
    sigterm(&p);
    let status = wait_exit(&mut p, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");

    // The key survives a restart: same id, same public key.
    let mut p = start_serve(cwd.path(), &[]).await;
    let again = https(p.federation, Method::GET, "/_matrix/key/v2/server", None).await.json();
    assert_eq!(again["verify_keys"], doc["verify_keys"]);
    sigterm(&p);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[client]\nlisten = \"127.0.0.1:notaport\"\n", "client.listen"),
        ("[federation]\nverify_tls = \"yes\"\n", "federation.verify_tls"),
        ("[federaton]\nenabled = true\n", "federaton"),
        ("[federation]\nip_range_allow = [\"10.0.0.0/33\"]\n", "federation.ip_range_allow"),
    ];
    for (text, key) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out =
            Command::new(myelin_bin()).args(["serve", "--config"]).arg(&file).current_dir(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "case {text:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr}");
        assert!(stderr.contains(key), "{stderr} does not name {key}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = Command::new(myelin_bin())
        .arg("serve")
        .env("MYELIN_FEDERATION__LISTEN", "not-an-address")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("federation.listen"));
    let out = Command::new(myelin_bin())
        .arg("serve")
        .env("MYELIN_FEDERATION__IP_RANGE_DENY", r#"["10.0.0.0/8", "not-a-range"]"#)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("federation.ip_range_deny") && stderr.contains("not-a-range"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused_with_exit_2() {
    let cwd = tempfile::tempdir().unwrap();
    let mut first = start_serve(cwd.path(), &[]).await;
    let out = Command::new(myelin_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The first one is unharmed.
    assert_eq!(http(first.client, Method::GET, "/health", None).await.status, StatusCode::OK);
    sigterm(&first);
    assert_eq!(wait_exit(&mut first, Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_then_restore_keeps_identity() {
    let cwd = tempfile::tempdir().unwrap();
    let mut p = start_serve(cwd.path(), &[]).await;
    let doc = https(p.federation, Method::GET, "/_matrix/key/v2/server", None).await.json();

    let backup_dir = cwd.path().join("backups/one");
    let out = Command::new(myelin_bin()).arg("backup").arg(&backup_dir).current_dir(cwd.path()).output().unwrap();
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(backup_dir.join("db/CURRENT").is_file());
    assert!(backup_dir.join("keys/signing.key").is_file());
    // The server kept serving throughout.
    assert_eq!(http(p.client, Method::GET, "/health", None).await.status, StatusCode::OK);
    // A backup never overwrites.
    let again = Command::new(myelin_bin()).arg("backup").arg(&backup_dir).current_dir(cwd.path()).output().unwrap();
    assert!(!again.status.success());
    sigterm(&p);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(20)).code(), Some(0));

    // Restore into a fresh data dir and start from it.
    let other = tempfile::tempdir().unwrap();
    let data = other.path().join("restored");
    let out =
        Command::new(myelin_bin()).arg("restore").arg(&backup_dir).env("MYELIN_DATA_DIR", &data).output().unwrap();
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut q = start_serve(other.path(), &[("MYELIN_DATA_DIR", data.display().to_string())]).await;
    let restored = https(q.federation, Method::GET, "/_matrix/key/v2/server", None).await.json();
    assert_eq!(restored["verify_keys"], doc["verify_keys"], "restored server must keep its signing key");
    // Restoring over existing data is refused.
    let out =
        Command::new(myelin_bin()).arg("restore").arg(&backup_dir).env("MYELIN_DATA_DIR", &data).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    sigterm(&q);
    assert_eq!(wait_exit(&mut q, Duration::from_secs(20)).code(), Some(0));
}

fn admin(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(myelin_bin())
        .arg("admin")
        .arg("user")
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn login_status(p: &Proc, user: &str, password: &str) -> StatusCode {
    let body = serde_json::json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password });
    http(p.client, Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes())).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_user_commands_work_offline_and_against_a_running_server() {
    let cwd = tempfile::tempdir().unwrap();
    // Offline: the CLI opens the data directory itself.
    let out = admin(cwd.path(), &["create", "alice", "--password", "alice-pw", "--admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = admin(cwd.path(), &["create", "alice", "--password", "again"]);
    assert_eq!(out.status.code(), Some(2), "a taken name is refused");

    let mut p = start_serve(cwd.path(), &[]).await;
    assert_eq!(login_status(&p, "alice", "alice-pw").await, StatusCode::OK);

    // Online: through the admin socket while the server holds the database.
    let out = admin(cwd.path(), &["create", "bob"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let generated = printed.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(printed.starts_with("@bob:localhost password: ") && generated.len() == 32, "{printed}");
    assert_eq!(login_status(&p, "bob", &generated).await, StatusCode::OK);

    let out = admin(cwd.path(), &["reset-password", "bob", "--password", "new-pw"]);
    assert!(out.status.success());
    assert_eq!(login_status(&p, "bob", &generated).await, StatusCode::FORBIDDEN);
    assert_eq!(login_status(&p, "bob", "new-pw").await, StatusCode::OK);

    let out = admin(cwd.path(), &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("@alice:localhost admin") && listed.contains("@bob:localhost"), "{listed}");
    sigterm(&p);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_media_delete_removes_an_upload_from_a_running_server() {
    let cwd = tempfile::tempdir().unwrap();
    let mut p = start_serve(cwd.path(), &[("MYELIN_REGISTRATION__ENABLED", "true".into())]).await;
    let body = serde_json::json!({ "username": "u", "password": "pw-pw-pw-1", "auth": { "type": "m.login.dummy" } });
    let token = http(p.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes()))
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {token}");
    let up = myelin_suite::http_with(
        p.client,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some(b"bytes"),
        &[("authorization", &auth)],
    )
    .await;
    let mxc = up.json()["content_uri"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v1/media/download/{}", mxc.strip_prefix("mxc://").unwrap());
    assert_eq!(
        myelin_suite::http_with(p.client, Method::GET, &path, None, &[("authorization", &auth)]).await.status,
        StatusCode::OK
    );
    let out =
        Command::new(myelin_bin()).args(["admin", "media", "delete", &mxc]).current_dir(cwd.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = myelin_suite::http_with(p.client, Method::GET, &path, None, &[("authorization", &auth)]).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    let out = Command::new(myelin_bin())
        .args(["admin", "media", "purge-remote", "--older-than", "1d"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "purged 0 remote media items");
    sigterm(&p);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(20)).code(), Some(0));
}

/// One authenticated client request to a `myelin serve` process.
async fn call(p: &Proc, token: &str, method: Method, path: &str, body: serde_json::Value) -> serde_json::Value {
    let auth = format!("Bearer {token}");
    let body = body.to_string();
    let r = http_with(p.client, method, path, Some(body.as_bytes()), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Every message body of `room`, oldest first, read back through `/messages`.
async fn room_bodies(p: &Proc, token: &str, room: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from = String::new();
    loop {
        let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100{from}");
        let page = call(p, token, Method::GET, &path, serde_json::json!({})).await;
        for e in page["chunk"].as_array().unwrap() {
            if e["type"] == "m.room.message" {
                bodies.push(e["content"]["body"].as_str().unwrap().to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => from = format!("&from={end}"),
            _ => break,
        }
    }
    bodies.reverse();
    bodies
}

/// Acknowledged writes survive `kill -9`, twice: the second time on a server
/// whose write-ahead log is a reused, pre-sized file holding a previous run's
/// records after the new ones (the default `storage.wal_mb`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_minus_9() {
    let cwd = tempfile::tempdir().unwrap();
    let env = [("MYELIN_REGISTRATION__ENABLED", "true".to_owned()), ("MYELIN_RATE_LIMIT__PER_SECOND", "0".to_owned())];
    let mut p = start_serve(cwd.path(), &env).await;
    let wal = cwd.path().join("myelin-data/db");
    let newest_log = || {
        std::fs::read_dir(&wal)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()).map(|n| (n, e.metadata().unwrap().len()))
            })
            .max()
            .unwrap()
            .1
    };
    assert!(newest_log() >= 64 << 20, "the live WAL is pre-sized to storage.wal_mb");

    let body =
        serde_json::json!({ "username": "keeper", "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
    let r = http(p.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let room = call(&p, &token, Method::POST, "/_matrix/client/v3/createRoom", serde_json::json!({})).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sent = Vec::new();
    for round in 0..2 {
        for i in 0..150 {
            let text = format!("round {round} line {i}");
            let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r{round}t{i}");
            call(&p, &token, Method::PUT, &path, serde_json::json!({ "msgtype": "m.text", "body": text })).await;
            sent.push(text);
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        p = start_serve(cwd.path(), &env).await;
        assert_eq!(room_bodies(&p, &token, &room).await, sent, "after kill -9 number {}", round + 1);
    }
    sigterm(&p);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(20)).code(), Some(0));
}

/// Certificate checks turned off (a lab switch) are said at start, as a
/// warning an operator sees in the log; with them on nothing is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tls_off_is_warned_about_at_start() {
    for (verify, warned) in [("false", true), ("true", false)] {
        let cwd = tempfile::tempdir().unwrap();
        let mut p = start_serve(cwd.path(), &[("MYELIN_FEDERATION__VERIFY_TLS", verify.to_owned())]).await;
        sigterm(&p);
        assert_eq!(wait_exit(&mut p, Duration::from_secs(20)).code(), Some(0));
        let log = std::fs::read_to_string(p.stderr.path()).unwrap();
        let said = log.lines().any(|l| l.contains("WARN") && l.contains("verify_tls is false"));
        assert_eq!(said, warned, "verify_tls = {verify}: {log}");
    }
}
