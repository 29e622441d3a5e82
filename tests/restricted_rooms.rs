//! Restricted rooms (room versions 8+, `knock_restricted` from 10; issue #27):
//! members of an allowed room join without an invite, locally and from
//! another server, through a user of the resident server who may invite;
//! everyone else is refused with the codes the spec gives, and a joining
//! server that skips `make_join` cannot talk its way in.

use http::StatusCode;
use myelin_suite::{Client, enc, federation_pair, signed_get, signed_put, wait_for_text};
use serde_json::{Value, json};

/// A room of `version` with join rule `rule` allowing members of `allow`,
/// where inviting needs power `invite`.
async fn restricted_room(alice: &Client, version: &str, rule: &str, allow: &[&str], invite: i64) -> String {
    let allow: Vec<Value> = allow.iter().map(|r| json!({ "type": "m.room_membership", "room_id": r })).collect();
    alice
        .create_room(json!({
            "preset": "private_chat",
            "room_version": version,
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": rule, "allow": allow },
            }],
            "power_level_content_override": { "invite": invite },
        }))
        .await
}

/// A join request's status and errcode.
async fn join(c: &Client, room: &str, via: Option<&str>) -> (StatusCode, String) {
    let query = via.map(|s| format!("?server_name={s}")).unwrap_or_default();
    let r =
        c.request(http::Method::POST, &format!("/_matrix/client/v3/join/{}{query}", enc(room)), Some(json!({}))).await;
    (r.status, if r.status == StatusCode::OK { String::new() } else { r.errcode() })
}

/// `user`'s member event content in `room`, as `c` sees it.
async fn member(c: &Client, room: &str, user: &str) -> Value {
    c.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(room), enc(user))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_an_allowed_room_join_without_an_invite_and_others_are_refused() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let dave = a.register("dave").await;
    let erin = a.register("erin").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let frank = b.register("frank").await;
    let space = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(join(&dave, &space, None).await.0, StatusCode::OK);
    assert_eq!(join(&bob, &space, Some("a.test")).await.0, StatusCode::OK);
    assert_eq!(join(&frank, &space, Some("a.test")).await.0, StatusCode::OK);

    for (version, rule) in [("8", "restricted"), ("10", "knock_restricted"), ("12", "restricted")] {
        let room = restricted_room(&alice, version, rule, &[&space], 50).await;
        let what = format!("v{version} {rule}");

        // A local member of the space joins through alice, the only one who may invite.
        assert_eq!(join(&dave, &room, None).await, (StatusCode::OK, String::new()), "{what}: dave");
        assert_eq!(
            member(&alice, &room, dave.user_id.as_str()).await["join_authorised_via_users_server"],
            "@alice:a.test"
        );
        // A local user outside it is refused.
        assert_eq!(join(&erin, &room, None).await, (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()), "{what}: erin");

        // A member of the space on B joins through A: A names alice and co-signs.
        assert_eq!(join(&bob, &room, Some("a.test")).await, (StatusCode::OK, String::new()), "{what}: bob");
        assert_eq!(member(&alice, &room, bob.user_id.as_str()).await["membership"], "join", "{what}");
        let on_b = b
            .engine
            .rooms
            .state_event(&ruma::RoomId::parse(&room).unwrap(), "m.room.member", bob.user_id.as_str())
            .unwrap()
            .expect("bob's join is held on B");
        assert_eq!(on_b.content_value()["join_authorised_via_users_server"], "@alice:a.test", "{what}");
        let signers = serde_json::to_value(on_b.json.as_ref()).unwrap()["signatures"].clone();
        assert!(signers.get("a.test").is_some() && signers.get("b.test").is_some(), "{what}: {signers}");
        bob.send_text(&room, &format!("bob in {what}")).await;
        wait_for_text(&alice, &room, &format!("bob in {what}")).await;

        // A user of B outside the space is refused by A, and the refusal reaches the client.
        assert_eq!(join(&carol, &room, Some("a.test")).await, (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()), "{what}");

        // B holds the room now, but none of its users may invite there (50):
        // frank's join goes through A, which can authorise it.
        assert_eq!(join(&frank, &room, None).await, (StatusCode::OK, String::new()), "{what}: frank");
        assert_eq!(
            member(&alice, &room, frank.user_id.as_str()).await["join_authorised_via_users_server"],
            "@alice:a.test"
        );
        wait_for_text(&frank, &room, &format!("bob in {what}")).await;

        // An invited user needs no allowed room.
        alice
            .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": erin.user_id }))
            .await;
        assert_eq!(join(&erin, &room, None).await, (StatusCode::OK, String::new()), "{what}: invited erin");

        // Allowed rooms A takes no part in: A cannot tell, and says so.
        let elsewhere = restricted_room(&alice, version, rule, &["!nowhere:c.test"], 0).await;
        assert_eq!(
            join(&bob, &elsewhere, Some("a.test")).await,
            (StatusCode::BAD_REQUEST, "M_UNABLE_TO_AUTHORISE_JOIN".into()),
            "{what}"
        );
        // Nobody on A may invite (before version 12, where the creator always may).
        if version != "12" {
            let closed = restricted_room(&alice, version, rule, &[&space], 101).await;
            assert_eq!(
                join(&bob, &closed, Some("a.test")).await,
                (StatusCode::BAD_REQUEST, "M_UNABLE_TO_GRANT_JOIN".into()),
                "{what}"
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_join_that_skips_make_join_is_not_co_signed_for_a_user_outside_the_allowed_rooms() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let carol = b.register("carol").await;
    let space = alice.create_room(json!({ "preset": "public_chat" })).await;
    let room = restricted_room(&alice, "10", "restricted", &[&space], 0).await;
    // make_join refuses carol, who is in no allowed room.
    let made_path = format!("/_matrix/federation/v1/make_join/{}/%40carol%3Ab.test?ver=10", enc(&room));
    let refused = signed_get(&b, &a, &made_path).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&refused.body));
    // B builds the join itself from a public room's template shape, naming alice.
    let open_room = alice.create_room(json!({ "preset": "public_chat", "room_version": "10" })).await;
    let made =
        signed_get(&b, &a, &format!("/_matrix/federation/v1/make_join/{}/%40carol%3Ab.test?ver=10", enc(&open_room)))
            .await
            .json();
    let mut event = made["event"].clone();
    event["room_id"] = json!(room);
    event["content"]["join_authorised_via_users_server"] = json!("@alice:a.test");
    // Its prev and auth events must be the restricted room's for the join to be judged at all.
    let state = a.engine.rooms.current_state(&ruma::RoomId::parse(&room).unwrap()).unwrap();
    let id_of = |kind: &str, key: &str| {
        state
            .iter()
            .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(key))
            .unwrap()
            .event_id
            .to_string()
    };
    event["auth_events"] = json!([
        id_of("m.room.create", ""),
        id_of("m.room.power_levels", ""),
        id_of("m.room.join_rules", ""),
        id_of("m.room.member", "@alice:a.test"),
    ]);
    let head = a.engine.rooms.extremities(&ruma::RoomId::parse(&room).unwrap()).unwrap();
    event["prev_events"] = json!(head.iter().map(|e| e.to_string()).collect::<Vec<_>>());
    let rules = myelin_engine::rooms::version::rules(&ruma::RoomVersionId::V10).unwrap();
    let mut event: ruma::CanonicalJsonObject = serde_json::from_value(event).unwrap();
    event.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::Int::from(1_700_000_000u32)));
    b.engine.keys.hash_and_sign_event(&mut event, &rules).unwrap();
    let event_id = myelin_engine::rooms::pdu::event_id_of(&event, &rules).unwrap();
    let path = format!("/_matrix/federation/v2/send_join/{}/{}", enc(&room), enc(event_id.as_str()));
    let reply = signed_put(&b, &a, &path, &serde_json::to_value(&event).unwrap()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&reply.body));
    let m = alice
        .request(
            http::Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(carol.user_id.as_str())),
            None,
        )
        .await;
    assert_eq!(m.status, StatusCode::NOT_FOUND, "carol has no membership on A: {}", String::from_utf8_lossy(&m.body));
    a.stop().await;
    b.stop().await;
}
