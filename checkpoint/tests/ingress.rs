//! The ingress log on local disk, where batches are appended to segment files: an append a
//! crash cut off (never acknowledged) is cut at the next open, and the log goes on; a flipped
//! byte before the end is damage. (The behaviour every backend shares is in the store suite.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::io::Write as _;

use bytes::Bytes;
use cohort_checkpoint::ingress::{IngressLog, IngressOptions};
use cohort_checkpoint::{CheckpointStore, Error, StoreOptions};
use cohort_object_api::ObjectId;

async fn filled(dir: &std::path::Path) -> (CheckpointStore, std::path::PathBuf) {
    let store = CheckpointStore::open(dir.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    let log = IngressLog::open(&store, "orders", IngressOptions::default())
        .await
        .unwrap();
    let to = ObjectId::new("book").unwrap();
    for seq in 1..=20 {
        log.append("c", seq, to.clone(), Bytes::from(vec![seq as u8; 50]))
            .await
            .unwrap();
    }
    let segment = std::fs::read_dir(dir.join("ingress/orders"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    (store, segment)
}

#[tokio::test]
async fn an_append_cut_off_by_a_crash_is_cut_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, segment) = filled(dir.path()).await;
    let good = std::fs::metadata(&segment).unwrap().len();
    // Half a frame at the end: the header of a batch and some of its body.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(b"CIGL\x01\x00\x14\x00\x00\x00\x00\x00\x00\x00\xff\x00\x00\x00abc")
        .unwrap();
    drop(file);
    let report = IngressLog::verify(&store, "orders").await.unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
    assert!(report.torn_tail.is_some(), "{report:?}");
    assert_eq!(report.end, 20);
    let log = IngressLog::open(&store, "orders", IngressOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), good);
    assert_eq!(log.end(), 20);
    let to = ObjectId::new("book").unwrap();
    assert!(
        log.append("c", 20, to.clone(), Bytes::new())
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(
        log.append("c", 21, to, Bytes::new())
            .await
            .unwrap()
            .position,
        20
    );
    assert_eq!(log.read(0, 100).await.unwrap().len(), 21);
    let report = IngressLog::verify(&store, "orders").await.unwrap();
    assert!(
        report.damaged.is_empty() && report.torn_tail.is_none(),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_flipped_byte_before_the_end_of_a_segment_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (store, segment) = filled(dir.path()).await;
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let report = IngressLog::verify(&store, "orders").await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    match IngressLog::open(&store, "orders", IngressOptions::default()).await {
        Err(Error::Damaged { damage, .. }) => {
            assert!(damage.blob.starts_with("ingress/orders/"), "{damage:?}")
        }
        other => panic!("a damaged log must not open: {other:?}"),
    }
}

/// A reader behind the in-memory cache reads the segment file back while the writer appends
/// to it: the inputs appended after the file was read are in the same segment, not in a next
/// one, and are read on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_cache_keeps_up_with_appends_to_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    let mut options = IngressOptions::default();
    options.cached_batches = 1;
    let log = IngressLog::open(&store, "orders", options).await.unwrap();
    const INPUTS: u64 = 400;
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let to = ObjectId::new("book").unwrap();
            for seq in 1..=INPUTS {
                log.append("c", seq, to.clone(), Bytes::from(vec![1; 20]))
                    .await
                    .unwrap();
            }
        })
    };
    let mut next = 0;
    while next < INPUTS {
        // From the start every time: always behind the cache, always in the open segment.
        let read = log.read(0, usize::MAX).await.unwrap();
        for (i, record) in read.iter().enumerate() {
            assert_eq!(record.position, i as u64);
        }
        next = next.max(read.len() as u64);
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
}
