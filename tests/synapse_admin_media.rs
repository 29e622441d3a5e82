//! The media part of the Synapse-compatible admin API over real HTTP, with the
//! requests Synapse's "Media Admin API", "List media uploaded by a user",
//! "Users' media usage statistics" and "Purge Remote Media API" documents show:
//! deletion by id, by date and size and per user, quarantine (and that the normal
//! media endpoints then refuse the media), the per-user statistics and the purge
//! of other servers' cached media, with Synapse's refusals.

use http::{Method, StatusCode};
use myelin_suite::{Client, Reply, TestServer, enc, http, http_with};
use serde_json::{Value, json};

const ADMIN: &str = "/_synapse/admin";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The status and errcode of an answer (no errcode: not a Matrix error, e.g. the file itself).
fn status_code(r: &Reply) -> (StatusCode, String) {
    let body: Option<Value> = serde_json::from_slice(&r.body).ok();
    (r.status, body.and_then(|b| b["errcode"].as_str().map(str::to_owned)).unwrap_or_default())
}

/// A server with open registration, its admin, and the users `names`.
async fn server_with(names: &[&str]) -> (TestServer, Client, Vec<Client>) {
    let s = TestServer::open("localhost").await;
    let req = json!({ "op": "user_create", "name": "root", "password": "a long passphrase", "admin": true });
    assert_eq!(myelin_api::admin::execute_offline(&s.engine, &req).await["ok"], true);
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "root" },
        "password": "a long passphrase" });
    let r = http(s.client, Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let admin = Client::from_login(s.client, &r.json());
    let mut users = Vec::new();
    for name in names {
        users.push(s.register(name).await);
    }
    (s, admin, users)
}

/// Uploads `bytes`; returns the media id.
async fn upload(c: &Client, bytes: &[u8], content_type: &str, name: &str) -> String {
    let auth = format!("Bearer {}", c.token);
    let r = http_with(
        c.addr,
        Method::POST,
        &format!("/_matrix/media/v3/upload?filename={name}"),
        Some(bytes),
        &[("authorization", &auth), ("content-type", content_type)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let uri = r.json()["content_uri"].as_str().unwrap().to_owned();
    uri.rsplit('/').next().unwrap().to_owned()
}

/// GET of `…/media/{download|thumbnail}/{server}/{id}{query}` as `c`.
async fn fetch(c: &Client, kind: &str, server: &str, id: &str, query: &str) -> Reply {
    c.request(Method::GET, &format!("/_matrix/client/v1/media/{kind}/{server}/{id}{query}"), None).await
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// Puts `bytes` in the cache of `server`'s media `id`, as a fetch from it would.
async fn cache_remote(s: &TestServer, server: &str, id: &str, bytes: &[u8]) {
    let path = s.engine.media.temp_path().unwrap();
    std::fs::write(&path, bytes).unwrap();
    let hash: String =
        ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let staged = myelin_engine::media::Staged { path, hash, size: bytes.len() as u64 };
    s.engine.media.commit(server, id, staged, Some("image/png".into()), None, None).await.unwrap();
}

fn user_media(user: &str, query: &str) -> String {
    format!("{ADMIN}/v1/users/{}/media{query}", enc(user))
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|m| m[field].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_admin_endpoints_need_a_server_admin() {
    let (s, _admin, users) = server_with(&["alice"]).await;
    let alice = &users[0];
    let id = upload(alice, b"hello", "text/plain", "a.txt").await;
    let ts = now_ms();
    let paths = [
        (Method::GET, format!("{ADMIN}/v1/media/localhost/{id}")),
        (Method::DELETE, format!("{ADMIN}/v1/media/localhost/{id}")),
        (Method::POST, format!("{ADMIN}/v1/media/delete?before_ts={ts}")),
        (Method::POST, format!("{ADMIN}/v1/media/localhost/delete?before_ts={ts}")),
        (Method::POST, format!("{ADMIN}/v1/media/quarantine/localhost/{id}")),
        (Method::POST, format!("{ADMIN}/v1/media/unquarantine/localhost/{id}")),
        (Method::GET, user_media("@alice:localhost", "")),
        (Method::DELETE, user_media("@alice:localhost", "")),
        (Method::GET, format!("{ADMIN}/v1/statistics/users/media")),
        (Method::POST, format!("{ADMIN}/v1/purge_media_cache?before_ts={ts}")),
    ];
    for (method, path) in &paths {
        let r = alice.request(method.clone(), path, Some(json!({}))).await;
        assert_eq!(status_code(&r), (StatusCode::FORBIDDEN, "M_FORBIDDEN".into()), "{method} {path}");
        let r = http(s.client, method.clone(), path, Some(b"{}")).await;
        assert_eq!(status_code(&r), (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN".into()), "{method} {path}");
    }
    // Nothing was done on the way.
    assert_eq!(fetch(alice, "download", "localhost", &id, "").await.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_media_is_no_longer_downloadable_and_deleting_it_again_is_404() {
    let (s, admin, users) = server_with(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let id = upload(alice, b"some bytes", "application/octet-stream", "a.bin").await;
    let hash = s.engine.media.meta("localhost", &id).unwrap().unwrap().hash;
    assert_eq!(fetch(bob, "download", "localhost", &id, "").await.status, StatusCode::OK);

    let path = format!("{ADMIN}/v1/media/localhost/{id}");
    let r = admin.request(Method::DELETE, &path, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "deleted_media": [id], "total": 1 }));
    assert_eq!(
        status_code(&fetch(bob, "download", "localhost", &id, "").await),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".into())
    );
    assert!(!s.engine.media.blob_path(&hash).exists(), "the file is gone");

    let r = admin.request(Method::DELETE, &path, None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    let r = admin.request(Method::GET, &path, None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    cache_remote(&s, "far.test", "theirs", b"remote bytes").await;
    let r = admin.request(Method::DELETE, &format!("{ADMIN}/v1/media/far.test/theirs"), None).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("Can only delete local media")));
    assert!(s.engine.media.meta("far.test", "theirs").unwrap().is_some(), "remote media is not deleted here");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_media_is_refused_everywhere_until_unquarantined() {
    let (s, admin, users) = server_with(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let id = upload(alice, &png(), "image/png", "cat.png").await;
    let thumb = "?width=32&height=32&method=crop";
    assert_eq!(fetch(bob, "download", "localhost", &id, "").await.status, StatusCode::OK);

    let r = admin.request(Method::POST, &format!("{ADMIN}/v1/media/quarantine/localhost/{id}"), Some(json!({}))).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let refused = (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned());
    assert_eq!(status_code(&fetch(bob, "download", "localhost", &id, "").await), refused);
    assert_eq!(status_code(&fetch(bob, "thumbnail", "localhost", &id, thumb).await), refused);
    assert_eq!(status_code(&fetch(alice, "download", "localhost", &format!("{id}/cat.png"), "").await), refused);
    let legacy = http(s.client, Method::GET, &format!("/_matrix/media/v3/download/localhost/{id}"), None).await;
    assert_eq!(status_code(&legacy), refused);
    // Only an admin may bypass it, and only by asking.
    let bypass = "?admin_unsafely_bypass_quarantine=true";
    assert_eq!(status_code(&fetch(bob, "download", "localhost", &id, bypass).await), refused);
    assert_eq!(status_code(&fetch(&admin, "download", "localhost", &id, "").await), refused);
    assert_eq!(fetch(&admin, "download", "localhost", &id, bypass).await.status, StatusCode::OK);
    let info = admin.get(&format!("{ADMIN}/v1/media/localhost/{id}")).await["media_info"].clone();
    assert_eq!(
        (info["quarantined_by"].as_str(), info["user_id"].as_str()),
        (Some("@root:localhost"), Some("@alice:localhost"))
    );
    assert_eq!(
        (info["media_length"].as_u64(), info["upload_name"].as_str()),
        (Some(png().len() as u64), Some("cat.png"))
    );
    let listed = admin.get(&user_media("@alice:localhost", "")).await;
    assert_eq!(listed["media"][0]["quarantined_by"], "@root:localhost");

    // The quarantine is on disk: it outlives a restart.
    let s = s.restart().await;
    let at = |c: &Client| Client { addr: s.client, ..c.clone() };
    let (alice, bob, admin) = (at(alice), at(bob), at(&admin));
    assert_eq!(status_code(&fetch(&bob, "download", "localhost", &id, "").await), refused);

    let r =
        admin.request(Method::POST, &format!("{ADMIN}/v1/media/unquarantine/localhost/{id}"), Some(json!({}))).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let r = fetch(&bob, "download", "localhost", &id, "").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, png().len()));
    assert_eq!(fetch(&bob, "thumbnail", "localhost", &id, thumb).await.status, StatusCode::OK);

    // A reserved id quarantined before its upload stays quarantined after it.
    let reserved = alice.post("/_matrix/media/v1/create", json!({})).await["content_uri"].as_str().unwrap().to_owned();
    let reserved = reserved.rsplit('/').next().unwrap().to_owned();
    admin.post(&format!("{ADMIN}/v1/media/quarantine/localhost/{reserved}"), json!({})).await;
    let auth = format!("Bearer {}", alice.token);
    let headers = [("authorization", auth.as_str()), ("content-type", "image/png")];
    let path = format!("/_matrix/media/v3/upload/localhost/{reserved}");
    assert_eq!(http_with(s.client, Method::PUT, &path, Some(&png()), &headers).await.status, StatusCode::OK);
    assert_eq!(status_code(&fetch(&bob, "download", "localhost", &reserved, "").await), refused);
    assert_eq!(status_code(&fetch(&alice, "download", "localhost", &reserved, "").await), refused);

    // Other servers' cached media too, without a fetch; unknown media is `{}`, as Synapse answers.
    cache_remote(&s, "far.test", "theirs", &png()).await;
    assert_eq!(fetch(&bob, "download", "far.test", "theirs", "").await.status, StatusCode::OK);
    admin.post(&format!("{ADMIN}/v1/media/quarantine/far.test/theirs"), json!({})).await;
    assert_eq!(status_code(&fetch(&bob, "download", "far.test", "theirs", "").await), refused);
    assert_eq!(admin.post(&format!("{ADMIN}/v1/media/quarantine/localhost/nothere"), json!({})).await, json!({}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_media_pages_orders_and_deletes_as_synapse_documents() {
    let (s, admin, users) = server_with(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let mut uploaded = Vec::new();
    for (i, (size, name)) in [(30, "b.txt"), (10, "c.txt"), (20, "a.txt")].into_iter().enumerate() {
        uploaded.push(upload(alice, &vec![b'x'; size], "text/plain", name).await);
        if i < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let bobs = upload(bob, b"bob's", "text/plain", "bob.txt").await;
    assert_eq!(fetch(bob, "download", "localhost", &uploaded[1], "").await.status, StatusCode::OK);

    // The default: newest first.
    let all = admin.get(&user_media("@alice:localhost", "")).await;
    assert_eq!(all["total"], 3);
    assert!(all.get("next_token").is_none(), "{all}");
    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();
    assert_eq!(ids(&all["media"], "media_id"), newest_first);
    let first = &all["media"][2];
    assert_eq!((first["media_length"].as_u64(), first["media_type"].as_str()), (Some(30), Some("text/plain")));
    assert_eq!((first["upload_name"].as_str(), first["safe_from_quarantine"].as_bool()), (Some("b.txt"), Some(false)));
    assert!(first["quarantined_by"].is_null() && first["last_access_ts"].is_null() && first["created_ts"].is_u64());
    assert!(all["media"][1]["last_access_ts"].as_u64().is_some(), "the downloaded one says when");

    let by = |q: &str| {
        let (admin, path) = (admin.clone(), user_media("@alice:localhost", q));
        async move { admin.get(&path).await }
    };
    assert_eq!(ids(&by("?order_by=media_length").await["media"], "upload_name"), ["c.txt", "a.txt", "b.txt"]);
    assert_eq!(ids(&by("?order_by=upload_name&dir=b").await["media"], "upload_name"), ["c.txt", "b.txt", "a.txt"]);
    assert_eq!(ids(&by("?dir=f").await["media"], "media_id"), uploaded);
    let page = by("?order_by=media_length&limit=2").await;
    assert_eq!(
        (ids(&page["media"], "upload_name"), page["next_token"].as_u64(), page["total"].as_u64()),
        (vec!["c.txt".to_owned(), "a.txt".to_owned()], Some(2), Some(3))
    );
    let rest = by("?order_by=media_length&limit=2&from=2").await;
    assert_eq!(ids(&rest["media"], "upload_name"), ["b.txt"]);
    assert!(rest.get("next_token").is_none());

    // Refusals.
    for (query, code) in [
        ("?limit=-1", "M_INVALID_PARAM"),
        ("?from=abc", "M_INVALID_PARAM"),
        ("?order_by=size", "M_INVALID_PARAM"),
        ("?dir=up", "M_INVALID_PARAM"),
    ] {
        let r = admin.request(Method::GET, &user_media("@alice:localhost", query), None).await;
        assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, code.into()), "{query}");
    }
    let r = admin.request(Method::GET, &user_media("@nobody:localhost", ""), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    let r = admin.request(Method::DELETE, &user_media("@nobody:localhost", ""), None).await;
    assert_eq!(status_code(&r), (StatusCode::NOT_FOUND, "M_NOT_FOUND".into()));
    let r = admin.request(Method::GET, &user_media("@alice:far.test", ""), None).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("Can only look up local users")));
    let r = admin.request(Method::GET, &user_media("not a user id", ""), None).await;
    assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into()));

    // DELETE takes the page the same query lists: the two smallest.
    let r =
        admin.request(Method::DELETE, &user_media("@alice:localhost", "?order_by=media_length&limit=2"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "deleted_media": [uploaded[1], uploaded[2]], "total": 2 }));
    for gone in &uploaded[1..] {
        assert_eq!(fetch(bob, "download", "localhost", gone, "").await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(ids(&by("").await["media"], "media_id"), [uploaded[0].clone()]);
    assert_eq!(fetch(bob, "download", "localhost", &bobs, "").await.status, StatusCode::OK, "bob's stays");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_media_pages_agree_with_one_full_listing_in_every_order() {
    let (s, admin, users) = server_with(&["alice"]).await;
    for i in 0..90usize {
        let size = 1 + (i * 37) % 11;
        let kind = ["text/plain", "image/png", "application/json"][i % 3];
        upload(&users[0], &vec![b'y'; size], kind, &format!("f{}.txt", (i * 13) % 17)).await;
    }
    for order in ["media_id", "upload_name", "created_ts", "media_length", "media_type", "last_access_ts"] {
        for dir in ["f", "b"] {
            let q = format!("?order_by={order}&dir={dir}");
            let full = admin.get(&user_media("@alice:localhost", &format!("{q}&limit=1000"))).await;
            let full = ids(&full["media"], "media_id");
            assert_eq!(full.len(), 90);
            let mut paged = Vec::new();
            let mut from = 0;
            loop {
                let page = admin.get(&user_media("@alice:localhost", &format!("{q}&limit=7&from={from}"))).await;
                paged.extend(ids(&page["media"], "media_id"));
                match page["next_token"].as_u64() {
                    Some(next) if next > from && paged.len() < 90 => from = next,
                    Some(next) => panic!("{q}: next_token {next} after from {from}: {page}"),
                    None => break,
                }
            }
            assert_eq!(paged, full, "{q}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_by_date_and_size_spares_avatars_small_recent_and_quarantined_media() {
    let (s, admin, users) = server_with(&["alice"]).await;
    let alice = &users[0];
    let small = upload(alice, &[1; 10], "application/octet-stream", "small").await;
    let big = upload(alice, &[2; 5000], "application/octet-stream", "big").await;
    let avatar = upload(alice, &[3; 5000], "image/png", "me.png").await;
    let held = upload(alice, &[4; 5000], "application/octet-stream", "held").await;
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&alice.user_id)),
            json!({ "avatar_url": format!("mxc://localhost/{avatar}") }),
        )
        .await;
    admin.post(&format!("{ADMIN}/v1/media/quarantine/localhost/{held}"), json!({})).await;
    let later = now_ms() + 60_000;

    let delete = |q: String| {
        let admin = admin.clone();
        async move { admin.request(Method::POST, &format!("{ADMIN}/v1/media/delete{q}"), Some(json!({}))).await }
    };
    // A time before the uploads deletes nothing.
    let r = delete(format!("?before_ts={}", now_ms() - 3_600_000)).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({ "deleted_media": [], "total": 0 })));
    let r = delete(format!("?before_ts={later}&size_gt=100")).await;
    assert_eq!(r.json(), json!({ "deleted_media": [big], "total": 1 }));
    assert_eq!(fetch(alice, "download", "localhost", &big, "").await.status, StatusCode::NOT_FOUND);
    // The deprecated path, and avatars no longer kept.
    let r = admin
        .request(
            Method::POST,
            &format!("{ADMIN}/v1/media/localhost/delete?before_ts={later}&size_gt=100&keep_profiles=false"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.json(), json!({ "deleted_media": [avatar], "total": 1 }));
    for kept in [&small, &held] {
        assert!(s.engine.media.meta("localhost", kept).unwrap().is_some());
    }

    for (q, code) in [
        (String::new(), "M_MISSING_PARAM"),
        ("?before_ts=yesterday".into(), "M_INVALID_PARAM"),
        ("?before_ts=1000".into(), "M_INVALID_PARAM"),
        (format!("?before_ts={later}&size_gt=-1"), "M_INVALID_PARAM"),
        (format!("?before_ts={later}&size_gt=big"), "M_INVALID_PARAM"),
        (format!("?before_ts={later}&keep_profiles=maybe"), "M_INVALID_PARAM"),
    ] {
        assert_eq!(status_code(&delete(q.clone()).await), (StatusCode::BAD_REQUEST, code.into()), "{q}");
    }
    let r = admin.request(Method::POST, &format!("{ADMIN}/v1/media/far.test/delete?before_ts={later}"), None).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("Can only delete local media")));
    assert!(s.engine.media.meta("localhost", &small).unwrap().is_some(), "refusals delete nothing");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_statistics_sum_each_uploaders_media() {
    let (s, admin, users) = server_with(&["alice", "bob", "carol"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            json!({ "displayname": "Alice A" }),
        )
        .await;
    upload(alice, &[0; 10], "text/plain", "a").await;
    upload(alice, &[0; 20], "text/plain", "b").await;
    upload(bob, &[0; 50], "text/plain", "c").await;
    let stats = |q: &str| {
        let (admin, path) = (admin.clone(), format!("{ADMIN}/v1/statistics/users/media{q}"));
        async move { admin.get(&path).await }
    };

    let all = stats("").await;
    assert_eq!(
        all,
        json!({ "users": [
            { "user_id": "@alice:localhost", "displayname": "Alice A", "media_count": 2, "media_length": 30 },
            { "user_id": "@bob:localhost", "displayname": "bob", "media_count": 1, "media_length": 50 },
        ], "total": 2 }),
        "carol uploaded nothing"
    );
    assert_eq!(
        ids(&stats("?order_by=media_length&dir=b").await["users"], "user_id"),
        ["@bob:localhost", "@alice:localhost"]
    );
    assert_eq!(ids(&stats("?order_by=media_count").await["users"], "user_id"), ["@bob:localhost", "@alice:localhost"]);
    assert_eq!(ids(&stats("?search_term=ALI").await["users"], "user_id"), ["@alice:localhost"]);
    assert_eq!(ids(&stats("?search_term=ice%20a").await["users"], "user_id"), ["@alice:localhost"]);
    let page = stats("?limit=1").await;
    assert_eq!(
        (page["users"].as_array().unwrap().len(), page["next_token"].as_u64(), page["total"].as_u64()),
        (1, Some(1), Some(2))
    );
    let later = now_ms() + 3_600_000;
    assert_eq!(stats(&format!("?from_ts={later}")).await, json!({ "users": [], "total": 0 }));
    assert_eq!(stats(&format!("?from_ts=1&until_ts={later}")).await["total"], 2);

    for q in [
        "?from=-1",
        "?limit=x",
        "?from_ts=-5",
        "?until_ts=-5",
        "?from_ts=100&until_ts=100",
        "?search_term=",
        "?order_by=name",
        "?dir=sideways",
    ] {
        let r = admin.request(Method::GET, &format!("{ADMIN}/v1/statistics/users/media{q}"), None).await;
        assert_eq!(status_code(&r), (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".into()), "{q}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_the_media_cache_removes_other_servers_media_but_not_quarantined_or_ours() {
    let (s, admin, users) = server_with(&["alice"]).await;
    let ours = upload(&users[0], b"ours", "text/plain", "ours.txt").await;
    cache_remote(&s, "far.test", "old", b"cached one").await;
    cache_remote(&s, "other.test", "older", b"cached two").await;
    cache_remote(&s, "far.test", "held", b"cached three").await;
    admin.post(&format!("{ADMIN}/v1/media/quarantine/far.test/held"), json!({})).await;
    let purge = |q: String| {
        let admin = admin.clone();
        async move { admin.request(Method::POST, &format!("{ADMIN}/v1/purge_media_cache{q}"), Some(json!({}))).await }
    };

    let r = purge(format!("?before_ts={}", now_ms() - 3_600_000)).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({ "deleted": 0 })));
    let r = purge(format!("?before_ts={}", now_ms() + 60_000)).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({ "deleted": 2 })));
    assert!(s.engine.media.meta("far.test", "old").unwrap().is_none());
    assert!(s.engine.media.meta("other.test", "older").unwrap().is_none());
    assert!(s.engine.media.meta("far.test", "held").unwrap().is_some(), "a quarantine is not purged away");
    assert!(s.engine.media.meta("localhost", &ours).unwrap().is_some(), "local media is not a cache");

    for (q, code) in [
        (String::new(), "M_MISSING_PARAM"),
        ("?before_ts=-1".into(), "M_INVALID_PARAM"),
        ("?before_ts=1700000000".into(), "M_INVALID_PARAM"),
        ("?before_ts=soon".into(), "M_INVALID_PARAM"),
    ] {
        assert_eq!(status_code(&purge(q.clone()).await), (StatusCode::BAD_REQUEST, code.into()), "{q}");
    }
    s.stop().await;
}
