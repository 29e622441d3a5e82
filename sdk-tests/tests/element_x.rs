//! Element X's engine against a real Myelin: the `matrix-sdk` and `matrix-sdk-ui`
//! crates (the room list, timelines and encryption of Element X) sync through
//! simplified sliding sync with a `myelin serve` started from the workspace build.
//!
//! Each check asserts what the SDK's own state shows: the room list and its order,
//! room states, timeline items, unread counts and decrypted text.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, pin_mut};
use matrix_sdk::{
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
use matrix_sdk_ui::{
    room_list_service::filters::new_filter_non_left,
    sync_service::{State, SyncService},
    timeline::{RoomExt, Timeline},
};

/// A `myelin serve` on loopback, in a temporary data directory.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// The federation port, when the server federates (its name is then `127.0.0.1:PORT`).
    federation: Option<u16>,
}

fn myelin_bin() -> PathBuf {
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
fn free_port() -> u16 {
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
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, 0, None, true).await
    }

    /// A server that federates with others on loopback (self-signed TLS accepted).
    async fn start_federating() -> Self {
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
            .env("RUST_LOG", "warn,myelin_api::server=info")
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL: the harshest restart) and starts it again on the same data.
    async fn restart(mut self) -> Self {
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

async fn client(server: &Server) -> Client {
    Client::builder().homeserver_url(server.url()).build().await.expect("client builds")
}

/// Registers `name` (open registration, `m.login.dummy`) with the client `c`, which
/// is then logged in (no sync running).
async fn register_with(c: Client, name: &str) -> Client {
    let request = assign!(matrix_sdk::ruma::api::client::account::register::v3::Request::new(), {
        username: Some(name.to_owned()),
        password: Some(format!("{name}-password")),
        auth: Some(AuthData::Dummy(Dummy::new())),
    });
    c.matrix_auth().register(request).await.expect("register");
    c
}

/// Registers `name` on a Myelin server.
async fn register(server: &Server, name: &str) -> Client {
    register_with(client(server).await, name).await
}

/// Logs `name` in on a new device, as Element X does (password login).
async fn login(server: &Server, name: &str) -> Client {
    let c = client(server).await;
    c.matrix_auth()
        .login_username(name, &format!("{name}-password"))
        .initial_device_display_name("Element X test")
        .await
        .expect("password login");
    c
}

/// Element X's sync: the room list and encryption connections, restarted after an
/// error (an unknown `pos` after a server restart ends the service's syncs).
async fn start_sync(c: &Client) -> Arc<SyncService> {
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
async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room list as Element X shows it (the room-list service's entries, rooms not
/// left), kept up to date in the background.
async fn shown_rooms(service: &SyncService) -> Arc<std::sync::Mutex<Vec<OwnedRoomId>>> {
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

fn snapshot(shown: &std::sync::Mutex<Vec<OwnedRoomId>>) -> Vec<OwnedRoomId> {
    shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn recency(c: &Client, room: &RoomId) -> u64 {
    c.get_room(room).and_then(|r| r.recency_stamp()).map(u64::from).unwrap_or(0)
}

/// The room ids the SDK knows, most recent first (the room list's order).
fn by_recency(c: &Client, rooms: &[OwnedRoomId]) -> Vec<OwnedRoomId> {
    let mut v: Vec<(u64, OwnedRoomId)> = rooms.iter().map(|r| (recency(c, r), r.clone())).collect();
    v.sort_by_key(|(stamp, _)| std::cmp::Reverse(*stamp));
    v.into_iter().map(|(_, r)| r).collect()
}

async fn texts(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|i| i.as_event())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

async fn wait_for_text(timeline: &Timeline, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if texts(timeline).await.iter().any(|t| t == text) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {text:?}; have {:?}", texts(timeline).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(c: &Client, name: &str) -> Room {
    c.create_room(assign!(create_room::v3::Request::new(), { name: Some(name.to_owned()) })).await.expect("create room")
}

async fn say(room: &Room, text: &str) {
    room.send(RoomMessageEventContent::text_plain(text)).await.expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_room_list_timeline_invites_unread_and_restart() {
    let mut server = Server::start().await;
    let alice_web = register(&server, "alice").await;
    let bob = register(&server, "bob").await;

    // Alice (on another client) has three rooms; the newest message is in `c`.
    let a = create(&alice_web, "a").await;
    let b = create(&alice_web, "b").await;
    let c = create(&alice_web, "c").await;
    for n in 0..30 {
        say(&a, &format!("history {n}")).await;
    }
    say(&b, "in b").await;
    say(&c, "in c").await;
    let rooms = vec![a.room_id().to_owned(), b.room_id().to_owned(), c.room_id().to_owned()];
    a.invite_user_by_id(bob.user_id().unwrap()).await.expect("invite bob");
    let bob_a = bob.join_room_by_id(a.room_id()).await.expect("bob joins a");

    // Element X logs in and syncs: the room list holds the three, most recent first.
    let ex = login(&server, "alice").await;
    let sync = start_sync(&ex).await;
    let shown = shown_rooms(&sync).await;
    eventually("three joined rooms", || {
        rooms.iter().all(|r| ex.get_room(r).is_some_and(|r| r.state() == RoomState::Joined))
    })
    .await;
    // Bob's join is newer than the messages but does not bump; `c` stays on top.
    let newest_first = vec![rooms[2].clone(), rooms[1].clone(), rooms[0].clone()];
    eventually("recency c, b, a", || by_recency(&ex, &rooms) == newest_first).await;
    assert_eq!(ex.get_room(&rooms[2]).unwrap().name().as_deref(), Some("c"));
    // The room list shows them in that order.
    eventually("the room list shows c, b, a", || snapshot(&shown) == newest_first).await;

    // A message from another client moves its room to the top, and arrives in the timeline.
    let timeline_a = ex.get_room(&rooms[0]).unwrap().timeline().await.expect("timeline");
    say(&bob_a, "bob was here").await;
    eventually("room a on top", || by_recency(&ex, &rooms)[0] == rooms[0]).await;
    let moved = vec![rooms[0].clone(), rooms[2].clone(), rooms[1].clone()];
    eventually("the room list shows a, c, b", || snapshot(&shown) == moved).await;
    wait_for_text(&timeline_a, "bob was here").await;
    // Unread: one notifying message from bob.
    eventually("one unread in a", || {
        ex.get_room(&rooms[0]).is_some_and(|r| r.unread_notification_counts().notification_count == 1)
    })
    .await;

    // The timeline paginates back to the room's first message.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !texts(&timeline_a).await.iter().any(|t| t == "history 0") {
        assert!(Instant::now() < deadline, "paging back did not reach history 0: {:?}", texts(&timeline_a).await);
        timeline_a.paginate_backwards(20).await.expect("paginate");
    }
    let got = texts(&timeline_a).await;
    let history: Vec<&String> = got.iter().filter(|t| t.starts_with("history ")).collect();
    assert_eq!(history.len(), 30, "each message once, in order: {got:?}");
    assert_eq!(history[0], "history 0");

    // An invite appears, and is accepted.
    let d = bob
        .create_room(assign!(create_room::v3::Request::new(), {
            name: Some("from bob".to_owned()),
            invite: vec![UserId::parse("@alice:localhost").unwrap()],
        }))
        .await
        .expect("bob creates d");
    let d_id = d.room_id().to_owned();
    eventually("invite to d", || ex.get_room(&d_id).is_some_and(|r| r.state() == RoomState::Invited)).await;
    eventually("the invite heads the room list", || snapshot(&shown).first() == Some(&d_id)).await;
    ex.get_room(&d_id).unwrap().join().await.expect("accept the invite");
    eventually("joined d", || ex.get_room(&d_id).is_some_and(|r| r.state() == RoomState::Joined)).await;
    say(&d, "welcome").await;
    let timeline_d = ex.get_room(&d_id).unwrap().timeline().await.expect("timeline d");
    wait_for_text(&timeline_d, "welcome").await;

    // A server restart: the connection's position is gone (M_UNKNOWN_POS); the SDK starts
    // again and keeps receiving.
    server = server.restart().await;
    let bob = login(&server, "bob").await;
    let bob_d = bob.get_room(&d_id);
    let bob_d = match bob_d {
        Some(r) => r,
        None => bob.join_room_by_id(&d_id).await.expect("bob's room d"),
    };
    say(&bob_d, "after the restart").await;
    wait_for_text(&timeline_d, "after the restart").await;
    eventually("room d on top", || {
        let mut all = rooms.clone();
        all.push(d_id.clone());
        by_recency(&ex, &all)[0] == d_id
    })
    .await;
    drop(server);
}

/// Waits until `who` is joined to `room` as the SDK of `c` sees it (members are
/// lazy-loaded: the list is fetched once, then kept up by sync).
async fn wait_joined_member(c: &Client, room: &RoomId, who: &UserId) {
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
async fn wait_devices(c: &Client, who: &UserId, n: usize) {
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
async fn encrypted_dm(creator: &Client, invitee: &Client) -> Room {
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
async fn decrypted(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|i| i.as_event())
        .filter(|e| e.encryption_info().is_some())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

async fn wait_decrypted(timeline: &Timeline, text: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_dm_decrypts_both_ways_and_on_a_new_device() {
    let server = Server::start().await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let _alice_sync = start_sync(&alice).await;
    let _bob_sync = start_sync(&bob).await;
    let alice_id = alice.user_id().unwrap().to_owned();

    // Bob opens an encrypted DM with Alice, as Element X does.
    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();

    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    let bob_tl = dm.timeline().await.expect("bob's timeline");
    say(&dm, "the secret is 42").await;
    wait_decrypted(&alice_tl, "the secret is 42").await;
    say(&alice.get_room(&dm_id).unwrap(), "noted, bob").await;
    wait_decrypted(&bob_tl, "noted, bob").await;

    // Alice logs in on a second device: Bob's next message decrypts there too
    // (Bob's client learns of the device from the device-list change).
    let alice2 = login(&server, "alice").await;
    let _alice2_sync = start_sync(&alice2).await;
    eventually("the second device sees the DM", || alice2.get_room(&dm_id).is_some()).await;
    // Bob's client knows the new device (from the device-list change, or by asking).
    wait_devices(&bob, &alice_id, 2).await;
    let alice2_tl = alice2.get_room(&dm_id).unwrap().timeline().await.expect("second device's timeline");
    say(&dm, "hello, second device").await;
    wait_decrypted(&alice2_tl, "hello, second device").await;
    wait_decrypted(&alice_tl, "hello, second device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_dm_across_two_myelin_servers() {
    let here = Server::start_federating().await;
    let there = Server::start_federating().await;
    let alice = register(&here, "alice").await;
    let bob = register(&there, "bob").await;
    let _alice_sync = start_sync(&alice).await;
    let _bob_sync = start_sync(&bob).await;

    // Bob, on the other server, opens an encrypted DM with Alice.
    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();

    // Keys are queried and claimed over federation, the room key goes as a to-device EDU.
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    let bob_tl = dm.timeline().await.expect("bob's timeline");
    say(&dm, "across servers, encrypted").await;
    wait_decrypted(&alice_tl, "across servers, encrypted").await;
    say(&alice.get_room(&dm_id).unwrap(), "received, encrypted back").await;
    wait_decrypted(&bob_tl, "received, encrypted back").await;
}

/// A real Synapse (the interop venv of `tests/interop/setup.sh`), SQLite, on loopback.
struct Synapse {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Synapse {
    async fn start() -> Self {
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Whether `GET /_matrix/client/versions` on loopback `port` answers 200.
fn answers_versions(port: u16) -> bool {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_dm_between_myelin_and_synapse() {
    let synapse = Synapse::start().await;
    let myelin = Server::start_federating().await;
    let alice = register(&myelin, "alice").await;
    let bob =
        register_with(Client::builder().homeserver_url(synapse.url()).build().await.expect("client"), "bob").await;
    let _alice_sync = start_sync(&alice).await;
    let _bob_sync = start_sync(&bob).await;

    // Bob on Synapse opens an encrypted DM with Alice on Myelin.
    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    let bob_tl = dm.timeline().await.expect("bob's timeline");
    say(&dm, "from Synapse, encrypted").await;
    wait_decrypted(&alice_tl, "from Synapse, encrypted").await;
    say(&alice.get_room(&dm_id).unwrap(), "from Myelin, encrypted").await;
    wait_decrypted(&bob_tl, "from Myelin, encrypted").await;

    // And the other way round: Alice on Myelin opens one with Bob on Synapse.
    let dm2 = encrypted_dm(&alice, &bob).await;
    let dm2_id = dm2.room_id().to_owned();
    let bob_tl2 = bob.get_room(&dm2_id).unwrap().timeline().await.expect("bob's second timeline");
    say(&dm2, "Myelin's room, encrypted").await;
    wait_decrypted(&bob_tl2, "Myelin's room, encrypted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_group_of_three_on_two_myelin_servers() {
    let here = Server::start_federating().await;
    let there = Server::start_federating().await;
    let alice = register(&here, "alice").await;
    let bob = register(&here, "bob").await;
    let carol = register(&there, "carol").await;
    let _syncs = [start_sync(&alice).await, start_sync(&bob).await, start_sync(&carol).await];
    let (bob_id, carol_id) = (bob.user_id().unwrap().to_owned(), carol.user_id().unwrap().to_owned());

    let encryption = InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults());
    let room = alice
        .create_room(assign!(create_room::v3::Request::new(), {
            name: Some("ops".to_owned()),
            invite: vec![bob_id.clone(), carol_id.clone()],
            initial_state: vec![encryption.to_raw_any()],
        }))
        .await
        .expect("alice creates the group");
    let room_id = room.room_id().to_owned();
    for (who, c) in [("bob", &bob), ("carol", &carol)] {
        eventually(&format!("{who} is invited"), || {
            c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)
        })
        .await;
        c.get_room(&room_id).unwrap().join().await.expect("join the group");
    }
    for who in [&bob_id, &carol_id] {
        wait_joined_member(&alice, &room_id, who).await;
    }
    wait_joined_member(&carol, &room_id, &bob_id).await;
    for (c, who) in [
        (&carol, alice.user_id()),
        (&carol, Some(bob_id.as_ref())),
        (&alice, Some(bob_id.as_ref())),
        (&alice, Some(carol_id.as_ref())),
    ] {
        wait_devices(c, who.unwrap(), 1).await;
    }
    let timelines = [
        room.timeline().await.expect("alice's timeline"),
        bob.get_room(&room_id).unwrap().timeline().await.expect("bob's timeline"),
        carol.get_room(&room_id).unwrap().timeline().await.expect("carol's timeline"),
    ];
    // Carol (the other server) writes: both users on the first server decrypt it.
    say(&carol.get_room(&room_id).unwrap(), "carol to the group").await;
    wait_decrypted(&timelines[0], "carol to the group").await;
    wait_decrypted(&timelines[1], "carol to the group").await;
    // Alice writes: Bob on her server and Carol across federation decrypt it.
    say(&room, "alice to the group").await;
    wait_decrypted(&timelines[1], "alice to the group").await;
    wait_decrypted(&timelines[2], "alice to the group").await;
}

/// A client with Element X's encryption settings for recovery: cross-signing made at
/// login, room keys fetched from the backup once the recovery key is known.
async fn recovery_client(server: &Server) -> Client {
    let settings = matrix_sdk::encryption::EncryptionSettings {
        auto_enable_cross_signing: true,
        backup_download_strategy: matrix_sdk::encryption::BackupDownloadStrategy::OneShot,
        auto_enable_backups: false,
    };
    Client::builder().homeserver_url(server.url()).with_encryption_settings(settings).build().await.expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_recovery_restores_history_on_a_new_device_from_the_key_backup() {
    let server = Server::start().await;
    let bob = register(&server, "bob").await;
    let alice = register_with(recovery_client(&server).await, "alice").await;
    let _syncs = [start_sync(&alice).await, start_sync(&bob).await];

    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    say(&dm, "keep this for later").await;
    wait_decrypted(&alice_tl, "keep this for later").await;

    // Alice turns recovery on: a key backup (/room_keys) and secret storage (account data).
    let recovery_key = alice.encryption().recovery().enable().await.expect("enable recovery");
    alice.encryption().backups().wait_for_steady_state().await.expect("room keys uploaded");

    // A new device of hers never received the room key; the recovery key brings it back.
    let alice2 = recovery_client(&server).await;
    alice2
        .matrix_auth()
        .login_username("alice", "alice-password")
        .initial_device_display_name("new phone")
        .await
        .expect("login on a new device");
    let _sync2 = start_sync(&alice2).await;
    eventually("the new device sees the DM", || alice2.get_room(&dm_id).is_some()).await;
    alice2.encryption().recovery().recover(&recovery_key).await.expect("recover with the key");
    let alice2_tl = alice2.get_room(&dm_id).unwrap().timeline().await.expect("new device's timeline");
    wait_decrypted(&alice2_tl, "keep this for later").await;
}

/// Claims one-time keys of `who`'s devices as a stranger would, until the server hands
/// out the fallback key (every one-time key is gone); returns how many were claimed.
async fn drain_one_time_keys(c: &Client, who: &UserId, device: &matrix_sdk::ruma::DeviceId) -> usize {
    use matrix_sdk::ruma::{OneTimeKeyAlgorithm, api::client::keys::claim_keys};
    for claimed in 0..500 {
        let wanted = [(device.to_owned(), OneTimeKeyAlgorithm::SignedCurve25519)].into_iter().collect();
        let request = claim_keys::v3::Request::new([(who.to_owned(), wanted)].into_iter().collect());
        let response = c.send(request).await.expect("keys/claim");
        let keys = response.one_time_keys.get(who).and_then(|d| d.get(device)).expect("a key for the device");
        let fallback = keys.values().any(|k| k.json().get().contains("\"fallback\":true"));
        if fallback {
            return claimed;
        }
    }
    panic!("the server never handed out the fallback key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_offline_receiver_decrypts_after_restart_through_the_fallback_key() {
    let mut server = Server::start().await;
    let alice = register(&server, "alice").await;
    let carol = register(&server, "carol").await;
    let alice_sync = start_sync(&alice).await;
    let _carol_sync = start_sync(&carol).await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let alice_device = alice.device_id().unwrap().to_owned();

    let dm = encrypted_dm(&carol, &alice).await;
    let dm_id = dm.room_id().to_owned();

    // Her client has uploaded its fallback key (a connection of its own asks the server).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use matrix_sdk::ruma::{OneTimeKeyAlgorithm, api::client::sync::sync_events::v5};
        let mut probe = v5::Request::new();
        probe.conn_id = Some("fallback-probe".to_owned());
        probe.extensions.e2ee.enabled = Some(true);
        let answer = alice.send(probe).await.expect("sliding sync probe");
        let types = answer.extensions.e2ee.device_unused_fallback_key_types.unwrap_or_default();
        if types.contains(&OneTimeKeyAlgorithm::SignedCurve25519) {
            break;
        }
        assert!(Instant::now() < deadline, "alice's client never uploaded a fallback key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Alice goes offline; a stranger takes every one-time key of her device.
    alice_sync.stop().await;
    let stranger = register(&server, "stranger").await;
    let drained = drain_one_time_keys(&stranger, &alice_id, &alice_device).await;
    assert!(drained > 0, "her device had one-time keys to take");

    // Carol writes: her client can only open a session with the fallback key. The room
    // key waits for Alice as a to-device message, across a hard restart of the server.
    say(&dm, "while you were away").await;
    server = server.restart().await;
    alice_sync.start().await;
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    wait_decrypted(&alice_tl, "while you were away").await;
    drop(server);
}
