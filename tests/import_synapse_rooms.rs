//! `myelin import synapse`, rooms (issue #23 §2), against real software on
//! both sides: a Synapse (PyPI `matrix-synapse`) and a second Myelin server
//! federating with it (the PostgreSQL test: a second Synapse, a 5,000-event
//! room and matrix-nio's encrypted history). Synapse is filled through its Client-Server API: a
//! public room it hosts with an alias, a name, messages, a reply, an edit, a
//! reaction, a redaction, a read receipt and a member from the other server;
//! a room hosted by the other server that a Synapse user joined over
//! federation (its history before the join backfilled); and an invite from
//! the other server still pending; a file uploaded there and one of the
//! other server's it cached; push rules and a key backup. Synapse is stopped, imported, and Myelin
//! is started in its place (same server name, key and federation port).
//! Checked from the clients' side: the same rooms in `/sync`, the same
//! history with the same event ids, state, alias, directory, relations,
//! receipt, invite, files, push rules and key backup; what Synapse could not
//! deliver while the other server was down reaches it; and federation with the
//! other server goes on in both directions in both rooms.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use myelin_suite::{
    Client, enc, free_port, http, http_with, myelin_bin,
    procs::{Killed, start_postgres, start_synapse, start_synapse_on, wait_http},
    wait_for_text,
};
use serde_json::{Value, json};

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// A Myelin server as its operator runs it, from a config file.
fn serve(config: &Path) -> Killed {
    Killed(
        Command::new(myelin_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A config for a server named `name` in `data`, federating over loopback without certificate checks.
fn write_config(path: &Path, name: &str, data: &Path, client: u16, fed: u16) {
    let text = format!(
        "server_name = \"{name}\"\ndata_dir = \"{}\"\n[client]\nlisten = \"127.0.0.1:{client}\"\n\
         [registration]\nenabled = true\n\
         [federation]\nlisten = \"127.0.0.1:{fed}\"\nverify_tls = false\nip_range_allow = [\"127.0.0.0/8\"]\n",
        data.display()
    );
    std::fs::write(path, text).unwrap();
}

async fn register(port: u16, name: &str) -> Client {
    let body = json!({ "username": name, "password": format!("{name}-pass-1"), "auth": { "type": "m.login.dummy" } });
    let r = http(addr(port), Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "register {name}: {}", String::from_utf8_lossy(&r.body));
    Client::from_login(addr(port), &r.json())
}

async fn login(port: u16, name: &str) -> Client {
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": name }, "password": format!("{name}-pass-1") });
    let r = http(addr(port), Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "login {name}: {}", String::from_utf8_lossy(&r.body));
    Client::from_login(addr(port), &r.json())
}

/// Every event of a room's history, newest first, as `/messages` pages it.
async fn history(c: &Client, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = String::new();
    for _ in 0..20 {
        let page = c.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=500{from}", enc(room))).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        out.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
            _ => break,
        }
    }
    out
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
}

fn bodies(events: &[Value]) -> Vec<String> {
    events.iter().rev().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

/// Uploads `bytes` as a text file; returns the media id.
async fn upload(c: &Client, bytes: &[u8]) -> String {
    let auth = format!("Bearer {}", c.token);
    let headers = [("authorization", auth.as_str()), ("content-type", "text/plain")];
    let r = http_with(c.addr, Method::POST, "/_matrix/media/v3/upload?filename=note.txt", Some(bytes), &headers).await;
    assert_eq!(r.status, StatusCode::OK, "upload: {}", String::from_utf8_lossy(&r.body));
    r.json()["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()
}

/// Downloads `server`'s media `id` through `c`'s server.
async fn download(c: &Client, server: &str, id: &str) -> Vec<u8> {
    let r = c.request(Method::GET, &format!("/_matrix/client/v1/media/download/{server}/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "download {server}/{id}: {}", String::from_utf8_lossy(&r.body));
    r.body.to_vec()
}

async fn send(c: &Client, room: &str, kind: &str, content: Value) -> String {
    let txn = format!("t{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let path = format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room));
    c.put(&path, content).await["event_id"].as_str().unwrap().to_owned()
}

/// Waits until `c` sees `text` in `room`'s history (what another server delivered).
async fn wait_history(c: &Client, room: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bodies(&history(c, room).await).iter().any(|b| b == text) {
        assert!(Instant::now() < deadline, "{} never saw {text:?} in {room}", c.user_id);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_history_and_federation_come_over_from_a_stopped_synapse() {
    let dir = tempfile::tempdir().unwrap();
    // The other server: a Myelin named by its address.
    let (b_client, b_fed) = (free_port(), free_port());
    let b_config = dir.path().join("b.toml");
    write_config(&b_config, &format!("127.0.0.1:{b_fed}"), &dir.path().join("b"), b_client, b_fed);
    let mut b = serve(&b_config);
    let syn_dir = dir.path().join("synapse");
    std::fs::create_dir_all(&syn_dir).unwrap();
    let (syn_client, syn_fed) = (free_port(), free_port());
    let synapse = start_synapse(&syn_dir, syn_client, syn_fed);
    let server = format!("localhost:{syn_fed}");
    wait_http(addr(b_client), "/health", "myelin").await;
    wait_http(addr(syn_client), "/_matrix/client/versions", "synapse").await;

    let alice = register(syn_client, "alice").await;
    let bob = register(syn_client, "bob").await;
    let carol = register(b_client, "carol").await;

    // A room Synapse hosts, with a member from the other server.
    let lobby = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "room_alias_name": "lobby",
                             "name": "Lobby", "topic": "Talk here" }))
        .await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&lobby)), json!({})).await;
    carol.post(&format!("/_matrix/client/v3/join/{}?server_name={server}", enc(&lobby)), json!({})).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(alice.send_text(&lobby, &format!("m{i}")).await);
    }
    let reply =
        json!({ "msgtype": "m.text", "body": "re m5", "m.relates_to": { "m.in_reply_to": { "event_id": sent[5] } } });
    send(&bob, &lobby, "m.room.message", reply).await;
    let edit = json!({ "msgtype": "m.text", "body": "* m1 edited", "m.new_content": { "msgtype": "m.text", "body": "m1 edited" },
                       "m.relates_to": { "rel_type": "m.replace", "event_id": sent[1] } });
    let edit_id = send(&alice, &lobby, "m.room.message", edit).await;
    let reaction = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": sent[2], "key": "👍" } });
    send(&bob, &lobby, "m.reaction", reaction).await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&lobby), enc(&sent[3])),
            json!({ "reason": "oops" }),
        )
        .await;
    carol.send_text(&lobby, "hello from carol").await;
    wait_for_text(&alice, &lobby, "hello from carol").await;
    let last = alice.send_text(&lobby, "last before the move").await;
    alice.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&lobby), enc(&last)), json!({})).await;
    wait_history(&carol, &lobby, "last before the move").await;

    // A room the other server hosts, joined from Synapse after some history.
    let away = carol.create_room(json!({ "preset": "public_chat", "name": "Away" })).await;
    for i in 0..3 {
        carol.send_text(&away, &format!("before alice {i}")).await;
    }
    alice.post(&format!("/_matrix/client/v3/join/{}?server_name=127.0.0.1:{b_fed}", enc(&away)), json!({})).await;
    carol.send_text(&away, "carol after the join").await;
    wait_for_text(&alice, &away, "carol after the join").await;
    alice.send_text(&away, "alice in away").await;
    wait_history(&carol, &away, "alice in away").await;
    // Alice's client paginates back: Synapse backfills from the other server.
    let away_before = history(&alice, &away).await;
    assert!(bodies(&away_before).contains(&"before alice 0".to_owned()), "Synapse backfilled: {away_before:?}");
    // An invite from the other server, not answered.
    let pending = carol.create_room(json!({ "preset": "private_chat", "name": "Pending" })).await;
    carol.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&pending)), json!({ "user_id": bob.user_id })).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while bob.sync(None, 0).await["rooms"]["invite"].get(&pending).is_none() {
        assert!(Instant::now() < deadline, "bob never got carol's invite");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Files: one alice uploaded, one of the other server's that Synapse cached.
    let alice_media = upload(&alice, b"alice's notes").await;
    let carol_media = upload(&carol, b"carol's notes").await;
    let b_name = format!("127.0.0.1:{b_fed}");
    assert_eq!(download(&alice, &b_name, &carol_media).await, b"carol's notes");
    // The other server goes down: what alice sends now Synapse cannot deliver,
    // and nothing is sent after the move until the other server has it.
    let _ = Command::new("kill").arg(b.0.id().to_string()).status();
    let _ = b.0.wait();
    alice.send_text(&lobby, "while the other server was down").await;
    alice.send_text(&away, "away while the other server was down").await;
    tokio::time::sleep(Duration::from_secs(2)).await; // Synapse tries, fails and marks it behind
    let lobby_before = history(&alice, &lobby).await;
    // Alice's settings: a push rule of her own, a default rule off, another's actions changed, a key backup.
    let rules = "/_matrix/client/v3/pushrules/global";
    alice.put(&format!("{rules}/content/myword"), json!({ "pattern": "myword", "actions": ["notify"] })).await;
    alice.put(&format!("{rules}/override/.m.rule.suppress_notices/enabled"), json!({ "enabled": false })).await;
    let ping = json!(["notify", { "set_tweak": "sound", "value": "ping" }]);
    alice.put(&format!("{rules}/underride/.m.rule.message/actions"), json!({ "actions": ping })).await;
    let auth_data = json!({ "public_key": "cHVibGljIGtleQ", "signatures": {} });
    let backup = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": auth_data }),
        )
        .await;
    let version = backup["version"].as_str().unwrap().to_owned();
    let session = json!({ "first_message_index": 3, "forwarded_count": 0, "is_verified": true,
                          "session_data": { "ephemeral": "ZQ", "ciphertext": "Yw", "mac": "bQ" } });
    let key_path = format!("/_matrix/client/v3/room_keys/keys/{}/session-one?version={version}", enc(&lobby));
    alice.put(&key_path, session.clone()).await;
    let backup_before = alice.get("/_matrix/client/v3/room_keys/version").await;

    // Synapse stops; Myelin takes its name, key and port.
    let mut synapse = synapse;
    let _ = Command::new("kill").arg(synapse.0.id().to_string()).status();
    let _ = synapse.0.wait();
    let a_client = free_port();
    let a_config = dir.path().join("a.toml");
    write_config(&a_config, &server, &dir.path().join("a"), a_client, syn_fed);
    let import = |config: &Path| {
        Command::new(myelin_bin())
            .args(["import", "synapse", "--database"])
            .arg(syn_dir.join("homeserver.db"))
            .arg("--signing-key")
            .arg(syn_dir.join(format!("{server}.signing.key")))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let done = import(&a_config);
    let report = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(done.status.success(), "{report}\n{}", String::from_utf8_lossy(&done.stderr));
    assert!(report.contains("rooms: 2 imported"), "{report}");
    assert!(report.contains("invites and knocks: 1"), "{report}");
    assert!(report.contains("2 rooms with Synapse's current state, 0 without"), "{report}");
    assert!(!report.contains(" 0 in the timeline"), "{report}");
    assert!(report.contains("media: 1 local and 1 cached remote files imported"), "{report}");
    let again = import(&a_config);
    let second = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{second}");
    assert!(second.contains("events: 0 in the timeline"), "nothing twice: {second}");
    assert!(report.contains("federation: 2 (room, server) pairs"), "{report}");
    let _b = serve(&b_config);
    wait_http(addr(b_client), "/health", "myelin").await;
    let _a = serve(&a_config);
    wait_http(addr(a_client), "/health", "myelin").await;
    // What Synapse could not deliver reaches the other server from the new one.
    wait_history(&carol, &lobby, "while the other server was down").await;
    wait_history(&carol, &away, "away while the other server was down").await;

    let alice = login(a_client, "alice").await;
    let bob = login(a_client, "bob").await;
    let sync = alice.sync(None, 0).await;
    assert!(sync["rooms"]["join"].get(&lobby).is_some() && sync["rooms"]["join"].get(&away).is_some(), "{sync}");
    assert!(bob.sync(None, 0).await["rooms"]["invite"].get(&pending).is_some(), "bob's invite came over");
    let receipts = &sync["rooms"]["join"][&lobby]["ephemeral"]["events"];
    assert!(receipts.to_string().contains(&last), "alice's read receipt: {receipts}");

    assert_eq!(download(&bob, &server, &alice_media).await, b"alice's notes");
    assert_eq!(download(&bob, &b_name, &carol_media).await, b"carol's notes");

    let rules = "/_matrix/client/v3/pushrules/global";
    assert_eq!(alice.get(&format!("{rules}/content/myword")).await["pattern"], "myword");
    assert_eq!(alice.get(&format!("{rules}/override/.m.rule.suppress_notices/enabled")).await["enabled"], false);
    assert_eq!(alice.get(&format!("{rules}/underride/.m.rule.message/actions")).await["actions"], ping);
    let backup_after = alice.get("/_matrix/client/v3/room_keys/version").await;
    for field in ["version", "algorithm", "auth_data", "count", "etag"] {
        assert_eq!(backup_after[field], backup_before[field], "{field}: {backup_after} vs {backup_before}");
    }
    assert_eq!(alice.get(&key_path).await, session, "the backed-up session");
    let newer = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {} }),
        )
        .await;
    assert_ne!(newer["version"], backup_before["version"], "a new backup does not take the old number");

    // The same history, with the same event ids.
    let lobby_after = history(&alice, &lobby).await;
    assert_eq!(ids(&lobby_after), ids(&lobby_before), "the lobby's history");
    let texts = bodies(&lobby_after);
    let expected: Vec<String> = (0..30).filter(|i| *i != 3).map(|i| format!("m{i}")).collect();
    let mine: Vec<String> = texts.iter().filter(|t| expected.contains(t)).cloned().collect();
    assert_eq!(mine, expected, "alice's messages in order, the redacted one without a body");
    let redacted = lobby_after.iter().find(|e| e["event_id"] == sent[3].as_str()).unwrap();
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    let away_after = history(&alice, &away).await;
    for text in ["before alice 0", "carol after the join", "alice in away"] {
        assert!(bodies(&away_after).contains(&text.to_owned()), "{text} in {away_after:?}");
    }
    let name = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&lobby))).await;
    assert_eq!(name["name"], "Lobby");
    let alias = http(
        addr(a_client),
        Method::GET,
        &format!("/_matrix/client/v3/directory/room/{}", enc(&format!("#lobby:{server}"))),
        None,
    )
    .await;
    assert_eq!(alias.json()["room_id"], lobby.as_str(), "{:?}", alias.json());
    let public = alice.get("/_matrix/client/v3/publicRooms").await;
    assert!(public["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == lobby.as_str()), "{public}");
    let edits =
        alice.get(&format!("/_matrix/client/v1/rooms/{}/relations/{}/m.replace", enc(&lobby), enc(&sent[1]))).await;
    assert_eq!(edits["chunk"][0]["event_id"], edit_id.as_str(), "{edits}");
    let reactions =
        alice.get(&format!("/_matrix/client/v1/rooms/{}/relations/{}/m.annotation", enc(&lobby), enc(&sent[2]))).await;
    assert_eq!(reactions["chunk"].as_array().map(Vec::len), Some(1), "{reactions}");

    // Federation with the other server goes on, both ways, in both rooms.
    alice.send_text(&lobby, "lobby after the move").await;
    wait_history(&carol, &lobby, "lobby after the move").await;
    carol.send_text(&lobby, "carol to the new server").await;
    wait_history(&alice, &lobby, "carol to the new server").await;
    alice.send_text(&away, "away after the move").await;
    wait_history(&carol, &away, "away after the move").await;
    carol.send_text(&away, "carol away reply").await;
    wait_history(&alice, &away, "carol away reply").await;
}

/// Runs `tests/interop/nio_import.py MODE URL STATE_DIR` (matrix-nio with file key stores).
async fn nio_import(mode: &str, port: u16, state: &Path) {
    let (owned_mode, state) = (mode.to_owned(), state.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(myelin_suite::procs::venv_python("venv-nio-0.25.2"))
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/nio_import.py"))
            .arg(&owned_mode)
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(&state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nio {mode}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// A Synapse on PostgreSQL (`--postgres`): refused while it runs; once it is
/// stopped, its accounts, tokens and rooms come over as from SQLite: a room of
/// 5,000 messages with a member on a second Synapse, which goes on federating
/// with the imported server both ways, and an encrypted room whose history
/// matrix-nio's olm still decrypts on the devices that had the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_on_postgresql_comes_over_too() {
    let dir = tempfile::tempdir().unwrap();
    let pg_port = free_port();
    let _pg = start_postgres(dir.path(), pg_port);
    let syn_dir = dir.path().join("synapse");
    std::fs::create_dir_all(&syn_dir).unwrap();
    let (syn_client, syn_fed) = (free_port(), free_port());
    let pg_args = format!("127.0.0.1 {pg_port} synapse synapse");
    let synapse = start_synapse_on(&syn_dir, syn_client, syn_fed, Some(&pg_args));
    let server = format!("localhost:{syn_fed}");
    wait_http(addr(syn_client), "/_matrix/client/versions", "synapse").await;
    assert!(!syn_dir.join("homeserver.db").exists(), "Synapse runs on PostgreSQL, not SQLite");

    // The second Synapse, a peer with a member in the big room.
    let peer_dir = dir.path().join("peer");
    std::fs::create_dir_all(&peer_dir).unwrap();
    let (peer_client, peer_fed) = (free_port(), free_port());
    let _peer = start_synapse(&peer_dir, peer_client, peer_fed);
    wait_http(addr(peer_client), "/_matrix/client/versions", "the peer synapse").await;

    let alice = register(syn_client, "alice").await;
    let bob = register(syn_client, "bob").await;
    let dave = register(peer_client, "dave").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "On Postgres" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    dave.post(&format!("/_matrix/client/v3/join/{}?server_name={server}", enc(&room)), json!({})).await;
    for i in 0..20 {
        alice.send_text(&room, &format!("pg {i}")).await;
    }
    // 5,000 messages more, from ten senders at once (Synapse orders them).
    let senders: Vec<_> = (0..10)
        .map(|t| {
            let (c, room) = (if t % 2 == 0 { alice.clone() } else { bob.clone() }, room.clone());
            tokio::spawn(async move {
                for i in 0..500 {
                    c.send_text(&room, &format!("bulk {t}.{i}")).await;
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    dave.send_text(&room, "dave before the move").await;
    wait_for_text(&alice, &room, "dave before the move").await;
    let nio_state = dir.path().join("nio");
    std::fs::create_dir_all(&nio_state).unwrap();
    nio_import("before", syn_client, &nio_state).await;
    let before = history(&alice, &room).await;
    assert!(before.len() > 5_020, "{} events", before.len());

    let a_client = free_port();
    let a_config = dir.path().join("a.toml");
    write_config(&a_config, &server, &dir.path().join("a"), a_client, syn_fed);
    let conninfo = format!("host=127.0.0.1 port={pg_port} user=synapse dbname=synapse");
    let import = || {
        Command::new(myelin_bin())
            .args(["import", "synapse", "--postgres", &conninfo, "--signing-key"])
            .arg(syn_dir.join(format!("{server}.signing.key")))
            .arg("--config")
            .arg(&a_config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let running = import();
    assert_eq!(running.status.code(), Some(2), "{}", String::from_utf8_lossy(&running.stderr));
    assert!(String::from_utf8_lossy(&running.stderr).contains("Synapse is running"));
    let mut synapse = synapse;
    let _ = Command::new("kill").arg(synapse.0.id().to_string()).status();
    let _ = synapse.0.wait();
    let done = import();
    let report = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(done.status.success(), "{report}\n{}", String::from_utf8_lossy(&done.stderr));
    assert!(report.contains("users: 4 imported") && report.contains("rooms: 2 imported"), "{report}");
    assert!(report.contains("2 rooms with Synapse's current state, 0 without"), "{report}");
    assert!(!dir.path().join("a/synapse-import.sqlite").exists(), "the staging copy is removed");
    let _a = serve(&a_config);
    wait_http(addr(a_client), "/health", "myelin").await;

    // Bob's Synapse token still works; alice's password does.
    let bob = Client { addr: addr(a_client), ..bob };
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await["user_id"], bob.user_id.as_str());
    let alice = login(a_client, "alice").await;
    let after = history(&alice, &room).await;
    assert_eq!(ids(&after), ids(&before));
    // Where the DAG forked (dave's message crossed the last sends), Synapse pages
    // by depth and Myelin by arrival: same events, each sender's in its order.
    let sorted = |events: &[Value]| {
        let mut b = bodies(events);
        b.sort();
        b
    };
    assert_eq!(sorted(&after), sorted(&before));
    for t in 0..10 {
        let prefix = format!("bulk {t}.");
        let own: Vec<usize> =
            bodies(&after).into_iter().filter_map(|b| b.strip_prefix(&prefix).and_then(|n| n.parse().ok())).collect();
        let missing: Vec<usize> = (0..500).filter(|i| !own.contains(i)).collect();
        let unordered: Vec<(usize, usize)> = own.windows(2).filter(|w| w[0] > w[1]).map(|w| (w[0], w[1])).collect();
        assert!(
            missing.is_empty() && unordered.is_empty(),
            "sender {t}: missing {missing:?}, out of order {unordered:?} (of {} events; Synapse paged {})",
            own.len(),
            bodies(&before).iter().filter(|b| b.starts_with(&prefix)).count()
        );
    }
    let pg: Vec<String> = bodies(&after).into_iter().filter(|b| b.starts_with("pg ")).collect();
    assert_eq!(pg, (0..20).map(|i| format!("pg {i}")).collect::<Vec<_>>());
    alice.send_text(&room, "after the move").await;
    wait_for_text(&bob, &room, "after the move").await;
    // The second Synapse federates with the imported server, both ways.
    wait_history(&dave, &room, "after the move").await;
    dave.send_text(&room, "dave after the move").await;
    wait_history(&alice, &room, "dave after the move").await;
    nio_import("after", a_client, &nio_state).await;
}
