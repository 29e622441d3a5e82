//! A real client library (matrix-nio, from PyPI) against `myelin serve`: everyday
//! chat (register, log in, create a DM, invite, join, send, receive through sync),
//! and end-to-end encryption with its own crypto stack (matrix-nio[e2e]: libolm
//! through python-olm), on one server and across two federating servers, each side
//! decrypting what the other encrypted. The venv is installed by
//! `tests/interop/setup.sh` (run by `make test`).

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{free_port, http, myelin_bin};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");

fn nio_python() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
    let python = cache.join("myelin/venv-nio-0.25.2/bin/python");
    assert!(python.is_file(), "{} is missing: run tests/interop/setup.sh (make test does)", python.display());
    python
}

/// A `myelin serve` of the built binary in a temp dir, killed on drop; its log
/// (warnings) is kept in the dir and shown when a scenario fails.
struct Served {
    child: Child,
    client: u16,
    /// The server name: `localhost`, or `127.0.0.1:PORT` when it federates.
    name: String,
    dir: tempfile::TempDir,
}

impl Served {
    /// Starts a server; a federating one is named after its federation port and
    /// reaches the others on loopback (self-signed TLS accepted). Clients talk
    /// plain HTTP to the client listener.
    async fn start(federating: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (client, federation) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("myelin.log")).unwrap();
        let mut cmd = Command::new(myelin_bin());
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
            .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
            .env("MYELIN_REGISTRATION__ENABLED", "true")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        let name = if federating {
            cmd.env("MYELIN_SERVER_NAME", format!("127.0.0.1:{federation}"))
                .env("MYELIN_FEDERATION__VERIFY_TLS", "false")
                .env("MYELIN_FEDERATION__IP_RANGE_ALLOW", r#"["127.0.0.0/8"]"#);
            format!("127.0.0.1:{federation}")
        } else {
            "localhost".to_owned()
        };
        let mut served = Served { child: cmd.spawn().unwrap(), client, name, dir };
        let addr = format!("127.0.0.1:{client}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http(addr, Method::GET, "/health", None).await.status == StatusCode::OK
            {
                return served;
            }
            let exited = matches!(served.child.try_wait(), Ok(Some(_)));
            assert!(!exited && Instant::now() < deadline, "server not ready:\n{}", served.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("myelin.log")).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/interop/{script}` with the nio venv's Python and `args`.
async fn run_nio(script: &str, args: Vec<String>) -> Output {
    let (python, script) = (nio_python(), format!("{SCRIPTS}/{script}"));
    tokio::task::spawn_blocking(move || Command::new(python).arg(script).args(args).output()).await.unwrap().unwrap()
}

/// Asserts the scenario script passed every check; shows its output and the
/// servers' logs otherwise.
fn assert_all_passed(out: &Output, servers: &[&Served]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: String = servers.iter().map(|s| format!("--- {} log:\n{}", s.name, s.log())).collect();
    assert!(out.status.success(), "matrix-nio run failed:\n{stdout}\n{stderr}\n{logs}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_can_register_create_a_dm_and_chat() {
    let server = Served::start(false).await;
    let out = run_nio("nio_chat.py", vec![server.url(), server.name.clone()]).await;
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "matrix-nio run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: bob receives alice's message through sync"), "{stdout}");
    assert!(stdout.contains("ok: bob downloads the image byte for byte"), "{stdout}");
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
}

/// matrix-nio[e2e] on one server (tests/interop/nio_e2e.py): an encrypted DM
/// decrypted both ways (served as m.room.encrypted, decrypted by olm to the
/// exact text), a second device of the recipient learnt from the device-list
/// change and decrypting the next message, and a new olm session after another
/// user's device claimed the recipient's one-time keys (nio 0.25.2 has no
/// fallback keys: the script's doc says what is checked instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_e2ee_decrypts_both_ways_on_one_server() {
    let server = Served::start(false).await;
    let out = run_nio("nio_e2e.py", vec![server.url(), server.name.clone()]).await;
    assert_all_passed(&out, &[&server]);
}

/// The same scenarios with alice on one Myelin and bob on another: keys queried
/// and claimed, room keys sent to bob's devices and his device-list change told
/// over federation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_e2ee_decrypts_both_ways_across_federating_servers() {
    let (a, b) = (Served::start(true).await, Served::start(true).await);
    let out = run_nio("nio_e2e.py", vec![a.url(), a.name.clone(), b.url(), b.name.clone()]).await;
    assert_all_passed(&out, &[&a, &b]);
}
