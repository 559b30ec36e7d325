//! A NATS JetStream stream as a source of inputs for a cohort: each message is applied exactly
//! once across every recovery, and acknowledged to the broker only once a committed
//! checkpoint holds it, so that the broker keeps (and redelivers) whatever the cohort's line
//! does not include.
//!
//! [`JetStreamAdapter`] is a [`SourceAdapter`]:
//! the cohort's [`Source`](cohort_coordinator::ingress::Source) pulls the stream's messages in
//! stream order through it, turns each into a message for a member ([`Route`]) and sends it as
//! an ordinary cohort message, so the consistent cut covers it; its checkpointed position is
//! the next stream sequence. After a recovery the adapter recreates its durable pull consumer
//! at the sequence the line recorded: the messages sent before the source's cut are in the
//! restored states or recorded in transit, the later ones are sent again. When a checkpoint
//! commits, the adapter acknowledges the messages below the sequence it holds.
//!
//! ```no_run
//! # async fn demo(cohort: cohort_coordinator::Cohort) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cohort_coordinator::ingress::Source;
//! use cohort_ingress_nats::JetStreamAdapter;
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
//! let adapter = JetStreamAdapter::new(jetstream, "DEPOSITS", "cohort-bank", route);
//! let (source, poller) = Source::new(adapter);
//! let address = cohort.spawn(ObjectId::new("source-deposits")?, source)?;
//! let _polling = poller.every(std::time::Duration::from_millis(20)).start(address);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_trait::async_trait;
use cohort_coordinator::ingress::{Input, SourceAdapter};
use cohort_object_api::ObjectId;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Turns one stream message into the member it is for and the message to send it, or says
/// why it cannot (the message is then skipped, with a warning, and acknowledged like the
/// others: a message no member can take would otherwise block the stream).
pub type Route<M> =
    Arc<dyn Fn(&async_nats::Message) -> Result<(ObjectId, M), String> + Send + Sync>;

/// A JetStream stream read through a durable pull consumer that the adapter owns (it deletes
/// and recreates it at the sequence the cohort must read from). See the [crate docs](crate).
pub struct JetStreamAdapter<M> {
    jetstream: jetstream::Context,
    stream: String,
    consumer_name: String,
    route: Route<M>,
    /// How long a pull waits for messages when the stream has none.
    wait: Duration,
    consumer: Option<(PullConsumer, u64)>,
    /// Sent into the cohort, not yet held by a committed checkpoint: acknowledged then.
    unacked: VecDeque<(u64, jetstream::Message)>,
}

impl<M> JetStreamAdapter<M> {
    /// Reads stream `stream` through the durable pull consumer `consumer`, routing each
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
            consumer_name: consumer.into(),
            route,
            wait: Duration::from_millis(20),
            consumer: None,
            unacked: VecDeque::new(),
        }
    }

    /// How long a pull waits for messages when the stream has none (default 20 ms; the
    /// source is blocked that long, and a checkpoint waits for it).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The durable pull consumer, (re)created to deliver from stream sequence `from` on.
    async fn consumer(&mut self, from: u64) -> Result<PullConsumer, String> {
        if let Some((c, start)) = &self.consumer
            && *start <= from
        {
            return Ok(c.clone());
        }
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", self.stream))?;
        // A consumer left by an earlier run (or incarnation) points elsewhere.
        let _ = stream.delete_consumer(&self.consumer_name).await;
        let deliver_policy = if from <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: from,
            }
        };
        let consumer: PullConsumer = stream
            .create_consumer(PullConfig {
                durable_name: Some(self.consumer_name.clone()),
                deliver_policy,
                ack_policy: AckPolicy::Explicit,
                // Acknowledged at commits, not at once: no redelivery meanwhile.
                ack_wait: Duration::from_secs(3600),
                max_ack_pending: -1,
                ..PullConfig::default()
            })
            .await
            .map_err(|e| format!("consumer {} on {}: {e}", self.consumer_name, self.stream))?;
        self.consumer = Some((consumer.clone(), from));
        Ok(consumer)
    }
}

#[async_trait]
impl<M: Serialize + DeserializeOwned + Send + Sync + 'static> SourceAdapter
    for JetStreamAdapter<M>
{
    type Message = M;

    fn name(&self) -> &str {
        &self.stream
    }

    /// Stream sequences start at 1.
    fn start(&self) -> u64 {
        1
    }

    async fn read(&mut self, from: u64, max: usize) -> Result<Vec<Input<M>>, String> {
        let consumer = self.consumer(from).await?;
        let mut messages = match consumer
            .fetch()
            .max_messages(max.min(512))
            .expires(self.wait)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                self.consumer = None;
                return Err(format!("a pull from {}: {e}", self.stream));
            }
        };
        let mut inputs = Vec::new();
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    // What was read so far goes in; the next read pulls again.
                    tracing::warn!(stream = %self.stream, error = %e, "a pull from JetStream failed");
                    self.consumer = None;
                    break;
                }
            };
            let Ok(position) = message.info().map(|i| i.stream_sequence) else {
                tracing::warn!(stream = %self.stream, "a JetStream message without its metadata; skipped");
                continue;
            };
            if position < from {
                continue; // a redelivery of what was sent already
            }
            inputs.push(Input {
                position,
                message: (self.route)(&message),
            });
            self.unacked.push_back((position, message));
        }
        Ok(inputs)
    }

    async fn rewind(&mut self, from: u64) {
        // What was read past `from` is read again by a consumer created there; the messages
        // sent after the line are never acknowledged by this incarnation.
        self.consumer = None;
        self.unacked.clear();
        let _ = from;
    }

    async fn committed(&mut self, position: u64) {
        while let Some((seq, _)) = self.unacked.front()
            && *seq < position
        {
            let Some((seq, message)) = self.unacked.pop_front() else {
                break;
            };
            if let Err(e) = message.ack().await {
                // The broker redelivers it to a later consumer; the source skips it then.
                tracing::warn!(stream = %self.stream, seq, error = %e, "could not acknowledge a message a checkpoint holds");
            }
        }
    }
}
