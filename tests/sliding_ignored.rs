//! Ignored users in simplified sliding sync (MSC4186), as §"Ignoring Users" asks of
//! every sync: their messages, invites, typing and receipts are not sent; their
//! state events are.

use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const V3: &str = "/_matrix/client/v3";

async fn ss(c: &Client, pos: Option<&str>, body: &Value) -> Value {
    let path = match pos {
        Some(p) => format!("{SS}?pos={}&timeout=1000", enc(p)),
        None => format!("{SS}?timeout=0"),
    };
    c.post(&path, body.clone()).await
}

fn timeline(room: &Value) -> Vec<(String, String)> {
    room["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| (e["type"].as_str().unwrap_or("").to_owned(), e["sender"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_users_messages_invites_typing_and_receipts_are_not_sent_but_state_is() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    // Anyone may set state: bob's topic is state from an ignored user.
    let room = alice
        .create_room(json!({ "preset": "public_chat", "power_level_content_override": { "state_default": 0 } }))
        .await;
    for c in [&bob, &carol] {
        c.post(&format!("{V3}/join/{}", enc(&room)), json!({})).await;
    }
    let ignore = format!("{V3}/user/{}/account_data/m.ignored_user_list", enc(&alice.user_id));
    alice.put(&ignore, json!({ "ignored_users": { bob.user_id.clone(): {} } })).await;

    bob.send_text(&room, "from bob").await;
    let from_carol = carol.send_text(&room, "from carol").await;
    bob.put(&format!("{V3}/rooms/{}/state/m.room.topic/", enc(&room)), json!({ "topic": "bob's topic" })).await;
    // Bob invites alice elsewhere: the invite is not shown to her.
    let bobs_room = bob.create_room(json!({ "invite": [alice.user_id.clone()] })).await;

    let mut req = json!({
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 20, "required_state": [["m.room.topic", ""]] } },
        "extensions": { "typing": { "enabled": true }, "receipts": { "enabled": true } },
    });
    let first = ss(&alice, None, &req).await;
    assert!(first["rooms"].get(&bobs_room).is_none(), "an ignored user's invite is not listed: {first}");
    assert_eq!(first["lists"]["all"]["count"], 1, "{first}");
    let r = &first["rooms"][&room];
    let events = timeline(r);
    assert!(!events.contains(&("m.room.message".into(), bob.user_id.clone())), "bob's message is hidden: {r}");
    assert!(events.contains(&("m.room.message".into(), carol.user_id.clone())), "carol's is not: {r}");
    assert!(events.contains(&("m.room.topic".into(), bob.user_id.clone())), "bob's state is still sent: {r}");
    assert_eq!(r["required_state"][0]["content"]["topic"], "bob's topic", "{r}");

    // Typing and receipts: carol's arrive, bob's do not.
    for c in [&bob, &carol] {
        c.put(&format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&c.user_id)), json!({ "typing": true })).await;
        c.post(&format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&from_carol)), json!({})).await;
    }
    let mut pos = first["pos"].as_str().unwrap().to_owned();
    let (mut typing, mut readers) = (Value::Null, Value::Null);
    for _ in 0..5 {
        let next = ss(&alice, Some(&pos), &req).await;
        pos = next["pos"].as_str().unwrap().to_owned();
        if let Some(t) = next["extensions"]["typing"]["rooms"].get(&room) {
            typing = t["content"]["user_ids"].clone();
        }
        if let Some(r) = next["extensions"]["receipts"]["rooms"].get(&room) {
            readers = r["content"][&from_carol]["m.read"].clone();
        }
        if typing.as_array().is_some_and(|u| !u.is_empty()) && readers.is_object() {
            break;
        }
    }
    assert_eq!(typing, json!([carol.user_id.clone()]), "only carol types, as alice sees it");
    let readers: Vec<&String> = readers.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert_eq!(readers, [&carol.user_id], "only carol's receipt, as alice sees it");

    // No longer ignored: a new connection shows bob's message.
    alice.put(&ignore, json!({ "ignored_users": {} })).await;
    req["conn_id"] = json!("fresh");
    let after = ss(&alice, None, &req).await;
    let events = timeline(&after["rooms"][&room]);
    assert!(events.contains(&("m.room.message".into(), bob.user_id.clone())), "{after}");
    s.stop().await;
}
