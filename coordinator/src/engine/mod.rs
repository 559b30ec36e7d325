//! The two-phase checkpoint protocol as a pure state machine.
//!
//! [`Engine::handle`] takes the current time and one [`Event`] and returns the [`Command`]s the
//! runtime must carry out, in order. The engine does no IO, has no async and reads no clock, so
//! every protocol decision can be tested by comparing command vectors, and explored at random
//! (see the property test in `engine/tests`).
//!
//! One attempt goes:
//!
//! 1. [`Command::Prepare`] to every member. Each captures its state (or answers no) and writes
//!    it; the runtime reports [`Event::Vote`]s and, for messages that crossed a cut,
//!    [`Event::ChannelState`].
//! 2. When every member voted yes and the recorded in-transit messages number
//!    Σ sent − Σ received over the ballots, [`Command::Commit`]: the runtime creates the
//!    manifest, the single commit point, and answers [`Event::CommitResult`].
//! 3. [`Command::Decided`] tells the participants; an aborted attempt is also followed by
//!    [`Command::Discard`], and its id is reused by the next attempt under a new [`Round`].

mod cut;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cohort_object_api::{CheckpointId, ObjectId};

pub use cut::{CutState, Receipt};
pub use types::{
    AbortReason, Ballot, Command, CommitOutcome, Decision, EngineTypes, Event, Health, Round,
    TriggerFailure, TriggerId, Vote, VotedState,
};

/// The engine's settings, in milliseconds (the runtime converts [`Settings`](crate::Settings)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Start a checkpoint this often; `None` takes checkpoints only on trigger.
    pub interval_ms: Option<u64>,
    /// Abort an attempt whose votes and channel state are not all in after this long.
    pub timeout_ms: u64,
    /// Leave at least this long between the end of one attempt and the start of the next.
    pub min_pause_ms: u64,
    /// Consecutive failed attempts tolerated before the cohort is reported unhealthy.
    pub tolerable_failures: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval_ms: None,
            timeout_ms: 60_000,
            min_pause_ms: 0,
            tolerable_failures: 0,
        }
    }
}

/// What the engine knows when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The time the engine starts at (ms, any monotonic origin).
    pub now_ms: u64,
    /// The epoch this coordinator writes with.
    pub epoch: u64,
    /// The newest manifest id in the store ([`CheckpointId::ZERO`] when empty).
    pub last_committed: CheckpointId,
    /// Rounds of this engine are numbered after this one (the colours objects already carry).
    pub round_floor: Round,
}

/// Whether the engine is taking checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Taking checkpoints.
    Running,
    /// Halted for recovery; resumes on [`Event::Resume`].
    Halted,
    /// A newer coordinator took over; resumes only on [`Event::Resume`] with a newer epoch.
    Fenced,
}

#[derive(Debug)]
struct Attempt<T: EngineTypes> {
    id: CheckpointId,
    round: Round,
    started_ms: u64,
    /// The members when the attempt started.
    roster: Arc<Roster>,
    /// By participant index, so that they come out sorted without sorting.
    ballots: Vec<Option<Ballot<T::Entry>>>,
    voted: usize,
    /// Σ sent − Σ received over the ballots so far: the messages sent before their sender's
    /// cut and not received before their receiver's, which must all be recorded.
    balance: i128,
    in_transit: Vec<T::InTransit>,
    /// The manifest write was requested: the attempt can no longer time out or abort on its
    /// own; only the store's answer ends it.
    committing: bool,
    waiters: Vec<TriggerId>,
}

/// The members, sorted as announced, and indexed for the votes: votes of 100,000 objects must
/// not cost a tree search each. Kept while the membership stays the same, so that an attempt
/// does not rebuild the index.
#[derive(Debug)]
struct Roster {
    participants: Vec<ObjectId>,
    index: HashMap<ObjectId, usize>,
}

impl Roster {
    fn of(members: &BTreeSet<ObjectId>) -> Self {
        Self {
            participants: members.iter().cloned().collect(),
            index: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.clone(), i))
                .collect(),
        }
    }
}

/// The coordinator's side of the protocol. See the [module docs](self).
#[derive(Debug)]
pub struct Engine<T: EngineTypes> {
    config: Config,
    status: Status,
    epoch: u64,
    last_committed: CheckpointId,
    last_round: Round,
    members: BTreeSet<ObjectId>,
    /// Built from `members` by the first attempt after they changed.
    roster: Option<Arc<Roster>>,
    attempt: Option<Attempt<T>>,
    /// Triggers that wait for an attempt that starts after them.
    waiting: Vec<TriggerId>,
    /// When the periodic schedule next wants an attempt.
    next_periodic_ms: Option<u64>,
    /// When the last attempt ended, for the minimum pause.
    last_finished_ms: Option<u64>,
    health: Health,
}

impl<T: EngineTypes> Engine<T> {
    /// A running engine with no members.
    pub fn new(config: Config, start: Start) -> Self {
        let next_periodic_ms = config.interval_ms.map(|i| start.now_ms.saturating_add(i));
        Self {
            config,
            status: Status::Running,
            epoch: start.epoch,
            last_committed: start.last_committed,
            last_round: start.round_floor,
            members: BTreeSet::new(),
            roster: None,
            attempt: None,
            waiting: Vec::new(),
            next_periodic_ms,
            last_finished_ms: None,
            health: Health {
                healthy: true,
                consecutive_failures: 0,
                last_failure: None,
            },
        }
    }

    /// The epoch this engine writes with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The newest committed (or fence) manifest id this engine knows.
    pub fn last_committed(&self) -> CheckpointId {
        self.last_committed
    }

    /// The newest round this engine started (or its floor).
    pub fn last_round(&self) -> Round {
        self.last_round
    }

    /// The attempt in flight: its id and round.
    pub fn in_flight(&self) -> Option<(CheckpointId, Round)> {
        self.attempt.as_ref().map(|a| (a.id, a.round))
    }

    /// Running, halted or fenced.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The current health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The current members.
    pub fn members(&self) -> &BTreeSet<ObjectId> {
        &self.members
    }

    /// The earliest time at which [`Event::Tick`] could make a difference, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if let Some(a) = &self.attempt {
            return (!a.committing).then(|| a.started_ms.saturating_add(self.config.timeout_ms));
        }
        if self.status != Status::Running {
            return None;
        }
        let wanted = if self.waiting.is_empty() {
            self.next_periodic_ms?
        } else {
            0
        };
        Some(wanted.max(self.earliest_start_ms()))
    }

    fn earliest_start_ms(&self) -> u64 {
        self.last_finished_ms
            .map_or(0, |t| t.saturating_add(self.config.min_pause_ms))
    }

    /// Feeds one event at time `now_ms` and returns the commands to carry out, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<T>) -> Vec<Command<T>> {
        let mut out = Vec::new();
        match event {
            Event::Tick => self.check_timeout(now_ms, &mut out),
            Event::Trigger { request } => match self.status {
                Status::Running | Status::Halted => self.waiting.push(request),
                Status::Fenced => out.push(Command::Reply {
                    request,
                    result: Err(TriggerFailure::Fenced),
                }),
            },
            Event::Join { object } => {
                if self.members.insert(object) {
                    self.roster = None;
                    let in_flight = self.attempt.as_ref().is_some_and(|a| !a.committing);
                    if in_flight {
                        self.abort(now_ms, AbortReason::MembershipChanged, &mut out);
                    }
                }
            }
            Event::Leave { object } => {
                if self.members.remove(&object) {
                    self.roster = None;
                    let takes_part = self
                        .attempt
                        .as_ref()
                        .is_some_and(|a| !a.committing && a.roster.index.contains_key(&object));
                    if takes_part {
                        self.abort(now_ms, AbortReason::MembershipChanged, &mut out);
                    }
                }
            }
            Event::Vote {
                round,
                object,
                vote,
            } => self.on_vote(now_ms, round, object, vote, &mut out),
            Event::ChannelState { round, records } => {
                if let Some(a) = self
                    .attempt
                    .as_mut()
                    .filter(|a| a.round == round && !a.committing)
                {
                    a.in_transit.extend(records);
                    self.try_commit(now_ms, &mut out);
                }
            }
            Event::CommitResult { round, outcome } => {
                self.on_commit_result(now_ms, round, outcome, &mut out)
            }
            Event::Halt => {
                if self.attempt.as_ref().is_some_and(|a| !a.committing) {
                    self.abort(now_ms, AbortReason::Halted, &mut out);
                }
                if self.status == Status::Running {
                    self.status = Status::Halted;
                }
            }
            Event::Resume {
                epoch,
                last_committed,
            } => {
                if self.attempt.is_none() && epoch >= self.epoch {
                    self.status = Status::Running;
                    self.epoch = epoch;
                    self.last_committed = self.last_committed.max(last_committed);
                    self.last_finished_ms = Some(now_ms);
                }
            }
        }
        self.maybe_start(now_ms, &mut out);
        out
    }

    fn check_timeout(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some(a) = &self.attempt else { return };
        if a.committing || now_ms < a.started_ms.saturating_add(self.config.timeout_ms) {
            return;
        }
        let missing_votes = a.roster.participants.len() - a.voted;
        let missing_messages =
            u64::try_from((a.balance - a.in_transit.len() as i128).max(0)).unwrap_or(u64::MAX);
        self.abort(
            now_ms,
            AbortReason::Timeout {
                missing_votes,
                missing_messages,
            },
            out,
        );
    }

    fn on_vote(
        &mut self,
        now_ms: u64,
        round: Round,
        object: ObjectId,
        vote: Vote<T::Entry>,
        out: &mut Vec<Command<T>>,
    ) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        // Stale rounds, strangers, duplicates and votes after the decision are ignored.
        if a.round != round || a.committing {
            return;
        }
        let Some(slot) = a
            .roster
            .index
            .get(&object)
            .and_then(|&i| a.ballots.get_mut(i))
        else {
            return;
        };
        if slot.is_some() {
            return;
        }
        match vote {
            Vote::Yes(ballot) => {
                a.balance += i128::from(ballot.sent) - i128::from(ballot.received);
                *slot = Some(ballot);
                a.voted += 1;
                self.try_commit(now_ms, out);
            }
            Vote::No { reason } => self.abort(now_ms, AbortReason::Refused { object, reason }, out),
        }
    }

    fn try_commit(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        if a.committing || a.voted != a.roster.participants.len() {
            return;
        }
        let expected = a.balance;
        let recorded = a.in_transit.len() as i128;
        if recorded < expected {
            return; // messages that crossed the cut are still being received
        }
        if recorded > expected {
            let recorded = a.in_transit.len() as u64;
            self.abort(
                now_ms,
                AbortReason::ChannelStateMismatch { expected, recorded },
                out,
            );
            return;
        }
        a.committing = true;
        out.push(Command::Commit {
            id: a.id,
            round: a.round,
            // Once committing, the attempt ignores votes and records: hand them over.
            // Sorted already: the map is built without comparisons beyond one pass.
            ballots: a
                .roster
                .participants
                .iter()
                .cloned()
                .zip(std::mem::take(&mut a.ballots).into_iter().flatten())
                .collect(),
            in_transit: std::mem::take(&mut a.in_transit),
        });
    }

    fn on_commit_result(
        &mut self,
        now_ms: u64,
        round: Round,
        outcome: CommitOutcome,
        out: &mut Vec<Command<T>>,
    ) {
        if !self
            .attempt
            .as_ref()
            .is_some_and(|a| a.round == round && a.committing)
        {
            return;
        }
        match outcome {
            CommitOutcome::Committed => {
                let Some(a) = self.attempt.take() else { return };
                self.last_committed = a.id;
                self.last_finished_ms = Some(now_ms);
                // Health, then the callers, then the participants: the commit point is passed,
                // so the callers need not wait for the announcement to be sent.
                if self.health.consecutive_failures != 0 || !self.health.healthy {
                    self.health = Health {
                        healthy: true,
                        consecutive_failures: 0,
                        last_failure: None,
                    };
                    out.push(Command::Health(self.health.clone()));
                }
                for request in a.waiters {
                    out.push(Command::Reply {
                        request,
                        result: Ok(a.id),
                    });
                }
                out.push(Command::Decided {
                    id: a.id,
                    round: a.round,
                    decision: Decision::Committed,
                    participants: a.roster.participants.clone(),
                });
            }
            CommitOutcome::Fenced => {
                self.abort(now_ms, AbortReason::Fenced, out);
                self.status = Status::Fenced;
                for request in self.waiting.drain(..) {
                    out.push(Command::Reply {
                        request,
                        result: Err(TriggerFailure::Fenced),
                    });
                }
            }
            CommitOutcome::Conflict { newest } => {
                self.last_committed = self.last_committed.max(newest);
                self.abort(now_ms, AbortReason::Conflict, out);
            }
            CommitOutcome::Failed { reason } => {
                self.abort(now_ms, AbortReason::Store { reason }, out)
            }
        }
    }

    /// Ends the attempt in flight as aborted: announce, discard, answer its triggers, count
    /// the failure.
    fn abort(&mut self, now_ms: u64, reason: AbortReason, out: &mut Vec<Command<T>>) {
        let Some(a) = self.attempt.take() else { return };
        self.last_finished_ms = Some(now_ms);
        out.push(Command::Decided {
            id: a.id,
            round: a.round,
            decision: Decision::Aborted(reason.clone()),
            participants: a.roster.participants.clone(),
        });
        out.push(Command::Discard {
            id: a.id,
            round: a.round,
        });
        let failure = if reason == AbortReason::Fenced {
            TriggerFailure::Fenced
        } else {
            TriggerFailure::Aborted(reason.clone())
        };
        // A change of membership or a halt is not the checkpoint's fault.
        if !matches!(reason, AbortReason::MembershipChanged | AbortReason::Halted) {
            let failures = self.health.consecutive_failures.saturating_add(1);
            self.health = Health {
                healthy: failures <= self.config.tolerable_failures,
                consecutive_failures: failures,
                last_failure: Some(reason),
            };
            out.push(Command::Health(self.health.clone()));
        }
        for request in a.waiters {
            out.push(Command::Reply {
                request,
                result: Err(failure.clone()),
            });
        }
    }

    fn maybe_start(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        if self.status != Status::Running || self.attempt.is_some() {
            return;
        }
        let periodic_due = self.next_periodic_ms.is_some_and(|t| now_ms >= t);
        if self.waiting.is_empty() && !periodic_due {
            return;
        }
        if now_ms < self.earliest_start_ms() {
            return;
        }
        if let Some(interval) = self.config.interval_ms {
            self.next_periodic_ms = Some(now_ms.saturating_add(interval));
        }
        self.last_round = self.last_round.next();
        let members = &self.members;
        let roster = self
            .roster
            .get_or_insert_with(|| Arc::new(Roster::of(members)));
        let attempt = Attempt {
            id: self.last_committed.next(),
            round: self.last_round,
            started_ms: now_ms,
            roster: Arc::clone(roster),
            ballots: std::iter::repeat_with(|| None)
                .take(self.members.len())
                .collect(),
            voted: 0,
            balance: 0,
            in_transit: Vec::new(),
            committing: false,
            waiters: std::mem::take(&mut self.waiting),
        };
        out.push(Command::Prepare {
            id: attempt.id,
            round: attempt.round,
            participants: attempt.roster.participants.clone(),
        });
        self.attempt = Some(attempt);
        // A cohort with no members (or only unchanged ones reporting at once) commits here.
        self.try_commit(now_ms, out);
    }
}
