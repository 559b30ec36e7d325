//! The vocabulary of the engine: what goes in ([`Event`]), what comes out ([`Command`]), and the
//! small values they carry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use cohort_object_api::{CheckpointId, ObjectId};

/// The types a particular runtime attaches to votes, opaque to the engine.
///
/// The engine never looks inside them: it only collects them and hands them back in
/// [`Command::Commit`]. That is what lets a participant live in another process: a vote carries
/// metadata (where the state was written), never the state itself.
///
/// The bounds on the implementing type itself only let the event and command types derive
/// their traits; implement it on a unit struct with `#[derive(Clone, Debug, PartialEq)]`.
pub trait EngineTypes: Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Where a participant wrote its state (a segment entry location).
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

/// Where participants live: the in-process runtime is one host, each node of a coordinator
/// service is one (named by the node's name). The engine decides per host: a host is asked to
/// prepare, seal, restore and release, and a lost host aborts what it takes part in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(Arc<str>);

impl HostId {
    /// The host named `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The one host of the in-process runtime.
    pub fn local() -> Self {
        Self::new("local")
    }

    /// The host's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names a pending manual trigger, so that its answer can be routed back to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TriggerId(pub u64);

/// Names a caller waiting for a recovery (`Cohort::recover`), so that its answer can be routed
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecoverId(pub u64);

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
    /// The manifest exists (created now, or an earlier create of ours had landed).
    Committed,
    /// A writer with a newer epoch holds the slot or the one before it: this coordinator is
    /// deposed.
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

/// The recovery line, as the engine needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineInfo {
    /// The line's checkpoint id (the newest committed manifest whose blobs verify).
    pub id: CheckpointId,
    /// The objects the line holds, with the host that held each when it was committed (from the
    /// line's state table; `None` when the line does not say).
    pub objects: BTreeMap<ObjectId, Option<HostId>>,
    /// The type name each object's state was recorded with: a new leader re-creates an object
    /// whose host lost it from the factory of this type.
    pub types: BTreeMap<ObjectId, String>,
    /// Each object's message counters in the line, (sent, received), with the in-transit
    /// messages to it counted as received: what an object that is no longer a member (it was
    /// removed) adds to every later cut's balance.
    pub settled: BTreeMap<ObjectId, (u64, u64)>,
}

/// What a host says when it registers ([`Event::Register`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The host.
    pub host: HostId,
    /// Whether it resumed its session (see [`Event::HostUp`]).
    pub resumed: bool,
    /// The type names it can create (replaces what it declared before).
    pub types: BTreeSet<String>,
    /// The objects it holds.
    pub objects: Vec<ObjectId>,
    /// The type of each announced object that declared one.
    pub object_types: BTreeMap<ObjectId, String>,
}

/// Why a host could not restore its objects to a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFailure {
    /// The line's bytes are unusable: an entry with a valid crc whose content does not decode.
    /// The engine treats it as damage: it falls back to the line before this one, loudly.
    Damaged {
        /// What is damaged, in the host's words.
        reason: String,
    },
    /// The line is intact but this build cannot restore it (a state of a newer schema, a
    /// missing migration, a type that does not match): falling back would lose a committed
    /// line, so the host stays held until an operator fixes the cause.
    Refused {
        /// Why, in the host's words.
        reason: String,
    },
    /// The store did not answer the host (unreachable, timed out, throttled): nothing is wrong
    /// with the line, so the engine orders the restore again after a backoff
    /// ([`Config::retry_ms`](super::Config::retry_ms), doubling).
    Unavailable {
        /// What the store said, in the host's words.
        reason: String,
    },
}

impl RestoreFailure {
    /// The host's words.
    pub fn reason(&self) -> &str {
        match self {
            Self::Damaged { reason } | Self::Refused { reason } | Self::Unavailable { reason } => {
                reason
            }
        }
    }
}

impl fmt::Display for RestoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged { reason } => write!(f, "the line is damaged: {reason}"),
            Self::Refused { reason } => write!(f, "cannot restore the line: {reason}"),
            Self::Unavailable { reason } => {
                write!(
                    f,
                    "the store did not answer the restore (it is retried): {reason}"
                )
            }
        }
    }
}

/// What the store said to a [`Command::WriteFence`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The fence is committed at `id`: the newest manifest, pointing at the line.
    Written {
        /// The fence's checkpoint id.
        id: CheckpointId,
    },
    /// The recovery line is not the one restored any more (or there is none): restore again.
    LineMoved,
    /// A newer epoch owns the store: this coordinator is deposed.
    Fenced,
    /// The store did not answer; nothing of ours is there.
    Failed {
        /// The store's complaint.
        reason: String,
    },
}

/// Why a recovery started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryCause {
    /// A caller asked (`Cohort::recover`).
    Requested,
    /// A host was lost and did not come back within the host timeout.
    HostDead {
        /// The host.
        host: HostId,
        /// Its objects that were re-placed on surviving hosts.
        moved: usize,
    },
    /// A host started a new session while its old one was alive: its old process is gone.
    HostRestarted {
        /// The host.
        host: HostId,
    },
    /// A coordinator took over: every host rolls back to the line the fence points at.
    TakeOver,
    /// The line restored turned out damaged (a restore could not decode it): falling back.
    Damaged {
        /// The damaged line.
        line: CheckpointId,
    },
    /// The recovery line moved while the last recovery restored (another writer committed).
    LineMoved,
    /// [`LOST_MESSAGE_TIMEOUTS`](super::LOST_MESSAGE_TIMEOUTS) attempts in a row timed out
    /// with every vote in and in-transit messages missing: they are taken for lost.
    MessagesLost {
        /// Messages missing at the last timeout.
        missing: u64,
    },
    /// Objects moved at a checkpoint boundary, off draining nodes or onto nodes that joined
    /// ([`Event::Drain`], [`Event::HostTypes`]).
    Rebalance {
        /// How many.
        moved: usize,
    },
    /// Objects removed at a checkpoint boundary ([`Event::Remove`]).
    Removed {
        /// How many.
        objects: usize,
    },
    /// An object failed: the restart policy restarts the cohort from the line.
    ObjectFailed {
        /// The object.
        object: ObjectId,
        /// Its error.
        error: String,
        /// This restart's number within the policy's window (1 for the first).
        restart: u32,
    },
}

impl fmt::Display for RecoveryCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("requested"),
            Self::HostDead { host, moved: 0 } => write!(f, "node {host} was lost"),
            Self::HostDead { host, moved } => {
                write!(
                    f,
                    "node {host} was lost ({moved} objects moved to other nodes)"
                )
            }
            Self::HostRestarted { host } => write!(f, "node {host} restarted"),
            Self::TakeOver => f.write_str("a coordinator took over"),
            Self::Damaged { line } => write!(f, "line {line} is damaged"),
            Self::LineMoved => f.write_str("the recovery line moved"),
            Self::MessagesLost { missing } => write!(
                f,
                "{missing} in-transit messages were never received nor recorded in {} attempts in a row: taken for lost",
                super::LOST_MESSAGE_TIMEOUTS
            ),
            Self::Removed { objects } => {
                write!(
                    f,
                    "{objects} objects removed from the cohort at a checkpoint boundary"
                )
            }
            Self::Rebalance { moved } => {
                write!(
                    f,
                    "{moved} objects moved between nodes at a checkpoint boundary"
                )
            }
            Self::ObjectFailed {
                object,
                error,
                restart,
            } => write!(
                f,
                "object {object} failed ({error}): restart {restart} within the policy's window"
            ),
        }
    }
}

/// Why a recovery failed (the engine then waits for another [`Event::Recover`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryFailure {
    /// The line holds objects that are not members (in process: spawn them first). Nothing was
    /// touched.
    MissingObjects {
        /// The line.
        line: CheckpointId,
        /// The objects it holds that are not members.
        missing: Vec<ObjectId>,
    },
    /// The store failed (reading the line or writing the fence).
    Store {
        /// The store's complaint.
        reason: String,
    },
    /// A host could not restore the line.
    Restore {
        /// The host.
        host: HostId,
        /// Why.
        failure: RestoreFailure,
    },
    /// A newer epoch owns the store.
    Fenced,
}

impl fmt::Display for RecoveryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingObjects { line, missing } => write!(
                f,
                "line {line} holds {} objects that are not members",
                missing.len()
            ),
            Self::Store { reason } => write!(f, "the store failed: {reason}"),
            Self::Restore { host, failure } => write!(f, "{host}: {failure}"),
            Self::Fenced => f.write_str("a coordinator with a newer epoch took over"),
        }
    }
}

/// A finished recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The line every object was restored to; `None` when nothing was ever committed.
    pub line: Option<CheckpointId>,
    /// The fence written on top of it (none when there was no line, or the takeover's fence
    /// already was).
    pub fence: Option<CheckpointId>,
    /// The epoch the cohort writes with.
    pub epoch: u64,
    /// Members dropped because the line does not hold them (in process).
    pub dropped: Vec<ObjectId>,
    /// Lines skipped because a host found them damaged while restoring.
    pub skipped_damaged: Vec<CheckpointId>,
}

/// The input of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<T: EngineTypes> {
    /// Time passed; the engine may start a periodic checkpoint, time one out, declare a host
    /// dead or retry a store command.
    Tick,
    /// A manual trigger: answer `request` with the id once a checkpoint started after it commits.
    Trigger {
        /// Routes the answer back.
        request: TriggerId,
    },
    /// An object joined the cohort on `host`. It takes part from the next attempt on; an attempt
    /// in flight aborts, because the new member's messages could otherwise cross its cut unseen.
    Join {
        /// The new member.
        object: ObjectId,
        /// Where it lives.
        host: HostId,
    },
    /// `object` is of type `type_name` (its `Checkpointable::type_name`): if its host dies, it
    /// may be re-placed on a surviving host that can create objects of that type.
    ObjectType {
        /// The member (or future member).
        object: ObjectId,
        /// Its type's stable name.
        type_name: String,
    },
    /// `host` can create objects of these types (it registered a factory for each): the engine
    /// may place objects of a dead host on it. Replaces what the host declared before.
    HostTypes {
        /// The host.
        host: HostId,
        /// The type names it can create.
        types: BTreeSet<String>,
    },
    /// Application code asks the cohort to create `object` of type `type_name`: the engine
    /// places it on the up host that declared the type and holds the fewest members, and
    /// answers [`Command::Create`] (or [`Command::CreateRefused`]). It takes part from the next
    /// attempt on; an attempt in flight aborts, as for [`Event::Join`].
    Create {
        /// The new object's id.
        object: ObjectId,
        /// Its type's stable name.
        type_name: String,
    },
    /// `object`'s handler failed (returned an error or panicked) while it ran in
    /// `incarnation`: it votes no until a recovery restores it. The engine restarts the cohort
    /// under its [`RestartPolicy`](super::RestartPolicy), or halts it beyond.
    ObjectFailed {
        /// The object.
        object: ObjectId,
        /// The incarnation its host ran in: a failure of an older one was already rolled back.
        incarnation: u64,
        /// The handler's error, or the panic's message.
        error: String,
    },
    /// An object left the cohort. An attempt it takes part in aborts.
    Leave {
        /// The member that left.
        object: ObjectId,
    },
    /// A host connected. `resumed`: it kept its session (a blip within the host timeout: nothing
    /// was lost). Otherwise it is new or restarted, and is restored before its objects take part.
    HostUp {
        /// The host.
        host: HostId,
        /// Whether it resumed its session.
        resumed: bool,
    },
    /// A host registered: it connected and announced what it holds and what it can create.
    /// One event, so that the restore it is ordered knows what it lacks: in a new session (a
    /// restarted process), every object placed on it that it did not announce, of a type it
    /// can create, is created again from its factory and restored from the line (objects
    /// moved there earlier die with the process that held them).
    ///
    /// Equivalent to [`Event::HostUp`], then [`Event::HostTypes`], [`Event::ObjectType`] for
    /// each typed object and [`Event::Join`] for each announced one, with the restore last.
    Register(Registration),
    /// A host's connection is gone. What it takes part in aborts; if it is not back within the
    /// host timeout it is dead and the cohort recovers.
    HostLost {
        /// The host.
        host: HostId,
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
    /// Participants on `host` counted in `round` without being asked: each is clean (its state
    /// and counters are those of the last committed line, and it handled nothing since), so
    /// each votes yes, unchanged, with its counters of the line. One event for all of them,
    /// sent once per host and round: a host's idle objects cost the engine nothing each. The
    /// commit takes their entries and counters from the line before.
    Clean {
        /// The round counted in.
        round: Round,
        /// The host.
        host: HostId,
        /// How many of its participants.
        objects: usize,
        /// Their messages sent minus received (their counters summed), for the cut's balance.
        balance: i128,
    },
    /// In-transit messages recorded (and written) by participants on `host` during `round`.
    ChannelState {
        /// The round they belong to.
        round: Round,
        /// Where they were recorded (it seals them before the commit).
        host: HostId,
        /// The records.
        records: Vec<T::InTransit>,
    },
    /// `host` made its channel state of `round` durable ([`Command::Seal`]), or could not.
    Sealed {
        /// The round.
        round: Round,
        /// The host.
        host: HostId,
        /// `Err`: why the channel state is not durable.
        result: Result<(), String>,
    },
    /// The store's answer to [`Command::Commit`].
    CommitResult {
        /// The round that was committed.
        round: Round,
        /// The answer.
        outcome: CommitOutcome,
    },
    /// Roll every object back to the recovery line; `request` is answered in
    /// [`Command::Recovered`].
    Recover {
        /// Routes the answer back.
        request: RecoverId,
    },
    /// A coordinator took over under this engine's epoch, after fencing at `line` (the recovery
    /// line it pointed the fence at; `None` when the store held no line): every host rolls back
    /// to it before any runs again.
    TakeOver {
        /// The line the takeover's fence points at, with its placement.
        line: Option<LineInfo>,
    },
    /// The answer to [`Command::ReadLine`].
    LineRead {
        /// The recovery it was read for.
        recovery: u64,
        /// The line (`None`: nothing committed), or the store's complaint.
        result: Result<Option<LineInfo>, String>,
    },
    /// `host`'s answer to [`Command::Restore`].
    Restored {
        /// The recovery answered (0: the restore of a joining host outside any recovery).
        recovery: u64,
        /// The incarnation of the [`Command::Restore`] answered. Only an answer to the current
        /// incarnation counts: recovery numbers start again under each leader, so a late
        /// answer to an earlier leader's order could otherwise release a host still restoring.
        incarnation: u64,
        /// The host.
        host: HostId,
        /// `Err`: why it could not.
        result: Result<(), RestoreFailure>,
    },
    /// The store's answer to [`Command::WriteFence`].
    FenceResult {
        /// The recovery it was written for.
        recovery: u64,
        /// The answer.
        outcome: FenceOutcome,
    },
    /// This coordinator no longer leads (its leadership stepped down, or found a newer epoch):
    /// from now on the engine writes nothing to the store.
    Deposed,
    /// An operator removes `object` from the cohort (`cohort remove`). At the next commit
    /// (which still holds it) its host drops it and the cohort recovers to that line without
    /// it: its state is in no later line, messages to it in that line are discarded, and its
    /// message counters stay in every later line so the cut still balances.
    /// [`Command::RemoveRefused`] when it is not a member or the cohort runs in process.
    Remove {
        /// The member to remove.
        object: ObjectId,
    },
    /// An operator drains `host` (`cohort drain`): it gets no new objects, and its objects move
    /// to the other nodes at the next commit ([`RecoveryCause::Rebalance`]); once it holds
    /// none it may stop. Refused ([`Command::DrainRefused`]) for a host that is not up.
    Drain {
        /// The node.
        host: HostId,
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
    /// A participant's host is not connected, or not restored yet.
    HostAway {
        /// The host.
        host: HostId,
        /// One of its participants.
        object: ObjectId,
    },
    /// A participant's host was lost during the attempt.
    HostLost {
        /// The host.
        host: HostId,
    },
    /// More in-transit messages were recorded than the counters allow: a runtime bug.
    ChannelStateMismatch {
        /// Σ sent − Σ received over the votes.
        expected: i128,
        /// Messages recorded.
        recorded: u64,
    },
    /// A host could not make its channel state durable.
    SealFailed {
        /// The host.
        host: HostId,
        /// Why.
        reason: String,
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
    /// The cohort is recovering or halted (or this coordinator stepped down).
    Halted,
}

impl AbortReason {
    /// Whether the commit point itself failed (the store refused or failed the manifest create,
    /// or a seal failed), as opposed to an abort before it.
    pub fn is_commit_failure(&self) -> bool {
        matches!(
            self,
            Self::Store { .. } | Self::Conflict | Self::SealFailed { .. }
        )
    }
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
                f.write_str("an object joined or left while it was in flight")
            }
            AbortReason::HostAway { host, object } => {
                write!(
                    f,
                    "{object}: its node {host} is not connected or not restored"
                )
            }
            AbortReason::HostLost { host } => write!(f, "node {host} was lost"),
            AbortReason::ChannelStateMismatch { expected, recorded } => write!(
                f,
                "{recorded} in-transit messages recorded but the counters allow {expected}"
            ),
            AbortReason::SealFailed { host, reason } => {
                write!(f, "node {host} could not seal its channel state: {reason}")
            }
            AbortReason::Store { reason } => write!(f, "the manifest write failed: {reason}"),
            AbortReason::Conflict => {
                f.write_str("another writer committed this checkpoint id first")
            }
            AbortReason::Fenced => f.write_str("a coordinator with a newer epoch took over"),
            AbortReason::Halted => f.write_str("the cohort is recovering or halted"),
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

/// Participants of an attempt, grouped by their host, each group sorted.
pub type ByHost = Arc<BTreeMap<HostId, Vec<ObjectId>>>;

/// The output of the engine: what the runtime must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Command<T: EngineTypes> {
    /// Phase 1: ask every host to prepare and capture its participants for `round`.
    Prepare {
        /// The checkpoint id being attempted.
        id: CheckpointId,
        /// The attempt.
        round: Round,
        /// Who must vote, by host.
        hosts: ByHost,
    },
    /// Every vote is yes and the channel state is complete: `hosts` make the channel state they
    /// recorded durable and answer [`Event::Sealed`]; then the engine commits.
    Seal {
        /// The attempt.
        round: Round,
        /// The hosts that recorded channel state.
        hosts: Vec<HostId>,
    },
    /// Everything is durable: create the manifest. This is the single commit point; answer with
    /// [`Event::CommitResult`].
    Commit {
        /// The checkpoint id.
        id: CheckpointId,
        /// The attempt.
        round: Round,
        /// Every participant, ascending.
        participants: Arc<[ObjectId]>,
        /// The ballot of every participant that voted itself, ascending by id, one each; the
        /// others were counted clean ([`Event::Clean`]): their entries and counters are the
        /// previous line's. A list rather than a map: the commit reads it once, in order, and
        /// a map of a million ballots is a million small allocations made and freed per line.
        ballots: Vec<(ObjectId, Ballot<T::Entry>)>,
        /// Every recorded in-transit message.
        in_transit: Vec<T::InTransit>,
        /// The counters of removed objects, (sent, received), recorded in every line (with
        /// no state) so that a recovery to it knows what they add to the cut's balance.
        retired: BTreeMap<ObjectId, (u64, u64)>,
    },
    /// Phase 2: tell the hosts that were asked to prepare how `round` ended.
    Decided {
        /// The checkpoint id.
        id: CheckpointId,
        /// The attempt.
        round: Round,
        /// Committed or aborted.
        decision: Decision,
        /// The hosts sent the attempt's prepare.
        hosts: Vec<HostId>,
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
    /// A recovery starts (for logs and metrics): attempts stop until it ends.
    Recovering {
        /// Numbers this recovery.
        recovery: u64,
        /// Why.
        cause: RecoveryCause,
    },
    /// Read the recovery line (the newest committed manifest whose blobs verify, treating the
    /// ones in `skip` as damaged) and answer [`Event::LineRead`].
    ReadLine {
        /// The recovery it is for.
        recovery: u64,
        /// Lines a host could not decode: damaged although they verify.
        skip: Vec<CheckpointId>,
    },
    /// `host` holds its objects, drops every message sent after the line, restores its objects
    /// to `line` (its objects that the line does not hold keep their state, unless listed in
    /// `drop`) with colour `colour`, queues the line's in-transit messages to them, and answers
    /// [`Event::Restored`]. Its objects stay held until [`Command::Release`].
    Restore {
        /// The recovery (0: a joining host restored outside any recovery).
        recovery: u64,
        /// The host.
        host: HostId,
        /// The line; `None`: nothing was ever committed, objects keep their state.
        line: Option<CheckpointId>,
        /// The colour objects take (the newest round started).
        colour: Round,
        /// The incarnation after the recovery: peer messages of older ones are dropped.
        incarnation: u64,
        /// Members on this host that the line does not hold and that leave the cohort.
        drop: Vec<ObjectId>,
        /// Objects the engine placed on this host that it does not host yet (their host died):
        /// it creates each from its factory for the type named, before restoring them from the
        /// line (an object the line does not hold keeps the state its factory gives it).
        create: Vec<(ObjectId, String)>,
    },
    /// `host` creates `object` from its factory for `type_name` now ([`Event::Create`]).
    Create {
        /// Where the engine placed it.
        host: HostId,
        /// The new member.
        object: ObjectId,
        /// Its type.
        type_name: String,
    },
    /// [`Event::Create`] was refused: nothing was placed.
    CreateRefused {
        /// The object asked for.
        object: ObjectId,
        /// Why, and what to do.
        reason: String,
    },
    /// `host` holds `objects` that now live on another host (it was declared dead and its
    /// objects were re-placed, or they moved off it at a checkpoint boundary): it must drop its
    /// copies without acting on them again.
    Disown {
        /// The host.
        host: HostId,
        /// The objects it must drop.
        objects: Vec<ObjectId>,
    },
    /// [`Event::Remove`] of `object` cannot be carried out.
    RemoveRefused {
        /// The object named.
        object: ObjectId,
        /// Why, and what to do.
        reason: String,
    },
    /// [`Event::Drain`] of `host` cannot be carried out.
    DrainRefused {
        /// The host named.
        host: HostId,
        /// Why, and what to do.
        reason: String,
    },
    /// Commit a fence manifest under `epoch` at the next id, pointing at `line` (the line every
    /// host restored); answer [`Event::FenceResult`]. Refused by the store when the recovery
    /// line is no longer `line` or a newer epoch wrote the newest manifest.
    WriteFence {
        /// The recovery it is for.
        recovery: u64,
        /// The epoch to fence under.
        epoch: u64,
        /// The line restored.
        line: CheckpointId,
        /// Lines a host could not decode, as in [`Command::ReadLine`].
        skip: Vec<CheckpointId>,
    },
    /// `hosts` handle messages again, in incarnation `incarnation`.
    Release {
        /// The hosts released.
        hosts: Vec<HostId>,
        /// The current incarnation.
        incarnation: u64,
        /// The manifest whose entries the released hosts' objects were restored to, when
        /// this release ends their restore: the fence written on the line (its entries are
        /// the line's), else the line. A host's next restore to it keeps the states that did
        /// not change since. `None` when the release restored nothing.
        line: Option<CheckpointId>,
    },
    /// A recovery ended; answer the callers that asked for one.
    Recovered {
        /// The recovery.
        recovery: u64,
        /// The callers waiting.
        requests: Vec<RecoverId>,
        /// What it did, or why it failed.
        result: Result<Recovered, RecoveryFailure>,
    },
    /// Objects failed more often than the restart policy allows: the cohort halted (no
    /// attempt, no restart) until a requested recovery.
    Halted(Halt),
    /// A newer epoch owns the store: this coordinator is deposed and writes nothing more (its
    /// leadership steps down).
    Deposed {
        /// What showed it.
        reason: String,
    },
}

/// Why a manual trigger got no checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerFailure {
    /// The attempt serving it aborted; a later trigger may succeed.
    Aborted(AbortReason),
    /// The coordinator was fenced by a newer one, or stepped down, and takes no more
    /// checkpoints.
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

/// Why a cohort halted beyond its restart policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Halt {
    /// The object whose failure went beyond the policy.
    pub object: ObjectId,
    /// Its error.
    pub error: String,
    /// Restarts within the policy's window before it.
    pub restarts: u32,
    /// The policy.
    pub policy: super::RestartPolicy,
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "object {} failed ({}) after {} restarts within {} ms, beyond the restart policy ({}); \
             held until a recovery is asked for (Cohort::recover, or a new leader's takeover)",
            self.object, self.error, self.restarts, self.policy.window_ms, self.policy
        )
    }
}
