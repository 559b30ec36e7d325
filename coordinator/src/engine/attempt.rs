//! One attempt at a checkpoint: prepare, votes and channel state, seal, commit, decide.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cohort_object_api::{CheckpointId, ObjectId};

use super::{
    AbortReason, Ballot, Command, CommitOutcome, Decision, Engine, EngineTypes, Health, HostId,
    RecoveryCause, Roster, Round, Status, TriggerFailure, TriggerId, Vote,
};

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for votes and channel state.
    Voting,
    /// Every vote is in: waiting for these hosts to make their channel state durable.
    Sealing(BTreeSet<HostId>),
    /// The manifest create was requested: the attempt can no longer time out or abort on its
    /// own; only the store's answer ends it.
    Creating,
}

#[derive(Debug)]
pub(super) struct Attempt<T: EngineTypes> {
    pub(super) id: CheckpointId,
    pub(super) round: Round,
    pub(super) started_ms: u64,
    /// The members when the attempt started.
    roster: Arc<Roster>,
    /// The ballots of the participants that voted themselves, by position in the roster, in
    /// the order they came.
    ballots: Vec<(usize, Ballot<T::Entry>)>,
    /// Which positions voted: one bit each.
    voters: Vec<u64>,
    /// Votes in: ballots, and participants counted clean.
    voted: usize,
    /// Per host (by position in the roster): its participants' votes so far, and whether it
    /// counted its clean ones.
    tallies: Vec<Tally>,
    /// Σ sent − Σ received over the ballots so far (and the removed objects): the messages
    /// sent before their sender's cut and not received before their receiver's, which must
    /// all be recorded.
    balance: i128,
    /// The removed objects' counters when it started, recorded in its line.
    retired: BTreeMap<ObjectId, (u64, u64)>,
    in_transit: Vec<T::InTransit>,
    /// Hosts that recorded channel state: they seal it before the commit.
    channel_hosts: BTreeSet<HostId>,
    /// Hosts sent the prepare: they, and only they, hear the decision.
    prepared: Vec<HostId>,
    stage: Stage,
    waiters: Vec<TriggerId>,
}

/// One host's votes in an attempt.
#[derive(Debug, Default)]
struct Tally {
    /// Its participants.
    hosted: usize,
    /// Votes in: its participants that voted, plus those it counted clean.
    votes: usize,
    /// Whether it counted its clean participants ([`Event::Clean`](super::Event::Clean)).
    counted_clean: bool,
}

impl<T: EngineTypes> Attempt<T> {
    /// Counts `votes` more of the participants of the host at `position`, unless that makes
    /// more than it has (a host counting an object twice): `false`, and nothing counted.
    fn tally(&mut self, position: usize, votes: usize) -> bool {
        let Some(tally) = self.tallies.get_mut(position) else {
            return false;
        };
        match tally.votes.checked_add(votes) {
            Some(total) if total <= tally.hosted => {
                tally.votes = total;
                self.voted += votes;
                true
            }
            _ => false,
        }
    }

    pub(super) fn is_creating(&self) -> bool {
        self.stage == Stage::Creating
    }

    /// Whether `host` takes part: it has participants, was prepared, or is sealing.
    fn involves(&self, host: &HostId) -> bool {
        self.roster.hosts.contains_key(host)
            || self.prepared.contains(host)
            || matches!(&self.stage, Stage::Sealing(w) if w.contains(host))
    }
}

impl<T: EngineTypes> Engine<T> {
    pub(super) fn on_join(
        &mut self,
        now_ms: u64,
        object: ObjectId,
        host: HostId,
        out: &mut Vec<Command<T>>,
    ) {
        // A member living on another host that is not dead (up, or lost within the timeout:
        // it may resume) was moved there (its old host was declared dead) or is claimed
        // twice: the joining host must not act on it. Only a dead host's member moves to a
        // host that announces it (a replacement).
        if let Some(owner) = self.placement.get(&object)
            && *owner != host
            && self
                .hosts
                .get(owner)
                .is_some_and(|s| s.up || s.lost_at_ms.is_some())
        {
            out.push(Command::Disown {
                host,
                objects: vec![object],
            });
            return;
        }
        let joined = self.members.insert(object.clone());
        // Back under a removed id: it counts its own messages again.
        self.retired.remove(&object);
        let moved = self.placement.get(&object) != Some(&host);
        if !joined && !moved {
            return;
        }
        if moved {
            self.place(object, host);
        }
        self.roster = None;
        if self.attempt.as_ref().is_some_and(|a| !a.is_creating()) {
            self.abort(now_ms, AbortReason::MembershipChanged, out);
        }
    }

    pub(super) fn on_create(
        &mut self,
        now_ms: u64,
        object: ObjectId,
        type_name: String,
        out: &mut Vec<Command<T>>,
    ) {
        let refuse = |reason: String| Command::CreateRefused {
            object: object.clone(),
            reason,
        };
        if self.status == super::Status::Deposed {
            out.push(refuse(
                "this coordinator no longer leads; ask the leader".into(),
            ));
            return;
        }
        if let Some(host) = self.placement.get(&object) {
            out.push(refuse(format!(
                "{object} is already a member, on {host}; pick another id"
            )));
            return;
        }
        let Some(host) = self.least_loaded_host_of(&type_name, None) else {
            out.push(refuse(format!(
                "no live node can create objects of type {type_name:?}; start a node that registers it (NodeBuilder::host_type)"
            )));
            return;
        };
        self.object_types.insert(object.clone(), type_name.clone());
        self.on_join(now_ms, object.clone(), host.clone(), out);
        // Until its host restores, a recovery's restore there creates it too (an order is
        // idempotent), and if that host dies first it is moved like any other.
        self.creating.insert(object.clone(), type_name.clone());
        out.push(Command::Create {
            host: host.clone(),
            object: object.clone(),
            type_name,
        });
    }

    pub(super) fn on_leave(&mut self, now_ms: u64, object: &ObjectId, out: &mut Vec<Command<T>>) {
        self.object_types.remove(object);
        if !self.members.remove(object) {
            return;
        }
        self.unplace(object);
        self.roster = None;
        let takes_part = self
            .attempt
            .as_ref()
            .is_some_and(|a| !a.is_creating() && a.roster.locate(object).is_some());
        if takes_part {
            self.abort(now_ms, AbortReason::MembershipChanged, out);
        }
    }

    /// A host's connection is gone: the attempt it takes part in aborts, unless its manifest
    /// create is in flight.
    pub(super) fn abort_for_host(&mut self, now_ms: u64, host: &HostId, out: &mut Vec<Command<T>>) {
        let involved = self
            .attempt
            .as_ref()
            .is_some_and(|a| !a.is_creating() && a.involves(host));
        if involved {
            self.abort(now_ms, AbortReason::HostLost { host: host.clone() }, out);
        }
    }

    pub(super) fn check_timeout(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some(a) = &self.attempt else { return };
        if a.is_creating() || now_ms < a.started_ms.saturating_add(self.config.timeout_ms) {
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

    pub(super) fn on_vote(
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
        if a.round != round || a.stage != Stage::Voting {
            return;
        }
        let Some((index, position)) = a.roster.locate(&object) else {
            return;
        };
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if a.voters.get(word).is_none_or(|w| w & bit != 0) {
            return;
        }
        match vote {
            Vote::Yes(ballot) => {
                // Beyond what its host holds (it also counted it clean): ignored.
                if !a.tally(position, 1) {
                    return;
                }
                a.balance += i128::from(ballot.sent) - i128::from(ballot.received);
                if let Some(w) = a.voters.get_mut(word) {
                    *w |= bit;
                }
                a.ballots.push((index, ballot));
                self.try_commit(now_ms, out);
            }
            Vote::No { reason } => self.abort(now_ms, AbortReason::Refused { object, reason }, out),
        }
    }

    /// The attempt in flight, if it is `round`'s and still collecting votes.
    fn voting_in(&mut self, round: Round) -> Option<&mut Attempt<T>> {
        (self.attempt.as_mut()).filter(|a| a.round == round && a.stage == Stage::Voting)
    }

    pub(super) fn on_clean(
        &mut self,
        now_ms: u64,
        round: Round,
        host: HostId,
        objects: usize,
        balance: i128,
        out: &mut Vec<Command<T>>,
    ) {
        let Some(a) = self.voting_in(round) else {
            return;
        };
        // Once per host and round, and never more objects than it holds.
        let Some(position) = a.roster.position(&host) else {
            return;
        };
        if a.tallies.get(position).is_none_or(|t| t.counted_clean) || !a.tally(position, objects) {
            return;
        }
        if let Some(tally) = a.tallies.get_mut(position) {
            tally.counted_clean = true;
        }
        a.balance += balance;
        self.try_commit(now_ms, out);
    }

    pub(super) fn on_channel_state(
        &mut self,
        now_ms: u64,
        round: Round,
        host: HostId,
        records: Vec<T::InTransit>,
        out: &mut Vec<Command<T>>,
    ) {
        let Some(a) = self.voting_in(round) else {
            return;
        };
        if !records.is_empty() {
            a.channel_hosts.insert(host);
        }
        a.in_transit.extend(records);
        self.try_commit(now_ms, out);
    }

    pub(super) fn on_sealed(
        &mut self,
        now_ms: u64,
        round: Round,
        host: &HostId,
        result: Result<(), String>,
        out: &mut Vec<Command<T>>,
    ) {
        let Some(a) = self.attempt.as_mut().filter(|a| a.round == round) else {
            return;
        };
        let Stage::Sealing(waiting) = &mut a.stage else {
            return;
        };
        if !waiting.contains(host) {
            return;
        }
        if let Err(reason) = result {
            let host = host.clone();
            self.abort(now_ms, AbortReason::SealFailed { host, reason }, out);
            return;
        }
        waiting.remove(host);
        if waiting.is_empty() {
            Self::create(a, out);
        }
    }

    fn try_commit(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        if a.stage != Stage::Voting || a.voted != a.roster.participants.len() {
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
        if a.channel_hosts.is_empty() {
            Self::create(a, out);
        } else {
            let hosts = std::mem::take(&mut a.channel_hosts);
            out.push(Command::Seal {
                round: a.round,
                hosts: hosts.iter().cloned().collect(),
            });
            a.stage = Stage::Sealing(hosts);
        }
    }

    /// Everything is durable: request the manifest create, the commit point.
    fn create(a: &mut Attempt<T>, out: &mut Vec<Command<T>>) {
        a.stage = Stage::Creating;
        out.push(Command::Commit {
            id: a.id,
            round: a.round,
            // Once creating, the attempt ignores votes and records: hand them over.
            participants: Arc::clone(&a.roster.participants),
            ballots: {
                let mut ballots = std::mem::take(&mut a.ballots);
                ballots.sort_unstable_by_key(|(index, _)| *index);
                let participants = &a.roster.participants;
                ballots
                    .into_iter()
                    .filter_map(|(index, b)| participants.get(index).map(|o| (o.clone(), b)))
                    .collect()
            },
            in_transit: std::mem::take(&mut a.in_transit),
            retired: std::mem::take(&mut a.retired),
        });
    }

    pub(super) fn on_commit_result(
        &mut self,
        now_ms: u64,
        round: Round,
        outcome: CommitOutcome,
        out: &mut Vec<Command<T>>,
    ) {
        if !self
            .attempt
            .as_ref()
            .is_some_and(|a| a.round == round && a.is_creating())
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
                self.lost_message_timeouts = 0;
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
                    hosts: a.prepared,
                });
                self.remove_after_commit(now_ms, out);
                self.rebalance_after_commit(now_ms, out);
            }
            CommitOutcome::Fenced => {
                let id = self.attempt.as_ref().map(|a| a.id);
                self.abort(now_ms, AbortReason::Fenced, out);
                let reason = match id {
                    Some(id) => format!("the store fenced the commit of checkpoint {id}"),
                    None => "the store fenced a commit".to_owned(),
                };
                self.depose(now_ms, Some(reason), out);
            }
            CommitOutcome::Conflict { newest } => {
                self.last_committed = self.last_committed.max(newest);
                self.abort(now_ms, AbortReason::Conflict, out);
            }
            CommitOutcome::Failed { reason } => {
                self.abort(now_ms, AbortReason::Store { reason }, out)
            }
        }
        // A recovery that waited for the store's answer goes on.
        self.after_commit_result(now_ms, out);
    }

    /// Ends the attempt in flight as aborted: announce, discard (unless deposed: nothing more
    /// is written), answer its triggers, count the failure.
    pub(super) fn abort(&mut self, now_ms: u64, reason: AbortReason, out: &mut Vec<Command<T>>) {
        let Some(a) = self.attempt.take() else { return };
        self.last_finished_ms = Some(now_ms);
        let prepared = !a.prepared.is_empty();
        out.push(Command::Decided {
            id: a.id,
            round: a.round,
            decision: Decision::Aborted(reason.clone()),
            hosts: a.prepared,
        });
        // Nothing was asked to write, or nothing may be written any more.
        if prepared && self.status != Status::Deposed && reason != AbortReason::Fenced {
            out.push(Command::Discard {
                id: a.id,
                round: a.round,
            });
        }
        let failure = if reason == AbortReason::Fenced {
            TriggerFailure::Fenced
        } else {
            TriggerFailure::Aborted(reason.clone())
        };
        let missing_messages = match reason {
            AbortReason::Timeout {
                missing_votes: 0,
                missing_messages,
            } if missing_messages > 0 => Some(missing_messages),
            _ => None,
        };
        // A change of membership or a recovery is not the checkpoint's fault.
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
        match missing_messages {
            Some(missing_messages) => {
                self.lost_message_timeouts += 1;
                if self.lost_message_timeouts >= super::LOST_MESSAGE_TIMEOUTS {
                    self.lost_message_timeouts = 0;
                    self.start_recovery(
                        now_ms,
                        RecoveryCause::MessagesLost {
                            missing: missing_messages,
                        },
                        out,
                    );
                }
            }
            _ => self.lost_message_timeouts = 0,
        }
    }

    pub(super) fn maybe_start(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        if self.status != Status::Running
            || self.attempt.is_some()
            || self.recovery.is_some()
            || self.restart_pending()
        {
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
        let (members, placement) = (&self.members, &self.placement);
        let roster = self
            .roster
            .get_or_insert_with(|| Arc::new(Roster::of(members, placement)));
        let roster = Arc::clone(roster);
        // A participant whose host is away (or that has none) cannot vote.
        let away = roster
            .hosts
            .iter()
            .find_map(|(host, objects)| {
                let ready = self.hosts.get(host).is_some_and(|h| h.is_ready());
                (!ready)
                    .then(|| objects.first().map(|object| (host.clone(), object.clone())))
                    .flatten()
            })
            .or_else(|| (roster.unplaced.clone()).map(|object| (HostId::new("?"), object)));
        let attempt = Attempt {
            id: self.last_committed.next(),
            round: self.last_round,
            started_ms: now_ms,
            ballots: Vec::new(),
            voters: vec![0; roster.participants.len().div_ceil(64)],
            voted: 0,
            tallies: roster
                .hosts
                .values()
                .map(|objects| Tally {
                    hosted: objects.len(),
                    ..Tally::default()
                })
                .collect(),
            // Removed objects' messages are in their peers' counters.
            balance: self
                .retired
                .values()
                .map(|(sent, received)| i128::from(*sent) - i128::from(*received))
                .sum(),
            retired: self.retired.clone(),
            in_transit: Vec::new(),
            channel_hosts: BTreeSet::new(),
            prepared: if away.is_some() {
                Vec::new()
            } else {
                roster.hosts.keys().cloned().collect()
            },
            stage: Stage::Voting,
            waiters: std::mem::take(&mut self.waiting),
            roster,
        };
        let (id, round, hosts) = (attempt.id, attempt.round, Arc::clone(&attempt.roster.hosts));
        self.attempt = Some(attempt);
        if let Some((host, object)) = away {
            self.abort(now_ms, AbortReason::HostAway { host, object }, out);
            return;
        }
        out.push(Command::Prepare { id, round, hosts });
        // A cohort with no members (or only unchanged ones reporting at once) commits here.
        self.try_commit(now_ms, out);
    }
}
