//! Push notifications through Sygnal, the reference push gateway (issue #20
//! §3): `myelin serve` → Sygnal 0.15.1's webpush pushkin → a Web Push
//! endpoint on loopback that decrypts what reaches the "phone"
//! (`tests/interop/sygnal_push.py`). Sygnal's source is vendored
//! (`tests/interop/vendor/sygnal-0.15.1`) and installed by
//! `tests/interop/setup.sh` (run by `make test`) into a cached venv.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{free_port, http, myelin_bin};

fn sygnal_python() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
    let python = cache.join("myelin/venv-sygnal-0.15.1/bin/python");
    assert!(python.is_file(), "{} is missing: run tests/interop/setup.sh (make test does)", python.display());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_a_web_push_endpoint_through_sygnal_and_its_rejections_remove_pushers() {
    let python = sygnal_python();
    let cwd = tempfile::tempdir().unwrap();
    let (client, federation) = (free_port(), free_port());
    let mut server = Command::new(myelin_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
        .env("MYELIN_REGISTRATION__ENABLED", "true")
        // Sygnal listens on loopback: the outbound policy refuses it otherwise.
        .env("MYELIN_FEDERATION__IP_RANGE_ALLOW", r#"["127.0.0.0/8"]"#)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sygnal_push.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(format!("http://127.0.0.1:{client}")).output()
    })
    .await
    .unwrap()
    .unwrap();
    let _ = server.kill();
    let server_log = server.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = server_log.unwrap_or_default();
    assert!(out.status.success(), "Sygnal scenario failed:\n{stdout}\n{stderr}\nmyelin:\n{server_log}");
    assert!(stdout.contains("ok: alice's message reaches bob's push endpoint"), "{stdout}");
    assert!(stdout.contains("ok: Myelin removes the pusher Sygnal rejected; the other stays"), "{stdout}");
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
}
