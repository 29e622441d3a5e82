//! The API edge's fuzz targets (issue #22 §1), for what is parsed before any
//! handler logic: the media `Range` header, percent-encoded path segments and
//! every typed request body read by [`crate::http_util::parse_json`], each a
//! function of one input that panics on a crash or a broken property. The
//! stable seeded fuzzer (`fuzz_tests`) and `cargo fuzz` (`fuzz/`) drive them,
//! as for the engine's ([`myelin_engine::fuzz_targets`]).

use http::StatusCode;
use myelin_engine::{
    federation::serve::{InviteRequest, MissingEventsRequest},
    filter::only_fields,
    fuzz_targets::Target,
    sliding::Request as SlidingRequest,
};
use serde::de::DeserializeOwned;
use serde_json::{Value as JsonValue, json};

use crate::{
    error::ApiError,
    federation::e2ee::{KeysClaim, KeysQuery},
    http_util::{parse_json, parse_json_param, percent_decode},
    routes::{
        client::{
            account, devices, directory, e2ee, key_backup, profile, pushers, relations,
            rooms::{CreateRoomBody, membership, reports, upgrade},
            search,
            sync::{self, Filter},
        },
        keys,
        media::parse_range,
        synapse_admin,
    },
};

/// Every API target.
pub const TARGETS: &[Target] = &[RANGE, PERCENT, BODIES];

/// Media `Range` headers: every served range lies inside the file.
pub const RANGE: Target = Target {
    name: "range",
    seeds: || {
        ["bytes=0-99", "bytes=100-", "bytes=-500", "bytes=5-5", "bytes=0-18446744073709551615"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    },
    check: |input| {
        let header = String::from_utf8_lossy(input);
        for len in [0, 1, 100, 1_000, u64::MAX] {
            if let Some((start, end)) = parse_range(&header, len) {
                // A served range is a non-empty slice of the file: the 206
                // answer's `Content-Length` is `end - start + 1`.
                assert!(start <= end && end < len, "{header:?} on {len} bytes gave {start}-{end}");
            }
        }
    },
};

/// Percent-encoded path segments: decoding inverts `%XX` encoding.
pub const PERCENT: Target = Target {
    name: "percent_decode",
    seeds: || {
        ["%21room%3Aa.example", "%40alice%3Ab", "plain", "%E2%9C%93", "%zz", "%"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    },
    check: |input| {
        let Ok(text) = std::str::from_utf8(input) else { return };
        let _ = percent_decode(text);
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(percent_decode(&encoded).as_deref(), Some(text), "encoding {text:?} did not decode back");
    },
};

/// Reads `input` as `T` the way a handler does; a refusal must be a 400 the
/// client can read (`M_NOT_JSON` or `M_BAD_JSON`), never another status.
fn typed<T: DeserializeOwned>(input: &[u8]) -> Option<T> {
    match parse_json::<T>(input) {
        Ok(body) => Some(body),
        Err(ApiError { status, errcode, .. }) => {
            assert!(
                status == StatusCode::BAD_REQUEST && matches!(errcode, "M_NOT_JSON" | "M_BAD_JSON"),
                "a bad {} body answered {status} {errcode}",
                std::any::type_name::<T>()
            );
            None
        }
    }
}

/// Every typed request body, client, federation and admin alike: a typed
/// request or a 400, the `/sync` filter's matchers and `event_fields` run on
/// what parses, and what the typed reader takes serde_json takes too.
pub const BODIES: Target = Target { name: "bodies", seeds: body_seeds, check: check_bodies };

fn body_seeds() -> Vec<Vec<u8>> {
    let auth = json!({ "type": "m.login.password", "session": "s", "password": "p",
                       "identifier": { "type": "m.id.user", "user": "alice" } });
    let device_keys = json!({ "user_id": "@a:x.test", "device_id": "D", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                              "keys": { "ed25519:D": "k" }, "signatures": { "@a:x.test": { "ed25519:D": "s" } } });
    let seeds = [
        json!({
            "room": { "timeline": { "limit": 10, "types": ["m.room.*"], "not_senders": ["@b:x"], "contains_url": true },
                      "state": { "lazy_load_members": true }, "rooms": ["!r:x"], "include_leave": false },
            "presence": { "types": ["m.presence"] }, "event_fields": ["content.body", "type", "content.a\\.b"],
            "event_format": "client"
        }),
        json!({
            "visibility": "public", "room_alias_name": "chat", "name": "n", "topic": "t", "invite": ["@b:x.test"],
            "room_version": "11", "preset": "private_chat", "is_direct": true,
            "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }],
            "power_level_content_override": { "users_default": 10 }, "creation_content": { "m.federate": false }
        }),
        json!({
            "conn_id": "main", "txn_id": "1",
            "lists": { "all": { "ranges": [[0, 20]], "timeline_limit": 5, "required_state": [["m.room.member", "$LAZY"]],
                                "filters": { "is_dm": true } } },
            "room_subscriptions": { "!r:x.test": { "timeline_limit": 1, "required_state": [["*", "*"]] } },
            "extensions": { "to_device": { "enabled": true, "since": "3" }, "e2ee": { "enabled": true },
                            "typing": { "enabled": true, "lists": ["all"] } }
        }),
        json!({ "username": "alice", "password": "p", "auth": auth, "device_id": "D",
                "initial_device_display_name": "phone", "inhibit_login": false, "refresh_token": true }),
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "p",
                "device_id": "D", "initial_device_display_name": "phone" }),
        json!({ "new_password": "q", "logout_devices": false, "auth": auth }),
        json!({ "auth": auth, "erase": true, "id_server": "id.x" }),
        json!({ "messages": { "@a:x.test": { "D": { "body": "x" }, "*": { "n": 1 } } } }),
        json!({ "device_keys": device_keys, "one_time_keys": { "signed_curve25519:A": { "key": "k" } },
                "fallback_keys": { "signed_curve25519:B": { "key": "k", "fallback": true } } }),
        json!({ "device_keys": { "@a:x.test": ["D"], "@b:y.test": [] }, "timeout": 10000 }),
        json!({ "one_time_keys": { "@a:x.test": { "D": "signed_curve25519" } }, "timeout": 10000 }),
        json!({ "master_key": { "user_id": "@a:x.test", "usage": ["master"], "keys": { "ed25519:M": "M" } },
                "self_signing_key": { "usage": ["self_signing"] }, "auth": auth }),
        json!({ "pushkey": "k", "kind": "http", "app_id": "im.app", "app_display_name": "App", "device_display_name": "phone",
                "lang": "en", "data": { "url": "http://p.x/_matrix/push/v1/notify", "format": "event_id_only" }, "append": false }),
        json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "k" }, "version": "1" }),
        json!({ "rooms": { "!r:x.test": { "sessions": { "S": { "first_message_index": 0, "forwarded_count": 1,
                "is_verified": true, "session_data": { "ciphertext": "c" } } } } } }),
        json!({ "search_term": "ali", "limit": 10 }),
        json!({ "search_categories": { "room_events": { "search_term": "hi", "keys": ["content.body"], "order_by": "recent",
                "filter": { "limit": 5 }, "event_context": { "before_limit": 1 } } } }),
        json!({ "reason": "spam", "score": -100 }),
        json!({ "new_version": "12", "additional_creators": ["@b:x.test"] }),
        json!({ "user_id": "@b:x.test", "reason": "bye" }),
        json!({ "display_name": "phone", "room_id": "!r:x.test" }),
        json!({ "device_keys": { "@a:x.test": [] }, "one_time_keys": { "@a:x.test": { "D": "signed_curve25519" } } }),
        json!({ "server_keys": { "x.test": { "ed25519:k": { "minimum_valid_until_ts": 1 } } } }),
        json!({ "nonce": "n", "username": "u", "password": "p", "admin": true, "displayname": "U", "mac": "00" }),
        json!({ "password": "p", "displayname": null, "avatar_url": "mxc://x/y", "admin": false, "deactivated": false,
                "threepids": [{ "medium": "email", "address": "a@x" }] }),
        json!({ "new_room_user_id": "@a:x.test", "block": true, "purge": true, "message": "m", "erase": true }),
        json!({ "limit": 10, "min_depth": 0, "earliest_events": ["$a"], "latest_events": ["$b"] }),
        json!({ "room_version": "11", "event": { "type": "m.room.member", "content": { "membership": "invite" } },
                "invite_room_state": [] }),
    ];
    seeds.iter().map(|s| s.to_string().into_bytes()).collect()
}

fn check_bodies(input: &[u8]) {
    let event =
        json!({ "type": "m.room.message", "content": { "body": "hi", "a.b": 1, "n": { "x": [1] } }, "sender": "@a:x" });
    // Every typed reader first parses the bytes as one JSON object: where
    // that fails, one reader's answer stands for all of them (and the rest
    // would only slow the fuzzer down).
    if !serde_json::from_slice::<JsonValue>(input).is_ok_and(|v| v.is_object()) {
        assert!(typed::<CreateRoomBody>(input).is_none(), "a body that is no JSON object was taken");
        return;
    }
    if let Some(filter) = typed::<Filter>(input) {
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
    typed::<CreateRoomBody>(input);
    typed::<SlidingRequest>(input);
    typed::<account::RegisterBody>(input);
    typed::<account::LoginBody>(input);
    typed::<account::PasswordBody>(input);
    typed::<account::DeactivateBody>(input);
    typed::<sync::ToDeviceBody>(input);
    typed::<e2ee::UploadBody>(input);
    typed::<e2ee::QueryBody>(input);
    typed::<e2ee::ClaimBody>(input);
    typed::<e2ee::CrossSigningBody>(input);
    typed::<pushers::SetBody>(input);
    typed::<key_backup::CreateBody>(input);
    typed::<key_backup::UpdateBody>(input);
    typed::<key_backup::KeyBackupData>(input);
    typed::<key_backup::RoomKeysBody>(input);
    typed::<key_backup::AllKeysBody>(input);
    typed::<profile::SearchBody>(input);
    typed::<search::SearchBody>(input);
    typed::<reports::ReportBody>(input);
    typed::<relations::RedactBody>(input);
    typed::<upgrade::UpgradeBody>(input);
    typed::<membership::TargetBody>(input);
    typed::<membership::ReasonBody>(input);
    typed::<devices::RenameBody>(input);
    typed::<directory::CreateBody>(input);
    typed::<KeysQuery>(input);
    typed::<KeysClaim>(input);
    typed::<keys::QueryBody>(input);
    typed::<synapse_admin::register::RegisterBody>(input);
    typed::<synapse_admin::users::PutUser>(input);
    typed::<synapse_admin::users::DeactivateBody>(input);
    typed::<synapse_admin::users::ResetPasswordBody>(input);
    typed::<synapse_admin::users::SetAdminBody>(input);
    typed::<synapse_admin::rooms::DeleteBody>(input);
    typed::<synapse_admin::server::EnabledBody>(input);
    typed::<synapse_admin::room_ops::UserBody>(input);
    typed::<synapse_admin::tokens::TokenBody>(input);
    typed::<synapse_admin::room_ops::LoginAsBody>(input);
    typed::<synapse_admin::server::StartJobBody>(input);
    typed::<MissingEventsRequest>(input);
    typed::<InviteRequest>(input);
    // Whatever the typed reader takes as a plain document, serde_json takes too.
    if let Some(value) = typed::<JsonValue>(input) {
        assert!(value.is_object());
        assert!(serde_json::from_slice::<JsonValue>(input).is_ok());
    }
}
