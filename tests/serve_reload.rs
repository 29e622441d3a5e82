//! `systemctl reload` (SIGHUP) re-reads the configuration file of a running
//! `myelin serve` and applies `federation.allow` / `federation.deny`; a file
//! that no longer loads changes nothing and the server keeps serving.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{free_port, http, myelin_bin, procs::wait_serving};

fn write_config(path: &Path, data: &Path, client: u16, federation: u16, deny: &str) {
    let text = format!(
        "server_name = \"reload.test\"\ndata_dir = {data:?}\n[client]\nlisten = \"127.0.0.1:{client}\"\n\
         [federation]\nlisten = \"127.0.0.1:{federation}\"\n{deny}\n"
    );
    std::fs::write(path, text).unwrap();
}

fn listed(config: &Path) -> String {
    let out = Command::new(myelin_bin())
        .args(["admin", "federation", "list", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hangup(pid: u32) {
    assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_applies_the_federation_lists_of_the_file_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = (dir.path().join("myelin.toml"), dir.path().join("data"));
    // Fresh ports on each try: a start loses a race for a port `free_port`
    // picked when another test binds it first.
    let mut started = None;
    for _ in 0..3 {
        let (client, federation) = (free_port(), free_port());
        write_config(&config, &data, client, federation, "deny = [\"first.example\"]");
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(myelin_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        if wait_serving(&mut child, &data).await {
            started = Some((child, client, federation));
            break;
        }
        let why = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        assert!(why.contains("cannot listen"), "myelin serve exited early: {why}");
    }
    let (mut child, client, federation) = started.expect("myelin serve found its ports taken three times");
    let addr = format!("127.0.0.1:{client}").parse().unwrap();
    assert!(listed(&config).contains("first.example"));

    // The operator edits the file and reloads.
    write_config(&config, &data, client, federation, "deny = [\"second.example\"]\nallow = []");
    hangup(child.id());
    until("the new deny list", || {
        let now = listed(&config);
        now.contains("second.example") && !now.contains("first.example")
    })
    .await;
    // Still the running server answering (an offline `admin` would read the file itself).
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped the server");

    // A file that no longer loads: the server keeps its lists and keeps serving.
    std::fs::write(&config, "server_name = [oops").unwrap();
    hangup(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped the server");
    assert_eq!(http(addr, Method::GET, "/health", None).await.status, StatusCode::OK);
    write_config(&config, &data, client, federation, "");
    let now = listed(&config);
    assert!(now.contains("second.example"), "a broken file changed the lists: {now}");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
