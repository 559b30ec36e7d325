//! Arbitrary bytes as the manifest of checkpoint 2, beside a sound full manifest 1 (the
//! format-2 fixture's), so that a delta of it is resolved against a real base: `read_manifest`,
//! `verify`, `manifest_base`, `recovery_line`, a GC dry run, and the states.
//!
//! The first input byte picks the repairs: bit 0 sets the header's checkpoint id to 2, bit 1
//! makes the body length field and the crc trailer agree with the bytes. Bit 2 makes manifest 1
//! the format-3 fixture's (the base of its format-4 delta) instead of the format-2 one's. Seeds
//! (the fixtures' deltas, and others): `fuzz/seeds/delta_manifest/`.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use cohort_checkpoint::Error;
use cohort_object_api::CheckpointId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, blob)) = data.split_first() else {
        return;
    };
    let mut blob = blob.to_vec();
    if mode & 1 != 0 {
        common::set_frame_id(&mut blob, 2);
    }
    if mode & 2 != 0 {
        common::fix_frame(&mut blob);
    }
    common::block_on(async {
        let store = common::store();
        let v3_base = mode & 4 != 0;
        common::load(&store, common::FIXTURE_V2, |k| {
            !k.ends_with("02.manifest") && !(v3_base && k.ends_with("01.manifest"))
        })
        .await;
        if v3_base {
            let base = common::FIXTURE_V3_BASE.to_vec();
            common::put(&store, "manifests/00000000000000000001.manifest", base).await;
        }
        common::put(&store, "manifests/00000000000000000002.manifest", blob).await;
        let id = CheckpointId::new(2);
        let read = store.read_manifest(id).await;
        match &read {
            Ok(m) => {
                assert_eq!(m.id, id);
                let _ = m.referenced_bytes();
            }
            Err(Error::Damaged { .. } | Error::FutureFormat { .. } | Error::NotFound { .. }) => {}
            Err(e) => panic!("read_manifest: unexpected error {e}"),
        }
        let report = store
            .verify(id)
            .await
            .expect("verify reports damage, it does not fail");
        assert_eq!(report.is_ok(), read.is_ok() && report.damaged.is_empty());
        let base = store.manifest_base(id).await.ok().flatten();
        match store.recovery_line().await {
            // Checkpoint 1 is sound: there is always a line, unless 2 is of a newer format.
            Ok(Some(line)) => assert!(line.manifest.id <= id),
            Ok(None) => panic!("no recovery line although checkpoint 1 is sound"),
            Err(Error::FutureFormat { .. }) => {}
            Err(e) => panic!("recovery_line: unexpected error {e}"),
        }
        match store.gc(1, true).await {
            // GC keeps the base of a kept delta, and the recovery line.
            Ok(report) => {
                if base == Some(CheckpointId::new(1)) || read.is_err() {
                    assert!(
                        !report.expired.contains(&CheckpointId::new(1)),
                        "{report:?}"
                    );
                }
            }
            Err(Error::FutureFormat { .. }) => {}
            Err(e) => panic!("gc: unexpected error {e}"),
        }
        if let Ok(m) = read {
            let _ = store.read_states(&m).await;
            let _ = store.read_in_transit(&m).await;
        }
    });
});
