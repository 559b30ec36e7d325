//! The coordinator's core, shared by the in-process runtime and the coordinator service: one
//! [`Engine`] and the one way its store commands are carried out (the manifest, the line, the
//! fence, the discard). What reaches participants (prepare, seal, decide, restore, release)
//! goes through a [`Transport`]: local channels to object tasks, or frames to nodes. No
//! protocol decision is taken here or in a transport; they carry the engine's commands and
//! bring back its events.

pub(crate) mod commit;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cohort_checkpoint::{
    CheckpointStore, Fence, FenceLine, FenceRequest, InTransitEntry, Manifest, ObjectEntry,
};
use cohort_object_api::{CheckpointId, Clock, ObjectId};
use tokio::sync::oneshot;

use crate::engine::{
    ByHost, Command, CommitOutcome, Decision, Engine, Event, FenceOutcome, Halt, Health, HostId,
    LineInfo, RecoverId, Recovered, RecoveryCause, RecoveryFailure, Round, TriggerFailure,
    TriggerId,
};
use crate::error::{Error, Result};
use crate::failpoint::{self, Crash, FailPoints};
use crate::runtime::Local;

/// A restore order for one host, as the core hands it to a transport.
pub(crate) struct RestoreOrder<'a> {
    pub(crate) recovery: u64,
    pub(crate) host: &'a HostId,
    /// The line's id; `None`: nothing committed, objects keep their state.
    pub(crate) line_id: Option<CheckpointId>,
    /// The line's manifest, when the core has it (a transport that reads it itself may ignore
    /// it).
    pub(crate) line: Option<&'a Arc<Manifest>>,
    pub(crate) colour: Round,
    pub(crate) incarnation: u64,
    pub(crate) drop: &'a [ObjectId],
    /// Objects the host creates from its factories first (moved off a dead host), with their
    /// type names.
    pub(crate) create: &'a [(ObjectId, String)],
}

/// What a committed checkpoint cost, as the core saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommitStats {
    /// From the prepare to the manifest's creation.
    pub(crate) duration: Duration,
    /// Of which creating the manifest.
    pub(crate) create: Duration,
    pub(crate) built: commit::Built,
}

/// How the core reaches participants. Everything here carries a command of the engine;
/// answers come back as events ([`Core::feed`]).
pub(crate) trait Transport: Send {
    /// Phase 1: ask each host to prepare its participants. Returns what is known at once
    /// (votes of objects counted without waking them, no votes of objects that are gone).
    fn prepare(
        &mut self,
        id: CheckpointId,
        round: Round,
        token: &str,
        hosts: &ByHost,
    ) -> impl Future<Output = Vec<Event<Local>>> + Send;

    /// Ask `hosts` to make their channel state of `round` durable; each answers
    /// [`Event::Sealed`].
    fn seal(
        &mut self,
        round: Round,
        hosts: &[HostId],
    ) -> impl Future<Output = Vec<Event<Local>>> + Send;

    /// Phase 2: tell `hosts` how `round` ended.
    fn decided(&mut self, id: CheckpointId, round: Round, decision: &Decision, hosts: &[HostId]);

    /// Restore one host to a line; answered with [`Event::Restored`] (returned here when the
    /// transport restores inline, else later).
    fn restore(
        &mut self,
        order: RestoreOrder<'_>,
    ) -> impl Future<Output = Vec<Event<Local>>> + Send;

    /// `host` creates `object` of `type_name` from its factory: application code asked the
    /// cohort for it ([`Event::Create`]). A transport whose objects are created by the caller
    /// never gets this order.
    fn create(&mut self, host: &HostId, object: &ObjectId, type_name: &str) {
        let _ = (host, object, type_name);
    }

    /// A request to create `object` was refused.
    fn create_refused(&mut self, object: &ObjectId, reason: &str) {
        let _ = (object, reason);
    }

    /// `host` must drop its copies of `objects`: they live on another host now. A transport
    /// whose objects all live on one host never gets this order.
    fn disown(&mut self, host: &HostId, objects: &[ObjectId]) {
        let _ = (host, objects);
    }

    /// A request to remove `object` was refused, for `reason`.
    fn remove_refused(&mut self, object: &ObjectId, reason: &str) {
        let _ = (object, reason);
    }

    /// `hosts` handle messages again, in `incarnation`.
    fn release(&mut self, hosts: &[HostId], incarnation: u64, line: Option<CheckpointId>);

    /// A recovery starts.
    fn recovering(&mut self, recovery: u64, cause: &RecoveryCause);

    /// A recovery ended: answer `requests`. `error` is the typed error behind a failure, when
    /// the core or the transport kept one.
    fn recovered(
        &mut self,
        requests: Vec<RecoverId>,
        result: std::result::Result<Recovered, RecoveryFailure>,
        error: Option<Error>,
    );

    /// The cohort's checkpoint health changed.
    fn health(&mut self, health: &Health);

    /// Objects failed beyond the restart policy: the cohort halted.
    fn halted(&mut self, halt: &Halt);

    /// The store fenced this coordinator: it writes nothing more.
    fn deposed(&mut self, reason: &str);

    /// A checkpoint committed (for metrics).
    fn committed(&mut self, manifest: &Manifest, stats: CommitStats);

    /// Extra metadata for every manifest (the service's state table).
    fn metadata(&self, engine: &Engine<Local>) -> BTreeMap<String, Vec<u8>>;

    /// Where each object of `line` lived when it was committed, if the line says.
    fn line_hosts(&self, line: &Manifest) -> BTreeMap<ObjectId, Option<HostId>>;
}

/// The engine, the store, and the bookkeeping around them. See the [module docs](self).
pub(crate) struct Core<X: Transport> {
    pub(crate) engine: Engine<Local>,
    pub(crate) transport: X,
    store: CheckpointStore,
    /// Wall clock (Unix ms) for manifest timestamps.
    wall: Clock,
    fail_points: FailPoints,
    origin: tokio::time::Instant,
    /// The newest manifest committed or fenced here: unchanged objects' entries come from it.
    last_manifest: Option<Arc<Manifest>>,
    /// The participants `last_manifest` was built from, when this core committed it: its
    /// objects are exactly these, so the next commit with the same roster (the engine keeps
    /// the list while the membership stays) updates it in place instead of rebuilding it.
    line_participants: Option<Arc<[ObjectId]>>,
    /// The line read for the recovery in progress.
    line: Option<Arc<Manifest>>,
    triggers: HashMap<TriggerId, oneshot::Sender<Result<CheckpointId>>>,
    next_trigger: u64,
    attempt_started: Option<tokio::time::Instant>,
    /// The typed error behind the last store failure of a recovery, for its callers.
    store_error: Option<Error>,
}

impl<X: Transport> Core<X> {
    pub(crate) fn new(
        engine: Engine<Local>,
        transport: X,
        store: CheckpointStore,
        wall: Clock,
        fail_points: FailPoints,
        origin: tokio::time::Instant,
    ) -> Self {
        Self {
            engine,
            transport,
            store,
            wall,
            fail_points,
            origin,
            last_manifest: None,
            line_participants: None,
            line: None,
            triggers: HashMap::new(),
            next_trigger: 0,
            attempt_started: None,
            store_error: None,
        }
    }

    /// Milliseconds since the core's origin, the engine's time.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the engine next wants a [`Event::Tick`].
    pub(crate) fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.engine
            .next_deadline_ms()
            .map(|ms| self.origin + Duration::from_millis(ms))
    }

    /// Starts from `manifest` as the newest line (a takeover's fence): unchanged objects'
    /// entries come from it.
    pub(crate) fn set_last_manifest(&mut self, manifest: Option<Arc<Manifest>>) {
        self.last_manifest = manifest;
        self.line_participants = None;
    }

    /// Queues a manual trigger; `reply` gets the committed id.
    pub(crate) async fn trigger(
        &mut self,
        reply: oneshot::Sender<Result<CheckpointId>>,
    ) -> std::result::Result<(), Crash> {
        self.next_trigger += 1;
        let request = TriggerId(self.next_trigger);
        self.triggers.insert(request, reply);
        self.feed(Event::Trigger { request }).await
    }

    /// Answers every waiting trigger with `error` (the service stepped down).
    pub(crate) fn fail_triggers(&mut self, error: impl Fn() -> Error) {
        for (_, reply) in self.triggers.drain() {
            let _ = reply.send(Err(error()));
        }
    }

    /// Feeds one event and carries out the commands, and the events they produce, in order.
    pub(crate) async fn feed(&mut self, event: Event<Local>) -> std::result::Result<(), Crash> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = self.now_ms();
            for command in self.engine.handle(now, event) {
                queue.extend(self.execute(command).await?);
            }
        }
        Ok(())
    }

    /// Feeds events that most often produce no command (votes) without building the future
    /// that carries commands out for each.
    pub(crate) async fn feed_all(
        &mut self,
        events: impl IntoIterator<Item = Event<Local>>,
    ) -> std::result::Result<(), Crash> {
        for event in events {
            let now = self.now_ms();
            let commands = self.engine.handle(now, event);
            if commands.is_empty() {
                continue;
            }
            let mut queue = VecDeque::new();
            for command in commands {
                queue.extend(self.execute(command).await?);
            }
            while let Some(event) = queue.pop_front() {
                let now = self.now_ms();
                for command in self.engine.handle(now, event) {
                    queue.extend(self.execute(command).await?);
                }
            }
        }
        Ok(())
    }

    fn crash_at(&self, point: &str) -> std::result::Result<(), Crash> {
        self.fail_points.hit(point)
    }

    /// The round token of `round` under this engine's epoch: the folder of its segments.
    pub(crate) fn token(&self, round: Round) -> String {
        format!("e{}-r{}", self.engine.epoch(), round.0)
    }

    async fn execute(
        &mut self,
        command: Command<Local>,
    ) -> std::result::Result<Vec<Event<Local>>, Crash> {
        match command {
            Command::Prepare { id, round, hosts } => {
                self.crash_at(failpoint::PREPARE_BEFORE)?;
                self.attempt_started = Some(tokio::time::Instant::now());
                let token = self.token(round);
                tracing::debug!(checkpoint = %id, %round, hosts = hosts.len(), "prepare");
                let events = self.transport.prepare(id, round, &token, &hosts).await;
                self.crash_at(failpoint::PREPARE_AFTER)?;
                Ok(events)
            }
            Command::Seal { round, hosts } => {
                self.crash_at(failpoint::COMMIT_BEFORE_SEAL)?;
                Ok(self.transport.seal(round, &hosts).await)
            }
            Command::Commit {
                id,
                round,
                participants,
                ballots,
                in_transit,
                retired,
            } => {
                if in_transit.is_empty() {
                    // Nothing to seal: the seal's fail point is passed here.
                    self.crash_at(failpoint::COMMIT_BEFORE_SEAL)?;
                }
                let outcome = self
                    .commit(id, round, participants, ballots, in_transit, retired)
                    .await?;
                Ok(vec![Event::CommitResult { round, outcome }])
            }
            Command::Decided {
                id,
                round,
                decision,
                hosts,
            } => {
                match &decision {
                    Decision::Aborted(reason) => {
                        tracing::warn!(checkpoint = %id, %round, %reason, "checkpoint aborted")
                    }
                    Decision::Committed => tracing::debug!(checkpoint = %id, %round, "committed"),
                }
                self.transport.decided(id, round, &decision, &hosts);
                self.crash_at(failpoint::DECIDED_AFTER)?;
                Ok(Vec::new())
            }
            Command::Discard { id, round } => {
                self.crash_at(failpoint::DISCARD_BEFORE)?;
                let store = self.store.clone();
                let token = self.token(round);
                tokio::spawn(async move {
                    if let Err(e) = store.discard_round(id, &token).await {
                        tracing::warn!(checkpoint = %id, round = %token, error = %e, "could not discard an aborted round's blobs; gc will");
                    }
                });
                Ok(Vec::new())
            }
            Command::Reply { request, result } => {
                if let Some(reply) = self.triggers.remove(&request) {
                    let (epoch, next) = (self.engine.epoch(), self.engine.last_committed().next());
                    let _ = reply.send(result.map_err(|failure| match failure {
                        TriggerFailure::Aborted(reason) => Error::Aborted { id: next, reason },
                        TriggerFailure::Fenced => Error::Fenced { epoch },
                    }));
                }
                Ok(Vec::new())
            }
            Command::Health(health) => {
                self.transport.health(&health);
                Ok(Vec::new())
            }
            Command::Recovering { recovery, cause } => {
                tracing::warn!(recovery, %cause, "cohort recovery");
                self.store_error = None;
                self.transport.recovering(recovery, &cause);
                Ok(Vec::new())
            }
            Command::ReadLine { recovery, skip } => {
                let result = match self.store.recovery_line_referenced(&skip).await {
                    Ok(line) => {
                        let line = line.map(|l| Arc::new(l.manifest));
                        let info = line
                            .as_ref()
                            .map(|m| line_info(m, self.transport.line_hosts(m)));
                        self.line = line;
                        Ok(info)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the recovery line");
                        let reason = e.to_string();
                        self.store_error = Some(e.into());
                        Err(reason)
                    }
                };
                Ok(vec![Event::LineRead { recovery, result }])
            }
            Command::Restore {
                recovery,
                host,
                line,
                colour,
                incarnation,
                drop,
                create,
            } => {
                let manifest = match line {
                    Some(id) => [self.line.as_ref(), self.last_manifest.as_ref()]
                        .into_iter()
                        .flatten()
                        .find(|m| m.id == id)
                        .cloned(),
                    None => None,
                };
                let order = RestoreOrder {
                    recovery,
                    host: &host,
                    line_id: line,
                    line: manifest.as_ref(),
                    colour,
                    incarnation,
                    drop: &drop,
                    create: &create,
                };
                if recovery != 0 {
                    self.crash_at(failpoint::RECOVER_BEFORE_RESTORE)?;
                }
                Ok(self.transport.restore(order).await)
            }
            Command::WriteFence {
                recovery,
                epoch,
                line,
                skip,
            } => {
                self.crash_at(failpoint::RECOVER_BEFORE_FENCE)?;
                let outcome = self.write_fence(recovery, epoch, line, skip).await;
                if matches!(outcome, FenceOutcome::Written { .. }) {
                    self.crash_at(failpoint::RECOVER_AFTER_FENCE)?;
                }
                Ok(vec![Event::FenceResult { recovery, outcome }])
            }
            Command::Create {
                host,
                object,
                type_name,
            } => {
                tracing::info!(%host, %object, %type_name, "object created through the cohort");
                self.transport.create(&host, &object, &type_name);
                Ok(Vec::new())
            }
            Command::RemoveRefused { object, reason } => {
                tracing::warn!(%object, %reason, "refused to remove an object");
                self.transport.remove_refused(&object, &reason);
                Ok(Vec::new())
            }
            Command::DrainRefused { host, reason } => {
                tracing::warn!(%host, %reason, "refused to drain a node");
                Ok(Vec::new())
            }
            Command::CreateRefused { object, reason } => {
                tracing::warn!(%object, %reason, "refused to create an object");
                self.transport.create_refused(&object, &reason);
                Ok(Vec::new())
            }
            Command::Disown { host, objects } => {
                tracing::warn!(%host, objects = objects.len(), first = ?objects.first(), "a node announced objects that live on another node now; it drops them");
                self.transport.disown(&host, &objects);
                Ok(Vec::new())
            }
            Command::Release {
                hosts,
                incarnation,
                line,
            } => {
                self.transport.release(&hosts, incarnation, line);
                Ok(Vec::new())
            }
            Command::Recovered {
                recovery,
                requests,
                result,
            } => {
                match &result {
                    Ok(r) => {
                        tracing::info!(recovery, line = ?r.line, fence = ?r.fence, epoch = r.epoch, dropped = r.dropped.len(), "cohort recovered")
                    }
                    Err(e) => tracing::error!(recovery, error = %e, "recovery failed"),
                }
                let error = result.as_ref().err().and_then(|_| self.store_error.take());
                self.line = None;
                self.transport.recovered(requests, result, error);
                Ok(Vec::new())
            }
            Command::Halted(halt) => {
                tracing::error!(%halt, "cohort halted");
                self.transport.halted(&halt);
                Ok(Vec::new())
            }
            Command::Deposed { reason } => {
                tracing::error!(%reason, "deposed: a coordinator with a newer epoch took over");
                self.transport.deposed(&reason);
                Ok(Vec::new())
            }
        }
    }

    /// Builds the manifest and creates it: the commit point.
    async fn commit(
        &mut self,
        id: CheckpointId,
        round: Round,
        participants: Arc<[ObjectId]>,
        ballots: Vec<(ObjectId, crate::engine::Ballot<ObjectEntry>)>,
        in_transit: Vec<InTransitEntry>,
        retired: BTreeMap<ObjectId, (u64, u64)>,
    ) -> std::result::Result<CommitOutcome, Crash> {
        let previous_id = CheckpointId::new(id.get().saturating_sub(1));
        if previous_id != CheckpointId::ZERO
            && self
                .last_manifest
                .as_ref()
                .is_none_or(|m| m.id != previous_id)
        {
            // Unchanged objects' entries come from the checkpoint before this one.
            self.line_participants = None;
            match self.store.read_manifest(previous_id).await {
                Ok(m) => self.last_manifest = Some(Arc::new(m)),
                Err(e) => {
                    tracing::warn!(checkpoint = %previous_id, error = %e, "cannot read the previous line");
                    self.last_manifest = None;
                }
            }
        }
        let metadata = self.transport.metadata(&self.engine);
        let epoch = self.engine.epoch();
        let created_at_ms = self.wall.wall_ms();
        let token = self.token(round);
        let attempt = |previous| commit::Attempt {
            id,
            epoch,
            created_at_ms,
            round: token,
            previous,
            retired,
        };
        // The same roster as the previous line's, and no one else holds that line (the store
        // keeps a line it wrote whole as its delta base): update it in place. It is then spent:
        // if this commit fails, the next one reads it back from the store.
        let same_roster = self
            .line_participants
            .take()
            .is_some_and(|p| Arc::ptr_eq(&p, &participants));
        let built = match self.last_manifest.take().map(Arc::try_unwrap) {
            Some(Ok(previous)) if same_roster => {
                commit::build_over(attempt(None), previous, ballots, in_transit, metadata)
                    .map(|(manifest, built, changed)| (manifest, built, Some(changed)))
            }
            previous => {
                let previous = previous.map(|p| p.map_or_else(|shared| shared, Arc::new));
                let built = commit::build(
                    attempt(previous.as_deref()),
                    &participants,
                    ballots,
                    in_transit,
                    metadata,
                );
                self.last_manifest = previous;
                built.map(|(manifest, built)| (manifest, built, None))
            }
        };
        let (manifest, built, changed) = match built {
            Ok(built) => built,
            Err(reason) => return Ok(CommitOutcome::Failed { reason }),
        };
        self.crash_at(failpoint::COMMIT_BEFORE_MANIFEST)?;
        let create_started = tokio::time::Instant::now();
        let manifest = Arc::new(manifest);
        let outcome = commit::create(&self.store, &manifest, changed.as_deref()).await;
        if outcome == CommitOutcome::Committed {
            self.crash_at(failpoint::COMMIT_AFTER_MANIFEST)?;
            let stats = CommitStats {
                duration: self
                    .attempt_started
                    .map(|t| t.elapsed())
                    .unwrap_or_default(),
                create: create_started.elapsed(),
                built,
            };
            self.transport.committed(&manifest, stats);
            self.last_manifest = Some(manifest);
            self.line_participants = Some(participants);
        }
        Ok(outcome)
    }

    /// The one fence, through the store's primitive: at the next id, under `epoch`, pointing at
    /// `line` only if that is still the recovery line.
    async fn write_fence(
        &mut self,
        recovery: u64,
        epoch: u64,
        line: CheckpointId,
        skip: Vec<CheckpointId>,
    ) -> FenceOutcome {
        // The line's state table says where objects lived when it was committed; this
        // recovery may have moved some (a dead node's, a drained one's). A takeover reads the
        // newest manifest's table to know where to expect them: it must be the current one.
        let request = FenceRequest::new(epoch, self.wall.wall_ms(), FenceLine::Expect(Some(line)))
            .with_round(format!("e{epoch}-fence-{recovery}"))
            .skipping(skip)
            .with_metadata(self.transport.metadata(&self.engine));
        match self.store.fence(&request).await {
            Ok(Fence::Written(fence)) => {
                let id = fence.id;
                self.last_manifest = Some(Arc::new(fence));
                self.line_participants = None;
                FenceOutcome::Written { id }
            }
            Ok(Fence::NoLine | Fence::LineMoved { .. }) => FenceOutcome::LineMoved,
            Err(e) if e.is_fenced() => FenceOutcome::Fenced,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the fence manifest");
                let reason = e.to_string();
                self.store_error = Some(e.into());
                FenceOutcome::Failed { reason }
            }
        }
    }
}

/// What the engine needs of committed `line`, with the host of each object (`hosts`).
pub(crate) fn line_info(line: &Manifest, hosts: BTreeMap<ObjectId, Option<HostId>>) -> LineInfo {
    let mut settled = crate::participant::restore::counters(line).unwrap_or_default();
    for message in &line.in_transit {
        let (_, received) = settled.entry(message.to.clone()).or_default();
        *received = received.saturating_add(1);
    }
    LineInfo {
        id: line.id,
        objects: hosts,
        types: line
            .objects
            .iter()
            .map(|(o, e)| (o.clone(), e.type_name.to_string()))
            .collect(),
        settled,
    }
}

/// The typed error of a failed recovery, for its requester.
pub(crate) fn recovery_error(failure: &RecoveryFailure, epoch: u64) -> Error {
    match failure {
        RecoveryFailure::MissingObjects { line, missing } => Error::MissingObjects {
            line: *line,
            missing: missing.clone(),
        },
        RecoveryFailure::Fenced => Error::Fenced { epoch },
        RecoveryFailure::Store { reason } => Error::Store(Box::new(
            cohort_checkpoint::Error::InvalidInput(reason.clone()),
        )),
        RecoveryFailure::Restore { failure, .. } => Error::Store(Box::new(
            cohort_checkpoint::Error::InvalidInput(failure.to_string()),
        )),
    }
}
