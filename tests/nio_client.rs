//! A real client library (matrix-nio, from PyPI) chats through `myelin serve`:
//! register, log in, create a DM, invite, join, send, receive through sync.
//! The venv is installed by `tests/interop/setup.sh` (run by `make test`).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{free_port, http, myelin_bin};

fn nio_python() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
    let python = cache.join("myelin/venv-nio-0.25.2/bin/python");
    assert!(python.is_file(), "{} is missing: run tests/interop/setup.sh (make test does)", python.display());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_can_register_create_a_dm_and_chat() {
    let python = nio_python();
    let cwd = tempfile::tempdir().unwrap();
    let (client, federation) = (free_port(), free_port());
    let mut server = Command::new(myelin_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
        .env("MYELIN_REGISTRATION__ENABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{client}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, Method::GET, "/health", None).await.status == StatusCode::OK
        {
            break;
        }
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/nio_chat.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(format!("http://127.0.0.1:{client}")).arg("localhost").output()
    })
    .await
    .unwrap()
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "matrix-nio run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: bob receives alice's message through sync"), "{stdout}");
    assert!(stdout.contains("ok: bob downloads the image byte for byte"), "{stdout}");
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
}
