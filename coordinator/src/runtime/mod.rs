//! The in-process runtime: carries out the engine's commands against live objects and a
//! checkpoint store, on tokio.
//!
//! - [`Cohort`] is the handle: spawn objects, trigger checkpoints, recover, watch health.
//! - Each object runs on its own task (`participant/object.rs`, shared with nodes), which
//!   handles its mailbox, captures on prepare (or when a message forces it), and records
//!   messages that crossed a cut.
//! - One coordinator task (`coordinator.rs`) owns the [`Engine`](crate::engine::Engine) and
//!   executes its commands; the manifest create is the commit point.
//! - One writer task per attempt (`participant/writer.rs`) encodes the captured states into
//!   segments after the objects were released, and reports the votes once they are durable.

mod coordinator;

use std::any::{Any, type_name};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, InTransitEntry, ObjectEntry};
use cohort_object_api::{CheckpointId, Clock, ObjectId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::engine::{EngineTypes, Halt, RestartPolicy, Round};
use crate::error::{Error, Result};
use crate::messaging::{
    Actor, Address, Context, Directory, Envelope, Location, local_address, type_names,
};

use crate::failpoint::FailPoints;
use crate::participant::metrics::{CheckpointStats, Metrics};

use crate::participant::mailbox;
use crate::participant::object::{self, Control};
use crate::participant::restore::{AppliedLine, HeldObjects};
use crate::participant::writer::Written;
use crate::participant::{ActiveRound, Host, VoteSink, lock, read, write};
use coordinator::Input;

/// The engine types of the in-process runtime: votes carry segment entries.
#[derive(Clone, Debug, PartialEq)]
pub struct Local;

impl EngineTypes for Local {
    type Entry = ObjectEntry;
    type InTransit = InTransitEntry;
}

/// The shortest checkpoint interval accepted, by [`Settings`] and by the service. A checkpoint
/// costs at least a round trip to every participant and a create-only manifest write (a
/// round across 64 nodes takes about 10 ms, an fsynced create on local disk 1-7 ms); below
/// 100 ms attempts queue behind each other's commits and the store fills with more than ten
/// manifests a second (an interval of 0 wrote a thousand a second and grew the coordinator
/// by 200 MB/s). [`Cohort::trigger`] is not limited.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoint settings (compare Flink's `execution.checkpointing.*`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// Take a checkpoint this often; `None` (the default) only on [`Cohort::trigger`].
    pub interval: Option<Duration>,
    /// Abort an attempt whose votes are not all in after this long. Default 60 s.
    pub timeout: Duration,
    /// Leave at least this long between the end of one attempt and the start of the next.
    /// Default 0.
    pub min_pause: Duration,
    /// Consecutive failed attempts tolerated before [`Health::healthy`] turns false. Default 0.
    pub tolerable_failures: u32,
    /// The name recorded with this coordinator's epoch. Default `cohort-<pid>`.
    pub holder: String,
    /// How often a failed object (a handler that returned an error or panicked) restarts the
    /// cohort from its line before the cohort halts. Default [`RestartPolicy::default`].
    pub restart: RestartPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
            tolerable_failures: 0,
            holder: format!("cohort-{}", std::process::id()),
            restart: RestartPolicy::default(),
        }
    }
}

impl Settings {
    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`min_pause`](Self::min_pause).
    pub fn min_pause(mut self, min_pause: Duration) -> Self {
        self.min_pause = min_pause;
        self
    }

    /// Sets [`tolerable_failures`](Self::tolerable_failures).
    pub fn tolerable_failures(mut self, n: u32) -> Self {
        self.tolerable_failures = n;
        self
    }

    /// Sets [`restart`](Self::restart).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.restart.window_ms == 0 {
            return Err(Error::invalid_settings(
                "the restart policy's window must be positive; use e.g. 60 s",
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid_settings(
                "timeout must be positive; use e.g. 60 s",
            ));
        }
        if let Some(interval) = self.interval.filter(|i| *i < MIN_INTERVAL) {
            return Err(Error::invalid_settings(format!(
                "interval is {interval:?}; use at least {MIN_INTERVAL:?}, or None to checkpoint only on trigger"
            )));
        }
        Ok(())
    }
}

/// Whether the cohort is checkpointing well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// False when more attempts failed in a row than tolerated, or an object failed.
    pub healthy: bool,
    /// Attempts that failed in a row.
    pub consecutive_failures: u32,
    /// Why the last attempt failed, if it did.
    pub last_failure: Option<String>,
    /// Objects whose handler failed; they are held until a recovery restores them (the
    /// restart policy's, or [`Cohort::recover`]).
    pub failed_objects: Vec<ObjectId>,
    /// Why the cohort halted beyond its restart policy, until [`Cohort::recover`].
    pub halted: Option<Halt>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: true,
            consecutive_failures: 0,
            last_failure: None,
            failed_objects: Vec::new(),
            halted: None,
        }
    }
}

/// What [`Cohort::recover`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The committed checkpoint the objects were restored to; `None` when the store held none
    /// (objects kept their state).
    pub line: Option<CheckpointId>,
    /// The fence manifest written on top of it (none when there was no line).
    pub fence: Option<CheckpointId>,
    /// The epoch this cohort now writes with.
    pub epoch: u64,
    /// Objects restored.
    pub restored: usize,
    /// Objects dropped because they were created after the line.
    pub dropped: Vec<ObjectId>,
    /// In-transit messages redelivered.
    pub redelivered: usize,
    /// Newer checkpoints skipped because they are damaged.
    pub skipped_damaged: usize,
    /// How long recovery took.
    pub elapsed: Duration,
}

/// A cohort: objects checkpointed together, so that their states form one consistent cut.
/// Cheap to clone; the cohort stops when the last clone is dropped or on
/// [`shutdown`](Self::shutdown).
///
/// ```no_run
/// # async fn demo() -> cohort_coordinator::Result<()> {
/// use cohort_checkpoint::CheckpointStore;
/// use cohort_coordinator::{Cohort, Settings};
/// use std::time::Duration;
///
/// let store = CheckpointStore::open("./cohort-data", Default::default()).await?;
/// let cohort = Cohort::builder(store)
///     .settings(Settings::default().interval(Duration::from_millis(500)))
///     .build()
///     .await?;
/// // cohort.spawn(id, object)? for every object, then:
/// let report = cohort.recover().await?; // restore the newest committed line, if any
/// let id = cohort.trigger().await?; // a checkpoint, committed
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cohort {
    pub(crate) inner: Arc<Inner>,
}

/// Builds a [`Cohort`].
pub struct Builder {
    store: CheckpointStore,
    settings: Settings,
    fail_points: FailPoints,
    paused: bool,
    clock: Clock,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop(None);
    }
}

/// The state every task of a cohort shares.
pub(crate) struct Shared {
    pub(crate) objects: RwLock<BTreeMap<ObjectId, Slot>>,
    /// The attempt in flight, as objects see it.
    pub(crate) active: Mutex<Option<ActiveRound>>,
    /// The newest round started: the colour of objects that join now.
    pub(crate) colour_floor: AtomicU64,
    pub(crate) input: mpsc::UnboundedSender<Input>,
    pub(crate) metrics: Metrics,
    /// The runtime the cohort was built on, which its objects' tasks run on.
    runtime: tokio::runtime::Handle,
    pub(crate) health: watch::Sender<Health>,
    pub(crate) fail_points: FailPoints,
    pub(crate) paused: AtomicBool,
    checkpoints_healthy: AtomicBool,
    /// The incarnation objects run in (raised by each recovery's release).
    pub(crate) incarnation: AtomicU64,
    pub(crate) clock: Clock,
    stopped: Mutex<Option<Stop>>,
    tasks: Mutex<Vec<AbortHandle>>,
    pub(crate) store: CheckpointStore,
    pub(crate) weak: Mutex<Weak<Inner>>,
    /// The last line the objects were committed or restored to: a restore to it keeps the
    /// states that did not change since.
    pub(crate) applied: AppliedLine,
    /// Which objects are clean, for prepares that skip them.
    pub(crate) tally: crate::participant::Tally,
}

#[derive(Clone, Debug)]
enum Stop {
    Shutdown,
    Crashed(String),
}

pub(crate) struct Slot {
    /// The object's cell: its queues, and whether the coordinator may count it in a round
    /// without waking it.
    pub(crate) cell: mailbox::Handle,
}

impl Slot {
    /// Closes the object's queues: see [`mailbox::Handle::close`].
    fn close(&self) {
        self.cell.close();
    }
}

impl Host for Shared {
    fn active(&self) -> Option<ActiveRound> {
        lock(&self.active).clone()
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn tally(&self) -> &crate::participant::Tally {
        &self.tally
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn object_failed(&self, object: &ObjectId, error: Option<&str>) {
        self.set_object_failed(object, error.is_some());
        if let Some(error) = error {
            // The engine decides what follows (restart or halt, by its policy).
            let _ = self.input.send(Input::ObjectFailed {
                object: object.clone(),
                incarnation: self.incarnation.load(Ordering::SeqCst),
                error: error.to_owned(),
            });
        }
    }

    fn track(&self, task: AbortHandle) {
        let mut tasks = lock(&self.tasks);
        // Checked under the tasks' lock, which `stop` drains after it sets `stopped`: a task
        // resumed from parking as the cohort stops is aborted here or by `stop`.
        if lock(&self.stopped).is_some() {
            task.abort();
            return;
        }
        Shared::push_task(&mut tasks, task);
    }
}

impl Directory for Shared {
    fn locate(&self, id: &ObjectId) -> Result<Location> {
        let objects = read(&self.objects);
        let slot = objects
            .get(id)
            .ok_or_else(|| Error::UnknownObject(id.clone()))?;
        Ok(Location::Local(slot.cell.reference()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Context<'_> {
    /// The cohort this object belongs to, to spawn new members. Do not await
    /// [`Cohort::trigger`] or [`Cohort::recover`] from a handler: they wait for this object.
    /// An object hosted by a [`Node`](crate::node::Node) has no in-process cohort:
    /// [`Error::Stopped`].
    pub fn cohort(&self) -> Result<Cohort> {
        self.directory
            .as_any()
            .downcast_ref::<Shared>()
            .and_then(|shared| lock(&shared.weak).upgrade())
            .map(|inner| Cohort { inner })
            .ok_or(Error::COHORT_STOPPED)
    }
}

/// The in-process writer's results go to the coordinator task.
pub(crate) struct CohortSink(pub(crate) Arc<Shared>);

impl VoteSink for CohortSink {
    fn votes(
        &self,
        round: Round,
        ballots: Vec<(ObjectId, crate::engine::Ballot<ObjectEntry>)>,
        written: Written,
    ) {
        let votes = ballots
            .into_iter()
            .map(|(o, b)| (o, crate::engine::Vote::Yes(b)))
            .collect();
        let _ = self.0.input.send(Input::Votes {
            round,
            votes,
            written,
        });
    }

    fn refused(&self, round: Round, object: ObjectId, reason: String) {
        let _ = self.0.input.send(Input::Votes {
            round,
            votes: vec![(object, crate::engine::Vote::No { reason })],
            written: Written::default(),
        });
    }

    fn in_transit(&self, round: Round, entry: InTransitEntry) {
        let _ = self.0.input.send(Input::ChannelState { round, entry });
    }

    fn crash_at(&self, point: &str) -> bool {
        match self.0.fail_points.hit(point) {
            Ok(()) => false,
            Err(crash) => {
                self.0.stop(Some(crash.0));
                true
            }
        }
    }
}

impl Shared {
    pub(crate) fn track(&self, handle: AbortHandle) {
        Self::push_task(&mut lock(&self.tasks), handle);
    }

    fn push_task(tasks: &mut Vec<AbortHandle>, handle: AbortHandle) {
        // Prune finished tasks only when the list is full, before it would grow: amortised
        // O(1) per spawn (pruning on every spawn made spawning 100,000 objects quadratic).
        if tasks.len() == tasks.capacity() {
            tasks.retain(|h| !h.is_finished());
        }
        tasks.push(handle);
    }

    /// Stops every task; `crash` names the fail point if this is a simulated crash.
    pub(crate) fn stop(&self, crash: Option<String>) {
        {
            let mut stopped = lock(&self.stopped);
            if stopped.is_some() {
                return;
            }
            *stopped = Some(match crash {
                Some(point) => Stop::Crashed(point),
                None => Stop::Shutdown,
            });
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        // Closing the queues makes every address fail from now on, even the address of an
        // object whose task is still being aborted, or that is parked (and holds its own
        // receivers until something wakes it).
        let objects = std::mem::take(&mut *write(&self.objects));
        self.tally.table_changed();
        for slot in objects.values() {
            slot.close();
        }
        *lock(&self.active) = None;
    }

    pub(crate) fn check_running(&self) -> Result<()> {
        match &*lock(&self.stopped) {
            None => Ok(()),
            Some(Stop::Shutdown) => Err(Error::COHORT_STOPPED),
            Some(Stop::Crashed(point)) => Err(Error::Crashed {
                point: point.clone(),
            }),
        }
    }

    pub(crate) fn set_object_failed(&self, id: &ObjectId, failed: bool) {
        let checkpoints_ok = self.checkpoints_healthy.load(Ordering::SeqCst);
        self.health.send_if_modified(|h| {
            let before = h.clone();
            h.failed_objects.retain(|o| o != id);
            if failed {
                h.failed_objects.push(id.clone());
                h.failed_objects.sort();
            }
            h.healthy = checkpoints_ok && h.failed_objects.is_empty() && h.halted.is_none();
            *h != before
        });
    }

    /// Holds every object; returns once each finished its current handler.
    pub(crate) async fn hold_all(&self) -> HeldObjects {
        let applied = self.applied.get();
        let acks = HeldObjects::hold(read(&self.objects).iter().map(|(id, s)| (id, &*s.cell)));
        HeldObjects::collect(applied, acks).await
    }

    /// Lets every object handle messages again.
    pub(crate) fn release_all(&self) {
        for slot in read(&self.objects).values() {
            let _ = slot.cell.send_control(Control::Release);
        }
    }

    /// Object `id`'s cell, to send it control messages.
    pub(crate) fn cell(&self, id: &ObjectId) -> Option<mailbox::Handle> {
        read(&self.objects).get(id).map(|s| s.cell.clone())
    }

    /// The cohort halted beyond its restart policy (`Some`), or a recovery ended that (`None`).
    pub(crate) fn set_halted(&self, halt: Option<&Halt>) {
        let checkpoints_ok = self.checkpoints_healthy.load(Ordering::SeqCst);
        self.health.send_if_modified(|h| {
            let before = h.clone();
            h.halted = halt.cloned();
            h.healthy = checkpoints_ok && h.failed_objects.is_empty() && h.halted.is_none();
            *h != before
        });
    }

    pub(crate) fn set_checkpoint_health(&self, health: &crate::engine::Health) {
        self.checkpoints_healthy
            .store(health.healthy, Ordering::SeqCst);
        self.health.send_modify(|h| {
            h.consecutive_failures = health.consecutive_failures;
            h.last_failure = health.last_failure.as_ref().map(ToString::to_string);
            h.healthy = health.healthy && h.failed_objects.is_empty() && h.halted.is_none();
        });
    }
}

impl Builder {
    /// Sets the checkpoint settings.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Arms fail points (crash tests).
    pub fn fail_points(mut self, fail_points: FailPoints) -> Self {
        self.fail_points = fail_points;
        self
    }

    /// Replaces the clock: the wall clock (Unix ms) stamped on manifests and epochs, and the
    /// randomness. Protocol timing (interval, timeout, pause) follows tokio's clock, which
    /// tests can pause.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Starts with objects held (not handling messages) until [`Cohort::resume`], for example
    /// to inspect restored objects before they run.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Claims a new epoch in the store and starts the coordinator. Call inside a tokio runtime.
    pub async fn build(self) -> Result<Cohort> {
        self.settings.validate()?;
        let epoch = self
            .store
            .claim_epoch(&self.settings.holder, self.clock.wall_ms())
            .await?
            .epoch;
        let last = self
            .store
            .committed_ids()
            .await?
            .last()
            .copied()
            .unwrap_or(CheckpointId::ZERO);
        let (input, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            objects: RwLock::new(BTreeMap::new()),
            active: Mutex::new(None),
            colour_floor: AtomicU64::new(0),
            input,
            metrics: Metrics::default(),
            runtime: tokio::runtime::Handle::current(),
            health: watch::Sender::new(Health::default()),
            fail_points: self.fail_points,
            paused: AtomicBool::new(self.paused),
            checkpoints_healthy: AtomicBool::new(true),
            incarnation: AtomicU64::new(0),
            clock: self.clock.clone(),
            stopped: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            store: self.store.clone(),
            weak: Mutex::new(Weak::new()),
            applied: AppliedLine::default(),
            tally: crate::participant::Tally::default(),
        });
        let inner = Arc::new(Inner {
            shared: Arc::clone(&shared),
        });
        *lock(&shared.weak) = Arc::downgrade(&inner);
        let coordinator =
            coordinator::Coordinator::new(Arc::clone(&shared), &self.settings, epoch, last, rx);
        let handle = tokio::spawn(coordinator.run());
        shared.track(handle.abort_handle());
        tracing::info!(store = %self.store, epoch, newest = %last, "cohort started");
        Ok(Cohort { inner })
    }
}

impl Cohort {
    /// Starts building a cohort that checkpoints to `store`.
    pub fn builder(store: CheckpointStore) -> Builder {
        Builder {
            store,
            settings: Settings::default(),
            fail_points: FailPoints::default(),
            paused: false,
            clock: Clock::system(),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Adds `object` to the cohort under `id` and starts it. It takes part in checkpoints from
    /// the next attempt on; an attempt in flight aborts (and is retried), because the new
    /// member's messages could otherwise cross its cut unseen.
    pub fn spawn<A: Actor>(&self, id: ObjectId, object: A) -> Result<Address<A::Message>> {
        let shared = self.shared();
        shared.check_running()?;
        let mut objects = write(&shared.objects);
        shared.tally.table_changed();
        if objects.contains_key(&id) {
            return Err(Error::DuplicateObject(id));
        }
        let (cell, inbox, queues) = mailbox::cell::<Envelope<A::Message>>(type_names::<A>);
        // The join reaches the engine before any message of the new object can be counted.
        shared
            .input
            .send(Input::Join(id.clone()))
            .map_err(|_| Error::COHORT_STOPPED)?;
        let colour = Round(shared.colour_floor.load(Ordering::SeqCst));
        let task = object::ObjectTask::new(
            id.clone(),
            object,
            colour,
            shared.paused.load(Ordering::SeqCst),
            queues,
            Arc::clone(shared),
        );
        objects.insert(id.clone(), Slot { cell });
        drop(objects);
        let address = Address {
            to: id,
            tx: inbox.into(),
        };
        task.launch(&address);
        Ok(address)
    }

    /// The address of member `id`, which takes messages of type `M`.
    pub fn address<M: Send + 'static>(&self, id: &ObjectId) -> Result<Address<M>> {
        let objects = read(&self.shared().objects);
        let slot = objects
            .get(id)
            .ok_or_else(|| Error::UnknownObject(id.clone()))?;
        local_address(id, &slot.cell)
    }

    /// The ids of every member, sorted.
    pub fn members(&self) -> Vec<ObjectId> {
        let mut ids: Vec<_> = read(&self.shared().objects).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Runs `f` on object `id` (of type `A`) on its own task, between two messages, and returns
    /// what it returns. Works while the object is held.
    pub async fn inspect<A: Actor, R: Send + 'static>(
        &self,
        id: &ObjectId,
        f: impl FnOnce(&A) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let control = {
            let objects = read(&self.shared().objects);
            let slot = objects
                .get(id)
                .ok_or_else(|| Error::UnknownObject(id.clone()))?;
            if slot.cell.object_type() != type_name::<A>() {
                return Err(Error::WrongType {
                    object: id.clone(),
                    requested: type_name::<A>(),
                    actual: slot.cell.object_type(),
                });
            }
            slot.cell.clone()
        };
        let run: object::Inspector = Box::new(move |any: &dyn Any| {
            if let Some(object) = any.downcast_ref::<A>() {
                let _ = tx.send(f(object));
            }
        });
        control
            .send_control(Control::Inspect(run))
            .map_err(|_| Error::UnknownObject(id.clone()))?;
        rx.await.map_err(|_| {
            self.shared()
                .check_running()
                .err()
                .unwrap_or_else(|| Error::UnknownObject(id.clone()))
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Input) -> Result<T> {
        let shared = self.shared();
        shared.check_running()?;
        let (tx, rx) = oneshot::channel();
        shared
            .input
            .send(make(tx))
            .map_err(|_| Error::COHORT_STOPPED)?;
        match rx.await {
            Ok(result) => result,
            // The coordinator went away: say why.
            Err(_) => Err(shared
                .check_running()
                .err()
                .unwrap_or(Error::COHORT_STOPPED)),
        }
    }

    /// Takes a checkpoint that starts after this call, and returns its id once committed.
    /// Waits for the attempt in flight (at most one runs at a time) and the minimum pause.
    pub async fn trigger(&self) -> Result<CheckpointId> {
        self.ask(Input::Trigger).await
    }

    /// Rolls every object back to the newest committed line: aborts the attempt in flight,
    /// holds every object, drops objects created after the line, discards every message sent
    /// after it, restores each object's state and message counters, redelivers the recorded
    /// in-transit messages exactly once, writes a fence manifest under a new epoch, and
    /// releases the objects (unless the cohort is [paused](Self::pause)).
    pub async fn recover(&self) -> Result<RecoveryReport> {
        self.ask(Input::Recover).await
    }

    /// Holds every object: they stop handling messages (checkpoints still work).
    pub async fn pause(&self) -> Result<()> {
        self.ask(|tx| Input::Pause(true, tx)).await
    }

    /// Releases the objects held by [`pause`](Self::pause).
    pub async fn resume(&self) -> Result<()> {
        self.ask(|tx| Input::Pause(false, tx)).await
    }

    /// Watches the cohort's health.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.shared().health.subscribe()
    }

    /// Counters and pause times so far.
    pub fn metrics(&self) -> &Metrics {
        &self.shared().metrics
    }

    /// The store the cohort checkpoints to.
    pub fn store(&self) -> &CheckpointStore {
        &self.shared().store
    }

    /// Why the cohort stopped, if it did: [`Error::Stopped`] or [`Error::Crashed`].
    pub fn stopped(&self) -> Option<Error> {
        self.shared().check_running().err()
    }

    /// Aborts the attempt in flight, stops every object and the coordinator.
    pub async fn shutdown(&self) {
        let _ = self.ask(Input::Shutdown).await;
        self.shared().stop(None);
    }
}
