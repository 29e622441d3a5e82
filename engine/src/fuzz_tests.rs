//! Hostile input for the parsers that strangers reach (issue #22 §1), through
//! the seeded mutation fuzzer in [`crate::fuzz`]: the `X-Matrix` header and
//! request verification, PDUs from JSON (id, redaction, hashing and signing
//! checked for their properties, not only for panics), canonical JSON,
//! server names and Matrix ids, sync tokens and the configuration file.

use ruma::{CanonicalJsonObject, OwnedServerName, RoomVersionId, room_version_rules::RoomVersionRules};
use serde_json::json;

use crate::{
    config::Config,
    federation::xmatrix,
    fuzz::fuzz,
    keys::ServerKeys,
    rooms::{Pdu, pdu::event_id_of},
    sync::parse_full_token,
    util::{valid_media_id, valid_server_name},
};

/// Inputs per target in a default (CI) run; `MYELIN_FUZZ_ITERS` overrides.
const CI_INPUTS: usize = 20_000;

fn rules() -> Vec<RoomVersionRules> {
    [RoomVersionId::V1, RoomVersionId::V3, RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12]
        .iter()
        .filter_map(RoomVersionId::rules)
        .collect()
}

#[test]
fn x_matrix_headers_and_request_verification_never_panic() {
    let seeds = vec![
        b"X-Matrix origin=\"a.test\",destination=\"b.test\",key=\"ed25519:k\",sig=\"AAAA\"".to_vec(),
        b"X-Matrix origin=a.test,key=\"ed25519:1\",sig=\"ZmFrZQ\"".to_vec(),
    ];
    fuzz("xmatrix", CI_INPUTS, &seeds, |input| {
        let header = String::from_utf8_lossy(input);
        if let Ok(x) = xmatrix::parse(&header) {
            let key = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ";
            let _ = xmatrix::verify_body(&x, key, "b.test", "PUT", "/_matrix/federation/v1/send/1", input);
            let _ = xmatrix::verify_body(&x, &header, "b.test", "GET", "/", b"");
        }
    });
}

#[test]
fn pdus_from_hostile_json_never_panic_and_keep_their_properties() {
    let event = json!({
        "type": "m.room.message", "room_id": "!r:x.test", "sender": "@a:x.test",
        "content": { "msgtype": "m.text", "body": "hi", "m.relates_to": { "rel_type": "m.replace", "event_id": "$e" } },
        "origin_server_ts": 1, "depth": 2, "prev_events": ["$p"], "auth_events": ["$a", "$b"],
        "hashes": { "sha256": "AAAA" }, "signatures": { "x.test": { "ed25519:k": "AAAA" } },
        "unsigned": { "age": 1 }
    });
    let state = json!({
        "type": "m.room.member", "state_key": "@a:x.test", "room_id": "!r:x.test", "sender": "@a:x.test",
        "content": { "membership": "join", "join_authorised_via_users_server": "@b:x.test" },
        "origin_server_ts": 1, "depth": 1, "prev_events": [],
        "auth_events": [], "redacts": "$x", "hashes": { "sha256": "AAAA" }, "signatures": {}
    });
    let power = json!({
        "type": "m.room.power_levels", "state_key": "", "room_id": "!r:x.test", "sender": "@a:x.test",
        "content": { "users": { "@a:x.test": 100 }, "events": { "m.room.name": 50 }, "ban": 50, "invite": 0 },
        "origin_server_ts": 1, "depth": 3, "prev_events": ["$p"], "auth_events": ["$a"],
        "hashes": { "sha256": "AAAA" }, "signatures": {}
    });
    let seeds = vec![event.to_string().into_bytes(), state.to_string().into_bytes(), power.to_string().into_bytes()];
    let versions = rules();
    let server: OwnedServerName = "x.test".try_into().expect("a constant server name");
    let keys = ServerKeys::from_seed(server, "1", &[7; 32]).expect("keys from a constant seed");
    fuzz("pdu", CI_INPUTS, &seeds, |input| {
        let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(input) else { return };
        for rules in &versions {
            let _ = event_id_of(&object, rules);
            let _ = ruma::signatures::reference_hash(&object, rules);
            let Ok(pdu) = Pdu::from_object(object.clone(), rules) else { continue };
            let _ = serde_json::to_string(&*pdu.json);
            // Redaction is idempotent: a redacted event redacts to itself.
            if let Ok(once) = pdu.redacted_json(rules) {
                let twice = ruma::canonical_json::redact(once.clone(), &rules.redaction, None);
                assert_eq!(twice.ok().as_ref(), Some(&once), "redacting twice changed the event");
            }
            // Whatever we sign, our key verifies: hashing and signing a
            // well-formed event from one of our users (the only ones we sign)
            // never yields a signature or hash that fails. Verification also
            // reads the content of some event types (`membership`) and may
            // refuse it as malformed, which is the event's shape, not ours.
            // (In versions 1 and 2 an event needs an `event_id`; a restricted
            // join also needs the authorising server's signature.)
            let has_id = !rules.event_format.require_event_id || object.contains_key("event_id");
            let restricted = pdu.content.get().contains("join_authorised_via_users_server");
            let mut signed = object.clone();
            if pdu.sender.server_name() == "x.test"
                && has_id
                && !restricted
                && keys.hash_and_sign_event(&mut signed, rules).is_ok()
            {
                use ruma::signatures::VerificationError;
                match ruma::signatures::verify_event(&keys.public_key_map(), &signed, rules) {
                    Ok(_) | Err(VerificationError::Json(_) | VerificationError::ParseIdentifier { .. }) => {}
                    Err(e) => panic!("an event we signed failed verification: {e:?}"),
                }
            }
        }
        let _ = xmatrix::canonical_body(&serde_json::from_slice(input).unwrap_or_default());
    });
}

#[test]
fn canonical_json_round_trips() {
    let seeds = vec![
        br#"{"b":[1,-2,{"c":null,"d":true}],"a":"\u00e9\n\"","e":{"":[]},"f":9007199254740991}"#.to_vec(),
        br#"{"content":{"body":"\ud83d\ude00","n":-9007199254740991},"x":[[[]]]}"#.to_vec(),
    ];
    fuzz("canonical_json", CI_INPUTS, &seeds, |input| {
        let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(input) else { return };
        let text = ruma::canonical_json::to_canonical_value(&object).map(|v| v.to_string());
        let Ok(text) = text else { return };
        let again: CanonicalJsonObject = serde_json::from_str(&text).expect("our canonical output parses");
        assert_eq!(again, object, "canonical JSON did not round-trip");
        let twice = ruma::canonical_json::to_canonical_value(&again).map(|v| v.to_string());
        assert_eq!(twice.ok().as_deref(), Some(text.as_str()), "canonical form is not a fixed point");
    });
}

#[test]
fn server_names_ids_and_tokens_never_panic_and_agree() {
    let seeds: Vec<Vec<u8>> = [
        "matrix.org",
        "a-b.example:8448",
        "[2001:db8::1]:443",
        "1.2.3.4",
        "@alice:a.example",
        "!room:b.example:8448",
        "$YUwRidLecu:c.example",
        "#chat:[::1]",
        "media_ID-01",
        "s12_3_4",
        "s0",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("ids", CI_INPUTS, &seeds, |input| {
        let Ok(s) = std::str::from_utf8(input) else { return };
        // What we accept as a server name, ruma must accept too: both sides of
        // a request read it, and a name one takes and the other refuses
        // would fail deep inside federation rather than at the edge.
        if valid_server_name(s) {
            assert!(<&ruma::ServerName>::try_from(s).is_ok(), "we accept server name {s:?}, ruma does not");
        }
        if valid_media_id(s) {
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
        let _ = <&ruma::UserId>::try_from(s);
        let _ = <&ruma::RoomId>::try_from(s);
        let _ = <&ruma::EventId>::try_from(s);
        let _ = <&ruma::RoomAliasId>::try_from(s);
        if let Some((pos, typing, to_device)) = parse_full_token(s) {
            let rebuilt = match to_device {
                Some(d) => format!("s{pos}_{typing}_{d}"),
                None => format!("s{pos}_{typing}"),
            };
            assert_eq!(parse_full_token(&rebuilt), Some((pos, typing, to_device)), "token {s:?} did not round-trip");
        }
    });
}

#[test]
fn config_files_never_panic() {
    let seed = br#"server_name = "a.example"
data_dir = "/var/lib/myelin"
[client]
listen = "127.0.0.1:8008"
[federation]
listen = "0.0.0.0:8448"
trusted_ca = ["/etc/myelin/b.crt"]
allow = ["b.example"]
ip_range_allow = ["10.0.0.0/8"]
[federation.hosts]
"b.example" = "10.0.0.2:8448"
[federation.trusted_keys]
"b.example" = { "ed25519:k" = "AAAA" }
[registration]
enabled = true
token = "t"
[storage]
memory_mb = 256
[rate_limit]
per_second = 10.5
burst = 20
"#;
    let seeds = vec![seed.to_vec()];
    fuzz("config", CI_INPUTS / 4, &seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = Config::load_toml_str(&text, Vec::new());
    });
}

/// `glob` as a textbook dynamic programme over characters: the reference the
/// fast matcher in `filter.rs` is checked against.
fn glob_reference(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // matched[j]: the pattern so far matches the first j characters of text.
    let mut matched = vec![false; t.len() + 1];
    matched[0] = true;
    for &c in &p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] =
                if c == '*' { matched[j] || (j > 0 && next[j - 1]) } else { j > 0 && matched[j - 1] && t[j - 1] == c };
        }
        matched = next;
    }
    matched[t.len()]
}

#[test]
fn filter_globs_agree_with_a_reference_matcher() {
    let seeds: Vec<Vec<u8>> = ["m.room.*\0m.room.message", "*a*b*\0xaybz", "ab*ba\0aba", "*\0", "a**\0aa", "é*é\0é"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("glob", CI_INPUTS, &seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let (pattern, subject) = text.split_once('\0').unwrap_or((&text, "m.room.message"));
        assert_eq!(
            crate::filter::glob(pattern, subject),
            glob_reference(pattern, subject),
            "glob {pattern:?} on {subject:?}"
        );
    });
}
