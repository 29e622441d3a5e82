//! Client-Server API over real HTTP: accounts, rooms, and what the *other*
//! user sees through `/sync`.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use myelin_suite::{TestServer, enc, http};
use serde_json::{Value, json};

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|evs| evs.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_follows_the_configuration() {
    // Off: 403.
    let closed = TestServer::start("localhost").await;
    let body = json!({ "username": "a", "password": "p", "auth": { "type": "m.login.dummy" } }).to_string();
    let r = http(closed.client, Method::POST, "/_matrix/client/v3/register", Some(body.as_bytes())).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    closed.stop().await;

    // Open: a user-interactive round with m.login.dummy.
    let s = TestServer::open("localhost").await;
    let r =
        http(s.client, Method::POST, "/_matrix/client/v3/register", Some(br#"{"username":"alice","password":"p"}"#))
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["flows"][0]["stages"][0], "m.login.dummy");
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let body = json!({ "username": "alice", "password": "p", "auth": { "type": "m.login.dummy", "session": session } });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user_id"], "@alice:localhost");
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.errcode(), "M_USER_IN_USE");
    let bad = json!({ "username": "Bad Name!", "password": "p", "auth": { "type": "m.login.dummy" } });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(bad.to_string().as_bytes())).await;
    assert_eq!(r.errcode(), "M_INVALID_USERNAME");
    let r = http(s.client, Method::GET, "/_matrix/client/v3/register/available?username=alice", None).await;
    assert_eq!(r.errcode(), "M_USER_IN_USE");
    let r = http(s.client, Method::GET, "/_matrix/client/v3/register/available?username=bob", None).await;
    assert_eq!(r.json()["available"], true);
    s.stop().await;

    // Token: m.login.registration_token with the configured token only.
    let s = TestServer::start_with("localhost", |c| c.registration.token = "letmein".into()).await;
    let r =
        http(s.client, Method::POST, "/_matrix/client/v3/register", Some(br#"{"username":"t","password":"p"}"#)).await;
    assert_eq!(r.json()["flows"][0]["stages"][0], "m.login.registration_token");
    let wrong =
        json!({ "username": "t", "password": "p", "auth": { "type": "m.login.registration_token", "token": "nope" } });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(wrong.to_string().as_bytes())).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"));
    let right = json!({ "username": "t", "password": "p", "auth": { "type": "m.login.registration_token", "token": "letmein" } });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(right.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_whoami_logout_and_token_errors() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let r = http(s.client, Method::GET, "/_matrix/client/v3/login", None).await;
    assert_eq!(r.json()["flows"][0]["type"], "m.login.password");
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1", "initial_device_display_name": "laptop" });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(login.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK);
    let second = myelin_suite::Client {
        token: r.json()["access_token"].as_str().unwrap().to_owned(),
        device_id: r.json()["device_id"].as_str().unwrap().to_owned(),
        ..alice.clone()
    };
    assert_eq!(second.get("/_matrix/client/v3/account/whoami").await["user_id"], "@alice:localhost");
    let devices = alice.get("/_matrix/client/v3/devices").await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);

    let wrong = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "@alice:localhost" }, "password": "nope" });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(wrong.to_string().as_bytes())).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));

    let r = http(s.client, Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"));
    second.post("/_matrix/client/v3/logout", json!({})).await;
    let r = second.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"));
    assert_eq!(alice.get("/_matrix/client/v3/account/whoami").await["device_id"], alice.device_id.as_str());

    // Deleting a device needs the password again.
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let r = alice.request(Method::DELETE, &path, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["flows"][0]["stages"][0], "m.login.password");
    let auth = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pass-word-1" } });
    let r = alice.request(Method::DELETE, &path, Some(auth)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = alice.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(r.errcode(), "M_UNKNOWN_TOKEN");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_join_and_messages_reach_the_other_user_through_sync() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice
        .create_room(
            json!({ "preset": "private_chat", "name": "Ops", "invite": ["@bob:localhost"], "is_direct": true }),
        )
        .await;

    // Bob sees the invite, with stripped state naming the room.
    let first = bob.sync(None, 0).await;
    let invite = &first["rooms"]["invite"][&room]["invite_state"]["events"];
    let events = invite.as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Ops"), "{invite}");
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:localhost"));
    let since = first["next_batch"].as_str().unwrap().to_owned();

    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    let joined = bob.sync(Some(&since), 0).await;
    let state = joined["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "the first sync of a joined room carries its state");
    let since = joined["next_batch"].as_str().unwrap().to_owned();

    // Bob long-polls; alice's message wakes him promptly.
    let poll = {
        let (bob, since) = (bob.clone(), since.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (bob.sync(Some(&since), 20_000).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.send_text(&room, "hello bob").await;
    let (got, waited) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(10), "long-poll did not wake: {waited:?}");
    assert_eq!(timeline_bodies(&got, &room), ["hello bob"]);
    let ev = &got["rooms"]["join"][&room]["timeline"]["events"][0];
    assert_eq!(ev["sender"], "@alice:localhost");
    assert!(ev.get("room_id").is_none(), "sync events omit room_id");

    // An idle long-poll returns empty after its timeout, not before.
    let since = got["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let idle = bob.sync(Some(&since), 500).await;
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(idle["rooms"]["join"].as_object().unwrap().is_empty());

    // Alice sees Bob's join in her timeline.
    let alice_view = alice.sync(None, 0).await;
    let timeline = alice_view["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == "@bob:localhost"
        && e["content"]["membership"] == "join"));

    // Bob leaves: his next sync puts the room under `leave`.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
    let left = bob.sync(Some(&since), 0).await;
    assert!(left["rooms"]["leave"].get(&room).is_some(), "{left}");
    assert!(bob.get("/_matrix/client/v3/joined_rooms").await["joined_rooms"].as_array().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_idempotent_and_messages_paginate() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/txn1", enc(&room));
    let a = alice.put(&path, json!({ "msgtype": "m.text", "body": "once" })).await;
    let b = alice.put(&path, json!({ "msgtype": "m.text", "body": "once" })).await;
    assert_eq!(a["event_id"], b["event_id"], "same transaction, same event");
    for i in 0..5 {
        alice.send_text(&room, &format!("m{i}")).await;
    }
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3", enc(&room))).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap_or("")).collect();
    assert_eq!(bodies, ["m4", "m3", "m2"]);
    let end = page["end"].as_str().unwrap();
    let page2 = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={end}", enc(&room))).await;
    let bodies2: Vec<&str> =
        page2["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap_or("")).collect();
    assert_eq!(bodies2, ["m1", "m0", "once"]);
    assert_eq!(page2["chunk"][0]["room_id"], room.as_str());

    let event_id = a["event_id"].as_str().unwrap();
    let ev = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(event_id))).await;
    assert_eq!(ev["content"]["body"], "once");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_permissions_over_http() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat", "topic": "first" })).await;
    let r = bob.request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), None).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN", "non-members cannot read state");
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    let topic = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room))).await;
    assert_eq!(topic["topic"], "first");
    let r = bob
        .request(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
            Some(json!({ "topic": "bob's" })),
        )
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    alice
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)), json!({ "topic": "second" }))
        .await;
    let topic = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room))).await;
    assert_eq!(topic["topic"], "second");
    let members = bob.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
    // Kick needs power; alice has it.
    let r = bob
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            Some(json!({ "user_id": "@alice:localhost" })),
        )
        .await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            json!({ "user_id": "@bob:localhost", "reason": "spam" }),
        )
        .await;
    let r = bob.request(Method::POST, &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), Some(json!({}))).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");
    let r = alice.request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "room_version": "13" }))).await;
    assert_eq!(r.errcode(), "M_UNSUPPORTED_ROOM_VERSION", "every stable version 1-12 is created; 13 is not one");
    // An unreachable remote invitee does not undo the room; the invite just is not there.
    let r = alice
        .request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "invite": ["@x:elsewhere.invalid"] })))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let created = r.json()["room_id"].as_str().unwrap().to_owned();
    let r = alice
        .request(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&created), enc("@x:elsewhere.invalid")),
            None,
        )
        .await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_data_filters_and_capabilities() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let me = enc(&alice.user_id);
    alice
        .put(
            &format!("/_matrix/client/v3/user/{me}/account_data/m.direct"),
            json!({ "@bob:localhost": ["!r:localhost"] }),
        )
        .await;
    let direct = alice.get(&format!("/_matrix/client/v3/user/{me}/account_data/m.direct")).await;
    assert_eq!(direct["@bob:localhost"][0], "!r:localhost");
    let sync = alice.sync(None, 0).await;
    assert!(sync["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.direct"));
    let r =
        alice.request(Method::GET, "/_matrix/client/v3/user/%40other%3Alocalhost/account_data/m.direct", None).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");

    let filter = alice
        .post(&format!("/_matrix/client/v3/user/{me}/filter"), json!({ "room": { "timeline": { "limit": 2 } } }))
        .await;
    let id = filter["filter_id"].as_str().unwrap().to_owned();
    let stored = alice.get(&format!("/_matrix/client/v3/user/{me}/filter/{id}")).await;
    assert_eq!(stored["room"]["timeline"]["limit"], 2);
    let room = alice.create_room(json!({})).await;
    let limited = alice.get(&format!("/_matrix/client/v3/sync?filter={id}")).await;
    let timeline = &limited["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["events"].as_array().unwrap().len(), 2);
    assert_eq!(timeline["limited"], true);

    let caps = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    let rules = alice.get("/_matrix/client/v3/pushrules/").await;
    assert!(rules["global"]["override"].as_array().is_some_and(|a| !a.is_empty()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_resolve_join_and_delete() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "ops" })).await;
    let alias = enc("#ops:localhost");
    let resolved = bob.get(&format!("/_matrix/client/v3/directory/room/{alias}")).await;
    assert_eq!(resolved["room_id"], room.as_str());
    assert_eq!(resolved["servers"][0], "localhost");
    let canonical = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias", enc(&room))).await;
    assert_eq!(canonical["alias"], "#ops:localhost");
    let r =
        alice.request(Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "room_alias_name": "ops" }))).await;
    assert_eq!(r.errcode(), "M_ROOM_IN_USE");

    let joined = bob.post(&format!("/_matrix/client/v3/join/{alias}"), json!({})).await;
    assert_eq!(joined["room_id"], room.as_str());
    let extra = enc("#ops-extra:localhost");
    alice.put(&format!("/_matrix/client/v3/directory/room/{extra}"), json!({ "room_id": room })).await;
    let r = bob
        .request(Method::PUT, &format!("/_matrix/client/v3/directory/room/{extra}"), Some(json!({ "room_id": room })))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let listed = bob.get(&format!("/_matrix/client/v3/rooms/{}/aliases", enc(&room))).await;
    assert_eq!(listed["aliases"].as_array().unwrap().len(), 2);

    let r = bob.request(Method::DELETE, &format!("/_matrix/client/v3/directory/room/{extra}"), None).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN", "bob neither created it nor moderates the room");
    let r = alice.request(Method::DELETE, &format!("/_matrix/client/v3/directory/room/{extra}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = bob.request(Method::GET, &format!("/_matrix/client/v3/directory/room/{extra}"), None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    let r =
        bob.request(Method::GET, &format!("/_matrix/client/v3/directory/room/{}", enc("#x:other.example")), None).await;
    assert_eq!(r.errcode(), "M_NOT_FOUND");
    s.stop().await;
}

fn bodies_of(chunk: &Value) -> Vec<String> {
    chunk.as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_decides_what_a_late_joiner_sees() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    for (visibility, sees_before) in [("shared", true), ("joined", false)] {
        let room = alice
            .create_room(json!({
                "preset": "public_chat",
                "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": visibility } }]
            }))
            .await;
        alice.send_text(&room, "before bob").await;
        bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
        alice.send_text(&room, "after bob").await;
        let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room))).await;
        let seen = bodies_of(&page["chunk"]);
        assert!(seen.contains(&"after bob".to_owned()), "{visibility}: {seen:?}");
        assert_eq!(seen.contains(&"before bob".to_owned()), sees_before, "{visibility}: {seen:?}");
        let sync = bob.sync(None, 0).await;
        let timeline = timeline_bodies(&sync, &room);
        assert_eq!(timeline.contains(&"before bob".to_owned()), sees_before, "{visibility} sync: {timeline:?}");
        // A non-member sees nothing at all.
        let carol = s.register(&format!("carol{visibility}")).await;
        let r =
            carol.request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)), None).await;
        assert_eq!(r.errcode(), "M_FORBIDDEN");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_data_changes_and_to_device_messages_arrive_incrementally() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({})).await;
    let first = alice.sync(None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // A global change wakes a waiting sync and arrives once.
    let poll = {
        let (alice, since) = (alice.clone(), since.clone());
        tokio::spawn(async move { alice.sync(Some(&since), 10_000).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let me = enc(&alice.user_id);
    alice
        .put(&format!("/_matrix/client/v3/user/{me}/account_data/m.direct"), json!({ "@bob:localhost": [room] }))
        .await;
    let got = poll.await.unwrap();
    let events = got["account_data"]["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["type"] == "m.direct" && e["content"]["@bob:localhost"][0] == room.as_str()),
        "{got}"
    );
    let since = got["next_batch"].as_str().unwrap().to_owned();
    let again = alice.sync(Some(&since), 0).await;
    assert!(again["account_data"]["events"].as_array().unwrap().is_empty(), "sent once");

    // Per-room account data lands in that room's section.
    alice
        .put(
            &format!("/_matrix/client/v3/user/{me}/rooms/{}/account_data/m.tag", enc(&room)),
            json!({ "tags": { "u.work": {} } }),
        )
        .await;
    let tagged = alice.sync(Some(&since), 0).await;
    assert_eq!(tagged["rooms"]["join"][&room]["account_data"]["events"][0]["type"], "m.tag", "{tagged}");

    // Written twice since the token: sent once, as it is now.
    let since = tagged["next_batch"].as_str().unwrap().to_owned();
    for who in ["@carol:localhost", "@dave:localhost"] {
        alice.put(&format!("/_matrix/client/v3/user/{me}/account_data/m.direct"), json!({ who: [room] })).await;
    }
    let rewritten = alice.sync(Some(&since), 0).await;
    let direct: Vec<&Value> =
        rewritten["account_data"]["events"].as_array().unwrap().iter().filter(|e| e["type"] == "m.direct").collect();
    assert_eq!(direct.len(), 1, "{rewritten}");
    assert!(direct[0]["content"].get("@dave:localhost").is_some(), "{rewritten}");
    assert!(
        rewritten["rooms"]["join"][&room]["account_data"]["events"].as_array().is_none_or(|a| a.is_empty()),
        "the tag is not sent again: {rewritten}"
    );

    // To-device: delivered to the device until a later sync acknowledges it.
    let bob_first = bob.sync(None, 0).await;
    let bob_since = bob_first["next_batch"].as_str().unwrap().to_owned();
    let msg = json!({ "messages": { "@bob:localhost": { bob.device_id.as_str(): { "hello": "device" } } } });
    alice.put("/_matrix/client/v3/sendToDevice/m.test/txn1", msg).await;
    let got = bob.sync(Some(&bob_since), 5_000).await;
    let to_device = got["to_device"]["events"].as_array().unwrap();
    assert_eq!(to_device.len(), 1, "{got}");
    assert_eq!(to_device[0]["sender"], "@alice:localhost");
    assert_eq!(to_device[0]["content"]["hello"], "device");
    let next = got["next_batch"].as_str().unwrap().to_owned();
    let acked = bob.sync(Some(&next), 0).await;
    assert!(acked["to_device"]["events"].as_array().unwrap().is_empty(), "acknowledged messages are gone");
    // Other servers' users are reached over federation (tests/federation.rs); a
    // device map that is not an object is refused either way.
    let r = alice
        .request(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.test/txn2",
            Some(json!({ "messages": { "@z:remote.example": "not a map" } })),
        )
        .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_BAD_JSON"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_rate_limit_gets_m_limit_exceeded() {
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.rate_limit.per_second = 0.5;
        c.rate_limit.burst = 3;
    })
    .await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await; // 1 token
    alice.send_text(&room, "one").await; // 2
    alice.send_text(&room, "two").await; // 3
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/over", enc(&room));
    let r = alice.request(Method::PUT, &path, Some(json!({ "msgtype": "m.text", "body": "three" }))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"));
    assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 0);
    // Buckets are per user.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_timestamp_lookup_and_members_at_a_point() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.send_text(&room, &format!("c{i}")).await);
    }
    let before_bob = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(5)).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    let late = alice.send_text(&room, "late").await;

    let ctx = alice.get(&format!("/_matrix/client/v3/rooms/{}/context/{}?limit=4", enc(&room), enc(&ids[2]))).await;
    assert_eq!(ctx["event"]["content"]["body"], "c2");
    assert_eq!(bodies_of(&ctx["events_before"]), ["c1", "c0"]);
    assert_eq!(bodies_of(&ctx["events_after"]), ["c3", "c4"]);
    assert!(ctx["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));

    let found =
        alice.get(&format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={cutoff}&dir=f", enc(&room))).await;
    let bob_join = found["event_id"].as_str().unwrap().to_owned();
    assert_ne!(bob_join, late, "the first event after the cutoff is bob's join, not the later message");
    let back =
        alice.get(&format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={cutoff}&dir=b", enc(&room))).await;
    assert_eq!(back["event_id"], ids[4].as_str());

    let now = alice.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room))).await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    let then = alice.get(&format!("/_matrix/client/v3/rooms/{}/members?at={before_bob}", enc(&room))).await;
    assert_eq!(then["chunk"].as_array().unwrap().len(), 1, "bob was not a member yet");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loading_members_and_include_leave() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut others = Vec::new();
    for i in 0..4 {
        let u = s.register(&format!("u{i}")).await;
        u.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
        others.push(u);
    }
    others[0].send_text(&room, "from u0").await;
    for i in 0..3 {
        alice.send_text(&room, &format!("a{i}")).await;
    }
    let filter =
        enc(&json!({ "room": { "timeline": { "limit": 4 }, "state": { "lazy_load_members": true } } }).to_string());
    let lazy = alice.get(&format!("/_matrix/client/v3/sync?filter={filter}")).await;
    let members: Vec<&str> = lazy["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert!(members.contains(&"@u0:localhost"), "a timeline sender's member event is sent: {members:?}");
    assert!(!members.contains(&"@u3:localhost"), "silent members are not: {members:?}");

    others[1].post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
    let plain = others[1].sync(None, 0).await;
    assert!(plain["rooms"]["leave"].get(&room).is_none());
    let filter = enc(&json!({ "room": { "include_leave": true } }).to_string());
    let with_leave = others[1].get(&format!("/_matrix/client/v3/sync?filter={filter}")).await;
    assert!(with_leave["rooms"]["leave"].get(&room).is_some(), "{with_leave}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_leaves_rooms_and_bulk_device_deletion_needs_the_password() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    let r = alice
        .request(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({ "initial_state": [{ "type": "m.room.create", "state_key": "", "content": {} }] })),
        )
        .await;
    assert_eq!(r.errcode(), "M_INVALID_PARAM", "rejected before anything is written");

    // /messages filters by type.
    alice.send_text(&room, "text").await;
    alice.put(&format!("/_matrix/client/v3/rooms/{}/send/org.example.custom/c1", enc(&room)), json!({ "x": 1 })).await;
    let filter = enc(&json!({ "types": ["org.example.*"] }).to_string());
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&filter={filter}", enc(&room))).await;
    let kinds: Vec<&str> = page["chunk"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["org.example.custom"]);

    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "pass-word-1" });
    let r = bob.request(Method::POST, "/_matrix/client/v3/delete_devices", Some(json!({ "devices": ["NOPE"] }))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = bob.request(Method::POST, "/_matrix/client/v3/account/deactivate", Some(json!({ "auth": auth }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
    assert!(members["joined"].get("@bob:localhost").is_none(), "bob left on deactivation");
    let r = bob.request(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(r.errcode(), "M_UNKNOWN_TOKEN", "a deactivated user's token, used before, stops working");
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "pass-word-1" });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(login.to_string().as_bytes())).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");
    let again = json!({ "username": "bob", "password": "x", "auth": { "type": "m.login.dummy" } });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/register", Some(again.to_string().as_bytes())).await;
    assert_eq!(r.errcode(), "M_USER_IN_USE", "a deactivated id is never reused");
    s.stop().await;
}
