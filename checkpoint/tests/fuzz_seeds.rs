//! The seeds of the store fuzz targets (`fuzz/seeds/{manifest,delta_manifest,segment,
//! epoch_record}/`), made from the format fixtures (versions 1, 2 and 3/4) and from blobs this
//! build writes, and
//! checked to be current: a change of format that makes them stale fails here. Rewrite them
//! with `COHORT_WRITE_FUZZ_SEEDS=1 cargo test -p cohort-checkpoint --test fuzz_seeds`.
//!
//! Each seed is the target's mode byte (see the target's documentation) and a blob.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::path::{Path, PathBuf};

use cohort_checkpoint::object_store::ObjectStoreExt;
use cohort_checkpoint::{CheckpointStore, EpochLease, EpochRecord};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(root().join("checkpoint/tests/fixtures").join(path)).unwrap()
}

fn seed(mode: u8, blob: &[u8]) -> Vec<u8> {
    let mut seed = vec![mode];
    seed.extend_from_slice(blob);
    seed
}

async fn epoch_blobs() -> (Vec<u8>, Vec<u8>) {
    let store = CheckpointStore::memory();
    let record = EpochRecord {
        epoch: 1,
        holder: "cohort-serve-1-0000abcd".into(),
        created_at_ms: 1_700_000_000_000,
        address: Some("127.0.0.1:7411".into()),
    };
    assert!(store.try_claim_epoch(&record).await.unwrap());
    let lease = EpochLease {
        epoch: 1,
        renewal: 42,
        renewed_at_ms: 1_700_000_000_500,
    };
    store.renew_epoch(&lease).await.unwrap();
    (
        raw(&store, "epochs/00000000000000000001.epoch").await,
        raw(&store, "epochs/00000000000000000001.lease").await,
    )
}

async fn raw(store: &CheckpointStore, key: &str) -> Vec<u8> {
    let (os, _) = store.object_store();
    let got = os.get(&store.path_of(key)).await.unwrap();
    got.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn the_store_fuzz_seeds_are_current() {
    let full = fixture("v2/manifests/00000000000000000001.manifest");
    let delta = fixture("v2/manifests/00000000000000000002.manifest");
    let v1 = fixture("v1/manifests/00000000000000000001.manifest");
    let full_v3 = fixture("v3/manifests/00000000000000000001.manifest");
    let delta_v4 = fixture("v3/manifests/00000000000000000002.manifest");
    let segment = fixture("v2/segments/00000000000000000001/e1-r1/node-1-000000.seg");
    let channel = fixture("v2/segments/00000000000000000002/e1-r2/channel-000000.seg");
    let (record, lease) = epoch_blobs().await;
    let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
        ("manifest", "full-v2", seed(0, &full)),
        ("manifest", "full-v2-repaired", seed(3, &full)),
        ("manifest", "full-v1", seed(0, &v1)),
        ("manifest", "delta-as-manifest", seed(3, &delta)),
        ("manifest", "full-v3", seed(0, &full_v3)),
        ("manifest", "full-v3-repaired", seed(3, &full_v3)),
        ("manifest", "delta-v4-as-manifest", seed(3, &delta_v4)),
        ("delta_manifest", "delta", seed(0, &delta)),
        ("delta_manifest", "delta-repaired", seed(3, &delta)),
        ("delta_manifest", "full-as-delta", seed(3, &full)),
        // Bit 2: against the format-3 fixture's base.
        ("delta_manifest", "delta-v4", seed(4, &delta_v4)),
        ("delta_manifest", "delta-v4-repaired", seed(7, &delta_v4)),
        ("delta_manifest", "full-v3-as-delta", seed(7, &full_v3)),
        ("segment", "states", seed(0, &segment)),
        ("segment", "states-repaired", seed(7, &segment)),
        ("segment", "channel-in-transit", seed(15, &channel)),
        ("epoch_record", "record", seed(0, &record)),
        ("epoch_record", "record-repaired", seed(6, &record)),
        ("epoch_record", "lease", seed(1, &lease)),
        ("epoch_record", "lease-repaired", seed(7, &lease)),
    ];
    let write = std::env::var_os("COHORT_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds {
        let path = root().join("fuzz/seeds").join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; rewrite the seeds with COHORT_WRITE_FUZZ_SEEDS=1",
                path.display()
            )
        });
        assert!(
            stored == bytes,
            "{} is stale; rewrite the seeds with COHORT_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}
