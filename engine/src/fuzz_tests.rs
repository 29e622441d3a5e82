//! Randomised hostile input for the parsers that strangers reach (issue #22):
//! the `X-Matrix` header, request verification, and PDUs from JSON. Each
//! input is a seeded mutation of a valid one; any panic fails the test and
//! prints the seed and input. A stand-in for `cargo fuzz`, which needs a
//! nightly toolchain this project does not have: it runs on stable in CI.
//! `MYELIN_FUZZ_ITERS` raises the iteration count for a longer local run.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::json;

use crate::{federation::xmatrix, rooms::Pdu};

/// A small, seeded generator: the same seed gives the same inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that tend to reach corners of JSON and header parsers.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    ",",
    "=",
    ":",
    "{",
    "}",
    "[",
    "]",
    "null",
    "true",
    "-1",
    "1e999",
    "9007199254740993",
    "\u{0}",
    "\u{feff}",
    "é",
    "X-Matrix ",
    "origin",
    "sig",
    "key",
    "ed25519:",
    "\"\"",
    "{}",
    "[]",
    "\\u0000",
    "\\ud800",
];

fn iterations() -> usize {
    std::env::var("MYELIN_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 => out.truncate(at),
            _ => {
                // Repeat a slice: deep nesting, long strings.
                let end = (at + rng.below(16)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
        }
    }
    out
}

/// Runs `target` on `iterations()` mutations of each seed; fails on the first panic.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for n in 0..iterations() {
        let seed = &seeds[n % seeds.len()];
        let input = mutate(&mut rng, seed);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name}: iteration {n} panicked on {:?}", String::from_utf8_lossy(&input));
        }
    }
}

#[test]
fn x_matrix_headers_and_request_verification_never_panic() {
    let seeds = vec![
        b"X-Matrix origin=\"a.test\",destination=\"b.test\",key=\"ed25519:k\",sig=\"AAAA\"".to_vec(),
        b"X-Matrix origin=a.test,key=\"ed25519:1\",sig=\"ZmFrZQ\"".to_vec(),
    ];
    fuzz("xmatrix", &seeds, |input| {
        let header = String::from_utf8_lossy(input);
        if let Ok(x) = xmatrix::parse(&header) {
            let key = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ";
            let _ = xmatrix::verify_body(&x, key, "b.test", "PUT", "/_matrix/federation/v1/send/1", input);
            let _ = xmatrix::verify_body(&x, &header, "b.test", "GET", "/", b"");
        }
    });
}

#[test]
fn pdus_from_hostile_json_never_panic() {
    let event = json!({
        "type": "m.room.message", "room_id": "!r:x.test", "sender": "@a:x.test",
        "content": { "msgtype": "m.text", "body": "hi", "m.relates_to": { "rel_type": "m.replace", "event_id": "$e" } },
        "origin_server_ts": 1, "depth": 2, "prev_events": ["$p"], "auth_events": ["$a", "$b"],
        "hashes": { "sha256": "AAAA" }, "signatures": { "x.test": { "ed25519:k": "AAAA" } },
        "unsigned": { "age": 1 }
    });
    let state = json!({
        "type": "m.room.member", "state_key": "@a:x.test", "room_id": "!r:x.test", "sender": "@a:x.test",
        "content": { "membership": "join" }, "origin_server_ts": 1, "depth": 1, "prev_events": [],
        "auth_events": [], "redacts": "$x", "hashes": { "sha256": "AAAA" }, "signatures": {}
    });
    let seeds = vec![event.to_string().into_bytes(), state.to_string().into_bytes()];
    let versions: Vec<_> =
        [RoomVersionId::V1, RoomVersionId::V3, RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12]
            .iter()
            .filter_map(RoomVersionId::rules)
            .collect();
    fuzz("pdu", &seeds, |input| {
        let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(input) else { return };
        for rules in &versions {
            if let Ok(pdu) = Pdu::from_object(object.clone(), rules) {
                let _ = serde_json::to_string(&*pdu.json);
            }
        }
        let _ = xmatrix::canonical_body(&serde_json::from_slice(input).unwrap_or_default());
    });
}
