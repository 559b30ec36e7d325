//! The vocabulary of the engine: what goes in ([`Event`]), what comes out ([`Command`]), and the
//! small values they carry.

use std::collections::BTreeMap;
use std::fmt;

use cohort_object_api::{CheckpointId, ObjectId};

/// The types a particular runtime attaches to votes, opaque to the engine.
///
/// The engine never looks inside them: it only collects them and hands them back in
/// [`Command::Commit`]. That is what lets a participant live in another process later: a vote
/// carries metadata (where the state was written), never the state itself.
///
/// The bounds on the implementing type itself only let the event and command types derive
/// their traits; implement it on a unit struct with `#[derive(Clone, Debug, PartialEq)]`.
pub trait EngineTypes: Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Where a participant wrote its state (in-process: a segment entry location).
    type Entry: Clone + fmt::Debug + PartialEq + Send + Sync;
    /// One recorded in-transit message (channel state), with where its bytes were written.
    type InTransit: Clone + fmt::Debug + PartialEq + Send + Sync;
}

/// One attempt at a checkpoint. Round numbers grow by one per attempt and are never reused,
/// while the checkpoint id of an aborted attempt is reused by the next one.
///
/// Round 0 is "before any round": it is the colour of an object that has never captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Round(pub u64);

impl Round {
    /// The colour of objects that have not captured in any round yet.
    pub const ZERO: Round = Round(0);

    /// The round after this one.
    pub fn next(self) -> Round {
        Round(self.0.saturating_add(1))
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Names a pending manual trigger, so that its answer can be routed back to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TriggerId(pub u64);

/// What a participant reports about its state in a yes vote.
#[derive(Clone, Debug, PartialEq)]
pub enum VotedState<E> {
    /// The state was captured and written; `E` says where.
    Written(E),
    /// The state has not changed since the last committed line (same generation): the previous
    /// entry is referenced, nothing was written.
    Unchanged,
}

/// A yes vote: the state's metadata and the participant's message counters at its cut.
#[derive(Clone, Debug, PartialEq)]
pub struct Ballot<E> {
    /// Where the state is, or that it is unchanged.
    pub state: VotedState<E>,
    /// Messages this participant sent to cohort members before its cut (cumulative).
    pub sent: u64,
    /// Messages this participant received from cohort members before its cut (cumulative).
    pub received: u64,
}

/// A participant's answer to a prepare.
#[derive(Clone, Debug, PartialEq)]
pub enum Vote<E> {
    /// Captured and written.
    Yes(Ballot<E>),
    /// Could not take part; the attempt aborts.
    No {
        /// Why, in the participant's words.
        reason: String,
    },
}

/// What the store said to a [`Command::Commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The manifest exists (created now, or an earlier retry of ours had landed).
    Committed,
    /// A writer with a newer epoch holds the slot: this coordinator is deposed.
    Fenced,
    /// Another writer of this epoch or an older one committed the slot first; `newest` is the
    /// newest manifest id the store now holds.
    Conflict {
        /// The newest id seen in the store.
        newest: CheckpointId,
    },
    /// The store did not answer, and reading the slot back showed no manifest of ours.
    Failed {
        /// The store's complaint.
        reason: String,
    },
}

/// The input of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<T: EngineTypes> {
    /// Time passed; the engine may start a periodic checkpoint or time one out.
    Tick,
    /// A manual trigger: answer `request` with the id once a checkpoint started after it commits.
    Trigger {
        /// Routes the answer back.
        request: TriggerId,
    },
    /// An object joined the cohort. It takes part from the next attempt on; an attempt in flight
    /// aborts, because the new member's messages could otherwise cross its cut unseen.
    Join {
        /// The new member.
        object: ObjectId,
    },
    /// An object left the cohort (recovery dropped it). An attempt it takes part in aborts.
    Leave {
        /// The member that left.
        object: ObjectId,
    },
    /// A participant's vote in `round`.
    Vote {
        /// The round voted in; a vote for another round is stale and ignored.
        round: Round,
        /// The voter.
        object: ObjectId,
        /// Its answer.
        vote: Vote<T::Entry>,
    },
    /// In-transit messages recorded (and written) by participants during `round`.
    ChannelState {
        /// The round they belong to.
        round: Round,
        /// The records.
        records: Vec<T::InTransit>,
    },
    /// The store's answer to [`Command::Commit`].
    CommitResult {
        /// The round that was committed.
        round: Round,
        /// The answer.
        outcome: CommitOutcome,
    },
    /// Stop starting checkpoints and abort the one in flight (recovery is about to run).
    Halt,
    /// Recovery finished: continue under `epoch`, after `last_committed` (the fence manifest).
    Resume {
        /// The epoch this coordinator now writes with.
        epoch: u64,
        /// The newest manifest id in the store; the next checkpoint gets the id after it.
        last_committed: CheckpointId,
    },
}

/// Why an attempt was aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// A participant voted no.
    Refused {
        /// Who.
        object: ObjectId,
        /// Its reason.
        reason: String,
    },
    /// Votes or channel state did not arrive within the timeout.
    Timeout {
        /// Participants that had not voted.
        missing_votes: usize,
        /// In-transit messages not yet recorded.
        missing_messages: u64,
    },
    /// An object joined or left while the attempt was in flight.
    MembershipChanged,
    /// More in-transit messages were recorded than the counters allow: a runtime bug.
    ChannelStateMismatch {
        /// Σ sent − Σ received over the votes.
        expected: i128,
        /// Messages recorded.
        recorded: u64,
    },
    /// The manifest write failed.
    Store {
        /// The store's complaint.
        reason: String,
    },
    /// Another writer of an older or equal epoch took the slot first.
    Conflict,
    /// A writer with a newer epoch holds the slot.
    Fenced,
    /// The coordinator halted (recovery).
    Halted,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Refused { object, reason } => write!(f, "{object} voted no: {reason}"),
            AbortReason::Timeout {
                missing_votes,
                missing_messages,
            } => write!(
                f,
                "timed out with {missing_votes} votes and {missing_messages} in-transit messages missing"
            ),
            AbortReason::MembershipChanged => {
                f.write_str("an object joined while it was in flight")
            }
            AbortReason::ChannelStateMismatch { expected, recorded } => write!(
                f,
                "{recorded} in-transit messages recorded but the counters allow {expected}"
            ),
            AbortReason::Store { reason } => write!(f, "the manifest write failed: {reason}"),
            AbortReason::Conflict => {
                f.write_str("another writer committed this checkpoint id first")
            }
            AbortReason::Fenced => f.write_str("a coordinator with a newer epoch took over"),
            AbortReason::Halted => f.write_str("the coordinator halted for recovery"),
        }
    }
}

/// The outcome of an attempt, announced to its participants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The manifest exists: run `on_committed`.
    Committed,
    /// It never will: run `on_aborted`.
    Aborted(AbortReason),
}

/// The output of the engine: what the runtime must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Command<T: EngineTypes> {
    /// Phase 1: ask every participant to prepare and capture for `round`.
    Prepare {
        /// The checkpoint id being attempted.
        id: CheckpointId,
        /// The attempt.
        round: Round,
        /// Who must vote.
        participants: Vec<ObjectId>,
    },
    /// Every vote is yes and the channel state is complete: create the manifest. This is the
    /// single commit point; answer with [`Event::CommitResult`].
    Commit {
        /// The checkpoint id.
        id: CheckpointId,
        /// The attempt.
        round: Round,
        /// Every participant's ballot.
        ballots: BTreeMap<ObjectId, Ballot<T::Entry>>,
        /// Every recorded in-transit message.
        in_transit: Vec<T::InTransit>,
    },
    /// Phase 2: tell the participants how `round` ended.
    Decided {
        /// The checkpoint id.
        id: CheckpointId,
        /// The attempt.
        round: Round,
        /// Committed or aborted.
        decision: Decision,
        /// Who took part.
        participants: Vec<ObjectId>,
    },
    /// Delete whatever the aborted `round` wrote (`discard_round`).
    Discard {
        /// The checkpoint id.
        id: CheckpointId,
        /// The aborted attempt.
        round: Round,
    },
    /// Answer a manual trigger.
    Reply {
        /// The trigger being answered.
        request: TriggerId,
        /// The committed id, or why the attempt serving it failed.
        result: Result<CheckpointId, TriggerFailure>,
    },
    /// The cohort's health changed.
    Health(Health),
}

/// Why a manual trigger got no checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerFailure {
    /// The attempt serving it aborted; a later trigger may succeed.
    Aborted(AbortReason),
    /// The coordinator was fenced by a newer one and takes no more checkpoints.
    Fenced,
}

/// Whether checkpoints are succeeding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// False once more consecutive attempts failed than the tolerated number.
    pub healthy: bool,
    /// Attempts that failed in a row.
    pub consecutive_failures: u32,
    /// The reason of the last failure, if the last attempt failed.
    pub last_failure: Option<AbortReason>,
}
