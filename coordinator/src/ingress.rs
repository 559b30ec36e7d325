//! Inputs from outside the cohort, acknowledged once durable and applied exactly once across
//! every recovery.
//!
//! An [`Ingress`] appends each input to an [`IngressLog`] in the cohort's store (group
//! committed, deduplicated by client and sequence number) and acknowledges it once it is
//! durable. It does not deliver it itself: an [`IngressSource`], a member of the cohort,
//! reads the log in order and sends each input to its target as an ordinary cohort message,
//! counted and coloured like any other. The source's state is its read position, so every
//! checkpoint records the position its objects consumed, and the cut does the rest (the
//! source is a Lai–Yang sender like any member): after a recovery to a line, the inputs the
//! source sent before its cut are in their targets' restored states or recorded in transit
//! (and redelivered once), and it sends the ones after again from its restored position.
//! Every acknowledged input is applied exactly once, in log order per target.
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
//! let (source, ingress) = Ingress::<Deposit>::new(log);
//! let poll = cohort.spawn(ObjectId::new("ingress-deposits").unwrap(), source)?;
//! let ingress = ingress.start(poll);
//! let to = cohort.address::<Deposit>(&account())?;
//! let ack = ingress.submit("teller-7", 1, &to, &Deposit(100)).await?;
//! # let _ = ack; Ok(()) }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::CheckpointStore;
use cohort_checkpoint::ingress::{Ack, IngressLog};
use cohort_object_api::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::messaging::{Actor, Address, Context};

/// The type name an [`IngressSource`]'s state is recorded under.
pub const SOURCE_TYPE: &str = "cohort.IngressSource";

/// How many inputs a source sends per message it handles, so that checkpoints interleave.
const PER_POLL: usize = 4096;

/// How often a started [`Ingress`] checks that its source is behind the log (after a
/// recovery rolled it back) and wakes it.
const REPOLL: Duration = Duration::from_millis(10);

/// The message that wakes an [`IngressSource`]: read on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll;

/// What a source and its [`Ingress`] share.
#[derive(Debug, Default)]
struct Progress {
    /// The source's read position.
    next: AtomicU64,
    /// A [`Poll`] is queued and not handled yet.
    polled: AtomicBool,
    /// A truncation of the log runs.
    truncating: AtomicBool,
}

/// The member of the cohort that reads an [`IngressLog`] in order and sends each input to its
/// target, as a message of type `M`. Its checkpointed state is the log's name and its read
/// position. Built by [`Ingress::new`].
pub struct IngressSource<M> {
    log: IngressLog,
    progress: Arc<Progress>,
    generation: u64,
    _message: PhantomData<fn() -> M>,
}

#[derive(Serialize, Deserialize)]
struct SourceState {
    log: String,
    next: u64,
}

impl<M> IngressSource<M> {
    fn next(&self) -> u64 {
        self.progress.next.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<M: Send + 'static> Checkpointable for IngressSource<M> {
    fn type_name(&self) -> &'static str {
        SOURCE_TYPE
    }

    async fn capture(&self) -> std::result::Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(
            SOURCE_TYPE,
            1,
            SourceState {
                log: self.log.name().to_owned(),
                next: self.next(),
            },
        ))
    }

    async fn restore(&mut self, state: &EncodedState) -> std::result::Result<(), ObjectError> {
        state.check(SOURCE_TYPE, 1)?;
        let restored: SourceState = state.decode()?;
        if restored.log != self.log.name() {
            return Err(ObjectError::Refused {
                reason: format!(
                    "this source reads ingress log {:?}, but the line's state is of log {:?}: give each log its own source id",
                    self.log.name(),
                    restored.log
                ),
            });
        }
        self.progress.next.store(restored.next, Ordering::SeqCst);
        self.progress.polled.store(false, Ordering::SeqCst);
        self.generation += 1;
        Ok(())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }

    async fn on_committed(&mut self, checkpoint: CheckpointId) {
        // What no kept checkpoint needs may go; one truncation at a time, off the handler.
        if self.progress.truncating.swap(true, Ordering::SeqCst) {
            return;
        }
        let (log, progress) = (self.log.clone(), Arc::clone(&self.progress));
        tokio::spawn(async move {
            if let Err(e) = retain(&log).await {
                tracing::warn!(log = %log.name(), %checkpoint, error = %e, "could not truncate the ingress log; the next commit tries again");
            }
            progress.truncating.store(false, Ordering::SeqCst);
        });
    }
}

#[async_trait]
impl<M: Serialize + DeserializeOwned + Send + 'static> Actor for IngressSource<M> {
    type Message = Poll;

    const MESSAGE_DRIVEN: bool = true;

    async fn handle(
        &mut self,
        _poll: Poll,
        ctx: &mut Context<'_>,
    ) -> std::result::Result<(), ObjectError> {
        self.progress.polled.store(false, Ordering::SeqCst);
        let records = self
            .log
            .read(self.next(), PER_POLL)
            .await
            .map_err(ObjectError::application)?;
        for record in records {
            let message: M = rmp_serde::from_slice(&record.payload).map_err(|e| {
                ObjectError::application(format!(
                    "input {} of ingress log {} does not decode as this source's message type: {e}",
                    record.position,
                    self.log.name()
                ))
            })?;
            let sent = ctx
                .address::<M>(&record.to)
                .and_then(|to| ctx.send(&to, message));
            match sent {
                Ok(()) => {}
                // Removed since it was acknowledged: nobody to apply it to.
                Err(Error::UnknownObject(_)) => {
                    tracing::warn!(log = %self.log.name(), position = record.position, to = %record.to, "an input's target is no longer a member; skipped");
                }
                Err(e) => return Err(ObjectError::application(e)),
            }
            self.progress
                .next
                .store(record.position + 1, Ordering::SeqCst);
            self.generation += 1;
        }
        Ok(())
    }
}

/// Accepts inputs of type `M` into an [`IngressLog`] and keeps its [`IngressSource`] reading.
/// See the [module docs](self).
pub struct Ingress<M> {
    log: IngressLog,
    progress: Arc<Progress>,
    _message: PhantomData<fn(M)>,
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Ingress<M> {
    /// The source to spawn in the cohort (give it a stable id: its state is found by it after
    /// a restart), and the ingress to [`start`](Self::start) with its address.
    pub fn new(log: IngressLog) -> (IngressSource<M>, Self) {
        let progress = Arc::new(Progress::default());
        let source = IngressSource {
            log: log.clone(),
            progress: Arc::clone(&progress),
            generation: 0,
            _message: PhantomData,
        };
        (
            source,
            Self {
                log,
                progress,
                _message: PhantomData,
            },
        )
    }

    /// Starts waking the source (at `poll`, its address) whenever the log grows or the source
    /// is behind it (after a recovery); runs until the returned handle is dropped. Call
    /// inside a tokio runtime.
    pub fn start(self, poll: Address<Poll>) -> StartedIngress<M> {
        let stop = tokio_util::sync::CancellationToken::new();
        let (log, progress, token) = (self.log.clone(), Arc::clone(&self.progress), stop.clone());
        tokio::spawn(async move {
            let mut durable = log.subscribe();
            let mut tick = tokio::time::interval(REPOLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = tick.tick() => {}
                }
                if progress.next.load(Ordering::SeqCst) < log.end()
                    && !progress.polled.swap(true, Ordering::SeqCst)
                    && poll.tell(Poll).is_err()
                {
                    // Held or restoring: its queue is dropped; poll again next tick.
                    progress.polled.store(false, Ordering::SeqCst);
                }
            }
        });
        StartedIngress {
            inner: self,
            _stop: stop.drop_guard(),
        }
    }
}

/// A started [`Ingress`]: accepts inputs. Dropping it stops waking the source.
pub struct StartedIngress<M> {
    inner: Ingress<M>,
    _stop: tokio_util::sync::DropGuard,
}

impl<M: Serialize + DeserializeOwned + Send + 'static> StartedIngress<M> {
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
        self.inner
            .log
            .append(client, seq, to.id().clone(), Bytes::from(payload))
            .await
            .map_err(|e| Error::Store(Box::new(e)))
    }

    /// The log.
    pub fn log(&self) -> &IngressLog {
        &self.inner.log
    }

    /// The source's read position: inputs below it were sent into the cohort.
    pub fn consumed(&self) -> u64 {
        self.inner.progress.next.load(Ordering::SeqCst)
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
        .filter(|(_, e)| e.type_name == SOURCE_TYPE)
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
