//! The admin socket answers only the server's own user (and root): its file is
//! 0600, and a peer of another uid is refused even if it could connect (issue
//! #25: who may reach which listener, SECURITY.md "Threat model").

use std::{os::unix::fs::PermissionsExt, os::unix::process::CommandExt, process::Command};

use myelin_suite::TestServer;
use serde_json::json;

/// Connects to `path` as uid/gid 65534 (nobody), sends a ping, prints what came back.
fn ping_as_nobody(path: &std::path::Path) -> std::process::Output {
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        s.settimeout(5)\n\
        s.connect(sys.argv[1])\n\
        s.sendall(b'{\"op\":\"ping\"}\\n')\n\
        print(s.recv(4096).decode())\n";
    Command::new("python3").args(["-c", script]).arg(path).uid(65534).gid(65534).output().expect("python3 runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_is_private_and_refuses_other_users_even_when_they_can_connect() {
    let s = TestServer::start_with("adminsock.test", |_| {}).await;
    let data_dir = s.engine.config.data_dir.clone();
    let path = myelin_api::admin::socket_path(&data_dir);
    // The socket is served by a task the start spawns: wait for it.
    for _ in 0..250 {
        if myelin_api::admin::request(&data_dir, &json!({ "op": "ping" })).await.is_ok_and(|p| p.is_some()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mode = std::fs::metadata(&path).expect("the socket exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // Its owner is answered.
    let pong = myelin_api::admin::request(&data_dir, &json!({ "op": "ping" })).await.unwrap();
    assert!(pong.is_some_and(|p| p["ok"] == true), "the owner is answered");

    let uid = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1);
    if uid != 0 {
        // Only root can run a process as another user; CI runs as root.
        eprintln!("not root: the other-user half of this test needs root");
        s.stop().await;
        return;
    }
    // Open the way to the socket as a careless umask or the bind–chmod window would.
    for dir in [data_dir.parent().unwrap(), data_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = ping_as_nobody(&path);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(!answer.contains("\"ok\""), "another user was answered: {answer}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error") || answer.trim().is_empty(),
        "the connection was closed without an answer: {answer} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}
