//! Unit tests of the media store (beside `media/`, whose files would pass 600 lines with them).

use super::*;

fn meta(uploader: &str, size: u64, created_ms: u64) -> MediaMeta {
    let (hash, uploader) = (String::new(), Some(uploader.to_owned()));
    let (content_type, filename, quarantined_by, last_access_ms) = (None, None, None, None);
    MediaMeta { hash, size, content_type, filename, uploader, created_ms, quarantined_by, last_access_ms }
}

#[tokio::test]
async fn media_rows_of_the_first_layout_load_and_pages_match_the_full_sort() {
    let dir = tempfile::tempdir().unwrap();
    let media =
        Media::open(Db::open(&dir.path().join("db"), &Default::default()).unwrap(), dir.path(), "here").unwrap();
    let (old, mut batch) = (Table::<(String, String), MediaMetaV1>::new(&catalog::SERVERMEDIA_META), Batch::new());
    let v1 =
        MediaMetaV1 { hash: "ab".into(), size: 7, content_type: None, filename: None, uploader: None, created_ms: 5 };
    old.put(&mut batch, &("here".into(), "old".into()), &v1).unwrap();
    // 300 media of @a with sizes that repeat (ties go by id), 10 of @b.
    for i in 0..310u64 {
        let who = if i < 300 { "@a:here" } else { "@b:here" };
        META.put(&mut batch, &("here".into(), format!("m{i:03}")), &meta(who, (i * 37) % 50, i)).unwrap();
    }
    media.db.commit(batch).await.unwrap();
    let loaded = media.meta("here", "old").unwrap().unwrap();
    assert_eq!((loaded.size, loaded.created_ms, loaded.quarantined_by, loaded.last_access_ms), (7, 5, None, None));
    assert!(media.set_quarantine("here", "old", Some("@admin:here")).await.unwrap());
    assert_eq!(media.meta("here", "old").unwrap().unwrap().quarantined_by.as_deref(), Some("@admin:here"));

    let by_size = |a: &(String, MediaMeta), b: &(String, MediaMeta)| b.1.size.cmp(&a.1.size);
    let (all, total) = media.uploaded_by("@a:here", 0, usize::MAX, by_size).await.unwrap();
    assert_eq!((all.len(), total), (300, 300));
    for (from, limit) in [(0, 1), (0, 10), (5, 20), (31, 33), (250, 100), (299, 5), (400, 5), (7, 0)] {
        let (page, total) = media.uploaded_by("@a:here", from, limit, by_size).await.unwrap();
        let want: Vec<_> = all.iter().skip(from).take(limit).cloned().collect();
        assert_eq!((page, total), (want, 300), "from {from} limit {limit}");
    }
    assert!(all.windows(2).all(|w| w[0].1.size > w[1].1.size || w[0].1.size == w[1].1.size && w[0].0 < w[1].0));
}

#[tokio::test]
async fn an_imported_file_keeps_its_description_and_comes_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let media =
        Media::open(Db::open(&dir.path().join("db"), &Default::default()).unwrap(), dir.path(), "here").unwrap();
    let src = dir.path().join("synapse-file");
    std::fs::write(&src, b"some bytes").unwrap();
    let described = Described {
        content_type: Some("text/plain".into()),
        filename: Some("a.txt".into()),
        uploader: Some("@a:here".into()),
        created_ms: 1_600_000_000_000,
        quarantined_by: Some("@admin:here".into()),
    };
    assert!(media.import_file("here", "abcdefgh", &src, described.clone()).await.unwrap());
    let m = media.meta("here", "abcdefgh").unwrap().unwrap();
    assert_eq!((m.size, m.created_ms, m.quarantined_by.as_deref()), (10, 1_600_000_000_000, Some("@admin:here")));
    assert_eq!((m.content_type.as_deref(), m.filename.as_deref()), (Some("text/plain"), Some("a.txt")));
    assert_eq!(std::fs::read(media.blob_path(&m.hash)).unwrap(), b"some bytes");
    assert!(src.exists(), "the source is copied, not moved");
    // A second run leaves it alone, and the reference count stays one.
    assert!(!media.import_file("here", "abcdefgh", &src, described).await.unwrap());
    assert_eq!(media.references(&m.hash).unwrap(), 1);
}
