//! The coordinator task: feeds the engine, carries out its commands, and runs recovery.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cohort_checkpoint::{InTransitEntry, Manifest, ManifestKind, ObjectEntry};
use cohort_object_api::{CheckpointId, EncodedState, ObjectId};
use tokio::sync::{mpsc, oneshot};

use super::CohortSink;
use super::failpoint::{self, Crash};
use super::{CheckpointStats, Local, RecoveryReport, Settings, Shared, lock, read, write};
use crate::engine::{
    Ballot, Command, CommitOutcome, Config, CutState, Decision, Engine, Event, Round, Start,
    TriggerFailure, TriggerId, Vote, VotedState,
};
use crate::error::{Error, Result};
use crate::participant::object::{Control, RestoreOrder};
use crate::participant::writer::{RoundWriter, WriterMsg, Written};
use crate::participant::{self, ActiveRound};

/// The manifest metadata key holding the message counters (sent, received) of every object at
/// its cut; objects with both at zero are left out.
pub(crate) const COUNTERS_KEY: &str = "cohort.counters";

/// Prepares sent between two yields of the coordinator task.
const PREPARE_BATCH: usize = 16;

/// Requests to the coordinator task.
pub(crate) enum Input {
    Trigger(oneshot::Sender<Result<CheckpointId>>),
    Join(ObjectId),
    Votes {
        round: Round,
        votes: Vec<(ObjectId, Vote<ObjectEntry>)>,
        written: Written,
    },
    ChannelState {
        round: Round,
        entry: InTransitEntry,
    },
    Recover(oneshot::Sender<Result<RecoveryReport>>),
    Pause(bool, oneshot::Sender<Result<()>>),
    Shutdown(oneshot::Sender<Result<()>>),
}

pub(crate) struct Coordinator {
    shared: Arc<Shared>,
    engine: Engine<Local>,
    settings: Settings,
    origin: tokio::time::Instant,
    rx: mpsc::UnboundedReceiver<Input>,
    triggers: HashMap<TriggerId, oneshot::Sender<Result<CheckpointId>>>,
    next_trigger: u64,
    /// The newest manifest this coordinator committed or fenced: unchanged objects' entries
    /// are copied from it.
    last_manifest: Option<Arc<Manifest>>,
    attempt_started: Option<Instant>,
    written: Written,
    user_paused: bool,
    /// The participants of the attempt in flight that were asked to prepare (sorted).
    asked: Vec<ObjectId>,
}

impl Coordinator {
    pub(crate) fn new(
        shared: Arc<Shared>,
        settings: Settings,
        epoch: u64,
        last_committed: CheckpointId,
        rx: mpsc::UnboundedReceiver<Input>,
    ) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            interval_ms: settings.interval.map(ms),
            timeout_ms: ms(settings.timeout),
            min_pause_ms: ms(settings.min_pause),
            tolerable_failures: settings.tolerable_failures,
        };
        let engine = Engine::new(
            config,
            Start {
                now_ms: 0,
                epoch,
                last_committed,
                round_floor: Round::ZERO,
            },
        );
        let user_paused = shared.paused.load(Ordering::SeqCst);
        Self {
            shared,
            engine,
            settings,
            origin: tokio::time::Instant::now(),
            rx,
            triggers: HashMap::new(),
            next_trigger: 0,
            last_manifest: None,
            attempt_started: None,
            written: Written::default(),
            user_paused,
            asked: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        match self.run_inner().await {
            Ok(()) => {}
            Err(Crash(point)) => self.shared.stop(Some(point)),
        }
    }

    async fn run_inner(&mut self) -> Result<(), Crash> {
        loop {
            let deadline = self
                .engine
                .next_deadline_ms()
                .map(|ms| self.origin + Duration::from_millis(ms));
            let input = tokio::select! {
                biased;
                input = self.rx.recv() => match input {
                    Some(input) => Some(input),
                    None => return Ok(()),
                },
                () = sleep_until(deadline) => None,
            };
            match input {
                None => self.feed(Event::Tick).await?,
                Some(Input::Shutdown(reply)) => {
                    self.feed(Event::Halt).await?;
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                Some(input) => self.on_input(input).await?,
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn crash_at(&self, point: &str) -> Result<(), Crash> {
        self.shared.fail_points.hit(point).inspect_err(|crash| {
            // Stop before any reply channel is dropped, so that callers learn of the crash.
            self.shared.stop(Some(crash.0.clone()));
        })
    }

    async fn on_input(&mut self, input: Input) -> Result<(), Crash> {
        match input {
            Input::Trigger(reply) => {
                self.next_trigger += 1;
                let request = TriggerId(self.next_trigger);
                self.triggers.insert(request, reply);
                self.feed(Event::Trigger { request }).await
            }
            Input::Join(object) => self.feed(Event::Join { object }).await,
            Input::Votes {
                round,
                votes,
                written,
            } => {
                if self.engine.in_flight().is_some_and(|(_, r)| r == round) {
                    self.written = written;
                }
                // Most votes produce no command: handle them without building the (large)
                // future that carries commands out.
                for (object, vote) in votes {
                    let commands = self.handle_now(Event::Vote {
                        round,
                        object,
                        vote,
                    });
                    if !commands.is_empty() {
                        self.run_commands(commands).await?;
                    }
                }
                Ok(())
            }
            Input::ChannelState { round, entry } => {
                self.feed(Event::ChannelState {
                    round,
                    records: vec![entry],
                })
                .await
            }
            Input::Pause(paused, reply) => {
                self.user_paused = paused;
                self.shared.paused.store(paused, Ordering::SeqCst);
                if paused {
                    self.hold_all().await;
                } else {
                    self.release_all();
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Input::Recover(reply) => {
                let result = self.recover().await?;
                let _ = reply.send(result);
                Ok(())
            }
            Input::Shutdown(reply) => {
                let _ = reply.send(Ok(()));
                Ok(())
            }
        }
    }

    /// Feeds one event and carries out the commands, and the events they produce, in order.
    async fn feed(&mut self, event: Event<Local>) -> Result<(), Crash> {
        let commands = self.handle_now(event);
        if commands.is_empty() {
            return Ok(());
        }
        self.run_commands(commands).await
    }

    fn handle_now(&mut self, event: Event<Local>) -> Vec<Command<Local>> {
        let now = self.now_ms();
        self.engine.handle(now, event)
    }

    /// Carries out `commands`, and those of the events they produce, in order.
    async fn run_commands(&mut self, commands: Vec<Command<Local>>) -> Result<(), Crash> {
        let mut queue = VecDeque::new();
        let mut batch = commands;
        loop {
            for command in batch {
                if let Some(next) = self.execute(command).await? {
                    queue.push_back(next);
                }
            }
            match queue.pop_front() {
                Some(event) => batch = self.handle_now(event),
                None => return Ok(()),
            }
        }
    }

    fn token(&self, round: Round) -> String {
        format!("e{}-r{}", self.engine.epoch(), round.0)
    }

    fn control(&self, object: &ObjectId) -> Option<mpsc::UnboundedSender<Control>> {
        read(&self.shared.objects)
            .get(object)
            .map(|s| s.control.clone())
    }

    async fn execute(&mut self, command: Command<Local>) -> Result<Option<Event<Local>>, Crash> {
        match command {
            Command::Prepare {
                id,
                round,
                participants,
            } => {
                self.crash_at(failpoint::PREPARE_BEFORE)?;
                // The round is active before any object is counted in it: one counted without
                // being woken may record an in-transit message at once.
                let (tx, rx) = mpsc::unbounded_channel();
                *lock(&self.shared.active) = Some(ActiveRound {
                    id,
                    round,
                    writer: tx,
                });
                self.shared.colour_floor.store(round.0, Ordering::SeqCst);
                self.attempt_started = Some(Instant::now());
                self.written = Written::default();
                // Clean objects (unchanged since the line, nothing handled) are counted without
                // being woken; the others are asked.
                let mut unwoken = Vec::new();
                let mut asked = Vec::new();
                let mut missing = Vec::new();
                {
                    let objects = read(&self.shared.objects);
                    for (p, slot) in sorted_lookup(&participants, &objects) {
                        let Some(slot) = slot else {
                            missing.push(p.clone());
                            continue;
                        };
                        match participant::vote_unwoken(&slot.participation, round) {
                            Some((sent, received)) => unwoken.push((
                                p.clone(),
                                Vote::Yes(Ballot {
                                    state: VotedState::Unchanged,
                                    sent,
                                    received,
                                }),
                            )),
                            None => asked.push((p.clone(), slot.control.clone())),
                        }
                    }
                }
                tracing::debug!(checkpoint = %id, %round, participants = participants.len(), asked = asked.len(), "prepare");
                let writer = RoundWriter {
                    id,
                    round,
                    token: self.token(round),
                    states_writer: "states".to_owned(),
                    channel_writer: "channel".to_owned(),
                    participants: asked.iter().map(|(p, _)| p.clone()).collect(),
                    store: self.shared.store.clone(),
                    sink: CohortSink(Arc::clone(&self.shared)),
                };
                let handle = tokio::spawn(writer.run(rx));
                self.shared.track(handle.abort_handle());
                if !unwoken.is_empty() {
                    let _ = self.shared.input.send(Input::Votes {
                        round,
                        votes: unwoken,
                        written: Written::default(),
                    });
                }
                self.asked = Vec::with_capacity(asked.len());
                for (i, (p, control)) in asked.into_iter().enumerate() {
                    if control.send(Control::Prepare { id, round }).is_err() {
                        missing.push(p.clone());
                    }
                    self.asked.push(p);
                    // Let prepared objects run during a long broadcast rather than after it.
                    if i % PREPARE_BATCH == PREPARE_BATCH - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                self.crash_at(failpoint::PREPARE_AFTER)?;
                // A participant whose task is gone cannot vote: answer no for it.
                Ok(missing.into_iter().next().map(|object| Event::Vote {
                    round,
                    object,
                    vote: Vote::No {
                        reason: "its task is gone".into(),
                    },
                }))
            }
            Command::Commit {
                id,
                round,
                ballots,
                in_transit,
            } => {
                self.crash_at(failpoint::COMMIT_BEFORE_SEAL)?;
                let outcome = self.commit(id, round, ballots, in_transit).await?;
                Ok(Some(Event::CommitResult { round, outcome }))
            }
            Command::Decided {
                id,
                round,
                decision,
                participants: _,
            } => {
                {
                    let mut active = lock(&self.shared.active);
                    if active.as_ref().is_some_and(|a| a.round == round) {
                        // Dropping the writer's sender ends its task.
                        *active = None;
                    }
                }
                let committed = decision == Decision::Committed;
                if let Decision::Aborted(reason) = &decision {
                    self.shared.metrics.record_abort();
                    tracing::warn!(checkpoint = %id, %round, %reason, "checkpoint aborted");
                } else {
                    tracing::debug!(checkpoint = %id, %round, "checkpoint committed");
                }
                // Only the objects asked to prepare voted themselves; the others slept through.
                let asked = std::mem::take(&mut self.asked);
                {
                    let objects = read(&self.shared.objects);
                    for (_, slot) in sorted_lookup(&asked, &objects) {
                        if let Some(slot) = slot {
                            let _ = slot.control.send(Control::Decided {
                                id,
                                round,
                                committed,
                            });
                        }
                    }
                }
                self.crash_at(failpoint::DECIDED_AFTER)?;
                Ok(None)
            }
            Command::Discard { id, round } => {
                self.crash_at(failpoint::DISCARD_BEFORE)?;
                let store = self.shared.store.clone();
                let token = self.token(round);
                let handle = tokio::spawn(async move {
                    if let Err(e) = store.discard_round(id, &token).await {
                        tracing::warn!(checkpoint = %id, round = %token, error = %e, "could not discard an aborted round's blobs; gc will");
                    }
                });
                self.shared.track(handle.abort_handle());
                Ok(None)
            }
            Command::Reply { request, result } => {
                if let Some(reply) = self.triggers.remove(&request) {
                    let result = result.map_err(|failure| match failure {
                        TriggerFailure::Aborted(reason) => Error::Aborted {
                            id: self.engine.last_committed().next(),
                            reason,
                        },
                        TriggerFailure::Fenced => Error::Fenced {
                            epoch: self.engine.epoch(),
                        },
                    });
                    let _ = reply.send(result);
                }
                Ok(None)
            }
            Command::Health(health) => {
                self.shared.set_checkpoint_health(&health);
                Ok(None)
            }
        }
    }

    /// Seals the channel state, builds the manifest and creates it: the commit point.
    async fn commit(
        &mut self,
        id: CheckpointId,
        round: Round,
        ballots: BTreeMap<ObjectId, crate::engine::Ballot<ObjectEntry>>,
        in_transit: Vec<InTransitEntry>,
    ) -> Result<CommitOutcome, Crash> {
        let token = self.token(round);
        let writer = lock(&self.shared.active)
            .as_ref()
            .filter(|a| a.round == round)
            .map(|a| a.writer.clone());
        let sealed = match writer {
            None => Err("the attempt's writer is gone".to_owned()),
            Some(writer) => {
                let (tx, rx) = oneshot::channel();
                let _ = writer.send(WriterMsg::Seal(tx));
                rx.await
                    .unwrap_or_else(|_| Err("the attempt's writer is gone".to_owned()))
            }
        };
        if let Err(reason) = sealed {
            return Ok(CommitOutcome::Failed {
                reason: format!("writing the channel state failed: {reason}"),
            });
        }

        let last = self.engine.last_committed();
        let mut manifest = Manifest::new(id, self.engine.epoch(), (self.shared.clock)(), &token);
        manifest.parent = (last != CheckpointId::ZERO).then_some(last);
        // Ballots are sorted by id, as are the previous manifest's entries: one merge finds
        // every unchanged object's entry, and the maps are built from sorted runs.
        let mut objects = Vec::with_capacity(ballots.len());
        let mut counters = Vec::with_capacity(ballots.len());
        let mut unchanged = 0;
        let empty = BTreeMap::new();
        let previous = self.last_manifest.as_ref().map_or(&empty, |m| &m.objects);
        let ids: Vec<ObjectId> = ballots.keys().cloned().collect();
        let mut before = sorted_lookup(&ids, previous);
        for (object, ballot) in ballots {
            let previous_entry = before.next().and_then(|(_, e)| e);
            let entry = match ballot.state {
                crate::engine::VotedState::Written(entry) => entry,
                crate::engine::VotedState::Unchanged => {
                    unchanged += 1;
                    match previous_entry {
                        Some(entry) => entry.clone(),
                        None => {
                            return Ok(CommitOutcome::Failed {
                                reason: format!(
                                    "{object} reported no change but the previous line has no entry for it"
                                ),
                            });
                        }
                    }
                }
            };
            // Zero counters are left out (recovery reads a missing entry as zero): objects
            // that never exchanged a message cost nothing here.
            if (ballot.sent, ballot.received) != (0, 0) {
                counters.push((object.clone(), (ballot.sent, ballot.received)));
            }
            objects.push((object, entry));
        }
        drop(before);
        manifest.objects = objects.into_iter().collect();
        let counters: BTreeMap<ObjectId, (u64, u64)> = counters.into_iter().collect();
        match rmp_serde::to_vec(&counters) {
            Ok(bytes) => {
                manifest.metadata.insert(COUNTERS_KEY.to_owned(), bytes);
            }
            Err(e) => {
                return Ok(CommitOutcome::Failed {
                    reason: format!("encoding the counters failed: {e}"),
                });
            }
        }
        let in_transit_count = in_transit.len();
        manifest.in_transit = in_transit;
        self.crash_at(failpoint::COMMIT_BEFORE_MANIFEST)?;

        let commit_started = Instant::now();
        let store = &self.shared.store;
        let manifest = Arc::new(manifest);
        let outcome = match store.commit_shared(&manifest).await {
            Ok(()) => CommitOutcome::Committed,
            Err(e) if e.is_fenced() => CommitOutcome::Fenced,
            Err(cohort_checkpoint::Error::Conflict { .. }) => {
                let newest = store
                    .committed_ids()
                    .await
                    .ok()
                    .and_then(|ids| ids.last().copied());
                CommitOutcome::Conflict {
                    newest: newest.unwrap_or(id).max(id),
                }
            }
            Err(e) => {
                // In doubt: the create may have landed. The store decides.
                match store.read_manifest(id).await {
                    Ok(m) if m.round == manifest.round && m.epoch == manifest.epoch => {
                        CommitOutcome::Committed
                    }
                    _ => CommitOutcome::Failed {
                        reason: e.to_string(),
                    },
                }
            }
        };
        if outcome == CommitOutcome::Committed {
            self.crash_at(failpoint::COMMIT_AFTER_MANIFEST)?;
            let written = self.written;
            self.shared.metrics.record_commit(CheckpointStats {
                id,
                duration: self
                    .attempt_started
                    .map(|t| t.elapsed())
                    .unwrap_or_default(),
                commit: commit_started.elapsed(),
                written: manifest.objects.len() - unchanged,
                unchanged,
                bytes: written.bytes,
                in_transit: in_transit_count,
            });
            self.last_manifest = Some(manifest);
        }
        Ok(outcome)
    }

    async fn hold_all(&self) {
        let acks: Vec<_> = {
            let objects = read(&self.shared.objects);
            objects
                .values()
                .filter_map(|slot| {
                    let (tx, rx) = oneshot::channel();
                    slot.control.send(Control::Hold(tx)).ok().map(|()| rx)
                })
                .collect()
        };
        for ack in acks {
            // An object whose task ended holds nothing.
            let _ = ack.await;
        }
    }

    fn release_all(&self) {
        for slot in read(&self.shared.objects).values() {
            let _ = slot.control.send(Control::Release);
        }
    }

    /// Recovery; see [`Cohort::recover`](super::Cohort::recover). An error leaves the engine
    /// halted and the objects held: recover again once the cause is fixed.
    async fn recover(&mut self) -> Result<Result<RecoveryReport>, Crash> {
        let started = Instant::now();
        self.feed(Event::Halt).await?;
        let store = self.shared.store.clone();

        let line = match store.recovery_line().await {
            Ok(line) => line,
            Err(e) => return Ok(Err(e.into())),
        };
        if let Some(line) = &line {
            let objects = read(&self.shared.objects);
            let missing: Vec<_> = line
                .manifest
                .objects
                .keys()
                .filter(|id| !objects.contains_key(*id))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Ok(Err(Error::MissingObjects {
                    line: line.manifest.id,
                    missing,
                }));
            }
        }

        self.hold_all().await;
        self.crash_at(failpoint::RECOVER_AFTER_HOLD)?;

        let colour = self.engine.last_round();
        self.shared.colour_floor.store(colour.0, Ordering::SeqCst);
        let mut report = RecoveryReport {
            line: None,
            fence: None,
            epoch: self.engine.epoch(),
            restored: 0,
            dropped: Vec::new(),
            redelivered: 0,
            skipped_damaged: 0,
            elapsed: Duration::ZERO,
        };
        let Some(line) = line else {
            // Nothing was ever committed: there is nothing to return to, and nothing to fence.
            tracing::info!(store = %store, "no committed checkpoint: objects keep their state");
            self.resume_after_recovery(None).await?;
            report.elapsed = started.elapsed();
            return Ok(Ok(report));
        };
        let manifest = line.manifest;
        report.line = Some(manifest.id);
        report.skipped_damaged = line.skipped.len();

        // Objects created after the line are dropped: the computation that created them runs
        // again from the line.
        let (dropped, stopping) = {
            let mut objects = write(&self.shared.objects);
            let gone: Vec<_> = objects
                .keys()
                .filter(|id| !manifest.objects.contains_key(*id))
                .cloned()
                .collect();
            let mut stopping = Vec::with_capacity(gone.len());
            for id in &gone {
                if let Some(slot) = objects.remove(id) {
                    let (tx, rx) = oneshot::channel();
                    if slot.control.send(Control::Stop(tx)).is_ok() {
                        stopping.push(rx);
                    }
                }
            }
            (gone, stopping)
        };
        // Once stopped, their addresses fail at once rather than when their tasks get round
        // to ending.
        for stopped in stopping {
            let _ = stopped.await;
        }
        for object in &dropped {
            self.feed(Event::Leave {
                object: object.clone(),
            })
            .await?;
        }
        report.dropped = dropped;

        let states = match store.read_states(&manifest).await {
            Ok(states) => states,
            Err(e) => return Ok(Err(e.into())),
        };
        let messages = match store.read_in_transit(&manifest).await {
            Ok(messages) => messages,
            Err(e) => return Ok(Err(e.into())),
        };
        let counters: Option<BTreeMap<ObjectId, (u64, u64)>> = manifest
            .metadata
            .get(COUNTERS_KEY)
            .and_then(|bytes| rmp_serde::from_slice(bytes).ok());
        if counters.is_none() && !manifest.objects.is_empty() {
            tracing::warn!(line = %manifest.id, "the line records no message counters; redelivered messages are treated as inputs");
        }
        let mut redeliver: HashMap<ObjectId, Vec<(ObjectId, u64, EncodedState)>> = HashMap::new();
        let mut inputs: HashMap<ObjectId, Vec<(ObjectId, u64, EncodedState)>> = HashMap::new();
        report.redelivered = messages.len();
        for (entry, state) in messages {
            let target = if counters.is_some() {
                &mut redeliver
            } else {
                &mut inputs
            };
            target
                .entry(entry.to)
                .or_default()
                .push((entry.from, entry.seq, state));
        }
        if !inputs.is_empty() {
            // Without counters the messages cannot be counted consistently: deliver them as
            // inputs, outside any cut. (Only lines written without counters get here.)
            redeliver = inputs;
        }

        let mut acks = Vec::with_capacity(states.len());
        for (object, state) in states {
            let (sent, received) = counters
                .as_ref()
                .and_then(|c| c.get(&object).copied())
                .unwrap_or((0, 0));
            let order = RestoreOrder {
                state: Some(state),
                discard: true,
                generation: manifest.objects.get(&object).and_then(|e| e.generation),
                cut: CutState {
                    colour,
                    sent,
                    received,
                },
                redeliver: redeliver.remove(&object).unwrap_or_default(),
                counted: counters.is_some(),
            };
            let Some(control) = self.control(&object) else {
                return Ok(Err(Error::UnknownObject(object)));
            };
            let (tx, rx) = oneshot::channel();
            if control.send(Control::Restore(Box::new(order), tx)).is_err() {
                return Ok(Err(Error::UnknownObject(object)));
            }
            acks.push(rx);
        }
        for ack in acks {
            match ack.await {
                Ok(Ok(())) => report.restored += 1,
                Ok(Err(e)) => return Ok(Err(e)),
                Err(_) => return Ok(Err(Error::COHORT_STOPPED)),
            }
        }
        self.shared.metrics.record_redelivered(report.redelivered);
        self.crash_at(failpoint::RECOVER_BEFORE_FENCE)?;

        // A new epoch and a fence at the next id: a lagging writer of the discarded future
        // cannot commit on top of it any more.
        let fence = match self.write_fence(&manifest).await {
            Ok(fence) => fence,
            Err(e) => return Ok(Err(e)),
        };
        report.fence = Some(fence.id);
        report.epoch = fence.epoch;
        self.crash_at(failpoint::RECOVER_AFTER_FENCE)?;
        self.resume_after_recovery(Some(fence)).await?;
        report.elapsed = started.elapsed();
        tracing::info!(line = %manifest.id, fence = ?report.fence, restored = report.restored, redelivered = report.redelivered, dropped = report.dropped.len(), "recovered");
        Ok(Ok(report))
    }

    async fn write_fence(&mut self, line: &Manifest) -> Result<Manifest> {
        let store = &self.shared.store;
        let epoch = store
            .claim_epoch(&self.settings.holder, (self.shared.clock)())
            .await?
            .epoch;
        let mut last_error = None;
        for _ in 0..8 {
            let newest = store
                .committed_ids()
                .await?
                .last()
                .copied()
                .unwrap_or(CheckpointId::ZERO);
            let fence = Manifest {
                id: newest.next(),
                epoch,
                created_at_ms: (self.shared.clock)(),
                parent: (newest != CheckpointId::ZERO).then_some(newest),
                kind: ManifestKind::Fence,
                round: format!("e{epoch}-fence"),
                objects: line.objects.clone(),
                in_transit: line.in_transit.clone(),
                metadata: line.metadata.clone(),
            };
            match store.commit(&fence).await {
                Ok(()) => return Ok(fence),
                Err(e @ cohort_checkpoint::Error::Conflict { .. }) => last_error = Some(e),
                Err(e) if e.is_fenced() => return Err(Error::Fenced { epoch }),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_error.map_or(Error::COHORT_STOPPED, Error::from))
    }

    async fn resume_after_recovery(&mut self, fence: Option<Manifest>) -> Result<(), Crash> {
        let (epoch, last) = match &fence {
            Some(f) => (f.epoch, f.id),
            None => (self.engine.epoch(), self.engine.last_committed()),
        };
        if let Some(fence) = fence {
            self.last_manifest = Some(Arc::new(fence));
        }
        if !self.user_paused {
            self.release_all();
        }
        self.feed(Event::Resume {
            epoch,
            last_committed: last,
        })
        .await
    }
}

/// For each key of `keys` (ascending), the value of `map` under it: one merge of two sorted
/// sequences, instead of a tree search per key (100,000 string comparisons chains add up).
fn sorted_lookup<'k, 'm, K: Ord, V>(
    keys: &'k [K],
    map: &'m BTreeMap<K, V>,
) -> impl Iterator<Item = (&'k K, Option<&'m V>)> {
    let mut entries = map.iter().peekable();
    let mut last: Option<&'k K> = None;
    keys.iter().map(move |k| {
        if last.is_some_and(|l| l > k) {
            // Not ascending (never the case for ids from the engine): search.
            return (k, map.get(k));
        }
        last = Some(k);
        while entries.next_if(|(m, _)| *m < k).is_some() {}
        match entries.peek() {
            Some((m, v)) if *m == k => (k, Some(*v)),
            _ => (k, None),
        }
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_lookup_matches_get() {
        let map: BTreeMap<u32, u32> = [(1, 10), (3, 30), (4, 40), (9, 90)].into();
        let keys = [0, 1, 2, 3, 4, 5, 9, 10];
        let merged: Vec<_> = sorted_lookup(&keys, &map)
            .map(|(k, v)| (*k, v.copied()))
            .collect();
        let searched: Vec<_> = keys.iter().map(|k| (*k, map.get(k).copied())).collect();
        assert_eq!(merged, searched);
        // Keys out of order still find their values.
        let keys = [9, 1, 4];
        let merged: Vec<_> = sorted_lookup(&keys, &map)
            .map(|(_, v)| v.copied())
            .collect();
        assert_eq!(merged, vec![Some(90), Some(10), Some(40)]);
    }
}
