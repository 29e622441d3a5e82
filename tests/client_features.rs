//! Everyday features as the *other* user sees them: edits, deletes, replies,
//! reactions, threads.

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

async fn room_with_bob(s: &TestServer) -> (Client, Client, String) {
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    (alice, bob, room)
}

async fn send(c: &Client, room: &str, content: Value) -> String {
    let txn = format!("t{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    c.put(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)), content).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn event(c: &Client, room: &str, id: &str) -> Value {
    c.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_is_bundled_for_the_other_user_and_only_the_sender_may_edit() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let original = alice.send_text(&room, "helo").await;
    let edit = json!({
        "msgtype": "m.text", "body": "* hello",
        "m.new_content": { "msgtype": "m.text", "body": "hello" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": original },
    });
    send(&alice, &room, edit.clone()).await;
    let seen = event(&bob, &room, &original).await;
    let replaced = &seen["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(replaced["content"]["m.new_content"]["body"], "hello", "{seen}");
    assert_eq!(replaced["sender"], "@alice:localhost");
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&room))).await;
    let served = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == original.as_str()).unwrap();
    assert!(served["unsigned"]["m.relations"]["m.replace"].is_object(), "bundled in /messages too");

    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/steal", enc(&room));
    let r = bob.request(Method::PUT, &path, Some(edit)).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_message_is_stripped_everywhere_it_is_served() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let secret = alice.send_text(&room, "the password is hunter2").await;
    let own = bob.send_text(&room, "oops").await;

    let redact = |c: &Client, id: &str, txn: &str| {
        let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{txn}", enc(&room), enc(id));
        let c = c.clone();
        async move { c.request(Method::PUT, &path, Some(json!({ "reason": "cleanup" }))).await }
    };
    let r = redact(&bob, &secret, "r1").await;
    assert_eq!(r.errcode(), "M_FORBIDDEN", "bob has no redact power over alice's event");
    assert_eq!(redact(&bob, &own, "r2").await.status, StatusCode::OK, "anyone may redact their own");
    let r = redact(&alice, &secret, "r3").await;
    assert_eq!(r.status, StatusCode::OK);

    let ev = event(&bob, &room, &secret).await;
    assert_eq!(ev["content"], json!({}), "{ev}");
    assert_eq!(ev["unsigned"]["redacted_because"]["content"]["reason"], "cleanup");
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10", enc(&room))).await;
    let all = serde_json::to_string(&page).unwrap();
    assert!(!all.contains("hunter2"), "original content leaked through /messages");
    let sync = bob.sync(Some(&bob_since), 0).await;
    let text = serde_json::to_string(&sync).unwrap();
    assert!(!text.contains("hunter2"), "original content leaked through /sync");
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().any(|e| e["type"] == "m.room.redaction" && e["redacts"] == secret.as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_keep_their_content_and_reactions_are_not_doubled() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let original = alice.send_text(&room, "lunch?").await;
    let reply = json!({
        "msgtype": "m.text", "body": "> lunch?\n\nyes",
        "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote>lunch?</blockquote></mx-reply><b>yes</b> 🍜",
        "m.relates_to": { "m.in_reply_to": { "event_id": original } },
        "m.mentions": { "user_ids": ["@alice:localhost"] },
    });
    let reply_id = send(&bob, &room, reply.clone()).await;
    let seen = event(&alice, &room, &reply_id).await;
    assert_eq!(seen["content"], reply, "replies and HTML bodies are served as sent");

    let react = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": original, "key": "👍" } });
    let path = |txn: &str| format!("/_matrix/client/v3/rooms/{}/send/m.reaction/{txn}", enc(&room));
    let first = bob.put(&path("x1"), react.clone()).await["event_id"].as_str().unwrap().to_owned();
    let r = bob.request(Method::PUT, &path("x2"), Some(react.clone())).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_DUPLICATE_ANNOTATION"));
    alice.put(&path("a1"), react.clone()).await; // another user may react the same

    let rel =
        alice.get(&format!("/_matrix/client/v1/rooms/{}/relations/{}/m.annotation", enc(&room), enc(&original))).await;
    assert_eq!(rel["chunk"].as_array().unwrap().len(), 2, "{rel}");
    // Once redacted, the reaction can be given again.
    bob.put(&format!("/_matrix/client/v3/rooms/{}/redact/{}/undo", enc(&room), enc(&first)), json!({})).await;
    bob.put(&path("x3"), react).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_are_summarised_and_listed() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let root = alice.send_text(&room, "incident #42").await;
    for (who, body) in [(&bob, "on it"), (&alice, "thanks")] {
        let content =
            json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
        send(who, &room, content).await;
    }
    let seen = event(&bob, &room, &root).await;
    let thread = &seen["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 2, "{seen}");
    assert_eq!(thread["latest_event"]["content"]["body"], "thanks");
    assert_eq!(thread["current_user_participated"], true);
    let list = bob.get(&format!("/_matrix/client/v1/rooms/{}/threads", enc(&room))).await;
    assert_eq!(list["chunk"][0]["event_id"], root.as_str());
    let replies =
        bob.get(&format!("/_matrix/client/v1/rooms/{}/relations/{}/m.thread?dir=f", enc(&room), enc(&root))).await;
    let bodies: Vec<&str> =
        replies["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["on it", "thanks"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_reaches_every_room_and_the_directory_finds_people() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let me = enc(&alice.user_id);
    let profile = bob.get(&format!("/_matrix/client/v3/profile/{me}")).await;
    assert_eq!(profile["displayname"], "alice", "new users start with their localpart");
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    alice.put(&format!("/_matrix/client/v3/profile/{me}/displayname"), json!({ "displayname": "Alice Ops" })).await;
    alice
        .put(&format!("/_matrix/client/v3/profile/{me}/avatar_url"), json!({ "avatar_url": "mxc://localhost/abc" }))
        .await;
    let r = alice
        .request(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{me}/avatar_url"),
            Some(json!({ "avatar_url": "http://x" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = bob
        .request(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            Some(json!({ "displayname": "hijack" })),
        )
        .await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");

    // Bob sees it in the room: new member events and the room's member list.
    let sync = bob.sync(Some(&bob_since), 0).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == "@alice:localhost"
        && e["content"]["displayname"] == "Alice Ops"));
    let members = bob.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
    assert_eq!(members["joined"]["@alice:localhost"]["display_name"], "Alice Ops");
    assert_eq!(members["joined"]["@alice:localhost"]["avatar_url"], "mxc://localhost/abc");
    assert_eq!(bob.get(&format!("/_matrix/client/v3/profile/{me}/displayname")).await["displayname"], "Alice Ops");

    let found = bob.post("/_matrix/client/v3/user_directory/search", json!({ "search_term": "ops" })).await;
    assert_eq!(found["results"][0]["user_id"], "@alice:localhost", "{found}");
    let none = bob.post("/_matrix/client/v3/user_directory/search", json!({ "search_term": "zzz" })).await;
    assert!(none["results"].as_array().unwrap().is_empty());
    s.stop().await;
}

fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_wakes_the_other_user_and_expires() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let poll = {
        let (bob, since) = (bob.clone(), since.clone());
        tokio::spawn(async move { bob.sync(Some(&since), 10_000).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    alice.put(&path, json!({ "typing": true, "timeout": 800 })).await;
    let got = poll.await.unwrap();
    assert_eq!(
        ephemeral(&got, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!(["@alice:localhost"]),
        "{got}"
    );
    // After the timeout, bob learns alice stopped.
    let since = got["next_batch"].as_str().unwrap().to_owned();
    let later = bob.sync(Some(&since), 5_000).await;
    assert_eq!(ephemeral(&later, &room, "m.typing").unwrap()["content"]["user_ids"], json!([]), "{later}");
    let r = bob.request(Method::PUT, &path, Some(json!({ "typing": true }))).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN", "nobody types for someone else");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_sync_carries_only_the_receipts_set_since_its_token() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let carol = s.register("carol").await;
    carol.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    let first = alice.send_text(&room, "first").await;
    let second = alice.send_text(&room, "second").await;
    let receipt = |c: &Client, id: &str| {
        let (c, path) = (c.clone(), format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(id)));
        async move { c.post(&path, json!({})).await }
    };
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    // After the token: bob reads the first message then the second, carol the first.
    receipt(&bob, &first).await;
    receipt(&bob, &second).await;
    receipt(&carol, &first).await;
    // All three are stored before alice asks, so one incremental sync holds them.
    let got = alice.sync(Some(&since), 0).await;
    let r = ephemeral(&got, &room, "m.receipt").expect("receipts since the token");
    let mut seen = Vec::new();
    for (event, by_type) in r["content"].as_object().unwrap() {
        for user in by_type["m.read"].as_object().unwrap().keys() {
            seen.push((user.clone(), event.clone()));
        }
    }
    seen.sort();
    let mut expected =
        vec![("@bob:localhost".to_owned(), second.clone()), ("@carol:localhost".to_owned(), first.clone())];
    expected.sort();
    assert_eq!(seen, expected, "bob's replaced receipt is not sent");
    let latest = got["next_batch"].as_str().unwrap().to_owned();
    // Nothing new since: no receipt at all; a first sync has every current one.
    let quiet = alice.sync(Some(&latest), 0).await;
    assert!(ephemeral(&quiet, &room, "m.receipt").is_none(), "{quiet}");
    let full = alice.sync(None, 0).await;
    let all = ephemeral(&full, &room, "m.receipt").unwrap();
    assert!(all["content"][&second]["m.read"]["@bob:localhost"].is_object(), "{all}");
    assert!(all["content"][&first]["m.read"]["@carol:localhost"].is_object(), "{all}");
    assert!(all["content"][&first]["m.read"].get("@bob:localhost").is_none(), "{all}");
    s.stop().await;
}

fn unread(sync: &Value, room: &str) -> Value {
    sync["rooms"]["join"][room]["unread_notifications"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_follow_each_sync_and_each_receipt() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let first = bob.sync(None, 0).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mention = json!({ "msgtype": "m.text", "body": "bob: look", "m.mentions": { "user_ids": ["@bob:localhost"] } });
    let mut ids = Vec::new();
    // Counts carried from one incremental sync to the next, each adding what arrived since.
    for (round, expected) in [(0, 2), (1, 4), (2, 6)] {
        ids.push(alice.send_text(&room, &format!("plain {round}")).await);
        ids.push(send(&alice, &room, mention.clone()).await);
        let got = bob.sync(Some(&since), 5_000).await;
        since = got["next_batch"].as_str().unwrap().to_owned();
        assert_eq!(unread(&got, &room), json!({ "notification_count": expected, "highlight_count": expected / 2 }));
    }
    // Bob's own message counts for nothing.
    bob.send_text(&room, "mine").await;
    let got = bob.sync(Some(&since), 5_000).await;
    since = got["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(unread(&got, &room), json!({ "notification_count": 6, "highlight_count": 3 }));
    // A receipt in the middle restarts the count after it.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&ids[2])), json!({})).await;
    let got = bob.sync(Some(&since), 5_000).await;
    since = got["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(unread(&got, &room), json!({ "notification_count": 3, "highlight_count": 2 }), "{got}");
    alice.send_text(&room, "after the receipt").await;
    let got = bob.sync(Some(&since), 5_000).await;
    assert_eq!(unread(&got, &room), json!({ "notification_count": 4, "highlight_count": 2 }));
    // A device syncing from the start sees the same counts, and so does the first one after it.
    assert_eq!(unread(&bob.sync(None, 0).await, &room), json!({ "notification_count": 4, "highlight_count": 2 }));
    alice.send_text(&room, "one more").await;
    let got = bob.sync(Some(got["next_batch"].as_str().unwrap()), 5_000).await;
    assert_eq!(unread(&got, &room), json!({ "notification_count": 5, "highlight_count": 2 }));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_sender_and_reset_unread_counts() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    alice.send_text(&room, "first").await;
    let mention = json!({ "msgtype": "m.text", "body": "bob: look", "m.mentions": { "user_ids": ["@bob:localhost"] } });
    let last = send(&alice, &room, mention).await;
    let counts = bob.sync(None, 0).await["rooms"]["join"][&room]["unread_notifications"].clone();
    assert_eq!(counts, json!({ "notification_count": 2, "highlight_count": 1 }));

    let alice_since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)), json!({})).await;
    let got = alice.sync(Some(&alice_since), 5_000).await;
    let receipt = ephemeral(&got, &room, "m.receipt").unwrap();
    assert!(receipt["content"][&last]["m.read"]["@bob:localhost"]["ts"].is_u64(), "{receipt}");
    let counts = bob.sync(None, 0).await["rooms"]["join"][&room]["unread_notifications"].clone();
    assert_eq!(counts, json!({ "notification_count": 0, "highlight_count": 0 }));

    // Private receipts stay private; fully-read markers become room account data.
    let since = got["next_batch"].as_str().unwrap().to_owned();
    let more = alice.send_text(&room, "again").await;
    let body = json!({ "m.read.private": more, "m.fully_read": more });
    bob.post(&format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)), body).await;
    let got = alice.sync(Some(&since), 0).await;
    assert!(ephemeral(&got, &room, "m.receipt").is_none_or(|r| r["content"][&more].get("m.read.private").is_none()));
    let bob_view = bob.sync(None, 0).await;
    let data = bob_view["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    assert!(data.iter().any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == more.as_str()));
    assert_eq!(bob_view["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_can_be_set_and_read() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, _) = room_with_bob(&s).await;
    let me = enc(&alice.user_id);
    assert_eq!(bob.get(&format!("/_matrix/client/v3/presence/{me}/status")).await["presence"], "offline");
    alice
        .put(
            &format!("/_matrix/client/v3/presence/{me}/status"),
            json!({ "presence": "online", "status_msg": "on call" }),
        )
        .await;
    let p = bob.get(&format!("/_matrix/client/v3/presence/{me}/status")).await;
    assert_eq!((p["presence"].as_str(), p["status_msg"].as_str()), (Some("online"), Some("on call")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_room_directory_lists_searches_and_paginates() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let ops = alice
        .create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Ops Room", "topic": "incidents", "room_alias_name": "ops" }))
        .await;
    let quiet = alice.create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Quiet" })).await;
    let hidden = alice.create_room(json!({ "name": "Hidden" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&ops)), json!({})).await;
    // Directory UIs ask for bridged networks first: none here, and only for signed-in users.
    assert_eq!(bob.get("/_matrix/client/v3/thirdparty/protocols").await, json!({}));
    let anonymous = myelin_suite::http(s.client, Method::GET, "/_matrix/client/v3/thirdparty/protocols", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Unauthenticated GET, biggest rooms first.
    let r = myelin_suite::http(s.client, Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let listing = r.json();
    let ids: Vec<&str> = listing["chunk"].as_array().unwrap().iter().map(|e| e["room_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [ops.as_str(), quiet.as_str()]);
    let first = &listing["chunk"][0];
    assert_eq!(first["name"], "Ops Room");
    assert_eq!(first["topic"], "incidents");
    assert_eq!(first["canonical_alias"], "#ops:localhost");
    assert_eq!(first["num_joined_members"], 2);
    assert_eq!(first["join_rule"], "public");
    assert_eq!(first["world_readable"], false);

    let found =
        bob.post("/_matrix/client/v3/publicRooms", json!({ "filter": { "generic_search_term": "quie" } })).await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    let page = bob.post("/_matrix/client/v3/publicRooms", json!({ "limit": 1 })).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let next = page["next_batch"].as_str().unwrap();
    let page2 = bob.post("/_matrix/client/v3/publicRooms", json!({ "limit": 1, "since": next })).await;
    assert_eq!(page2["chunk"][0]["room_id"], quiet.as_str());

    // Publishing needs power in the room; the visibility endpoint reflects it.
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&hidden));
    assert_eq!(bob.get(&path).await["visibility"], "private");
    let r = bob.request(Method::PUT, &path, Some(json!({ "visibility": "public" }))).await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");
    alice.put(&path, json!({ "visibility": "public" })).await;
    assert_eq!(bob.get(&path).await["visibility"], "public");
    let all = bob.post("/_matrix/client/v3/publicRooms", json!({})).await;
    assert_eq!(all["total_room_count_estimate"], 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_messages_by_words_with_filters_and_pages() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&other)), json!({})).await;
    alice.send_text(&room, "Deploy of v2 FAILED on node-3").await;
    bob.send_text(&room, "the deploy failed again").await;
    alice.send_text(&room, "deploy worked").await;
    alice.send_text(&other, "deploy failed elsewhere").await;
    let secret = alice.send_text(&room, "deploy failed secret").await;
    alice.put(&format!("/_matrix/client/v3/rooms/{}/redact/{}/s1", enc(&room), enc(&secret)), json!({})).await;

    let query = |body: Value| {
        let bob = bob.clone();
        async move { bob.post("/_matrix/client/v3/search", json!({ "search_categories": { "room_events": body } })).await }
    };
    let all = query(json!({ "search_term": "deploy FAILED" })).await;
    let res = &all["search_categories"]["room_events"];
    let bodies: Vec<&str> =
        res["results"].as_array().unwrap().iter().map(|r| r["result"]["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        ["deploy failed elsewhere", "the deploy failed again", "Deploy of v2 FAILED on node-3"],
        "newest first; the redacted one is gone"
    );
    assert_eq!(res["count"], 3);

    let only_room = query(
        json!({ "search_term": "deploy failed", "filter": { "rooms": [room], "senders": ["@alice:localhost"] } }),
    )
    .await;
    assert_eq!(only_room["search_categories"]["room_events"]["results"].as_array().unwrap().len(), 1);

    let page = query(json!({ "search_term": "deploy", "filter": { "limit": 2 } })).await;
    let next = page["search_categories"]["room_events"]["next_batch"].as_str().unwrap().to_owned();
    let rest = bob
        .post(
            &format!("/_matrix/client/v3/search?next_batch={next}"),
            json!({ "search_categories": { "room_events": { "search_term": "deploy", "filter": { "limit": 2 } } } }),
        )
        .await;
    assert_eq!(rest["search_categories"]["room_events"]["results"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_acls_are_validated_when_set() {
    let s = TestServer::open("localhost").await;
    let (alice, _bob, room) = room_with_bob(&s).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", enc(&room));
    let r = alice.request(Method::PUT, &path, Some(json!({ "allow": "*" }))).await;
    assert_eq!(r.errcode(), "M_BAD_JSON");
    let r = alice.request(Method::PUT, &path, Some(json!({ "allow": ["*"], "deny": ["localhost"] }))).await;
    assert_eq!(r.errcode(), "M_INVALID_PARAM", "an ACL may not ban its own server");
    alice.put(&path, json!({ "allow": ["*"], "deny": ["evil.example"], "allow_ip_literals": false })).await;
    let acl = alice.get(&path).await;
    assert_eq!(acl["deny"][0], "evil.example");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rules_can_be_changed_and_drive_counts_and_notifications() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let master = alice.get("/_matrix/client/v3/pushrules/global/override/.m.rule.master").await;
    assert_eq!(master["enabled"], false);

    let keyword = "/_matrix/client/v3/pushrules/global/content/deploys";
    alice.put(keyword, json!({ "pattern": "deploy", "actions": ["notify", { "set_tweak": "highlight" }] })).await;
    assert_eq!(alice.get(keyword).await["pattern"], "deploy");
    bob.send_text(&room, "deploy finished").await;
    let counts = alice.sync(None, 0).await["rooms"]["join"][&room]["unread_notifications"].clone();
    assert_eq!(counts, json!({ "notification_count": 1, "highlight_count": 1 }), "the keyword rule highlights");
    let notes = alice.get("/_matrix/client/v3/notifications?only=highlight").await;
    assert_eq!(notes["notifications"][0]["event"]["content"]["body"], "deploy finished", "{notes}");
    assert_eq!(notes["notifications"][0]["read"], false);

    // Muting the room: a room rule with no actions.
    alice.put(&format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)), json!({ "actions": [] })).await;
    bob.send_text(&room, "more chatter").await;
    let counts = alice.sync(None, 0).await["rooms"]["join"][&room]["unread_notifications"].clone();
    assert_eq!(counts["notification_count"], 1, "a muted room adds nothing: {counts}");

    alice
        .put(
            "/_matrix/client/v3/pushrules/global/override/.m.rule.is_user_mention/enabled",
            json!({ "enabled": false }),
        )
        .await;
    let enabled = alice.get("/_matrix/client/v3/pushrules/global/override/.m.rule.is_user_mention/enabled").await;
    assert_eq!(enabled["enabled"], false);
    let r = alice.request(Method::DELETE, keyword, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(alice.request(Method::GET, keyword, None).await.errcode(), "M_NOT_FOUND");
    let r = alice.request(Method::DELETE, "/_matrix/client/v3/pushrules/global/override/.m.rule.master", None).await;
    assert!(!r.status.is_success(), "server-default rules cannot be removed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_the_sync_of_users_sharing_a_room_only() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, _room) = room_with_bob(&s).await;
    let stranger = s.register("stranger").await;
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let stranger_since = stranger.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            json!({ "presence": "unavailable", "status_msg": "lunch" }),
        )
        .await;
    let got = bob.sync(Some(&bob_since), 5_000).await;
    let events = got["presence"]["events"].as_array().cloned().unwrap_or_default();
    let e = events.iter().find(|e| e["sender"] == alice.user_id.as_str()).unwrap_or_else(|| panic!("{got}"));
    assert_eq!(e["type"], "m.presence");
    assert_eq!(e["content"]["presence"], "unavailable");
    assert_eq!(e["content"]["status_msg"], "lunch");
    let other = stranger.sync(Some(&stranger_since), 0).await;
    assert_eq!(other["presence"]["events"], json!([]), "no shared room, no presence: {other}");
    // Once seen, it is not sent again.
    let next = got["next_batch"].as_str().unwrap();
    let again = bob.sync(Some(next), 0).await;
    assert_eq!(again["presence"]["events"], json!([]));
    s.stop().await;
}

/// State events carry what they replaced in `unsigned` (`prev_content`,
/// `prev_sender`, `replaces_state`), in `/sync`, `/messages` and `/event`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_carries_the_content_it_replaced() {
    let s = myelin_suite::TestServer::open("prev.test").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(serde_json::json!({ "topic": "first" })).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", myelin_suite::enc(&room));
    let first = alice.get(&path).await;
    assert_eq!(first["topic"], "first");
    let second =
        alice.put(&path, serde_json::json!({ "topic": "second" })).await["event_id"].as_str().unwrap().to_owned();
    let ev = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", myelin_suite::enc(&room), myelin_suite::enc(&second)))
        .await;
    assert_eq!(ev["unsigned"]["prev_content"]["topic"], "first", "{ev}");
    assert_eq!(ev["unsigned"]["prev_sender"], alice.user_id.as_str());
    let sync = alice.sync(None, 0).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let topic = timeline.iter().find(|e| e["event_id"] == second.as_str()).expect("the change in the timeline");
    assert_eq!(topic["unsigned"]["prev_content"]["topic"], "first");
    assert!(topic["unsigned"]["replaces_state"].is_string());
    // The room's first topic replaced nothing.
    let first_ev = timeline.iter().find(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "first").unwrap();
    assert!(first_ev["unsigned"].get("prev_content").is_none());
}

/// A threaded receipt names `main` or a thread root of the room; any other
/// thread id is refused (receipts are kept per thread, so made-up ids would
/// grow them without bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threaded_receipts_name_main_or_a_thread_root_of_the_room() {
    let s = TestServer::open("localhost").await;
    let (alice, bob, room) = room_with_bob(&s).await;
    let root = alice.send_text(&room, "root").await;
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&root));
    for (thread, ok) in [("main", true), (root.as_str(), true), ("$madeup:localhost", false), ("not an id", false)] {
        let r = bob.request(Method::POST, &path, Some(json!({ "thread_id": thread }))).await;
        let want = if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST };
        assert_eq!(r.status, want, "{thread}: {}", String::from_utf8_lossy(&r.body));
        if !ok {
            assert_eq!(r.errcode(), "M_INVALID_PARAM");
        }
    }
    let room_id = ruma::RoomId::parse(room.as_str()).unwrap();
    let threads: Vec<String> =
        s.engine.receipts_since(&room_id, 0).unwrap().into_iter().filter(|r| r.0 == bob.user_id).map(|r| r.2).collect();
    assert!(!threads.iter().any(|t| t.contains("madeup")), "{threads:?}");
    s.stop().await;
}
