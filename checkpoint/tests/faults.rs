//! Real faults injected with `FaultyStore`: lost responses, crashes mid-write, failing reads
//! and deletes. A commit is all or nothing, and a store error is never mistaken for damage.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::sync::Arc;

use cohort_checkpoint::object_store::ObjectStore;
use cohort_checkpoint::object_store::memory::InMemory;
use cohort_checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
use cohort_checkpoint::{CheckpointStore, Error, Manifest, ObjectEntry, StoreOptions};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};

fn stores(options: StoreOptions) -> (FaultyStore, CheckpointStore) {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let store =
        CheckpointStore::from_object_store(Arc::new(faulty.clone()), Default::default(), options);
    (faulty, store)
}

/// A fresh store over the same bytes, as a restarted process would open.
fn restarted(faulty: &FaultyStore) -> CheckpointStore {
    CheckpointStore::from_object_store(
        Arc::clone(faulty.inner()),
        Default::default(),
        StoreOptions::default(),
    )
}

async fn write(store: &CheckpointStore, id: u64, value: i64) -> Result<Manifest, Error> {
    let round = format!("e1-r{id}");
    let mut m = Manifest::new(CheckpointId::new(id), 1, 0, &round);
    m.parent = (id > 1).then(|| CheckpointId::new(id - 1));
    let mut w = store.segment_writer(m.id, &round, "node-1");
    for i in 0..3 {
        let object = ObjectId::indexed("o", i).unwrap();
        let location = w.add(&object, &Snapshot::new("V", 1, value)).await?;
        m.objects.insert(
            object,
            ObjectEntry {
                type_name: "V".into(),
                version: 1,
                generation: None,
                location,
            },
        );
    }
    w.finish().await?;
    Ok(m)
}

#[tokio::test]
async fn a_lost_commit_response_is_settled_by_reading_back() {
    let (faulty, store) = stores(StoreOptions::default());
    let m = write(&store, 1, 1).await.unwrap();
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("manifests/")
            .fault(Fault::ErrorAfterWrite)
            .times(1),
    );
    // The create landed and only its answer was lost: the commit reads it back as its own.
    store.commit(&m).await.unwrap();
    assert_eq!(store.recovery_line().await.unwrap().unwrap().manifest, m);
    // A retry finds it as its own too.
    store.commit(&m).await.unwrap();

    // A create that failed before landing is reported as the failure it is.
    let m2 = write(&store, 2, 2).await.unwrap();
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("manifests/")
            .fault(Fault::Error)
            .times(1),
    );
    let err = store.commit(&m2).await.unwrap_err();
    assert!(!err.is_fenced(), "{err}");
    assert_eq!(
        store.committed_ids().await.unwrap(),
        vec![CheckpointId::new(1)]
    );
}

#[tokio::test]
async fn crash_during_segment_upload_commits_nothing() {
    let (faulty, store) = stores(StoreOptions::default());
    let m1 = write(&store, 1, 1).await.unwrap();
    store.commit(&m1).await.unwrap();
    faulty.inject(
        FaultRule::on(Op::Put)
            .key_contains("segments/")
            .fault(Fault::Hang),
    );
    let task = tokio::spawn({
        let store = store.clone();
        async move { write(&store, 2, 2).await }
    });
    faulty.wait_for_hang(1).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    faulty.clear();

    let store = restarted(&faulty);
    let line = store.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest, m1);
    // The attempt's blobs are garbage: the retry of checkpoint 2 uses a new round.
    let mut retry = write(&store, 2, 3).await.unwrap();
    retry.round = "e1-r2".into();
    store.commit(&retry).await.unwrap();
    store.gc(1, false).await.unwrap();
    assert!(store.verify(CheckpointId::new(2)).await.unwrap().is_ok());
}

#[tokio::test]
async fn crash_right_after_the_manifest_landed_is_committed() {
    let (faulty, store) = stores(StoreOptions::default());
    let m = write(&store, 1, 1).await.unwrap();
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("manifests/")
            .fault(Fault::HangAfterWrite),
    );
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.commit(&m).await }
    });
    faulty.wait_for_hang(1).await;
    task.abort();
    let line = restarted(&faulty).recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest.id, CheckpointId::new(1));
}

#[tokio::test]
async fn crash_before_the_manifest_landed_is_not_committed() {
    let (faulty, store) = stores(StoreOptions::default());
    let m = write(&store, 1, 1).await.unwrap();
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("manifests/")
            .fault(Fault::Hang),
    );
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.commit(&m).await }
    });
    faulty.wait_for_hang(1).await;
    task.abort();
    assert!(restarted(&faulty).recovery_line().await.unwrap().is_none());
}

#[tokio::test]
async fn failed_upload_fails_finish_and_later_calls() {
    let (faulty, store) = stores(StoreOptions {
        segment_size: 256,
        ..StoreOptions::default()
    });
    faulty.inject(FaultRule::on(Op::Put).key_contains("segments/").nth(2));
    let mut w = store.segment_writer(CheckpointId::new(1), "r1", "w");
    let mut failed = None;
    for i in 0..20 {
        let object = ObjectId::indexed("o", i).unwrap();
        if let Err(e) = w.add(&object, &Snapshot::new("V", 1, vec![0u8; 100])).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => w.finish().await.unwrap_err(),
    };
    assert!(err.to_string().contains("injected fault"), "{err}");
}

#[tokio::test]
async fn failed_multipart_upload_leaves_no_segment() {
    let (faulty, store) = stores(StoreOptions {
        segment_size: 1024,
        ..StoreOptions::default()
    });
    faulty.inject(FaultRule::on(Op::Multipart));
    let mut w = store.segment_writer(CheckpointId::new(1), "r1", "w");
    let object = ObjectId::new("big").unwrap();
    let result = async {
        w.add(&object, &Snapshot::new("V", 1, vec![7u8; 10_000]))
            .await?;
        w.finish().await
    }
    .await;
    assert!(result.is_err());
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(faulty.inner().list(None))
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn read_errors_are_not_reported_as_damage() {
    let (faulty, store) = stores(StoreOptions::default());
    let m = write(&store, 1, 1).await.unwrap();
    store.commit(&m).await.unwrap();
    faulty.inject(
        FaultRule::on(Op::Get)
            .or(Op::Head)
            .key_contains("segments/"),
    );
    assert!(matches!(store.verify(m.id).await, Err(Error::Store { .. })));
    assert!(matches!(
        store.recovery_line().await,
        Err(Error::Store { .. })
    ));
    assert!(matches!(
        store.read_states(&m).await,
        Err(Error::Store { .. })
    ));
    faulty.clear();
    assert!(store.verify(m.id).await.unwrap().is_ok());
}

#[tokio::test]
async fn gc_interrupted_by_a_failing_delete_finishes_on_the_next_run() {
    let (faulty, store) = stores(StoreOptions::default());
    for id in 1..=4 {
        let m = write(&store, id, id as i64).await.unwrap();
        store.commit(&m).await.unwrap();
    }
    faulty.inject(FaultRule::on(Op::Delete).nth(2));
    assert!(store.gc(1, false).await.is_err());
    faulty.clear();
    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.retained, vec![CheckpointId::new(4)]);
    assert_eq!(
        store.committed_ids().await.unwrap(),
        vec![CheckpointId::new(4)]
    );
    assert!(store.verify(CheckpointId::new(4)).await.unwrap().is_ok());
    let again = store.gc(1, false).await.unwrap();
    assert!(again.deleted.is_empty(), "{again:?}");
}

/// Checkpoint 1 of sixteen objects, then checkpoint `id` of the same with object 0 set to
/// `value`: a delta of checkpoint 1 (not yet committed).
async fn wide(store: &CheckpointStore, id: u64, value: i64) -> Manifest {
    let round = format!("e1-r{id}");
    let mut m = Manifest::new(CheckpointId::new(id), 1, 0, &round);
    m.parent = (id > 1).then(|| CheckpointId::new(id - 1));
    let mut w = store.segment_writer(m.id, &round, "node-1");
    for i in 0..16 {
        if id > 1 && i > 0 {
            continue;
        }
        let object = ObjectId::indexed("o", i).unwrap();
        let location = w.add(&object, &Snapshot::new("V", 1, value)).await.unwrap();
        m.objects.insert(
            object,
            ObjectEntry {
                type_name: "V".into(),
                version: 1,
                generation: None,
                location,
            },
        );
    }
    w.finish().await.unwrap();
    if id > 1 {
        let base = store
            .read_manifest(CheckpointId::new(id - 1))
            .await
            .unwrap();
        for (k, v) in base.objects {
            m.objects.entry(k).or_insert(v);
        }
    }
    m
}

#[tokio::test]
async fn a_store_error_reading_a_base_is_not_damage() {
    let (faulty, store) = stores(StoreOptions::default());
    store.commit(&wide(&store, 1, 1).await).await.unwrap();
    let m2 = wide(&store, 2, 2).await;
    store.commit(&m2).await.unwrap();
    assert_eq!(
        store.manifest_base(m2.id).await.unwrap(),
        Some(CheckpointId::new(1))
    );
    let cold = CheckpointStore::from_object_store(
        Arc::new(faulty.clone()),
        Default::default(),
        StoreOptions::default(),
    );
    faulty.inject(FaultRule::on(Op::Get).key_contains("manifests/00000000000000000001"));
    assert!(matches!(
        cold.read_manifest(m2.id).await,
        Err(Error::Store { .. })
    ));
    // Verification reads the base whatever is cached, and does not skip a line it could not read.
    assert!(matches!(
        store.verify(m2.id).await,
        Err(Error::Store { .. })
    ));
    assert!(matches!(
        store.recovery_line().await,
        Err(Error::Store { .. })
    ));
    faulty.clear();
    assert_eq!(cold.recovery_line().await.unwrap().unwrap().manifest, m2);
}

#[tokio::test]
async fn a_delta_commit_whose_response_was_lost_is_settled_and_the_next_follows() {
    let (faulty, store) = stores(StoreOptions::default());
    store.commit(&wide(&store, 1, 1).await).await.unwrap();
    let m2 = wide(&store, 2, 2).await;
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("manifests/")
            .fault(Fault::ErrorAfterWrite)
            .times(1),
    );
    // Read back as its own: committed, whatever encoding the read-back shows.
    store.commit(&m2).await.unwrap();
    store.commit(&m2).await.unwrap();
    let m3 = wide(&store, 3, 3).await;
    store.commit(&m3).await.unwrap();
    let one = Some(CheckpointId::new(1));
    assert_eq!(store.manifest_base(m2.id).await.unwrap(), one);
    assert_eq!(store.manifest_base(m3.id).await.unwrap(), one);
    let line = restarted(&faulty).recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest, m3);
}
