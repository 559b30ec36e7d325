//! Inputs from outside the cohort, applied exactly once across every recovery.
//!
//! A [`Source`] is a member of the cohort that reads a durable, ordered log outside it (a
//! [`SourceAdapter`]) and sends each input to its target as an ordinary cohort message,
//! counted and coloured like any other. Its state is the log's name and its read position, so
//! every checkpoint records the position its objects consumed, and the cut does the rest (the
//! source is a Lai–Yang sender like any member): after a recovery to a line, the inputs it
//! sent before its cut are in their targets' restored states or recorded in transit (and
//! redelivered once), and it sends the ones after again from its restored position. Every
//! input is applied exactly once, in log order. When a checkpoint it prepared for commits, the
//! adapter hears which positions are held, and may let them go.
//!
//! Two logs: this crate's [`IngressLog`], through an [`Ingress`] that acknowledges each
//! input to its client once it is durable (group committed, deduplicated by client and
//! sequence number); and a broker's stream (`cohort-ingress-nats`: JetStream, acknowledged to
//! the broker at commits).
//!
//! On a service cohort the source can move: a node that registers a factory of it
//! ([`LogHandle::source`], a source that [polls itself](Source::polling_itself)) and serves an
//! endpoint of the log through a [`LogHandle`] takes over the ingress when the node serving
//! it dies. See [`LogHandle`].
//!
//! ```no_run
//! # async fn demo() -> cohort_coordinator::Result<()> {
//! use cohort_checkpoint::CheckpointStore;
//! use cohort_checkpoint::ingress::{IngressLog, IngressOptions};
//! use cohort_coordinator::Cohort;
//! use cohort_coordinator::ingress::Ingress;
//! use cohort_object_api::ObjectId;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Deposit(i64);
//! # fn account() -> ObjectId { ObjectId::new("account-1").unwrap() }
//!
//! let store = CheckpointStore::open("/var/lib/bank", Default::default()).await?;
//! let cohort = Cohort::builder(store.clone()).build().await?;
//! // ... spawn the accounts ...
//! let log = IngressLog::open(&store, "deposits", IngressOptions::default()).await?;
//! let (source, poller, ingress) = Ingress::<Deposit>::new(log);
//! let poll = cohort.spawn(ObjectId::new("ingress-deposits").unwrap(), source)?;
//! let _polling = poller.start(poll);
//! let to = cohort.address::<Deposit>(&account())?;
//! let ack = ingress.submit("teller-7", 1, &to, &Deposit(100)).await?;
//! # let _ = ack; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::CheckpointStore;
use cohort_checkpoint::ingress::{Ack, IngressLog, IngressOptions};
use cohort_object_api::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::messaging::{Actor, Address, Context};

pub mod endpoint;

/// The type name a [`Source`]'s state (the log's name and its read position) is recorded
/// under.
pub const SOURCE_TYPE: &str = "cohort.Source";

/// How many inputs a source sends per message it handles, so that checkpoints interleave.
const PER_POLL: usize = 4096;

/// One input a [`SourceAdapter`] read.
#[derive(Debug)]
pub struct Input<M> {
    /// Its position in the source's log (positions grow; gaps are allowed).
    pub position: u64,
    /// The member it is for and the message to send it, or why it cannot be (it is then
    /// skipped with a warning: an input no member can take must not block the log).
    pub message: std::result::Result<(ObjectId, M), String>,
}

/// A durable, ordered, replayable log outside the cohort that a [`Source`] feeds the cohort
/// from: this crate's [`IngressLog`] ([`LogAdapter`]), or a broker's stream
/// (`cohort-ingress-nats`). The source keeps the read position in its checkpointed state;
/// the adapter only reads from a position and hears which positions a committed checkpoint
/// holds.
#[async_trait]
pub trait SourceAdapter: Send + Sync + 'static {
    /// The messages the inputs become.
    type Message: Serialize + DeserializeOwned + Send + 'static;

    /// The log's name, recorded with the position (a restore refuses another log's state).
    fn name(&self) -> &str;

    /// The first position of the log (where a source with no checkpoint starts).
    fn start(&self) -> u64 {
        0
    }

    /// Up to `max` inputs from position `from` on, in order. An error is transient (the log
    /// is away): the source logs it and reads again at its next poll.
    async fn read(
        &mut self,
        from: u64,
        max: usize,
    ) -> std::result::Result<Vec<Input<Self::Message>>, String>;

    /// The cohort rolled back: reading resumes at `from` (inputs read past it are read again).
    async fn rewind(&mut self, from: u64) {
        let _ = from;
    }

    /// A committed checkpoint holds every input below `position`: the log may let them go
    /// (acknowledge them to a broker, truncate).
    async fn committed(&mut self, position: u64);

    /// Its source was spawned (or created) in this process and is about to run; it leaves
    /// when the source is dropped.
    fn started(&mut self) {}

    /// A watch that changes when the log grows, if the adapter has one (the source is also
    /// woken on a timer).
    fn grows(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// The message that wakes a [`Source`]: read on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll;

/// What a source and its [`Poller`] share.
#[derive(Debug, Default)]
struct Progress {
    /// The source's read position.
    next: AtomicU64,
    /// A [`Poll`] is queued and not handled yet.
    polled: AtomicBool,
}

/// The member of the cohort that reads a [`SourceAdapter`]'s log in order and sends each
/// input to its member as an ordinary cohort message. Its checkpointed state is the log's
/// name and its read position; see the [module docs](self) for why that makes every input
/// apply exactly once.
pub struct Source<A> {
    adapter: A,
    progress: Arc<Progress>,
    generation: u64,
    /// The read position each checkpoint this source prepared for records.
    prepared: BTreeMap<CheckpointId, u64>,
    /// Its own poller, started when it is spawned ([`polling_itself`](Source::polling_itself)).
    poller: Option<Poller>,
    /// The poller it started; dropped with the source, which stops it.
    polling: Option<Polling>,
    /// Why its last read failed, if it did.
    unreadable: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SourceState {
    log: String,
    next: u64,
}

impl<A: SourceAdapter> Source<A> {
    /// The source of `adapter`, and the [`Poller`] that keeps it reading (start it with the
    /// source's address once it is spawned, under a stable id: its state is found by it after
    /// a restart).
    pub fn new(adapter: A) -> (Self, Poller) {
        let progress = Arc::new(Progress {
            next: AtomicU64::new(adapter.start()),
            polled: AtomicBool::new(false),
        });
        let grows = adapter.grows();
        (
            Self {
                adapter,
                progress: Arc::clone(&progress),
                generation: 0,
                prepared: BTreeMap::new(),
                poller: None,
                polling: None,
                unreadable: None,
            },
            Poller {
                progress,
                grows,
                every: Duration::from_millis(10),
            },
        )
    }

    /// The source of `adapter`, keeping itself reading: it starts its own [`Poller`] when it
    /// is spawned, wherever that is. This is the source a node creates from a factory
    /// ([`NodeBuilder::host_type`](crate::node::NodeBuilder::host_type)) when the cohort moves
    /// it off a dead node, where nobody else would start its poller.
    pub fn polling_itself(adapter: A) -> Self {
        let (mut source, poller) = Self::new(adapter);
        source.poller = Some(poller);
        source
    }

    fn next(&self) -> u64 {
        self.progress.next.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<A: SourceAdapter> Checkpointable for Source<A> {
    fn type_name(&self) -> &'static str {
        SOURCE_TYPE
    }

    async fn capture(&self) -> std::result::Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(
            SOURCE_TYPE,
            1,
            SourceState {
                log: self.adapter.name().to_owned(),
                next: self.next(),
            },
        ))
    }

    async fn restore(&mut self, state: &EncodedState) -> std::result::Result<(), ObjectError> {
        state.check(SOURCE_TYPE, 1)?;
        let restored: SourceState = state.decode()?;
        if restored.log != self.adapter.name() {
            return Err(ObjectError::Refused {
                reason: format!(
                    "this source reads {:?}, but the line's state is of {:?}: give each log its own source id",
                    self.adapter.name(),
                    restored.log
                ),
            });
        }
        self.progress.next.store(restored.next, Ordering::SeqCst);
        self.progress.polled.store(false, Ordering::SeqCst);
        self.prepared.clear();
        self.adapter.rewind(restored.next).await;
        self.generation += 1;
        Ok(())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }

    async fn prepare(&mut self, checkpoint: CheckpointId) -> std::result::Result<(), ObjectError> {
        self.prepared.insert(checkpoint, self.next());
        Ok(())
    }

    async fn on_committed(&mut self, checkpoint: CheckpointId) {
        let Some(held) = self.prepared.remove(&checkpoint) else {
            return;
        };
        // Earlier attempts were decided before this one.
        self.prepared.retain(|c, _| *c > checkpoint);
        self.adapter.committed(held).await;
    }

    async fn on_aborted(&mut self, checkpoint: CheckpointId) {
        self.prepared.remove(&checkpoint);
    }
}

#[async_trait]
impl<A: SourceAdapter> Actor for Source<A> {
    type Message = Poll;

    const MESSAGE_DRIVEN: bool = true;

    fn on_start(&mut self, me: &Address<Poll>) {
        self.adapter.started();
        if let Some(poller) = self.poller.take() {
            self.polling = Some(poller.start(me.clone()));
        }
    }

    async fn handle(
        &mut self,
        _poll: Poll,
        ctx: &mut Context<'_>,
    ) -> std::result::Result<(), ObjectError> {
        self.progress.polled.store(false, Ordering::SeqCst);
        let inputs = match self.adapter.read(self.next(), PER_POLL).await {
            Ok(inputs) => {
                if self.unreadable.take().is_some() {
                    tracing::info!(log = %self.adapter.name(), "the source's log is readable again");
                }
                inputs
            }
            // The log being away is not the cohort's failure: read again at the next poll
            // (said once per reason, not per poll).
            Err(reason) => {
                if self.unreadable.as_ref() != Some(&reason) {
                    tracing::warn!(log = %self.adapter.name(), %reason, "cannot read the source's log; retrying at every poll");
                    self.unreadable = Some(reason);
                }
                return Ok(());
            }
        };
        for input in inputs {
            if input.position < self.next() {
                continue; // sent already (a redelivery)
            }
            match input.message {
                Ok((to, message)) => {
                    let sent = ctx
                        .address::<A::Message>(&to)
                        .and_then(|address| ctx.send(&address, message));
                    match sent {
                        Ok(()) => {}
                        // Removed since (or never a member): nobody to apply it to.
                        Err(Error::UnknownObject(_)) => {
                            tracing::warn!(log = %self.adapter.name(), position = input.position, %to, "an input's target is not a member; skipped");
                        }
                        Err(e) => return Err(ObjectError::application(e)),
                    }
                }
                Err(reason) => {
                    tracing::warn!(log = %self.adapter.name(), position = input.position, %reason, "an input that cannot be applied; skipped");
                }
            }
            self.progress
                .next
                .store(input.position + 1, Ordering::SeqCst);
            self.generation += 1;
        }
        Ok(())
    }
}

/// Keeps a [`Source`] reading: wakes it when its log grows (if the adapter says) and on a
/// timer while it is idle (pulls do not push; after a recovery it is behind).
pub struct Poller {
    progress: Arc<Progress>,
    grows: Option<watch::Receiver<u64>>,
    every: Duration,
}

impl Poller {
    /// Wakes the source on this period too (default 10 ms).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Starts waking the source at `address`; stops when the returned guard is dropped. Call
    /// inside a tokio runtime.
    pub fn start(self, address: Address<Poll>) -> Polling {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let progress = Arc::clone(&self.progress);
        let mut grows = self.grows;
        let every = self.every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let grew = async {
                    match grows.as_mut() {
                        Some(g) => g.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = token.cancelled() => return,
                    alive = grew => if !alive { grows = None },
                    _ = tick.tick() => {}
                }
                if !progress.polled.swap(true, Ordering::SeqCst) && address.tell(Poll).is_err() {
                    // Held or restoring: its queue is dropped; poll again next tick.
                    progress.polled.store(false, Ordering::SeqCst);
                }
            }
        });
        Polling {
            progress: self.progress,
            _stop: stop.drop_guard(),
        }
    }
}

/// A started [`Poller`]. Dropping it stops waking the source.
pub struct Polling {
    progress: Arc<Progress>,
    _stop: tokio_util::sync::DropGuard,
}

impl Polling {
    /// The source's read position: every input below it was sent into the cohort.
    pub fn next(&self) -> u64 {
        self.progress.next.load(Ordering::SeqCst)
    }
}

/// An ingress log as a process serves it: shared by the [`Ingress`] endpoint the process
/// serves and the [`Source`] the cohort may place there, it opens the log (as its one writer)
/// while the source runs in this process, and only then. A log is written where its source
/// runs, so that the source reads every input its log acknowledged.
///
/// On a service cohort every node that may take over a log holds a handle of it, registers
/// a factory of its source ([`source`](Self::source)) and serves an endpoint
/// ([`Ingress::on`]). Where the source is not, the endpoint refuses inputs with
/// [`Error::IngressElsewhere`] (clients move on to the next endpoint). When the node serving
/// the log dies, the coordinator moves the source to a survivor with its factory; there the
/// source's first read opens the log (reading all that landed) and the endpoint serves it.
/// When the source leaves a process, the handle closes the log, releasing it to the next
/// writer. Cheap to clone.
///
/// ```no_run
/// # async fn demo(store: cohort_checkpoint::CheckpointStore) -> cohort_coordinator::Result<()> {
/// use cohort_checkpoint::ingress::IngressOptions;
/// use cohort_coordinator::ingress::{Ingress, LogHandle};
/// use cohort_coordinator::node::Node;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Deposit(i64);
///
/// let deposits = LogHandle::new(&store, "deposits", IngressOptions::default());
/// let factory = deposits.clone();
/// // Wherever the cohort places the source, it reads the log through this process's handle.
/// let node = Node::builder(store)
///     .host_type(move |_id| factory.source::<Deposit>())
///     .build()
///     .await?;
/// let ingress = Ingress::<Deposit>::on(deposits);
/// # let _ = (node, ingress); Ok(()) }
/// ```
#[derive(Clone)]
pub struct LogHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    store: CheckpointStore,
    name: String,
    options: IngressOptions,
    log: std::sync::Mutex<Option<IngressLog>>,
    /// Held while the log is being opened, so that it is opened once.
    opening: tokio::sync::Mutex<()>,
    /// Opened by this handle (closed when its sources are gone), not handed in open.
    lazy: bool,
    /// Sources of this log started in this process and not dropped.
    sources: std::sync::atomic::AtomicUsize,
    /// The log's end once it is open (a source built before that watches this).
    grows: watch::Sender<u64>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("name", &self.inner.name)
            .field("open", &self.get().is_some())
            .finish()
    }
}

impl LogHandle {
    /// The log `name` of `store`, opened with `options` while its source runs here.
    pub fn new(store: &CheckpointStore, name: &str, options: IngressOptions) -> Self {
        Self::with(store.clone(), name.to_owned(), options, None)
    }

    /// A handle of a log this process opened already (and keeps open, source or not).
    pub fn opened(log: IngressLog) -> Self {
        Self::with(
            log.store().clone(),
            log.name().to_owned(),
            IngressOptions::default(),
            Some(log),
        )
    }

    fn with(
        store: CheckpointStore,
        name: String,
        options: IngressOptions,
        log: Option<IngressLog>,
    ) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                store,
                name,
                options,
                lazy: log.is_none(),
                grows: watch::Sender::new(log.as_ref().map_or(0, IngressLog::end)),
                log: std::sync::Mutex::new(log),
                opening: tokio::sync::Mutex::new(()),
                sources: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The log's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The log, if this process has it open.
    pub fn get(&self) -> Option<IngressLog> {
        crate::participant::lock(&self.inner.log).clone()
    }

    /// Whether a source of this log runs in this process.
    pub fn hosts_source(&self) -> bool {
        self.inner.sources.load(Ordering::SeqCst) > 0
    }

    /// The log, opened now if it is not yet.
    ///
    /// # Errors
    ///
    /// [`IngressLog::open`]'s: notably
    /// [`LogWriterElsewhere`](cohort_checkpoint::Error::LogWriterElsewhere) while another
    /// process writes the log, and the store's errors. The next call tries again. Leave the
    /// opening to the source (its first read) and to inputs that arrive while it runs here: a
    /// log opened where no source of it ever runs stays open, and keeps the source's process
    /// from writing it.
    pub async fn open(&self) -> cohort_checkpoint::Result<IngressLog> {
        if let Some(log) = self.get() {
            return Ok(log);
        }
        let inner = &self.inner;
        let _opening = inner.opening.lock().await;
        if let Some(log) = self.get() {
            return Ok(log);
        }
        let log = IngressLog::open(&inner.store, &inner.name, inner.options.clone()).await?;
        tracing::info!(log = %inner.name, end = log.end(), "opened the ingress log");
        // Forwards the log's end to the watchers that subscribed before it was open.
        let (mut end, handle) = (log.subscribe(), Arc::downgrade(&self.inner));
        inner.grows.send_replace(*end.borrow_and_update());
        tokio::spawn(async move {
            while end.changed().await.is_ok() {
                let Some(inner) = handle.upgrade() else {
                    return;
                };
                inner.grows.send_replace(*end.borrow_and_update());
            }
        });
        *crate::participant::lock(&inner.log) = Some(log.clone());
        Ok(log)
    }

    /// The log to append an input to: open, or opened now if the source runs here.
    async fn writer(&self) -> Result<IngressLog> {
        if let Some(log) = self.get() {
            return Ok(log);
        }
        if !self.hosts_source() {
            return Err(Error::IngressElsewhere {
                log: self.inner.name.clone(),
            });
        }
        Ok(self.open().await?)
    }

    fn source_started(&self) {
        self.inner.sources.fetch_add(1, Ordering::SeqCst);
    }

    /// A source of this log left this process: the last one closes a log this handle
    /// opened, so that the process it moved to can open it.
    fn source_stopped(&self) {
        let last = self.inner.sources.fetch_sub(1, Ordering::SeqCst) == 1;
        if last && self.inner.lazy && crate::participant::lock(&self.inner.log).take().is_some() {
            tracing::info!(log = %self.inner.name, "the log's source left this process; closed the ingress log");
        }
    }

    /// Watches the log's end: changes as inputs become durable, once the log is open.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match self.get() {
            Some(log) if !self.inner.lazy => log.subscribe(),
            _ => self.inner.grows.subscribe(),
        }
    }

    /// A [`Source`] of this log whose inputs are messages `M`, keeping itself reading
    /// ([`Source::polling_itself`]): what a node's factory of sources returns.
    pub fn source<M>(&self) -> Source<LogAdapter<M>>
    where
        M: Serialize + DeserializeOwned + Send + 'static,
    {
        Source::polling_itself(LogAdapter::on(self.clone()))
    }
}

/// The [`SourceAdapter`] of an [`IngressLog`] whose payloads are messages `M` (msgpack): after
/// each commit it truncates the log below what the oldest committed checkpoint needs.
pub struct LogAdapter<M> {
    log: LogHandle,
    truncating: Arc<AtomicBool>,
    /// Its source runs in this process (counted by the handle until it is dropped).
    started: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Drop for LogAdapter<M> {
    fn drop(&mut self) {
        if self.started {
            self.log.source_stopped();
        }
    }
}

impl<M> LogAdapter<M> {
    /// Reads `log`.
    pub fn new(log: IngressLog) -> Self {
        Self::on(LogHandle::opened(log))
    }

    /// Reads the log of `handle`, opening it at the first read if this process has not.
    pub fn on(handle: LogHandle) -> Self {
        Self {
            log: handle,
            truncating: Arc::new(AtomicBool::new(false)),
            started: false,
            _message: PhantomData,
        }
    }
}

#[async_trait]
impl<M: Serialize + DeserializeOwned + Send + 'static> SourceAdapter for LogAdapter<M> {
    type Message = M;

    fn name(&self) -> &str {
        self.log.name()
    }

    async fn read(&mut self, from: u64, max: usize) -> std::result::Result<Vec<Input<M>>, String> {
        let log = self.log.open().await.map_err(|e| e.to_string())?;
        let records = log.read(from, max).await.map_err(|e| e.to_string())?;
        Ok(records
            .into_iter()
            .map(|r| Input {
                position: r.position,
                message: rmp_serde::from_slice(&r.payload)
                    .map(|m| (r.to, m))
                    .map_err(|e| format!("does not decode as this source's message type: {e}")),
            })
            .collect())
    }

    fn started(&mut self) {
        if !self.started {
            self.started = true;
            self.log.source_started();
        }
    }

    async fn committed(&mut self, _position: u64) {
        let Some(log) = self.log.get() else { return };
        // What no kept checkpoint needs may go; one truncation at a time, off the handler.
        if self.truncating.swap(true, Ordering::SeqCst) {
            return;
        }
        let truncating = Arc::clone(&self.truncating);
        tokio::spawn(async move {
            if let Err(e) = retain(&log).await {
                tracing::warn!(log = %log.name(), error = %e, "could not truncate the ingress log; the next commit tries again");
            }
            truncating.store(false, Ordering::SeqCst);
        });
    }

    fn grows(&self) -> Option<watch::Receiver<u64>> {
        Some(self.log.subscribe())
    }
}

/// Accepts inputs of type `M` into an [`IngressLog`], which its [`Source`] feeds to the
/// cohort. See the [module docs](self).
pub struct Ingress<M> {
    log: LogHandle,
    _message: PhantomData<fn(M)>,
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Ingress<M> {
    /// The source to spawn in the cohort (under a stable id), the poller to start with its
    /// address, and the ingress that accepts inputs.
    pub fn new(log: IngressLog) -> (Source<LogAdapter<M>>, Poller, Self) {
        let log = LogHandle::opened(log);
        let (source, poller) = Source::new(LogAdapter::on(log.clone()));
        (source, poller, Self::on(log))
    }

    /// The ingress of the log `handle` opens at the first input (see [`LogHandle`]); its
    /// source is [`LogHandle::source`], spawned or created wherever the cohort places it.
    pub fn on(handle: LogHandle) -> Self {
        Self {
            log: handle,
            _message: PhantomData,
        }
    }

    /// Appends `message` for the member at `to` from `client` with the client's sequence
    /// number `seq`, and answers once it is durable ([`Ack::duplicate`] for a retry: it is
    /// applied once). The cohort applies it afterwards, exactly once, even across crashes.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when it could not be made durable (retry with the same `seq`), or the
    /// message does not encode.
    pub async fn submit(
        &self,
        client: &str,
        seq: u64,
        to: &Address<M>,
        message: &M,
    ) -> Result<Ack> {
        let payload = rmp_serde::to_vec(message).map_err(|e| {
            Error::Store(Box::new(cohort_checkpoint::Error::InvalidInput(format!(
                "the input does not encode: {e}"
            ))))
        })?;
        self.submit_encoded(client, seq, to, Bytes::from(payload))
            .await
    }

    /// [`submit`](Self::submit) of a message already encoded (msgpack), as it came from an
    /// [`endpoint`] client, which checked that it decodes.
    pub(crate) async fn submit_encoded(
        &self,
        client: &str,
        seq: u64,
        to: &Address<M>,
        payload: Bytes,
    ) -> Result<Ack> {
        let log = self.log.writer().await?;
        log.append(client, seq, to.id().clone(), payload)
            .await
            .map_err(|e| Error::Store(Box::new(e)))
    }

    /// The log.
    pub fn log(&self) -> &LogHandle {
        &self.log
    }
}

/// Truncates `log` below the position the oldest committed checkpoint's source of it had
/// reached: a recovery to any kept checkpoint replays from there on. Returns the batches
/// deleted.
///
/// # Errors
///
/// The store's errors.
pub async fn retain(log: &IngressLog) -> cohort_checkpoint::Result<usize> {
    match oldest_position(log.store(), log.name()).await? {
        Some(position) => log.truncate_below(position).await,
        None => Ok(0),
    }
}

/// The read position recorded for log `name` in the oldest committed checkpoint that holds a
/// source of it (`None` when none does, or nothing is committed).
async fn oldest_position(
    store: &CheckpointStore,
    name: &str,
) -> cohort_checkpoint::Result<Option<u64>> {
    let ids = store.committed_ids().await?;
    let Some(oldest) = ids.first() else {
        return Ok(None);
    };
    let manifest = store.read_manifest(*oldest).await?;
    let positions = source_positions(store, &manifest).await?;
    Ok(positions
        .into_iter()
        .filter(|(_, log, _)| log == name)
        .map(|(_, _, next)| next)
        .min())
}

/// The ingress sources of `manifest`: (source id, log name, read position).
///
/// # Errors
///
/// The store's errors reading their states.
pub async fn source_positions(
    store: &CheckpointStore,
    manifest: &cohort_checkpoint::Manifest,
) -> cohort_checkpoint::Result<Vec<(ObjectId, String, u64)>> {
    let sources: std::collections::BTreeSet<ObjectId> = manifest
        .objects
        .iter()
        .filter(|(_, e)| *e.type_name == *SOURCE_TYPE)
        .map(|(o, _)| o.clone())
        .collect();
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (object, state) in store
        .read_states_of(manifest, |o| sources.contains(o))
        .await?
    {
        let s: SourceState = state.decode()?;
        out.push((object, s.log, s.next));
    }
    Ok(out)
}
