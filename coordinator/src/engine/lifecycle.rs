//! The life of a cohort around its attempts: hosts that come and go, and recovery (after a
//! request, a dead host, a takeover or a damaged line) through the line, the restores, the
//! fence and the release.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cohort_object_api::{CheckpointId, ObjectId};

use super::{
    AbortReason, Command, Engine, EngineTypes, FenceOutcome, Halt, HostId, Hosting, LineInfo,
    RecoverId, Recovered, RecoveryCause, RecoveryFailure, Registration, RestoreFailure, Status,
};

/// What the engine knows of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct HostState {
    /// Connected now.
    pub(super) up: bool,
    /// When it was lost, while it is not up: dead once the host timeout has passed.
    pub(super) lost_at_ms: Option<u64>,
    /// Restored into the current incarnation and released: its objects may take part.
    pub(super) ready: bool,
    /// The incarnation of the restore it was sent on its own (outside a recovery), until it
    /// answers: only that answer releases it.
    pub(super) joining: Option<u64>,
    /// Members placed on it.
    pub(super) objects: usize,
    /// The object types it can create ([`Event::HostTypes`](super::Event::HostTypes)).
    pub(super) types: BTreeSet<String>,
    /// When to order again a restore the store did not answer
    /// ([`RestoreFailure::Unavailable`]).
    pub(super) retry_restore_at_ms: Option<u64>,
    /// Restores of this host in a row the store did not answer: the backoff doubles with them.
    pub(super) restore_retries: u32,
    /// An operator drains it: no new objects, and its objects move away at the next commit.
    pub(super) draining: bool,
}

impl HostState {
    pub(super) fn ready() -> Self {
        Self {
            up: true,
            lost_at_ms: None,
            ready: true,
            joining: None,
            objects: 0,
            types: BTreeSet::new(),
            retry_restore_at_ms: None,
            restore_retries: 0,
            draining: false,
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        self.up && self.ready
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// A manifest create is in flight: its answer decides what the line is.
    WaitingCommit,
    /// [`Command::ReadLine`] sent.
    ReadingLine,
    /// [`Command::Restore`] sent; waiting for the hosts in `waiting`.
    Restoring,
    /// [`Command::WriteFence`] sent.
    Fencing,
}

#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) seq: u64,
    pub(super) requests: Vec<RecoverId>,
    stage: Stage,
    line: Option<LineInfo>,
    /// Hosts whose answer to the restore is awaited.
    waiting: BTreeSet<HostId>,
    /// Hosts restored by this recovery: released at its end.
    restored: BTreeSet<HostId>,
    /// After a takeover: hosts of the line not registered by then are left out (they are
    /// restored on their own when they come).
    expect_until_ms: Option<u64>,
    /// The takeover's fence points at the line already.
    fenced_already: bool,
    /// When to retry a store command that failed.
    retry_at_ms: Option<u64>,
    retries: u32,
    dropped: Vec<ObjectId>,
    skipped: Vec<CheckpointId>,
}

impl Recovery {
    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        [self.expect_until_ms, self.retry_at_ms]
            .into_iter()
            .flatten()
            .min()
    }
}

impl HostState {
    /// Orders the restore again after a backoff that doubles with each restore in a row the
    /// store did not answer.
    fn schedule_restore(&mut self, now_ms: u64, retry_ms: u64) {
        let backoff = retry_ms
            .max(1)
            .saturating_mul(1u64 << self.restore_retries.min(4));
        self.restore_retries = self.restore_retries.saturating_add(1);
        self.retry_restore_at_ms = Some(now_ms.saturating_add(backoff));
    }
}

impl<T: EngineTypes> Engine<T> {
    /// Restores the store did not answer are ordered again once their backoff passed, to a
    /// host still up and still not restored (a recovery that began since orders its own).
    pub(super) fn check_restore_retries(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let due: Vec<HostId> = self
            .hosts
            .iter_mut()
            .filter_map(|(host, state)| {
                let at = state.retry_restore_at_ms?;
                if at > now_ms {
                    return None;
                }
                state.retry_restore_at_ms = None;
                (state.up && !state.ready).then(|| host.clone())
            })
            .collect();
        for host in due {
            let awaited = match &self.recovery {
                Some(r) => r.stage == Stage::Restoring && r.waiting.contains(&host),
                None => true,
            };
            if awaited {
                self.restore_late(now_ms, host, out);
            }
        }
    }

    pub(super) fn on_host_up(
        &mut self,
        now_ms: u64,
        host: HostId,
        resumed: bool,
        out: &mut Vec<Command<T>>,
    ) {
        if self.open_session(now_ms, &host, resumed, out) {
            self.restore_late(now_ms, host, out);
        }
    }

    /// See [`Event::Register`](super::Event::Register).
    pub(super) fn on_register(
        &mut self,
        now_ms: u64,
        registration: Registration,
        out: &mut Vec<Command<T>>,
    ) {
        let Registration {
            host,
            resumed,
            types,
            objects,
            object_types,
        } = registration;
        let restore = self.open_session(now_ms, &host, resumed, out);
        if let Some(state) = self.hosts.get_mut(&host) {
            state.types = types;
            // A node that can host objects may take some from fuller ones.
            self.rebalance_due = true;
        }
        for (object, type_name) in object_types {
            self.declare_type(object, type_name);
        }
        let announced: BTreeSet<ObjectId> = objects.iter().cloned().collect();
        for object in objects {
            self.on_join(now_ms, object, host.clone(), out);
        }
        if !resumed {
            // A new process holds only what it announced: what was made here from a factory
            // (moved here, or created through the cohort) died with the old one.
            let types = self.hosts.get(&host).map(|s| s.types.clone());
            let lost: Vec<(ObjectId, String)> = self
                .placement
                .iter()
                .filter(|(o, h)| **h == host && !announced.contains(*o))
                .filter_map(|(o, _)| {
                    let type_name = self.object_types.get(o)?;
                    types
                        .as_ref()
                        .is_some_and(|t| t.contains(type_name))
                        .then(|| (o.clone(), type_name.clone()))
                })
                .collect();
            self.creating.extend(lost);
        }
        if restore {
            self.restore_late(now_ms, host, out);
        }
    }

    /// `object` is of type `type_name`; see [`Event::ObjectType`](super::Event::ObjectType).
    pub(super) fn declare_type(&mut self, object: ObjectId, type_name: String) {
        // An object the engine is creating has the type it was created with: an announcement
        // of another type for its id is a conflicting claim, which the placement rules settle,
        // not a change of type.
        if self.creating.get(&object).is_none_or(|t| *t == type_name) {
            self.object_types.insert(object, type_name);
        }
    }

    /// Opens a session of `host`: resumed, or new (a restart of a host with objects is a
    /// recovery). Returns whether the host must then restore ([`restore_late`](Self::restore_late)),
    /// which the caller orders once it knows what the host holds.
    fn open_session(
        &mut self,
        now_ms: u64,
        host: &HostId,
        resumed: bool,
        out: &mut Vec<Command<T>>,
    ) -> bool {
        let host = host.clone();
        let known = self.hosts.get(&host).cloned();
        // Only a host up or lost within the timeout has a session to resume.
        if resumed
            && known
                .as_ref()
                .is_some_and(|k| k.up || k.lost_at_ms.is_some())
        {
            let state = self.hosts.entry(host.clone()).or_default();
            state.up = true;
            state.lost_at_ms = None;
            if !state.ready {
                // A recovery ran (or runs) while it was away: it restores like the others did.
                return true;
            }
            if !matches!(self.status, Status::Deposed) {
                // Its release may have been lost with the connection (sent while the link was
                // already dead): held, its objects would never run again. A second one is
                // harmless.
                out.push(Command::Release {
                    hosts: vec![host],
                    incarnation: self.incarnation,
                    line: None,
                });
            }
            return false;
        }
        // A new session: a new host, a restarted one, or one declared dead.
        if let Some(old) = known
            && (old.up || old.lost_at_ms.is_some())
            && self.hosts_objects(&host)
        {
            // Its old process is gone (a restart faster than the timeout): as if it died. Its
            // members stay placed on it, and counted, so that its next restart is seen too.
            self.hosts.insert(
                host.clone(),
                HostState {
                    objects: old.objects,
                    ..HostState::default()
                },
            );
            self.start_recovery(
                now_ms,
                RecoveryCause::HostRestarted { host: host.clone() },
                out,
            );
        }
        let state = self.hosts.entry(host.clone()).or_default();
        state.up = true;
        state.lost_at_ms = None;
        state.ready = false;
        state.retry_restore_at_ms = None;
        state.restore_retries = 0;
        true
    }

    pub(super) fn on_host_lost(&mut self, now_ms: u64, host: HostId, out: &mut Vec<Command<T>>) {
        let Some(state) = self.hosts.get_mut(&host) else {
            return;
        };
        if !state.up {
            return;
        }
        state.up = false;
        state.lost_at_ms = Some(now_ms);
        self.abort_for_host(now_ms, &host, out);
        // A host away during a recovery restores when it resumes.
        if let Some(r) = self
            .recovery
            .as_mut()
            .filter(|r| r.stage == Stage::Restoring)
            && r.waiting.remove(&host)
        {
            self.maybe_finish_restore(now_ms, out);
        }
    }

    /// Hosts lost for longer than the host timeout are dead. A dead host that held members
    /// stays known, down, while they are placed on it (it says where the absent objects were),
    /// and the cohort recovers; one that held none leaves at once.
    pub(super) fn check_hosts(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let timeout = self.config.host_timeout_ms;
        let dead: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|(_, h)| {
                !h.up
                    && h.lost_at_ms
                        .is_some_and(|t| now_ms >= t.saturating_add(timeout))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for host in dead {
            if self.hosts_objects(&host) {
                if let Some(state) = self.hosts.get_mut(&host) {
                    *state = HostState {
                        objects: state.objects,
                        ..HostState::default()
                    };
                }
                let moved = self.replace_objects_of(&host);
                self.start_recovery(now_ms, RecoveryCause::HostDead { host, moved }, out);
            } else {
                self.hosts.remove(&host);
            }
        }
    }

    /// Moves the members placed on dead `host` to hosts that are up and declared their type,
    /// each to the one holding the fewest members (ties by name), and returns how many moved.
    /// Members of a type no surviving host can create stay placed on `host`: they wait for it
    /// (or a host with their ids) to come back, as before.
    fn replace_objects_of(&mut self, host: &HostId) -> usize {
        let mut orphans: Vec<ObjectId> = self
            .placement
            .iter()
            .filter(|(_, h)| *h == host)
            .map(|(o, _)| o.clone())
            .collect();
        orphans.sort();
        let mut moved = 0;
        for object in orphans {
            let Some(type_name) = self.object_types.get(&object).cloned() else {
                continue;
            };
            let Some(target) = self.least_loaded_host_of(&type_name, Some(host)) else {
                continue;
            };
            self.place(object.clone(), target);
            self.creating.insert(object, type_name);
            moved += 1;
        }
        if moved > 0 {
            self.roster = None;
        }
        moved
    }

    /// The up host (other than `except`) that declared `type_name` and holds the fewest
    /// members, ties broken by name; a draining one only when there is no other.
    pub(super) fn least_loaded_host_of(
        &self,
        type_name: &str,
        except: Option<&HostId>,
    ) -> Option<HostId> {
        self.hosts
            .iter()
            .filter(|(h, s)| Some(*h) != except && s.up && s.types.contains(type_name))
            // A draining host only when no other can: an object hosted there until it moves
            // again beats one no checkpoint can hold.
            .min_by_key(|(h, s)| (s.draining, s.objects, (*h).clone()))
            .map(|(h, _)| h.clone())
    }

    /// The objects `host` must create in its next restore: placed on it by
    /// [`replace_objects_of`](Self::replace_objects_of), not restored there yet.
    fn creates_for(&self, host: &HostId) -> Vec<(ObjectId, String)> {
        if self.creating.is_empty() {
            return Vec::new();
        }
        let mut create: Vec<(ObjectId, String)> = self
            .creating
            .iter()
            .filter(|(o, _)| self.placement.get(*o) == Some(host))
            .map(|(o, t)| (o.clone(), t.clone()))
            .collect();
        create.sort();
        create
    }

    /// `host` restored: the objects it was to create exist there now.
    fn created_on(&mut self, host: &HostId) {
        if self.creating.is_empty() {
            return;
        }
        let placement = &self.placement;
        self.creating.retain(|o, _| placement.get(o) != Some(host));
    }

    /// Places `object` on `host`: a host down for good that it vacates is forgotten, so that
    /// the table of hosts stays bounded by the hosts in use.
    pub(super) fn place(&mut self, object: ObjectId, host: HostId) {
        self.creating.remove(&object);
        self.placement_version += 1;
        self.hosts.entry(host.clone()).or_default().objects += 1;
        if let Some(old) = self.placement.insert(object, host) {
            self.vacate(&old);
        }
    }

    /// Takes `object`'s placement away.
    pub(super) fn unplace(&mut self, object: &ObjectId) -> Option<HostId> {
        self.creating.remove(object);
        self.placement_version += 1;
        let old = self.placement.remove(object)?;
        self.vacate(&old);
        Some(old)
    }

    fn vacate(&mut self, host: &HostId) {
        let Some(state) = self.hosts.get_mut(host) else {
            return;
        };
        state.objects = state.objects.saturating_sub(1);
        if state.objects == 0 && !state.up && state.lost_at_ms.is_none() {
            self.hosts.remove(host);
        }
    }

    /// Whether any member lives on `host`.
    fn hosts_objects(&self, host: &HostId) -> bool {
        self.hosts.get(host).is_some_and(|h| h.objects > 0)
    }

    pub(super) fn check_recovery_timers(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if r.expect_until_ms.is_some_and(|t| now_ms >= t) {
            r.expect_until_ms = None;
            // Hosts of the line that did not come are left out: they restore when they come.
            let absent: Vec<HostId> = r
                .waiting
                .iter()
                .filter(|h| self.hosts.get(*h).is_none_or(|s| !s.up))
                .cloned()
                .collect();
            for host in &absent {
                r.waiting.remove(host);
            }
            self.maybe_finish_restore(now_ms, out);
            return;
        }
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if r.retry_at_ms.is_some_and(|t| now_ms >= t) {
            r.retry_at_ms = None;
            match r.stage {
                Stage::ReadingLine => out.push(Command::ReadLine {
                    recovery: r.seq,
                    skip: r.skipped.clone(),
                }),
                Stage::Fencing => {
                    if let Some(line) = &r.line {
                        out.push(Command::WriteFence {
                            recovery: r.seq,
                            epoch: self.epoch,
                            line: line.id,
                            skip: r.skipped.clone(),
                        });
                    }
                }
                Stage::WaitingCommit | Stage::Restoring => {}
            }
        }
    }

    pub(super) fn on_recover(
        &mut self,
        now_ms: u64,
        request: RecoverId,
        out: &mut Vec<Command<T>>,
    ) {
        if self.status == Status::Deposed {
            out.push(Command::Recovered {
                recovery: 0,
                requests: vec![request],
                result: Err(RecoveryFailure::Fenced),
            });
            return;
        }
        if let Some(r) = self.recovery.as_mut() {
            // One recovery serves every caller that asked while it runs.
            r.requests.push(request);
            return;
        }
        self.start_recovery(now_ms, RecoveryCause::Requested, out);
        if let Some(r) = self.recovery.as_mut() {
            r.requests.push(request);
        }
    }

    /// A coordinator took over under this engine's epoch: the line's objects are expected on the
    /// hosts its state table names, and every host rolls back to it.
    pub(super) fn on_take_over(
        &mut self,
        now_ms: u64,
        line: Option<LineInfo>,
        out: &mut Vec<Command<T>>,
    ) {
        // With no line, nothing ran that could be rolled back: hosts restore on their own as
        // they come.
        let Some(line) = line else {
            return;
        };
        if self.status == Status::Deposed {
            return;
        }
        {
            for (object, host) in &line.objects {
                if let Some(host) = host {
                    self.members.insert(object.clone());
                    self.place(object.clone(), host.clone());
                }
            }
            // What a host that lost an object needs to make it again.
            for (object, type_name) in &line.types {
                if !self.object_types.contains_key(object) {
                    self.object_types.insert(object.clone(), type_name.clone());
                }
            }
            self.settle_retired(Some(&line));
            self.roster = None;
        }
        self.start_recovery(now_ms, RecoveryCause::TakeOver, out);
        let expect_until = now_ms.saturating_add(self.config.host_timeout_ms);
        if let Some(r) = self.recovery.as_mut()
            && r.stage == Stage::ReadingLine
        {
            r.fenced_already = true;
            r.expect_until_ms = Some(expect_until);
            self.begin_restore(now_ms, Some(line), out);
        }
    }

    /// Starts (or restarts) a recovery: the attempt in flight aborts, unless its manifest create
    /// is in flight, whose answer is waited for (it decides what the line is).
    pub(super) fn start_recovery(
        &mut self,
        now_ms: u64,
        cause: RecoveryCause,
        out: &mut Vec<Command<T>>,
    ) {
        if self.status == Status::Deposed {
            return;
        }
        let (requests, skipped) = match self.recovery.take() {
            Some(old) => (old.requests, old.skipped),
            None => (Vec::new(), Vec::new()),
        };
        self.recovery_seq += 1;
        let seq = self.recovery_seq;
        self.status = Status::Recovering;
        // Timeouts before the rollback say nothing of messages after it.
        self.lost_message_timeouts = 0;
        // A takeover knows its line: the fence its leadership wrote points at it.
        let read_line = cause != RecoveryCause::TakeOver;
        out.push(Command::Recovering {
            recovery: seq,
            cause,
        });
        if self.attempt.as_ref().is_some_and(|a| !a.is_creating()) {
            self.abort(now_ms, AbortReason::Halted, out);
        }
        let stage = if self.attempt.is_some() {
            Stage::WaitingCommit
        } else {
            if read_line {
                out.push(Command::ReadLine {
                    recovery: seq,
                    skip: skipped.clone(),
                });
            }
            Stage::ReadingLine
        };
        self.recovery = Some(Recovery {
            seq,
            requests,
            stage,
            line: None,
            waiting: BTreeSet::new(),
            restored: BTreeSet::new(),
            expect_until_ms: None,
            fenced_already: false,
            retry_at_ms: None,
            retries: 0,
            dropped: Vec::new(),
            skipped,
        });
    }

    /// The manifest create a recovery waited for was answered: read the line now.
    pub(super) fn after_commit_result(&mut self, _now_ms: u64, out: &mut Vec<Command<T>>) {
        if let Some(r) = self
            .recovery
            .as_mut()
            .filter(|r| r.stage == Stage::WaitingCommit)
        {
            r.stage = Stage::ReadingLine;
            out.push(Command::ReadLine {
                recovery: r.seq,
                skip: r.skipped.clone(),
            });
        }
    }

    pub(super) fn on_line_read(
        &mut self,
        now_ms: u64,
        seq: u64,
        result: Result<Option<LineInfo>, String>,
        out: &mut Vec<Command<T>>,
    ) {
        let Some(r) = self
            .recovery
            .as_mut()
            .filter(|r| r.seq == seq && r.stage == Stage::ReadingLine)
        else {
            return;
        };
        let line = match result {
            Ok(line) => line,
            Err(reason) => {
                self.store_failed(now_ms, reason, out);
                return;
            }
        };
        r.retries = 0;
        if self.config.hosting == Hosting::InProcess
            && let Some(line) = &line
        {
            let missing: Vec<ObjectId> = line
                .objects
                .keys()
                .filter(|o| !self.members.contains(*o))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let line = line.id;
                self.fail_recovery(
                    now_ms,
                    RecoveryFailure::MissingObjects { line, missing },
                    out,
                );
                return;
            }
        }
        self.begin_restore(now_ms, line, out);
    }

    /// Every host up restores the line under a new incarnation; hosts away restore when they
    /// resume; after a takeover, the line's hosts not registered yet are waited for.
    fn begin_restore(&mut self, now_ms: u64, line: Option<LineInfo>, out: &mut Vec<Command<T>>) {
        if self.recovery.is_none() {
            return;
        }
        self.incarnation += 1;
        // In process, members the line does not hold were created by the discarded future.
        let mut dropped = Vec::new();
        if self.config.hosting == Hosting::InProcess {
            dropped = self
                .members
                .iter()
                .filter(|m| line.as_ref().is_none_or(|l| !l.objects.contains_key(*m)))
                .cloned()
                .collect();
            if line.is_none() {
                // Nothing was ever committed: every object keeps its state.
                dropped.clear();
            }
        }
        let mut drops: std::collections::BTreeMap<HostId, Vec<ObjectId>> = Default::default();
        for object in &dropped {
            self.members.remove(object);
            if let Some(host) = self.unplace(object) {
                drops.entry(host).or_default().push(object.clone());
            }
        }
        if !dropped.is_empty() {
            self.roster = None;
        }
        self.settle_retired(line.as_ref());
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        r.dropped.extend(dropped);
        r.stage = Stage::Restoring;
        r.line = line;
        r.waiting.clear();
        r.restored.clear();
        let line_id = r.line.as_ref().map(|l| l.id);
        let creates: BTreeMap<HostId, Vec<(ObjectId, String)>> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.up)
            .map(|(h, _)| (h.clone(), self.creates_for(h)))
            .collect();
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        for (host, state) in &mut self.hosts {
            state.ready = false;
            state.joining = None;
            // This recovery orders its own restore.
            state.retry_restore_at_ms = None;
            if state.up {
                out.push(Command::Restore {
                    recovery: r.seq,
                    host: host.clone(),
                    line: line_id,
                    colour: self.last_round,
                    incarnation: self.incarnation,
                    drop: drops.remove(host).unwrap_or_default(),
                    create: creates.get(host).cloned().unwrap_or_default(),
                });
                r.waiting.insert(host.clone());
            } else if r.expect_until_ms.is_some() {
                // A takeover waits for the line's hosts for a while.
                r.waiting.insert(host.clone());
            }
        }
        self.maybe_finish_restore(now_ms, out);
    }

    /// A host that comes up (or back) while it is not restored into the current incarnation:
    /// during a recovery's restores it is one more to wait for; otherwise it restores the
    /// newest line on its own and runs once restored (no checkpoint commits without its
    /// objects meanwhile).
    fn restore_late(&mut self, _now_ms: u64, host: HostId, out: &mut Vec<Command<T>>) {
        // Deposed, nothing more; halted, the next recovery restores it.
        if matches!(self.status, Status::Deposed | Status::Halted) {
            return;
        }
        let create = self.creates_for(&host);
        match self.recovery.as_mut() {
            Some(r) if r.stage == Stage::Restoring => {
                r.waiting.insert(host.clone());
                out.push(Command::Restore {
                    recovery: r.seq,
                    host,
                    line: r.line.as_ref().map(|l| l.id),
                    colour: self.last_round,
                    incarnation: self.incarnation,
                    drop: Vec::new(),
                    create,
                });
            }
            // Restored when the recovery's restores begin, or after it ends.
            Some(_) => {}
            None => {
                if let Some(state) = self.hosts.get_mut(&host) {
                    state.joining = Some(self.incarnation);
                }
                out.push(Command::Restore {
                    recovery: 0,
                    host,
                    line: (self.last_committed != CheckpointId::ZERO)
                        .then_some(self.last_committed),
                    colour: self.last_round,
                    incarnation: self.incarnation,
                    drop: Vec::new(),
                    create,
                });
            }
        }
    }

    pub(super) fn on_restored(
        &mut self,
        now_ms: u64,
        seq: u64,
        incarnation: u64,
        host: HostId,
        result: Result<(), RestoreFailure>,
        out: &mut Vec<Command<T>>,
    ) {
        // The answer to an order of an earlier incarnation (this leader's, or a queued answer
        // to a previous leader's) says nothing of the restore under way now.
        if incarnation != self.incarnation {
            return;
        }
        if seq == 0 {
            // A host restored on its own: it runs from now on, unless a recovery began since
            // (that one restores it again).
            if self.recovery.is_some() {
                return;
            }
            let retry_ms = self.config.retry_ms;
            let Some(state) = self
                .hosts
                .get_mut(&host)
                .filter(|s| s.up && s.joining == Some(incarnation))
            else {
                return;
            };
            match result {
                Ok(()) => {
                    state.ready = true;
                    state.joining = None;
                    state.retry_restore_at_ms = None;
                    state.restore_retries = 0;
                    self.created_on(&host);
                    // It restored the line on its own and knows it.
                    out.push(Command::Release {
                        hosts: vec![host],
                        incarnation: self.incarnation,
                        line: None,
                    });
                }
                // Nothing else would ever order it again: held, its objects would be missing
                // from every attempt for good.
                Err(RestoreFailure::Unavailable { .. }) => state.schedule_restore(now_ms, retry_ms),
                // Damage is found again by the next recovery; a refusal waits for an operator.
                Err(_) => {}
            }
            return;
        }
        let Some(r) = self
            .recovery
            .as_mut()
            .filter(|r| r.seq == seq && r.stage == Stage::Restoring)
        else {
            return;
        };
        match result {
            Ok(()) => {
                r.waiting.remove(&host);
                r.restored.insert(host.clone());
                self.created_on(&host);
            }
            Err(RestoreFailure::Damaged { .. }) => {
                // Treated like damage found by the store: fall back to the line before.
                let Some(line) = r.line.as_ref().map(|l| l.id) else {
                    return;
                };
                r.skipped.push(line);
                self.start_recovery(now_ms, RecoveryCause::Damaged { line }, out);
                return;
            }
            Err(failure) => {
                if !r.requests.is_empty() {
                    self.fail_recovery(now_ms, RecoveryFailure::Restore { host, failure }, out);
                    return;
                }
                if matches!(failure, RestoreFailure::Unavailable { .. }) {
                    // Still awaited: the recovery cannot release the others before this host
                    // restored, or it would run from the discarded future.
                    let retry_ms = self.config.retry_ms;
                    if let Some(state) = self.hosts.get_mut(&host) {
                        state.schedule_restore(now_ms, retry_ms);
                    }
                    return;
                }
                // The host stays held (its objects absent) until an operator fixes the cause;
                // the others go on.
                r.waiting.remove(&host);
            }
        }
        self.maybe_finish_restore(now_ms, out);
    }

    /// Every awaited host answered: fence (unless the takeover's fence already points at the
    /// line), then release.
    fn maybe_finish_restore(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if r.stage != Stage::Restoring || !r.waiting.is_empty() {
            return;
        }
        match &r.line {
            Some(line) if !r.fenced_already => {
                r.stage = Stage::Fencing;
                out.push(Command::WriteFence {
                    recovery: r.seq,
                    epoch: self.epoch,
                    line: line.id,
                    skip: r.skipped.clone(),
                });
            }
            _ => self.finish_recovery(now_ms, None, out),
        }
    }

    pub(super) fn on_fence_result(
        &mut self,
        now_ms: u64,
        seq: u64,
        outcome: FenceOutcome,
        out: &mut Vec<Command<T>>,
    ) {
        if !self
            .recovery
            .as_ref()
            .is_some_and(|r| r.seq == seq && r.stage == Stage::Fencing)
        {
            return;
        }
        match outcome {
            FenceOutcome::Written { id } => {
                self.last_committed = self.last_committed.max(id);
                self.finish_recovery(now_ms, Some(id), out);
            }
            FenceOutcome::LineMoved => self.start_recovery(now_ms, RecoveryCause::LineMoved, out),
            FenceOutcome::Fenced => self.depose(
                now_ms,
                Some("the store fenced the recovery's fence: a newer epoch wrote the newest manifest".into()),
                out,
            ),
            FenceOutcome::Failed { reason } => self.store_failed(now_ms, reason, out),
        }
    }

    /// A store command of the recovery failed: a caller waiting hears of it (the cohort stays
    /// halted until it asks again); a recovery nobody asked for retries with backoff.
    fn store_failed(&mut self, now_ms: u64, reason: String, out: &mut Vec<Command<T>>) {
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if !r.requests.is_empty() {
            self.fail_recovery(now_ms, RecoveryFailure::Store { reason }, out);
            return;
        }
        let backoff = self
            .config
            .retry_ms
            .max(1)
            .saturating_mul(1u64 << r.retries.min(4));
        r.retries += 1;
        r.retry_at_ms = Some(now_ms.saturating_add(backoff));
    }

    fn finish_recovery(
        &mut self,
        now_ms: u64,
        fence: Option<CheckpointId>,
        out: &mut Vec<Command<T>>,
    ) {
        let Some(r) = self.recovery.take() else {
            return;
        };
        let mut released = Vec::new();
        for host in &r.restored {
            if let Some(state) = self.hosts.get_mut(host).filter(|s| s.up) {
                state.ready = true;
                state.retry_restore_at_ms = None;
                state.restore_retries = 0;
                released.push(host.clone());
            }
        }
        if !released.is_empty() {
            out.push(Command::Release {
                hosts: released,
                incarnation: self.incarnation,
                line: fence.or(r.line.as_ref().map(|l| l.id)),
            });
        }
        self.status = Status::Running;
        self.last_finished_ms = Some(now_ms);
        out.push(Command::Recovered {
            recovery: r.seq,
            requests: r.requests,
            result: Ok(Recovered {
                line: r.line.as_ref().map(|l| l.id),
                fence,
                epoch: self.epoch,
                dropped: r.dropped,
                skipped_damaged: r.skipped,
            }),
        });
        // Hosts that came up while the line was read or the fence written restore now.
        let late: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.up && !s.ready)
            .map(|(h, _)| h.clone())
            .collect();
        for host in late {
            if !r.restored.contains(&host) {
                self.restore_late(now_ms, host, out);
            }
        }
    }

    fn fail_recovery(&mut self, now_ms: u64, failure: RecoveryFailure, out: &mut Vec<Command<T>>) {
        let Some(r) = self.recovery.take() else {
            return;
        };
        self.status = Status::Halted;
        self.last_finished_ms = Some(now_ms);
        out.push(Command::Recovered {
            recovery: r.seq,
            requests: r.requests,
            result: Err(failure),
        });
    }
}

/// Object failures and the restarts they caused, for the [`RestartPolicy`](super::RestartPolicy).
#[derive(Debug, Default)]
pub(super) struct Restarts {
    /// When each restart of the window started, oldest first.
    started_ms: VecDeque<u64>,
    /// A failure waiting out its backoff: the object, its error, and when to restart.
    pending: Option<(ObjectId, String, u64)>,
    /// Why the cohort halted beyond the policy.
    pub(super) halt: Option<Halt>,
}

impl Restarts {
    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.pending.as_ref().map(|(_, _, at)| *at)
    }
}

impl<T: EngineTypes> Engine<T> {
    /// An object failed: restart the cohort after the policy's backoff, or halt it if the
    /// window already holds the policy's restarts. A failure while a restart waits or a
    /// recovery runs is rolled back by that one; one of an older incarnation was already.
    pub(super) fn on_object_failed(
        &mut self,
        now_ms: u64,
        object: ObjectId,
        incarnation: u64,
        error: String,
        out: &mut Vec<Command<T>>,
    ) {
        if incarnation < self.incarnation
            || !self.members.contains(&object)
            || self.status != Status::Running
            || self.recovery.is_some()
            || self.restarts.pending.is_some()
        {
            return;
        }
        let policy = self.config.restart;
        let window_start = now_ms.saturating_sub(policy.window_ms);
        let r = &mut self.restarts;
        while r.started_ms.front().is_some_and(|t| *t <= window_start) {
            r.started_ms.pop_front();
        }
        let restarts = u32::try_from(r.started_ms.len()).unwrap_or(u32::MAX);
        if restarts >= policy.max_restarts {
            let halt = Halt {
                object,
                error,
                restarts,
                policy,
            };
            r.halt = Some(halt.clone());
            self.status = Status::Halted;
            self.refuse_pending(
                now_ms,
                AbortReason::Halted,
                &super::TriggerFailure::Aborted(AbortReason::Halted),
                out,
            );
            out.push(Command::Halted(halt));
            return;
        }
        let backoff = policy
            .backoff_ms
            .saturating_mul(1u64 << restarts.min(20))
            .min(policy.max_backoff_ms.max(policy.backoff_ms));
        r.pending = Some((object, error, now_ms.saturating_add(backoff)));
    }

    /// A restart whose backoff passed starts its recovery (unless another recovery or a halt
    /// came first: that one rolls the failure back, or holds it).
    pub(super) fn check_restart(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        let Some((object, error, at)) = self.restarts.pending.take() else {
            return;
        };
        if now_ms < at {
            self.restarts.pending = Some((object, error, at));
            return;
        }
        if self.status != Status::Running || self.recovery.is_some() {
            return;
        }
        self.restarts.started_ms.push_back(now_ms);
        let restart = u32::try_from(self.restarts.started_ms.len()).unwrap_or(u32::MAX);
        self.start_recovery(
            now_ms,
            RecoveryCause::ObjectFailed {
                object,
                error,
                restart,
            },
            out,
        );
    }

    /// A recovery was asked for: the failures counted so far are forgiven, and a halt beyond
    /// the policy ends with it.
    pub(super) fn forgive_failures(&mut self) {
        self.restarts = Restarts::default();
    }

    /// Whether a failed object waits out its backoff: no attempt starts meanwhile (it votes
    /// no).
    pub(super) fn restart_pending(&self) -> bool {
        self.restarts.pending.is_some()
    }
}
