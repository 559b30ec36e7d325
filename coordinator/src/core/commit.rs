//! The one commit path: builds a checkpoint's manifest from the engine's ballots and creates it,
//! the single commit point, for the in-process runtime and the coordinator service alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use cohort_checkpoint::{CheckpointStore, InTransitEntry, Manifest, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId};

use crate::engine::{Ballot, CommitOutcome, VotedState};
use crate::participant::restore::COUNTERS_KEY;

/// What went into a manifest, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Built {
    /// Objects whose state was written in this attempt.
    pub(crate) written: usize,
    /// Objects unchanged since the previous line (their entry copied).
    pub(crate) unchanged: usize,
    /// In-transit messages recorded.
    pub(crate) in_transit: usize,
}

/// What a manifest is built from, besides the ballots.
pub(crate) struct Attempt<'a> {
    pub(crate) id: CheckpointId,
    pub(crate) epoch: u64,
    pub(crate) created_at_ms: u64,
    /// The attempt's round token.
    pub(crate) round: String,
    /// The newest manifest the coordinator knows: the parent, and where unchanged objects'
    /// entries come from.
    pub(crate) previous: Option<&'a Manifest>,
    /// Removed objects' message counters: recorded (with no state) in every line.
    pub(crate) retired: BTreeMap<ObjectId, (u64, u64)>,
}

/// Builds the manifest of a checkpoint from its ballots: written entries as voted, unchanged
/// ones copied from the previous line, counters (zeros left out), the in-transit records and
/// `metadata`. `Err` names an object that voted "unchanged" that the previous line does not
/// hold (the attempt then fails rather than commit a line without it).
pub(crate) fn build(
    attempt: Attempt<'_>,
    ballots: BTreeMap<ObjectId, Ballot<ObjectEntry>>,
    in_transit: Vec<InTransitEntry>,
    metadata: BTreeMap<String, Vec<u8>>,
) -> Result<(Manifest, Built), String> {
    let mut manifest = Manifest::new(
        attempt.id,
        attempt.epoch,
        attempt.created_at_ms,
        attempt.round,
    );
    let last = attempt.id.get().saturating_sub(1);
    manifest.parent = (last != 0).then(|| CheckpointId::new(last));
    let mut built = Built {
        in_transit: in_transit.len(),
        ..Built::default()
    };
    let mut objects = Vec::with_capacity(ballots.len());
    let mut counters = Vec::new();
    // Both sequences are sorted: one merge instead of a tree search per object.
    let previous = attempt.previous.map(|m| &m.objects);
    let mut before = previous.into_iter().flatten().peekable();
    for (object, ballot) in ballots {
        let entry = match ballot.state {
            VotedState::Written(entry) => {
                built.written += 1;
                entry
            }
            VotedState::Unchanged => {
                while before.next_if(|(o, _)| **o < object).is_some() {}
                match before.peek() {
                    Some((o, e)) if **o == object => {
                        built.unchanged += 1;
                        (*e).clone()
                    }
                    _ => {
                        return Err(format!(
                            "{object} reported no change but the previous line has no entry for it"
                        ));
                    }
                }
            }
        };
        if (ballot.sent, ballot.received) != (0, 0) {
            counters.push((object.clone(), (ballot.sent, ballot.received)));
        }
        objects.push((object, entry));
    }
    manifest.objects = objects.into_iter().collect();
    let mut counters: BTreeMap<ObjectId, (u64, u64)> = counters.into_iter().collect();
    counters.extend(attempt.retired);
    let counters = rmp_serde::to_vec(&counters)
        .map_err(|e| format!("encoding the message counters failed: {e}"))?;
    manifest.metadata = metadata;
    manifest.metadata.insert(COUNTERS_KEY.to_owned(), counters);
    manifest.in_transit = in_transit;
    Ok((manifest, built))
}

/// Creates `manifest`: the commit point. The store settles a create whose answer was lost (it
/// reads the slot back), refuses to follow a newer epoch, and says who holds a taken slot.
pub(crate) async fn create(store: &CheckpointStore, manifest: &Arc<Manifest>) -> CommitOutcome {
    match store.commit_shared(manifest).await {
        Ok(()) => CommitOutcome::Committed,
        Err(e) if e.is_fenced() => CommitOutcome::Fenced,
        Err(cohort_checkpoint::Error::Conflict { .. }) => {
            let newest = store
                .committed_ids()
                .await
                .ok()
                .and_then(|ids| ids.last().copied());
            CommitOutcome::Conflict {
                newest: newest.unwrap_or(manifest.id).max(manifest.id),
            }
        }
        Err(e) => CommitOutcome::Failed {
            reason: e.to_string(),
        },
    }
}
