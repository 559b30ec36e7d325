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
/// ones (voted so, or counted clean: no ballot) copied from the previous line with, for the
/// clean ones, their counters there; counters (zeros left out), the in-transit records and
/// `metadata`. `Err` names an object that voted "unchanged" or was counted clean that the
/// previous line does not hold (the attempt then fails rather than commit a line without it).
pub(crate) fn build(
    attempt: Attempt<'_>,
    participants: &[ObjectId],
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
    let mut objects = Vec::with_capacity(participants.len());
    let mut counters = Vec::new();
    // The clean objects' counters are the previous line's.
    let counted_before = attempt
        .previous
        .and_then(crate::participant::restore::counters)
        .unwrap_or_default();
    // Participants and the previous entries are both sorted: one merge instead of a tree
    // search per object.
    let previous = attempt.previous.map(|m| &m.objects);
    let mut before = previous.into_iter().flatten().peekable();
    let mut ballots = ballots.into_iter().peekable();
    for object in participants {
        if let Some((stranger, _)) = ballots.next_if(|(o, _)| o < object) {
            return Err(format!("{stranger} voted but is not a participant"));
        }
        let ballot = ballots.next_if(|(o, _)| o == object).map(|(_, b)| b);
        let (entry, sent_received) = match ballot {
            Some(Ballot {
                state: VotedState::Written(entry),
                sent,
                received,
            }) => {
                built.written += 1;
                (entry, (sent, received))
            }
            // Voted unchanged: the previous entry, with the counters it voted.
            Some(Ballot {
                state: VotedState::Unchanged,
                sent,
                received,
            }) => {
                built.unchanged += 1;
                (previous_entry(&mut before, object)?, (sent, received))
            }
            // Counted clean: the previous entry and counters.
            None => {
                built.unchanged += 1;
                let counted = counted_before.get(object).copied().unwrap_or((0, 0));
                (previous_entry(&mut before, object)?, counted)
            }
        };
        if sent_received != (0, 0) {
            counters.push((object.clone(), sent_received));
        }
        objects.push((object.clone(), entry));
    }
    if let Some((stranger, _)) = ballots.next() {
        return Err(format!("{stranger} voted but is not a participant"));
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

/// `object`'s entry in the previous line, from `before` (its entries, ascending, read up to
/// `object`): `Err` when it holds none.
fn previous_entry<'m>(
    before: &mut std::iter::Peekable<impl Iterator<Item = (&'m ObjectId, &'m ObjectEntry)>>,
    object: &ObjectId,
) -> Result<ObjectEntry, String> {
    while before.next_if(|(o, _)| *o < object).is_some() {}
    match before.peek() {
        Some((o, e)) if *o == object => Ok((*e).clone()),
        _ => Err(format!(
            "{object} reported no change but the previous line has no entry for it"
        )),
    }
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
