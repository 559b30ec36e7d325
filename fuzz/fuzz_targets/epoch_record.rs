//! Arbitrary bytes as the newest epoch's record or lease, through what coordinators and the
//! CLI read: `newest_epoch`, `newest_epoch_state`, `epoch_lease`, and the next claim.
//!
//! The first input byte picks what and the repairs: bit 0 puts the bytes at the lease of
//! epoch 1 (beside a sound record) instead of at its record, bit 1 sets the header's epoch to
//! 1, bit 2 makes the body length field and the crc trailer agree with the bytes. Seeds:
//! `fuzz/seeds/epoch_record/`.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use cohort_checkpoint::{EpochLease, EpochRecord, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, blob)) = data.split_first() else {
        return;
    };
    let mut blob = blob.to_vec();
    if mode & 2 != 0 {
        common::set_frame_id(&mut blob, 1);
    }
    if mode & 4 != 0 {
        common::fix_frame(&mut blob);
    }
    let lease = mode & 1 != 0;
    common::block_on(async {
        let store = common::store();
        if lease {
            let record = EpochRecord {
                epoch: 1,
                holder: "fuzz".into(),
                created_at_ms: 0,
                address: Some("127.0.0.1:7411".into()),
            };
            assert!(
                store
                    .try_claim_epoch(&record)
                    .await
                    .expect("a memory store")
            );
            common::put(&store, "epochs/00000000000000000001.lease", blob).await;
        } else {
            common::put(&store, "epochs/00000000000000000001.epoch", blob).await;
        }
        match store.newest_epoch().await {
            Ok(Some(record)) => assert_eq!(record.epoch, 1),
            Ok(None) => panic!("epoch 1 was claimed"),
            Err(Error::Damaged { .. } | Error::FutureFormat { .. }) => {}
            Err(e) => panic!("newest_epoch: unexpected error {e}"),
        }
        match store.epoch_lease(1).await {
            Ok(Some(EpochLease { epoch, .. })) => assert_eq!(epoch, 1),
            Ok(None) | Err(Error::Damaged { .. } | Error::FutureFormat { .. }) => {}
            Err(e) => panic!("epoch_lease: unexpected error {e}"),
        }
        let state = store
            .newest_epoch_state()
            .await
            .expect("what is wrong with a record or lease is in the state, not an error")
            .expect("epoch 1 was claimed");
        assert_eq!(state.epoch, 1);
        for damage in state.damage() {
            let _ = damage.to_string();
        }
        // Whatever the record holds, its number is taken: the next claim is 2.
        assert_eq!(
            store.newest_epoch_number().await.expect("a memory store"),
            Some(1)
        );
        let next = store.claim_epoch("next", 0).await.expect("a memory store");
        assert_eq!(next.epoch, 2);
    });
});
