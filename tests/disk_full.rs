//! A full disk (issue #22 §5): the data directory on a small tmpfs made by
//! the test (mounted and always unmounted by it; needs root, as `make test`
//! runs in CI — without it the test says so and fails). Sends while the disk
//! fills get 507 with a Matrix error saying the storage is full, never a
//! crash; after space is freed and the
//! server restarted, every acknowledged event is there and new sends work.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{enc, free_port, http, http_with, myelin_bin};
use serde_json::json;

/// A tmpfs mount that is unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The server process, killed when dropped (also when an assertion fails).
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(data: &Path) -> (Serve, SocketAddr) {
    let (client, federation) = (free_port(), free_port());
    let child = Command::new(myelin_bin())
        .arg("serve")
        .env("MYELIN_DATA_DIR", data)
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
        .env("MYELIN_REGISTRATION__ENABLED", "true")
        .env("MYELIN_RATE_LIMIT__PER_SECOND", "0")
        .env("MYELIN_STORAGE__WAL_MB", "1")
        .env("MYELIN_STORAGE__CACHE_MB", "8")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (Serve(child), format!("127.0.0.1:{client}").parse().unwrap())
}

async fn healthy(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, Method::GET, "/health", None).await.status == StatusCode::OK
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_sends_with_an_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _mount = Mount::new(&mnt, "64m");
    let data = mnt.join("data");
    let (mut child, addr) = spawn(&data);
    assert!(healthy(addr).await, "server did not start on the tmpfs");
    let body = json!({ "username": "alice", "password": "pass-word-1", "auth": { "type": "m.login.dummy" } });
    let r = http(addr, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    let r =
        http_with(addr, Method::POST, "/_matrix/client/v3/createRoom", Some(b"{}"), &[("authorization", &auth)]).await;
    let room = r.json()["room_id"].as_str().unwrap().to_owned();

    // Ballast leaves about 3 MiB free.
    let ballast = mnt.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![7u8; 1 << 20];
        loop {
            let free = fs_free(&mnt);
            if free < 3 << 20 {
                break;
            }
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }
    let filler = "x".repeat(16 * 1024);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}", enc(&room));
        let body = json!({ "msgtype": "m.text", "body": format!("m{i} {filler}") });
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            http_with(addr, Method::PUT, &path, Some(body.to_string().as_bytes()), &[("authorization", &auth)]),
        )
        .await
        .expect("a send hung on the full disk");
        if r.status == StatusCode::OK {
            acked.push(r.json()["event_id"].as_str().unwrap().to_owned());
        } else {
            refused = Some((r.status, r.json()));
            break;
        }
    }
    let (status, err) = refused.expect("2,000 sends of 16 KiB fit into 3 MiB?");
    eprintln!("disk full after {} sends: {status} {err}", acked.len());
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{err}");
    assert!(err["error"].as_str().unwrap_or_default().contains("storage is full"), "not a clear error: {err}");
    assert!(err["retry_after_ms"].is_u64(), "{err}");
    assert!(child.0.try_wait().unwrap().is_none(), "the server exited on a full disk");
    // Reads still work.
    let r = http_with(addr, Method::GET, "/_matrix/client/v3/joined_rooms", None, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK);

    // Space freed, server restarted: everything acknowledged is there, sends work.
    std::fs::remove_file(&ballast).unwrap();
    drop(child);
    let (child, addr) = spawn(&data);
    assert!(healthy(addr).await, "server did not restart after space was freed");
    // Every page (the server caps `limit`), so that each acknowledged send is looked for.
    let mut ids: Vec<String> = Vec::new();
    let mut from = String::new();
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000{from}", enc(&room));
        let page = http_with(addr, Method::GET, &path, None, &[("authorization", &auth)]).await;
        assert_eq!(page.status, StatusCode::OK);
        let page = page.json();
        let chunk = page["chunk"].as_array().unwrap();
        ids.extend(chunk.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)));
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
            _ => break,
        }
    }
    assert!(ids.len() > acked.len(), "{} events read back for {} acknowledged sends", ids.len(), acked.len());
    for id in &acked {
        assert!(ids.contains(id), "acknowledged {id} lost on the full disk");
    }
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/after", enc(&room));
    let r = http_with(
        addr,
        Method::PUT,
        &path,
        Some(br#"{"msgtype":"m.text","body":"after"}"#),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    drop(child);
}

fn fs_free(path: &Path) -> u64 {
    let out = Command::new("df").arg("-B1").arg("--output=avail").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}
