//! Real appservice frameworks drive the real `myelin` binary through the
//! Application Service API: PyPI `mautrix` (the framework of the mautrix
//! bridges) and npm `matrix-appservice-bridge` (the Node framework), both
//! installed by `tests/interop/setup.sh` (run by `make test`).
//!
//! Each bridge script runs twice on the same port. The first run registers
//! the bot and a puppet, masquerades, joins alice's room, receives her
//! message, typing and receipt, answers an alias query by creating the room,
//! then closes its HTTP server while alice sends messages and exits. The
//! second run (a new process) must get every missed message in order, once.
//! The mautrix scenario also runs against Synapse 1.163.2 (PyPI), so the two
//! homeservers are seen side by side.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use http::{Method, StatusCode};
use myelin_suite::{
    free_port, http_with, myelin_bin,
    procs::{Killed, cache_dir, venv_python, wait_http},
};
use serde_json::json;

/// Messages alice sends while the bridge is down.
const MISSED: usize = 20;

fn mab_dir() -> PathBuf {
    let dir = cache_dir().join("node-mab-10.3.3");
    assert!(
        dir.join("ok").is_file() && dir.join("node_modules/matrix-appservice-bridge").is_dir(),
        "{} is missing: run tests/interop/setup.sh (make test does)",
        dir.display()
    );
    dir
}

/// A registration file as bridges generate it; `id` is also the namespace prefix.
fn registration(id: &str, server: &str, as_port: u16) -> String {
    format!(
        "id: {id}\n\
         url: 'http://127.0.0.1:{as_port}'\n\
         as_token: {id}-as-token-0123456789\n\
         hs_token: {id}-hs-token-0123456789\n\
         sender_localpart: {id}bot\n\
         namespaces:\n  \
           users:\n  - regex: '@{id}_.*:{server_re}'\n    exclusive: true\n  \
           aliases:\n  - regex: '#{id}_.*:{server_re}'\n    exclusive: true\n  \
           rooms: []\n\
         rate_limited: false\n\
         receive_ephemeral: true\n\
         de.sorunome.msc2409.push_ephemeral: true\n\
         org.matrix.msc3202: false\n",
        server_re = server.replace('.', "\\.")
    )
}

/// Registers a normal user with open registration (user-interactive auth,
/// the dummy stage); its access token.
async fn register_user(addr: SocketAddr, name: &str) -> String {
    let mut body =
        json!({ "username": name, "password": format!("{name}-password-1"), "auth": { "type": "m.login.dummy" } });
    for _ in 0..2 {
        let r =
            http_with(addr, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes()), &[]).await;
        if r.status == StatusCode::OK {
            return r.json()["access_token"].as_str().unwrap().to_owned();
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "registering {name}: {}", String::from_utf8_lossy(&r.body));
        body["auth"]["session"] = r.json()["session"].clone();
    }
    panic!("could not register {name}");
}

/// Runs one phase of a bridge script; its stdout (asserted to end with `N passed, 0 failed`).
async fn run_phase(program: PathBuf, args: Vec<String>, cwd: &Path, hs_log: &Path, what: &str) -> String {
    let cwd = cwd.to_owned();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program).args(args).current_dir(cwd).stdin(Stdio::null()).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail =
        |text: &str| text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let hs = std::fs::read_to_string(hs_log).unwrap_or_default();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n--- stderr (tail) ---\n{}\n--- homeserver log (tail) ---\n{}",
        tail(&stderr),
        tail(&hs)
    );
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{what}:\n{stdout}");
    eprintln!("{what}: {:.1} s\n{stdout}", started.elapsed().as_secs_f64());
    stdout
}

/// A homeserver under test: its client URL and server name.
struct Homeserver {
    addr: SocketAddr,
    log: PathBuf,
    server_name: String,
    _process: Killed,
    _dir: tempfile::TempDir,
}

fn spawn_myelin(registration_path: &Path, dir: tempfile::TempDir) -> Homeserver {
    let (client, federation) = (free_port(), free_port());
    let data = dir.path().join("myelin");
    std::fs::create_dir_all(&data).unwrap();
    let log_path = dir.path().join("myelin.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let process = Killed(
        Command::new(myelin_bin())
            .arg("serve")
            .current_dir(&data)
            .env("MYELIN_SERVER_NAME", "localhost")
            .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{client}"))
            .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{federation}"))
            .env("MYELIN_REGISTRATION__ENABLED", "true")
            .env("MYELIN_APPSERVICE__REGISTRATIONS", format!("[\"{}\"]", registration_path.display()))
            .env("RUST_LOG", "warn,myelin_engine::appservice=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    Homeserver {
        addr: format!("127.0.0.1:{client}").parse().unwrap(),
        log: log_path,
        server_name: "localhost".into(),
        _process: process,
        _dir: dir,
    }
}

fn spawn_synapse(registration_path: &Path, dir: tempfile::TempDir) -> Homeserver {
    let python = venv_python("venv-synapse-1.163.2");
    let (client, federation) = (free_port(), free_port());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/synapse_config.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(dir.path())
        .arg(client.to_string())
        .arg(federation.to_string())
        .arg(registration_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "synapse config: {}", String::from_utf8_lossy(&out.stderr));
    let server_name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let log_path = dir.path().join("homeserver.log");
    let log = std::fs::File::create(dir.path().join("synapse.stderr")).unwrap();
    let process = Killed(
        Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.path().join("hs.yaml"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    Homeserver {
        addr: format!("127.0.0.1:{client}").parse().unwrap(),
        log: log_path,
        server_name,
        _process: process,
        _dir: dir,
    }
}

enum Framework {
    Mautrix,
    Mab,
}

/// The whole scenario for one framework against one homeserver; the two
/// phases' outputs.
async fn scenario(framework: Framework, synapse: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let as_port = free_port();
    let id = match framework {
        Framework::Mautrix => "mautrix",
        Framework::Mab => "mab",
    };
    // Synapse's server name carries its federation port, known only once its
    // config is written: the regexes are loose about the port there.
    let reg_path = dir.path().join("registration.yaml");
    let server_for_regex = if synapse { "localhost(:[0-9]+)?".to_owned() } else { "localhost".to_owned() };
    let yaml = registration(id, "SERVER", as_port).replace("SERVER", &server_for_regex);
    std::fs::write(&reg_path, yaml).unwrap();
    let work = dir.path().join("bridge");
    std::fs::create_dir_all(&work).unwrap();
    let hs = if synapse { spawn_synapse(&reg_path, dir) } else { spawn_myelin(&reg_path, dir) };
    let health = if synapse { "/_matrix/client/versions" } else { "/health" };
    wait_http(hs.addr, health, if synapse { "synapse" } else { "myelin" }).await;
    let alice = register_user(hs.addr, "alice").await;
    let state = work.join("state.json");
    let hs_url = format!("http://{}", hs.addr);
    let (program, script) = match framework {
        Framework::Mautrix => (
            venv_python("venv-mautrix-0.21.1"),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/mautrix_bridge.py").to_owned(),
        ),
        Framework::Mab => {
            mab_dir();
            (PathBuf::from("node"), concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/mab_bridge.mjs").to_owned())
        }
    };
    let args = |phase: &str| {
        let mut a = vec![
            script.clone(),
            phase.to_owned(),
            hs_url.clone(),
            hs.server_name.clone(),
            reg_path.display().to_string(),
            alice.clone(),
            state.display().to_string(),
            MISSED.to_string(),
        ];
        if matches!(framework, Framework::Mab) {
            a.push(mab_dir().display().to_string());
        }
        a
    };
    let on = if synapse { "synapse" } else { "myelin" };
    let first = run_phase(program.clone(), args("first"), &work, &hs.log, &format!("{id} on {on}, first run")).await;
    let second = run_phase(program, args("second"), &work, &hs.log, &format!("{id} on {on}, second run")).await;
    drop(hs);
    (first, second)
}

fn assert_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(out.lines().any(|l| l.starts_with(&format!("ok: {line}"))), "missing `ok: {line}` in:\n{out}");
    }
}

const FIRST: &[&str] = &[
    "the bot is registered and whoami names it",
    "the homeserver pings the bridge",
    "the puppet is registered and masquerades",
    "the puppet's invite reaches the bridge",
    "the puppet joins alice's room",
    "the puppet's message is sent as the puppet",
    "alice's message reaches the bridge",
    "alice's typing reaches the bridge",
    "alice's read receipt of the puppet's message reaches the bridge",
    "the alias resolves to the room the bridge created",
    "alice sends 20 messages while the bridge is down",
];

/// What only the mautrix scenario does.
const MAUTRIX_ONLY: &[&str] = &[
    "the puppet sets its display name",
    "the puppet sets its presence",
    "the puppet uploads an avatar and sets it",
    "/login offers m.login.application_service",
    "the bridge logs the puppet in with the as_token on its device",
    "whoami with that token names the device",
    "the invite carries the room's stripped state",
    "the join's prev_content says it was an invite",
    "the bot, not in the room, lists the members of a room its puppet is in",
    "timestamp massaging (?ts=) sets origin_server_ts",
    "alice joins the portal room by its alias",
];

const SECOND: &[&str] = &[
    "every missed message arrives, in order",
    "no event arrives twice",
    "nothing delivered before the restart is delivered again",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mautrix_bridge_runs_against_myelin() {
    let (first, second) = scenario(Framework::Mautrix, false).await;
    assert_lines(&first, FIRST);
    assert_lines(&first, MAUTRIX_ONLY);
    assert_lines(&second, SECOND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_appservice_bridge_runs_against_myelin() {
    let (first, second) = scenario(Framework::Mab, false).await;
    assert_lines(&first, FIRST);
    assert_lines(&second, SECOND);
}

/// The same mautrix scenario against Synapse: what passes here and fails on
/// Myelin (or the other way round) is a difference to look at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_mautrix_bridge_runs_against_synapse() {
    let (first, second) = scenario(Framework::Mautrix, true).await;
    assert_lines(&first, FIRST);
    assert_lines(&first, MAUTRIX_ONLY);
    assert_lines(&second, SECOND);
}
