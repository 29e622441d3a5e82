//! The engine's fuzz targets (issue #22 §1): the parsers that strangers reach,
//! each a function of one input that panics on a crash *or* on a broken
//! property, and the valid seeds its inputs start from.
//!
//! Two harnesses drive the same functions: the stable seeded mutation fuzzer
//! ([`crate::fuzz`], in every test run) and `cargo fuzz` (libFuzzer, coverage
//! guided, on the nightly toolchain: `fuzz/`, `scripts/fuzz-cargo.sh`). The
//! seed files under `fuzz/seeds/` are [`Target::seeds`] written out, and a
//! test keeps them equal.

use std::sync::LazyLock;

use ruma::{CanonicalJsonObject, OwnedServerName, RoomVersionId, room_version_rules::RoomVersionRules};
use serde_json::json;

use crate::{
    config::Config,
    federation::{inbound::Transaction, xmatrix},
    keys::ServerKeys,
    rooms::{Pdu, pdu::event_id_of},
    sync::parse_full_token,
    util::{valid_media_id, valid_server_name},
};

/// One fuzz target: a name (also its `cargo fuzz` binary and seed folder),
/// the seeds its inputs start from, and the check run on each input.
pub struct Target {
    /// `xmatrix`, `pdu`, …
    pub name: &'static str,
    /// Valid inputs of the format.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Panics on a crash or a broken property.
    pub check: fn(&[u8]),
}

/// Every engine target.
pub const TARGETS: &[Target] = &[XMATRIX, PDU, CANONICAL_JSON, IDS, CONFIG, GLOB, TRANSACTION];

fn texts(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// `Authorization: X-Matrix …` headers, then verified against a request and a key.
pub const XMATRIX: Target = Target {
    name: "xmatrix",
    seeds: || {
        texts(&[
            "X-Matrix origin=\"a.test\",destination=\"b.test\",key=\"ed25519:k\",sig=\"AAAA\"",
            "X-Matrix origin=a.test,key=\"ed25519:1\",sig=\"ZmFrZQ\"",
        ])
    },
    check: |input| {
        let header = String::from_utf8_lossy(input);
        if let Ok(x) = xmatrix::parse(&header) {
            let key = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ";
            let _ = xmatrix::verify_body(&x, key, "b.test", "PUT", "/_matrix/federation/v1/send/1", input);
            let _ = xmatrix::verify_body(&x, &header, "b.test", "GET", "/", b"");
        }
    },
};

static RULES: LazyLock<Vec<RoomVersionRules>> = LazyLock::new(|| {
    [RoomVersionId::V1, RoomVersionId::V3, RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12]
        .iter()
        .filter_map(RoomVersionId::rules)
        .collect()
});

static KEYS: LazyLock<Option<ServerKeys>> = LazyLock::new(|| {
    let server: OwnedServerName = "x.test".try_into().ok()?;
    ServerKeys::from_seed(server, "1", &[7; 32]).ok()
});

/// PDU JSON of every room version: event id, reference hash, redaction
/// (idempotent) and signing (what we sign, our key verifies).
pub const PDU: Target = Target {
    name: "pdu",
    seeds: || {
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
        vec![event.to_string().into_bytes(), state.to_string().into_bytes(), power.to_string().into_bytes()]
    },
    check: check_pdu,
};

fn check_pdu(input: &[u8]) {
    let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(input) else { return };
    for rules in RULES.iter() {
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
        if let Some(keys) = KEYS.as_ref()
            && pdu.sender.server_name() == "x.test"
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
}

/// JSON text: the canonical form round-trips and is a fixed point.
pub const CANONICAL_JSON: Target = Target {
    name: "canonical_json",
    seeds: || {
        texts(&[
            r#"{"b":[1,-2,{"c":null,"d":true}],"a":"\u00e9\n\"","e":{"":[]},"f":9007199254740991}"#,
            r#"{"content":{"body":"\ud83d\ude00","n":-9007199254740991},"x":[[[]]]}"#,
        ])
    },
    check: |input| {
        let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(input) else { return };
        let text = ruma::canonical_json::to_canonical_value(&object).map(|v| v.to_string());
        let Ok(text) = text else { return };
        let again: CanonicalJsonObject = match serde_json::from_str(&text) {
            Ok(again) => again,
            Err(e) => panic!("our canonical output {text:?} does not parse: {e}"),
        };
        assert_eq!(again, object, "canonical JSON did not round-trip");
        let twice = ruma::canonical_json::to_canonical_value(&again).map(|v| v.to_string());
        assert_eq!(twice.ok().as_deref(), Some(text.as_str()), "canonical form is not a fixed point");
    },
};

/// Server names, media ids, Matrix ids and sync tokens.
pub const IDS: Target = Target {
    name: "ids",
    seeds: || {
        texts(&[
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
        ])
    },
    check: |input| {
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
    },
};

/// The TOML configuration file: a config or an error, never a panic.
pub const CONFIG: Target = Target {
    name: "config",
    seeds: || {
        texts(&[r#"server_name = "a.example"
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
"#])
    },
    check: |input| {
        let text = String::from_utf8_lossy(input);
        let _ = Config::load_toml_str(&text, Vec::new());
    },
};

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

/// Server ACL and push-rule globs (`pattern\0subject`), against [`glob_reference`].
pub const GLOB: Target = Target {
    name: "glob",
    seeds: || texts(&["m.room.*\0m.room.message", "*a*b*\0xaybz", "ab*ba\0aba", "*\0", "a**\0aa", "é*é\0é"]),
    check: |input| {
        let text = String::from_utf8_lossy(input);
        let (pattern, subject) = text.split_once('\0').unwrap_or((&text, "m.room.message"));
        // The reference is quadratic: past 256 bytes only the matcher itself
        // runs (for panics and run time), or the fuzzer crawls.
        if text.len() > 256 {
            let _ = crate::filter::glob(pattern, subject);
            return;
        }
        assert_eq!(
            crate::filter::glob(pattern, subject),
            glob_reference(pattern, subject),
            "glob {pattern:?} on {subject:?}"
        );
    },
};

/// The body of a federation `/send`: a transaction or a 400, and what it takes
/// are the arrays the body holds.
pub const TRANSACTION: Target = Target {
    name: "transaction",
    seeds: || {
        let txn = json!({
            "origin": "b.test", "origin_server_ts": 1,
            "pdus": [{ "type": "m.room.message", "room_id": "!r:b.test", "sender": "@a:b.test", "content": { "body": "x" } }],
            "edus": [{ "edu_type": "m.typing", "content": { "room_id": "!r:b.test", "user_id": "@a:b.test", "typing": true } },
                     { "edu_type": "m.receipt", "content": { "!r:b.test": { "m.read": { "@a:b.test": { "event_ids": ["$e"], "data": { "ts": 1 } } } } } }]
        });
        vec![
            txn.to_string().into_bytes(),
            b"{\"pdus\":[],\"edus\":null}".to_vec(),
            br#"{"$serde_json::private::RawValue":"[1]"}"#.to_vec(),
        ]
    },
    check: |input| {
        let Ok(txn) = Transaction::from_body(input) else { return };
        assert_eq!(
            input.trim_ascii_start().first(),
            Some(&b'{'),
            "a transaction was read from a body that is not a JSON object"
        );
        // Not parsed as a `Value`: with serde_json's `raw_value` feature an
        // object whose only key is its private raw-value token reads as the
        // value it wraps (the 10M run's finding, see FUZZING.md).
        let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(input) else {
            panic!("a transaction was read from a body that is not a JSON object");
        };
        let count = |name: &str| object.get(name).and_then(|v| v.as_array()).map_or(0, Vec::len);
        assert_eq!((txn.pdus.len(), txn.edus.len()), (count("pdus"), count("edus")), "the transaction lost items");
    },
};
