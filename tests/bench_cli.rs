//! `myelin bench` against a running server: it reports what it sent and
//! checks every acknowledged event is readable.

use std::process::Command;

use myelin_suite::{TestServer, myelin_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_send_and_script_run_against_a_server_and_account_for_every_event() {
    let s = TestServer::start_with("bench.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
    })
    .await;
    let url = format!("http://{}", s.client);
    let send = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(myelin_bin())
                .args(["bench", "send", "--url", &url, "--rooms", "2", "--clients", "4", "--messages", "10", "--json"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(send.status.success(), "{}", String::from_utf8_lossy(&send.stderr));
    let report: serde_json::Value = serde_json::from_slice(&send.stdout).unwrap();
    assert_eq!(report["events"], 40);
    assert_eq!(report["readable"], 40);
    assert!(report["events_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["p50_ms"].as_f64().unwrap() <= report["p99_ms"].as_f64().unwrap());

    let fanout = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(myelin_bin())
                .args(["bench", "fanout", "--url", &url, "--receivers", "3", "--messages", "5", "--json"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(fanout.status.success(), "{}", String::from_utf8_lossy(&fanout.stderr));
    let report: serde_json::Value = serde_json::from_slice(&fanout.stdout).unwrap();
    assert_eq!(
        (report["delivered"].clone(), report["expected"].clone()),
        (serde_json::json!(15), serde_json::json!(15))
    );
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0);

    let script = tokio::task::spawn_blocking(move || {
        Command::new(myelin_bin()).args(["bench", "script", "--url", &url, "--lines", "30", "--json"]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(script.status.success(), "{}", String::from_utf8_lossy(&script.stderr));
    let report: serde_json::Value = serde_json::from_slice(&script.stdout).unwrap();
    assert_eq!(report["lines"], 30);

    // Both runs' messages are in the server: 40 + 30 sent, plus the rooms' own events.
    let rooms = s.engine.rooms.all_rooms().unwrap();
    assert_eq!(rooms.len(), 4, "two send rooms, one fan-out room and one script room");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_federation_counts_every_message_across_two_servers() {
    let (a, b) = myelin_suite::federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let (url_a, url_b) = (format!("http://{}", a.client), format!("http://{}", b.client));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(myelin_bin())
            .args(["bench", "federation", "--url-a", &url_a, "--url-b", &url_b, "--server-a", "a.test"])
            .args(["--messages", "40", "--senders", "4", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["sent"].clone(), report["received"].clone()), (serde_json::json!(40), serde_json::json!(40)));
    assert!(report["messages_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(report["only_in_history"], 0, "nothing left for the history check: {report}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_join_waits_until_every_member_is_listed_on_the_joining_server() {
    let (a, b) = myelin_suite::federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let (url_a, url_b) = (format!("http://{}", a.client), format!("http://{}", b.client));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(myelin_bin())
            .args(["bench", "join", "--url-a", &url_a, "--url-b", &url_b, "--server-a", "a.test"])
            .args(["--members", "30", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["members"], 30);
    assert!(report["seconds"].as_f64().unwrap() >= report["join_request_seconds"].as_f64().unwrap());
    // What the bench waited for is really there: B lists the 30 members and its own user.
    let rooms: Vec<_> = b.engine.rooms.all_rooms().unwrap();
    assert_eq!(rooms.len(), 1);
    let members = b
        .engine
        .rooms
        .current_state(&rooms[0])
        .unwrap()
        .iter()
        .filter(|p| p.kind.to_string() == "m.room.member" && p.content_value()["membership"] == "join")
        .count();
    assert_eq!(members, 31);
    a.stop().await;
    b.stop().await;
}

/// `myelin admin appservice add` registers the bench's appservice on the
/// running server (through its admin socket), `bench appservice` then sees
/// every event arrive, and `list`/`remove` show and drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appservice_added_at_run_time_receives_every_bench_event_and_can_be_removed() {
    let s = TestServer::start_with("bench.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.0;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = myelin_suite::free_port();
    let reg = dir.path().join("reg.yaml");
    std::fs::write(
        &reg,
        format!(
            "id: bench\nurl: http://127.0.0.1:{port}\nas_token: a-tok\nhs_token: h-tok\nsender_localpart: asbench\n\
             namespaces:\n  users: [{{ regex: '@bench.*', exclusive: false }}]\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("myelin.toml");
    std::fs::write(&config, format!("data_dir = {:?}\nserver_name = \"bench.test\"\n", s.engine.config.data_dir))
        .unwrap();
    let admin = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(myelin_bin())
                .arg("admin")
                .arg("appservice")
                .args(args)
                .arg("--config")
                .arg(config)
                .output()
                .unwrap()
        })
    };
    let added = admin(vec!["add".into(), reg.display().to_string()]).await.unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(String::from_utf8_lossy(&added.stdout).contains("@asbench:bench.test"));
    assert!(s.engine.appservices.get("bench").is_some(), "the running server did not get it");
    // The same file again: the id is taken.
    let again = admin(vec!["add".into(), reg.display().to_string()]).await.unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stdout));

    let url = format!("http://{}", s.client);
    let bench = tokio::task::spawn_blocking(move || {
        Command::new(myelin_bin())
            .args([
                "bench",
                "appservice",
                "--url",
                &url,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--hs-token",
                "h-tok",
            ])
            .args(["--rooms", "3", "--clients", "3", "--messages", "10", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert_eq!((report["sent"].clone(), report["delivered"].clone()), (serde_json::json!(30), serde_json::json!(30)));
    assert!(report["transactions"].as_u64().unwrap() >= 1);

    let listed = admin(vec!["list".into()]).await.unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("bench @asbench:bench.test"), "{listed:?}");
    let removed = admin(vec!["remove".into(), "bench".into()]).await.unwrap();
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert!(s.engine.appservices.get("bench").is_none());
    s.stop().await;
}
