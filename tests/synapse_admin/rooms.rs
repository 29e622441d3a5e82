//! The admin room endpoints: the room list and search, details, members, and
//! DELETE with its status.

use http::{Method, StatusCode};
use myelin_suite::{TestServer, enc};
use serde_json::json;

use crate::{ADMIN, create_user, status_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_list_details_members_and_delete() {
    let s = TestServer::start("localhost").await;
    let admin = create_user(&s, "root", "root-pw", true).await;
    let bob = create_user(&s, "bob", "bob-pw", false).await;
    let lobby =
        admin.create_room(json!({ "preset": "public_chat", "name": "Lobby", "room_alias_name": "lobby" })).await;
    let quiet = bob.create_room(json!({ "name": "Quiet corner" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&lobby)), json!({})).await;

    let list = admin.get(&format!("{ADMIN}/v1/rooms")).await;
    assert_eq!(list["total_rooms"], 2);
    assert_eq!(list["offset"], 0);
    let rooms = list["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 2);
    let first = &rooms[0];
    assert_eq!((first["room_id"].as_str(), first["name"].as_str()), (Some(lobby.as_str()), Some("Lobby")));
    assert_eq!(first["joined_members"], 2);
    assert_eq!(first["joined_local_members"], 2);
    assert_eq!(first["canonical_alias"], "#lobby:localhost");
    assert_eq!(first["creator"], "@root:localhost");
    assert!(first["version"].is_string() && first["public"].is_boolean());

    let page = admin.get(&format!("{ADMIN}/v1/rooms?from=1&limit=1")).await;
    assert_eq!((page["rooms"][0]["room_id"].as_str(), page["offset"].as_u64()), (Some(quiet.as_str()), Some(1)));
    assert_eq!(page.get("next_batch"), None);
    let page = admin.get(&format!("{ADMIN}/v1/rooms?limit=1")).await;
    assert_eq!(page["next_batch"], 1);
    let found = admin.get(&format!("{ADMIN}/v1/rooms?search_term=quiet")).await;
    assert_eq!((found["total_rooms"].as_u64(), found["rooms"][0]["room_id"].as_str()), (Some(1), Some(quiet.as_str())));

    let details = admin.get(&format!("{ADMIN}/v1/rooms/{}", enc(&lobby))).await;
    assert_eq!((details["room_id"].as_str(), details["name"].as_str()), (Some(lobby.as_str()), Some("Lobby")));
    assert_eq!(details["joined_members"], 2);
    let members = admin.get(&format!("{ADMIN}/v1/rooms/{}/members", enc(&lobby))).await;
    assert_eq!(members, json!({ "members": ["@bob:localhost", "@root:localhost"], "total": 2 }));
    let r = admin.request(Method::GET, &format!("{ADMIN}/v1/rooms/{}", enc("!nope:localhost")), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));

    // Delete (shut down): every local member removed, the room refuses joins.
    let r = admin
        .request(Method::DELETE, &format!("{ADMIN}/v2/rooms/{}", enc(&lobby)), Some(json!({ "block": true })))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let delete_id = r.json()["delete_id"].as_str().unwrap().to_owned();
    // The shutdown is done before the answer; the history purge after it runs on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let status = admin.get(&format!("{ADMIN}/v2/rooms/delete_status/{delete_id}")).await;
        if status["status"] != "purging" || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"], "complete");
    assert_eq!(status["shutdown_room"]["kicked_users"].as_array().map(Vec::len), Some(2));
    let members = admin.get(&format!("{ADMIN}/v1/rooms/{}/members", enc(&lobby))).await;
    assert_eq!(members["total"], 0);
    let r = bob.request(Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&lobby)), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = admin.request(Method::GET, &format!("{ADMIN}/v2/rooms/delete_status/nope"), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    s.stop().await;
}
