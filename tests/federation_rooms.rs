//! Rooms across two servers: joins and chat, DM invites accepted and declined,
//! knocks, the deprecated v1 send_join, the remote public directory, and edits,
//! replies, reactions and redactions.

use http::{Method, StatusCode};
use myelin_suite::{enc, federation_pair, signed_get, signed_put, sync_until, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_b_joins_a_room_on_a_and_both_sides_chat() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Cross-server" })).await;

    let joined = bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    assert_eq!(joined["room_id"], room.as_str());
    let name = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room))).await;
    assert_eq!(name["name"], "Cross-server", "B has the room's state after the join");

    // A learns of bob's join and lists him.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room))).await;
        if members["joined"].get("@bob:b.test").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A never saw bob join");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    alice.send_text(&room, "hello bob, from A").await;
    let seen = wait_for_text(&bob, &room, "hello bob, from A").await;
    let ev = seen["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "hello bob, from A")
        .unwrap()
        .clone();
    assert_eq!(ev["sender"], "@alice:a.test");

    bob.send_text(&room, "hi alice, from B").await;
    wait_for_text(&alice, &room, "hi alice, from B").await;

    // A burst arrives complete and in order.
    for i in 0..30 {
        alice.send_text(&room, &format!("burst {i}")).await;
    }
    wait_for_text(&bob, &room, "burst 29").await;
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=40", enc(&room))).await;
    let got: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with("burst "))
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..30).rev().map(|i| format!("burst {i}")).collect();
    assert_eq!(got, want);

    // The burst rode pooled connections: A and B share one process here, so the
    // counter covers both listeners; without pooling every transaction and key
    // or profile request would be a connection of its own (well over 30).
    let metrics = myelin_suite::http(a.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let accepted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("myelin_federation_connections_accepted_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the connection counter");
    assert!(accepted <= 12.0, "{accepted} federation connections for about 35 requests");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_invite_crosses_servers_and_the_invitee_joins_through_the_inviter() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let room = alice
        .create_room(json!({ "preset": "trusted_private_chat", "name": "A and B", "invite": ["@bob:b.test"], "is_direct": true }))
        .await;

    // Bob's server co-signed the invite and shows it with the room's name.
    let invited = bob.sync(Some(&bob_since), 5_000).await;
    let state = invited["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "A and B"), "{invited}");
    let invite = state.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:b.test").unwrap();
    assert_eq!(invite["content"]["is_direct"], true);
    let on_a =
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc("@bob:b.test"))).await;
    assert_eq!(on_a["membership"], "invite");

    // Joining needs no server name: the inviter's server is known from the invite.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    alice.send_text(&room, "welcome to the DM").await;
    wait_for_text(&bob, &room, "welcome to the DM").await;
    bob.send_text(&room, "thanks").await;
    wait_for_text(&alice, &room, "thanks").await;

    // Inviting someone who does not exist on B is refused by B.
    let r = alice
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(json!({ "user_id": "@ghost:b.test" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&r.body));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_b_searches_the_public_directory_of_a() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Incident Ops", "topic": "pager", "room_alias_name": "ops" }))
        .await;
    alice.create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Lunch" })).await;
    alice.create_room(json!({ "preset": "private_chat", "name": "Secret Ops" })).await;

    let all = bob.get("/_matrix/client/v3/publicRooms?server=a.test").await;
    let names: Vec<&str> = all["chunk"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 2, "{all}");
    assert!(names.contains(&"Incident Ops") && names.contains(&"Lunch"), "{names:?}");

    let found = bob
        .post(
            "/_matrix/client/v3/publicRooms?server=a.test",
            json!({ "filter": { "generic_search_term": "ops" }, "limit": 10 }),
        )
        .await;
    let chunk = found["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{found}");
    assert_eq!(chunk[0]["room_id"], room.as_str());
    assert_eq!(chunk[0]["canonical_alias"], "#ops:a.test");
    assert_eq!(chunk[0]["topic"], "pager");

    // Paging through the remote directory one room at a time reaches both.
    let first = bob.post("/_matrix/client/v3/publicRooms?server=a.test", json!({ "limit": 1 })).await;
    assert_eq!(first["chunk"].as_array().unwrap().len(), 1);
    let next = first["next_batch"].as_str().expect("a next_batch for the second page");
    let second = bob.post("/_matrix/client/v3/publicRooms?server=a.test", json!({ "limit": 1, "since": next })).await;
    assert_eq!(second["chunk"].as_array().unwrap().len(), 1);
    assert_ne!(first["chunk"][0]["room_id"], second["chunk"][0]["room_id"]);

    // Bob can join what he found, by alias.
    let joined = bob.post(&format!("/_matrix/client/v3/join/{}", enc("#ops:a.test")), json!({})).await;
    assert_eq!(joined["room_id"], room.as_str());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_invite_is_declined_through_the_inviting_server() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat", "invite": ["@bob:b.test"] })).await;
    let since = bob.sync(None, 0).await;
    assert!(since["rooms"]["invite"].get(&room).is_some(), "{since}");
    let since = since["next_batch"].as_str().unwrap().to_owned();

    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;

    // A holds bob's own, signed leave in the room state.
    let member = |alice: myelin_suite::Client, room: String| async move {
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc("@bob:b.test"))).await
    };
    assert_eq!(member(alice.clone(), room.clone()).await["membership"], "leave");
    // Bob's sync moves the room from invite to leave; a fresh sync shows no invite.
    let after = bob.sync(Some(&since), 0).await;
    assert!(after["rooms"]["leave"].get(&room).is_some(), "{after}");
    assert!(bob.sync(None, 0).await["rooms"]["invite"].get(&room).is_none());

    // Alice can invite again, and this time bob joins.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": "@bob:b.test" })).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    assert_eq!(member(alice.clone(), room.clone()).await["membership"], "join");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_b_knocks_on_a_room_on_a_is_let_in_and_chats() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat", "name": "knock knock",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;
    let closed = alice.create_room(json!({ "preset": "private_chat" })).await;
    let alice_since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let bob_since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // An invite-only room refuses the knock; the knock room takes it.
    let refused = bob
        .request(Method::POST, &format!("/_matrix/client/v3/knock/{}?via=a.test", enc(&closed)), Some(json!({})))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&refused.body));
    let knocked = bob
        .post(&format!("/_matrix/client/v3/knock/{}?via=a.test", enc(&room)), json!({ "reason": "let me in" }))
        .await;
    assert_eq!(knocked["room_id"], room);
    // Bob sees the room he knocked on, with its name, in rooms.knock.
    let s = sync_until(&bob, &bob_since, "the knocked room", |s| s["rooms"]["knock"].get(&room).is_some()).await;
    let state = s["rooms"]["knock"][&room]["knock_state"]["events"].as_array().unwrap().clone();
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "knock knock"), "{state:?}");
    // Alice on A sees the knock with its reason.
    let room_id = room.clone();
    let s = sync_until(&alice, &alice_since, "bob's knock", |s| {
        s["rooms"]["join"][&room_id]["timeline"]["events"].as_array().is_some_and(|evs| {
            evs.iter().any(|e| e["state_key"] == "@bob:b.test" && e["content"]["membership"] == "knock")
        })
    })
    .await;
    let knock = s["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == "@bob:b.test")
        .unwrap()
        .clone();
    assert_eq!(knock["content"]["reason"], "let me in");
    // A local user knocks too, without federation.
    carol.post(&format!("/_matrix/client/v3/knock/{}", enc(&room)), json!({})).await;
    let m = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&carol.user_id)))
        .await;
    assert_eq!(m["membership"], "knock");

    // Alice lets bob in: the invite reaches B, bob joins and they chat.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": "@bob:b.test" })).await;
    sync_until(&bob, &bob_since, "the invite", |s| s["rooms"]["invite"].get(&room).is_some()).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    alice.send_text(&room, "welcome in").await;
    wait_for_text(&bob, &room, "welcome in").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deprecated_v1_send_join_answers_with_the_wrapped_room_state() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    // B makes the join by hand: template from A, stamped and signed with B's key.
    let made = signed_get(&b, &a, &format!("/_matrix/federation/v1/make_join/{}/%40bob%3Ab.test?ver=12", enc(&room)))
        .await
        .json();
    let version = ruma::RoomVersionId::try_from(made["room_version"].as_str().unwrap()).unwrap();
    let rules = myelin_engine::rooms::version::rules(&version).unwrap();
    let mut event: ruma::CanonicalJsonObject = serde_json::from_value(made["event"].clone()).unwrap();
    event.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::Int::from(1_700_000_000u32)));
    b.engine.keys.hash_and_sign_event(&mut event, &rules).unwrap();
    let event_id = myelin_engine::rooms::pdu::event_id_of(&event, &rules).unwrap();
    let body = serde_json::to_value(&event).unwrap();
    let path = format!("/_matrix/federation/v1/send_join/{}/{}", enc(&room), enc(event_id.as_str()));
    let reply = signed_put(&b, &a, &path, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let answer = reply.json();
    assert_eq!(answer[0], 200, "wrapped as [200, body]: {answer}");
    let state = answer[1]["state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    assert!(!answer[1]["auth_chain"].as_array().unwrap().is_empty());
    let m = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/%40bob%3Ab.test", enc(&room))).await;
    assert_eq!(m["membership"], "join");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_replies_reactions_and_redactions_cross_between_two_myelins() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    let original = alice.send_text(&room, "helo").await;
    wait_for_text(&bob, &room, "helo").await;
    let send = |c: &myelin_suite::Client, kind: &str, txn: &str, content: serde_json::Value| {
        let (c, kind, txn, room) = (c.clone(), kind.to_owned(), txn.to_owned(), room.clone());
        async move {
            c.put(&format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(&room)), content).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    send(
        &alice,
        "m.room.message",
        "edit1",
        json!({
            "msgtype": "m.text", "body": "* hello",
            "m.new_content": { "msgtype": "m.text", "body": "hello" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": original },
        }),
    )
    .await;
    send(
        &bob,
        "m.room.message",
        "reply1",
        json!({
            "msgtype": "m.text", "body": "> hello\n\nhi back", "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply></mx-reply><em>hi back</em>",
            "m.relates_to": { "m.in_reply_to": { "event_id": original } },
        }),
    )
    .await;
    send(
        &bob,
        "m.reaction",
        "react1",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": original, "key": "🎉" } }),
    )
    .await;
    let doomed = alice.send_text(&room, "delete me").await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&doomed)),
            json!({ "reason": "oops" }),
        )
        .await;

    // Bob on B: the edit is bundled on the original and the redaction applied.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let e = bob
            .request(Method::GET, &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&doomed)), None)
            .await;
        let gone = e.status == StatusCode::OK && e.json()["content"].get("body").is_none();
        let o = bob.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&original))).await;
        let edited = o["unsigned"]["m.relations"]["m.replace"].is_object();
        if gone && edited {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B never saw the edit ({o}) or the redaction");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Alice on A: bob's reply keeps its formatting, and his reaction is counted.
    wait_for_text(&alice, &room, "> hello\n\nhi back").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let rel = alice
            .get(&format!("/_matrix/client/v1/rooms/{}/relations/{}/m.annotation", enc(&room), enc(&original)))
            .await;
        if rel["chunk"].as_array().is_some_and(|c| c.iter().any(|e| e["content"]["m.relates_to"]["key"] == "🎉")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A never saw bob's reaction: {rel}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&room))).await;
    let r = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "> hello\n\nhi back")
        .unwrap()
        .clone();
    assert_eq!(r["content"]["formatted_body"], "<mx-reply></mx-reply><em>hi back</em>");
    assert_eq!(r["content"]["m.relates_to"]["m.in_reply_to"]["event_id"], original);
    a.stop().await;
    b.stop().await;
}
