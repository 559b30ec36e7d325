//! The two-phase checkpoint protocol, from trigger to recovery, as a pure state machine.
//!
//! [`Engine::handle`] takes the current time and one [`Event`] and returns the [`Command`]s the
//! runtime must carry out, in order. The engine does no IO, has no async and reads no clock, so
//! every protocol decision can be tested by comparing command vectors, and explored at random
//! (see the property test in `engine/tests`). The in-process runtime and the coordinator service
//! run this one engine; they only carry its commands to objects or nodes and to the store, and
//! bring back the answers as events.
//!
//! # One attempt
//!
//! 1. [`Command::Prepare`] to every host, listing its participants. Each captures its objects'
//!    states (or answers no) and writes them; the runtime reports [`Event::Vote`]s and, for
//!    messages that crossed a cut, [`Event::ChannelState`].
//! 2. When every member voted yes and the recorded in-transit messages number
//!    Σ sent − Σ received over the ballots, [`Command::Seal`] asks the hosts that recorded
//!    channel state to make it durable ([`Event::Sealed`]), then [`Command::Commit`]: the
//!    runtime creates the manifest, the single commit point, and answers
//!    [`Event::CommitResult`].
//! 3. [`Command::Decided`] tells the hosts that prepared; an aborted attempt is also followed by
//!    [`Command::Discard`], and its id is reused by the next attempt under a new [`Round`].
//!
//! # The life of a cohort
//!
//! Hosts come and go ([`Event::HostUp`], [`Event::HostLost`]). A host lost for longer than the
//! host timeout is dead, and the cohort recovers; so it does when asked ([`Event::Recover`]),
//! after a coordinator took over ([`Event::TakeOver`]), and when a line turns out damaged. A
//! recovery:
//!
//! 1. waits for a manifest create in flight (the store decides it), or aborts the attempt;
//! 2. [`Command::ReadLine`] → [`Event::LineRead`] (a takeover knows its line already);
//! 3. [`Command::Restore`] to every host, under a new incarnation; each answers
//!    [`Event::Restored`] (a damaged line makes it fall back to the one before);
//! 4. [`Command::WriteFence`] at the next id, pointing at the line restored: refused by the
//!    store if the line moved on (restore again) or a newer epoch wrote the newest manifest
//!    (deposed);
//! 5. [`Command::Release`], [`Command::Recovered`], and attempts resume.
//!
//! Once deposed ([`Event::Deposed`], or a commit or fence the store fenced) the engine emits no
//! store write of its epoch again: no commit, fence or discard.

mod attempt;
mod cut;
mod lifecycle;
mod membership;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cohort_object_api::{CheckpointId, ObjectId};

pub use cut::{CutState, Receipt};
pub use types::{
    AbortReason, Ballot, ByHost, Command, CommitOutcome, Decision, EngineTypes, Event,
    FenceOutcome, Halt, Health, HostId, LineInfo, RecoverId, Recovered, RecoveryCause,
    RecoveryFailure, Registration, RestoreFailure, Round, TriggerFailure, TriggerId, Vote,
    VotedState,
};

use attempt::Attempt;
use lifecycle::{HostState, Recovery, Restarts};

/// Where the objects of a cohort live, which decides how a recovery treats them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hosting {
    /// Every object lives in this process (the in-process runtime): a line's object that is not
    /// a member fails the recovery before anything is touched
    /// ([`RecoveryFailure::MissingObjects`]); members the line does not hold were created after
    /// it, by the future the recovery discards, and leave the cohort.
    InProcess,
    /// Objects live on hosts that come and go (a coordinator service's nodes): a line's object
    /// waits for its host; members the line does not hold keep their state.
    Hosted,
}

/// The engine's settings, in milliseconds (the runtimes convert their `Duration`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Start a checkpoint this often; `None` takes checkpoints only on trigger.
    pub interval_ms: Option<u64>,
    /// Abort an attempt whose votes, channel state and seals are not all in after this long.
    pub timeout_ms: u64,
    /// Leave at least this long between the end of one attempt and the start of the next.
    pub min_pause_ms: u64,
    /// Consecutive failed attempts tolerated before the cohort is reported unhealthy.
    pub tolerable_failures: u32,
    /// A lost host that is not back within this long is dead: the cohort recovers. After a
    /// takeover, the hosts of the line are waited for this long.
    pub host_timeout_ms: u64,
    /// A recovery whose store command failed (reading the line, writing the fence), and a
    /// host's restore the store did not answer, retry after this long, doubling up to 16 times
    /// it.
    pub retry_ms: u64,
    /// Where objects live.
    pub hosting: Hosting,
    /// How often a failed object restarts the cohort before it halts.
    pub restart: RestartPolicy,
}

/// How the cohort answers a failed object (a handler that returned an error or panicked): a
/// cohort recovery to the line after a backoff, at most [`max_restarts`](Self::max_restarts)
/// times within [`window_ms`](Self::window_ms) (Flink's failure-rate strategy, an Erlang
/// supervisor's intensity and period). One more failure within the window halts the cohort
/// ([`Status::Halted`], [`Engine::halt`]) until a requested recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed within the window; 0 halts at the first failure.
    pub max_restarts: u32,
    /// The sliding window restarts are counted in.
    pub window_ms: u64,
    /// The wait before the first restart of a window; each restart still in the window
    /// doubles it.
    pub backoff_ms: u64,
    /// The longest wait before a restart.
    pub max_backoff_ms: u64,
}

impl Default for RestartPolicy {
    /// 3 restarts within a minute, after 500 ms, then 1 s, then 2 s.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window_ms: 60_000,
            backoff_ms: 500,
            max_backoff_ms: 10_000,
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} restarts within {} ms, backoff {} ms doubling up to {} ms",
            self.max_restarts, self.window_ms, self.backoff_ms, self.max_backoff_ms
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval_ms: None,
            timeout_ms: 60_000,
            min_pause_ms: 0,
            tolerable_failures: 0,
            host_timeout_ms: 2_000,
            retry_ms: 100,
            hosting: Hosting::InProcess,
            restart: RestartPolicy::default(),
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
    /// Recoveries of this engine number their incarnations after this one.
    pub incarnation_floor: u64,
    /// Hosts that are up and running from the start (the in-process runtime's one host), as
    /// opposed to hosts that must register and be restored.
    pub ready_hosts: Vec<HostId>,
}

/// Where a host stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Connected.
    Up,
    /// Its connection is gone; it may resume its session within the host timeout.
    Lost,
    /// Dead (or expected after a takeover and not registered): it comes back only with a new
    /// session, restored like a new host.
    Down,
}

/// Whether the engine is taking checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Taking checkpoints.
    Running,
    /// Rolling the cohort back to the recovery line; attempts resume when it ends.
    Recovering,
    /// A requested recovery failed, or objects failed more often than the restart policy
    /// allows ([`Engine::halt`]): objects stay held until [`Event::Recover`] succeeds.
    Halted,
    /// A newer coordinator took over, or this one stepped down: it writes nothing more.
    Deposed,
}

/// The members, sorted as announced, grouped by host, with each one's host for the votes.
/// Kept while the membership and the placement stay the same, so that an attempt does not
/// rebuild it.
#[derive(Debug)]
struct Roster {
    participants: Arc<[ObjectId]>,
    /// Each participant's position in `participants`, hashed by its id: votes of a million
    /// objects must not cost a tree search each. The table holds positions only (the ids
    /// are `participants`'), 5 bytes a slot: a map keyed by the ids held 25 bytes a slot,
    /// 52 bytes a participant at a million.
    index: hashbrown::HashTable<u32>,
    /// What hashes the ids in `index`.
    hasher: std::hash::RandomState,
    /// Each participant's host, by position in `hosts`, in the order of `participants`;
    /// [`UNPLACED`] for a member placed on no host.
    host_of: Box<[u32]>,
    hosts: ByHost,
    /// A member placed on no host, if any: it cannot vote.
    unplaced: Option<ObjectId>,
}

impl Roster {
    fn of(members: &BTreeSet<ObjectId>, placement: &HashMap<ObjectId, HostId>) -> Self {
        let mut hosts: BTreeMap<HostId, Vec<ObjectId>> = BTreeMap::new();
        let mut unplaced = None;
        for m in members {
            match placement.get(m) {
                Some(host) => hosts.entry(host.clone()).or_default().push(m.clone()),
                None => {
                    unplaced.get_or_insert_with(|| m.clone());
                }
            }
        }
        let participants: Arc<[ObjectId]> = members.iter().cloned().collect();
        let positions: HashMap<&HostId, u32> = (hosts.keys()).zip(0..UNPLACED).collect();
        let host_of = participants
            .iter()
            .map(|o| {
                (placement.get(o))
                    .and_then(|h| positions.get(h))
                    .map_or(UNPLACED, |p| *p)
            })
            .collect();
        use std::hash::BuildHasher as _;
        let hasher = std::hash::RandomState::new();
        let mut index = hashbrown::HashTable::with_capacity(participants.len());
        // Beyond 2^32 participants (terabytes of objects), an object is left out of the index
        // and its votes are ignored: the attempt times out rather than miscount.
        for (position, object) in (0..u32::MAX).zip(participants.iter()) {
            let hash = hasher.hash_one(object);
            let rehash = |&p: &u32| {
                participants
                    .get(p as usize)
                    .map_or(0, |o| hasher.hash_one(o))
            };
            index.insert_unique(hash, position, rehash);
        }
        Self {
            participants,
            index,
            hasher,
            host_of,
            hosts: Arc::new(hosts),
            unplaced,
        }
    }

    /// A placed participant's position in `participants`, and its host's in `hosts`.
    fn locate(&self, object: &ObjectId) -> Option<(usize, usize)> {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one(object);
        let is = |&p: &u32| self.participants.get(p as usize) == Some(object);
        let index = *self.index.find(hash, is)? as usize;
        let host = *self.host_of.get(index)?;
        (host != UNPLACED).then_some((index, host as usize))
    }

    /// `host`'s position in `hosts`.
    fn position(&self, host: &HostId) -> Option<usize> {
        self.hosts.keys().position(|h| h == host)
    }
}

/// [`Roster::host_of`] of a member placed on no host: it cannot vote.
const UNPLACED: u32 = u32::MAX;

/// The coordinator's side of the protocol. See the [module docs](self).
#[derive(Debug)]
pub struct Engine<T: EngineTypes> {
    config: Config,
    status: Status,
    epoch: u64,
    last_committed: CheckpointId,
    last_round: Round,
    members: BTreeSet<ObjectId>,
    /// Where each member lives.
    placement: HashMap<ObjectId, HostId>,
    /// Bumped by every change of `placement`, so a transport knows when to publish it.
    placement_version: u64,
    /// The type of each object that declared one ([`Event::ObjectType`]).
    object_types: HashMap<ObjectId, String>,
    /// Members the engine moved off a dead host, with their type: the host they are placed on
    /// now creates them in its next restore (and they stay here until it answered it).
    creating: HashMap<ObjectId, String>,
    hosts: BTreeMap<HostId, HostState>,
    /// Built from `members` and `placement` by the first attempt after they changed.
    roster: Option<Arc<Roster>>,
    attempt: Option<Attempt<T>>,
    /// Triggers that wait for an attempt that starts after them.
    waiting: Vec<TriggerId>,
    /// When the periodic schedule next wants an attempt.
    next_periodic_ms: Option<u64>,
    /// When the last attempt (or recovery) ended, for the minimum pause.
    last_finished_ms: Option<u64>,
    health: Health,
    incarnation: u64,
    recovery_seq: u64,
    recovery: Option<Recovery>,
    /// Failed objects and the restarts they caused ([`RestartPolicy`]).
    restarts: Restarts,
    /// Attempts in a row that timed out with every vote in and messages missing.
    lost_message_timeouts: u32,
    /// A node joined or is draining since the last commit: the next one plans moves.
    rebalance_due: bool,
    /// Members an operator removes at the next commit ([`Event::Remove`]).
    removing: BTreeSet<ObjectId>,
    /// Removed objects' message counters, (sent, received): they add to every cut's balance
    /// and are recorded in every line ([`LineInfo::settled`]).
    retired: BTreeMap<ObjectId, (u64, u64)>,
}

/// Attempts in a row that time out with every vote in and in-transit messages missing before
/// the engine takes the messages for lost and recovers: the senders counted them, no receiver
/// will ever record them (a process that held them crashed unnoticed), and no checkpoint can
/// commit again until the cohort rolls back to a line that does not count them.
pub const LOST_MESSAGE_TIMEOUTS: u32 = 3;

impl<T: EngineTypes> Engine<T> {
    /// A running engine with no members.
    pub fn new(config: Config, start: Start) -> Self {
        let next_periodic_ms = config.interval_ms.map(|i| start.now_ms.saturating_add(i));
        let hosts = start
            .ready_hosts
            .into_iter()
            .map(|h| (h, HostState::ready()))
            .collect();
        Self {
            config,
            status: Status::Running,
            epoch: start.epoch,
            last_committed: start.last_committed,
            last_round: start.round_floor,
            members: BTreeSet::new(),
            placement: HashMap::new(),
            placement_version: 0,
            object_types: HashMap::new(),
            creating: HashMap::new(),
            hosts,
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
            incarnation: start.incarnation_floor,
            recovery_seq: 0,
            recovery: None,
            restarts: Restarts::default(),
            lost_message_timeouts: 0,
            rebalance_due: false,
            removing: BTreeSet::new(),
            retired: BTreeMap::new(),
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

    /// The current incarnation: peer messages of older ones belong to a discarded future.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The attempt in flight: its id and round.
    pub fn in_flight(&self) -> Option<(CheckpointId, Round)> {
        self.attempt.as_ref().map(|a| (a.id, a.round))
    }

    /// Running, recovering, halted or deposed.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Why the cohort halted beyond its restart policy, while it is halted for that.
    pub fn halt(&self) -> Option<&Halt> {
        self.restarts.halt.as_ref()
    }

    /// The current health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The current members.
    pub fn members(&self) -> &BTreeSet<ObjectId> {
        &self.members
    }

    /// Where each member lives.
    pub fn placement(&self) -> &HashMap<ObjectId, HostId> {
        &self.placement
    }

    /// Changes whenever [`placement`](Self::placement) changes.
    pub fn placement_version(&self) -> u64 {
        self.placement_version
    }

    /// The type names `host` declared it can create ([`Event::HostTypes`]).
    pub fn host_types(&self, host: &HostId) -> Option<&BTreeSet<String>> {
        self.hosts.get(host).map(|h| &h.types)
    }

    /// The declared type of `object`, if any.
    pub fn object_type(&self, object: &ObjectId) -> Option<&str> {
        self.object_types.get(object).map(String::as_str)
    }

    /// The hosts this engine knows, and whether each is up, lost within the host timeout, or
    /// down (dead, or expected and not registered yet, while members are placed on it).
    pub fn hosts(&self) -> impl Iterator<Item = (&HostId, Liveness)> {
        self.hosts.iter().map(|(h, s)| {
            let liveness = match (s.up, s.lost_at_ms) {
                (true, _) => Liveness::Up,
                (false, Some(_)) => Liveness::Lost,
                (false, None) => Liveness::Down,
            };
            (h, liveness)
        })
    }

    /// The earliest time at which [`Event::Tick`] could make a difference, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let attempt = self.attempt.as_ref().and_then(|a| {
            (!a.is_creating()).then(|| a.started_ms.saturating_add(self.config.timeout_ms))
        });
        let start = (self.status == Status::Running
            && self.attempt.is_none()
            && self.recovery.is_none()
            && !self.restart_pending())
        .then(|| {
            let wanted = if self.waiting.is_empty() {
                self.next_periodic_ms?
            } else {
                0
            };
            Some(wanted.max(self.earliest_start_ms()))
        })
        .flatten();
        let dead = self
            .hosts
            .values()
            .filter_map(|h| h.lost_at_ms)
            .map(|t| t.saturating_add(self.config.host_timeout_ms))
            .min();
        let recovery = self.recovery.as_ref().and_then(Recovery::next_deadline_ms);
        let restart = self.restarts.next_deadline_ms();
        let restore = self
            .hosts
            .values()
            .filter_map(|h| h.retry_restore_at_ms)
            .min();
        [attempt, start, dead, recovery, restart, restore]
            .into_iter()
            .flatten()
            .min()
    }

    fn earliest_start_ms(&self) -> u64 {
        self.last_finished_ms
            .map_or(0, |t| t.saturating_add(self.config.min_pause_ms))
    }

    /// Feeds one event at time `now_ms` and returns the commands to carry out, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<T>) -> Vec<Command<T>> {
        let mut out = Vec::new();
        match event {
            Event::Tick => {
                self.check_timeout(now_ms, &mut out);
                self.check_hosts(now_ms, &mut out);
                self.check_recovery_timers(now_ms, &mut out);
                self.check_restore_retries(now_ms, &mut out);
                self.check_restart(now_ms, &mut out);
            }
            Event::Trigger { request } => match self.status {
                Status::Deposed => out.push(Command::Reply {
                    request,
                    result: Err(TriggerFailure::Fenced),
                }),
                // Halted beyond the restart policy: no attempt starts before a recovery.
                Status::Halted if self.restarts.halt.is_some() => out.push(Command::Reply {
                    request,
                    result: Err(TriggerFailure::Aborted(AbortReason::Halted)),
                }),
                _ => self.waiting.push(request),
            },
            Event::Join { object, host } => self.on_join(now_ms, object, host, &mut out),
            Event::Leave { object } => self.on_leave(now_ms, &object, &mut out),
            Event::Create { object, type_name } => {
                self.on_create(now_ms, object, type_name, &mut out)
            }
            Event::ObjectType { object, type_name } => self.declare_type(object, type_name),
            Event::HostTypes { host, types } => {
                if let Some(state) = self.hosts.get_mut(&host) {
                    state.types = types;
                    // A node that can host objects may take some from fuller ones.
                    self.rebalance_due = true;
                }
            }
            Event::Remove { object } => self.on_remove(object, &mut out),
            Event::Drain { host } => {
                if !self.on_drain(&host) {
                    out.push(Command::DrainRefused {
                        host: host.clone(),
                        reason: format!(
                            "{host} is not a connected node; `cohort status` lists them"
                        ),
                    });
                }
            }
            Event::HostUp { host, resumed } => self.on_host_up(now_ms, host, resumed, &mut out),
            Event::Register(registration) => self.on_register(now_ms, registration, &mut out),
            Event::HostLost { host } => self.on_host_lost(now_ms, host, &mut out),
            Event::Vote {
                round,
                object,
                vote,
            } => self.on_vote(now_ms, round, object, vote, &mut out),
            Event::Clean {
                round,
                host,
                objects,
                balance,
            } => self.on_clean(now_ms, round, host, objects, balance, &mut out),
            Event::ChannelState {
                round,
                host,
                records,
            } => self.on_channel_state(now_ms, round, host, records, &mut out),
            Event::Sealed {
                round,
                host,
                result,
            } => self.on_sealed(now_ms, round, &host, result, &mut out),
            Event::CommitResult { round, outcome } => {
                self.on_commit_result(now_ms, round, outcome, &mut out)
            }
            Event::Recover { request } => {
                self.forgive_failures();
                self.on_recover(now_ms, request, &mut out)
            }
            Event::ObjectFailed {
                object,
                incarnation,
                error,
            } => self.on_object_failed(now_ms, object, incarnation, error, &mut out),
            Event::TakeOver { line } => self.on_take_over(now_ms, line, &mut out),
            Event::LineRead { recovery, result } => {
                self.on_line_read(now_ms, recovery, result, &mut out)
            }
            Event::Restored {
                recovery,
                incarnation,
                host,
                result,
            } => self.on_restored(now_ms, recovery, incarnation, host, result, &mut out),
            Event::FenceResult { recovery, outcome } => {
                self.on_fence_result(now_ms, recovery, outcome, &mut out)
            }
            Event::Deposed => self.depose(now_ms, None, &mut out),
        }
        self.maybe_start(now_ms, &mut out);
        out
    }

    /// The engine stops taking checkpoints (deposed or halted): the attempt in flight aborts
    /// for `reason`, unless its manifest create is in flight (its answer decides), and every
    /// trigger waiting for an attempt hears `failure`.
    pub(super) fn refuse_pending(
        &mut self,
        now_ms: u64,
        reason: AbortReason,
        failure: &TriggerFailure,
        out: &mut Vec<Command<T>>,
    ) {
        if self.attempt.as_ref().is_some_and(|a| !a.is_creating()) {
            self.abort(now_ms, reason, out);
        }
        for request in self.waiting.drain(..) {
            out.push(Command::Reply {
                request,
                result: Err(failure.clone()),
            });
        }
    }

    /// Stops writing for good: the attempt in flight aborts (unless its manifest create is in
    /// flight: the store decides that one, and its hosts hear of it), waiters are told, and no
    /// store write of this epoch follows. `reason` is set when the engine found out itself (the
    /// store fenced a commit or a fence), so that the runtime tells its leadership.
    fn depose(&mut self, now_ms: u64, reason: Option<String>, out: &mut Vec<Command<T>>) {
        if self.status == Status::Deposed {
            return;
        }
        self.status = Status::Deposed;
        self.refuse_pending(now_ms, AbortReason::Fenced, &TriggerFailure::Fenced, out);
        if let Some(r) = self.recovery.take() {
            out.push(Command::Recovered {
                recovery: r.seq,
                requests: r.requests,
                result: Err(RecoveryFailure::Fenced),
            });
        }
        if let Some(reason) = reason {
            out.push(Command::Deposed { reason });
        }
    }
}
