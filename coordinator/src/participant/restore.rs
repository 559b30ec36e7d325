//! The one restore loader: what rolling a host's objects back to a line needs, read from the
//! store where the objects live (the in-process runtime or a node), checked as it is read.

use std::collections::{BTreeMap, HashMap};

use cohort_checkpoint::{CheckpointStore, Manifest};
use cohort_object_api::{EncodedState, ErrorKind, ObjectError, ObjectId};

use super::object::RestoreOrder;
use crate::engine::{CutState, RestoreFailure, Round};
use crate::error::Error;

/// The manifest metadata key holding the message counters (sent, received) of every object at
/// its cut. Objects with both at zero are left out (a reader takes a missing one as zero), so
/// objects that never messaged cost nothing; a manifest without the key (written before it
/// existed) has no counters, and its in-transit messages are redelivered as inputs.
pub const COUNTERS_KEY: &str = "cohort.counters";

/// One line's states, counters and in-transit messages for the objects of one host.
pub(crate) struct LineStates {
    states: HashMap<ObjectId, (EncodedState, Option<u64>)>,
    counters: Option<BTreeMap<ObjectId, (u64, u64)>>,
    redeliver: HashMap<ObjectId, Vec<(ObjectId, u64, EncodedState)>>,
    /// In-transit messages to redeliver, in all.
    pub(crate) redelivered: usize,
}

impl LineStates {
    /// Reads what restoring the objects `hosted` picks to `line` needs. Damage found now (the
    /// line verified when it was chosen) is the store's error, which [`restore_failure`] sorts.
    pub(crate) async fn read(
        store: &CheckpointStore,
        line: &Manifest,
        hosted: impl Fn(&ObjectId) -> bool,
    ) -> cohort_checkpoint::Result<Self> {
        let states = store.read_states_of(line, &hosted).await?;
        let messages = store.read_in_transit_to(line, &hosted).await?;
        let mut redeliver: HashMap<ObjectId, Vec<(ObjectId, u64, EncodedState)>> = HashMap::new();
        let redelivered = messages.len();
        for (entry, state) in messages {
            redeliver
                .entry(entry.to)
                .or_default()
                .push((entry.from, entry.seq, state));
        }
        Ok(Self {
            states: states
                .into_iter()
                .map(|(object, state)| {
                    let generation = line.objects.get(&object).and_then(|e| e.generation);
                    (object, (state, generation))
                })
                .collect(),
            counters: counters(line),
            redeliver,
            redelivered,
        })
    }

    /// Nothing committed: objects keep their state (and their counters start at zero).
    pub(crate) fn empty() -> Self {
        Self {
            states: HashMap::new(),
            counters: Some(BTreeMap::new()),
            redeliver: HashMap::new(),
            redelivered: 0,
        }
    }

    /// The order that restores `object`: its state, generation and counters at the line (none
    /// and zero if the line does not hold it), coloured `colour`, with its in-transit messages.
    /// Its mailbox is dropped when `discard` or the line holds it: what it holds was sent after
    /// the line.
    pub(crate) fn order(
        &mut self,
        object: &ObjectId,
        colour: Round,
        discard: bool,
    ) -> RestoreOrder {
        let state = self.states.remove(object);
        let (sent, received) = match (&state, &self.counters) {
            (Some(_), Some(counters)) => counters.get(object).copied().unwrap_or((0, 0)),
            _ => (0, 0),
        };
        RestoreOrder {
            discard: discard || state.is_some(),
            generation: state.as_ref().and_then(|(_, g)| *g),
            state: state.map(|(s, _)| s),
            cut: CutState {
                colour,
                sent,
                received,
            },
            redeliver: self.redeliver.remove(object).unwrap_or_default(),
            // Without counters the messages cannot be counted consistently: they are delivered
            // as inputs, outside any cut (only lines written before counters existed).
            counted: self.counters.is_some(),
        }
    }
}

/// What a failure to restore means for the line: bytes that do not decode (damage the store
/// finds now, a state's payload, an in-transit message) are damage, and the cohort falls back
/// past the line; a store that does not answer is transient, and the restore is ordered again;
/// a state this build cannot take (a newer schema, no migration, another type) is neither, and
/// must not make the cohort fall back past a committed line.
pub(crate) fn restore_failure(error: &Error) -> RestoreFailure {
    let reason = error.to_string();
    let damaged = match error {
        Error::Restore { source, .. } => matches!(**source, ObjectError::Decode { .. }),
        Error::Message { .. } => true,
        Error::Store(e) => e.kind() == ErrorKind::Data,
        _ => false,
    };
    if damaged {
        RestoreFailure::Damaged { reason }
    } else if error.kind() == ErrorKind::Transient {
        RestoreFailure::Unavailable { reason }
    } else {
        RestoreFailure::Refused { reason }
    }
}

/// The message counters a line recorded: `None` when it recorded none (a line from before
/// counters existed), else each object's (sent, received), zero for those left out.
pub(crate) fn counters(line: &Manifest) -> Option<BTreeMap<ObjectId, (u64, u64)>> {
    let bytes = line.metadata.get(COUNTERS_KEY)?;
    match rmp_serde::from_slice(bytes) {
        Ok(counters) => Some(counters),
        Err(e) => {
            tracing::warn!(line = %line.id, error = %e, "the line's message counters do not decode; redelivered messages are treated as inputs");
            None
        }
    }
}
