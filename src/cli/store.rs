//! Opening the store named by `--store`, and what its errors mean for the CLI.

use cohort_checkpoint::{
    CheckpointStore, Damage, DamageKind, EpochState, Error as StoreError, Manifest, ManifestKind,
    StoreOptions,
};
use cohort_object_api::CheckpointId;

use crate::cli::StoreArgs;
use crate::cli::failure::Failure;

/// What to do about a store error, where a hint helps (its exit code comes from its kind).
pub(crate) fn hint(err: &StoreError) -> Option<String> {
    let hint = match err {
        StoreError::Damaged { .. } => {
            "run `cohort verify` to list every damaged checkpoint; `cohort rollback --to ID` can return to an intact one"
        }
        StoreError::Fenced { .. } => {
            "a coordinator committed in the meantime; check `cohort list` and retry if still wanted"
        }
        StoreError::Conflict { .. } => {
            "another writer committed first; check `cohort list`, then retry"
        }
        StoreError::NotFound { .. } => "run `cohort list` to see the committed checkpoints",
        StoreError::InvalidUrl { .. } => {
            "pass --store or set COHORT_STORE, e.g. --store file:///var/lib/app/checkpoints"
        }
        StoreError::Unavailable { .. } => {
            "for S3 check AWS_ENDPOINT_URL, AWS_REGION and the credentials; run with -v to see the retries"
        }
        StoreError::FutureFormat { .. } => {
            "a newer cohort wrote this store; use a cohort CLI at least as new as the coordinators that write it"
        }
        StoreError::UnsafeStore { .. } => {
            "if no coordinator can write to this store at the same time, pass --allow-unsafe-store"
        }
        _ => return None,
    };
    Some(hint.to_owned())
}

/// Opens the store for reading: no probe, nothing can be written.
pub(crate) async fn open_read_only(args: &StoreArgs) -> anyhow::Result<CheckpointStore> {
    tracing::debug!(store = %args.store, "opening read-only");
    match CheckpointStore::open_read_only(&args.store).await {
        Ok(store) => Ok(store),
        // Only a missing local directory is "not found" at open; the generic hint about
        // checkpoint ids would mislead.
        Err(e @ StoreError::NotFound { .. }) => Err(Failure::usage(e.to_string())
            .hint("check the path; a store is created by the first coordinator that writes to it")
            .into()),
        Err(e) => Err(e.into()),
    }
}

/// Opens the store for writing, which runs the create-if-absent probe.
pub(crate) async fn open_writable(
    args: &StoreArgs,
    allow_unsafe_store: bool,
) -> anyhow::Result<CheckpointStore> {
    // Opening for writing creates a missing local directory; a mistyped path must fail
    // instead, so check that the store exists first.
    open_read_only(args).await?;
    tracing::debug!(store = %args.store, allow_unsafe_store, "opening for writing");
    // StoreOptions is non-exhaustive, so struct-update syntax is not available here.
    #[allow(clippy::field_reassign_with_default)]
    let options = {
        let mut options = StoreOptions::default();
        options.allow_unsafe_conditional_put = allow_unsafe_store;
        options
    };
    Ok(CheckpointStore::open(&args.store, options).await?)
}

/// Unix milliseconds now, read at the command's edge: the creation time of the records it
/// writes, and the reference point of a retention window.
pub(crate) fn now_ms() -> u64 {
    cohort_object_api::Clock::system().wall_ms()
}

/// The checkpoint whose segment directory holds `segment` (`segments/<20 digits>/...`), so that
/// a reference into an older checkpoint's segment shows as incremental.
pub(crate) fn segment_checkpoint(segment: &str) -> Option<CheckpointId> {
    let rest = segment.strip_prefix("segments/")?;
    let (digits, _) = rest.split_once('/')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .map(CheckpointId::new)
}

/// Whether the manifest references states stored by an older checkpoint.
pub(crate) fn is_incremental(manifest: &Manifest) -> bool {
    manifest
        .locations()
        .any(|l| segment_checkpoint(&l.segment) != Some(manifest.id))
}

/// `checkpoint`, `rollback`, `fence`: the kind's name for tables and JSON.
pub(crate) fn kind_name(kind: &ManifestKind) -> &'static str {
    match kind {
        ManifestKind::Checkpoint => "checkpoint",
        ManifestKind::Rollback { .. } => "rollback",
        ManifestKind::Fence => "fence",
        // A kind this build does not know yet; the manifest decoded, so show it generically.
        _ => "other",
    }
}

/// How a manifest is stored: `whole`, or `delta` (of `delta_of`'s full manifest).
pub(crate) fn stored_name(delta_of: Option<CheckpointId>) -> &'static str {
    match delta_of {
        Some(_) => "delta",
        None => "whole",
    }
}

/// The checkpoint a rollback manifest points at.
pub(crate) fn rollback_target(kind: &ManifestKind) -> Option<CheckpointId> {
    match kind {
        ManifestKind::Rollback { to } => Some(*to),
        _ => None,
    }
}

/// The kind for people: `checkpoint`, `fence`, `rollback to 3`.
pub(crate) fn kind_label(kind: &ManifestKind) -> String {
    match rollback_target(kind) {
        Some(to) => format!("rollback to {to}"),
        None => kind_name(kind).to_owned(),
    }
}

/// What is damaged, without the checkpoint (which the caller names): `object account-2, blob
/// segments/...: crc mismatch: ...`.
pub(crate) fn damage_text(d: &Damage) -> String {
    match &d.object {
        Some(object) => format!("object {object}, blob {}: {}", d.blob, d.kind),
        None => format!("blob {}: {}", d.blob, d.kind),
    }
}

/// What is wrong with the newest epoch's record or lease, as lines for people: each names the
/// blob and what is wrong, and what coordinators do about it. Empty when both read (or no
/// epoch was ever claimed).
pub(crate) fn epoch_problems(state: Option<&EpochState>) -> Vec<String> {
    let Some(state) = state else {
        return Vec::new();
    };
    let epoch = state.epoch;
    state
        .damage()
        .map(|d| match d.kind {
            DamageKind::FutureFormat { .. } => format!(
                "epoch {epoch}: {}: {}; coordinators of this build will not take over from it",
                d.blob, d.kind
            ),
            _ => format!(
                "epoch {epoch}: {} is damaged: {}; epoch {epoch} stays taken, and a coordinator claims epoch {} once its lease stops moving (stop its leader to make that happen now)",
                d.blob,
                d.kind,
                epoch + 1
            ),
        })
        .collect()
}

/// A manifest whose id was named on the command line; a missing one says how to find ids.
pub(crate) async fn read_manifest(
    store: &CheckpointStore,
    id: CheckpointId,
) -> anyhow::Result<Manifest> {
    Ok(store.read_manifest(id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_checkpoint_parses_only_the_layout() {
        assert_eq!(
            segment_checkpoint("segments/00000000000000000042/e1-r1/node-1-000000.seg"),
            Some(CheckpointId::new(42))
        );
        assert_eq!(segment_checkpoint("segments/42/e1-r1/x-1.seg"), None);
        assert_eq!(segment_checkpoint("manifests/00000000000000000042"), None);
        assert_eq!(segment_checkpoint(""), None);
    }
}
