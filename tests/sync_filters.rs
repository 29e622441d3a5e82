//! Filters as `/sync`, `/messages` and `/context` apply them (Client-Server API
//! §"Filtering"): type globs, senders, rooms, `contains_url`, `event_fields`,
//! `event_format: federation`, lazy-loading flags that must be booleans, and
//! redundant member events left out across incremental syncs.

use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

async fn sync_with(c: &Client, since: Option<&str>, filter: &Value) -> Value {
    let filter = enc(&filter.to_string());
    let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
    c.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={filter}{since}")).await
}

fn timeline<'a>(sync: &'a Value, room: &str) -> &'a [Value] {
    sync["rooms"]["join"][room]["timeline"]["events"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn bodies(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["content"]["body"].as_str()).collect()
}

async fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await;
}

async fn send(c: &Client, room: &str, kind: &str, content: Value) -> String {
    let txn = format!("f{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let r = c.put(&format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)), content).await;
    r["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_filters_select_types_senders_rooms_urls_and_fields() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    alice.send_text(&room, "from alice").await;
    bob.send_text(&room, "from bob").await;
    send(&alice, &room, "m.room.message", json!({ "msgtype": "m.image", "body": "pic", "url": "mxc://x/y" })).await;
    send(&alice, &room, "org.example.custom", json!({ "body": "custom" })).await;
    alice.send_text(&other, "elsewhere").await;

    let run = |filter: Value| {
        let alice = alice.clone();
        async move { sync_with(&alice, None, &filter).await }
    };
    let t = |f: Value| json!({ "room": { "timeline": f } });

    let got = run(t(json!({ "types": ["m.room.mess*"] }))).await;
    assert_eq!(bodies(timeline(&got, &room)), vec!["from alice", "from bob", "pic"], "type glob");
    let got = run(t(json!({ "types": ["*.custom", "m.room.message"], "not_types": ["m.room.message"] }))).await;
    assert_eq!(bodies(timeline(&got, &room)), vec!["custom"], "not_types wins");
    let got = run(t(json!({ "types": ["m.room.message"], "senders": [bob.user_id] }))).await;
    assert_eq!(bodies(timeline(&got, &room)), vec!["from bob"], "senders");
    let got = run(t(json!({ "types": ["m.room.message"], "not_senders": [bob.user_id] }))).await;
    assert_eq!(bodies(timeline(&got, &room)), vec!["from alice", "pic"], "not_senders");
    let got = run(t(json!({ "contains_url": true }))).await;
    assert_eq!(bodies(timeline(&got, &room)), vec!["pic"], "contains_url");
    let got = run(t(json!({ "types": ["m.room.message"], "contains_url": false }))).await;
    assert_eq!(bodies(timeline(&got, &room)), vec!["from alice", "from bob"], "contains_url false");

    // Room rules: the whole room, or only its timeline.
    let got = run(json!({ "room": { "rooms": [other] } })).await;
    assert!(got["rooms"]["join"].get(&room).is_none() && got["rooms"]["join"].get(&other).is_some(), "{got}");
    let got = run(json!({ "room": { "not_rooms": [other] } })).await;
    assert!(got["rooms"]["join"].get(&other).is_none() && got["rooms"]["join"].get(&room).is_some());

    // State filter: only the types asked for.
    let got = run(json!({ "room": { "state": { "types": ["m.room.create"] }, "timeline": { "limit": 1 } } })).await;
    let state = got["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    assert!(!state.is_empty() && state.iter().all(|e| e["type"] == "m.room.create"), "{state:?}");

    // event_fields: only those fields of every event.
    let got = run(
        json!({ "event_fields": ["type", "content.body"], "room": { "timeline": { "types": ["m.room.message"] } } }),
    )
    .await;
    let first = &timeline(&got, &room)[0];
    assert_eq!(first, &json!({ "type": "m.room.message", "content": { "body": "from alice" } }), "{first}");

    // event_format federation: the PDU with its hashes, signatures and prev events.
    let got = run(json!({ "event_format": "federation", "room": { "timeline": { "limit": 1 } } })).await;
    let pdu = &timeline(&got, &other)[0];
    for key in ["room_id", "prev_events", "auth_events", "hashes", "signatures", "depth", "event_id"] {
        assert!(pdu.get(key).is_some(), "{key} in a federation-format event: {pdu}");
    }
    let got = run(json!({ "event_format": "client", "room": { "timeline": { "limit": 1 } } })).await;
    assert!(timeline(&got, &other)[0].get("hashes").is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loading_flags_must_be_booleans() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for bad in [
        json!({ "room": { "state": { "lazy_load_members": "true" } } }),
        json!({ "room": { "state": { "include_redundant_members": 1 } } }),
        json!({ "room": { "timeline": { "lazy_load_members": "yes" } } }),
        json!({ "room": { "rooms": "!a:b" } }),
        json!({ "event_format": "xml" }),
        json!({ "event_fields": "type" }),
    ] {
        let inline = format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&bad.to_string()));
        let r = alice.request(http::Method::GET, &inline, None).await;
        assert_eq!(r.status, 400, "inline {bad}");
        let upload = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
        let r = alice.request(http::Method::POST, &upload, Some(bad.clone())).await;
        assert_eq!((r.status.as_u16(), r.errcode()), (400, "M_BAD_JSON".to_owned()), "upload {bad}");
    }
    // /messages and /context take a RoomEventFilter.
    let event = alice.send_text(&room, "x").await;
    for bad in [
        json!({ "lazy_load_members": "true" }),
        json!({ "include_redundant_members": 1 }),
        json!({ "types": "m.room.message" }),
        json!({ "contains_url": "yes" }),
        json!([]),
    ] {
        let filter = enc(&bad.to_string());
        let messages = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&filter={filter}", enc(&room));
        let r = alice.request(http::Method::GET, &messages, None).await;
        assert_eq!(r.status, 400, "/messages {bad}");
        let context = format!("/_matrix/client/v3/rooms/{}/context/{}?filter={filter}", enc(&room), enc(&event));
        let r = alice.request(http::Method::GET, &context, None).await;
        assert_eq!(r.status, 400, "/context {bad}");
    }
    let r = alice
        .request(http::Method::GET, &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=ten", enc(&room)), None)
        .await;
    assert_eq!((r.status.as_u16(), r.errcode()), (400, "M_INVALID_PARAM".to_owned()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_context_apply_the_filter_and_lazy_load_members() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    join(&carol, &room).await;
    alice.send_text(&room, "a1").await;
    let middle = bob.send_text(&room, "b1").await;
    alice.send_text(&room, "a2").await;

    let filter = json!({ "types": ["m.room.message"], "not_senders": [carol.user_id], "lazy_load_members": true });
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&filter={}",
            enc(&room),
            enc(&filter.to_string())
        ))
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(bodies(chunk), vec!["a2", "b1", "a1"], "{page}");
    let mut members: Vec<&str> =
        page["state"].as_array().unwrap().iter().filter_map(|e| e["state_key"].as_str()).collect();
    members.sort();
    let mut want = vec![alice.user_id.as_str(), bob.user_id.as_str()];
    want.sort();
    assert_eq!(members, want, "members of the chunk's senders: {page}");

    let filter = json!({ "senders": [alice.user_id], "lazy_load_members": true });
    let ctx = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}?limit=10&filter={}",
            enc(&room),
            enc(&middle),
            enc(&filter.to_string())
        ))
        .await;
    assert_eq!(ctx["event"]["event_id"], middle.as_str());
    let around: Vec<&str> = ctx["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .chain(ctx["events_after"].as_array().unwrap())
        .filter_map(|e| e["sender"].as_str())
        .collect();
    assert!(!around.is_empty() && around.iter().all(|s| *s == alice.user_id.as_str()), "{ctx}");
    let members: Vec<&str> = ctx["state"].as_array().unwrap().iter().filter_map(|e| e["state_key"].as_str()).collect();
    assert!(members.contains(&bob.user_id.as_str()) && members.contains(&alice.user_id.as_str()), "{ctx}");
    assert!(!members.contains(&carol.user_id.as_str()), "carol sent nothing shown: {ctx}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_members_are_not_resent_unless_asked() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    bob.send_text(&room, "hello").await;
    let lazy = |redundant: bool| json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true, "include_redundant_members": redundant } } });
    let members = |sync: &Value| -> Vec<String> {
        sync["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|evs| {
                evs.iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = sync_with(&alice, None, &lazy(false)).await;
    assert!(members(&first).contains(&bob.user_id), "{first}");
    // Bob speaks again after a gap: alice's device already has his member event.
    let token = first["next_batch"].as_str().unwrap().to_owned();
    bob.send_text(&room, "again").await;
    bob.send_text(&room, "and again").await;
    let next = sync_with(&alice, Some(&token), &lazy(false)).await;
    assert_eq!(timeline(&next, &room).len(), 1);
    assert!(!members(&next).contains(&bob.user_id), "redundant: {next}");
    let with = sync_with(&alice, Some(&token), &lazy(true)).await;
    assert!(members(&with).contains(&bob.user_id), "include_redundant_members: {with}");
    s.stop().await;
}
