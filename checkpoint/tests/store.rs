//! The store API on memory and local disk: writing, committing, fencing, reading, URLs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use cohort_checkpoint::{
    CheckpointStore, DamageKind, Error, Manifest, ManifestKind, ObjectEntry, StoreOptions,
};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};

fn oid(s: &str) -> ObjectId {
    ObjectId::new(s).unwrap()
}

fn cid(n: u64) -> CheckpointId {
    CheckpointId::new(n)
}

/// Writes `n` objects whose state is `value + i` and commits checkpoint `id` at `epoch`.
async fn checkpoint(
    store: &CheckpointStore,
    id: u64,
    epoch: u64,
    value: i64,
    n: usize,
) -> Manifest {
    let round = format!("e{epoch}-r{id}");
    let mut w = store.segment_writer(cid(id), &round, "node-1");
    let mut m = Manifest::new(cid(id), epoch, 1_000 + id, &round);
    m.parent = (id > 1).then(|| cid(id - 1));
    for i in 0..n {
        let object = oid(&format!("obj-{i}"));
        let location = w
            .add(&object, &Snapshot::new("Counter", 1, value + i as i64))
            .await
            .unwrap();
        m.objects.insert(
            object,
            ObjectEntry {
                type_name: "Counter".into(),
                version: 1,
                generation: None,
                location,
            },
        );
    }
    w.finish().await.unwrap();
    store.commit(&m).await.unwrap();
    m
}

#[tokio::test]
async fn write_commit_read_back() {
    let store = CheckpointStore::memory();
    let m = checkpoint(&store, 1, 1, 100, 10).await;
    assert_eq!(store.committed_ids().await.unwrap(), vec![cid(1)]);
    assert_eq!(store.read_manifest(cid(1)).await.unwrap(), m);
    let states = store.read_states(&m).await.unwrap();
    assert_eq!(states.len(), 10);
    for (i, (object, state)) in states.iter().enumerate() {
        assert_eq!(object, &oid(&format!("obj-{i}")));
        assert_eq!(state.tag().type_name, "Counter");
        assert_eq!(state.decode::<i64>().unwrap(), 100 + i as i64);
    }
    let one = store
        .read_state(&m.objects[&oid("obj-3")].location)
        .await
        .unwrap();
    assert_eq!(one.decode::<i64>().unwrap(), 103);
    let line = store.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest.id, cid(1));
    assert!(line.skipped.is_empty());
    assert!(store.verify(cid(1)).await.unwrap().is_ok());
}

#[tokio::test]
async fn small_segments_split_and_large_states_get_their_own() {
    let options = StoreOptions {
        segment_size: 4096,
        upload_concurrency: 2,
        ..StoreOptions::default()
    };
    let store = CheckpointStore::from_object_store(
        std::sync::Arc::new(object_store::memory::InMemory::new()),
        Default::default(),
        options,
    );
    let mut w = store.segment_writer(cid(1), "r1", "w");
    let mut m = Manifest::new(cid(1), 1, 0, "r1");
    for i in 0..40u32 {
        // Every 7th state is larger than a whole segment.
        let len = if i.is_multiple_of(7) { 10_000 } else { 300 };
        let object = oid(&format!("o{i}"));
        let location = w
            .add(&object, &Snapshot::new("Blob", 1, vec![i as u8; len]))
            .await
            .unwrap();
        m.objects.insert(
            object,
            ObjectEntry {
                type_name: "Blob".into(),
                version: 1,
                generation: None,
                location,
            },
        );
    }
    let summary = w.finish().await.unwrap();
    assert!(summary.segments.len() > 5, "{summary:?}");
    assert_eq!(summary.entries, 40);
    store.commit(&m).await.unwrap();
    for (object, state) in store.read_states(&m).await.unwrap() {
        let i: u32 = object.as_str()[1..].parse().unwrap();
        let v: Vec<u8> = state.decode().unwrap();
        assert_eq!(v.len(), if i.is_multiple_of(7) { 10_000 } else { 300 });
        assert!(v.iter().all(|b| *b == i as u8));
    }
    assert!(store.verify(cid(1)).await.unwrap().is_ok());
}

#[tokio::test]
async fn commit_outcomes_follow_the_fencing_rules() {
    let store = CheckpointStore::memory();
    let m1 = checkpoint(&store, 1, 1, 0, 2).await;
    // A retried commit of the same manifest finds its own create.
    store.commit(&m1).await.unwrap();

    // Ids are contiguous.
    let mut gap = m1.clone();
    gap.id = cid(3);
    gap.round = "e1-r3".into();
    assert!(matches!(
        store.commit(&gap).await,
        Err(Error::Conflict { .. })
    ));

    // Same id, lower or equal epoch, other round: conflict.
    let mut rival = m1.clone();
    rival.round = "e1-other".into();
    assert!(matches!(
        store.commit(&rival).await,
        Err(Error::Conflict { .. })
    ));

    // A higher epoch fences a lower one.
    let mut fence = m1.clone();
    fence.id = cid(2);
    fence.epoch = 2;
    fence.kind = ManifestKind::Fence;
    fence.round = "e2-fence".into();
    store.commit(&fence).await.unwrap();
    let mut stale = m1.clone();
    stale.id = cid(2);
    stale.round = "e1-r2".into();
    let err = store.commit(&stale).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(err.to_string().contains("epoch 2"), "{err}");
}

#[tokio::test]
async fn damaged_newest_falls_back_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    checkpoint(&store, 1, 1, 10, 3).await;
    let m2 = checkpoint(&store, 2, 1, 20, 3).await;
    // Flip one bit in the middle of obj-1's entry of checkpoint 2.
    let loc = &m2.objects[&oid("obj-1")].location;
    let path = dir.path().join(&*loc.segment);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(loc.offset + loc.len / 2) as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();

    let line = store.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest.id, cid(1));
    assert_eq!(line.skipped.len(), 1);
    let d = &line.skipped[0].damaged;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].checkpoint, cid(2));
    assert_eq!(d[0].object, Some(oid("obj-1")));
    assert_eq!(*d[0].blob, *loc.segment);
    assert!(matches!(d[0].kind, DamageKind::CrcMismatch { .. }));
    let err = store.read_states(&m2).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("obj-1") && msg.contains("crc mismatch"),
        "{msg}"
    );
}

#[tokio::test]
async fn urls() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let url = format!("file://{}", nested.display());
    let store = CheckpointStore::open(&url, StoreOptions::default())
        .await
        .unwrap();
    assert!(nested.is_dir());
    assert_eq!(store.url(), url);
    checkpoint(&store, 1, 1, 0, 1).await;
    let ro = CheckpointStore::open_read_only(nested.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(ro.committed_ids().await.unwrap(), vec![cid(1)]);
    let err = ro.pin(cid(1)).await.unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let mut w = ro.segment_writer(cid(2), "r", "w");
    assert!(matches!(
        w.add(&oid("x"), &Snapshot::new("T", 1, 1)).await,
        Err(Error::ReadOnly { .. })
    ));

    CheckpointStore::open("memory://", StoreOptions::default())
        .await
        .unwrap();
    for bad in ["gs://bucket/x", "ftp://host/x", "http://[::1"] {
        let err = CheckpointStore::open(bad, StoreOptions::default())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {msg}");
        assert!(
            msg.contains(bad) && msg.contains("s3://bucket/prefix"),
            "{msg}"
        );
    }
    let missing = dir.path().join("missing");
    assert!(matches!(
        CheckpointStore::open_read_only(missing.to_str().unwrap()).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn epochs_are_claimed_in_order() {
    let store = CheckpointStore::memory();
    assert_eq!(store.newest_epoch().await.unwrap(), None);
    assert_eq!(store.claim_epoch("a", 1).await.unwrap().epoch, 1);
    assert_eq!(store.claim_epoch("b", 2).await.unwrap().epoch, 2);
    let newest = store.newest_epoch().await.unwrap().unwrap();
    assert_eq!((newest.epoch, newest.holder.as_str()), (2, "b"));
}

#[tokio::test]
async fn rollback_commits_a_pointer_to_the_old_states() {
    let store = CheckpointStore::memory();
    let m1 = checkpoint(&store, 1, 1, 10, 2).await;
    checkpoint(&store, 2, 1, 20, 2).await;
    let id = store.rollback(cid(1), 1, 5_000).await.unwrap();
    assert_eq!(id, cid(3));
    let m3 = store.read_manifest(id).await.unwrap();
    assert_eq!(m3.kind, ManifestKind::Rollback { to: cid(1) });
    assert_eq!(m3.objects, m1.objects);
    assert_eq!(m3.parent, Some(cid(2)));
    assert!(store.pins().await.unwrap().is_empty());
    let line = store.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest.id, cid(3));
    let states = store.read_states(&line.manifest).await.unwrap();
    assert_eq!(states[0].1.decode::<i64>().unwrap(), 10);
}

#[tokio::test]
async fn discard_round_deletes_only_that_attempt() {
    let store = CheckpointStore::memory();
    checkpoint(&store, 1, 1, 0, 2).await;
    let mut w = store.segment_writer(cid(2), "e1-r2a", "node-1");
    w.add(&oid("x"), &Snapshot::new("T", 1, 1)).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(store.discard_round(cid(2), "e1-r2a").await.unwrap(), 1);
    assert_eq!(store.discard_round(cid(2), "e1-r2a").await.unwrap(), 0);
    assert!(store.discard_round(cid(1), "e1-r1").await.is_err());
    assert!(store.verify(cid(1)).await.unwrap().is_ok());
}

/// On local disk GC and `discard_round` never follow a symbolic link below `segments/`: a
/// directory link in an expired checkpoint's directory (whose target holds a file named like a
/// segment) and a round directory that is a link are left alone, and their targets outside
/// the store are untouched. Before the fix, object_store's listing followed them and GC
/// emptied the target.
#[cfg(unix)]
#[tokio::test]
async fn gc_and_discard_never_follow_a_symlink() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // What a listing through the link would call a segment of checkpoint 1.
    let precious = ["w-000000.seg", "e1-r9/w-000000.seg", "notes.txt"];
    for name in precious {
        let file = outside.join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"precious").unwrap();
    }
    let store = CheckpointStore::open(root.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    checkpoint(&store, 1, 1, 1, 2).await;
    checkpoint(&store, 2, 1, 2, 2).await;
    checkpoint(&store, 3, 1, 3, 2).await;
    let expired = root.join("segments/00000000000000000001");
    symlink(&outside, expired.join("e1-link")).unwrap();
    symlink(
        outside.join("w-000000.seg"),
        expired.join("e1-r1/x-000000.seg"),
    )
    .unwrap();
    // The staging file a crashed segment write leaves behind is GC's own garbage.
    let staging = expired.join("e1-r1/node-1-000007.seg#1");
    std::fs::write(&staging, b"half written").unwrap();
    // A round directory of an uncommitted attempt that is a link.
    std::fs::create_dir_all(root.join("segments/00000000000000000004")).unwrap();
    symlink(&outside, root.join("segments/00000000000000000004/e1-r4")).unwrap();

    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.expired, vec![cid(1), cid(2)]);
    for d in &report.deleted {
        assert!(!d.key.contains("link") && !d.key.contains("/x-"), "{d:?}");
    }
    assert_eq!(store.discard_round(cid(4), "e1-r4").await.unwrap(), 0);
    for name in precious {
        assert_eq!(
            std::fs::read(outside.join(name)).unwrap(),
            b"precious",
            "{name} outside the store was deleted"
        );
    }
    assert!(!staging.exists(), "the leftover staging file survived");
    assert!(
        report
            .deleted
            .iter()
            .any(|d| d.key.ends_with("node-1-000007.seg#1"))
    );
    // The links themselves are not GC's either.
    assert!(expired.join("e1-link").symlink_metadata().is_ok());
    assert!(store.verify(cid(3)).await.unwrap().is_ok());
}

/// An S3 endpoint that is not an http(s) URL with a host is refused when the store is opened,
/// naming the setting. object_store accepted it and panicked on the first request.
#[tokio::test]
async fn a_bad_s3_endpoint_is_refused_at_open() {
    for endpoint in [
        "not a url",
        "http://",
        "ftp://example.com",
        "127.0.0.1:9000",
    ] {
        let mut options = StoreOptions::default();
        options
            .config
            .insert("aws_endpoint".into(), endpoint.into());
        let err = CheckpointStore::open("s3://bucket/prefix", options)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidInput(_)), "{endpoint}: {msg}");
        assert!(msg.contains("aws_endpoint"), "{msg}");
    }
}

/// A reader that read a manifest just before GC collected its checkpoint finds the blobs
/// gone: that is the collection (the manifest is a tombstone by then), not damage.
#[tokio::test]
async fn a_checkpoint_collected_while_it_is_read_is_expired_not_damaged() {
    let store = CheckpointStore::memory();
    let first = checkpoint(&store, 1, 1, 100, 3).await;
    checkpoint(&store, 2, 1, 200, 3).await;
    checkpoint(&store, 3, 1, 300, 3).await;
    store.gc(1, false).await.unwrap();
    let err = store.read_states(&first).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("expired by GC"), "{err}");
}

/// Commits `m` as checkpoint `id` with the entries of `changed` rewritten (generation `id`),
/// naming them as the changes (`named`) to [`CheckpointStore::commit_changed`].
async fn commit_named(
    store: &CheckpointStore,
    mut m: Manifest,
    id: u64,
    changed: &[usize],
    named: &[usize],
) -> (Manifest, cohort_checkpoint::Result<()>) {
    m.id = cid(id);
    m.round = format!("e1-r{id}");
    m.parent = Some(cid(id - 1));
    for i in changed {
        m.objects
            .get_mut(&oid(&format!("obj-{i}")))
            .unwrap()
            .generation = Some(id);
    }
    let named: Vec<_> = named.iter().map(|i| oid(&format!("obj-{i}"))).collect();
    let m = std::sync::Arc::new(m);
    let result = store.commit_changed(&m, &named).await;
    (std::sync::Arc::unwrap_or_clone(m), result)
}

#[tokio::test]
async fn a_commit_naming_its_changes_stores_the_same_line() {
    let store = CheckpointStore::memory();
    let first = checkpoint(&store, 1, 1, 0, 40).await;
    // Delta after delta against the first: each holds the earlier changes too.
    let (second, r) = commit_named(&store, first, 2, &[3, 17], &[3, 17]).await;
    r.unwrap();
    let (third, r) = commit_named(&store, second.clone(), 3, &[5], &[5]).await;
    r.unwrap();
    assert_eq!(store.read_manifest(cid(2)).await.unwrap(), second);
    assert_eq!(store.read_manifest(cid(3)).await.unwrap(), third);
    assert_eq!(store.manifest_base(cid(3)).await.unwrap(), Some(cid(1)));
    // Naming more than changed is harmless.
    let (fourth, r) = commit_named(&store, third, 4, &[], &[0, 1]).await;
    r.unwrap();
    assert_eq!(store.read_manifest(cid(4)).await.unwrap(), fourth);
    // Reading the newest line keeps what the store knows of its delta.
    let (fifth, r) = commit_named(&store, fourth, 5, &[9], &[9]).await;
    r.unwrap();
    assert_eq!(store.read_manifest(cid(5)).await.unwrap(), fifth);
}

#[cfg(debug_assertions)]
#[tokio::test]
async fn a_commit_that_names_too_few_changes_is_refused() {
    let store = CheckpointStore::memory();
    let first = checkpoint(&store, 1, 1, 0, 40).await;
    let (_, r) = commit_named(&store, first, 2, &[3, 17], &[3]).await;
    let err = r.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("name every object")),
        "{err}"
    );
    assert_eq!(store.committed_ids().await.unwrap(), vec![cid(1)]);
}
