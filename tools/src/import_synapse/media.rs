//! `myelin import synapse`, media: the files of Synapse's media store, local
//! uploads and the cached media of other servers, under the same media ids
//! (events name them as `mxc://server/id`), keeping upload time, uploader,
//! file name, content type and quarantine (issue #23 §2).
//!
//! Read from `local_media_repository` (files at
//! `local_content/ab/cd/rest-of-id`) and `remote_media_cache` (files at
//! `remote_content/<origin>/ab/cd/rest-of-filesystem-id`). URL preview
//! entries (`url_cache`) are left out: previews are fetched again on use.
//! Thumbnails are not copied: Myelin makes them from the original on first
//! use and caches them. Each file is copied, hashed and synced like an
//! upload; a row whose file is missing (an upload never finished, a cache
//! entry purged) is counted and left out.

use std::path::{Path, PathBuf};

use myelin_engine::{Engine, media::Described};
use rusqlite::Connection;

use crate::{Failure, import_synapse::sql};

/// What the media import did.
#[derive(Debug, Default)]
pub(crate) struct MediaReport {
    /// Local uploads copied.
    pub local: usize,
    /// Other servers' cached media copied.
    pub remote: usize,
    /// Already here (an earlier run).
    pub present: usize,
    /// Rows whose file is not in the store, or whose name is not a media id.
    pub missing: usize,
}

/// A media or file-system id safe to put in a path (Synapse makes them of these characters).
fn safe_id(id: &str) -> bool {
    id.len() >= 5 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Synapse's sharded file path for `id` under `base`.
fn sharded(base: PathBuf, id: &str) -> PathBuf {
    base.join(&id[0..2]).join(&id[2..4]).join(&id[4..])
}

/// `(server, media id, file, description)` of every media file Synapse stored.
type MediaRow = (String, String, PathBuf, Described);

fn ms(v: Option<i64>) -> u64 {
    u64::try_from(v.unwrap_or(0)).unwrap_or(0)
}

fn rows(db: &Connection, store: &Path, server: &str, report: &mut MediaReport) -> Result<Vec<MediaRow>, Failure> {
    let mut out = Vec::new();
    let mut stmt = db
        .prepare(
            "SELECT media_id, media_type, upload_name, user_id, created_ts, quarantined_by \
             FROM local_media_repository WHERE url_cache IS NULL ORDER BY created_ts",
        )
        .map_err(sql)?;
    let local = stmt
        .query_map([], |r| {
            let id: String = r.get(0)?;
            let described = Described {
                content_type: r.get(1)?,
                filename: r.get(2)?,
                uploader: r.get(3)?,
                created_ms: ms(r.get(4)?),
                quarantined_by: r.get(5)?,
            };
            Ok((id, described))
        })
        .map_err(sql)?;
    for row in local {
        let (id, described) = row.map_err(sql)?;
        if !safe_id(&id) {
            report.missing += 1;
            continue;
        }
        let path = sharded(store.join("local_content"), &id);
        out.push((server.to_owned(), id, path, described));
    }
    let mut stmt = db
        .prepare(
            "SELECT media_origin, media_id, media_type, upload_name, created_ts, filesystem_id, quarantined_by \
             FROM remote_media_cache ORDER BY created_ts",
        )
        .map_err(sql)?;
    let remote = stmt
        .query_map([], |r| {
            let (origin, id, fs): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(5)?);
            let described = Described {
                content_type: r.get(2)?,
                filename: r.get(3)?,
                uploader: None,
                created_ms: ms(r.get(4)?),
                quarantined_by: r.get(6)?,
            };
            Ok((origin, id, fs, described))
        })
        .map_err(sql)?;
    for row in remote {
        let (origin, id, fs, described) = row.map_err(sql)?;
        if ruma::ServerName::parse(origin.as_str()).is_err() || !safe_id(&id) || !safe_id(&fs) {
            report.missing += 1;
            continue;
        }
        let path = sharded(store.join("remote_content").join(&origin), &fs);
        out.push((origin, id, path, described));
    }
    Ok(out)
}

/// Copies Synapse's media files from `store` into `engine`'s media repository.
pub(crate) async fn import(
    engine: &Engine,
    db: &Connection,
    store: &Path,
    server: &str,
) -> Result<MediaReport, Failure> {
    let mut report = MediaReport::default();
    let rows = rows(db, store, server, &mut report)?;
    let total = rows.len();
    for (i, (origin, id, path, described)) in rows.into_iter().enumerate() {
        if !path.is_file() {
            tracing::info!(origin, media_id = id, path = %path.display(), "media row without its file; left out");
            report.missing += 1;
            continue;
        }
        let copied = engine
            .media
            .import_file(&origin, &id, &path, described)
            .await
            .map_err(|e| Failure::runtime(format!("media {origin}/{id}: {e}")))?;
        match (copied, origin == server) {
            (false, _) => report.present += 1,
            (true, true) => report.local += 1,
            (true, false) => report.remote += 1,
        }
        if (i + 1) % 1000 == 0 || i + 1 == total {
            eprintln!("import: media: {}/{total}", i + 1);
        }
    }
    Ok(report)
}
