//! The media repository's storage (Client-Server API §"Content repository").
//!
//! Bytes live on the file system under `<data_dir>/media/`, named by their
//! SHA-256 (`ab/cd/<hash>`), so identical uploads are stored once; a
//! reference count per hash says how many media ids use the file, and the
//! file is removed when the last one goes. Metadata (content type, file
//! name, size, uploader, time) is in RocksDB under `(server, media id)`.
//!
//! Guarantees: a media id becomes readable only after its file is complete,
//! synced and renamed into place and its metadata committed; an upload that
//! fails or is cut off leaves at most a temporary file, removed on the spot
//! (or by the next start). Thumbnails are derived data, cached next to the
//! originals and regenerated if missing.
//!
//! Other servers' media is a cache: its total size (per media id, as
//! fetched) is kept in memory, counted once from the metadata at the first
//! remote fetch after a start; when a fetch takes it past
//! `media.remote_cache_max_bytes`, the oldest fetched remote media are
//! deleted until it is at most nine tenths of the bound. Thumbnails made of
//! remote media count towards the same bound (and go with their media).
//! Local media is never evicted.
//!
//! Administration (Synapse admin API §"Media Admin API"): a media id may be
//! quarantined (`quarantined_by`): the api then refuses to serve it, its row
//! survives a re-upload to a reserved id, and neither the remote cache bound
//! nor a purge removes it (it would come back unquarantined on the next fetch);
//! only an explicit delete does. A quarantine covers its id, not other ids of
//! the same bytes. Each media records when it was last served, to
//! within [`ACCESS_GRANULARITY_MS`], so that deletions "last used before" go by
//! use, not age. Listings scan the metadata on the blocking pool and hold at
//! most a page's worth of rows (about twice `from + limit`) at once.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use myelin_storage::{Batch, Db, Direction, StorageError, Stored, Table, Value, catalog};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::EngineError;

mod admin;

/// What is known about one media id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MediaMeta {
    /// Hex SHA-256 of the bytes (empty while an async upload is pending).
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// `Content-Type` given at upload.
    pub content_type: Option<String>,
    /// File name given at upload.
    pub filename: Option<String>,
    /// Who uploaded it (local media).
    pub uploader: Option<String>,
    /// Creation time, ms.
    pub created_ms: u64,
    /// The admin who quarantined it (Synapse's `quarantined_by`); such media is not served.
    #[serde(default)]
    pub quarantined_by: Option<String>,
    /// When it was last served, ms, to within [`ACCESS_GRANULARITY_MS`]; `None` if never.
    #[serde(default)]
    pub last_access_ms: Option<u64>,
}

/// How stale a media's `last_access_ms` may get before a download rewrites it.
pub const ACCESS_GRANULARITY_MS: u64 = 10 * 60 * 1000;

/// The first stored layout of [`MediaMeta`], without quarantine and access time.
/// The storage codec is not self-describing: `#[serde(default)]` alone does not
/// let such rows load, so a row that is not in the current layout is read as this.
#[derive(Serialize, Deserialize)]
struct MediaMetaV1 {
    hash: String,
    size: u64,
    content_type: Option<String>,
    filename: Option<String>,
    uploader: Option<String>,
    created_ms: u64,
}
impl Stored for MediaMetaV1 {}

/// [`MediaMeta`] in the current layout, through the storage codec.
#[derive(Serialize, Deserialize)]
struct MediaMetaV2(MediaMeta);
impl Stored for MediaMetaV2 {}

impl Value for MediaMeta {
    fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        MediaMetaV2(self.clone()).to_bytes()
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        // A first-layout row ends where the current one goes on; a current row
        // has bytes left over as a first-layout one: never both readable.
        MediaMetaV2::from_bytes(bytes).map(|m| m.0).or_else(|current| {
            let v1 = MediaMetaV1::from_bytes(bytes).map_err(|_| current)?;
            Ok(MediaMeta {
                hash: v1.hash,
                size: v1.size,
                content_type: v1.content_type,
                filename: v1.filename,
                uploader: v1.uploader,
                created_ms: v1.created_ms,
                quarantined_by: None,
                last_access_ms: None,
            })
        })
    }
}

const META: Table<(String, String), MediaMeta> = Table::new(&catalog::SERVERMEDIA_META);
const REFS: Table<String, u64> = Table::new(&catalog::HASH_REFCOUNT);

use crate::util::now_ms;

/// The media store of one server.
pub struct Media {
    db: Arc<Db>,
    dir: PathBuf,
    /// Our server name: media of every other server is the remote cache.
    own: String,
    /// Serialises reference-count changes; holds the remote cache's size once counted.
    lock: tokio::sync::Mutex<Option<u64>>,
}

/// What is said about a media file besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Described {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The upload's file name.
    pub filename: Option<String>,
    /// The local uploader (none for remote media).
    pub uploader: Option<String>,
    /// When it was uploaded or fetched (ms).
    pub created_ms: u64,
    /// Who quarantined it, if anyone.
    pub quarantined_by: Option<String>,
}

/// A finished temporary upload, ready to be committed.
#[derive(Debug)]
pub struct Staged {
    /// The temporary file.
    pub path: PathBuf,
    /// Hex SHA-256.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
}

impl Media {
    /// The store under `<data_dir>/media`; removes temporary files left by a crash.
    pub fn open(db: Arc<Db>, data_dir: &Path, own: &str) -> Result<Self, EngineError> {
        let dir = data_dir.join("media");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(format!("creating {}", tmp.display()), e))?;
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { db, dir, own: own.to_owned(), lock: tokio::sync::Mutex::new(None) })
    }

    /// A new random media id.
    pub fn new_id() -> Result<String, EngineError> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut raw = [0u8; 24];
        ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| EngineError::Keys("no system randomness".into()))?;
        Ok(raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
    }

    /// Where temporary uploads are written.
    pub fn temp_path(&self) -> Result<PathBuf, EngineError> {
        Ok(self.dir.join("tmp").join(Self::new_id()?))
    }

    /// The file holding the bytes with `hash`.
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        let (a, b) = (hash.get(0..2).unwrap_or("00"), hash.get(2..4).unwrap_or("00"));
        self.dir.join(a).join(b).join(hash)
    }

    /// Where a thumbnail of `hash` is cached.
    pub fn thumbnail_path(&self, hash: &str, width: u32, height: u32, method: &str) -> PathBuf {
        self.dir.join("thumbnails").join(format!("{hash}-{width}x{height}-{method}.png"))
    }

    /// Metadata of a media id.
    pub fn meta(&self, server: &str, media_id: &str) -> Result<Option<MediaMeta>, EngineError> {
        Ok(META.get(&*self.db, &(server.to_owned(), media_id.to_owned()))?)
    }

    /// Reserves a media id for an upload that comes later (`/media/v1/create`).
    pub async fn reserve(&self, server: &str, uploader: &str) -> Result<String, EngineError> {
        let id = Self::new_id()?;
        let meta = MediaMeta {
            hash: String::new(),
            size: 0,
            content_type: None,
            filename: None,
            uploader: Some(uploader.to_owned()),
            created_ms: now_ms(),
            quarantined_by: None,
            last_access_ms: None,
        };
        let mut batch = Batch::new();
        META.put(&mut batch, &(server.to_owned(), id.clone()), &meta)?;
        self.db.commit(batch).await?;
        Ok(id)
    }

    /// Moves a staged upload into place under `(server, media_id)`.
    pub async fn commit(
        &self,
        server: &str,
        media_id: &str,
        staged: Staged,
        content_type: Option<String>,
        filename: Option<String>,
        uploader: Option<String>,
    ) -> Result<MediaMeta, EngineError> {
        let described = Described { content_type, filename, uploader, created_ms: now_ms(), quarantined_by: None };
        self.commit_described(server, media_id, staged, described).await
    }

    /// Brings another server's stored media file in under `(server, media_id)`
    /// (`myelin import synapse`): copied, hashed and synced like an upload,
    /// keeping its time, uploader and quarantine. `Ok(false)` if the id is here already.
    pub async fn import_file(
        &self,
        server: &str,
        media_id: &str,
        src: &Path,
        described: Described,
    ) -> Result<bool, EngineError> {
        if self.meta(server, media_id)?.is_some_and(|m| !m.hash.is_empty()) {
            return Ok(false);
        }
        let (src, dest) = (src.to_owned(), self.temp_path()?);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| EngineError::io("creating the media folder", e))?;
        }
        let staged = tokio::task::spawn_blocking(move || {
            let staged = crate::remote_media::hash_into(&src, &dest, 0, None)?;
            std::fs::File::open(&dest).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
            Ok::<_, String>(staged)
        })
        .await
        .map_err(|_| EngineError::Task("media import"))?
        .map_err(|message| EngineError::Io { context: "copying media".into(), message })?;
        self.commit_described(server, media_id, staged, described).await?;
        Ok(true)
    }

    async fn commit_described(
        &self,
        server: &str,
        media_id: &str,
        staged: Staged,
        described: Described,
    ) -> Result<MediaMeta, EngineError> {
        let Described { content_type, filename, uploader, created_ms, quarantined_by: imported_quarantine } = described;
        let mut guard = self.lock.lock().await;
        let target = self.blob_path(&staged.hash);
        if target.exists() {
            let _ = tokio::fs::remove_file(&staged.path).await;
        } else {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| EngineError::io("creating the media folder", e))?;
            }
            tokio::fs::rename(&staged.path, &target).await.map_err(|e| EngineError::io("storing an upload", e))?;
        }
        let refs = REFS.get(&*self.db, &staged.hash)?.unwrap_or(0);
        let key = (server.to_owned(), media_id.to_owned());
        // A reserved id quarantined before its upload stays quarantined.
        let quarantined_by = META.get(&*self.db, &key)?.and_then(|m| m.quarantined_by).or(imported_quarantine);
        let meta = MediaMeta {
            hash: staged.hash.clone(),
            size: staged.size,
            content_type,
            filename,
            uploader,
            created_ms,
            quarantined_by,
            last_access_ms: None,
        };
        let mut batch = Batch::new();
        REFS.put(&mut batch, &staged.hash, &(refs + 1))?;
        META.put(&mut batch, &key, &meta)?;
        self.db.commit(batch).await?;
        if server != self.own
            && let Some(total) = guard.as_mut()
        {
            *total += meta.size;
        }
        Ok(meta)
    }

    /// Bytes of other servers' media held, counting them from the metadata if not yet counted.
    fn remote_bytes(&self, counted: &mut Option<u64>) -> Result<u64, EngineError> {
        if let Some(total) = *counted {
            return Ok(total);
        }
        // Thumbnail bytes per source hash, from one pass over their folder.
        let mut thumbnails: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("thumbnails")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let (Some((hash, _)), Ok(m)) = (name.split_once('-'), entry.metadata()) {
                    *thumbnails.entry(hash.to_owned()).or_default() += m.len();
                }
            }
        }
        let mut total = 0;
        for row in META.iter(&*self.db, Direction::Forward)? {
            let ((server, _), meta) = row?;
            if server != self.own {
                total += meta.size + thumbnails.remove(&meta.hash).unwrap_or(0);
            }
        }
        *counted = Some(total);
        Ok(total)
    }

    /// Counts a new thumbnail of `server`'s media in the remote cache (local
    /// media's are not counted), then brings the cache within `max_bytes`
    /// without evicting `keep`.
    pub async fn thumbnail_added(&self, max_bytes: u64, bytes: u64, keep: (&str, &str)) -> Result<usize, EngineError> {
        if keep.0 == self.own {
            return Ok(0);
        }
        if let Some(total) = self.lock.lock().await.as_mut() {
            *total += bytes;
        }
        self.evict_remote(max_bytes, keep).await
    }

    /// Brings the remote cache within `max_bytes` (0: no bound) by deleting
    /// the oldest fetched remote media, never `keep`; returns how many went.
    pub async fn evict_remote(&self, max_bytes: u64, keep: (&str, &str)) -> Result<usize, EngineError> {
        if max_bytes == 0 {
            return Ok(0);
        }
        let mut guard = self.lock.lock().await;
        let mut total = self.remote_bytes(&mut guard)?;
        if total <= max_bytes {
            return Ok(0);
        }
        let target = max_bytes / 10 * 9;
        let mut remote = Vec::new();
        for row in META.iter(&*self.db, Direction::Forward)? {
            let ((server, id), meta) = row?;
            if server != self.own && (server.as_str(), id.as_str()) != keep && meta.quarantined_by.is_none() {
                remote.push((meta.created_ms, server, id));
            }
        }
        remote.sort_unstable();
        let mut evicted = 0;
        for (_, server, id) in remote {
            if total <= target {
                break;
            }
            if let Some(meta) = self.delete_locked(&mut guard, &server, &id).await? {
                total = total.saturating_sub(meta.size);
                evicted += 1;
            }
        }
        metrics::counter!("myelin_remote_media_evicted_total").increment(evicted as u64);
        tracing::info!(evicted, bytes = total, max_bytes, "remote media cache trimmed");
        Ok(evicted)
    }

    /// Deletes a media id; the file goes when no other id uses it.
    pub async fn delete(&self, server: &str, media_id: &str) -> Result<bool, EngineError> {
        let mut guard = self.lock.lock().await;
        Ok(self.delete_locked(&mut guard, server, media_id).await?.is_some())
    }

    /// [`Media::delete`] under the held lock; returns the deleted metadata.
    async fn delete_locked(
        &self,
        counted: &mut Option<u64>,
        server: &str,
        media_id: &str,
    ) -> Result<Option<MediaMeta>, EngineError> {
        let key = (server.to_owned(), media_id.to_owned());
        let Some(meta) = META.get(&*self.db, &key)? else { return Ok(None) };
        let mut batch = Batch::new();
        META.delete(&mut batch, &key);
        let mut remove_file = false;
        if !meta.hash.is_empty() {
            let refs = REFS.get(&*self.db, &meta.hash)?.unwrap_or(1);
            if refs <= 1 {
                REFS.delete(&mut batch, &meta.hash);
                remove_file = true;
            } else {
                REFS.put(&mut batch, &meta.hash, &(refs - 1))?;
            }
        }
        self.db.commit(batch).await?;
        let mut thumbnail_bytes = 0;
        if remove_file {
            let _ = tokio::fs::remove_file(self.blob_path(&meta.hash)).await;
            if let Ok(mut entries) = tokio::fs::read_dir(self.dir.join("thumbnails")).await {
                while let Ok(Some(entry)) = entries.next_entry().await {
                    if entry.file_name().to_string_lossy().starts_with(&meta.hash) {
                        let len = entry.metadata().await.map(|m| m.len()).unwrap_or(0);
                        if tokio::fs::remove_file(entry.path()).await.is_ok() {
                            thumbnail_bytes += len;
                        }
                    }
                }
            }
        }
        if server != self.own
            && let Some(total) = counted.as_mut()
        {
            *total = total.saturating_sub(meta.size + thumbnail_bytes);
        }
        Ok(Some(meta))
    }

    /// How many media ids use the file with `hash`.
    pub fn references(&self, hash: &str) -> Result<u64, EngineError> {
        Ok(REFS.get(&*self.db, &hash.to_owned())?.unwrap_or(0))
    }

    /// Deletes cached media of other servers last used (fetched or served) before
    /// `older_than_ms`, except quarantined ones (Synapse's `delete_old_remote_media`);
    /// returns how many.
    pub async fn purge_remote(&self, own_server: &str, older_than_ms: u64) -> Result<usize, EngineError> {
        let mut victims = Vec::new();
        for row in META.iter(&*self.db, Direction::Forward)? {
            let ((server, id), meta) = row?;
            let used = meta.last_access_ms.unwrap_or(meta.created_ms);
            if server != own_server && used < older_than_ms && meta.quarantined_by.is_none() {
                victims.push((server, id));
            }
        }
        for (server, id) in &victims {
            self.delete(server, id).await?;
        }
        Ok(victims.len())
    }

    /// Changes the metadata of a media id under the lock, if `change` says so;
    /// false if there is no such id.
    async fn update(
        &self,
        key: (String, String),
        change: impl FnOnce(&mut MediaMeta) -> bool,
    ) -> Result<bool, EngineError> {
        let _guard = self.lock.lock().await;
        let Some(mut meta) = META.get(&*self.db, &key)? else { return Ok(false) };
        if change(&mut meta) {
            let mut batch = Batch::new();
            META.put(&mut batch, &key, &meta)?;
            self.db.commit(batch).await?;
        }
        Ok(true)
    }

    /// Quarantines a media id in the name of `by`, or lifts it (`None`); false if there is no such id.
    pub async fn set_quarantine(&self, server: &str, media_id: &str, by: Option<&str>) -> Result<bool, EngineError> {
        self.update((server.to_owned(), media_id.to_owned()), |meta| {
            meta.quarantined_by = by.map(str::to_owned);
            true
        })
        .await
    }

    /// Records that `meta`, the media `(server, media_id)`, is being served; writes
    /// only when its access time is older than [`ACCESS_GRANULARITY_MS`].
    pub async fn touch(&self, server: &str, media_id: &str, meta: &MediaMeta) -> Result<(), EngineError> {
        let now = now_ms();
        let fresh = |m: &MediaMeta| m.last_access_ms.is_some_and(|t| now.saturating_sub(t) < ACCESS_GRANULARITY_MS);
        if fresh(meta) {
            return Ok(());
        }
        self.update((server.to_owned(), media_id.to_owned()), |current| {
            let stale = !fresh(current);
            if stale {
                current.last_access_ms = Some(now);
            }
            stale
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "../media_tests.rs"]
mod tests;
