//! The server-wide endpoints of the Synapse admin API over real HTTP, with the
//! requests Synapse's documentation shows: event reports (list, details,
//! delete), federation destinations (list, one, its rooms, reset_connection)
//! and background updates.

use http::{Method, StatusCode};
use myelin_engine::federation::backoff::Backoff;
use myelin_suite::{Client, TestServer, enc, federation_pair, wait_for_text};
use serde_json::json;

const ADMIN: &str = "/_synapse/admin";

async fn make_admin(s: &TestServer, c: &Client) {
    let user = ruma::UserId::parse(c.user_id.as_str()).unwrap();
    s.engine.users.set_admin(&user, true).await.unwrap();
}

/// (status, errcode or "") of an admin request.
async fn refused(c: &Client, method: Method, path: &str, body: Option<serde_json::Value>) -> (StatusCode, String) {
    let r = c.request(method, path, body).await;
    let code = if r.status.is_success() { String::new() } else { r.errcode() };
    (r.status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_reports_are_listed_newest_first_shown_with_the_event_and_deleted() {
    let s = TestServer::start_with("localhost", |c| c.registration.enabled = true).await;
    let admin = s.register("admin").await;
    make_admin(&s, &admin).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Lobby" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    let rude = bob.send_text(&room, "rude words").await;
    let worse = bob.send_text(&room, "worse words").await;
    for (event, reason) in [(&rude, "first"), (&worse, "second")] {
        let path = format!("/_matrix/client/v3/rooms/{}/report/{}", enc(&room), enc(event));
        alice.post(&path, json!({ "reason": reason, "score": -100 })).await;
    }
    // A whole-room report is not an event report.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/report", enc(&room)), json!({ "reason": "room" })).await;

    assert_eq!(
        refused(&alice, Method::GET, &format!("{ADMIN}/v1/event_reports"), None).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()),
        "a non-admin"
    );
    let list = admin.get(&format!("{ADMIN}/v1/event_reports")).await;
    assert_eq!(list["total"], 2, "{list}");
    let reports = list["event_reports"].as_array().unwrap();
    assert_eq!(reports[0]["event_id"], worse, "newest first by default: {list}");
    assert_eq!(reports[1]["event_id"], rude);
    let first = &reports[1];
    assert_eq!(first["reason"], "first");
    assert_eq!(first["score"], -100);
    assert_eq!(first["user_id"], alice.user_id);
    assert_eq!(first["sender"], bob.user_id);
    assert_eq!(first["room_id"], room);
    assert_eq!(first["name"], "Lobby");
    assert!(first["received_ts"].as_u64().unwrap() > 0);
    assert!(list.get("next_token").is_none(), "one page holds them: {list}");

    let page = admin.get(&format!("{ADMIN}/v1/event_reports?from=0&limit=1&dir=f")).await;
    assert_eq!(page["event_reports"][0]["event_id"], rude, "dir=f: oldest first");
    assert_eq!(page["next_token"], 1, "{page}");
    let page = admin.get(&format!("{ADMIN}/v1/event_reports?from=1&limit=1&dir=f")).await;
    assert_eq!(page["event_reports"][0]["event_id"], worse);
    assert!(page.get("next_token").is_none());
    let by_bob = admin.get(&format!("{ADMIN}/v1/event_reports?user_id={}", enc(&bob.user_id))).await;
    assert_eq!(by_bob["total"], 0, "bob reported nothing");
    let in_room = admin.get(&format!("{ADMIN}/v1/event_reports?room_id={}", enc(&room))).await;
    assert_eq!(in_room["total"], 2);

    let id = first["id"].as_u64().unwrap();
    let detail = admin.get(&format!("{ADMIN}/v1/event_reports/{id}")).await;
    assert_eq!(detail["event_id"], rude);
    assert_eq!(detail["event_json"]["content"]["body"], "rude words", "{detail}");
    for bad in ["abc", "-1"] {
        assert_eq!(
            refused(&admin, Method::GET, &format!("{ADMIN}/v1/event_reports/{bad}"), None).await,
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into()),
            "{bad}"
        );
    }
    assert_eq!(
        refused(&admin, Method::GET, &format!("{ADMIN}/v1/event_reports/9999"), None).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".into())
    );
    let r = admin.request(Method::DELETE, &format!("{ADMIN}/v1/event_reports/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({}));
    assert_eq!(
        refused(&admin, Method::DELETE, &format!("{ADMIN}/v1/event_reports/{id}"), None).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()),
        "deleted once"
    );
    assert_eq!(admin.get(&format!("{ADMIN}/v1/event_reports")).await["total"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_destinations_show_peers_their_rooms_and_backoff_and_reset_it() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let admin = a.register("admin").await;
    make_admin(&a, &admin).await;
    let bob = b.register("bob").await;
    let room = admin.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name=a.test", enc(&room)), json!({})).await;
    admin.send_text(&room, "hello b").await;
    wait_for_text(&bob, &room, "hello b").await;
    // A destination that is failing: its stored backoff, as the sender keeps it.
    let failing =
        Backoff { retry_at_ms: 1_700_000_060_000, step_ms: 60_000, failing_since_ms: 1_699_999_000_000, parked: false };
    a.engine.backoffs.set("down.test", failing).await.unwrap();

    let list = admin.get(&format!("{ADMIN}/v1/federation/destinations")).await;
    let names: Vec<&str> =
        list["destinations"].as_array().unwrap().iter().map(|d| d["destination"].as_str().unwrap()).collect();
    assert_eq!(names, ["b.test", "down.test"], "{list}");
    assert_eq!(list["total"], 2);
    let down = &list["destinations"][1];
    assert_eq!(down["retry_interval"], 60_000);
    assert_eq!(down["retry_last_ts"], 1_700_000_000_000u64);
    assert_eq!(down["failure_ts"], 1_699_999_000_000u64);
    assert!(down["last_successful_stream_ordering"].is_null());
    let up = &list["destinations"][0];
    assert_eq!((up["retry_interval"].as_u64(), up["failure_ts"].is_null()), (Some(0), true), "{up}");

    let page = admin.get(&format!("{ADMIN}/v1/federation/destinations?limit=1&dir=b")).await;
    assert_eq!(page["destinations"][0]["destination"], "down.test");
    assert_eq!(page["next_token"], "1", "{page}");
    let ordered = admin.get(&format!("{ADMIN}/v1/federation/destinations?order_by=retry_interval&dir=b")).await;
    assert_eq!(ordered["destinations"][0]["destination"], "down.test");
    let filtered = admin.get(&format!("{ADMIN}/v1/federation/destinations?destination=B.TE")).await;
    assert_eq!(filtered["total"], 1, "{filtered}");
    assert_eq!(
        refused(&admin, Method::GET, &format!("{ADMIN}/v1/federation/destinations?order_by=nonsense"), None).await,
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into())
    );

    let one = admin.get(&format!("{ADMIN}/v1/federation/destinations/b.test")).await;
    assert_eq!(one["destination"], "b.test");
    for unknown in ["nowhere.test", "a.test", "..", "bad%20name"] {
        assert_eq!(
            refused(&admin, Method::GET, &format!("{ADMIN}/v1/federation/destinations/{unknown}"), None).await,
            (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()),
            "{unknown}"
        );
    }
    let rooms = admin.get(&format!("{ADMIN}/v1/federation/destinations/b.test/rooms")).await;
    assert_eq!(rooms["total"], 1);
    assert_eq!(rooms["rooms"][0]["room_id"], room, "{rooms}");
    let none = admin.get(&format!("{ADMIN}/v1/federation/destinations/down.test/rooms")).await;
    assert_eq!(none["total"], 0);

    // Resetting a destination that is not failing is refused, as Synapse does.
    let reset = |d: &str| format!("{ADMIN}/v1/federation/destinations/{d}/reset_connection");
    assert_eq!(
        refused(&admin, Method::POST, &reset("b.test"), Some(json!({}))).await,
        (StatusCode::BAD_REQUEST, "M_UNKNOWN".into())
    );
    assert_eq!(admin.post(&reset("down.test"), json!({})).await, json!({}));
    assert!(a.engine.backoffs.get("down.test").unwrap().is_none(), "the backoff is gone");
    let after = admin.get(&format!("{ADMIN}/v1/federation/destinations")).await;
    assert_eq!(after["total"], 1, "down.test shares nothing and has no queue any more: {after}");
    let bob_on_a = a.register("carol").await;
    assert_eq!(
        refused(&bob_on_a, Method::GET, &format!("{ADMIN}/v1/federation/destinations"), None).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_updates_report_none_and_remember_a_pause() {
    let s = TestServer::start_with("localhost", |c| c.registration.enabled = true).await;
    let admin = s.register("admin").await;
    make_admin(&s, &admin).await;
    let status = admin.get(&format!("{ADMIN}/v1/background_updates/status")).await;
    assert_eq!(status, json!({ "enabled": true, "current_updates": {} }));
    assert_eq!(admin.get(&format!("{ADMIN}/v1/background_updates/enabled")).await, json!({ "enabled": true }));
    let paused = admin.post(&format!("{ADMIN}/v1/background_updates/enabled"), json!({ "enabled": false })).await;
    assert_eq!(paused, json!({ "enabled": false }));
    assert_eq!(admin.get(&format!("{ADMIN}/v1/background_updates/enabled")).await, json!({ "enabled": false }));
    assert_eq!(admin.get(&format!("{ADMIN}/v1/background_updates/status")).await["enabled"], false);
    for bad in [json!({ "enabled": "no" }), json!({}), json!([true])] {
        let (status, code) =
            refused(&admin, Method::POST, &format!("{ADMIN}/v1/background_updates/enabled"), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(code == "M_BAD_JSON" || code == "M_NOT_JSON", "{bad}: {code}");
    }
    let job = |name: &str| json!({ "job_name": name });
    let start = format!("{ADMIN}/v1/background_updates/start_job");
    assert_eq!(admin.post(&start, job("populate_stats_process_rooms")).await, json!({}));
    assert_eq!(admin.post(&start, job("regenerate_directory")).await, json!({}));
    assert_eq!(
        refused(&admin, Method::POST, &start, Some(job("drop_tables"))).await,
        (StatusCode::BAD_REQUEST, "M_UNKNOWN".into())
    );
    let user = s.register("user").await;
    assert_eq!(
        refused(&user, Method::GET, &format!("{ADMIN}/v1/background_updates/status"), None).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
    );
    s.stop().await;
}
