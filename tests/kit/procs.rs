//! Third-party processes the interop tests start: where the project's setup
//! script installed them, and a child process killed when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};

/// `~/.cache/myelin` (or `$XDG_CACHE_HOME/myelin`): what `tests/interop/setup.sh` installs.
pub fn cache_dir() -> PathBuf {
    std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"))
        .join("myelin")
}

/// The Python of the virtualenv `name` (e.g. `venv-synapse-1.163.2`).
pub fn venv_python(name: &str) -> PathBuf {
    let python = cache_dir().join(name).join("bin/python");
    assert!(python.is_file(), "{} is missing: run tests/interop/setup.sh (make test does)", python.display());
    python
}

/// A child process, killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to 60 s) until `GET path` on `addr` answers 200.
pub async fn wait_http(addr: SocketAddr, path: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && crate::http(addr, Method::GET, path, None).await.status == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Synapse of `tests/interop/setup.sh`, configured in `dir` by
/// `tests/interop/synapse_config.py` (SQLite, loopback, server name
/// `localhost:FEDERATION_PORT`) and started; not yet waited for.
pub fn start_synapse(dir: &Path, client_port: u16, federation_port: u16) -> Killed {
    let python = venv_python("venv-synapse-1.163.2");
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/synapse_config.py"))
        .arg(dir)
        .arg(client_port.to_string())
        .arg(federation_port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "synapse config: {}", String::from_utf8_lossy(&out.stderr));
    Killed(
        Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.join("hs.yaml"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}
