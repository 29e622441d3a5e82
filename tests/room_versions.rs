//! Rooms of every version Myelin creates (1–12, issue #27): created, joined
//! by a user of another Myelin over federation, chatted in both ways, an
//! event redacted (each version's redaction algorithm), a member kicked, and
//! the version reported in the create event and `/capabilities`.

use http::StatusCode;
use myelin_suite::{enc, federation_pair, wait_for_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_versions_1_to_12_work_locally_and_across_servers() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let bob = b.register("bob").await;
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
    }
}
