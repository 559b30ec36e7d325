//! The one restore loader: what rolling a host's objects back to a line needs, read from the
//! store where the objects live (the in-process runtime or a node), checked as it is read.

use std::collections::{BTreeMap, HashMap};

use cohort_checkpoint::{CheckpointStore, Manifest};
use cohort_object_api::{CheckpointId, EncodedState, ErrorKind, ObjectError, ObjectId};

use super::mailbox;
use super::object::{Control, Held, LineState, RestoreOrder};
use crate::engine::{CutState, RestoreFailure, Round};
use crate::error::Error;

/// The manifest metadata key holding the message counters (sent, received) of every object at
/// its cut. Objects with both at zero are left out (a reader takes a missing one as zero), so
/// objects that never messaged cost nothing; a manifest without the key (written before it
/// existed) has no counters, and its in-transit messages are redelivered as inputs.
pub const COUNTERS_KEY: &str = "cohort.counters";

/// The last line a host applied: committed (its decision reached the host, so every object
/// it asked knows its entry) or restored. `None` while a restore is under way or failed, and
/// before either.
#[derive(Debug, Default)]
pub(crate) struct AppliedLine(std::sync::atomic::AtomicU64);

impl AppliedLine {
    /// The line, if any.
    pub(crate) fn get(&self) -> Option<CheckpointId> {
        let id = self.0.load(std::sync::atomic::Ordering::SeqCst);
        (id != 0).then(|| CheckpointId::new(id))
    }

    /// `line` is applied (`None`: nothing known is).
    pub(crate) fn set(&self, line: Option<CheckpointId>) {
        let id = line.map_or(0, CheckpointId::get);
        self.0.store(id, std::sync::atomic::Ordering::SeqCst);
    }

    /// A release ended a restore at `line`: the fence written on the line restored (the same
    /// entries under a newer id), or the line. Kept only if the restore here succeeded.
    pub(crate) fn released_at(&self, line: Option<CheckpointId>) {
        if let Some(line) = line
            && self.get().is_some()
        {
            self.set(Some(line));
        }
    }
}

/// What a host's objects said when it held them for a restore ([`Held`]), and the line they
/// were about: the last line the host applied (committed or restored).
#[derive(Debug, Default)]
pub(crate) struct HeldObjects {
    /// The line the host applied last; `None` when it has applied none.
    pub(crate) applied: Option<CheckpointId>,
    /// Each object whose state still is its entry in that line, with the entry's generation.
    pub(crate) unchanged: HashMap<ObjectId, u64>,
}

impl HeldObjects {
    /// Tells each of `objects` (its id and control queue) to hold: the answers to
    /// [`collect`](Self::collect). The one hold of both hosts (sent under their table's lock,
    /// collected after it).
    pub(crate) fn hold<'a>(
        objects: impl IntoIterator<Item = (&'a ObjectId, &'a mailbox::Reference)>,
    ) -> Vec<(ObjectId, tokio::sync::oneshot::Receiver<Held>)> {
        objects
            .into_iter()
            .filter_map(|(id, control)| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                control
                    .send_control(Control::Hold(tx))
                    .ok()
                    .map(|()| (id.clone(), rx))
            })
            .collect()
    }

    /// Waits for the answers of a [`hold`](Self::hold), about line `applied`: returns once
    /// each object finished its current handler.
    pub(crate) async fn collect(
        applied: Option<CheckpointId>,
        acks: Vec<(ObjectId, tokio::sync::oneshot::Receiver<Held>)>,
    ) -> Self {
        let mut unchanged = HashMap::new();
        for (object, ack) in acks {
            // An object whose task ended holds nothing.
            if let Ok(Held {
                unchanged_at: Some(generation),
            }) = ack.await
            {
                unchanged.insert(object, generation);
            }
        }
        Self { applied, unchanged }
    }

    /// The objects of `line` (hosted here) whose state is their entry in it already, with
    /// the entry's generation: their entry is the one in the line the host applied (the same
    /// line, or one that shares the entry, as a fence on it does), and their state still has
    /// that entry's generation. Exact: an entry names the bytes it holds, and the generations
    /// of one lineage do not repeat. The applied line's manifest is read when it is another
    /// line; if it cannot be, everything is read.
    async fn kept_in(
        &self,
        store: &CheckpointStore,
        line: &Manifest,
        hosted: impl Fn(&ObjectId) -> bool,
    ) -> HashMap<ObjectId, u64> {
        let mut kept = HashMap::new();
        let Some(applied) = self.applied.filter(|_| !self.unchanged.is_empty()) else {
            return kept;
        };
        let other = if applied == line.id {
            None
        } else {
            match store.read_manifest(applied).await {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::debug!(line = %line.id, %applied, error = %e, "cannot read the line last applied; the restore reads every state");
                    return kept;
                }
            }
        };
        for (object, entry) in &line.objects {
            let Some(generation) = entry.generation else {
                continue;
            };
            let same_entry = other
                .as_ref()
                .is_none_or(|m| m.objects.get(object).is_some_and(|e| e == entry));
            if same_entry && self.unchanged.get(object) == Some(&generation) && hosted(object) {
                kept.insert(object.clone(), generation);
            }
        }
        kept
    }
}

/// One line's states, counters and in-transit messages for the objects of one host.
pub(crate) struct LineStates {
    states: HashMap<ObjectId, LineState>,
    counters: Option<BTreeMap<ObjectId, (u64, u64)>>,
    redeliver: HashMap<ObjectId, Vec<(ObjectId, u64, EncodedState)>>,
    /// In-transit messages to redeliver, in all.
    pub(crate) redelivered: usize,
}

impl LineStates {
    /// Reads what restoring the objects `hosted` picks to `line` needs. The state of an object
    /// that `held` says is its entry in this line already is not read: a failover or a
    /// recovery to the line a host last applied reads only what changed since (or none of
    /// it). Damage found now (the line verified when it was chosen) is the store's error,
    /// which [`restore_failure`] sorts.
    pub(crate) async fn read(
        store: &CheckpointStore,
        line: &Manifest,
        hosted: impl Fn(&ObjectId) -> bool,
        held: &HeldObjects,
    ) -> cohort_checkpoint::Result<Self> {
        let kept = held.kept_in(store, line, &hosted).await;
        let read = store
            .read_states_of(line, |o| hosted(o) && !kept.contains_key(o))
            .await?;
        let messages = store.read_in_transit_to(line, &hosted).await?;
        let mut redeliver: HashMap<ObjectId, Vec<(ObjectId, u64, EncodedState)>> = HashMap::new();
        let redelivered = messages.len();
        for (entry, state) in messages {
            redeliver
                .entry(entry.to)
                .or_default()
                .push((entry.from, entry.seq, state));
        }
        let mut states: HashMap<ObjectId, LineState> = kept
            .into_iter()
            .map(|(object, generation)| (object, LineState::Unchanged { generation }))
            .collect();
        states.extend(read.into_iter().map(|(object, state)| {
            let generation = line.objects.get(&object).and_then(|e| e.generation);
            (object, LineState::Restore { state, generation })
        }));
        Ok(Self {
            states,
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
        let state = self.states.remove(object).unwrap_or(LineState::NotInLine);
        let (sent, received) = match &self.counters {
            Some(counters) if state.in_line() => counters.get(object).copied().unwrap_or((0, 0)),
            _ => (0, 0),
        };
        RestoreOrder {
            discard: discard || state.in_line(),
            state,
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
