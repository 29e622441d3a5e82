//! Loading the configuration from files and the environment.
use super::*;
use crate::net_policy::IpRange;

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("myelin.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn defaults_match_the_operator_contract() {
    let c = Config::load_from(None, env(&[])).unwrap().config;
    assert_eq!(c.server_name, "localhost");
    assert_eq!(c.data_dir, PathBuf::from("./myelin-data"));
    assert_eq!(c.client.listen.to_string(), "127.0.0.1:8008");
    assert_eq!(c.federation.listen.to_string(), "127.0.0.1:8448");
    assert!(c.federation.enabled && c.federation.verify_tls);
    assert!(!c.registration.enabled);
    assert_eq!(c.media.max_upload_bytes, 52_428_800);
}

#[test]
fn file_then_environment_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        r#"
server_name = "a.example:8448"
[federation]
verify_tls = false
deny = ["evil.example"]
[federation.hosts]
"b.example" = "127.0.0.2:8448"
[registration]
enabled = true
"#,
    );
    let c = Config::load_from(
        Some(&p),
        env(&[
            ("MYELIN_SERVER_NAME", "127.0.0.1:9000"),
            ("MYELIN_CLIENT__LISTEN", "127.0.0.1:18008"),
            ("MYELIN_MEDIA__MAX_UPLOAD_BYTES", "1024"),
            ("MYELIN_REGISTRATION__TOKEN", "12345"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap()
    .config;
    assert_eq!(c.server_name, "127.0.0.1:9000");
    assert_eq!(c.client.listen.port(), 18008);
    assert_eq!(c.media.max_upload_bytes, 1024);
    assert_eq!(c.registration.token, "12345", "a numeric env value is still a string key");
    assert!(c.registration.enabled);
    assert!(!c.federation.verify_tls);
    assert_eq!(c.federation.deny, vec!["evil.example".to_string()]);
    assert_eq!(c.federation.hosts["b.example"].to_string(), "127.0.0.2:8448");
}

#[test]
fn bad_input_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("bogus = 1\n", "bogus"),
        ("[federation]\nbogus = 1\n", "federation.bogus"),
        ("[client]\nlisten = \"nope\"\n", "client.listen"),
        ("[federation]\nverify_tls = \"maybe\"\n", "federation.verify_tls"),
        ("server_name = \"bad name!\"\n", "server_name"),
        ("[media]\nmax_upload_bytes = -1\n", "media.max_upload_bytes"),
    ];
    for (text, key) in cases {
        let p = write(&dir, text);
        let err = Config::load_from(Some(&p), env(&[])).unwrap_err().0;
        // Named once, as written (not `federation.bogus.bogus`).
        let named = err.contains(&format!("`{key}`")) || err.starts_with(&format!("{key}:"));
        assert!(named, "error for {text:?} does not name `{key}`: {err}");
        assert!(!err.contains('\n'), "error is not one line: {err}");
    }
    let err = Config::load_from(None, env(&[("MYELIN_CLIENT__LISTEN", "127.0.0.1:99999")])).unwrap_err().0;
    assert!(err.contains("client.listen"), "{err}");
    let missing = dir.path().join("absent.toml");
    assert!(Config::load_from(Some(&missing), env(&[])).is_err());
}

#[test]
fn environment_values_are_typed_by_their_key() {
    let c = Config::load_from(
        None,
        env(&[
            ("MYELIN_FEDERATION__VERIFY_TLS", "false"),
            ("MYELIN_FEDERATION__DENY", r#"["evil.example", "bad.example"]"#),
            ("MYELIN_FEDERATION__HOSTS__B.EXAMPLE", "127.0.0.3:8448"),
            ("MYELIN_DATA_DIR", "/tmp/123"),
        ]),
    )
    .unwrap()
    .config;
    assert!(!c.federation.verify_tls);
    assert_eq!(c.federation.deny, vec!["evil.example".to_string(), "bad.example".to_string()]);
    assert_eq!(c.federation.hosts["b.example"].to_string(), "127.0.0.3:8448");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/123"));
}

#[test]
fn outbound_ranges_and_insecure_destinations_from_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        r#"
[federation]
ip_range_allow = ["10.0.0.0/8", "fd00::/8"]
ip_range_deny = ["203.0.113.7"]
[federation.insecure]
"lab.example" = true
"#,
    );
    let c = Config::load_from(Some(&p), env(&[])).unwrap().config;
    let shown = |list: &[IpRange]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(shown(&c.federation.ip_range_allow), ["10.0.0.0/8", "fd00::/8"]);
    assert_eq!(shown(&c.federation.ip_range_deny), ["203.0.113.7/32"]);
    assert_eq!(c.federation.insecure.get("lab.example"), Some(&true));

    let c = Config::load_from(
        Some(&p),
        env(&[
            ("MYELIN_FEDERATION__IP_RANGE_ALLOW", r#"["127.0.0.0/8"]"#),
            ("MYELIN_FEDERATION__IP_RANGE_DENY", r#"["8.8.8.0/24", "2a00::/16"]"#),
            ("MYELIN_FEDERATION__INSECURE__OTHER.EXAMPLE", "true"),
        ]),
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = c.config;
    assert_eq!(shown(&c.federation.ip_range_allow), ["127.0.0.0/8"], "the environment wins over the file");
    assert_eq!(shown(&c.federation.ip_range_deny), ["8.8.8.0/24", "2a00::/16"]);
    assert_eq!(c.federation.insecure.get("other.example"), Some(&true));
    assert_eq!(c.federation.insecure.get("lab.example"), Some(&true));
    assert!(Config::default().federation.ip_range_allow.is_empty());
    assert!(Config::default().federation.ip_range_deny.is_empty());
    assert!(Config::default().federation.insecure.is_empty());
}

#[test]
fn a_bad_range_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[federation]\nip_range_allow = [\"10.0.0.0/33\"]\n", "federation.ip_range_allow"),
        ("[federation]\nip_range_deny = [\"example.org\"]\n", "federation.ip_range_deny"),
        ("[federation]\nip_range_allow = \"10.0.0.0/8\"\n", "federation.ip_range_allow"),
        ("[federation.insecure]\n\"bad name!\" = true\n", "federation.insecure"),
    ] {
        let p = write(&dir, text);
        let err = Config::load_from(Some(&p), env(&[])).unwrap_err().0;
        assert!(err.contains(key), "error for {text:?} does not name {key}: {err}");
        assert!(!err.contains('\n'), "error is not one line: {err}");
    }
    let err = Config::load_from(None, env(&[("MYELIN_FEDERATION__IP_RANGE_ALLOW", r#"["10.0.0.0/8", "nope"]"#)]))
        .unwrap_err()
        .0;
    assert!(err.contains("federation.ip_range_allow") && err.contains("nope"), "{err}");
}

#[test]
fn unknown_environment_variable_is_a_warning() {
    let loaded = Config::load_from(None, env(&[("MYELIN_NOPE", "1"), ("MYELIN_SERVER_NAME", "x.example")])).unwrap();
    assert_eq!(loaded.config.server_name, "x.example");
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].contains("MYELIN_NOPE"));
}

#[test]
fn a_trusted_push_gateway_matches_by_scheme_host_and_port_only() {
    let loaded = Config::load_from(
        None,
        env(&[("MYELIN_SERVER_NAME", "x.example"), ("MYELIN_PUSH__TRUSTED_GATEWAYS", r#"["http://10.0.0.5:5000/"]"#)]),
    )
    .unwrap();
    let push = &loaded.config.push;
    assert!(push.trusts_gateway("http://10.0.0.5:5000"));
    assert!(push.trusts_gateway("http://10.0.0.5:5000/"));
    assert!(!push.trusts_gateway("http://10.0.0.5:5001"), "another port");
    assert!(!push.trusts_gateway("https://10.0.0.5:5000"), "another scheme");
    assert!(!push.trusts_gateway("http://10.0.0.6:5000"), "another host");
    assert!(!push.trusts_gateway("http://10.0.0.5:5000@10.0.0.6:5000"), "userinfo is not the host");
    assert!(!push.trusts_gateway("not a url"));
    assert!(!PushConfig::default().trusts_gateway("http://10.0.0.5:5000"));
}
