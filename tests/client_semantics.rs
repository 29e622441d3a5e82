//! Client-Server API semantics clients rely on, each as the other device or
//! user observes it: transaction ids only for the sending device, room tags,
//! ignored users.

use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

async fn login_again(s: &TestServer, c: &Client) -> Client {
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": c.user_id },
        "password": "pass-word-1",
    });
    let r =
        myelin_suite::http(s.client, http::Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes()))
            .await;
    let j = r.json();
    Client {
        addr: s.client,
        token: j["access_token"].as_str().unwrap_or_else(|| panic!("login: {j}")).to_owned(),
        user_id: c.user_id.clone(),
        device_id: j["device_id"].as_str().unwrap().to_owned(),
    }
}

fn timeline_event<'a>(sync: &'a Value, room: &str, event_id: &str) -> &'a Value {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .and_then(|evs| evs.iter().find(|e| e["event_id"] == event_id))
        .unwrap_or_else(|| panic!("{event_id} not in the timeline: {sync}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sending_device_sees_its_transaction_id() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let alice2 = login_again(&s, &alice).await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/my-txn-1", enc(&room));
    let sent = alice.put(&path, json!({ "msgtype": "m.text", "body": "hi" })).await;
    let event_id = sent["event_id"].as_str().unwrap();

    let own = alice.sync(None, 0).await;
    assert_eq!(timeline_event(&own, &room, event_id)["unsigned"]["transaction_id"], "my-txn-1");
    for (who, c) in [("alice's other device", &alice2), ("bob", &bob)] {
        let sync = c.sync(None, 0).await;
        let ev = timeline_event(&sync, &room, event_id);
        assert!(ev["unsigned"].get("transaction_id").is_none(), "{who} must not see it: {ev}");
    }
    // The same for /event and /messages.
    let one = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(event_id))).await;
    assert_eq!(one["unsigned"]["transaction_id"], "my-txn-1", "{one}");
    let other = bob.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(event_id))).await;
    assert!(other["unsigned"].get("transaction_id").is_none(), "{other}");
    let page = alice2.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&room))).await;
    let ev = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == event_id).unwrap();
    assert!(ev["unsigned"].get("transaction_id").is_none(), "other device in /messages: {ev}");
    // And for sliding sync (Element X matches its local echo by it).
    let sliding = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({ "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 5 } } });
    for (c, want) in [(&alice, Some("my-txn-1")), (&alice2, None)] {
        let r = c.post(sliding, body.clone()).await;
        let ev = r["rooms"][&room]["timeline"]
            .as_array()
            .and_then(|t| t.iter().find(|e| e["event_id"] == event_id))
            .unwrap_or_else(|| panic!("sliding sync timeline: {r}"))
            .clone();
        assert_eq!(ev["unsigned"].get("transaction_id").and_then(Value::as_str), want, "{ev}");
    }
    s.stop().await;
}

fn room_account_data<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["account_data"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_tags_are_set_listed_synced_and_removed() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let tags = format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room));
    alice.put(&format!("{tags}/u.work"), json!({ "order": 0.25 })).await;
    alice.put(&format!("{tags}/m.favourite"), json!({})).await;
    let got = alice.get(&tags).await;
    assert_eq!(got, json!({ "tags": { "u.work": { "order": 0.25 }, "m.favourite": {} } }));

    let first = alice.sync(None, 0).await;
    let tag = room_account_data(&first, &room, "m.tag").unwrap_or_else(|| panic!("m.tag in sync: {first}"));
    assert_eq!(tag["content"], got, "the m.tag event holds the same tags");

    alice.request(http::Method::DELETE, &format!("{tags}/u.work"), None).await;
    let next = alice.sync(first["next_batch"].as_str(), 0).await;
    let tag = room_account_data(&next, &room, "m.tag").unwrap_or_else(|| panic!("changed m.tag: {next}"));
    assert_eq!(tag["content"], json!({ "tags": { "m.favourite": {} } }));
    assert_eq!(alice.get(&tags).await, json!({ "tags": { "m.favourite": {} } }));

    // Concurrent tags on one room are all kept.
    let puts = (0..10).map(|i| {
        let (alice, tags) = (alice.clone(), tags.clone());
        async move { alice.put(&format!("{tags}/u.t{i}"), json!({ "order": 0.5 })).await }
    });
    futures_util::future::join_all(puts).await;
    let all = alice.get(&tags).await;
    assert_eq!(all["tags"].as_object().map(|t| t.len()), Some(11), "{all}");

    // Bad input.
    for (who, path, body, status, errcode) in [
        ("order not a number", format!("{tags}/u.x"), json!({ "order": "high" }), 400, "M_BAD_JSON"),
        ("body not an object", format!("{tags}/u.x"), json!([1]), 400, "M_BAD_JSON"),
        (
            "another user's tags",
            format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.x", enc(&alice.user_id), enc(&room)),
            json!({}),
            403,
            "M_FORBIDDEN",
        ),
        (
            "not a room id",
            format!("/_matrix/client/v3/user/{}/rooms/nonsense/tags/u.x", enc(&alice.user_id)),
            json!({}),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let c = if who == "another user's tags" { &bob } else { &alice };
        let r = c.request(http::Method::PUT, &path, Some(body)).await;
        assert_eq!((r.status.as_u16(), r.errcode()), (status, errcode.to_owned()), "{who}");
    }
    assert_eq!(alice.get(&tags).await["tags"].as_object().map(|t| t.len()), Some(11), "nothing changed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_users_messages_invites_and_typing_are_hidden_but_not_state() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let power = json!({ "users": { bob.user_id.clone(): 50 } });
    let room = carol.create_room(json!({ "preset": "public_chat", "power_level_content_override": power })).await;
    for c in [&alice, &bob] {
        c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    }
    let ignore = format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", enc(&alice.user_id));
    alice.put(&ignore, json!({ "ignored_users": { bob.user_id.clone(): {} } })).await;

    let hidden = bob.send_text(&room, "from bob").await;
    let topic = bob
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)), json!({ "topic": "bob's topic" }))
        .await;
    let shown = carol.send_text(&room, "from carol").await;
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
        json!({ "typing": true, "timeout": 30000 }),
    )
    .await;
    carol
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&carol.user_id)),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    let from_bob = bob.create_room(json!({ "invite": [alice.user_id] })).await;
    let from_carol = carol.create_room(json!({ "invite": [alice.user_id] })).await;

    let sync = alice.sync(None, 0).await;
    let ids: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(!ids.contains(&hidden.as_str()), "bob's message is hidden: {ids:?}");
    assert!(ids.contains(&shown.as_str()), "carol's is not");
    assert!(ids.contains(&topic["event_id"].as_str().unwrap()), "bob's state events still come");
    assert!(sync["rooms"]["invite"].get(&from_bob).is_none(), "no invite from bob: {}", sync["rooms"]["invite"]);
    assert!(sync["rooms"]["invite"].get(&from_carol).is_some(), "carol's invite comes");
    let typing = sync["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .unwrap_or_else(|| panic!("typing: {sync}"))
        .clone();
    assert_eq!(typing["content"]["user_ids"], json!([carol.user_id]), "{typing}");

    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&room))).await;
    let ids: Vec<&str> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert!(!ids.contains(&hidden.as_str()) && ids.contains(&shown.as_str()), "/messages: {ids:?}");

    // Unignored: a new sync shows bob's message again.
    alice.put(&ignore, json!({ "ignored_users": {} })).await;
    let sync = alice.sync(None, 0).await;
    let ids: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(ids.contains(&hidden.as_str()), "{ids:?}");
    assert!(sync["rooms"]["invite"].get(&from_bob).is_some());
    s.stop().await;
}

fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"].as_array()?.iter().find(|e| e["sender"] == user).map(|e| &e["content"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_comes_with_sync_set_presence_and_new_members() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    bob.put(
        &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
        json!({ "presence": "unavailable", "status_msg": "away" }),
    )
    .await;

    // Syncing marks alice online; she sees her own presence and bob's.
    let first = alice.sync(None, 0).await;
    assert_eq!(presence_of(&first, &alice.user_id).map(|p| p["presence"].clone()), Some(json!("online")), "{first}");
    let bob_p = presence_of(&first, &bob.user_id).unwrap_or_else(|| panic!("bob's presence: {first}"));
    assert_eq!((bob_p["presence"].as_str(), bob_p["status_msg"].as_str()), (Some("unavailable"), Some("away")));
    // Bob's own sync does not override the state he chose.
    bob.sync(None, 0).await;
    let got = alice.get(&format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id))).await;
    assert_eq!(got["presence"], "unavailable", "{got}");

    // set_presence=offline leaves carol offline.
    carol.get("/_matrix/client/v3/sync?timeout=0&set_presence=offline").await;
    let got = alice.get(&format!("/_matrix/client/v3/presence/{}/status", enc(&carol.user_id))).await;
    assert_eq!(got["presence"], "offline", "{got}");
    let r = carol.request(http::Method::GET, "/_matrix/client/v3/sync?timeout=0&set_presence=busy", None).await;
    assert_eq!((r.status.as_u16(), r.errcode()), (400, "M_INVALID_PARAM".to_owned()));

    // Carol goes online (before sharing a room), then joins: alice's next sync has her presence.
    carol.sync(None, 0).await;
    let token = alice.sync(first["next_batch"].as_str(), 0).await["next_batch"].as_str().unwrap().to_owned();
    carol.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    let next = alice.sync(Some(&token), 0).await;
    assert_eq!(
        presence_of(&next, &carol.user_id).map(|p| p["presence"].clone()),
        Some(json!("online")),
        "a new member's presence: {next}"
    );
    s.stop().await;
}

fn chunk_bodies(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap_or_else(|| panic!("no chunk: {page}"))
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pages_from_a_sync_next_batch_and_says_where_to_go_on() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for body in ["one", "two", "three"] {
        alice.send_text(&room, body).await;
    }
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for body in ["four", "five"] {
        alice.send_text(&room, body).await;
    }
    let messages = |dir: &str, from: &str, limit: u32| {
        format!("/_matrix/client/v3/rooms/{}/messages?dir={dir}&from={}&limit={limit}", enc(&room), enc(from))
    };
    // Backwards from the sync token: what came before it, newest first.
    let back = alice.get(&messages("b", &since, 3)).await;
    assert_eq!(chunk_bodies(&back), ["three", "two", "one"], "{back}");
    // More may follow (the room's creation events): `end` says where.
    let end = back["end"].as_str().unwrap_or_else(|| panic!("no end while more may follow: {back}")).to_owned();
    let older = alice.get(&messages("b", &end, 100)).await;
    assert!(chunk_bodies(&older).is_empty(), "{older}");
    assert!(
        older["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"),
        "the rest of the room's history: {older}"
    );
    // Forwards from the sync token: what came after it.
    let forward = alice.get(&messages("f", &since, 10)).await;
    assert_eq!(chunk_bodies(&forward), ["four", "five"], "{forward}");
    s.stop().await;
}
