//! Hostile input for what the API edge parses before any handler logic
//! (issue #22 §1), through the engine's seeded mutation fuzzer
//! ([`myelin_engine::fuzz`]): the media `Range` header, percent-encoded path
//! segments and typed request bodies read by [`crate::http_util::parse_json`]
//! (the `/sync` filter, `createRoom`, sliding sync), each checked for a
//! property as well as for panics.

use myelin_engine::{filter::only_fields, fuzz::fuzz, sliding::Request as SlidingRequest};
use serde_json::{Value as JsonValue, json};

use crate::{
    http_util::{parse_json, parse_json_param, percent_decode},
    routes::{client::rooms::CreateRoomBody, client::sync::Filter, media::parse_range},
};

/// Inputs per target in a default (CI) run; `MYELIN_FUZZ_ITERS` overrides.
const CI_INPUTS: usize = 20_000;

#[test]
fn range_headers_never_panic_and_stay_inside_the_file() {
    let seeds: Vec<Vec<u8>> = ["bytes=0-99", "bytes=100-", "bytes=-500", "bytes=5-5", "bytes=0-18446744073709551615"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("range", CI_INPUTS, &seeds, |input| {
        let header = String::from_utf8_lossy(input);
        for len in [0, 1, 100, 1_000, u64::MAX] {
            if let Some((start, end)) = parse_range(&header, len) {
                // A served range is a non-empty slice of the file: the 206
                // answer's `Content-Length` is `end - start + 1`.
                assert!(start <= end && end < len, "{header:?} on {len} bytes gave {start}-{end}");
            }
        }
    });
}

#[test]
fn percent_decoding_never_panics_and_inverts_encoding() {
    let seeds: Vec<Vec<u8>> = ["%21room%3Aa.example", "%40alice%3Ab", "plain", "%E2%9C%93", "%zz", "%"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("percent_decode", CI_INPUTS, &seeds, |input| {
        let Ok(text) = std::str::from_utf8(input) else { return };
        let _ = percent_decode(text);
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(percent_decode(&encoded).as_deref(), Some(text), "encoding {text:?} did not decode back");
    });
}

#[test]
fn typed_request_bodies_never_panic() {
    let filter = json!({
        "room": { "timeline": { "limit": 10, "types": ["m.room.*"], "not_senders": ["@b:x"], "contains_url": true },
                  "state": { "lazy_load_members": true }, "rooms": ["!r:x"], "include_leave": false },
        "presence": { "types": ["m.presence"] }, "event_fields": ["content.body", "type", "content.a\\.b"],
        "event_format": "client"
    });
    let create = json!({
        "visibility": "public", "room_alias_name": "chat", "name": "n", "topic": "t", "invite": ["@b:x.test"],
        "room_version": "11", "preset": "private_chat", "is_direct": true,
        "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }],
        "power_level_content_override": { "users_default": 10 }, "creation_content": { "m.federate": false }
    });
    let sliding = json!({
        "conn_id": "main", "txn_id": "1",
        "lists": { "all": { "ranges": [[0, 20]], "timeline_limit": 5, "required_state": [["m.room.member", "$LAZY"]],
                            "filters": { "is_dm": true } } },
        "room_subscriptions": { "!r:x.test": { "timeline_limit": 1, "required_state": [["*", "*"]] } },
        "extensions": { "to_device": { "enabled": true, "since": "3" }, "e2ee": { "enabled": true },
                        "typing": { "enabled": true, "lists": ["all"] } }
    });
    let event =
        json!({ "type": "m.room.message", "content": { "body": "hi", "a.b": 1, "n": { "x": [1] } }, "sender": "@a:x" });
    let seeds =
        vec![filter.to_string().into_bytes(), create.to_string().into_bytes(), sliding.to_string().into_bytes()];
    fuzz("bodies", CI_INPUTS, &seeds, |input| {
        if let Ok(filter) = parse_json::<Filter>(input) {
            if let Some(timeline) = filter.room.as_ref().and_then(|r| r.timeline.as_ref()) {
                let engine = timeline.to_engine();
                let _ = engine.passes("m.room.message", "@a:x");
                let _ = engine.allows_room("!r:x");
            }
            if let Some(fields) = &filter.event_fields {
                let kept = only_fields(&event, fields);
                assert!(kept.is_object(), "only_fields gave {kept}");
            }
        }
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = parse_json_param::<Filter>("filter", text);
        }
        let _ = parse_json::<CreateRoomBody>(input);
        let _ = parse_json::<SlidingRequest>(input);
        // Whatever the typed reader takes as a plain document, serde_json takes too.
        if let Ok(value) = parse_json::<JsonValue>(input) {
            assert!(value.is_object());
            assert!(serde_json::from_slice::<JsonValue>(input).is_ok());
        }
    });
}
