//! `/sync`'s `state` block as the Client-Server API defines it (§"GET /sync",
//! `rooms.join.{roomId}.state`): "Updates to the state, between the time
//! indicated by the `since` parameter, and the start of the `timeline` (or all
//! state up to the start of the `timeline`, if `since` is not given, or
//! `full_state` is true)". A state event in the timeline is never repeated in
//! `state`; lazy loading sends only the timeline senders' member events.

use myelin_suite::{Client, TestServer, enc};
use serde_json::{Value, json};

fn room<'a>(sync: &'a Value, section: &str, room: &str) -> &'a Value {
    &sync["rooms"][section][room]
}

fn events<'a>(entry: &'a Value, block: &str) -> &'a [Value] {
    entry[block]["events"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn ids(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["event_id"].as_str()).collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

async fn sync_with(c: &Client, since: Option<&str>, filter: Value, extra: &str) -> Value {
    let filter = enc(&filter.to_string());
    let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
    c.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={filter}{since}{extra}")).await
}

fn limit(n: u64) -> Value {
    json!({ "room": { "timeline": { "limit": n } } })
}

async fn put_state(c: &Client, room: &str, kind: &str, content: Value) -> String {
    let r = c.put(&format!("/_matrix/client/v3/rooms/{}/state/{kind}", enc(room)), content).await;
    r["event_id"].as_str().unwrap_or_else(|| panic!("state {kind}: {r}")).to_owned()
}

async fn join(c: &Client, room: &str) {
    let r = c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await;
    assert!(r["room_id"].is_string(), "join: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_is_the_state_at_the_start_of_the_timeline() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat", "name": "First name" })).await;
    for i in 0..3 {
        alice.send_text(&room_id, &format!("message {i}")).await;
    }
    let renamed = put_state(&alice, &room_id, "m.room.name", json!({ "name": "Second name" })).await;
    let last = alice.send_text(&room_id, "after the rename").await;

    let sync = sync_with(&alice, None, limit(2), "").await;
    let entry = room(&sync, "join", &room_id);
    assert_eq!(ids(events(entry, "timeline")), vec![renamed.as_str(), last.as_str()], "{entry}");
    assert_eq!(entry["timeline"]["limited"], true);
    let state = events(entry, "state");
    let names = of_type(state, "m.room.name");
    assert_eq!(names.len(), 1, "the name at the start of the timeline: {state:?}");
    assert_eq!(names[0]["content"]["name"], "First name", "not the one the timeline carries");
    assert!(!ids(state).contains(&renamed.as_str()), "an event in the timeline is not repeated in state");
    assert_eq!(of_type(state, "m.room.create").len(), 1, "all state up to the timeline");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_state_holds_only_what_changed_before_the_timeline() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;
    let first = sync_with(&alice, None, limit(10), "").await;
    let token = first["next_batch"].as_str().unwrap().to_owned();

    // No gap: state changes arrive in the timeline, and state is empty.
    let topic = put_state(&alice, &room_id, "m.room.topic", json!({ "topic": "one" })).await;
    let next = sync_with(&alice, Some(&token), limit(10), "").await;
    let entry = room(&next, "join", &room_id);
    assert_eq!(ids(events(entry, "timeline")), vec![topic.as_str()], "{entry}");
    assert_eq!(entry["timeline"]["limited"], false);
    assert!(events(entry, "state").is_empty(), "nothing before the timeline changed: {entry}");
    let token = next["next_batch"].as_str().unwrap().to_owned();

    // A gap: the topic set in the gap is in state, and nothing the client already had.
    let topic2 = put_state(&alice, &room_id, "m.room.topic", json!({ "topic": "two" })).await;
    for i in 0..4 {
        alice.send_text(&room_id, &format!("gap {i}")).await;
    }
    let gapped = sync_with(&alice, Some(&token), limit(2), "").await;
    let entry = room(&gapped, "join", &room_id);
    assert_eq!(entry["timeline"]["limited"], true, "{entry}");
    assert_eq!(events(entry, "timeline").len(), 2);
    assert!(entry["timeline"]["prev_batch"].is_string());
    let state = events(entry, "state");
    assert_eq!(ids(state), vec![topic2.as_str()], "only the change in the gap: {state:?}");

    // `full_state=true` gives all state up to the timeline again.
    let full = sync_with(&alice, Some(&token), limit(2), "&full_state=true").await;
    let state = events(room(&full, "join", &room_id), "state");
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.member", "m.room.topic"] {
        assert_eq!(of_type(state, kind).len(), 1, "{kind} in full state: {state:?}");
    }
    assert_eq!(of_type(state, "m.room.topic")[0]["event_id"], topic2.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_in_the_gap_carries_its_state() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat", "name": "Joined later" })).await;
    for i in 0..5 {
        alice.send_text(&room_id, &format!("before bob {i}")).await;
    }
    let token = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    join(&bob, &room_id).await;
    alice.send_text(&room_id, "welcome").await;

    let next = sync_with(&bob, Some(&token), limit(1), "").await;
    let entry = room(&next, "join", &room_id);
    assert_eq!(events(entry, "timeline").len(), 1, "{entry}");
    let state = events(entry, "state");
    assert_eq!(of_type(state, "m.room.create").len(), 1, "a new room's whole state: {state:?}");
    assert_eq!(of_type(state, "m.room.name")[0]["content"]["name"], "Joined later");
    let members: Vec<&str> = of_type(state, "m.room.member").iter().filter_map(|m| m["state_key"].as_str()).collect();
    assert!(members.contains(&bob.user_id.as_str()) && members.contains(&alice.user_id.as_str()), "{members:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loading_sends_the_members_of_timeline_senders() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room_id).await;
    join(&carol, &room_id).await;
    bob.send_text(&room_id, "bob speaks").await;
    for i in 0..3 {
        carol.send_text(&room_id, &format!("carol speaks {i}")).await;
    }
    let lazy = |n: u64| json!({ "room": { "timeline": { "limit": n }, "state": { "lazy_load_members": true } } });

    let first = sync_with(&alice, None, lazy(2), "").await;
    let entry = room(&first, "join", &room_id);
    let members = |entry: &Value| -> Vec<String> {
        let mut m: Vec<String> = of_type(events(entry, "state"), "m.room.member")
            .iter()
            .filter_map(|m| m["state_key"].as_str().map(str::to_owned))
            .collect();
        m.sort();
        m
    };
    let mut want = vec![alice.user_id.to_string(), carol.user_id.to_string()];
    want.sort();
    assert_eq!(members(entry), want, "the sender and the user, not bob: {entry}");
    assert_eq!(of_type(events(entry, "state"), "m.room.create").len(), 1, "other state is whole");

    // Bob speaks after a gap: his membership comes with his message, and carol's is not resent.
    let token = first["next_batch"].as_str().unwrap().to_owned();
    carol.send_text(&room_id, "carol again").await;
    carol.send_text(&room_id, "carol once more").await;
    bob.send_text(&room_id, "bob again").await;
    let next = sync_with(&alice, Some(&token), lazy(1), "").await;
    let entry = room(&next, "join", &room_id);
    assert_eq!(entry["timeline"]["limited"], true, "{entry}");
    assert_eq!(members(entry), vec![bob.user_id.to_string()], "{entry}");
    assert!(of_type(events(entry, "state"), "m.room.create").is_empty(), "nothing else changed: {entry}");

    // Without lazy loading, the same gap sends no members at all: nobody's changed.
    let plain = sync_with(&alice, Some(&token), limit(1), "").await;
    assert!(events(room(&plain, "join", &room_id), "state").is_empty(), "{plain}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_room_shows_its_state_up_to_the_leave() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat", "name": "Before" })).await;
    join(&bob, &room_id).await;
    bob.send_text(&room_id, "bob was here").await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)), json!({})).await;
    put_state(&alice, &room_id, "m.room.name", json!({ "name": "After" })).await;
    alice.send_text(&room_id, "after bob left").await;

    let filter = json!({ "room": { "include_leave": true, "timeline": { "limit": 1 } } });
    let sync = sync_with(&bob, None, filter, "").await;
    let entry = room(&sync, "leave", &room_id);
    let timeline = events(entry, "timeline");
    assert_eq!(timeline.len(), 1, "{entry}");
    assert_eq!(timeline[0]["content"]["membership"], "leave", "the leave ends it: {entry}");
    let state = events(entry, "state");
    assert_eq!(of_type(state, "m.room.name")[0]["content"]["name"], "Before", "nothing after the leave: {state:?}");
    assert_eq!(of_type(state, "m.room.create").len(), 1, "{state:?}");
    let bob_member = of_type(state, "m.room.member")
        .into_iter()
        .find(|m| m["state_key"] == bob.user_id.as_str())
        .unwrap_or_else(|| panic!("bob's join before the leave: {state:?}"));
    assert_eq!(bob_member["content"]["membership"], "join");
    s.stop().await;
}

/// SyTest 31sync/06state "Current state appears in timeline in private history"
/// (and "… with many messages after"): in a `joined`-history room, a member who
/// left and came back sees in her next sync the join that happened while she was
/// away, though history hides it, because it is the room's current state; and
/// the timeline reaches back past the messages she may not see to find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_appears_in_the_timeline_of_a_private_history_room() {
    let s = TestServer::open("localhost").await;
    let creator = s.register("creator").await;
    for messages_after in [0, 50] {
        let syncer = s.register(&format!("syncer{messages_after}")).await;
        let invitee = s.register(&format!("invitee{messages_after}")).await;
        let room = creator.create_room(json!({ "preset": "public_chat" })).await;
        syncer.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
        creator
            .put(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", enc(&room)),
                json!({ "history_visibility": "joined" }),
            )
            .await;
        creator
            .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": invitee.user_id }))
            .await;
        let since = syncer.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
        syncer.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
        invitee.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
        for n in 0..messages_after {
            creator.send_text(&room, &format!("hidden {n}")).await;
        }
        syncer.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;

        let sync = syncer.sync(Some(&since), 0).await;
        let timeline =
            sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap_or_else(|| panic!("{sync}"));
        assert!(
            timeline.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == invitee.user_id.as_str()
                && e["content"]["membership"] == "join"),
            "the invitee's join ({messages_after} messages after it) is in the timeline: {timeline:?}"
        );
        // The messages sent while the syncer was away stay hidden.
        assert!(!timeline.iter().any(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("hidden"))));
    }
    s.stop().await;
}
