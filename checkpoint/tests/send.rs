//! Every public future of this crate is `Send` and can be awaited inside a `'static` task, as
//! `tokio::spawn` requires. This is a compile-time test: a regression fails the build.
//!
//! Each future is awaited inside an `async move` block, not only checked bare: that is where
//! rustc checks it with higher-ranked lifetimes (rust-lang/rust#102211), the check that a
//! stream combinator over borrowed items used to fail. Nothing here is polled.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use cohort_checkpoint::testing::FaultyStore;
use cohort_checkpoint::testing::suite::{self, Capabilities};
use cohort_checkpoint::{
    CheckpointStore, EntryLocation, EpochLease, EpochRecord, Manifest, StoreOptions,
};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};

/// What `tokio::spawn` asks of a future.
fn spawnable<F: Future + Send + 'static>(_: F) {}

fn id() -> CheckpointId {
    CheckpointId::new(1)
}

fn manifest() -> Manifest {
    Manifest::new(id(), 1, 0, "e1-r1")
}

fn location() -> EntryLocation {
    EntryLocation {
        segment: "segments/00000000000000000001/e1-r1/w-000000.seg".into(),
        offset: 22,
        len: 4,
        crc: 0,
    }
}

/// Awaits `$call` on a clone of `$store` (bound to `s`) inside a `'static` task.
macro_rules! task {
    ($store:expr, |$s:ident| $call:expr) => {{
        let $s = $store.clone();
        spawnable(async move { $call.await });
    }};
}

#[test]
fn store_futures_are_send() {
    let store = CheckpointStore::memory();
    spawnable(CheckpointStore::open("memory://", StoreOptions::default()));
    spawnable(CheckpointStore::open_read_only("memory://"));
    task!(store, |s| s.probe_create_if_absent());
    task!(store, |s| s.commit(&manifest()));
    task!(store, |s| s.discard_round(id(), "e1-r1"));
    task!(store, |s| s.committed_ids());
    task!(store, |s| s.read_manifest(id()));
    task!(store, |s| s.manifest_base(id()));
    task!(store, |s| s.recovery_line());
    task!(store, |s| s.read_state(&location()));
    task!(store, |s| s.read_states(&manifest()));
    task!(store, |s| s.read_in_transit(&manifest()));
    task!(store, |s| s.verify(id()));
    task!(store, |s| s.verify_all());
    task!(store, |s| s.verify_all_with_progress(|_| {}));
}

#[test]
fn retention_and_epoch_futures_are_send() {
    let store = CheckpointStore::memory();
    let record = EpochRecord {
        epoch: 1,
        holder: "h".into(),
        created_at_ms: 0,
        address: None,
    };
    let lease = EpochLease {
        epoch: 1,
        renewal: 1,
        renewed_at_ms: 0,
    };
    task!(store, |s| s.pin(id()));
    task!(store, |s| s.unpin(id()));
    task!(store, |s| s.pins());
    task!(store, |s| s.gc(1, true));
    task!(store, |s| s.rollback(id(), 1, 0));
    task!(store, |s| s.claim_epoch("h", 0));
    task!(store, |s| s.try_claim_epoch(&record));
    task!(store, |s| s.newest_epoch());
    task!(store, |s| s.renew_epoch(&lease));
    task!(store, |s| s.epoch_lease(1));
    let fence = cohort_checkpoint::FenceRequest::new(1, 0, cohort_checkpoint::FenceLine::Newest);
    task!(store, |s| s.fence(&fence));
    let key = "groups/g/config";
    task!(store, |s| s.create_group_record(key, Bytes::new()));
    task!(store, |s| s.read_group_record(key));
    task!(store, |s| s.list_group_records("groups/g"));
}

#[test]
fn writer_futures_are_send() {
    let store = CheckpointStore::memory();
    let object = ObjectId::new("a").unwrap();
    let snapshot = Snapshot::new("T", 1, 1_i64);
    let encoded = snapshot.encode().unwrap();
    spawnable(async move {
        let mut writer = store.segment_writer(id(), "e1-r1", "w");
        writer.add(&object, &snapshot).await?;
        writer.add_encoded(&object, &encoded).await?;
        writer.finish().await
    });
}

#[test]
fn testing_futures_are_send() {
    let store = CheckpointStore::memory();
    task!(store, |s| suite::run(&s, Capabilities::atomic()));
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    task!(faulty, |f| f.wait_for_hang(1));
}
