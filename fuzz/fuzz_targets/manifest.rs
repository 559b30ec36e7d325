//! Arbitrary bytes as the manifest of checkpoint 1, through everything that reads a manifest:
//! `read_manifest`, `verify`, `manifest_base`, `recovery_line`, a GC dry run, and the states it
//! points at (the segments of the format-2 fixture are in the store).
//!
//! The first input byte picks the repairs, so that mutations get past the checks in front of
//! the decoder: bit 0 sets the header's checkpoint id to 1, bit 1 makes the body length field
//! and the crc trailer agree with the bytes. Seeds: `fuzz/seeds/manifest/`.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use cohort_checkpoint::{Error, Manifest};
use cohort_object_api::CheckpointId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, blob)) = data.split_first() else {
        return;
    };
    let mut blob = blob.to_vec();
    if mode & 1 != 0 {
        common::set_frame_id(&mut blob, 1);
    }
    if mode & 2 != 0 {
        common::fix_frame(&mut blob);
    }
    common::block_on(async {
        let store = common::store();
        common::load(&store, common::FIXTURE_V2, |k| k.starts_with("segments/")).await;
        common::put(&store, "manifests/00000000000000000001.manifest", blob).await;
        read_everything(&store).await;
    });
});

/// Reads manifest 1 every way a reader does. Damage is an answer, never a panic; a memory store
/// has no other failure, so every call returns `Ok` or a verdict about the bytes.
async fn read_everything(store: &cohort_checkpoint::CheckpointStore) {
    let id = CheckpointId::new(1);
    let read = store.read_manifest(id).await;
    match &read {
        Ok(m) => check(m, id),
        Err(Error::Damaged { .. } | Error::FutureFormat { .. } | Error::NotFound { .. }) => {}
        Err(e) => panic!("read_manifest: unexpected error {e}"),
    }
    let report = store
        .verify(id)
        .await
        .expect("verify reports damage, it does not fail");
    assert_eq!(report.checkpoint, id);
    assert_eq!(report.is_ok(), read.is_ok() && report.damaged.is_empty());
    let _ = store.manifest_base(id).await;
    match store.recovery_line().await {
        Ok(Some(line)) => check(&line.manifest, id),
        Ok(None) | Err(Error::FutureFormat { .. }) => {}
        Err(e) => panic!("recovery_line: unexpected error {e}"),
    }
    match store.gc(1, true).await {
        Ok(_) | Err(Error::FutureFormat { .. }) => {}
        Err(e) => panic!("gc: unexpected error {e}"),
    }
    if let Ok(m) = read {
        if let Ok(states) = store.read_states(&m).await {
            for (_, state) in states {
                let _ = state.decode::<serde::de::IgnoredAny>();
            }
        }
        let _ = store.read_in_transit(&m).await;
    }
}

fn check(m: &Manifest, id: CheckpointId) {
    assert_eq!(m.id, id);
    // Never wraps, never panics.
    let _ = m.referenced_bytes();
    for location in m.locations() {
        assert!(location.offset.checked_add(location.len).is_some());
    }
}
