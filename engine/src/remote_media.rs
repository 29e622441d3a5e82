//! Fetching another server's media into the local cache.
//!
//! Server-Server API §"Content Repository", `GET /_matrix/federation/v1/media/download/{mediaId}`:
//!
//! > The response is a `multipart/mixed` ... The first part ... is a JSON
//! > object ... The second part is either the bytes of the media itself or a
//! > `Location` header to redirect the requester to.
//!
//! Servers older than authenticated media (spec v1.11) answer that endpoint
//! with 404/400 `M_UNRECOGNIZED`; for those the unauthenticated
//! `/_matrix/media/v3/download/{serverName}/{mediaId}?allow_remote=false` is used.
//!
//! Bounds: the answer is written to a file as it arrives (the transport's
//! spool), never held in memory; it may be at most `media.max_upload_bytes`
//! (plus the multipart framing); concurrent requests for the same media share
//! one fetch; at most [`MAX_FETCHES`] different media are fetched at once (a
//! request beyond that is told to retry). A `Location` redirect is not followed
//! (it would send us to an address a stranger chose): such media is reported
//! as unavailable.

use std::{
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use http::StatusCode;

use crate::{
    Engine, EngineError,
    federation::{FederationError, enc},
    in_flight::InFlight,
    media::{MediaMeta, Staged},
};

/// Most different remote media fetched at once.
pub const MAX_FETCHES: usize = 32;
/// Room for the multipart framing and the JSON part around the media bytes.
const FRAMING: usize = 64 * 1024;
/// How much of the spooled answer is read to find the part headers.
const HEAD_WINDOW: usize = 16 * 1024;

/// Why remote media could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RemoteMediaError {
    /// The remote server does not have it (`M_NOT_FOUND`).
    #[error("media not found")]
    NotFound,
    /// Larger than `media.max_upload_bytes` (`M_TOO_LARGE`).
    #[error("the media is larger than {0} bytes")]
    TooLarge(u64),
    /// Too many other fetches in flight (`M_LIMIT_EXCEEDED`).
    #[error("too many remote media fetches in flight")]
    Busy,
    /// The server could not be asked (or refused to be asked) or answered nonsense.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// The server answered, but not with media.
    #[error("{server} answered {what}")]
    BadAnswer {
        /// Who answered.
        server: String,
        /// What was wrong.
        what: String,
    },
    /// Anything on our side.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The fetches in flight, one per `(server, media id)`.
pub struct RemoteFetches(InFlight<(String, String)>);

impl Default for RemoteFetches {
    fn default() -> Self {
        Self(InFlight::new(MAX_FETCHES))
    }
}

/// Deletes a spool file however the fetch ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Engine {
    /// `server`'s media `id`: the cached copy, or fetched now and cached.
    pub async fn remote_media(&self, server: &str, id: &str) -> Result<MediaMeta, RemoteMediaError> {
        if let Some(meta) = self.media.meta(server, id)?.filter(|m| !m.hash.is_empty()) {
            return Ok(meta);
        }
        let _claim =
            self.remote_fetches.0.claim((server.to_owned(), id.to_owned())).await.ok_or(RemoteMediaError::Busy)?;
        // Whoever held the claim before us may have fetched it.
        if let Some(meta) = self.media.meta(server, id)?.filter(|m| !m.hash.is_empty()) {
            return Ok(meta);
        }
        metrics::counter!("myelin_remote_media_fetches_total").increment(1);
        let limit = self.config.media.max_upload_bytes;
        let spool = TempFile(self.media.temp_path()?);
        let path = format!("/_matrix/federation/v1/media/download/{}", enc(id));
        let remote = self.remote(server);
        let resp = remote.download(&path, true, limit as usize + FRAMING, spool.0.clone()).await.map_err(too_large)?;
        let (content_type, staged) = if resp.status.is_success() {
            let content_type = header(&resp.headers, http::header::CONTENT_TYPE).unwrap_or_default();
            let boundary = boundary(&content_type)
                .ok_or_else(|| bad(server, "media that is not multipart/mixed with a boundary"))?;
            let dest = self.media.temp_path()?;
            let src = spool.0.clone();
            let (part_type, staged) =
                blocking(move || extract_part(&src, &dest, &boundary, limit)).await?.map_err(|e| bad(server, &e))?;
            (part_type, staged)
        } else if unrecognized(&resp) {
            // A server older than authenticated media: its legacy endpoint.
            let path = format!("/_matrix/media/v3/download/{}/{}?allow_remote=false", enc(server), enc(id));
            let resp = remote.download(&path, false, limit as usize, spool.0.clone()).await.map_err(too_large)?;
            if resp.status == StatusCode::NOT_FOUND {
                return Err(RemoteMediaError::NotFound);
            }
            if !resp.status.is_success() {
                return Err(bad(server, &resp.status.to_string()));
            }
            let dest = self.media.temp_path()?;
            let src = spool.0.clone();
            let staged = blocking(move || hash_into(&src, &dest, 0, None)).await?.map_err(|e| bad(server, &e))?;
            (header(&resp.headers, http::header::CONTENT_TYPE), staged)
        } else if resp.status == StatusCode::NOT_FOUND {
            return Err(RemoteMediaError::NotFound);
        } else {
            return Err(bad(server, &resp.status.to_string()));
        };
        if staged.size > limit {
            let _ = std::fs::remove_file(&staged.path);
            return Err(RemoteMediaError::TooLarge(limit));
        }
        let meta = self.media.commit(server, id, staged, content_type, None, None).await?;
        self.media.evict_remote(self.config.media.remote_cache_max_bytes, (server, id)).await?;
        Ok(meta)
    }
}

fn too_large(e: FederationError) -> RemoteMediaError {
    match e {
        FederationError::Transport { source: crate::federation::transport::TransportError::TooLarge(n), .. } => {
            RemoteMediaError::TooLarge(n.saturating_sub(FRAMING) as u64)
        }
        other => other.into(),
    }
}

fn bad(server: &str, what: &str) -> RemoteMediaError {
    RemoteMediaError::BadAnswer { server: server.to_owned(), what: what.to_owned() }
}

fn header(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Whether the answer says the authenticated media endpoint does not exist there.
fn unrecognized(resp: &crate::federation::transport::RawResponse) -> bool {
    matches!(resp.status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST)
        && serde_json::from_slice::<serde_json::Value>(&resp.body)
            .is_ok_and(|j| j["errcode"] == "M_UNRECOGNIZED" || j["errcode"].is_null())
}

/// The `boundary` parameter of a `multipart/mixed` content type.
fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_owned())
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| EngineError::Task("remote media"))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// Copies the second part of the multipart answer in `src` into `dest`,
/// hashing it; returns that part's content type. Reads the file in pieces:
/// the part headers are in its first [`HEAD_WINDOW`] bytes, the closing
/// delimiter in its last.
fn extract_part(src: &Path, dest: &Path, boundary: &str, limit: u64) -> Result<(Option<String>, Staged), String> {
    let delimiter = format!("--{boundary}");
    let mut file = std::fs::File::open(src).map_err(|e| format!("reading the spooled answer: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; HEAD_WINDOW.min(len as usize)];
    file.read_exact(&mut head).map_err(|e| e.to_string())?;
    let first = find(&head, delimiter.as_bytes(), 0).ok_or("a multipart answer without its first part")?;
    let second =
        find(&head, delimiter.as_bytes(), first + delimiter.len()).ok_or("a multipart answer without a second part")?;
    let part = second + delimiter.len();
    let head_end = find(&head, b"\r\n\r\n", part).ok_or("a media part without a header end")?;
    let part_headers = String::from_utf8_lossy(&head[part..head_end]);
    let part_header = |name: &str| {
        part_headers.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
        })
    };
    if part_header("location").is_some() {
        return Err("a redirect (Location), which is not followed".into());
    }
    let start = (head_end + 4) as u64;
    // The closing delimiter: the last `\r\n--boundary` in the file.
    let tail_len = (HEAD_WINDOW as u64).min(len.saturating_sub(start));
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(len - tail_len)).map_err(|e| e.to_string())?;
    file.read_exact(&mut tail).map_err(|e| e.to_string())?;
    let closing = format!("\r\n{delimiter}");
    let at = tail
        .windows(closing.len())
        .rposition(|w| w == closing.as_bytes())
        .ok_or("a multipart answer without its closing delimiter")?;
    let end = len - tail_len + at as u64;
    if end < start {
        return Err("a multipart answer whose parts overlap".into());
    }
    if end - start > limit {
        return Err(format!("media larger than {limit} bytes"));
    }
    let staged = hash_into(src, dest, start, Some(end - start))?;
    Ok((part_header("content-type"), staged))
}

/// Copies `count` bytes (all, with `None`) of `src` from `start` into a new
/// file `dest` while hashing them.
pub(crate) fn hash_into(src: &Path, dest: &Path, start: u64, count: Option<u64>) -> Result<Staged, String> {
    let mut input = std::fs::File::open(src).map_err(|e| format!("reading the spooled answer: {e}"))?;
    input.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut input: Box<dyn Read> = match count {
        Some(n) => Box::new(input.take(n)),
        None => Box::new(input),
    };
    let mut output = std::fs::File::create(dest).map_err(|e| format!("staging remote media: {e}"))?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(|e| format!("staging remote media: {e}"))?;
        size += n as u64;
    }
    output.flush().map_err(|e| e.to_string())?;
    let hash = digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Staged { path: dest.to_owned(), hash, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spooled(body: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answer");
        std::fs::write(&path, body).unwrap();
        (dir, path)
    }

    #[test]
    fn the_second_part_is_cut_out_of_a_spooled_answer() {
        let media: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut body =
            b"--b0\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0\r\nContent-Type: image/png\r\n\r\n".to_vec();
        body.extend_from_slice(&media);
        body.extend_from_slice(b"\r\n--b0--\r\n");
        let (dir, src) = spooled(&body);
        let dest = dir.path().join("out");
        let (kind, staged) = extract_part(&src, &dest, "b0", 1 << 20).unwrap();
        assert_eq!(kind.as_deref(), Some("image/png"));
        assert_eq!(staged.size, media.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), media);
        let expected: String =
            ring::digest::digest(&ring::digest::SHA256, &media).as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(staged.hash, expected);
        // Over the limit: refused.
        assert!(extract_part(&src, &dest, "b0", 1000).is_err());
    }

    #[test]
    fn broken_or_redirecting_answers_are_refused() {
        let (dir, src) = spooled(b"--b0\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0\r\nLocation: http://127.0.0.1/x\r\n\r\n\r\n--b0--\r\n");
        let dest = dir.path().join("out");
        assert!(extract_part(&src, &dest, "b0", 1 << 20).unwrap_err().contains("Location"));
        let (dir, src) = spooled(
            b"--b0\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0\r\nContent-Type: text/plain\r\n\r\nno end",
        );
        assert!(extract_part(&src, &dir.path().join("out"), "b0", 1 << 20).is_err());
        let (dir, src) = spooled(b"nothing multipart here");
        assert!(extract_part(&src, &dir.path().join("out"), "b0", 1 << 20).is_err());
        assert_eq!(boundary("multipart/mixed; boundary=\"x y\"").as_deref(), Some("x y"));
        assert_eq!(boundary("text/plain; boundary=x"), None);
    }
}
