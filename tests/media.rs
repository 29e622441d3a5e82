//! Files, images, audio and video: uploads, downloads, thumbnails, limits.

use std::time::Duration;

use http::{Method, StatusCode};
use myelin_suite::{Client, TestServer, http_with};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    r.json()["content_uri"].as_str().unwrap().to_owned()
}

async fn download(c: &Client, mxc: &str, headers: &[(&str, &str)]) -> myelin_suite::Reply {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let auth = format!("Bearer {}", c.token);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    http_with(c.addr, Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None, &all).await
}

fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_mib_file_round_trips_byte_for_byte_and_ranges_slice_it() {
    let s = TestServer::open("localhost").await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let bytes = pseudo_random(3 * 1024 * 1024 + 17);
    let mxc = upload(&alice, &bytes, "video/mp4", "clip.mp4").await;
    assert!(mxc.starts_with("mxc://localhost/"));

    let r = download(&bob, &mxc, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), bytes.len());
    assert!(r.body[..] == bytes[..], "bytes differ");
    assert_eq!(r.headers["content-type"], "video/mp4");
    assert!(r.headers["content-disposition"].to_str().unwrap().starts_with("inline"));
    assert!(r.headers["content-security-policy"].to_str().unwrap().starts_with("sandbox"));

    let r = download(&bob, &mxc, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &bytes[1000..2000]);
    assert_eq!(r.headers["content-range"], format!("bytes 1000-1999/{}", bytes.len()).as_str());
    let r = download(&bob, &mxc, &[("range", "bytes=-5")]).await;
    assert_eq!(&r.body[..], &bytes[bytes.len() - 5..]);
    let r = download(&bob, &mxc, &[("range", "bytes=99999999-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);

    // Unsafe types are attachments; the legacy path works while enabled.
    let html = upload(&alice, b"<script>alert(1)</script>", "text/html", "x.html").await;
    let r = download(&bob, &html, &[]).await;
    assert!(r.headers["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let legacy = myelin_suite::http(
        s.client,
        Method::GET,
        &format!("/_matrix/media/v3/download/{}", html.strip_prefix("mxc://").unwrap()),
        None,
    )
    .await;
    assert_eq!(legacy.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_uploads_are_stored_once() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let bytes = pseudo_random(200_000);
    let a = upload(&alice, &bytes, "application/octet-stream", "a.bin").await;
    let b = upload(&alice, &bytes, "application/octet-stream", "b.bin").await;
    assert_ne!(a, b, "two media ids");
    let meta = s.engine.media.meta("localhost", a.rsplit('/').next().unwrap()).unwrap().unwrap();
    assert_eq!(s.engine.media.references(&meta.hash).unwrap(), 2);
    let blob = s.engine.media.blob_path(&meta.hash);
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), bytes.len() as u64);
    // Deleting one keeps the file; deleting both removes it.
    assert!(s.engine.media.delete("localhost", a.rsplit('/').next().unwrap()).await.unwrap());
    assert!(blob.exists());
    assert!(s.engine.media.delete("localhost", b.rsplit('/').next().unwrap()).await.unwrap());
    assert!(!blob.exists());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_have_the_asked_size() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let img = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let mxc = upload(&alice, &png, "image/png", "photo.png").await;
    let path = mxc.strip_prefix("mxc://").unwrap();
    // Scaled requests are served the smallest standard size that fits: 320x240.
    for (method, want) in [("crop", (96, 96)), ("scale", (320, 240))] {
        let r = alice
            .request(
                Method::GET,
                &format!("/_matrix/client/v1/media/thumbnail/{path}?width=96&height=96&method={method}"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.headers["content-type"], "image/png");
        let thumb = image::load_from_memory(&r.body).unwrap();
        assert_eq!((thumb.width(), thumb.height()), want, "{method}");
    }
    let not_image = upload(&alice, b"plain text", "text/plain", "t.txt").await;
    let r = alice
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32",
                not_image.strip_prefix("mxc://").unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_uploads_and_the_one_size_limit() {
    let s = TestServer::start_with("localhost", |c| {
        c.registration.enabled = true;
        c.media.max_upload_bytes = 64 * 1024;
        c.media.legacy_unauthenticated = false;
    })
    .await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    assert_eq!(alice.get("/_matrix/client/v1/media/config").await["m.upload.size"], 65536);

    // Declared too large: refused from the headers, before the body is read.
    let mut conn = tokio::net::TcpStream::connect(s.client).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 10000000\r\n\r\n0123",
        alice.token
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("no answer").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("M_TOO_LARGE"), "{answer}");
    // Streamed past the limit (no length given): cut off.
    let auth = format!("Bearer {}", alice.token);
    let r = http_with(
        s.client,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some(&vec![7u8; 70 * 1024]),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!((r.status, r.errcode().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"));

    let created = alice.post("/_matrix/media/v1/create", json!({})).await;
    let mxc = created["content_uri"].as_str().unwrap().to_owned();
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    let r = download(&bob, &mxc, &[]).await;
    assert_eq!(r.errcode(), "M_NOT_YET_UPLOADED");
    let bob_auth = format!("Bearer {}", bob.token);
    let r = http_with(
        s.client,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{path}"),
        Some(b"x"),
        &[("authorization", &bob_auth)],
    )
    .await;
    assert_eq!(r.errcode(), "M_FORBIDDEN");
    let r = http_with(
        s.client,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{path}"),
        Some(b"audio bytes"),
        &[("authorization", &auth), ("content-type", "audio/ogg")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = http_with(
        s.client,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{path}"),
        Some(b"again"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.errcode(), "M_CANNOT_OVERWRITE_MEDIA");
    let r = download(&bob, &mxc, &[]).await;
    assert_eq!((&r.body[..], r.headers["content-type"].to_str().unwrap()), (&b"audio bytes"[..], "audio/ogg"));

    let legacy = myelin_suite::http(s.client, Method::GET, &format!("/_matrix/media/v3/download/{path}"), None).await;
    assert_eq!(legacy.errcode(), "M_NOT_FOUND", "legacy unauthenticated downloads can be switched off");
    let r = myelin_suite::http(s.client, Method::GET, &format!("/_matrix/client/v1/media/download/{path}"), None).await;
    assert_eq!(r.errcode(), "M_MISSING_TOKEN");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_with_flat_server_memory() {
    use std::process::{Command, Stdio};
    let cwd = tempfile::tempdir().unwrap();
    let (port, fed) = (myelin_suite::free_port(), myelin_suite::free_port());
    let mut child = Command::new(myelin_suite::myelin_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env("MYELIN_CLIENT__LISTEN", format!("127.0.0.1:{port}"))
        .env("MYELIN_FEDERATION__LISTEN", format!("127.0.0.1:{fed}"))
        .env("MYELIN_REGISTRATION__ENABLED", "true")
        .env("MYELIN_MEDIA__MAX_UPLOAD_BYTES", (300u64 << 20).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({ "username": "big", "password": "pw-pw-pw-1", "auth": { "type": "m.login.dummy" } }).to_string();
    let r = myelin_suite::http(addr, Method::POST, "/_matrix/client/v3/register", Some(body.as_bytes())).await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let before = myelin_suite::rss_kib(child.id());

    // 256 MiB in 1 MiB chunks; the test never holds more than one chunk either.
    let total: u64 = 256 << 20;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/octet-stream\r\ncontent-length: {total}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0xA5u8; 1 << 20];
    let mut peak = before;
    for i in 0..(total >> 20) {
        conn.write_all(&chunk).await.unwrap();
        if i % 32 == 0 {
            peak = peak.max(myelin_suite::rss_kib(child.id()));
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await.unwrap().unwrap();
        answer.extend_from_slice(&buf[..n]);
        if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    peak = peak.max(myelin_suite::rss_kib(child.id()));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(growth_mib < 64, "server memory grew by {growth_mib} MiB while receiving 256 MiB");
}

/// A transport that records every outbound request and answers none.
struct Recorder(std::sync::Mutex<Vec<String>>);

impl myelin_engine::federation::Transport for Recorder {
    fn send<'a>(
        &'a self,
        destination: &'a str,
        request: myelin_engine::federation::OutboundRequest,
    ) -> myelin_engine::federation::transport::TransportFuture<'a> {
        self.0.lock().unwrap().push(format!("{destination} {}", request.path_and_query));
        Box::pin(async { Err(myelin_engine::federation::TransportError::NoTransport) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_server_names_and_media_ids_are_400_and_never_fetched() {
    let s = TestServer::open("localhost").await;
    let recorder = std::sync::Arc::new(Recorder(Default::default()));
    s.engine.federation.set_transport(recorder.clone());
    let alice = s.register("alice").await;
    let auth = format!("Bearer {}", alice.token);
    let bad_servers = ["..", "%2E%2E", "%2e", "a%20b", "evil.com%2F..%2Fx", "a..b", ".evil.com", "a:b", "a:99999999"];
    let bad_ids = ["..", "%2E%2E", "a%20b", "x%2F..%2Fy", "a.b", "%00"];
    let mut paths = Vec::new();
    for server in bad_servers {
        for (prefix, tail) in [
            ("/_matrix/media/v3/download", ""),
            ("/_matrix/media/r0/download", "/name.txt"),
            ("/_matrix/client/v1/media/download", ""),
            ("/_matrix/client/v1/media/download", "/name.txt"),
            ("/_matrix/media/v3/thumbnail", "?width=32&height=32"),
            ("/_matrix/client/v1/media/thumbnail", "?width=32&height=32"),
        ] {
            paths.push(format!("{prefix}/{server}/abc{tail}"));
        }
    }
    for id in bad_ids {
        for server in ["remote.example", "localhost"] {
            paths.push(format!("/_matrix/media/v3/download/{server}/{id}"));
            paths.push(format!("/_matrix/client/v1/media/download/{server}/{id}"));
            paths.push(format!("/_matrix/client/v1/media/thumbnail/{server}/{id}?width=32&height=32"));
        }
    }
    let mut failures = Vec::new();
    for path in &paths {
        let r = http_with(s.client, Method::GET, path, None, &[("authorization", &auth)]).await;
        let errcode = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|j| j["errcode"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if (r.status, errcode.as_str()) != (StatusCode::BAD_REQUEST, "M_INVALID_PARAM") {
            failures.push(format!("{path}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
    }
    // An empty server name or id does not match the route at all.
    for path in ["/_matrix/client/v1/media/download//abc", "/_matrix/client/v1/media/download/localhost/"] {
        let r = http_with(s.client, Method::GET, path, None, &[("authorization", &auth)]).await;
        if !r.status.is_client_error() {
            failures.push(format!("{path}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} paths answered wrongly:\n{}",
        failures.len(),
        paths.len() + 2,
        failures.join("\n")
    );
    let sent = recorder.0.lock().unwrap().clone();
    assert!(sent.is_empty(), "outbound requests were made: {sent:?}");

    // A well-formed remote name still goes out (and fails here: 502), so the recorder does see requests.
    let r = http_with(
        s.client,
        Method::GET,
        "/_matrix/client/v1/media/download/remote.example/abc",
        None,
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(recorder.0.lock().unwrap().len(), 1);
    s.stop().await;
}

/// A PNG whose header says `width`×`height` and whose data is a few bytes.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        out.extend_from_slice(&typed);
        out.extend_from_slice(&crc32(&typed).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_bounded_in_sizes_per_file_and_in_source_pixels() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let img = image::RgbImage::from_fn(900, 700, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let mxc = upload(&alice, &png, "image/png", "big.png").await;
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    // Forty different sizes and both methods: at most the five standard thumbnails are made.
    for i in 1..=40u32 {
        let method = if i % 2 == 0 { "crop" } else { "scale" };
        let q = format!("/_matrix/client/v1/media/thumbnail/{path}?width={}&height={}&method={method}", i * 23, i * 17);
        let r = alice.request(Method::GET, &q, None).await;
        assert_eq!(r.status, StatusCode::OK, "{q}: {}", String::from_utf8_lossy(&r.body));
        let thumb = image::load_from_memory(&r.body).unwrap();
        assert!(thumb.width() <= 800 && thumb.height() <= 600, "{q}: {}x{}", thumb.width(), thumb.height());
    }
    let made = std::fs::read_dir(s.engine.config.data_dir.join("media/thumbnails")).unwrap().count();
    assert!((1..=5).contains(&made), "{made} thumbnails cached for one file");
    // A 15,000 x 15,000 image (225 MB of pixels) in a few dozen bytes is refused from its header, not decoded.
    let bomb = upload(&alice, &png_claiming(15_000, 15_000), "image/png", "bomb.png").await;
    let q = format!("/_matrix/client/v1/media/thumbnail/{}?width=32&height=32", bomb.strip_prefix("mxc://").unwrap());
    let r = alice.request(Method::GET, &q, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&r.body));
    let said = r.json()["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(said.contains("limit"), "refused for its size, not for its missing pixels: {said}");
    s.stop().await;
}

/// Many requests at once for one thumbnail not made yet decode the image at
/// most as many times as thumbnails are made at once (two), not once each,
/// and all get the same thumbnail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_thumbnail_decode_the_image_at_most_twice() {
    let s = TestServer::open("localhost").await;
    let alice = s.register("alice").await;
    let img = image::RgbImage::from_fn(2000, 1500, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 9]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let mxc = upload(&alice, &png, "image/png", "large.png").await;
    let q = format!("/_matrix/client/v1/media/thumbnail/{}?width=320&height=240", mxc.strip_prefix("mxc://").unwrap());
    let asks: Vec<_> = (0..12)
        .map(|_| {
            let (alice, q) = (alice.clone(), q.clone());
            tokio::spawn(async move { alice.request(Method::GET, &q, None).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for ask in asks {
        let r = ask.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every request got the same thumbnail");
    let metrics = myelin_suite::http(s.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let decodes: f64 = text
        .lines()
        .find(|l| l.starts_with("myelin_thumbnail_decodes_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .expect("the decode counter");
    assert!((1.0..=2.0).contains(&decodes), "{decodes} decodes for 12 requests of one thumbnail");
    s.stop().await;
}
