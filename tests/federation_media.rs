//! Remote media: downloads byte for byte (and from cache with the origin down),
//! federated thumbnails, and the legacy endpoint of a server without federation media.

use http::{Method, StatusCode};
use myelin_suite::{TestServer, federation_pair, signed_get, tiny_tls_server};
use std::{sync::Arc, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploaded_on_a_is_downloaded_byte_for_byte_by_a_user_on_b() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let auth = format!("Bearer {}", alice.token);
    let up = myelin_suite::http_with(
        alice.addr,
        Method::POST,
        "/_matrix/media/v3/upload?filename=photo.jpg",
        Some(&bytes),
        &[("authorization", &auth), ("content-type", "image/jpeg")],
    )
    .await;
    assert_eq!(up.status, StatusCode::OK, "{}", String::from_utf8_lossy(&up.body));
    let mxc = up.json()["content_uri"].as_str().unwrap().to_owned();
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    assert!(path.starts_with("a.test/"), "{mxc}");

    let got = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.headers.get("content-type").unwrap(), "image/jpeg");
    assert!(got.body == bytes, "B served {} bytes, A holds {}", got.body.len(), bytes.len());

    // Served again from B's cache once A is gone.
    a.stop().await;
    let again = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body == bytes);

    // Unknown media on a reachable-or-not server is a 404, not a hang or a 500.
    let missing = bob.request(Method::GET, "/_matrix/client/v1/media/download/a.test/nosuchmedia", None).await;
    assert!(missing.status == StatusCode::NOT_FOUND || missing.status == StatusCode::BAD_GATEWAY, "{}", missing.status);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_of_media_on_a_are_served_over_federation_and_to_users_on_b() {
    let (a, b) = federation_pair("a.test", "b.test", |_| {}, |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let img = image::RgbImage::from_fn(400, 200, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 60]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let auth = format!("Bearer {}", alice.token);
    let up = myelin_suite::http_with(
        alice.addr,
        Method::POST,
        "/_matrix/media/v3/upload?filename=wide.png",
        Some(&png),
        &[("authorization", &auth), ("content-type", "image/png")],
    )
    .await;
    let mxc = up.json()["content_uri"].as_str().unwrap().to_owned();
    let id = mxc.rsplit('/').next().unwrap().to_owned();

    // A serves the thumbnail to B's server as multipart/mixed.
    let path = format!("/_matrix/federation/v1/media/thumbnail/{id}?width=100&height=100&method=scale");
    let r = signed_get(&b, &a, &path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let ct = r.headers["content-type"].to_str().unwrap().to_owned();
    let boundary = ct.split("boundary=").nth(1).expect("a multipart boundary").to_owned();
    let body = r.body.to_vec();
    let marker = format!("--{boundary}\r\nContent-Type: image/png\r\n\r\n");
    let start = body.windows(marker.len()).position(|w| w == marker.as_bytes()).expect("the image part") + marker.len();
    let thumb = image::load_from_memory(&body[start..]).unwrap();
    // Served from the standard 320x240 scaled size: the 400x200 image at 320x160.
    assert_eq!((thumb.width(), thumb.height()), (320, 160));

    // Bob asks his own server, which fetches the original from A and thumbnails it.
    let server_path = mxc.strip_prefix("mxc://").unwrap();
    let r = bob
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/media/thumbnail/{server_path}?width=40&height=40&method=crop"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let thumb = image::load_from_memory(&r.body).unwrap();
    // Served from the standard 96x96 crop.
    assert_eq!((thumb.width(), thumb.height()), (96, 96));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_of_a_server_without_federation_media_comes_through_its_legacy_endpoint() {
    // "old.test" predates authenticated media: 404 M_UNRECOGNIZED for the federation
    // endpoint, bytes from the legacy one.
    let old_dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(old_dir.path(), "old.test")).unwrap();
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let served = blob.clone();
    let (old_addr, seen, server) = tiny_tls_server("127.0.0.1:0", tls, move |path| {
        if path == "/_matrix/media/v3/download/old.test/legacyfile" {
            (200, "audio/ogg", served.clone())
        } else {
            (404, "application/json", br#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#.to_vec())
        }
    })
    .await;
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("old.test".into(), old_addr);
    })
    .await;
    let alice = a.register("alice").await;

    let r = alice.request(Method::GET, "/_matrix/client/v1/media/download/old.test/legacyfile", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "audio/ogg");
    assert!(r.body == blob, "{} bytes", r.body.len());
    let paths = seen.lock().unwrap().clone();
    assert_eq!(
        paths,
        vec!["/_matrix/federation/v1/media/download/legacyfile", "/_matrix/media/v3/download/old.test/legacyfile"],
        "the federation endpoint first, then the legacy one"
    );
    // Missing media on the old server stays a 404.
    let r = alice.request(Method::GET, "/_matrix/client/v1/media/download/old.test/nothing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    server.abort();
    a.stop().await;
}

/// A remote server's media answer made by hand: `multipart/mixed`, JSON part, then the bytes.
fn multipart_answer(bytes: &[u8]) -> Vec<u8> {
    let mut body =
        b"--b0\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0\r\nContent-Type: video/mp4\r\n\r\n".to_vec();
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n--b0--\r\n");
    body
}

/// Many users asking at once for the same remote media cost the remote server
/// one download; media over our size limit is refused with 413 and not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_remote_downloads_share_one_fetch_and_oversize_media_is_refused() {
    let far_dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(far_dir.path(), "far.test")).unwrap();
    let video: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let huge: Vec<u8> = vec![7u8; 3_000_000];
    let (video_answer, huge_answer) = (multipart_answer(&video), multipart_answer(&huge));
    let (far_addr, seen, server) = tiny_tls_server("127.0.0.1:0", tls, move |path| match path {
        "/_matrix/federation/v1/media/download/clip" => (200, "multipart/mixed; boundary=b0", video_answer.clone()),
        "/_matrix/federation/v1/media/download/huge" => (200, "multipart/mixed; boundary=b0", huge_answer.clone()),
        _ => (404, "application/json", br#"{"errcode":"M_NOT_FOUND","error":"no"}"#.to_vec()),
    })
    .await;
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("far.test".into(), far_addr);
        c.media.max_upload_bytes = 2_500_000;
    })
    .await;
    let alice = a.register("alice").await;

    let downloads: Vec<_> = (0..12)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move {
                alice.request(Method::GET, "/_matrix/client/v1/media/download/far.test/clip", None).await
            })
        })
        .collect();
    for d in downloads {
        let r = d.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.headers["content-type"], "video/mp4");
        assert!(r.body == video, "{} bytes", r.body.len());
    }
    let fetches = seen.lock().unwrap().iter().filter(|p| p.ends_with("/clip")).count();
    assert_eq!(fetches, 1, "12 concurrent downloads made {fetches} fetches from far.test");

    let r = alice.request(Method::GET, "/_matrix/client/v1/media/download/far.test/huge", None).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.errcode(), "M_TOO_LARGE");
    assert!(a.engine.media.meta("far.test", "huge").unwrap().is_none(), "refused media is not cached");
    // Nothing is left behind in the media repository's temporary folder.
    let tmp = a.engine.config.data_dir.join("media").join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("the media temp folder").flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    server.abort();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_media_cache_stays_within_its_bound_by_evicting_the_oldest_fetched() {
    let (a, b) = federation_pair(
        "ea.test",
        "eb.test",
        |_| {},
        |c| {
            c.media.max_upload_bytes = 100_000;
            c.media.remote_cache_max_bytes = 250_000;
        },
    )
    .await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let auth = format!("Bearer {}", alice.token);
    let mut paths = Vec::new();
    for n in 0..3u8 {
        let bytes = vec![n; 90_000];
        let up = myelin_suite::http_with(
            alice.addr,
            Method::POST,
            "/_matrix/media/v3/upload",
            Some(&bytes),
            &[("authorization", &auth), ("content-type", "application/octet-stream")],
        )
        .await;
        assert_eq!(up.status, StatusCode::OK, "{}", String::from_utf8_lossy(&up.body));
        let mxc = up.json()["content_uri"].as_str().unwrap().to_owned();
        let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
        let got = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None).await;
        assert_eq!(got.status, StatusCode::OK, "{}", String::from_utf8_lossy(&got.body));
        assert!(got.body == bytes);
        paths.push(path);
        // Fetch times are milliseconds: keep them apart so "oldest" is well defined.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let cached = |p: &str| {
        let (server, id) = p.split_once('/').unwrap();
        b.engine.media.meta(server, id).unwrap().is_some()
    };
    // 270,000 bytes passed the 250,000 bound: the first fetched went, the others stay.
    assert!(!cached(&paths[0]), "the oldest remote media is evicted");
    assert!(cached(&paths[1]) && cached(&paths[2]), "the newer ones are kept");
    // Bob's own upload is never evicted, and the evicted file is fetched again on demand.
    let bob_auth = format!("Bearer {}", bob.token);
    let own = myelin_suite::http_with(
        bob.addr,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some(&[9u8; 90_000]),
        &[("authorization", &bob_auth), ("content-type", "application/octet-stream")],
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "{}", String::from_utf8_lossy(&own.body));
    let again = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{}", paths[0]), None).await;
    assert_eq!(again.status, StatusCode::OK, "{}", String::from_utf8_lossy(&again.body));
    assert!(again.body == vec![0u8; 90_000]);
    let own_path = own.json()["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    assert!(cached(&own_path), "local media is not part of the cache");
    assert!(!cached(&paths[1]), "the refetch pushed out the next oldest");
    a.stop().await;
    b.stop().await;
}

/// Thumbnails made of remote media are part of the remote cache: making
/// them can push older remote media out, as fetching more would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_of_remote_media_count_towards_the_remote_cache_bound() {
    let (a, b) = federation_pair(
        "ta.test",
        "tb.test",
        |_| {},
        |c| {
            c.media.max_upload_bytes = 100_000;
            c.media.remote_cache_max_bytes = 250_000;
        },
    )
    .await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let auth = format!("Bearer {}", alice.token);
    // Noise does not compress: each full-size PNG of it is ~67 kB.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(150, 150, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        image::Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let mut paths = Vec::new();
    for (bytes, kind) in [(png.clone(), "image/png"), (vec![7u8; 90_000], "application/octet-stream")] {
        let up = myelin_suite::http_with(
            alice.addr,
            Method::POST,
            "/_matrix/media/v3/upload",
            Some(&bytes),
            &[("authorization", &auth), ("content-type", kind)],
        )
        .await;
        assert_eq!(up.status, StatusCode::OK, "{}", String::from_utf8_lossy(&up.body));
        paths.push(up.json()["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned());
    }
    let (image_path, file_path) = (&paths[0], &paths[1]);
    // Bob's server fetches the file first (the older entry), then the image.
    for p in [file_path, image_path] {
        let got = bob.request(Method::GET, &format!("/_matrix/client/v1/media/download/{p}"), None).await;
        assert_eq!(got.status, StatusCode::OK, "{}", String::from_utf8_lossy(&got.body));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let cached = |p: &str| {
        let (server, id) = p.split_once('/').unwrap();
        b.engine.media.meta(server, id).unwrap().is_some()
    };
    assert!(cached(file_path) && cached(image_path), "{} bytes fit the bound", png.len() + 90_000);
    // Three scaled sizes of a 150x150 image are three full-size PNGs, each ~67 kB.
    let mut thumbs = 0;
    for (w, h) in [(320, 240), (640, 480), (800, 600)] {
        let path = format!("/_matrix/client/v1/media/thumbnail/{image_path}?width={w}&height={h}&method=scale");
        let got = bob.request(Method::GET, &path, None).await;
        assert_eq!(got.status, StatusCode::OK, "{}", String::from_utf8_lossy(&got.body));
        thumbs += got.body.len();
    }
    assert!(png.len() + 90_000 + thumbs > 250_000, "the thumbnails pass the bound: {thumbs} bytes");
    assert!(!cached(file_path), "the older remote file made room for the image's thumbnails");
    assert!(cached(image_path), "the media being thumbnailed is kept");
    a.stop().await;
    b.stop().await;
}

/// A peer cannot make us hold a large error answer in memory: a media fetch
/// answered with a 500 whose body is 40 MB (under the 50 MiB media limit) is
/// cut off after the first 64 KiB, and the user gets an error, not a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_answer_to_a_media_fetch_is_cut_off_not_read_into_memory() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 40 * 1024 * 1024 / CHUNK;
    let far_dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(far_dir.path(), "far.test")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let far_addr = listener.local_addr().unwrap();
    let (sent, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counted, asked) = (sent.clone(), requests.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted, asked) = (acceptor.clone(), counted.clone(), asked.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let counted = counted.clone();
                    // Produced as the connection takes it: what is counted went out or sits in socket buffers.
                    let chunks = futures_util::stream::unfold(0usize, move |n| {
                        let counted = counted.clone();
                        async move {
                            (n < CHUNKS).then(|| {
                                counted.fetch_add(CHUNK, Ordering::SeqCst);
                                let frame = hyper::body::Frame::data(bytes::Bytes::from(vec![b' '; CHUNK]));
                                (Ok::<_, std::convert::Infallible>(frame), n + 1)
                            })
                        }
                    });
                    let resp = http::Response::builder()
                        .status(500)
                        .header("content-type", "application/json")
                        .body(http_body_util::StreamBody::new(chunks))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let a = TestServer::start_with("a.test", |c| {
        c.registration.enabled = true;
        c.federation.verify_tls = false;
        c.federation.hosts.insert("far.test".into(), far_addr);
    })
    .await;
    let alice = a.register("alice").await;
    let r = alice.request(Method::GET, "/_matrix/client/v1/media/download/far.test/blob", None).await;
    // Said as the remote server failing, not as our size limit.
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&r.body));
    let asked = requests.load(Ordering::SeqCst);
    assert!(asked >= 1, "far.test was never asked");
    // Give a reader that kept going the time to show it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < asked * 8 * 1024 * 1024, "{sent} bytes taken by us for {asked} error answers");
    server.abort();
    a.stop().await;
}

/// Remote media is written to disk as it arrives, never held whole: the real
/// binary fetching 200 MiB from another server (and serving it to its user)
/// grows by far less than the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_remote_download_streams_with_flat_server_memory() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 200;
    let far_dir = tempfile::tempdir().unwrap();
    let tls = myelin_api::tls::server_config(&myelin_suite::test_config(far_dir.path(), "far.test")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let far_addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let served = Arc::new(AtomicUsize::new(0));
    let counted = served.clone();
    let far = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let counted = counted.clone();
                    let head =
                        b"--b0\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0\r\nContent-Type: video/mp4\r\n\r\n";
                    let parts = (0..CHUNKS + 2).map(move |i| {
                        let bytes = match i {
                            0 => bytes::Bytes::from_static(head),
                            i if i <= CHUNKS => {
                                counted.fetch_add(CHUNK, Ordering::SeqCst);
                                bytes::Bytes::from(vec![(i % 251) as u8; CHUNK])
                            }
                            _ => bytes::Bytes::from_static(b"\r\n--b0--\r\n"),
                        };
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes))
                    });
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "multipart/mixed; boundary=b0")
                        .body(http_body_util::StreamBody::new(futures_util::stream::iter(parts)))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let cwd = tempfile::tempdir().unwrap();
    let (port, fed) = (myelin_suite::free_port(), myelin_suite::free_port());
    let config = cwd.path().join("myelin.toml");
    std::fs::write(
        &config,
        format!("[federation]\nverify_tls = false\n\n[federation.hosts]\n\"far.test\" = \"{far_addr}\"\n"),
    )
    .unwrap();
    let mut child = std::process::Command::new(myelin_suite::myelin_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(cwd.path())
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{port}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{fed}"))
        .env("MYELIN_REGISTRATION__ENABLED", "true")
        .env("MYELIN_MEDIA__MAX_UPLOAD_BYTES", (300u64 << 20).to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = serde_json::json!({ "username": "big", "password": "pw-pw-pw-1", "auth": { "type": "m.login.dummy" } });
    let r =
        myelin_suite::http(addr, Method::POST, "/_matrix/client/v3/register", Some(body.to_string().as_bytes())).await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let before = myelin_suite::rss_kib(child.id());
    // The server's memory, sampled while it fetches and while it serves.
    let (pid, sampling) = (child.id(), Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::SeqCst) {
                peak = peak.max(myelin_suite::rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    // Read the answer as it comes, counting bytes.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /_matrix/client/v1/media/download/far.test/clip HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, head.as_bytes()).await.unwrap();
    let (mut got, mut buf, mut first) = (0usize, vec![0u8; 1 << 16], Vec::new());
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        if first.len() < 64 {
            first.extend_from_slice(&buf[..n.min(64)]);
        }
        got += n;
    }
    sampling.store(false, Ordering::SeqCst);
    let peak = sampler.await.unwrap().max(myelin_suite::rss_kib(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    far.abort();
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
    assert!(got >= CHUNK * CHUNKS, "only {got} bytes came");
    assert_eq!(served.load(Ordering::SeqCst), CHUNK * CHUNKS, "fetched once, whole");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(growth_mib < 64, "server memory grew by {growth_mib} MiB fetching and serving 200 MiB");
}
