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

/// Waits (up to 30 s) until the `myelin serve` child whose data directory is
/// `data_dir` has bound every listener: true once its admin socket answers a
/// ping (the server answers it only after all its listeners are bound, so a
/// port that another test took in between cannot pass for this server); false
/// if the child exits first, e.g. because a port `free_port` picked was taken.
pub async fn wait_serving(child: &mut Child, data_dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ping = serde_json::json!({ "op": "ping" });
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        // An answer can only come from this server's accept loop; a socket
        // bound by a start that then failed closes without one.
        if let Ok(Some(answer)) = myelin_api::admin::request(data_dir, &ping).await {
            assert_eq!(answer["ok"], true, "admin ping: {answer}");
            return true;
        }
        assert!(Instant::now() < deadline, "myelin serve did not start within 30 s");
        // 10 ms: crash_server reports restart times measured through this.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Synapse of `tests/interop/setup.sh`, configured in `dir` by
/// `tests/interop/synapse_config.py` (SQLite, loopback, server name
/// `localhost:FEDERATION_PORT`) and started; not yet waited for.
pub fn start_synapse(dir: &Path, client_port: u16, federation_port: u16) -> Killed {
    start_synapse_on(dir, client_port, federation_port, None)
}

/// [`start_synapse`] with its database in PostgreSQL (`host port user dbname`) when given.
pub fn start_synapse_on(dir: &Path, client_port: u16, federation_port: u16, postgres: Option<&str>) -> Killed {
    let python = venv_python("venv-synapse-1.163.2");
    let out = Command::new(&python)
        .env("SYNAPSE_POSTGRES", postgres.unwrap_or_default())
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

/// A PostgreSQL server of the test's own in `dir`, on `port` (loopback, trust
/// authentication, fsync off), with a database `synapse` owned by user
/// `synapse` in the C collation Synapse requires. The server binaries come
/// from the system package (`tests/interop/setup.sh` installs it). Run as
/// root, the server runs as the `postgres` user (it refuses root).
pub fn start_postgres(dir: &Path, port: u16) -> Killed {
    use std::os::unix::process::CommandExt;
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is missing: run tests/interop/setup.sh")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    bins.sort();
    let bin = bins.pop().expect("no PostgreSQL server binaries in /usr/lib/postgresql");
    let id = |args: &[&str]| -> u32 {
        let out = Command::new("id").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let root = id(&["-u"]) == 0;
    let (uid, gid) = if root { (id(&["-u", "postgres"]), id(&["-g", "postgres"])) } else { (id(&["-u"]), id(&["-g"])) };
    let data = dir.join("pg");
    std::fs::create_dir_all(&data).unwrap();
    if root {
        // The server's user must reach its directory through the test's temp dirs.
        let mut p = Some(dir);
        while let Some(d) = p.filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir()) {
            let _ = Command::new("chmod").arg("o+x").arg(d).status();
            p = d.parent();
        }
        assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().unwrap().success());
    }
    let as_server = |program: &str| {
        let mut c = Command::new(bin.join(program));
        c.uid(uid).gid(gid).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let init = as_server("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "synapse", "-E", "UTF8", "--locale=C"])
        .status();
    assert!(init.unwrap().success(), "initdb failed");
    let server = as_server("postgres")
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&data)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .spawn()
        .unwrap();
    let server = Killed(server);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin.join("pg_isready")).args(["-h", "127.0.0.1", "-p", &port.to_string()]).output();
        if ready.is_ok_and(|o| o.status.success()) {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let create = Command::new(bin.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "synapse", "-d", "postgres", "-c"])
        .arg("CREATE DATABASE synapse TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        .output()
        .unwrap();
    assert!(create.status.success(), "create database: {}", String::from_utf8_lossy(&create.stderr));
    server
}
