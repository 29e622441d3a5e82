//! Rooms of every version Myelin creates (1–12, issue #27): created, joined
//! by a user of another Myelin over federation, chatted in both ways, an
//! event redacted (each version's redaction algorithm), a member kicked, a
//! user of the other server invited, joining and leaving, another knocking
//! (from v7),
//! the version reported in the create event and `/capabilities`, and the room
//! upgraded to the next version (12 to 1).

use http::StatusCode;
use myelin_suite::{enc, federation_pair, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_versions_1_to_12_work_locally_and_across_servers() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let bob = b.register("bob").await;
    let dave = b.register("dave").await;
    let erin = b.register("erin").await;
    let caps = alice.get("/_matrix/client/v3/capabilities").await;
    for v in 1..=12 {
        let version = v.to_string();
        assert_eq!(caps["capabilities"]["m.room_versions"]["available"][&version], "stable", "v{v} in capabilities");
        let r = alice
            .request(
                http::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({ "preset": "public_chat", "room_version": version, "name": format!("v{v}") })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "create v{v}: {:?}", String::from_utf8_lossy(&r.body));
        let room = r.json()["room_id"].as_str().unwrap().to_owned();
        let create = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create", enc(&room))).await;
        assert_eq!(create["room_version"], version.as_str());
        if v <= 10 {
            assert_eq!(create["creator"], alice.user_id.as_str(), "v{v} create events name the creator");
        }
        carol.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
        bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
        alice.send_text(&room, &format!("hello v{v}")).await;
        wait_for_text(&bob, &room, &format!("hello v{v}")).await;
        let secret = bob.send_text(&room, &format!("from bob v{v}")).await;
        wait_for_text(&alice, &room, &format!("from bob v{v}")).await;
        // Alice (room admin) redacts bob's message; everyone sees it redacted.
        alice
            .put(
                &format!("/_matrix/client/v3/rooms/{}/redact/{}/r{v}", enc(&room), enc(&secret)),
                json!({ "reason": "test" }),
            )
            .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ev = bob.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&secret))).await;
            if ev["content"].as_object().is_some_and(|c| c.is_empty()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "v{v}: the redaction never reached B: {ev}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let r = alice
            .request(
                http::Method::POST,
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
                Some(json!({ "user_id": carol.user_id })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "kick in v{v}");

        // A user of B invited across, joining through the invite, then leaving.
        alice
            .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": dave.user_id }))
            .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = dave
                .request(http::Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&room)), Some(json!({})))
                .await;
            if r.status == StatusCode::OK {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "v{v}: dave never could join through the invite");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        dave.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&dave.user_id));
            if alice.get(&path).await["membership"] == "leave" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "v{v}: dave's leave never reached A");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // From v7 a user of B knocks on the room once it takes knocks.
        if v >= 7 {
            let rules = format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&room));
            alice.put(&rules, json!({ "join_rule": "knock" })).await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let r = erin
                    .request(
                        http::Method::POST,
                        &format!("/_matrix/client/v3/knock/{}?server_name=a.test", enc(&room)),
                        Some(json!({ "reason": "let me in" })),
                    )
                    .await;
                if r.status == StatusCode::OK {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "v{v}: erin's knock was refused: {:?}", r.json());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&erin.user_id));
            // B is in the room (bob), so the knock is B's own event and reaches A by /send.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let r = alice.request(http::Method::GET, &path, None).await;
                if r.status == StatusCode::OK && r.json()["membership"] == "knock" {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "v{v}: A holds no knock of erin: {:?}", r.json());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            alice.put(&rules, json!({ "join_rule": "public" })).await;
        }

        // Upgraded to the next version (12 to 1): bob (power 0) may not, alice may.
        let next = v % 12 + 1;
        let upgrade = format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room));
        let r = bob.request(http::Method::POST, &upgrade, Some(json!({ "new_version": next.to_string() }))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "v{v}: a member without power upgrades");
        let r = alice.request(http::Method::POST, &upgrade, Some(json!({ "new_version": "99" }))).await;
        assert_eq!(r.json()["errcode"], "M_UNSUPPORTED_ROOM_VERSION", "v{v}");
        let r = alice.request(http::Method::POST, &upgrade, Some(json!({ "new_version": next.to_string() }))).await;
        assert_eq!(r.status, StatusCode::OK, "upgrade v{v} to v{next}: {:?}", String::from_utf8_lossy(&r.body));
        let new_room = r.json()["replacement_room"].as_str().unwrap().to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.tombstone", enc(&room));
            let t = bob.request(http::Method::GET, &path, None).await;
            if t.status == StatusCode::OK && t.json()["replacement_room"] == new_room.as_str() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "v{v}: B never saw the tombstone: {:?}", t.status);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&new_room)), json!({})).await;
        let create = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create", enc(&new_room))).await;
        assert_eq!(create["room_version"], next.to_string(), "v{v}");
        assert_eq!(create["predecessor"]["room_id"], room.as_str(), "v{v}");
        let name = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&new_room))).await;
        assert_eq!(name["name"], format!("v{v}"), "v{v}: the name is carried over");
        let rules = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules", enc(&new_room))).await;
        assert_eq!(rules["join_rule"], "public", "v{v}: the join rule is carried over");
        alice.send_text(&new_room, &format!("upgraded v{v}")).await;
        wait_for_text(&bob, &new_room, &format!("upgraded v{v}")).await;
        // The old room is closed to bob's messages now.
        let r = bob
            .request(
                http::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/late{v}", enc(&room)),
                Some(json!({ "msgtype": "m.text", "body": "too late" })),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "v{v}: the old room still takes messages");
    }
}

/// Before version 10 power levels may be strings; the checks the
/// Client-Server API makes itself (redacting others' events) read them as
/// their integers, as the auth rules do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_power_levels_of_old_versions_count_as_their_numbers() {
    let s = myelin_suite::TestServer::start_with("a.test", |c| c.registration.enabled = true).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let pl = json!({ "users": { alice.user_id.as_str(): "100", bob.user_id.as_str(): "60" }, "redact": "50" });
    let room = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "public_chat", "room_version": "1", "power_level_content_override": pl }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    let said = alice.send_text(&room, "bob may redact this").await;
    let r = bob
        .request(
            http::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&said)),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "bob's \"60\" reaches the \"50\" to redact: {:?}", r.json());
    s.stop().await;
}
