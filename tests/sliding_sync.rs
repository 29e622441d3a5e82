//! Simplified sliding sync (MSC4186) over real HTTP, as Element X's engine uses it:
//! lists sorted by recency with ranges, required-state rules, incremental answers,
//! long-polls, invites and leaves, filters, extensions, unknown positions and bad input.

use std::time::Duration;

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc, http};
use serde_json::{Value, json};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const V3: &str = "/_matrix/client/v3";

fn path(pos: Option<&str>, timeout: u64) -> String {
    match pos {
        Some(p) => format!("{SS}?pos={}&timeout={timeout}", enc(p)),
        None => format!("{SS}?timeout={timeout}"),
    }
}

/// One sliding-sync request, expecting 200.
async fn ss(c: &Client, pos: Option<&str>, timeout: u64, body: &Value) -> Value {
    c.post(&path(pos, timeout), body.clone()).await
}

fn pos_of(r: &Value) -> String {
    r["pos"].as_str().expect("pos is a string").to_owned()
}

/// The rooms of an answer, most recent first by bump stamp.
fn by_recency(r: &Value) -> Vec<String> {
    let mut rooms: Vec<(i64, String)> = r["rooms"]
        .as_object()
        .map(|m| m.iter().map(|(id, v)| (v["bump_stamp"].as_i64().unwrap_or(0), id.clone())).collect())
        .unwrap_or_default();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, id)| id).collect()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn state_types(room: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = room["required_state"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|e| {
                    (e["type"].as_str().unwrap_or("").to_owned(), e["state_key"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn list(ranges: Value, timeline_limit: u64, required_state: Value) -> Value {
    json!({ "lists": { "all": { "ranges": ranges, "timeline_limit": timeline_limit, "required_state": required_state } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_advertise_it_and_auth_metadata_sends_clients_to_password_login() {
    let s = TestServer::open("localhost").await;
    let r = http(s.client, Method::GET, "/_matrix/client/versions", None).await;
    assert_eq!(r.json()["unstable_features"]["org.matrix.simplified_msc3575"], true);
    for p in ["/_matrix/client/v1/auth_metadata", "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"] {
        let r = http(s.client, Method::GET, p, None).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_UNRECOGNIZED"), "{p}");
    }
    // Password login is what the client falls back to.
    let r = http(s.client, Method::GET, "/_matrix/client/v3/login", None).await;
    assert!(r.json()["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"));
    // Without a token: 401.
    let r = http(s.client, Method::POST, SS, Some(b"{}")).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_is_sorted_by_recency_and_a_range_is_a_window_on_it() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let mut rooms = Vec::new();
    for n in 0..5 {
        rooms.push(alice.create_room(json!({ "name": format!("room {n}") })).await);
    }
    // Messages in the order 2, 0, 4, 1, 3: room 3 is the most recent.
    for n in [2, 0, 4, 1, 3] {
        alice.send_text(&rooms[n], &format!("hello {n}")).await;
    }
    // State events that do not bump (a topic) leave the order alone.
    alice.put(&format!("{V3}/rooms/{}/state/m.room.topic/", enc(&rooms[2])), json!({ "topic": "t" })).await;

    let r = ss(&alice, None, 0, &list(json!([[0, 2]]), 1, json!([["m.room.name", ""]]))).await;
    assert_eq!(r["lists"]["all"]["count"], 5);
    assert_eq!(by_recency(&r), vec![rooms[3].clone(), rooms[1].clone(), rooms[4].clone()]);
    let top = &r["rooms"][&rooms[3]];
    assert_eq!(top["initial"], true);
    assert_eq!(top["name"], "room 3");
    assert_eq!(bodies(top), vec!["hello 3"]);
    assert_eq!(top["limited"], true, "the room has more than one event");
    assert!(top["prev_batch"].is_string());
    assert_eq!(top["joined_count"], 1);
    assert_eq!(state_types(top), vec![("m.room.name".to_owned(), String::new())]);
    // The window further down.
    let r = ss(&alice, None, 0, &list(json!([[3, 10]]), 1, json!([]))).await;
    assert_eq!(by_recency(&r), vec![rooms[0].clone(), rooms[2].clone()]);
    // prev_batch pages back with /messages.
    let prev = r["rooms"][&rooms[2]]["prev_batch"].as_str().unwrap().to_owned();
    let page = alice.get(&format!("{V3}/rooms/{}/messages?dir=b&from={prev}&limit=50", enc(&rooms[2]))).await;
    let types: Vec<&str> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"m.room.create"), "paging back reaches the room's start: {types:?}");
    assert!(!types.contains(&"m.room.topic"), "the timeline's own events are not repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_answer_carries_only_the_news_and_a_long_poll_wakes_for_it() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let a = alice.create_room(json!({ "name": "a" })).await;
    let b = alice.create_room(json!({ "name": "b" })).await;
    alice.send_text(&a, "old").await;
    let req = list(json!([[0, 9]]), 5, json!([["m.room.name", ""], ["m.room.topic", ""]]));
    let first = ss(&alice, None, 0, &req).await;
    assert_eq!(first["rooms"].as_object().unwrap().len(), 2);
    let pos = pos_of(&first);

    // Nothing new: an empty answer once the (short) timeout passes.
    let quiet = ss(&alice, Some(&pos), 300, &req).await;
    assert!(quiet["rooms"].as_object().is_none_or(|m| m.is_empty()), "{quiet}");
    assert_eq!(quiet["lists"]["all"]["count"], 2);

    // A long-poll from the first position wakes when a message arrives.
    let waiter = {
        let (alice, req, pos) = (alice.clone(), req.clone(), pos.clone());
        tokio::spawn(async move { ss(&alice, Some(&pos), 20_000, &req).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send_text(&b, "new in b").await;
    let woke = tokio::time::timeout(Duration::from_secs(15), waiter).await.expect("the long-poll answers").unwrap();
    let rooms = woke["rooms"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![&b], "only the room with news: {woke}");
    let room = &rooms[&b];
    assert_eq!(bodies(room), vec!["new in b"]);
    assert_eq!(room["num_live"], 1);
    assert!(room.get("initial").is_none(), "not the first time: {room}");
    assert!(room.get("name").is_none(), "an unchanged name is not sent again");
    assert!(room["required_state"].as_array().is_none_or(|s| s.is_empty()));
    assert!(room["bump_stamp"].as_i64().unwrap() > first["rooms"][&a]["bump_stamp"].as_i64().unwrap());

    // A state change the rules ask for comes as required state, one they do not ask for does not.
    let pos = pos_of(&woke);
    alice.put(&format!("{V3}/rooms/{}/state/m.room.topic/", enc(&a)), json!({ "topic": "new topic" })).await;
    alice.put(&format!("{V3}/rooms/{}/state/m.room.join_rules/", enc(&a)), json!({ "join_rule": "public" })).await;
    let next = ss(&alice, Some(&pos), 5_000, &req).await;
    let room = &next["rooms"][&a];
    assert_eq!(state_types(room), vec![("m.room.topic".to_owned(), String::new())], "{room}");
    assert_eq!(room["required_state"][0]["content"]["topic"], "new topic");
    // A name change is sent as the room's name.
    let pos = pos_of(&next);
    alice.put(&format!("{V3}/rooms/{}/state/m.room.name/", enc(&a)), json!({ "name": "renamed" })).await;
    let next = ss(&alice, Some(&pos), 5_000, &req).await;
    assert_eq!(next["rooms"][&a]["name"], "renamed");

    // A retry of an answer that was lost: the older position is still served, with the same news.
    let again = ss(&alice, Some(&pos), 0, &req).await;
    assert_eq!(again["rooms"][&a]["name"], "renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_state_rules_select_state_by_type_key_wildcards_me_and_lazy() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = alice.create_room(json!({ "name": "r", "topic": "t", "preset": "public_chat" })).await;
    for c in [&bob, &carol] {
        c.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    }
    bob.send_text(&room, "from bob").await;
    let one = |rules: Value| list(json!([[0, 0]]), 1, rules);
    let members = |r: &Value| -> Vec<String> {
        state_types(&r["rooms"][&room]).into_iter().filter(|(t, _)| t == "m.room.member").map(|(_, k)| k).collect()
    };

    let all = ss(&carol, None, 0, &one(json!([["*", "*"]]))).await;
    let types = state_types(&all["rooms"][&room]);
    for t in ["m.room.create", "m.room.power_levels", "m.room.name", "m.room.topic", "m.room.join_rules"] {
        assert!(types.iter().any(|(k, _)| k == t), "{t} in {types:?}");
    }
    assert_eq!(members(&all).len(), 3);

    let me = ss(&carol, None, 0, &one(json!([["m.room.member", "$ME"]]))).await;
    assert_eq!(members(&me), vec![carol.user_id.clone()]);

    // $LAZY: the members who sent the timeline's events (bob's message).
    let lazy = ss(&carol, None, 0, &one(json!([["m.room.member", "$LAZY"], ["m.room.topic", ""]]))).await;
    assert_eq!(members(&lazy), vec![bob.user_id.clone()]);
    assert!(state_types(&lazy["rooms"][&room]).contains(&("m.room.topic".to_owned(), String::new())));

    let typed = ss(&carol, None, 0, &one(json!([["m.room.member", "*"]]))).await;
    assert_eq!(members(&typed).len(), 3);
    assert!(state_types(&typed["rooms"][&room]).iter().all(|(t, _)| t == "m.room.member"));

    let exact =
        ss(&carol, None, 0, &one(json!([["m.room.member", alice.user_id.clone()], ["m.room.nothing", ""]]))).await;
    assert_eq!(members(&exact), vec![alice.user_id.clone()]);

    // No name: heroes name the room; the viewer is never one of them.
    let dm = alice.create_room(json!({ "invite": [bob.user_id.clone()], "is_direct": true })).await;
    bob.post(&format!("{V3}/join/{}", enc(&dm)), json!({})).await;
    let r = ss(&bob, None, 0, &json!({ "room_subscriptions": { dm.clone(): { "timeline_limit": 0 } } })).await;
    let heroes = r["rooms"][&dm]["heroes"].as_array().unwrap();
    assert_eq!(heroes.len(), 1, "{heroes:?}");
    assert_eq!(heroes[0]["user_id"], alice.user_id.as_str());
    assert!(r["rooms"][&dm].get("name").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_joins_and_kicks_reach_the_invitee_list() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "name": "party" })).await;
    alice.send_text(&room, "before the invite").await;
    let req = json!({ "lists": {
        "all": { "ranges": [[0, 9]], "timeline_limit": 5, "required_state": [] },
        "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": { "is_invite": true } },
    }});
    let first = ss(&bob, None, 0, &req).await;
    assert_eq!(first["lists"]["all"]["count"], 0);
    let pos = pos_of(&first);

    alice.post(&format!("{V3}/rooms/{}/invite", enc(&room)), json!({ "user_id": bob.user_id })).await;
    let invited = ss(&bob, Some(&pos), 5_000, &req).await;
    assert_eq!(invited["lists"]["invites"]["count"], 1);
    assert_eq!(invited["lists"]["all"]["count"], 1);
    let r = &invited["rooms"][&room];
    assert_eq!(r["initial"], true);
    assert_eq!(r["name"], "party");
    let stripped = r["invite_state"].as_array().expect("invite_state");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));
    assert!(r["timeline"].as_array().is_none_or(|t| t.is_empty()), "an invite shows no history: {r}");

    bob.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    let joined = ss(&bob, Some(&pos_of(&invited)), 5_000, &req).await;
    assert_eq!(joined["lists"]["invites"]["count"], 0);
    let r = &joined["rooms"][&room];
    assert_eq!(r["initial"], true, "joining shows the room afresh: {r}");
    assert!(r.get("invite_state").is_none());
    let types: Vec<&str> = r["timeline"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.last(), Some(&"m.room.member"), "the join ends the timeline: {types:?}");

    alice.post(&format!("{V3}/rooms/{}/kick", enc(&room)), json!({ "user_id": bob.user_id })).await;
    let kicked = ss(&bob, Some(&pos_of(&joined)), 5_000, &req).await;
    let r = &kicked["rooms"][&room];
    let last = r["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["type"].as_str(), last["content"]["membership"].as_str()), (Some("m.room.member"), Some("leave")));
    // After a kick, nothing more of the room: alice's next message does not reach bob.
    alice.send_text(&room, "after the kick").await;
    let after = ss(&bob, Some(&pos_of(&kicked)), 500, &req).await;
    assert!(after["rooms"].get(&room).is_none(), "{after}");
    // A kicked user still sees the room listed on a fresh connection (as Synapse).
    let fresh = ss(&bob, None, 0, &req).await;
    assert_eq!(fresh["lists"]["all"]["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_dms_encrypted_rooms_spaces_and_room_types() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let dm = alice.create_room(json!({ "invite": [bob.user_id.clone()], "is_direct": true })).await;
    let secret = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }))
        .await;
    let space = alice.create_room(json!({ "creation_content": { "type": "m.space" } })).await;
    let child = alice.create_room(json!({ "name": "child" })).await;
    alice
        .put(
            &format!("{V3}/rooms/{}/state/m.space.child/{}", enc(&space), enc(&child)),
            json!({ "via": ["localhost"] }),
        )
        .await;
    alice
        .put(
            &format!("{V3}/user/{}/account_data/m.direct", enc(&alice.user_id)),
            json!({ bob.user_id.clone(): [dm.clone()] }),
        )
        .await;

    let count = |filters: Value| {
        let alice = alice.clone();
        async move {
            let r = ss(
                &alice,
                None,
                0,
                &json!({ "lists": { "l": { "ranges": [[0, 20]], "timeline_limit": 0, "filters": filters } } }),
            )
            .await;
            let mut ids: Vec<String> = r["rooms"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(count(json!({ "is_dm": true })).await, vec![dm.clone()]);
    assert_eq!(count(json!({ "is_encrypted": true })).await, vec![secret.clone()]);
    assert_eq!(count(json!({ "room_types": ["m.space"] })).await, vec![space.clone()]);
    assert_eq!(
        count(json!({ "not_room_types": ["m.space"] })).await,
        sorted(vec![dm.clone(), secret.clone(), child.clone()])
    );
    assert_eq!(count(json!({ "room_types": [null] })).await, sorted(vec![dm.clone(), secret.clone(), child.clone()]));
    assert_eq!(count(json!({ "spaces": [space.clone()] })).await, vec![child.clone()]);
    assert_eq!(count(json!({})).await.len(), 4);
    // The DM flag is on the room too.
    let r = ss(&alice, None, 0, &json!({ "room_subscriptions": { dm.clone(): { "timeline_limit": 1 } } })).await;
    assert_eq!(r["rooms"][&dm]["is_dm"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_carry_to_device_keys_account_data_receipts_and_typing_once() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    let event = alice.send_text(&room, "read me").await;
    let mut req = list(json!([[0, 9]]), 1, json!([]));
    req["extensions"] = json!({
        "to_device": { "enabled": true, "limit": 2 },
        "e2ee": { "enabled": true },
        "account_data": { "enabled": true },
        "receipts": { "enabled": true },
        "typing": { "enabled": true },
    });
    let first = ss(&bob, None, 0, &req).await;
    let ext = &first["extensions"];
    assert!(ext["e2ee"]["device_one_time_keys_count"].is_object(), "{ext}");
    assert!(ext["to_device"]["next_batch"].is_string());
    assert!(ext["to_device"]["events"].as_array().unwrap().is_empty());

    // Five to-device messages, a page limit of two: all five arrive, each once.
    for n in 0..5 {
        let path = format!("{V3}/sendToDevice/m.test/td{n}");
        alice.put(&path, json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } } })).await;
    }
    let (mut got, mut pos, mut since) =
        (Vec::new(), pos_of(&first), ext["to_device"]["next_batch"].as_str().unwrap().to_owned());
    for _ in 0..6 {
        req["extensions"]["to_device"]["since"] = json!(since);
        let r = ss(&bob, Some(&pos), 1_000, &req).await;
        let td = &r["extensions"]["to_device"];
        let events = td["events"].as_array().unwrap();
        assert!(events.len() <= 2, "the limit holds: {td}");
        got.extend(events.iter().map(|e| e["content"]["n"].as_i64().unwrap()));
        since = td["next_batch"].as_str().unwrap().to_owned();
        pos = pos_of(&r);
        if got.len() >= 5 {
            break;
        }
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    // Account data, a receipt and typing by alice reach bob once.
    bob.put(&format!("{V3}/user/{}/account_data/org.example.x", enc(&bob.user_id)), json!({ "k": 1 })).await;
    alice.post(&format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event)), json!({})).await;
    alice
        .put(
            &format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    req["extensions"]["to_device"]["since"] = json!(since);
    let mut seen = (false, false, false);
    for _ in 0..5 {
        let r = ss(&bob, Some(&pos), 2_000, &req).await;
        let ext = &r["extensions"];
        if ext["account_data"]["global"].as_array().is_some_and(|g| g.iter().any(|e| e["type"] == "org.example.x")) {
            seen.0 = true;
        }
        if ext["receipts"]["rooms"][&room]["content"][&event]["m.read"][&alice.user_id].is_object() {
            seen.1 = true;
        }
        if ext["typing"]["rooms"][&room]["content"]["user_ids"] == json!([alice.user_id.clone()]) {
            seen.2 = true;
        }
        pos = pos_of(&r);
        if seen == (true, true, true) {
            break;
        }
    }
    assert_eq!(seen, (true, true, true), "account data, receipt, typing");
    // Then quiet: nothing is sent twice.
    let r = ss(&bob, Some(&pos), 300, &req).await;
    let ext = &r["extensions"];
    assert!(ext["account_data"]["global"].as_array().is_none_or(|g| g.is_empty()), "{ext}");
    assert!(ext["receipts"]["rooms"].as_object().is_none_or(|m| m.is_empty()), "{ext}");
    assert!(ext["typing"]["rooms"].as_object().is_none_or(|m| m.is_empty()), "{ext}");
    assert!(ext["to_device"]["events"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_positions_and_bad_requests_get_clear_errors() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let req = list(json!([[0, 9]]), 1, json!([]));
    let first = ss(&alice, None, 0, &req).await;
    let pos = pos_of(&first);
    for bad in ["garbage", "0_1", "ffffffff_99999"] {
        let r = alice.request(Method::POST, &path(Some(bad), 0), Some(req.clone())).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_UNKNOWN_POS"), "{bad}");
    }
    // A position belongs to its connection.
    let mut other = req.clone();
    other["conn_id"] = json!("encryption");
    let r = alice.request(Method::POST, &path(Some(&pos), 0), Some(other)).await;
    assert_eq!(r.errcode(), "M_UNKNOWN_POS");
    // And to its user.
    let bob = s.register("bob").await;
    let r = bob.request(Method::POST, &path(Some(&pos), 0), Some(req.clone())).await;
    assert_eq!(r.errcode(), "M_UNKNOWN_POS");

    for (what, body) in [
        ("an array", json!([1, 2])),
        ("ranges as a string", json!({ "lists": { "a": { "ranges": "0-9", "timeline_limit": 1 } } })),
        ("a negative limit", json!({ "lists": { "a": { "ranges": [[0, 9]], "timeline_limit": -1 } } })),
        (
            "a rule of one string",
            json!({ "lists": { "a": { "ranges": [[0, 9]], "required_state": [["m.room.name"]] } } }),
        ),
        ("a bad room id", json!({ "room_subscriptions": { "not-a-room": { "timeline_limit": 1 } } })),
        ("a bad filter", json!({ "lists": { "a": { "ranges": [[0, 1]], "filters": { "is_dm": "yes" } } } })),
        ("a bad extension", json!({ "extensions": { "to_device": { "enabled": "on" } } })),
    ] {
        let r = alice.request(Method::POST, &path(None, 0), Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.errcode().starts_with("M_"), "{what}");
    }
    let r = alice.request(Method::POST, &format!("{SS}?timeout=soon"), Some(req.clone())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // What one request may make the server keep or compute is bounded.
    let many: serde_json::Map<String, Value> =
        (0..101).map(|n| (format!("l{n}"), json!({ "ranges": [[0, 1]], "timeline_limit": 1 }))).collect();
    let r = alice.request(Method::POST, &path(None, 0), Some(json!({ "lists": many }))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"));
    let r = alice.request(Method::POST, &path(None, 0), Some(json!({ "conn_id": "c".repeat(65) }))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"));
    let long_name = json!({ "lists": { "n".repeat(65): { "ranges": [[0, 1]], "timeline_limit": 1 } } });
    let r = alice.request(Method::POST, &path(None, 0), Some(long_name)).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"));
    // An inverted or huge range is not an error, just empty or clamped.
    let r = ss(&alice, None, 0, &list(json!([[5, 1], [0, u64::MAX]]), 1, json!([]))).await;
    assert_eq!(r["lists"]["all"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_members_follow_every_membership_change_on_a_gapless_update() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let req = list(json!([[0, 0]]), 5, json!([["m.room.member", "$LAZY"]]));
    let first = ss(&alice, None, 0, &req).await;
    // Bob joins and leaves a message; Carol only joins: both member events come.
    bob.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    bob.send_text(&room, "hi").await;
    carol.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    let next = ss(&alice, Some(&pos_of(&first)), 5_000, &req).await;
    let members: Vec<String> =
        state_types(&next["rooms"][&room]).into_iter().filter(|(t, _)| t == "m.room.member").map(|(_, k)| k).collect();
    assert!(members.contains(&bob.user_id), "{members:?}");
    assert!(members.contains(&carol.user_id), "{members:?}");
    // A member who did nothing in between is not sent again.
    assert!(!members.contains(&alice.user_id), "{members:?}");
}

/// The sync routes (`/sync`, sliding sync, `auth_metadata`) tried as a hostile client
/// would: garbage in the path or a wrong-typed body or parameter is a Matrix 4xx, and
/// the same request twice at once has one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_routes_refuse_garbage_and_serve_concurrent_duplicates_once() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let is_matrix_4xx = |r: &myelin_suite::Reply| {
        r.status.is_client_error() && serde_json::from_slice::<Value>(&r.body).is_ok_and(|j| j["errcode"].is_string())
    };
    // Garbage after or inside the paths: no such endpoint.
    for g in ["%00", "..", "%FF%FE", "a%20b", "!"] {
        for (method, p) in [
            (Method::GET, format!("{V3}/sync/{g}")),
            (Method::POST, format!("{SS}/{g}")),
            (Method::GET, format!("/_matrix/client/v1/auth_metadata/{g}")),
            (Method::GET, format!("/_matrix/client/unstable/org.matrix.msc2965/auth_metadata/{g}")),
        ] {
            let r = alice.request(method.clone(), &p, Some(json!({}))).await;
            assert!(is_matrix_4xx(&r), "{method} {p}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
    }
    // Wrong-typed input: /sync takes its input as parameters, sliding sync as a body.
    for q in ["timeout=soon", "since=tomorrow", "full_state=1&since=s1_0_x", "filter=%7B%22room%22%3A%22x%22%7D"] {
        let r = alice.request(Method::GET, &format!("{V3}/sync?{q}"), None).await;
        assert_eq!(
            (r.status, is_matrix_4xx(&r)),
            (StatusCode::BAD_REQUEST, true),
            "{q}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for body in [json!("lists"), json!({ "lists": [] }), json!({ "conn_id": 7 }), json!({ "txn_id": {} })] {
        let r = alice.request(Method::POST, &path(None, 0), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", String::from_utf8_lossy(&r.body));
    }
    // auth_metadata takes no body: one of the wrong type changes nothing (still 404).
    for p in ["/_matrix/client/v1/auth_metadata", "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"] {
        let r = alice.request(Method::GET, p, Some(json!(["x", 1]))).await;
        assert_eq!((r.status, r.errcode().as_str()), (StatusCode::NOT_FOUND, "M_UNRECOGNIZED"), "{p}");
        let (a, b) = tokio::join!(alice.request(Method::GET, p, None), alice.request(Method::GET, p, None));
        assert_eq!((a.status, b.status), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND), "{p}");
    }

    // Twice at once, /sync from the same token: both carry the to-device message, and the
    // next sync (which acknowledges it) does not lose or repeat anything.
    let first = bob.sync(None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let send = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": 1 } } } });
    alice.put(&format!("{V3}/sendToDevice/m.test/dup1"), send).await;
    let (a, b) = tokio::join!(bob.sync(Some(&since), 0), bob.sync(Some(&since), 0));
    for r in [&a, &b] {
        assert_eq!(r["to_device"]["events"].as_array().unwrap().len(), 1, "{r}");
    }
    let after = bob.sync(Some(a["next_batch"].as_str().unwrap()), 0).await;
    assert!(after["to_device"]["events"].as_array().unwrap().is_empty(), "acknowledged once: {after}");

    // Twice at once, a new sliding-sync connection: one connection, whose either
    // position goes on, and the room is sent once on each line.
    let room = alice.create_room(json!({ "name": "dup" })).await;
    let req = json!({ "conn_id": "dup", "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } } });
    let fresh = path(None, 0);
    let (a, b) = tokio::join!(
        alice.request(Method::POST, &fresh, Some(req.clone())),
        alice.request(Method::POST, &fresh, Some(req.clone()))
    );
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    for first in [a.json(), b.json()] {
        assert_eq!(first["rooms"][&room]["initial"], true);
        let next = ss(&alice, Some(&pos_of(&first)), 200, &req).await;
        assert!(next["rooms"].get(&room).is_none(), "already sent on this line: {next}");
    }
}

/// A connection whose first answer was built at stream position 0 (a fresh server)
/// still gets what happened before its second answer: here, the device lists of a
/// user who joined a shared room and uploaded keys in between. It used to be
/// taken for a new connection again and the changes were never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_first_answered_at_position_zero_still_hears_the_changes_after_it() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let body = json!({ "conn_id": "encryption", "extensions": { "e2ee": { "enabled": true } } });
    let first = ss(&bob, None, 0, &body).await;
    let pos = pos_of(&first);

    let room = alice.create_room(json!({ "invite": [bob.user_id] })).await;
    bob.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    alice
        .post(
            &format!("{V3}/keys/upload"),
            json!({ "device_keys": myelin_suite::device_keys(&alice.user_id, &alice.device_id, "alice-curve") }),
        )
        .await;
    let next = ss(&bob, Some(&pos), 5_000, &body).await;
    let changed = &next["extensions"]["e2ee"]["device_lists"]["changed"];
    assert!(changed.as_array().is_some_and(|c| c.iter().any(|u| *u == *alice.user_id)), "{next}");
    s.stop().await;
}
