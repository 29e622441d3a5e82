//! The content repository over HTTP.
//!
//! Client-Server API §"Content repository": `POST /_matrix/media/v3/upload`,
//! `POST /_matrix/media/v1/create` + `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
//! (asynchronous upload, once, by the creator: else `M_CANNOT_OVERWRITE_MEDIA`),
//! authenticated `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`,
//! `…/thumbnail/{serverName}/{mediaId}` (`width`, `height`, `method=scale|crop`)
//! and `…/config` (`m.upload.size`); the deprecated unauthenticated
//! `/_matrix/media/v3/download|thumbnail` when `media.legacy_unauthenticated`.
//!
//! Uploads stream to a temporary file while being hashed, so memory does not
//! grow with the file; the size limit is checked against `Content-Length`
//! before anything is read (413 `M_TOO_LARGE`) and again while streaming.
//! Downloads stream from the file and honour `Range` (206). Responses carry
//! the spec's `Content-Security-Policy` sandbox and a `Content-Disposition`
//! that is `inline` only for types a browser shows safely. Quarantined media
//! (Synapse admin API §"Quarantine media") is 404 `M_NOT_FOUND` everywhere but
//! to an admin asking with `admin_unsafely_bypass_quarantine=true`; serving
//! media records its last access time.

use std::io::SeekFrom;

use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use myelin_engine::media::{MediaMeta, Staged};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{Resp, ok_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Types a browser may render inline without risk.
const INLINE_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

fn too_large(limit: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", format!("media is limited to {limit} bytes"))
}

/// Streams the request body into a temporary file, hashing it; enforces `limit`.
async fn receive(cx: &Ctx, req: &mut Req) -> Result<Staged, ApiError> {
    let limit = cx.engine.config.media.max_upload_bytes;
    let declared =
        req.parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = req.stream.take().ok_or_else(|| ApiError::unknown("upload route without a body stream"))?;
    let path = cx.engine.media.temp_path()?;
    let mut file =
        tokio::fs::File::create(&path).await.map_err(|e| ApiError::unknown(format!("temporary file: {e}")))?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    // Each chunk within limits.body_timeout_s of the one before (the whole upload may take longer).
    let chunk_timeout = std::time::Duration::from_secs(cx.engine.config.limits.body_timeout_s);
    let result: Result<(), ApiError> = async {
        while let Some(frame) = tokio::time::timeout(chunk_timeout, body.frame())
            .await
            .map_err(|_| crate::http_util::body_timed_out(chunk_timeout))?
        {
            let frame = frame
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("reading the upload: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if size > limit {
                return Err(too_large(limit));
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(|e| ApiError::unknown(format!("writing the upload: {e}")))?;
        }
        file.sync_all().await.map_err(|e| ApiError::unknown(format!("syncing the upload: {e}")))?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    let hash: String = hasher.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Staged { path, hash, size })
}

fn content_type_of(req: &Req) -> Option<String> {
    req.parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// POST /_matrix/media/v3/upload
pub fn upload(cx: Ctx, mut req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let staged = receive(&cx, &mut req).await?;
        let id = myelin_engine::media::Media::new_id()?;
        let server = cx.engine.server_name.to_string();
        let filename = query_param(&req, "filename");
        cx.engine
            .media
            .commit(&server, &id, staged, content_type_of(&req), filename, Some(me.user_id.to_string()))
            .await?;
        Ok(ok_json(&Uploaded { content_uri: format!("mxc://{server}/{id}") }))
    })
}

/// POST /_matrix/media/v1/create
pub fn create(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        if me.rate_limited() {
            cx.limiter.check(&me.user_id)?;
        }
        let server = cx.engine.server_name.to_string();
        let id = cx.engine.media.reserve(&server, me.user_id.as_str()).await?;
        let expires = myelin_engine::util::now_ms() + 24 * 3600 * 1000;
        Ok(ok_json(&Reserved { content_uri: format!("mxc://{server}/{id}"), unused_expires_at: expires }))
    })
}

/// PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
pub fn upload_reserved(cx: Ctx, mut req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let (server, id) = media_ref(&req)?;
        let (server, id) = (server.to_owned(), id.to_owned());
        let meta = cx.engine.media.meta(&server, &id)?.ok_or_else(|| ApiError::not_found("unknown media id"))?;
        if meta.uploader.as_deref() != Some(me.user_id.as_str()) {
            return Err(ApiError::forbidden("only the creator of a media id may upload to it"));
        }
        if !meta.hash.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "M_CANNOT_OVERWRITE_MEDIA",
                "this media id already has content",
            ));
        }
        let staged = receive(&cx, &mut req).await?;
        let filename = query_param(&req, "filename");
        cx.engine
            .media
            .commit(&server, &id, staged, content_type_of(&req), filename, Some(me.user_id.to_string()))
            .await?;
        Ok(crate::response::ok_empty())
    })
}

/// GET /_matrix/client/v1/media/config
pub fn config(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        Ok(ok_json(&MediaConfigAnswer { upload_size: cx.engine.config.media.max_upload_bytes }))
    })
}

/// GET /_matrix/federation/v1/media/download/{mediaId}: our media for another server.
pub fn federation_download(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        crate::federation::require_server(&cx, &req).await?;
        let id = media_id_param(&req)?;
        let meta = match cx.engine.media.meta(cx.engine.server_name.as_str(), id)? {
            Some(m) if !m.hash.is_empty() => served(&cx, cx.engine.server_name.as_str(), id, m, false).await?,
            _ => return Err(ApiError::not_found("media not found")),
        };
        let content_type = meta.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
        multipart(&meta.hash, &content_type, cx.engine.media.blob_path(&meta.hash), "media file missing").await
    })
}

/// GET /_matrix/federation/v1/media/thumbnail/{mediaId}?width=&height=&method=
pub fn federation_thumbnail(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        crate::federation::require_server(&cx, &req).await?;
        let id = media_id_param(&req)?;
        let meta = match cx.engine.media.meta(cx.engine.server_name.as_str(), id)? {
            Some(m) if !m.hash.is_empty() => served(&cx, cx.engine.server_name.as_str(), id, m, false).await?,
            _ => return Err(ApiError::not_found("media not found")),
        };
        let (path, _) = make_thumbnail(&cx, &meta, &req).await?;
        multipart(&meta.hash, "image/png", path, "thumbnail missing").await
    })
}

/// The federation media answer: `multipart/mixed` with an empty JSON part,
/// then the file at `path`, streamed from disk (never read whole into memory).
async fn multipart(hash: &str, content_type: &str, path: std::path::PathBuf, missing: &str) -> Result<Resp, ApiError> {
    let file = tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found(missing))?;
    let len = file.metadata().await.map_err(|e| ApiError::unknown(e.to_string()))?.len();
    let boundary = format!("myelin{}", &hash[..16.min(hash.len())]);
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + len + tail.len() as u64;
    let once = |s: String| futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(s)) });
    let bytes = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024);
    let stream = once(head).chain(bytes).chain(once(tail)).map_ok(Frame::data);
    let mut resp = http::Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// The request's media id, refused (400 `M_INVALID_PARAM`) unless it is `[A-Za-z0-9_-]+`.
fn media_id_param(req: &Req) -> Result<&str, ApiError> {
    let id = req.param("media_id")?;
    if !myelin_engine::util::valid_media_id(id) {
        return Err(ApiError::invalid_param("the media id must be [A-Za-z0-9_-]+"));
    }
    Ok(id)
}

/// The request's `{serverName}/{mediaId}`, both checked before anything is
/// looked up or fetched: a name that is not a server name never leads to an
/// outbound request.
fn media_ref(req: &Req) -> Result<(&str, &str), ApiError> {
    let server = req.param("server_name")?;
    if !myelin_engine::util::valid_server_name(server) {
        return Err(ApiError::invalid_param("not a valid server name"));
    }
    Ok((server, media_id_param(req)?))
}

/// The media a download or thumbnail request names, fetched if remote and not
/// cached; quarantined media is 404 `M_NOT_FOUND` (as Synapse) unless `bypass`.
async fn local_media(cx: &Ctx, req: &Req, bypass: bool) -> Result<MediaMeta, ApiError> {
    let (server, id) = media_ref(req)?;
    let meta = if server != cx.engine.server_name.as_str() {
        // A cached copy, or fetch it now.
        match cx.engine.media.meta(server, id)? {
            Some(meta) if !meta.hash.is_empty() => meta,
            _ => cx.engine.remote_media(server, id).await?,
        }
    } else {
        match cx.engine.media.meta(server, id)? {
            Some(meta) if !meta.hash.is_empty() => meta,
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "M_NOT_YET_UPLOADED",
                    "the media has not been uploaded yet",
                ));
            }
            None => return Err(ApiError::not_found("media not found")),
        }
    };
    served(cx, server, id, meta, bypass).await
}

/// `meta` of `(server, id)` if it may be served (not quarantined, or `bypass`),
/// its access time recorded; else 404 `M_NOT_FOUND`.
async fn served(cx: &Ctx, server: &str, id: &str, meta: MediaMeta, bypass: bool) -> Result<MediaMeta, ApiError> {
    if meta.quarantined_by.is_some() && !bypass {
        return Err(ApiError::not_found("Not found"));
    }
    if let Err(e) = cx.engine.media.touch(server, id, &meta).await {
        tracing::warn!(server, media_id = id, error = %e, "media served, its last access time not recorded");
    }
    Ok(meta)
}

/// `admin_unsafely_bypass_quarantine=true` from a server admin (Synapse admin API
/// §"Downloading quarantined media"); ignored from anyone else.
fn bypass_quarantine(cx: &Ctx, req: &Req, user: &ruma::UserId) -> Result<bool, ApiError> {
    Ok(query_param(req, "admin_unsafely_bypass_quarantine").as_deref() == Some("true")
        && cx.engine.users.is_admin(user)?)
}

fn encode_filename(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // one range only
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, len.checked_sub(1)?),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && end < len).then_some((start, end))
}

async fn file_response(
    path: std::path::PathBuf,
    content_type: &str,
    filename: Option<&str>,
    range: Option<&str>,
) -> Result<Resp, ApiError> {
    let mut file = tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found("media file missing"))?;
    let len = file.metadata().await.map_err(|e| ApiError::unknown(e.to_string()))?.len();
    let (status, start, count) = match range.map(|r| parse_range(r, len)) {
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(None) => {
            let mut resp = crate::http_util::text_response(StatusCode::RANGE_NOT_SATISFIABLE, "text/plain", "");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
        None => (StatusCode::OK, 0, len),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(|e| ApiError::unknown(e.to_string()))?;
    }
    // Large reads: 4 KiB default frames cost more in framing than in I/O.
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024).map_ok(Frame::data);
    let body = StreamBody::new(stream).boxed_unsync();
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let safe =
        INLINE_TYPES.iter().any(|t| content_type.split(';').next().is_some_and(|c| c.trim().eq_ignore_ascii_case(t)));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let disposition = match filename {
        Some(name) => {
            format!("{}; filename*=utf-8''{}", if safe { "inline" } else { "attachment" }, encode_filename(name))
        }
        None => (if safe { "inline" } else { "attachment" }).to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

async fn download_inner(cx: &Ctx, req: &Req, bypass: bool) -> Result<Resp, ApiError> {
    let meta = local_media(cx, req, bypass).await?;
    let filename = req.param("file_name").ok().map(str::to_owned).or(meta.filename.clone());
    let range = req.parts.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let content_type = meta.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
    file_response(cx.engine.media.blob_path(&meta.hash), &content_type, filename.as_deref(), range).await
}

/// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]
pub fn download(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let bypass = bypass_quarantine(&cx, &req, &me.user_id)?;
        download_inner(&cx, &req, bypass).await
    })
}

/// GET /_matrix/media/v3/download/… (deprecated, unauthenticated)
pub fn legacy_download(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        if !cx.engine.config.media.legacy_unauthenticated {
            return Err(ApiError::not_found("unauthenticated media is disabled; use /_matrix/client/v1/media"));
        }
        download_inner(&cx, &req, false).await
    })
}

async fn thumbnail_inner(cx: &Ctx, req: &Req, bypass: bool) -> Result<Resp, ApiError> {
    let meta = local_media(cx, req, bypass).await?;
    let (cached, made) = make_thumbnail(cx, &meta, req).await?;
    if made > 0 {
        // A remote file's thumbnails are part of the remote cache's bound.
        let (server, id) = media_ref(req)?;
        cx.engine.media.thumbnail_added(cx.engine.config.media.remote_cache_max_bytes, made, (server, id)).await?;
    }
    file_response(cached, "image/png", None, None).await
}

/// The sizes thumbnails are made in (Client-Server API §"Thumbnails": "the
/// server SHOULD produce thumbnails with the following dimensions and
/// methods: 32x32 crop, 96x96 crop, 320x240 scale, 640x480 scale, 800x600
/// scale"). A request is served the smallest of them at least as large as
/// asked, of its method if one fits, else the smallest scaled one that fits,
/// else the largest: at most five thumbnails per file, whatever strangers ask.
pub const THUMBNAIL_SIZES: [(u32, u32, bool); 5] =
    [(32, 32, true), (96, 96, true), (320, 240, false), (640, 480, false), (800, 600, false)];

/// Largest source image, per side, that is decoded for a thumbnail.
pub const MAX_SOURCE_SIDE: u32 = 12_000;
/// Most memory the decoder may allocate for one source image.
pub const MAX_SOURCE_ALLOC: u64 = 192 << 20;

/// The size a `width`×`height` request (cropped or not) is served from [`THUMBNAIL_SIZES`].
pub fn thumbnail_size(width: u32, height: u32, crop: bool) -> (u32, u32, bool) {
    let fits = |&&(w, h, _): &&(u32, u32, bool)| w >= width && h >= height;
    THUMBNAIL_SIZES
        .iter()
        .filter(|s| s.2 == crop)
        .find(fits)
        .or_else(|| THUMBNAIL_SIZES.iter().filter(|s| !s.2).find(fits))
        .copied()
        .unwrap_or(THUMBNAIL_SIZES[THUMBNAIL_SIZES.len() - 1])
}

/// The PNG thumbnail of `meta` for the request's `width`/`height`/`method`,
/// made once and cached, and its size in bytes if this call made it (else 0).
/// Thumbnails decoded at once, server-wide.
const THUMBNAILERS: usize = 2;
static THUMBNAILING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(THUMBNAILERS);

async fn make_thumbnail(cx: &Ctx, meta: &MediaMeta, req: &Req) -> Result<(std::path::PathBuf, u64), ApiError> {
    let dim = |name: &str| -> Result<u32, ApiError> {
        query_param(req, name)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| (1..=4096).contains(v))
            .ok_or_else(|| ApiError::invalid_param(format!("{name} must be 1..4096")))
    };
    let (asked_width, asked_height) = (dim("width")?, dim("height")?);
    let asked_crop = query_param(req, "method").as_deref() == Some("crop");
    let (width, height, crop) = thumbnail_size(asked_width, asked_height, asked_crop);
    let method = if crop { "crop" } else { "scale" };
    let cached = cx.engine.media.thumbnail_path(&meta.hash, width, height, method);
    let mut made = 0;
    // Decoding takes up to 192 MiB and a core, and the legacy endpoints let
    // anyone ask: at most THUMBNAILERS at once, and a thumbnail another
    // request made while this one waited is not made again.
    let _permit = if cached.exists() {
        None
    } else {
        Some(THUMBNAILING.acquire().await.map_err(|e| ApiError::unknown(e.to_string()))?)
    };
    if !cached.exists() {
        metrics::counter!("myelin_thumbnail_decodes_total").increment(1);
        let source = cx.engine.media.blob_path(&meta.hash);
        let target = cached.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut reader = image::ImageReader::open(&source)
                .map_err(|e| e.to_string())?
                .with_guessed_format()
                .map_err(|e| e.to_string())?;
            // A small file may declare a huge image: the header is checked before pixels are allocated.
            let mut limits = image::Limits::default();
            limits.max_image_width = Some(MAX_SOURCE_SIDE);
            limits.max_image_height = Some(MAX_SOURCE_SIDE);
            limits.max_alloc = Some(MAX_SOURCE_ALLOC);
            reader.limits(limits);
            let img = reader.decode().map_err(|e| e.to_string())?;
            let thumb = if !crop && img.width() <= width && img.height() <= height {
                // Never scaled up: the image already fits.
                img
            } else if crop {
                img.resize_to_fill(width, height, image::imageops::FilterType::Triangle)
            } else {
                img.thumbnail(width, height)
            };
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            // Its own temporary name: two makers of one thumbnail never write one file.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = target.with_extension(format!("{}-{n}.tmp", std::process::id()));
            thumb.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &target).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::unknown(e.to_string()))?
        .map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("cannot thumbnail this media: {e}"))
        })?;
        made = tokio::fs::metadata(&cached).await.map(|m| m.len()).unwrap_or(0);
    }
    Ok((cached, made))
}

/// GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
pub fn thumbnail(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let bypass = bypass_quarantine(&cx, &req, &me.user_id)?;
        thumbnail_inner(&cx, &req, bypass).await
    })
}

/// GET /_matrix/media/v3/thumbnail/… (deprecated, unauthenticated)
pub fn legacy_thumbnail(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        if !cx.engine.config.media.legacy_unauthenticated {
            return Err(ApiError::not_found("unauthenticated media is disabled; use /_matrix/client/v1/media"));
        }
        thumbnail_inner(&cx, &req, false).await
    })
}

/// Adds the media routes to the client router.
pub fn add(r: &mut crate::router::Router) {
    use http::Method as M;
    for prefix in ["/_matrix/media/v3", "/_matrix/media/r0"] {
        r.add_streaming(M::POST, &format!("{prefix}/upload"), upload);
        r.add_streaming(M::PUT, &format!("{prefix}/upload/{{server_name}}/{{media_id}}"), upload_reserved);
        r.add(M::GET, &format!("{prefix}/config"), config);
        r.add(M::GET, &format!("{prefix}/download/{{server_name}}/{{media_id}}"), legacy_download);
        r.add(M::GET, &format!("{prefix}/download/{{server_name}}/{{media_id}}/{{file_name}}"), legacy_download);
        r.add(M::GET, &format!("{prefix}/thumbnail/{{server_name}}/{{media_id}}"), legacy_thumbnail);
    }
    r.add(M::POST, "/_matrix/media/v1/create", create);
    r.add(M::GET, "/_matrix/client/v1/media/config", config);
    r.add(M::GET, "/_matrix/client/v1/media/download/{server_name}/{media_id}", download);
    r.add(M::GET, "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}", download);
    r.add(M::GET, "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}", thumbnail);
}

/// Adds the media routes of the federation listener.
pub fn add_federation(r: &mut crate::router::Router) {
    r.add(http::Method::GET, "/_matrix/federation/v1/media/download/{media_id}", federation_download);
    r.add(http::Method::GET, "/_matrix/federation/v1/media/thumbnail/{media_id}", federation_thumbnail);
}

/// An upload's answer.
#[derive(serde::Serialize)]
struct Uploaded<A> {
    content_uri: A,
}

/// `media/v1/create`: the reserved URI and until when it may be uploaded to.
#[derive(serde::Serialize)]
struct Reserved<A, B> {
    content_uri: A,
    unused_expires_at: B,
}

/// `media/v3/config`.
#[derive(serde::Serialize)]
struct MediaConfigAnswer {
    #[serde(rename = "m.upload.size")]
    upload_size: u64,
}
