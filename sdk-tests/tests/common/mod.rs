//! Shared by the Element X tests: `myelin serve` and Synapse started from their
//! builds, and the SDK's client, sync and timeline helpers.
//!
//! Each check asserts what the SDK's own state shows: the room list and its order,
//! room states, timeline items, unread counts and decrypted text.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

pub use futures_util::{StreamExt, pin_mut};
pub use matrix_sdk::{
    Client, Room, RoomState,
    ruma::{
        OwnedRoomId, RoomId, UserId,
        api::client::{
            room::create_room,
            uiaa::{AuthData, Dummy},
        },
        assign,
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
    },
};
pub use matrix_sdk_ui::{
    room_list_service::filters::new_filter_non_left,
    sync_service::{State, SyncService},
    timeline::{RoomExt, Timeline},
};

/// A `myelin serve` on loopback, in a temporary data directory.
pub struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// The federation port, when the server federates (its name is then `127.0.0.1:PORT`).
    federation: Option<u16>,
}

pub fn myelin_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MYELIN_BIN") {
        return PathBuf::from(p);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.join("..").join("target").join("debug").join("myelin")
}

/// A loopback port that was free a moment ago, chosen at random below Linux's
/// ephemeral range (32768–60999): a port from that range can be taken by another
/// test's outgoing connection before the server binds it, and then the readiness
/// probe talks to the wrong socket (a CI run failed with "connection reset" that way).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, 0, None, true).await
    }

    /// A server that federates with others on loopback (self-signed TLS accepted).
    pub async fn start_federating() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, 0, Some(free_port()), true).await
    }

    /// Starts on `port`, or on a port the server picks when `port` is 0 (read back from
    /// its log); a restart passes its old port so the clients' homeserver URL stays. A
    /// start that loses its federation port to a parallel test's server is tried again
    /// on a fresh one, except for a restart.
    async fn start_in(dir: tempfile::TempDir, port: u16, federation: Option<u16>, retry: bool) -> Self {
        let mut federation = federation;
        for _ in 0..if retry { 5 } else { 1 } {
            let (mut child, listening) = Self::spawn(&dir, port, federation);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(bound) = listening.try_recv() {
                    return Server { child, port: bound, dir, federation };
                }
                if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            federation = federation.map(|_| free_port());
        }
        panic!("myelin serve did not start (see its log above)");
    }

    /// Spawns `myelin serve`; the receiver gets the client port once it listens.
    fn spawn(dir: &tempfile::TempDir, port: u16, federation: Option<u16>) -> (Child, std::sync::mpsc::Receiver<u16>) {
        let bin = myelin_bin();
        assert!(bin.exists(), "{} missing: run `cargo build --bins` in the workspace first", bin.display());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("MYELIN_DATA_DIR", dir.path().join("data"))
            .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{port}"))
            .env("MYELIN_REGISTRATION__ENABLED", "true")
            // `MYELIN_SDK_RUST_LOG` adds filters, e.g. `myelin_engine::sliding=debug`.
            .env(
                "RUST_LOG",
                format!("warn,myelin_api::server=info,{}", std::env::var("MYELIN_SDK_RUST_LOG").unwrap_or_default()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match federation {
            None => cmd
                .env("MYELIN_SERVER_NAME", "localhost")
                .env("MYELIN_FEDERATION__ENABLED", "false")
                .env("MYELIN_FEDERATION__LISTEN", "127.0.0.1:0"),
            Some(f) => cmd
                .env("MYELIN_SERVER_NAME", format!("127.0.0.1:{f}"))
                .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{f}"))
                .env("MYELIN_FEDERATION__VERIFY_TLS", "false")
                .env("MYELIN_FEDERATION__IP_RANGE_ALLOW", r#"["127.0.0.0/8"]"#),
        };
        let mut child = cmd.spawn().expect("myelin serve starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("client API listening")
                    && let Some(at) = line.find("127.0.0.1:")
                {
                    let digits: String = line[at + 10..].chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(p) = digits.parse() {
                        let _ = tx.send(p);
                    }
                    continue;
                }
                eprintln!("myelin: {line}");
            }
        });
        (child, rx)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL: the harshest restart) and starts it again on the same data.
    pub async fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, self.port, self.federation, false).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn client(server: &Server) -> Client {
    client_at(&server.url()).await
}

/// A client of the homeserver at `url` (Myelin or Synapse).
pub async fn client_at(url: &str) -> Client {
    Client::builder().homeserver_url(url).build().await.expect("client builds")
}

/// Registers `name` (open registration, `m.login.dummy`) with the client `c`, which
/// is then logged in (no sync running).
pub async fn register_with(c: Client, name: &str) -> Client {
    let request = assign!(matrix_sdk::ruma::api::client::account::register::v3::Request::new(), {
        username: Some(name.to_owned()),
        password: Some(format!("{name}-password")),
        auth: Some(AuthData::Dummy(Dummy::new())),
    });
    c.matrix_auth().register(request).await.expect("register");
    c
}

/// Registers `name` on a Myelin server.
pub async fn register(server: &Server, name: &str) -> Client {
    register_with(client(server).await, name).await
}

/// Logs `name` in on a new device, as Element X does (password login).
pub async fn login(server: &Server, name: &str) -> Client {
    login_at(&server.url(), name).await
}

/// Logs `name` in on a new device of the homeserver at `url`.
pub async fn login_at(url: &str, name: &str) -> Client {
    let c = client_at(url).await;
    c.matrix_auth()
        .login_username(name, &format!("{name}-password"))
        .initial_device_display_name("Element X test")
        .await
        .expect("password login");
    c
}

/// Element X's sync: the room list and encryption connections, restarted after an
/// error (an unknown `pos` after a server restart ends the service's syncs).
pub async fn start_sync(c: &Client) -> Arc<SyncService> {
    let service = Arc::new(SyncService::builder(c.clone()).build().await.expect("sync service"));
    service.start().await;
    let watched = service.clone();
    tokio::spawn(async move {
        let mut state = watched.state();
        while let Some(s) = state.next().await {
            if matches!(s, State::Error(_) | State::Terminated) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                watched.start().await;
            }
        }
    });
    service
}

/// Waits until `check` holds (the SDK applies sync answers in the background).
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room list as Element X shows it (the room-list service's entries, rooms not
/// left), kept up to date in the background.
pub async fn shown_rooms(service: &SyncService) -> Arc<std::sync::Mutex<Vec<OwnedRoomId>>> {
    let shown = Arc::new(std::sync::Mutex::new(Vec::new()));
    let all = service.room_list_service().all_rooms().await.expect("the all_rooms list");
    let out = shown.clone();
    tokio::spawn(async move {
        let (entries, controller) = all.entries_with_dynamic_adapters(100);
        controller.set_filter(Box::new(new_filter_non_left()));
        pin_mut!(entries);
        let mut list = eyeball_im::Vector::new();
        while let Some(diffs) = entries.next().await {
            for diff in diffs {
                diff.apply(&mut list);
            }
            let ids = list.iter().map(|r| r.room_id().to_owned()).collect();
            *out.lock().unwrap_or_else(|p| p.into_inner()) = ids;
        }
    });
    shown
}

pub fn snapshot(shown: &std::sync::Mutex<Vec<OwnedRoomId>>) -> Vec<OwnedRoomId> {
    shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub fn recency(c: &Client, room: &RoomId) -> u64 {
    c.get_room(room).and_then(|r| r.recency_stamp()).map(u64::from).unwrap_or(0)
}

/// The room ids the SDK knows, most recent first (the room list's order).
pub fn by_recency(c: &Client, rooms: &[OwnedRoomId]) -> Vec<OwnedRoomId> {
    let mut v: Vec<(u64, OwnedRoomId)> = rooms.iter().map(|r| (recency(c, r), r.clone())).collect();
    v.sort_by_key(|(stamp, _)| std::cmp::Reverse(*stamp));
    v.into_iter().map(|(_, r)| r).collect()
}

pub async fn texts(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|i| i.as_event())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

pub async fn wait_for_text(timeline: &Timeline, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if texts(timeline).await.iter().any(|t| t == text) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {text:?}; have {:?}", texts(timeline).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn create(c: &Client, name: &str) -> Room {
    c.create_room(assign!(create_room::v3::Request::new(), { name: Some(name.to_owned()) })).await.expect("create room")
}

pub async fn say(room: &Room, text: &str) {
    room.send(RoomMessageEventContent::text_plain(text)).await.expect("send");
}

/// Waits until `who` is joined to `room` as the SDK of `c` sees it (members are
/// lazy-loaded: the list is fetched once, then kept up by sync).
pub async fn wait_joined_member(c: &Client, room: &RoomId, who: &UserId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = c.get_room(room)
            && let Ok(Some(m)) = r.get_member(who).await
            && *m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join
        {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {who} to be joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the crypto store of `c` holds at least `n` devices of `who`, asking
/// the server (`/keys/query`) when it does not yet. Element X learns of a new member's
/// devices from its encryption connection, whose long-poll may only return 30 s
/// later; a message sent before then is encrypted for none of the member's devices.
/// A person does not type that fast after a join; a test does.
pub async fn wait_devices(c: &Client, who: &UserId, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known = c.encryption().get_user_devices(who).await.map(|d| d.devices().count()).unwrap_or(0);
        if known >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{:?} never learned of {n} device(s) of {who}", c.user_id());
        let _ = c.encryption().request_user_identity(who).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `creator` opens an encrypted DM with `invitee`, as Element X does, and `invitee`
/// accepts; returns the creator's room once each side's client knows the other's
/// devices (see [`wait_devices`]).
pub async fn encrypted_dm(creator: &Client, invitee: &Client) -> Room {
    let invitee_id = invitee.user_id().expect("logged in").to_owned();
    let encryption = InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults());
    let room = creator
        .create_room(assign!(create_room::v3::Request::new(), {
            invite: vec![invitee_id.clone()],
            is_direct: true,
            initial_state: vec![encryption.to_raw_any()],
        }))
        .await
        .expect("create the DM");
    let id = room.room_id().to_owned();
    eventually("the invite arrives", || invitee.get_room(&id).is_some_and(|r| r.state() == RoomState::Invited)).await;
    invitee.get_room(&id).expect("the invited room").join().await.expect("accept the invite");
    wait_joined_member(creator, &id, &invitee_id).await;
    wait_devices(creator, &invitee_id, 1).await;
    wait_devices(invitee, creator.user_id().expect("logged in"), 1).await;
    room
}

/// The decrypted texts of events that were encrypted (a message the SDK could not
/// decrypt is not a message item, so it is not among them).
pub async fn decrypted(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|i| i.as_event())
        .filter(|e| e.encryption_info().is_some())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

pub async fn wait_decrypted(timeline: &Timeline, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if decrypted(timeline).await.iter().any(|t| t == text) {
            return;
        }
        if Instant::now() >= deadline {
            let kinds: Vec<String> = timeline
                .items()
                .await
                .iter()
                .filter_map(|i| i.as_event())
                .map(|e| format!("{:?}", e.content()).chars().take(60).collect())
                .collect();
            panic!(
                "timed out waiting to decrypt {text:?}; decrypted {:?}, all {:?}; items {kinds:?}",
                decrypted(timeline).await,
                texts(timeline).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real Synapse (the interop venv of `tests/interop/setup.sh`), SQLite, on loopback.
pub struct Synapse {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Synapse {
    pub async fn start() -> Self {
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
        let python = cache.join("myelin/venv-synapse-1.163.2/bin/python");
        assert!(python.exists(), "{} missing: run tests/interop/setup.sh", python.display());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/synapse_config.py");
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, fed) = (free_port(), free_port());
        let status = Command::new(&python)
            .arg(&script)
            .arg(dir.path())
            .arg(port.to_string())
            .arg(fed.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("synapse_config.py runs");
        assert!(status.success(), "synapse_config.py failed");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.path().join("hs.yaml"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("synapse starts");
        let mut synapse = Synapse { child, port, _dir: dir };
        // Ready means its client API answers, not only that the port accepts: the
        // listener is up a moment before the resource tree is.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(exit)) = synapse.child.try_wait() {
                panic!("Synapse exited before it was ready: {exit}");
            }
            if answers_versions(port) {
                break;
            }
            assert!(Instant::now() < deadline, "Synapse did not answer on {port}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        synapse
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Whether `GET /_matrix/client/versions` on loopback `port` answers 200.
pub fn answers_versions(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /_matrix/client/versions HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
