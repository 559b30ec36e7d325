//! A NATS JetStream stream as a source of inputs for a cohort: each message is applied exactly
//! once across every recovery, and acknowledged to the broker only once a committed
//! checkpoint holds it, so that the broker keeps (and redelivers) whatever the cohort's line
//! does not include.
//!
//! A [`JetStreamSource`] is a member of the cohort, like the ingress log's source
//! (`cohort_coordinator::ingress`): it pulls the stream's messages in stream order, turns each
//! into a message for a member ([`Route`]) and sends it as an ordinary cohort message, counted
//! and coloured, so the consistent cut covers it. Its checkpointed state is the next stream
//! sequence to read. After a recovery it reads again from the sequence the line recorded (it
//! recreates its durable pull consumer there): the messages sent before its cut are in the
//! restored states or recorded in transit, the later ones are sent again. When a checkpoint
//! it prepared for commits, it acknowledges the messages below that checkpoint's sequence.
//!
//! ```no_run
//! # async fn demo(cohort: cohort_coordinator::Cohort) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cohort_ingress_nats::{JetStreamSource, SourceConfig};
//! use cohort_object_api::ObjectId;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Deposit(i64);
//!
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let jetstream = async_nats::jetstream::new(client);
//! // `deposits.<account>` carries an amount as decimal text.
//! let route = Arc::new(|m: &async_nats::Message| {
//!     let account = m.subject.as_str().rsplit('.').next().unwrap_or_default();
//!     let to = ObjectId::new(account).map_err(|e| e.to_string())?;
//!     let amount: i64 = std::str::from_utf8(&m.payload)
//!         .ok()
//!         .and_then(|s| s.trim().parse().ok())
//!         .ok_or("not an amount")?;
//!     Ok((to, Deposit(amount)))
//! });
//! let config = SourceConfig::new(jetstream, "DEPOSITS", "cohort-bank", route);
//! let (source, poller) = JetStreamSource::new(config);
//! let address = cohort.spawn(ObjectId::new("source-deposits")?, source)?;
//! let _polling = poller.start(address);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_trait::async_trait;
use cohort_coordinator::{Actor, Address, Context, Error};
use cohort_object_api::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The type name a [`JetStreamSource`]'s state is recorded under.
pub const SOURCE_TYPE: &str = "cohort.JetStreamSource";

/// Turns one stream message into the member it is for and the message to send it, or says
/// why it cannot (the message is then skipped, with a warning, and acknowledged like the
/// others: a message no member can take would otherwise block the stream).
pub type Route<M> =
    Arc<dyn Fn(&async_nats::Message) -> Result<(ObjectId, M), String> + Send + Sync>;

/// Where a [`JetStreamSource`] reads and how it turns messages into inputs.
pub struct SourceConfig<M> {
    jetstream: jetstream::Context,
    stream: String,
    consumer: String,
    route: Route<M>,
    /// Messages pulled per request.
    pub batch: usize,
    /// How long a pull waits for messages when the stream has none.
    pub wait: Duration,
    /// How often the poller wakes the source.
    pub poll_every: Duration,
}

impl<M> SourceConfig<M> {
    /// Reads stream `stream` through the durable pull consumer `consumer` (which the source
    /// owns: it deletes and recreates it at the sequence it must read from), routing each
    /// message with `route`.
    pub fn new(
        jetstream: jetstream::Context,
        stream: impl Into<String>,
        consumer: impl Into<String>,
        route: Route<M>,
    ) -> Self {
        Self {
            jetstream,
            stream: stream.into(),
            consumer: consumer.into(),
            route,
            batch: 512,
            wait: Duration::from_millis(20),
            poll_every: Duration::from_millis(20),
        }
    }
}

/// The message that wakes a [`JetStreamSource`]: pull on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll;

#[derive(Debug, Default)]
struct Progress {
    next: AtomicU64,
    polled: AtomicBool,
}

#[derive(Serialize, Deserialize)]
struct SourceState {
    stream: String,
    next: u64,
}

/// A member of the cohort that pulls a JetStream stream in order and sends each message to
/// its member. See the [crate docs](crate).
pub struct JetStreamSource<M> {
    config: Arc<SourceConfig<M>>,
    /// The next stream sequence to send (sequences start at 1).
    next: u64,
    generation: u64,
    consumer: Option<PullConsumer>,
    /// Sent into the cohort, not yet held by a committed checkpoint: acknowledged then.
    unacked: VecDeque<(u64, jetstream::Message)>,
    /// The `next` each checkpoint this source prepared for records.
    prepared: BTreeMap<CheckpointId, u64>,
    progress: Arc<Progress>,
}

impl<M: Send + 'static> JetStreamSource<M> {
    /// The source to spawn in the cohort (under a stable id: its state is found by it after a
    /// restart) and the poller to [`start`](Poller::start) with its address.
    pub fn new(config: SourceConfig<M>) -> (Self, Poller) {
        let progress = Arc::new(Progress {
            next: AtomicU64::new(1),
            polled: AtomicBool::new(false),
        });
        let every = config.poll_every;
        (
            Self {
                config: Arc::new(config),
                next: 1,
                generation: 0,
                consumer: None,
                unacked: VecDeque::new(),
                prepared: BTreeMap::new(),
                progress: Arc::clone(&progress),
            },
            Poller { progress, every },
        )
    }

    fn set_next(&mut self, next: u64) {
        self.next = next;
        self.progress.next.store(next, Ordering::SeqCst);
    }

    /// The durable pull consumer, recreated to start at `next`.
    async fn consumer(&mut self) -> Result<PullConsumer, String> {
        if let Some(c) = &self.consumer {
            return Ok(c.clone());
        }
        let c = &self.config;
        let stream = c
            .jetstream
            .get_stream(&c.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", c.stream))?;
        // A consumer left by an earlier run (or incarnation) points elsewhere.
        let _ = stream.delete_consumer(&c.consumer).await;
        let deliver_policy = if self.next <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: self.next,
            }
        };
        let consumer: PullConsumer = stream
            .create_consumer(PullConfig {
                durable_name: Some(c.consumer.clone()),
                deliver_policy,
                ack_policy: AckPolicy::Explicit,
                // Acknowledged at commits, not at once: no redelivery meanwhile.
                ack_wait: Duration::from_secs(3600),
                max_ack_pending: -1,
                ..PullConfig::default()
            })
            .await
            .map_err(|e| format!("consumer {} on {}: {e}", c.consumer, c.stream))?;
        self.consumer = Some(consumer.clone());
        Ok(consumer)
    }
}

#[async_trait]
impl<M: Send + 'static> Checkpointable for JetStreamSource<M> {
    fn type_name(&self) -> &'static str {
        SOURCE_TYPE
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(
            SOURCE_TYPE,
            1,
            SourceState {
                stream: self.config.stream.clone(),
                next: self.next,
            },
        ))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        state.check(SOURCE_TYPE, 1)?;
        let restored: SourceState = state.decode()?;
        if restored.stream != self.config.stream {
            return Err(ObjectError::Refused {
                reason: format!(
                    "this source reads stream {:?}, but the line's state is of stream {:?}: give each stream its own source id",
                    self.config.stream, restored.stream
                ),
            });
        }
        self.set_next(restored.next);
        // Read again from the line's sequence; what was sent after it is not acknowledged
        // (and never will be by this incarnation).
        self.consumer = None;
        self.unacked.clear();
        self.prepared.clear();
        self.progress.polled.store(false, Ordering::SeqCst);
        self.generation += 1;
        Ok(())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }

    async fn prepare(&mut self, checkpoint: CheckpointId) -> Result<(), ObjectError> {
        self.prepared.insert(checkpoint, self.next);
        Ok(())
    }

    async fn on_committed(&mut self, checkpoint: CheckpointId) {
        let Some(held) = self.prepared.remove(&checkpoint) else {
            return;
        };
        // Older attempts were decided before this one.
        self.prepared.retain(|c, _| *c > checkpoint);
        while let Some((seq, _)) = self.unacked.front()
            && *seq < held
        {
            let Some((seq, message)) = self.unacked.pop_front() else {
                break;
            };
            if let Err(e) = message.ack().await {
                // The broker redelivers it to a later consumer; the source skips it then.
                tracing::warn!(stream = %self.config.stream, seq, error = %e, "could not acknowledge a message a checkpoint holds");
            }
        }
    }

    async fn on_aborted(&mut self, checkpoint: CheckpointId) {
        self.prepared.remove(&checkpoint);
    }
}

#[async_trait]
impl<M: Serialize + serde::de::DeserializeOwned + Send + 'static> Actor for JetStreamSource<M> {
    type Message = Poll;

    const MESSAGE_DRIVEN: bool = true;

    async fn handle(&mut self, _poll: Poll, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        self.progress.polled.store(false, Ordering::SeqCst);
        // The broker being away is not the cohort's failure: log, and pull again later.
        let consumer = match self.consumer().await {
            Ok(c) => c,
            Err(reason) => {
                tracing::warn!(stream = %self.config.stream, %reason, "cannot pull from JetStream; retrying");
                return Ok(());
            }
        };
        let batch = consumer
            .fetch()
            .max_messages(self.config.batch)
            .expires(self.config.wait)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream = %self.config.stream, error = %e, "a pull from JetStream failed; retrying");
                self.consumer = None;
                return Ok(());
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(stream = %self.config.stream, error = %e, "a pull from JetStream failed; retrying");
                    self.consumer = None;
                    break;
                }
            };
            let seq = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    tracing::warn!(stream = %self.config.stream, error = %e, "a JetStream message without its metadata; skipped");
                    continue;
                }
            };
            if seq < self.next {
                continue; // sent already (a redelivery)
            }
            match (self.config.route)(&message) {
                Ok((to, input)) => {
                    let sent = ctx
                        .address::<M>(&to)
                        .and_then(|address| ctx.send(&address, input));
                    match sent {
                        Ok(()) => {}
                        Err(Error::UnknownObject(_)) => {
                            tracing::warn!(stream = %self.config.stream, seq, %to, "a message for an object that is not a member; skipped");
                        }
                        Err(e) => return Err(ObjectError::application(e)),
                    }
                }
                Err(reason) => {
                    tracing::warn!(stream = %self.config.stream, seq, %reason, "a message the route refused; skipped");
                }
            }
            self.set_next(seq + 1);
            self.generation += 1;
            self.unacked.push_back((seq, message));
        }
        Ok(())
    }
}

/// Wakes a [`JetStreamSource`] regularly (pulls do not push).
pub struct Poller {
    progress: Arc<Progress>,
    every: Duration,
}

impl Poller {
    /// Starts waking the source at `address`; stops when the returned guard is dropped. Call
    /// inside a tokio runtime.
    pub fn start(self, address: Address<Poll>) -> Polling {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let progress = Arc::clone(&self.progress);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !progress.polled.swap(true, Ordering::SeqCst) && address.tell(Poll).is_err() {
                    // Held or restoring: its queue is dropped; poll again next tick.
                    progress.polled.store(false, Ordering::SeqCst);
                }
            }
        });
        Polling {
            progress: Arc::clone(&self.progress),
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
    /// The next stream sequence the source will send: everything below it was sent into the
    /// cohort.
    pub fn next(&self) -> u64 {
        self.progress.next.load(Ordering::SeqCst)
    }
}
