//! What the store targets share: an in-memory checkpoint store driven on one current-thread
//! runtime, blobs put under raw keys, the checked-in fixture stores, and the mode byte that
//! lets the fuzzer repair checksums so that its mutations reach the decoders behind them.

#![allow(dead_code)] // each target uses a part

use std::future::Future;
use std::sync::{Arc, LazyLock};

use cohort_checkpoint::object_store::memory::InMemory;
use cohort_checkpoint::object_store::path::Path;
use cohort_checkpoint::object_store::{ObjectStoreExt, PutPayload};
use cohort_checkpoint::{CheckpointStore, StoreOptions};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});

/// Runs `f` to completion. The memory store never waits on a timer or a socket.
pub fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.block_on(f)
}

/// A fresh, empty, writable store in memory.
pub fn store() -> CheckpointStore {
    CheckpointStore::from_object_store(
        Arc::new(InMemory::new()),
        Path::default(),
        StoreOptions::default(),
    )
}

/// Puts `bytes` under `key` as they are, past every check of the store's own writers.
pub async fn put(store: &CheckpointStore, key: &str, bytes: Vec<u8>) {
    let (os, _) = store.object_store();
    os.put(&store.path_of(key), PutPayload::from(bytes))
        .await
        .expect("a memory store accepts any put");
}

/// The store written by format version 2 (`checkpoint/tests/fixtures/v2`): checkpoint 1 whole,
/// checkpoint 2 a delta of it, their segments (one of them channel state).
pub const FIXTURE_V2: &[(&str, &[u8])] = &[
    (
        "manifests/00000000000000000001.manifest",
        include_bytes!(
            "../../../checkpoint/tests/fixtures/v2/manifests/00000000000000000001.manifest"
        ),
    ),
    (
        "manifests/00000000000000000002.manifest",
        include_bytes!(
            "../../../checkpoint/tests/fixtures/v2/manifests/00000000000000000002.manifest"
        ),
    ),
    (
        "segments/00000000000000000001/e1-r1/node-1-000000.seg",
        include_bytes!(
            "../../../checkpoint/tests/fixtures/v2/segments/00000000000000000001/e1-r1/node-1-000000.seg"
        ),
    ),
    (
        "segments/00000000000000000002/e1-r2/node-1-000000.seg",
        include_bytes!(
            "../../../checkpoint/tests/fixtures/v2/segments/00000000000000000002/e1-r2/node-1-000000.seg"
        ),
    ),
    (
        "segments/00000000000000000002/e1-r2/channel-000000.seg",
        include_bytes!(
            "../../../checkpoint/tests/fixtures/v2/segments/00000000000000000002/e1-r2/channel-000000.seg"
        ),
    ),
];

/// The full manifest of checkpoint 1 of the store written by format versions 3 and 4
/// (`checkpoint/tests/fixtures/v3`): the base of that store's delta. The two stores hold the
/// same checkpoints, so their segments are the same bytes (`FIXTURE_V2`'s).
pub const FIXTURE_V3_BASE: &[u8] =
    include_bytes!("../../../checkpoint/tests/fixtures/v3/manifests/00000000000000000001.manifest");

/// Puts the blobs of `fixture` whose key `keep` accepts.
pub async fn load(store: &CheckpointStore, fixture: &[(&str, &[u8])], keep: impl Fn(&str) -> bool) {
    for (key, bytes) in fixture {
        if keep(key) {
            put(store, key, bytes.to_vec()).await;
        }
    }
}

/// Bytes of a framed blob (manifest, epoch record, lease) besides its body.
const FRAME_OVERHEAD: usize = 30;

/// Rewrites a framed blob's id field (bytes 10..18) to `id`.
pub fn set_frame_id(blob: &mut [u8], id: u64) {
    if let Some(field) = blob.get_mut(10..18) {
        field.copy_from_slice(&id.to_le_bytes());
    }
}

/// Makes a framed blob's body length field and crc trailer agree with its bytes, so that a
/// mutated body reaches the msgpack decoder instead of stopping at the checksum.
pub fn fix_frame(blob: &mut [u8]) {
    if blob.len() < FRAME_OVERHEAD {
        return;
    }
    let body = (blob.len() - FRAME_OVERHEAD) as u64;
    blob[18..26].copy_from_slice(&body.to_le_bytes());
    let end = blob.len() - 4;
    let crc = crc32fast::hash(&blob[..end]);
    blob[end..].copy_from_slice(&crc.to_le_bytes());
}
