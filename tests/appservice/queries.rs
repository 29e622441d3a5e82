//! What the homeserver asks of the appservice: unknown aliases and users in
//! its namespaces, ping, third-party protocols, directory publishing and
//! reverse third-party lookups.

use http::{Method, StatusCode};
use myelin_suite::{
    appservice::{FakeAppservice, Seen},
    enc, http_with,
};
use serde_json::{Value, json};

use crate::{AS_TOKEN, HS_TOKEN, as_request, registration, server_with};

#[tokio::test]
async fn unknown_aliases_and_users_in_a_namespace_are_asked_of_the_appservice() {
    // The bridge answers an alias query by creating the room with that alias,
    // as bridges do, and a user query by registering the user.
    let client_addr = std::sync::Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
    let addr = client_addr.clone();
    let fake = FakeAppservice::start(move |seen: Seen| {
        let addr = addr.clone();
        Box::pin(async move {
            let Some(&client) = addr.get() else { return (503, json!({})) };
            let auth = format!("Bearer {AS_TOKEN}");
            let call = |method: Method, path: String, body: Value| {
                let auth = auth.clone();
                async move {
                    http_with(client, method, &path, Some(body.to_string().as_bytes()), &[("authorization", &auth)]).await
                }
            };
            if let Some(alias) = seen.path.strip_prefix("/_matrix/app/v1/rooms/") {
                let alias = percent_decode(alias);
                let Some(local) = alias.strip_prefix('#').and_then(|a| a.split(':').next()) else { return (404, json!({})) };
                let r = call(Method::POST, "/_matrix/client/v3/createRoom".into(), json!({ "room_alias_name": local, "preset": "public_chat" })).await;
                return if r.status == StatusCode::OK { (200, json!({})) } else { (500, json!({})) };
            }
            if let Some(user) = seen.path.strip_prefix("/_matrix/app/v1/users/") {
                let user = percent_decode(user);
                let local = user.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
                let r = call(
                    Method::POST,
                    "/_matrix/client/v3/register".into(),
                    json!({ "type": "m.login.application_service", "username": local, "inhibit_login": true }),
                )
                .await;
                return if r.status == StatusCode::OK { (200, json!({})) } else { (500, json!({})) };
            }
            if seen.path == "/_matrix/app/v1/ping" {
                return (200, json!({}));
            }
            if seen.path == "/_matrix/app/v1/thirdparty/protocol/fakeproto" {
                return (200, json!({ "user_fields": ["nick"], "location_fields": [], "icon": "", "field_types": {}, "instances": [] }));
            }
            (404, json!({ "errcode": "M_NOT_FOUND" }))
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), true), &dir).await;
    client_addr.set(server.client).unwrap();
    let alice = server.register("alice").await;

    let r = alice.request(Method::GET, "/_matrix/client/v3/directory/room/%23bridge_lobby:as.test", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let room = r.json()["room_id"].as_str().unwrap().to_owned();
    assert!(fake.requests().iter().any(|s| s.path == "/_matrix/app/v1/rooms/%23bridge_lobby%3Aas.test"
        && s.authorization.as_deref() == Some(&format!("Bearer {HS_TOKEN}"))));
    // The alias now works for joining.
    alice.post(&format!("/_matrix/client/v3/join/{}", enc("#bridge_lobby:as.test")), json!({})).await;
    let joined = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert!(joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()));
    // Outside the namespace nobody is asked.
    // (Transactions may arrive meanwhile: only queries count.)
    let queries = |f: &FakeAppservice| {
        f.requests().iter().filter(|s| !s.path.starts_with("/_matrix/app/v1/transactions/")).count()
    };
    let before = queries(&fake);
    let r = alice.request(Method::GET, "/_matrix/client/v3/directory/room/%23elsewhere:as.test", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(queries(&fake), before);

    // A profile lookup of an unknown namespaced user brings it into being.
    let r = alice.request(Method::GET, "/_matrix/client/v3/profile/%40bridge_zed%3Aas.test", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(fake.requests().iter().any(|s| s.path == "/_matrix/app/v1/users/%40bridge_zed%3Aas.test"));

    // Ping, by the appservice only.
    let r = as_request(
        &server,
        Method::POST,
        "/_matrix/client/v1/appservice/fakebridge/ping",
        None,
        Some(json!({ "transaction_id": "p1" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["duration_ms"].is_u64());
    let ping = fake.requests().into_iter().find(|s| s.path == "/_matrix/app/v1/ping").expect("the ping");
    assert_eq!((ping.method.as_str(), ping.body["transaction_id"].as_str()), ("POST", Some("p1")));
    let r = alice.request(Method::POST, "/_matrix/client/v1/appservice/fakebridge/ping", Some(json!({}))).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::FORBIDDEN, "M_FORBIDDEN"));

    // Third-party protocols come from the appservice that declares them.
    let protocols = alice.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(protocols["fakeproto"]["user_fields"][0], "nick");

    // Publishing a bridged room in the directory.
    let path = format!("/_matrix/client/v3/directory/list/appservice/fakenet/{}", enc(&room));
    let r = as_request(&server, Method::PUT, &path, None, Some(json!({ "visibility": "public" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let r = alice.request(Method::PUT, &path, Some(json!({ "visibility": "public" }))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_third_party_lookups_ask_the_appservice_whose_namespace_holds_the_id() {
    let fake = FakeAppservice::start(|seen| {
        Box::pin(async move {
            match (seen.path.as_str(), seen.query.as_str()) {
                ("/_matrix/app/v1/thirdparty/location", q) if q.contains("alias=") => (
                    200,
                    json!([{ "alias": "#bridge_lobby:as.test", "protocol": "fakeproto", "fields": { "channel": "lobby" } }]),
                ),
                ("/_matrix/app/v1/thirdparty/user", q) if q.contains("userid=") => (
                    200,
                    json!([{ "userid": "@bridge_zed:as.test", "protocol": "fakeproto", "fields": { "nick": "zed" } }, 5]),
                ),
                _ => (404, json!({ "errcode": "M_NOT_FOUND" })),
            }
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&registration(Some(&fake.url()), false), &dir).await;
    let alice = server.register("alice").await;

    let r = alice
        .request(Method::GET, "/_matrix/client/v3/thirdparty/location?alias=%23bridge_lobby%3Aas.test", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!([{ "alias": "#bridge_lobby:as.test", "protocol": "fakeproto", "fields": { "channel": "lobby" } }])
    );
    let asked = fake.requests().into_iter().find(|s| s.path == "/_matrix/app/v1/thirdparty/location").expect("asked");
    assert_eq!(asked.query, "alias=%23bridge_lobby%3Aas.test", "{asked:?}");
    assert_eq!(asked.authorization.as_deref(), Some(format!("Bearer {HS_TOKEN}").as_str()));

    // Entries that are not objects are dropped.
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/user?userid=%40bridge_zed%3Aas.test", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!([{ "userid": "@bridge_zed:as.test", "protocol": "fakeproto", "fields": { "nick": "zed" } }])
    );

    // Outside every namespace nobody is asked and the answer is empty.
    let before = fake.requests().len();
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/user?userid=%40alice%3Aas.test", None).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!([])));
    assert_eq!(fake.requests().iter().skip(before).filter(|s| s.path.contains("thirdparty")).count(), 0);
    // A missing or malformed id is the client's mistake.
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/location", None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"));
    let r = alice.request(Method::GET, "/_matrix/client/v3/thirdparty/user?userid=nobody", None).await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"));
    let anonymous =
        myelin_suite::http(server.client, Method::GET, "/_matrix/client/v3/thirdparty/location?alias=%23a%3Ab", None)
            .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}
