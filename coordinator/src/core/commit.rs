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
    ballots: Vec<(ObjectId, Ballot<ObjectEntry>)>,
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

/// [`build`] over the previous line itself, taken by value: when the participants are the
/// previous line's objects (the caller knows, see `Core::commit`), only the ballots' entries
/// and counters change, so the manifest is updated in place, at a cost that follows the
/// changes and not the cohort. A ballot of an object the previous line does not hold is a
/// stranger's: `Err`, as in [`build`] (the previous line is then spent). Also returns the
/// objects whose entries changed, for the store to compare only those.
pub(crate) fn build_over(
    attempt: Attempt<'_>,
    mut manifest: Manifest,
    ballots: Vec<(ObjectId, Ballot<ObjectEntry>)>,
    in_transit: Vec<InTransitEntry>,
    metadata: BTreeMap<String, Vec<u8>>,
) -> Result<(Manifest, Built, Vec<ObjectId>), String> {
    // The participants' counters of the previous line (its retired objects' are replaced by
    // this attempt's), each voter's replaced by its ballot's.
    let mut counters = crate::participant::restore::counters(&manifest).unwrap_or_default();
    counters.retain(|object, _| manifest.objects.contains_key(object));
    let mut built = Built {
        in_transit: in_transit.len(),
        ..Built::default()
    };
    let mut changed = Vec::new();
    for (object, ballot) in ballots {
        let Some(entry) = manifest.objects.get_mut(&object) else {
            return Err(format!("{object} voted but is not a participant"));
        };
        if let VotedState::Written(written) = ballot.state {
            built.written += 1;
            *entry = written;
            changed.push(object.clone());
        }
        if (ballot.sent, ballot.received) == (0, 0) {
            counters.remove(&object);
        } else {
            counters.insert(object, (ballot.sent, ballot.received));
        }
    }
    built.unchanged = manifest.objects.len() - built.written;
    counters.extend(attempt.retired);
    let counters = rmp_serde::to_vec(&counters)
        .map_err(|e| format!("encoding the message counters failed: {e}"))?;
    let last = attempt.id.get().saturating_sub(1);
    let mut next = Manifest::new(
        attempt.id,
        attempt.epoch,
        attempt.created_at_ms,
        attempt.round,
    );
    next.parent = (last != 0).then(|| CheckpointId::new(last));
    next.objects = std::mem::take(&mut manifest.objects);
    next.metadata = metadata;
    next.metadata.insert(COUNTERS_KEY.to_owned(), counters);
    next.in_transit = in_transit;
    Ok((next, built, changed))
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
/// `changed`: the objects whose entries differ from the previous line's, when known.
pub(crate) async fn create(
    store: &CheckpointStore,
    manifest: &Arc<Manifest>,
    changed: Option<&[ObjectId]>,
) -> CommitOutcome {
    let created = match changed {
        Some(changed) => store.commit_changed(manifest, changed).await,
        None => store.commit_shared(manifest).await,
    };
    match created {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use cohort_checkpoint::EntryLocation;
    use proptest::prelude::*;

    use super::*;

    fn entry(n: u64) -> ObjectEntry {
        ObjectEntry {
            type_name: "T".into(),
            version: 1,
            generation: Some(n),
            location: EntryLocation {
                segment: "segments/00000000000000000001/r/w-000000.seg".into(),
                offset: 22 + n,
                len: 10,
                crc: 0,
            },
        }
    }

    fn attempt(id: u64, previous: Option<&Manifest>, retired: u64) -> Attempt<'_> {
        Attempt {
            id: CheckpointId::new(id),
            epoch: 1,
            created_at_ms: id,
            round: format!("r{id}"),
            previous,
            retired: (retired > 0)
                .then(|| (ObjectId::new("gone").unwrap(), (retired, 0)))
                .into_iter()
                .collect(),
        }
    }

    /// One ballot per object (index): `None` counted clean, else (written?, sent, received).
    type Ballots = Vec<Option<(bool, u64, u64)>>;

    fn ballots(
        ids: &[ObjectId],
        spec: &Ballots,
        round: u64,
    ) -> Vec<(ObjectId, Ballot<ObjectEntry>)> {
        let mut ballots: Vec<_> = ids
            .iter()
            .zip(spec)
            .filter_map(|(id, b)| {
                let (written, sent, received) = (*b)?;
                let state = if written {
                    VotedState::Written(entry(round * 100 + sent))
                } else {
                    VotedState::Unchanged
                };
                Some((
                    id.clone(),
                    Ballot {
                        state,
                        sent,
                        received,
                    },
                ))
            })
            .collect();
        // As the engine hands them over: ascending by id.
        ballots.sort_by(|a, b| a.0.cmp(&b.0));
        ballots
    }

    proptest! {
        /// The in-place update of the previous line builds the very manifest the full merge
        /// builds, whatever each participant voted or was counted.
        #[test]
        fn building_over_the_previous_line_equals_the_full_merge(
            next in proptest::collection::vec(
                proptest::option::of((any::<bool>(), 0..3u64, 0..3u64)), 1..12),
            first_counters in proptest::collection::vec(0..3u64, 1..12),
            retired in 0..2u64,
        ) {
            // Participants are ascending.
            let ids: Vec<ObjectId> = (0..next.len() as u64)
                .map(|i| ObjectId::indexed("o", i).unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let first: Ballots = ids
                .iter()
                .enumerate()
                .map(|(i, _)| Some((true, first_counters.get(i).copied().unwrap_or(0), 1)))
                .collect();
            let (line, _) = build(
                attempt(1, None, retired),
                &ids,
                ballots(&ids, &first, 1),
                Vec::new(),
                BTreeMap::new(),
            )
            .unwrap();
            let merged = build(
                attempt(2, Some(&line), 0),
                &ids,
                ballots(&ids, &next, 2),
                Vec::new(),
                BTreeMap::new(),
            )
            .unwrap();
            let over = build_over(
                attempt(2, None, 0),
                line,
                ballots(&ids, &next, 2),
                Vec::new(),
                BTreeMap::new(),
            )
            .unwrap();
            let written: Vec<ObjectId> = ids
                .iter()
                .zip(&next)
                .filter(|(_, b)| b.is_some_and(|(written, _, _)| written))
                .map(|(id, _)| id.clone())
                .collect();
            prop_assert_eq!((over.0, over.1), merged);
            prop_assert_eq!(over.2, written);
        }
    }

    #[test]
    fn a_strangers_ballot_is_refused_over_the_previous_line_too() {
        let ids = [ObjectId::new("a").unwrap()];
        let (line, _) = build(
            attempt(1, None, 0),
            &ids,
            ballots(&ids, &vec![Some((true, 0, 0))], 1),
            Vec::new(),
            BTreeMap::new(),
        )
        .unwrap();
        let stranger = [ObjectId::new("b").unwrap()];
        let err = build_over(
            attempt(2, None, 0),
            line,
            ballots(&stranger, &vec![Some((true, 0, 0))], 2),
            Vec::new(),
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.contains("b voted but is not a participant"), "{err}");
    }
}
