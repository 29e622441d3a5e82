//! `myelin import synapse` against a real Synapse (PyPI `matrix-synapse`,
//! installed by `tests/interop/setup.sh`): Synapse is started, filled through
//! its own Client-Server API (accounts, a second device, a display name,
//! account data, a deactivated account), stopped, imported, and then Myelin
//! is started on the same server name and key and checked from the clients'
//! side: the same passwords log in, the tokens Synapse handed out still work,
//! profiles, account data and encryption keys (device, one-time and
//! cross-signing keys with their signatures) are there, the deactivated account stays so, and
//! the server publishes Synapse's signing key. The refusals are checked too:
//! a running Synapse, another server name.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use http::{Method, StatusCode};
use myelin_suite::{
    free_port, http, http_with, myelin_bin,
    procs::{Killed, start_synapse, venv_python, wait_http},
};
use serde_json::{Value, json};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");

async fn post(port: u16, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = http_with(addr, Method::POST, path, Some(body.to_string().as_bytes()), &headers).await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

async fn request(port: u16, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let auth = format!("Bearer {token}");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = body.map(|b| b.to_string());
    let r = http_with(addr, method, path, body.as_deref().map(str::as_bytes), &[("authorization", &auth)]).await;
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

async fn register(port: u16, name: &str, password: &str) -> Value {
    let body = json!({ "username": name, "password": password, "auth": { "type": "m.login.dummy" } });
    let (status, v) = post(port, "/_matrix/client/v3/register", None, body).await;
    assert_eq!(status, StatusCode::OK, "register {name}: {v}");
    v
}

async fn login(port: u16, name: &str, password: &str) -> (StatusCode, Value) {
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": name }, "password": password });
    post(port, "/_matrix/client/v3/login", None, body).await
}

fn import(config: &Path, database: &Path, key: Option<&Path>) -> Output {
    let mut cmd = Command::new(myelin_bin());
    cmd.args(["import", "synapse", "--database"]).arg(database).arg("--config").arg(config);
    if let Some(k) = key {
        cmd.arg("--signing-key").arg(k);
    }
    cmd.env("RUST_LOG", "warn").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_devices_tokens_and_the_key_come_over_from_a_stopped_synapse() {
    let python = venv_python("venv-synapse-1.163.2");
    let dir = tempfile::tempdir().unwrap();
    let (syn_client, syn_fed) = (free_port(), free_port());
    let synapse = start_synapse(dir.path(), syn_client, syn_fed);
    let server = format!("localhost:{syn_fed}");
    wait_http(format!("127.0.0.1:{syn_client}").parse().unwrap(), "/_matrix/client/versions", "synapse").await;

    // Fill Synapse through its API, as its users would.
    let alice = register(syn_client, "alice", "alice-pass-1").await;
    let alice_token = alice["access_token"].as_str().unwrap().to_owned();
    let alice_id = alice["user_id"].as_str().unwrap().to_owned();
    // Alice's client uploads her encryption keys, really signed.
    let keys = Command::new(&python)
        .arg(format!("{SCRIPTS}/synapse_keys.py"))
        .arg(format!("http://127.0.0.1:{syn_client}"))
        .args([&alice_token, &alice_id, alice["device_id"].as_str().unwrap(), "alice-pass-1"])
        .output()
        .unwrap();
    assert!(keys.status.success(), "keys: {}", String::from_utf8_lossy(&keys.stderr));
    let uploaded: Value = serde_json::from_slice(&keys.stdout).unwrap();
    let alice_device = alice["device_id"].as_str().unwrap().to_owned();
    register(syn_client, "bob", "bob-pass-1").await;
    let (status, bob_phone) = login(syn_client, "bob", "bob-pass-1").await;
    assert_eq!(status, StatusCode::OK);
    let bob_phone_token = bob_phone["access_token"].as_str().unwrap().to_owned();
    let bob_phone_device = bob_phone["device_id"].as_str().unwrap().to_owned();
    let carol = register(syn_client, "carol", "carol-pass-1").await;
    let carol_token = carol["access_token"].as_str().unwrap().to_owned();
    let name_path = format!("/_matrix/client/v3/profile/{alice_id}/displayname");
    let (status, _) =
        request(syn_client, Method::PUT, &name_path, &alice_token, Some(json!({ "displayname": "Alice A." }))).await;
    assert_eq!(status, StatusCode::OK);
    let data_path = format!("/_matrix/client/v3/user/{alice_id}/account_data/org.example.settings");
    let (status, _) =
        request(syn_client, Method::PUT, &data_path, &alice_token, Some(json!({ "theme": "dark" }))).await;
    assert_eq!(status, StatusCode::OK);
    let deactivate = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "carol" }, "password": "carol-pass-1" } });
    let (status, v) = post(syn_client, "/_matrix/client/v3/account/deactivate", Some(&carol_token), deactivate).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let (my_client, my_fed) = (free_port(), free_port());
    let data_dir = dir.path().join("myelin");
    let config = dir.path().join("myelin.toml");
    let write_config = |name: &str| {
        std::fs::write(
            &config,
            format!(
                "server_name = \"{name}\"\ndata_dir = \"{}\"\n[client]\nlisten = \"127.0.0.1:{my_client}\"\n\
                 [federation]\nlisten = \"127.0.0.1:{my_fed}\"\n",
                data_dir.display()
            ),
        )
        .unwrap()
    };
    write_config(&server);
    let database = dir.path().join("homeserver.db");
    let key = dir.path().join(format!("{server}.signing.key"));
    // While Synapse runs, the import is refused (exit 2) and writes nothing.
    let running = import(&config, &database, Some(&key));
    assert_eq!(running.status.code(), Some(2), "{}", String::from_utf8_lossy(&running.stderr));
    assert!(String::from_utf8_lossy(&running.stderr).contains("Synapse is running"));
    assert!(!data_dir.exists(), "nothing written while Synapse runs");

    let mut synapse = synapse;
    // SIGTERM, as an operator stops it (its pid file goes).
    let _ = Command::new("kill").arg(synapse.0.id().to_string()).status();
    let _ = synapse.0.wait();

    write_config("other.test");
    let other = import(&config, &database, Some(&key));
    assert_eq!(other.status.code(), Some(2), "another server name is refused");
    assert!(String::from_utf8_lossy(&other.stderr).contains("must be the same"));
    write_config(&server);
    let done = import(&config, &database, Some(&key));
    let report = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(done.status.success(), "{report}\n{}", String::from_utf8_lossy(&done.stderr));
    assert!(report.contains("users: 3 imported, 0 already here"), "{report}");
    assert!(report.contains("verified: 3 accounts"), "{report}");
    // Again: nothing twice.
    let again = import(&config, &database, Some(&key));
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("users: 0 imported, 3 already here"));

    let _myelin = Killed(
        Command::new(myelin_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client_addr = format!("127.0.0.1:{my_client}").parse().unwrap();
    wait_http(client_addr, "/health", "myelin").await;

    // The token Synapse gave alice still works; so does bob's second device's.
    let (status, who) = request(my_client, Method::GET, "/_matrix/client/v3/account/whoami", &alice_token, None).await;
    assert_eq!((status, who["user_id"].as_str()), (StatusCode::OK, Some(alice_id.as_str())), "{who}");
    let (status, who) =
        request(my_client, Method::GET, "/_matrix/client/v3/account/whoami", &bob_phone_token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["device_id"], bob_phone_device.as_str());
    // The passwords they had (bcrypt hashes as Synapse stored them).
    assert_eq!(login(my_client, "bob", "bob-pass-1").await.0, StatusCode::OK);
    assert_eq!(login(my_client, "bob", "wrong").await.0, StatusCode::FORBIDDEN);
    assert_eq!(login(my_client, "carol", "carol-pass-1").await.0, StatusCode::FORBIDDEN, "deactivated stays so");
    let (status, devices) = request(my_client, Method::GET, "/_matrix/client/v3/devices", &bob_phone_token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(devices["devices"].as_array().unwrap().len() >= 2, "both of bob's devices: {devices}");
    let profile = http(client_addr, Method::GET, &format!("/_matrix/client/v3/profile/{alice_id}"), None).await;
    assert_eq!(profile.json()["displayname"], "Alice A.");
    let (status, data) = request(my_client, Method::GET, &data_path, &alice_token, None).await;
    assert_eq!((status, data), (StatusCode::OK, json!({ "theme": "dark" })));

    // Bob finds alice's keys as Synapse served them: her device signed by her
    // self-signing key, her cross-signing keys, and a one-time key to claim.
    let query = json!({ "device_keys": { alice_id.clone(): [] } });
    let (status, q) = post(my_client, "/_matrix/client/v3/keys/query", Some(&bob_phone_token), query).await;
    assert_eq!(status, StatusCode::OK);
    let device = &q["device_keys"][&alice_id][&alice_device];
    assert_eq!(device["keys"][format!("ed25519:{alice_device}")], uploaded["device_ed25519"], "{q}");
    let ssk_id = format!("ed25519:{}", uploaded["self_signing"].as_str().unwrap());
    assert_eq!(device["signatures"][&alice_id][&ssk_id], uploaded["ssk_signature"], "the self-signing signature: {q}");
    assert_eq!(
        q["master_keys"][&alice_id]["keys"][format!("ed25519:{}", uploaded["master"].as_str().unwrap())],
        uploaded["master"]
    );
    assert!(q["self_signing_keys"][&alice_id]["keys"].get(&ssk_id).is_some(), "{q}");
    let claim = json!({ "one_time_keys": { alice_id.clone(): { alice_device.clone(): "signed_curve25519" } } });
    let (status, c) = post(my_client, "/_matrix/client/v3/keys/claim", Some(&bob_phone_token), claim).await;
    assert_eq!(status, StatusCode::OK);
    let claimed = c["one_time_keys"][&alice_id][&alice_device].as_object().expect("a key claimed").clone();
    assert!(claimed.keys().all(|k| k.starts_with("signed_curve25519:OTK")), "a one-time key, not the fallback: {c}");
    let (_, counts) = post(my_client, "/_matrix/client/v3/keys/upload", Some(&alice_token), json!({})).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 4, "five came over, one claimed: {counts}");

    // The server speaks with Synapse's key.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_version = key_text.split_whitespace().nth(1).unwrap().to_owned();
    let fed = format!("127.0.0.1:{my_fed}").parse().unwrap();
    let doc = myelin_suite::https(fed, Method::GET, "/_matrix/key/v2/server", None).await.json();
    assert!(doc["verify_keys"].get(format!("ed25519:{key_version}")).is_some(), "{doc}");
}
