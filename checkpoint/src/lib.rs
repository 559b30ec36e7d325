//! Stable storage for cohort: the checkpoint format (segments and manifests), the stores it
//! lives in (local disk, S3-compatible, memory), the atomic commit point, integrity checks and
//! retention.
//!
//! A checkpoint is written in two steps. Each writer packs states into segment blobs with a
//! [`SegmentWriter`]; when every writer has [finished](SegmentWriter::finish), the coordinator
//! [commits](CheckpointStore::commit) by creating the checkpoint's [`Manifest`] create-only.
//! The manifest either exists or it does not, so a checkpoint is never half committed. Readers
//! take the [recovery line](CheckpointStore::recovery_line): the newest committed manifest whose
//! blobs all verify. ARCHITECTURE.md describes the layout byte by byte and the fencing rules.
//!
//! See [`CheckpointStore`] for an example.

mod compact;
mod delta;
mod error;
mod format;
pub mod ingress;
mod keys;
mod local;
mod manifest;
mod records;
mod retention;
mod store;
mod writer;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Damage, DamageKind, Error, Result};
pub use format::FORMAT_VERSION;
pub use manifest::{
    EntryLocation, EpochLease, EpochRecord, EpochState, InTransitEntry, Manifest, ManifestKind,
    ObjectEntry,
};
pub use retention::{DeletedBlob, Fence, FenceLine, FenceRequest, GcReport, Retention};
pub use store::{CheckpointStore, RecoveryLine, StoreOptions, VerifyProgress, VerifyReport};
pub use writer::{SegmentSummary, SegmentWriter, WriteSummary, channel_writer};

/// Re-exported so that callers can wrap or build stores without a version mismatch.
pub use object_store;
