//! Epoch claims, leases and fences: the store side of a highly available coordinator.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use cohort_checkpoint::object_store::path::Path;
use cohort_checkpoint::object_store::{ObjectStoreExt, PutPayload};
use cohort_checkpoint::{
    CheckpointStore, EpochLease, EpochRecord, Error, Fence, FenceLine, FenceRequest, Manifest,
    ManifestKind, ObjectEntry,
};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};

fn cid(n: u64) -> CheckpointId {
    CheckpointId::new(n)
}

fn record(epoch: u64, holder: &str, address: Option<&str>) -> EpochRecord {
    EpochRecord {
        epoch,
        holder: holder.to_owned(),
        created_at_ms: 1_000 * epoch,
        address: address.map(str::to_owned),
    }
}

/// Commits checkpoint `id` at `epoch` holding one object of value `value`, with metadata.
async fn checkpoint(store: &CheckpointStore, id: u64, epoch: u64, value: i64) -> Manifest {
    let round = format!("e{epoch}-r{id}");
    let object = ObjectId::new("counter").unwrap();
    let mut w = store.segment_writer(cid(id), &round, "node-1");
    let location = w
        .add(&object, &Snapshot::new("Counter", 1, value))
        .await
        .unwrap();
    w.finish().await.unwrap();
    let mut m = Manifest::new(cid(id), epoch, 1_000 + id, &round);
    m.parent = (id > 1).then(|| cid(id - 1));
    m.objects.insert(
        object,
        ObjectEntry {
            type_name: "Counter".into(),
            version: 1,
            generation: None,
            location,
        },
    );
    m.metadata
        .insert("table".into(), format!("table-{id}").into_bytes());
    store.commit(&m).await.unwrap();
    m
}

async fn raw(store: &CheckpointStore, key: &str) -> Vec<u8> {
    let (os, prefix) = store.object_store();
    let path = if prefix.as_ref().is_empty() {
        Path::from(key)
    } else {
        Path::from(format!("{prefix}/{key}"))
    };
    os.get(&path).await.unwrap().bytes().await.unwrap().to_vec()
}

async fn put_raw(store: &CheckpointStore, key: &str, bytes: Vec<u8>) {
    let (os, _) = store.object_store();
    os.put(&Path::from(key), PutPayload::from(bytes))
        .await
        .unwrap();
}

#[tokio::test]
async fn try_claim_takes_exactly_the_named_epoch_once() {
    let store = CheckpointStore::memory();
    assert!(
        store
            .try_claim_epoch(&record(1, "a", Some("127.0.0.1:7411")))
            .await
            .unwrap()
    );
    // A second claimant of the same epoch loses, and does not move on to epoch 2.
    assert!(!store.try_claim_epoch(&record(1, "b", None)).await.unwrap());
    let newest = store.newest_epoch().await.unwrap().unwrap();
    assert_eq!(newest, record(1, "a", Some("127.0.0.1:7411")));
    // claim_epoch still takes the next free one, without an address.
    let next = store.claim_epoch("cli", 5).await.unwrap();
    assert_eq!((next.epoch, next.address), (2, None));
    assert!(matches!(
        store.try_claim_epoch(&record(0, "z", None)).await,
        Err(Error::InvalidInput(_))
    ));
}

#[tokio::test]
async fn racing_claimants_of_one_epoch_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .try_claim_epoch(&record(3, &format!("standby-{i}"), None))
                .await
                .unwrap()
        });
    }
    let mut winners = 0;
    while let Some(won) = tasks.join_next().await {
        winners += usize::from(won.unwrap());
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn a_record_without_address_encodes_as_before() {
    let store = CheckpointStore::memory();
    store.claim_epoch("old-style", 1).await.unwrap();
    let bytes = raw(&store, "epochs/00000000000000000001.epoch").await;
    // The field is left out, so older readers see the exact bytes they always did.
    assert!(!bytes.windows(7).any(|w| w == b"address"));
    assert_eq!(store.newest_epoch().await.unwrap().unwrap().address, None);
}

#[tokio::test]
async fn leases_are_overwritten_and_not_mistaken_for_epochs() {
    let store = CheckpointStore::memory();
    assert!(store.try_claim_epoch(&record(1, "a", None)).await.unwrap());
    assert_eq!(store.epoch_lease(1).await.unwrap(), None);
    for renewal in 1..=3 {
        let lease = EpochLease {
            epoch: 1,
            renewal,
            renewed_at_ms: 10 * renewal,
        };
        store.renew_epoch(&lease).await.unwrap();
        assert_eq!(store.epoch_lease(1).await.unwrap(), Some(lease));
    }
    // The lease sits under epochs/ but is not an epoch.
    assert_eq!(store.newest_epoch().await.unwrap().unwrap().epoch, 1);
    assert!(store.try_claim_epoch(&record(2, "b", None)).await.unwrap());
    assert_eq!(store.epoch_lease(2).await.unwrap(), None);
}

#[tokio::test]
async fn a_damaged_lease_is_reported_not_trusted() {
    let store = CheckpointStore::memory();
    store
        .renew_epoch(&EpochLease {
            epoch: 4,
            renewal: 9,
            renewed_at_ms: 0,
        })
        .await
        .unwrap();
    let key = "epochs/00000000000000000004.lease";
    let mut bytes = raw(&store, key).await;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    put_raw(&store, key, bytes).await;
    assert!(matches!(
        store.epoch_lease(4).await,
        Err(Error::Damaged { .. })
    ));
    // A lease copied under another epoch's key is refused too.
    store
        .renew_epoch(&EpochLease {
            epoch: 5,
            renewal: 1,
            renewed_at_ms: 0,
        })
        .await
        .unwrap();
    let copied = raw(&store, "epochs/00000000000000000005.lease").await;
    put_raw(&store, "epochs/00000000000000000006.lease", copied).await;
    assert!(matches!(
        store.epoch_lease(6).await,
        Err(Error::Damaged { .. })
    ));
}

fn fence_newest(epoch: u64, at: u64) -> FenceRequest {
    FenceRequest::new(epoch, at, FenceLine::Newest)
}

fn written(fence: Result<Fence, Error>) -> Manifest {
    match fence {
        Ok(Fence::Written(m)) => m,
        other => panic!("expected a written fence, got {other:?}"),
    }
}

#[tokio::test]
async fn a_fence_points_at_the_recovery_line_and_fences_the_old_epoch() {
    let store = CheckpointStore::memory();
    assert_eq!(
        store.fence(&fence_newest(2, 5_000)).await.unwrap(),
        Fence::NoLine
    );
    assert!(store.committed_ids().await.unwrap().is_empty());

    checkpoint(&store, 1, 1, 10).await;
    let line = checkpoint(&store, 2, 1, 20).await;
    let fence = written(store.fence(&fence_newest(2, 5_000)).await);
    assert_eq!(
        (fence.id, fence.epoch, fence.kind, fence.parent),
        (cid(3), 2, ManifestKind::Fence, Some(cid(2)))
    );
    assert_eq!(fence.objects, line.objects);
    assert_eq!(fence.metadata, line.metadata);
    assert_eq!(store.read_manifest(cid(3)).await.unwrap(), fence);

    // The deposed epoch-1 writer knows checkpoint 2 at most: its next commit is fenced.
    let mut stale = line.clone();
    stale.id = cid(3);
    stale.parent = Some(cid(2));
    stale.round = "e1-r3".into();
    assert!(matches!(
        store.commit(&stale).await,
        Err(Error::Fenced { .. })
    ));

    // A fence of an older epoch than the newest manifest's is itself fenced.
    checkpoint(&store, 4, 3, 40).await;
    assert!(matches!(
        store.fence(&fence_newest(2, 6_000)).await,
        Err(Error::Fenced { .. })
    ));
    assert_eq!(store.committed_ids().await.unwrap().last(), Some(&cid(4)));
}

/// The deposed-leader bug at the store: a writer that learned of a newer epoch's manifest (a
/// conflict told it the newest id) must not commit after it, and a recovery fence pointing at
/// a line that is no longer the recovery line is not written.
#[tokio::test]
async fn epochs_never_go_down_along_the_ids() {
    let store = CheckpointStore::memory();
    checkpoint(&store, 1, 1, 10).await;
    // The new leader (epoch 2) commits checkpoint 2.
    let newer = CheckpointStore::from_object_store(
        std::sync::Arc::clone(store.object_store().0),
        store.object_store().1.clone(),
        Default::default(),
    );
    checkpoint(&newer, 2, 2, 20).await;
    // The old leader (epoch 1), told that 2 is the newest, tries 3: refused, from a warm
    // handle and a cold one alike.
    for handle in [
        store.clone(),
        CheckpointStore::from_object_store(
            std::sync::Arc::clone(store.object_store().0),
            store.object_store().1.clone(),
            Default::default(),
        ),
    ] {
        let round = "e1-r3";
        let mut m = Manifest::new(cid(3), 1, 3_000, round);
        m.parent = Some(cid(2));
        let err = handle.commit(&m).await.unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert!(err.to_string().contains("epoch 2"), "{err}");
    }
    assert_eq!(store.committed_ids().await.unwrap().last(), Some(&cid(2)));

    // A recovery that restored its objects to checkpoint 1 may not fence: the line moved on.
    let moved = newer
        .fence(&FenceRequest::new(
            2,
            4_000,
            FenceLine::Expect(Some(cid(1))),
        ))
        .await
        .unwrap();
    assert_eq!(moved, Fence::LineMoved { line: Some(cid(2)) });
    let moved = newer
        .fence(&FenceRequest::new(2, 4_000, FenceLine::Expect(None)))
        .await
        .unwrap();
    assert_eq!(moved, Fence::LineMoved { line: Some(cid(2)) });
    assert_eq!(store.committed_ids().await.unwrap().last(), Some(&cid(2)));
    // Pointing at the line it restored, it fences, under a round token of its own.
    let request =
        FenceRequest::new(2, 4_000, FenceLine::Expect(Some(cid(2)))).with_round("e2-fence-7");
    let fence = written(newer.fence(&request).await);
    assert_eq!((fence.id, fence.round.as_str()), (cid(3), "e2-fence-7"));
}

/// The fence checks what the line references (a segment cut short is damage it sees) without
/// reading every byte of it: a rotted entry is found by the host that restores it, and the
/// fence is then asked to skip that line.
#[tokio::test]
async fn a_fence_skips_a_damaged_newest_checkpoint() {
    let store = CheckpointStore::memory();
    let good = checkpoint(&store, 1, 1, 10).await;
    let bad = checkpoint(&store, 2, 1, 20).await;
    let segment = &bad.objects.values().next().unwrap().location.segment;
    let intact = raw(&store, segment).await;
    let mut short = intact.clone();
    short.truncate(intact.len() - 1);
    put_raw(&store, segment, short).await;

    let fence = written(store.fence(&fence_newest(2, 5_000)).await);
    assert_eq!(fence.id, cid(3));
    assert_eq!(fence.objects, good.objects);
    assert_eq!(
        store.recovery_line().await.unwrap().unwrap().manifest,
        fence
    );

    // Rotted in place, length and header intact: not read by the fence.
    let store = CheckpointStore::memory();
    let good = checkpoint(&store, 1, 1, 10).await;
    let bad = checkpoint(&store, 2, 1, 20).await;
    let segment = &bad.objects.values().next().unwrap().location.segment;
    let mut rotted = raw(&store, segment).await;
    let last = rotted.len() - 1;
    rotted[last] ^= 0xff;
    put_raw(&store, segment, rotted).await;
    let request = fence_newest(2, 5_000);
    let fence = written(store.fence(&request).await);
    assert_eq!(fence.objects, bad.objects);
    // A host that restored it found the damage: the next fence skips it.
    let request = fence_newest(2, 6_000)
        .with_round("e2-fence-again")
        .skipping(vec![bad.id, fence.id]);
    let fence = written(store.fence(&request).await);
    assert_eq!(fence.objects, good.objects);
}

/// A damaged newest epoch record or lease is reported beside what still reads, never hides
/// the epoch's number: that number stays taken, and the next claim is the one after it.
#[tokio::test]
async fn a_damaged_newest_epoch_keeps_its_number_taken() {
    let store = CheckpointStore::memory();
    assert_eq!(store.newest_epoch_state().await.unwrap(), None);
    assert_eq!(store.newest_epoch_number().await.unwrap(), None);
    assert!(store.try_claim_epoch(&record(1, "a", None)).await.unwrap());
    assert!(
        store
            .try_claim_epoch(&record(2, "b", Some("10.0.0.2:7411")))
            .await
            .unwrap()
    );
    let lease = EpochLease {
        epoch: 2,
        renewal: 3,
        renewed_at_ms: 7,
    };
    store.renew_epoch(&lease).await.unwrap();
    let state = store.newest_epoch_state().await.unwrap().unwrap();
    assert_eq!(state.epoch, 2);
    assert_eq!(state.record, Ok(record(2, "b", Some("10.0.0.2:7411"))));
    assert_eq!(state.lease, Ok(Some(lease.clone())));
    assert_eq!(state.damage().count(), 0);

    // The record rots.
    let key = "epochs/00000000000000000002.epoch";
    let mut bytes = raw(&store, key).await;
    bytes.truncate(bytes.len() - 3);
    put_raw(&store, key, bytes).await;
    let err = store.newest_epoch().await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains(key), "{message}");
    assert!(!message.contains("checkpoint 0"), "{message}");
    let state = store.newest_epoch_state().await.unwrap().unwrap();
    assert_eq!(state.epoch, 2);
    let damage = state.record.as_ref().unwrap_err();
    assert_eq!(damage.blob, key);
    assert_eq!(damage.to_string(), format!("blob {key}: {}", damage.kind));
    assert_eq!(state.lease, Ok(Some(lease)));
    assert_eq!(store.newest_epoch_number().await.unwrap(), Some(2));
    // Epoch 2 can never be claimed again; the next claim is 3.
    assert!(!store.try_claim_epoch(&record(2, "c", None)).await.unwrap());
    assert_eq!(store.claim_epoch("d", 0).await.unwrap().epoch, 3);

    // A damaged lease is reported beside a sound record.
    store
        .renew_epoch(&EpochLease {
            epoch: 3,
            renewal: 1,
            renewed_at_ms: 0,
        })
        .await
        .unwrap();
    put_raw(
        &store,
        "epochs/00000000000000000003.lease",
        b"junk".to_vec(),
    )
    .await;
    let state = store.newest_epoch_state().await.unwrap().unwrap();
    assert_eq!(state.epoch, 3);
    assert!(state.record.is_ok());
    assert_eq!(
        state.lease.as_ref().unwrap_err().blob,
        "epochs/00000000000000000003.lease"
    );
    assert_eq!(state.damage().count(), 1);
}

/// A recovery may move objects after its line was committed: the fence keeps the line's
/// metadata but takes what the fencing writer sets over it (its current state table), so a
/// later takeover reading the newest manifest expects objects where they are now.
#[tokio::test]
async fn a_fence_sets_the_writers_metadata_over_the_lines() {
    let store = CheckpointStore::memory();
    let mut line = checkpoint(&store, 1, 1, 10).await;
    line.metadata
        .insert("table".into(), b"before the move".to_vec());
    line.metadata.insert("kept".into(), b"as is".to_vec());
    line.id = cid(2);
    store.commit(&line).await.unwrap();
    let now = [("table".to_owned(), b"after the move".to_vec())].into();
    let fence = written(
        store
            .fence(&fence_newest(2, 5_000).with_metadata(now))
            .await,
    );
    assert_eq!(fence.metadata["table"], b"after the move");
    assert_eq!(fence.metadata["kept"], b"as is");
    assert_eq!(fence.objects, line.objects);
}
