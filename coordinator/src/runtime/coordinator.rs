//! The coordinator task of the in-process runtime: the [`Core`] with a transport that reaches
//! object tasks through local channels. It takes no protocol decision of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use cohort_checkpoint::{InTransitEntry, Manifest, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId};
use tokio::sync::{mpsc, oneshot};

use super::CohortSink;
use super::{CheckpointStats, Local, RecoveryReport, Settings, Shared};
use crate::core::{CommitStats, Core, RestoreOrder, Transport, recovery_error};
use crate::engine::{
    ByHost, Config, Decision, Engine, Event, Halt, Health, HostId, Hosting, RecoverId, Recovered,
    RecoveryCause, RecoveryFailure, Round, Start, Vote,
};
use crate::error::{Error, Result};
use crate::failpoint::Crash;
use crate::participant::object::Control;
use crate::participant::restore::{self, LineStates};
use crate::participant::writer::{RoundWriter, WriterMsg, Written};
use crate::participant::{self, ActiveRound, lock, mailbox, read, write};

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
    /// An object's handler failed while the cohort ran in `incarnation`.
    ObjectFailed {
        object: ObjectId,
        incarnation: u64,
        error: String,
    },
    Pause(bool, oneshot::Sender<Result<()>>),
    Shutdown(oneshot::Sender<Result<()>>),
}

pub(crate) struct Coordinator {
    core: Core<LocalTransport>,
    rx: mpsc::UnboundedReceiver<Input>,
}

/// The in-process transport: object tasks in this process, reached by channels.
pub(crate) struct LocalTransport {
    shared: Arc<Shared>,
    host: HostId,
    /// The control queues of the participants of the attempt in flight that were asked to
    /// prepare: they, and only they, hear its decision.
    asked: Vec<mailbox::Reference>,
    /// The participants of the last prepare: a prepare with the same ones may count from the
    /// tally alone ([`participant::Tally::scan`]).
    roster: Option<ByHost>,
    /// What the writer reported with the votes of the attempt in flight.
    written: Written,
    user_paused: bool,
    recover_replies: HashMap<RecoverId, oneshot::Sender<Result<RecoveryReport>>>,
    next_recover: u64,
    recovery_started: Option<Instant>,
    /// Objects restored and messages redelivered by the recovery in progress.
    restored: usize,
    redelivered: usize,
    /// The typed error behind a failed restore, for the callers of `recover()`.
    restore_error: Option<Error>,
}

impl Coordinator {
    pub(crate) fn new(
        shared: Arc<Shared>,
        settings: &Settings,
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
            hosting: Hosting::InProcess,
            restart: settings.restart,
            ..Config::default()
        };
        let host = HostId::local();
        let engine = Engine::new(
            config,
            Start {
                now_ms: 0,
                epoch,
                last_committed,
                round_floor: Round::ZERO,
                incarnation_floor: 0,
                ready_hosts: vec![host.clone()],
            },
        );
        let user_paused = shared.paused.load(Ordering::SeqCst);
        let transport = LocalTransport {
            shared: Arc::clone(&shared),
            host,
            asked: Vec::new(),
            roster: None,
            written: Written::default(),
            user_paused,
            recover_replies: HashMap::new(),
            next_recover: 0,
            recovery_started: None,
            restored: 0,
            redelivered: 0,
            restore_error: None,
        };
        let core = Core::new(
            engine,
            transport,
            shared.store.clone(),
            shared.clock.clone(),
            shared.fail_points.clone(),
            tokio::time::Instant::now(),
        );
        Self { core, rx }
    }

    pub(crate) async fn run(mut self) {
        let shared = Arc::clone(&self.core.transport.shared);
        if let Err(Crash(point)) = self.run_inner().await {
            shared.stop(Some(point));
        }
    }

    async fn run_inner(&mut self) -> std::result::Result<(), Crash> {
        loop {
            let deadline = self.core.next_deadline();
            let input = tokio::select! {
                biased;
                input = self.rx.recv() => match input {
                    Some(input) => Some(input),
                    None => return Ok(()),
                },
                () = sleep_until(deadline) => None,
            };
            match input {
                None => self.core.feed(Event::Tick).await?,
                Some(Input::Shutdown(reply)) => {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                Some(input) => self.on_input(input).await?,
            }
        }
    }

    async fn on_input(&mut self, input: Input) -> std::result::Result<(), Crash> {
        let host = self.core.transport.host.clone();
        match input {
            Input::Trigger(reply) => self.core.trigger(reply).await,
            Input::Join(object) => self.core.feed(Event::Join { object, host }).await,
            Input::Votes {
                round,
                votes,
                written,
            } => {
                if self
                    .core
                    .engine
                    .in_flight()
                    .is_some_and(|(_, r)| r == round)
                {
                    self.core.transport.written = written;
                }
                self.core
                    .feed_all(votes.into_iter().map(|(object, vote)| Event::Vote {
                        round,
                        object,
                        vote,
                    }))
                    .await
            }
            Input::ChannelState { round, entry } => {
                self.core
                    .feed(Event::ChannelState {
                        round,
                        host,
                        records: vec![entry],
                    })
                    .await
            }
            Input::Recover(reply) => {
                let t = &mut self.core.transport;
                t.next_recover += 1;
                let request = RecoverId(t.next_recover);
                t.recover_replies.insert(request, reply);
                self.core.feed(Event::Recover { request }).await
            }
            Input::ObjectFailed {
                object,
                incarnation,
                error,
            } => {
                self.core
                    .feed(Event::ObjectFailed {
                        object,
                        incarnation,
                        error,
                    })
                    .await
            }
            Input::Pause(paused, reply) => {
                let t = &mut self.core.transport;
                t.user_paused = paused;
                t.shared.paused.store(paused, Ordering::SeqCst);
                if paused {
                    t.shared.hold_all().await;
                } else {
                    t.shared.release_all();
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Input::Shutdown(reply) => {
                let _ = reply.send(Ok(()));
                Ok(())
            }
        }
    }
}

impl Transport for LocalTransport {
    async fn prepare(
        &mut self,
        id: CheckpointId,
        round: Round,
        token: &str,
        hosts: &ByHost,
    ) -> Vec<Event<Local>> {
        let participants = hosts.get(&self.host).map_or(&[][..], Vec::as_slice);
        // The round is active before any object is counted in it: one counted without being
        // woken may record an in-transit message at once.
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.shared.active) = Some(ActiveRound {
            id,
            round,
            writer: tx,
        });
        self.shared.colour_floor.store(round.0, Ordering::SeqCst);
        self.written = Written::default();
        // Clean objects (unchanged since the line, nothing handled) are counted without being
        // woken; the others are asked.
        let mut events = Vec::new();
        let (clean, asked, mut missing) = {
            let objects = read(&self.shared.objects);
            let same =
                (self.roster.replace(Arc::clone(hosts))).is_some_and(|h| Arc::ptr_eq(&h, hosts));
            let scan = self.shared.tally.scan(round, same, objects.len(), || {
                participant::sorted_lookup(participants, &objects)
                    .map(|(p, slot)| (p, slot.map(|s| &*s.cell)))
            });
            (scan.clean, scan.asked, scan.missing)
        };
        if clean.objects > 0 {
            events.push(Event::Clean {
                round,
                host: self.host.clone(),
                objects: clean.objects,
                balance: clean.balance,
            });
        }
        let writer = RoundWriter {
            id,
            round,
            token: token.to_owned(),
            states_writer: "states".to_owned(),
            channel_writer: cohort_checkpoint::channel_writer("states"),
            participants: asked.iter().map(|a| a.object.clone()).collect(),
            store: self.shared.store.clone(),
            sink: CohortSink(Arc::clone(&self.shared)),
        };
        let handle = tokio::spawn(writer.run(rx));
        self.shared.track(handle.abort_handle());
        self.asked = Vec::with_capacity(asked.len());
        for (i, asked) in asked.into_iter().enumerate() {
            if asked
                .control
                .send_control(Control::Prepare { id, round })
                .is_err()
            {
                missing.push(asked.object);
            }
            self.asked.push(asked.control);
            // Let prepared objects run during a long broadcast rather than after it.
            if i % PREPARE_BATCH == PREPARE_BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
        // A participant whose task is gone cannot vote: answer no for it.
        events.extend(missing.into_iter().take(1).map(|object| Event::Vote {
            round,
            object,
            vote: Vote::No {
                reason: "its task is gone".into(),
            },
        }));
        events
    }

    async fn seal(&mut self, round: Round, _hosts: &[HostId]) -> Vec<Event<Local>> {
        let writer = lock(&self.shared.active)
            .as_ref()
            .filter(|a| a.round == round)
            .map(|a| a.writer.clone());
        let result = match writer {
            None => Err("the attempt's writer is gone".to_owned()),
            Some(writer) => {
                let (tx, rx) = oneshot::channel();
                let _ = writer.send(WriterMsg::Seal(tx));
                rx.await
                    .unwrap_or_else(|_| Err("the attempt's writer is gone".to_owned()))
                    .map(|_| ())
            }
        };
        vec![Event::Sealed {
            round,
            host: self.host.clone(),
            result,
        }]
    }

    fn decided(&mut self, id: CheckpointId, round: Round, decision: &Decision, _hosts: &[HostId]) {
        {
            let mut active = lock(&self.shared.active);
            if active.as_ref().is_some_and(|a| a.round == round) {
                // Dropping the writer's sender ends its task.
                *active = None;
            }
        }
        let committed = *decision == Decision::Committed;
        if committed {
            // Queued behind this decision, a restore's hold finds each object knowing it.
            self.shared.applied.set(Some(id));
        } else {
            self.shared.metrics.record_abort();
        }
        // Only the objects asked to prepare voted themselves; the others slept through.
        for control in std::mem::take(&mut self.asked) {
            let _ = control.send_control(Control::Decided {
                id,
                round,
                committed,
            });
        }
    }

    async fn restore(&mut self, order: RestoreOrder<'_>) -> Vec<Event<Local>> {
        let result = self.restore_here(&order).await;
        let result = result.map_err(|e| {
            let failure = restore::restore_failure(&e);
            self.restore_error = Some(e);
            failure
        });
        vec![Event::Restored {
            recovery: order.recovery,
            incarnation: order.incarnation,
            host: self.host.clone(),
            result,
        }]
    }

    fn release(&mut self, _hosts: &[HostId], incarnation: u64, line: Option<CheckpointId>) {
        self.shared.incarnation.store(incarnation, Ordering::SeqCst);
        self.shared.applied.released_at(line);
        if !self.user_paused {
            self.shared.release_all();
        }
    }

    fn recovering(&mut self, _recovery: u64, _cause: &RecoveryCause) {
        self.shared.set_halted(None);
        self.recovery_started.get_or_insert_with(Instant::now);
        self.restored = 0;
        self.redelivered = 0;
        self.restore_error = None;
    }

    fn recovered(
        &mut self,
        requests: Vec<RecoverId>,
        result: std::result::Result<Recovered, RecoveryFailure>,
        error: Option<Error>,
    ) {
        let elapsed = self
            .recovery_started
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let epoch = result.as_ref().map_or(0, |r| r.epoch);
        let mut error = error.or_else(|| self.restore_error.take());
        for request in requests {
            let Some(reply) = self.recover_replies.remove(&request) else {
                continue;
            };
            let answer = match &result {
                Ok(r) => Ok(RecoveryReport {
                    line: r.line,
                    fence: r.fence,
                    epoch: r.epoch,
                    restored: self.restored,
                    dropped: r.dropped.clone(),
                    redelivered: self.redelivered,
                    skipped_damaged: r.skipped_damaged.len(),
                    elapsed,
                }),
                Err(failure) => Err(error
                    .take()
                    .unwrap_or_else(|| recovery_error(failure, epoch))),
            };
            let _ = reply.send(answer);
        }
    }

    fn health(&mut self, health: &Health) {
        self.shared.set_checkpoint_health(health);
    }

    fn halted(&mut self, halt: &Halt) {
        self.shared.set_halted(Some(halt));
    }

    fn deposed(&mut self, _reason: &str) {}

    fn committed(&mut self, manifest: &Manifest, stats: CommitStats) {
        self.shared.metrics.record_commit(CheckpointStats {
            id: manifest.id,
            duration: stats.duration,
            commit: stats.create,
            written: stats.built.written,
            unchanged: stats.built.unchanged,
            bytes: self.written.bytes,
            in_transit: stats.built.in_transit,
        });
    }

    fn metadata(&self, _engine: &Engine<Local>) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::new()
    }

    fn line_hosts(&self, line: &Manifest) -> BTreeMap<ObjectId, Option<HostId>> {
        line.objects
            .keys()
            .map(|o| (o.clone(), Some(self.host.clone())))
            .collect()
    }
}

impl LocalTransport {
    /// Holds every object, drops those the line does not hold, discards every mailbox, and
    /// restores each object to the line with its in-transit messages queued.
    async fn restore_here(&mut self, order: &RestoreOrder<'_>) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let held = shared.hold_all().await;
        // Until it succeeds, the objects are at no one line.
        shared.applied.set(None);
        shared.colour_floor.store(order.colour.0, Ordering::SeqCst);
        // Objects created after the line are dropped: the computation that created them runs
        // again from the line. Once stopped, their addresses fail at once.
        let stopping: Vec<_> = {
            let mut objects = write(&shared.objects);
            shared.tally.table_changed();
            order
                .drop
                .iter()
                .filter_map(|id| objects.remove(id))
                .filter_map(|slot| {
                    let (tx, rx) = oneshot::channel();
                    slot.cell.send_control(Control::Stop(tx)).ok().map(|()| rx)
                })
                .collect()
        };
        for stopped in stopping {
            let _ = stopped.await;
        }
        let mut states = match order.line {
            Some(line) => LineStates::read(&shared.store, line, |_| true, &held).await?,
            None => LineStates::empty(),
        };
        self.redelivered = states.redelivered;
        let ids: Vec<ObjectId> = read(&shared.objects).keys().cloned().collect();
        let mut acks = Vec::with_capacity(ids.len());
        for object in ids {
            let restore = states.order(&object, order.colour, true);
            let Some(control) = shared.cell(&object) else {
                return Err(Error::UnknownObject(object));
            };
            let (tx, rx) = oneshot::channel();
            if control
                .send_control(Control::Restore(Box::new(restore), tx))
                .is_err()
            {
                return Err(Error::UnknownObject(object));
            }
            acks.push(rx);
        }
        for ack in acks {
            match ack.await {
                Ok(Ok(())) => self.restored += 1,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::COHORT_STOPPED),
            }
        }
        shared.metrics.record_redelivered(self.redelivered);
        shared.applied.set(order.line.map(|l| l.id));
        Ok(())
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
