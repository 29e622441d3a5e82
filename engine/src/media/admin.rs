//! The media repository's administration scans (Synapse admin API §"Media Admin
//! API"): a user's uploads page by page, media statistics per uploader, and
//! the deletion of old local media. Listings scan the metadata on the
//! blocking pool and hold at most a page's worth of rows (about twice
//! `from + limit`) at once.

use myelin_storage::Direction;

use super::{META, Media, MediaMeta};
use crate::EngineError;

/// Runs a scan of the metadata on the blocking pool.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| EngineError::Task(what))?
}

impl Media {
    /// One page of the local media `user` uploaded, `(media id, metadata)` sorted
    /// by `order` with ties by ascending media id, and how many there are in all.
    pub async fn uploaded_by(
        &self,
        user: &str,
        from: usize,
        limit: usize,
        order: impl Fn(&(String, MediaMeta), &(String, MediaMeta)) -> std::cmp::Ordering + Send + 'static,
    ) -> Result<(Vec<(String, MediaMeta)>, usize), EngineError> {
        let (db, own, user) = (self.db.clone(), self.own.clone(), user.to_owned());
        blocking("listing a user's media", move || {
            let keep = from.saturating_add(limit);
            let sort = |rows: &mut Vec<(String, MediaMeta)>| {
                rows.sort_by(|a, b| order(a, b).then_with(|| a.0.cmp(&b.0)));
                rows.truncate(keep);
            };
            let (mut best, mut total) = (Vec::new(), 0);
            for row in META.prefix(&*db, &(own,), Direction::Forward)? {
                let ((_, id), meta) = row?;
                if meta.uploader.as_deref() == Some(user.as_str()) {
                    total += 1;
                    best.push((id, meta));
                    // Cut down to the page's end whenever it has grown to twice that.
                    if best.len() >= keep.saturating_mul(2).max(64) {
                        sort(&mut best);
                    }
                }
            }
            sort(&mut best);
            Ok((best.into_iter().skip(from).collect(), total))
        })
        .await
    }

    /// Per uploader of local media created in `from_ms..=until_ms`: `(user id, how
    /// many, bytes)` (Synapse's users' media statistics), by user id.
    pub async fn usage_by_uploader(
        &self,
        from_ms: u64,
        until_ms: Option<u64>,
    ) -> Result<Vec<(String, u64, u64)>, EngineError> {
        let (db, own) = (self.db.clone(), self.own.clone());
        blocking("counting media per user", move || {
            let mut usage = std::collections::BTreeMap::<String, (u64, u64)>::new();
            for row in META.prefix(&*db, &(own,), Direction::Forward)? {
                let (_, meta) = row?;
                let Some(user) = meta.uploader else { continue };
                if meta.created_ms >= from_ms && until_ms.is_none_or(|u| meta.created_ms <= u) {
                    let entry = usage.entry(user).or_default();
                    entry.0 += 1;
                    entry.1 += meta.size;
                }
            }
            Ok(usage.into_iter().map(|(user, (count, bytes))| (user, count, bytes)).collect())
        })
        .await
    }

    /// Local media ids last served (never served: created) before `before_ms`, of
    /// more than `size_gt` bytes and not quarantined (Synapse's `get_local_media_ids`).
    pub async fn old_local(&self, before_ms: u64, size_gt: u64) -> Result<Vec<String>, EngineError> {
        let (db, own) = (self.db.clone(), self.own.clone());
        blocking("finding old local media", move || {
            let mut ids = Vec::new();
            for row in META.prefix(&*db, &(own,), Direction::Forward)? {
                let ((_, id), meta) = row?;
                let used = meta.last_access_ms.unwrap_or(meta.created_ms);
                if used < before_ms && meta.size > size_gt && meta.quarantined_by.is_none() {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .await
    }

    /// Deletes local media ids; returns those that existed, in order.
    pub async fn delete_local(&self, ids: &[String]) -> Result<Vec<String>, EngineError> {
        let mut deleted = Vec::new();
        for id in ids {
            if self.delete(&self.own, id).await? {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }
}

impl crate::Engine {
    /// Deletes the local media of [`Media::old_local`], unless `keep_profiles`
    /// and it is an avatar (a local user's, a room's or a member's in a room),
    /// as Synapse's `delete_old_local_media`; returns the deleted ids.
    pub async fn delete_old_local_media(
        &self,
        before_ms: u64,
        size_gt: u64,
        keep_profiles: bool,
    ) -> Result<Vec<String>, EngineError> {
        let mut ids = self.media.old_local(before_ms, size_gt).await?;
        if keep_profiles && !ids.is_empty() {
            let avatars = self.local_avatars()?;
            ids.retain(|id| !avatars.contains(id));
        }
        self.media.delete_local(&ids).await
    }

    /// The ids of our media in use as avatars.
    fn local_avatars(&self) -> Result<std::collections::HashSet<String>, EngineError> {
        let prefix = format!("mxc://{}/", self.server_name);
        let mut out = std::collections::HashSet::new();
        let mut add = |url: Option<&str>| {
            if let Some(id) = url.and_then(|u| u.strip_prefix(prefix.as_str())) {
                out.insert(id.to_owned());
            }
        };
        for (user, _) in self.users.list()? {
            add(self.users.profile(&user)?.and_then(|p| p.avatar_url).as_deref());
        }
        for room in self.rooms.all_rooms()? {
            for pdu in self.rooms.current_state(&room)? {
                let key = match pdu.kind.to_string().as_str() {
                    "m.room.avatar" => "url",
                    "m.room.member" => "avatar_url",
                    _ => continue,
                };
                add(pdu.content_value()[key].as_str());
            }
        }
        Ok(out)
    }
}
