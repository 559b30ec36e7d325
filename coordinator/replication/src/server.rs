//! [`ReplicatedServer`]: a [`Service`] replicated by a fault-tolerance group in one of the
//! [`ReplicationStyle`]s, serving [`GroupClient`](super::client::GroupClient)s.
//!
//! One server is a group [`Member`] plus two tasks:
//!
//! - the **listener** ([`cohort_wire::serve`]) accepts clients and forwards their requests;
//! - the **driver** owns the [`Replica`] (the service and its [`ReplyCache`]) and is the only
//!   code that changes it: it reacts to the member's `Activate`/`Deactivate`, batches the
//!   requests that arrived while its previous log append was in flight, appends each batch to
//!   the fenced log, applies it and answers, follows the log or the committed lines while it is
//!   a backup, and writes checkpoints while it is the primary.
//!
//! Every logged batch is applied through [`Updateable::apply_update`] on the [`Replica`], on
//! the primary as on a backup replaying the log (FT-CORBA `set_update`); a checkpoint is the
//! replica's [`Checkpointable::capture`] (`get_state`) and loading one is its
//! [`Checkpointable::restore`] (`set_state`). So the state of every replica is a function of
//! a log prefix, and live execution and recovery run the same code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::{CheckpointStore, Manifest, ObjectEntry, Retention};
use cohort_object_api::Clock;
use cohort_object_api::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot, StateTag,
    Updateable,
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::fencing::{EntryId, EntryKind, FencedLog, LogEntry, SlotEpoch};
use super::log::{Batch, LoggedRequest};
use super::member::{Member, MemberEvent, MemberHandle, MemberOptions};
use super::replies::{ClientId, Lookup, Outcome, ReplyCache};
use super::styles::{Between, ReplicationStyle};
use crate::Error;
use cohort_wire::{Connection, ListenConfig, Role};

/// The type name of a [`Replica`]'s checkpointed state.
pub const REPLICA_TYPE: &str = "cohort.replica";
/// The object id of the replica's entry in a checkpoint manifest.
pub const REPLICA_OBJECT: &str = "replica";
/// The manifest metadata key that holds the log position a checkpoint covers (8 bytes,
/// big-endian).
pub const LOG_SEQ_KEY: &str = "cohort.replication.log_seq";

/// A replicated application: a [`Checkpointable`] state and a deterministic `execute`.
///
/// `execute` must be deterministic: from the same state, the same request yields the same
/// state and the same result, on every replica and on replay. An `Err` is a final answer (the
/// client gets [`Error::Refused`]), cached like a reply; it must leave the state as it
/// was, or changed deterministically.
#[async_trait]
pub trait Service: Checkpointable {
    /// Executes one request and returns the reply.
    async fn execute(&mut self, request: &[u8]) -> Result<Bytes, ObjectError>;
}

/// The replicated state of a group: the service, the reply cache, and the log position both
/// reflect. The infrastructure's FT-CORBA object: `get_state`/`set_state` are its
/// [`Checkpointable`] methods, `set_update` its [`Updateable::apply_update`] (one logged batch).
pub struct Replica<S> {
    service: S,
    replies: ReplyCache,
    applied: u64,
    /// The entry at `applied`, when known: after the log was truncated, a reader checks that
    /// it is still there before it trusts what it read above it.
    anchor: Option<EntryId>,
    /// The newest epoch of each slot whose fence this state applied.
    fences: BTreeMap<u32, u64>,
}

impl<S> fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("applied", &self.applied)
            .field("anchor", &self.anchor)
            .field("replies", &self.replies.len())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct ReplicaState {
    service_type: String,
    service_version: u32,
    service: Bytes,
    replies: ReplyCache,
    applied: u64,
    /// The nonce of the entry at `applied` (absent in checkpoints of earlier versions).
    #[serde(default)]
    anchor_nonce: Option<u64>,
    /// The newest fenced epoch of each slot (absent in checkpoints of earlier versions).
    #[serde(default)]
    fences: BTreeMap<u32, u64>,
}

impl<S: Service> Replica<S> {
    /// A replica at log position 0 (nothing applied).
    pub fn new(service: S) -> Self {
        Self {
            service,
            replies: ReplyCache::new(),
            applied: 0,
            anchor: None,
            fences: BTreeMap::new(),
        }
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The reply cache.
    pub fn replies(&self) -> &ReplyCache {
        &self.replies
    }

    /// The log position this state reflects: every entry up to it is applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The entry at [`applied`](Self::applied), when known (it is not after
    /// [`apply_update`](Updateable::apply_update) or [`skip_to`](Self::skip_to), which do not
    /// see entries, nor in checkpoints of earlier versions).
    pub fn anchor(&self) -> Option<EntryId> {
        self.anchor
    }

    /// The newest epoch of each slot whose fence this state has applied.
    pub fn fences(&self) -> &BTreeMap<u32, u64> {
        &self.fences
    }

    /// Moves past a log entry that holds no requests (a fence).
    pub fn skip_to(&mut self, seq: u64) {
        if seq > self.applied {
            self.applied = seq;
            self.anchor = None;
        }
    }

    /// Records that the entry `id` is the one at the state's position (after applying it).
    fn settle(&mut self, id: EntryId) {
        if self.applied == id.seq {
            self.anchor = Some(id);
        }
    }

    fn note_fence(&mut self, se: SlotEpoch) {
        let epoch = self.fences.entry(se.slot).or_insert(se.epoch);
        *epoch = (*epoch).max(se.epoch);
    }

    async fn execute_batch(&mut self, seq: u64, batch: &Batch) {
        for r in &batch.requests {
            self.replies.acknowledge(&r.client, r.acked, seq);
            if self.replies.lookup(&r.client, r.id) == Lookup::Fresh {
                let outcome = execute(&mut self.service, &r.body).await;
                self.replies.record(&r.client, r.id, outcome, seq);
            }
        }
        self.replies.expire(seq);
        if seq > self.applied {
            self.applied = seq;
            self.anchor = None;
        }
    }

    /// Executes a request without the log (the stateless style).
    async fn execute_unlogged(&mut self, r: &LoggedRequest) -> Outcome {
        self.replies.acknowledge(&r.client, r.acked, 0);
        if let Lookup::Cached(outcome) = self.replies.lookup(&r.client, r.id) {
            return outcome;
        }
        let outcome = execute(&mut self.service, &r.body).await;
        self.replies.record(&r.client, r.id, outcome.clone(), 0);
        outcome
    }
}

async fn execute<S: Service>(service: &mut S, body: &[u8]) -> Outcome {
    match service.execute(body).await {
        Ok(reply) => Outcome::Ok(reply),
        Err(err) => Outcome::Failed(err.to_string()),
    }
}

#[async_trait]
impl<S: Service> Checkpointable for Replica<S> {
    fn type_name(&self) -> &'static str {
        REPLICA_TYPE
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        // The service's state is encoded here, so that the replica's snapshot owns plain data.
        let service = self.service.capture().await?.encode()?;
        Ok(Snapshot::new(
            REPLICA_TYPE,
            1,
            ReplicaState {
                service_type: service.tag().type_name.to_string(),
                service_version: service.tag().version,
                service: service.payload().clone(),
                replies: self.replies.clone(),
                applied: self.applied,
                anchor_nonce: self.anchor.map(|a| a.nonce),
                fences: self.fences.clone(),
            },
        ))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        state.check(REPLICA_TYPE, 1)?;
        let state: ReplicaState = state.decode()?;
        let service = EncodedState::new(
            StateTag::new(state.service_type, state.service_version),
            state.service,
        );
        self.service.restore(&service).await?;
        self.replies = state.replies;
        self.applied = state.applied;
        self.anchor = state.anchor_nonce.map(|nonce| EntryId {
            seq: state.applied,
            nonce,
        });
        self.fences = state.fences;
        Ok(())
    }
}

#[async_trait]
impl<S: Service> Updateable for Replica<S> {
    /// Applies one logged batch ([`Batch::to_update`]); a batch at or below
    /// [`applied`](Replica::applied) is ignored, so replaying is idempotent.
    async fn apply_update(&mut self, update: &EncodedState) -> Result<(), ObjectError> {
        let (seq, batch) =
            Batch::from_update(update).map_err(|e| ObjectError::Application(Box::new(e)))?;
        if seq > self.applied {
            self.execute_batch(seq, &batch).await;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The client protocol

/// Client → server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMessage {
    /// A request (FT-CORBA `FT_REQUEST`: client id, request id, and the acknowledged
    /// watermark).
    Request(LoggedRequest),
}

/// Server → client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMessage {
    /// The outcome of request `id`.
    Reply {
        /// The request.
        id: u64,
        /// What it produced.
        outcome: Outcome,
    },
    /// This server does not serve (a backup, or it was deposed): find the primary again.
    Redirect {
        /// The request.
        id: u64,
        /// Why, for logs.
        reason: String,
    },
    /// The request was not executed because the log could not be written; send it again.
    Retry {
        /// The request.
        id: u64,
        /// Why, for logs.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The server

/// How to start a [`ReplicatedServer`]. Build it with [`ServerOptions::new`] and set the public
/// fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The replication style; every member of the group must use the same.
    pub style: ReplicationStyle,
    /// The group membership (its `service_addr` is set by the server).
    pub member: MemberOptions,
    /// Where to listen for clients; `127.0.0.1:0` by default.
    pub service_listen: SocketAddr,
    /// The address clients are told (through the activation records); the bound address by
    /// default.
    pub service_advertise: Option<String>,
    /// How often the primary checkpoints (if it executed anything since); 200 ms by default.
    /// Recovery replays the log since the newest checkpoint, so this bounds failover work.
    pub checkpoint_interval: Duration,
    /// How often a warm backup looks for a newly committed line, and an active replica for new
    /// log entries; 20 ms by default.
    pub poll_interval: Duration,
    /// The most requests per log entry; 512 by default.
    pub max_batch: usize,
    /// What the primary keeps of the group's checkpoints (`replicas/<group>/`): the newest
    /// [`keep`](Retention::keep), never fewer than the 16 lines a replica searches after the
    /// log was truncated past it, plus the pinned ones and the recovery line; it collects the
    /// others after a checkpoint, at most every [`gc_interval`](Self::gc_interval). The newest
    /// 16 by default; `None` keeps every checkpoint.
    pub retention: Option<Retention>,
    /// How often at most the primary collects old checkpoints; 10 s by default. Each collection
    /// verifies the recovery line's blob.
    pub gc_interval: Duration,
}

impl ServerOptions {
    /// Options for a server of `style` whose membership `member` describes.
    pub fn new(style: ReplicationStyle, member: MemberOptions) -> Self {
        Self {
            style,
            member,
            service_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            service_advertise: None,
            checkpoint_interval: Duration::from_millis(200),
            poll_interval: Duration::from_millis(20),
            max_batch: 512,
            retention: Some(Retention::newest(LINES_SEARCHED)),
            gc_interval: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.checkpoint_interval.is_zero()
            || self.poll_interval.is_zero()
            || self.max_batch == 0
            || (self.retention.is_some() && self.gc_interval.is_zero())
        {
            return Err(Error::InvalidConfig {
                scope: "replicated service",
                reason: format!(
                    "checkpoint_interval ({:?}), poll_interval ({:?}), max_batch ({}) and, with \
                     a retention, gc_interval ({:?}) must be above zero",
                    self.checkpoint_interval, self.poll_interval, self.max_batch, self.gc_interval
                ),
            });
        }
        Ok(())
    }
}

/// What a server is doing, as [`ReplicatedServer::status`] shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStatus {
    /// The activation it serves under; `None` while it is a backup or catching up.
    pub serving: Option<SlotEpoch>,
    /// The log position its state reflects.
    pub applied: u64,
    /// The newest checkpoint it loaded or wrote.
    pub line: Option<CheckpointId>,
    /// How long the last takeover took, from `Activate` to serving (line loading and log
    /// replay).
    pub last_takeover: Option<Duration>,
    /// Log entries replayed at the last takeover.
    pub last_replayed: u64,
    /// The highest number this server truncated the log through, after a checkpoint of its
    /// own (0 if it never did).
    pub log_truncated_through: u64,
    /// Checkpoints of the group this server expired by its retention.
    pub checkpoints_collected: u64,
    /// The last problem, for operators.
    pub last_error: Option<String>,
}

/// A running replicated server. Dropping it stops it like a crash.
pub struct ReplicatedServer {
    handle: MemberHandle,
    member_addr: String,
    service_addr: String,
    status: watch::Receiver<ServerStatus>,
    shutdown: CancellationToken,
    leave: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: JoinSet<()>,
}

impl fmt::Debug for ReplicatedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicatedServer")
            .field("member", self.handle.id())
            .field("service_addr", &self.service_addr)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

struct Incoming {
    request: LoggedRequest,
    reply: mpsc::UnboundedSender<ServerMessage>,
}

impl ReplicatedServer {
    /// Binds the client listener, joins the group and starts serving `service` in
    /// `options.style`. The server begins as a backup; it serves once activated and caught up.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], [`Error::Wire`] ([`Bind`](cohort_wire::Error::Bind)) (the port cannot be bound), the group layer's
    /// errors (see [`Member::start`]), [`Error::ReplicaCheckpoint`].
    pub async fn start<S: Service>(mut options: ServerOptions, service: S) -> Result<Self, Error> {
        options.validate()?;
        // The service port serves group clients only: a node, peer or CLI that dials it by
        // mistake is refused in the handshake with a message naming the roles served here.
        let listener = ListenConfig {
            name: options.member.id.to_string(),
            role: Role::Peer,
            accept_roles: vec![Role::Client],
            token: options.member.token.clone(),
            tls: options.member.tls.clone(),
            ..ListenConfig::new(options.service_listen)
        }
        .bind()
        .await?;
        let service_addr = options
            .service_advertise
            .clone()
            .unwrap_or_else(|| listener.local_addr().to_string());
        options.member.service_addr = service_addr.clone();
        let replicas = replica_store(&options.member.store, options.member.config.group())?;
        let member = Member::start(options.member.clone()).await?;
        let handle = member.handle();
        let member_addr = member.addr().to_owned();

        let shutdown = CancellationToken::new();
        let (requests_tx, requests_rx) = mpsc::unbounded_channel::<Incoming>();
        let (status_tx, status) = watch::channel(ServerStatus::default());
        let (leave_tx, leave_rx) = tokio::sync::oneshot::channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(cohort_wire::serve(
            listener,
            move |conn: Connection<ClientMessage, ServerMessage>, stop| {
                serve_client(conn, stop, requests_tx.clone())
            },
            shutdown.clone(),
        ));
        let driver = Driver {
            style: options.style,
            replica: Replica::new(service),
            log: handle.log().clone(),
            handle: handle.clone(),
            store: replicas,
            serving: None,
            takeover: None,
            pending: HashMap::new(),
            queue: Vec::new(),
            line: None,
            checkpointed: 0,
            last_checkpoint: Instant::now(),
            last_collection: None,
            checkpoint: None,
            status: status_tx,
            options,
        };
        tasks.spawn(driver.run(member, requests_rx, shutdown.clone(), leave_rx));
        Ok(Self {
            handle,
            member_addr,
            service_addr,
            status,
            shutdown,
            leave: Some(leave_tx),
            tasks,
        })
    }

    /// Where clients reach this server.
    pub fn service_addr(&self) -> &str {
        &self.service_addr
    }

    /// The group listener of the member (a seed for others).
    pub fn member_addr(&self) -> &str {
        &self.member_addr
    }

    /// The group member's handle (weight, activation, log).
    pub fn member(&self) -> &MemberHandle {
        &self.handle
    }

    /// A receiver of the server's state, updated after every change.
    pub fn status(&self) -> watch::Receiver<ServerStatus> {
        self.status.clone()
    }

    /// Leaves the group gracefully (peers take over at once) and stops.
    pub async fn leave(mut self) {
        if let Some(leave) = self.leave.take() {
            let _ = leave.send(());
        }
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stops at once, like a crash.
    pub fn kill(mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
    }
}

impl Drop for ReplicatedServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
    }
}

/// The checkpoint store of a group's replicated state: `replicas/<group>/` under the store.
///
/// # Errors
///
/// [`Error::ReplicaCheckpoint`] if the name is refused (group names always pass).
pub fn replica_store(
    store: &CheckpointStore,
    group: &super::GroupName,
) -> Result<CheckpointStore, Error> {
    let replicas = store
        .child("replicas")
        .map_err(Error::replica_checkpoint("open the replica store"))?;
    replicas
        .child(group.as_str())
        .map_err(Error::replica_checkpoint("open the replica store"))
}

/// Forwards one client's requests to the driver and its replies back.
async fn serve_client(
    conn: Connection<ClientMessage, ServerMessage>,
    stop: CancellationToken,
    requests: mpsc::UnboundedSender<Incoming>,
) -> Result<(), Error> {
    let (mut rx, mut tx) = conn.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let writer = async move {
        while let Some(msg) = out_rx.recv().await {
            tx.send(&msg).await?;
        }
        Ok::<(), Error>(())
    };
    let reader = async move {
        loop {
            let Some(ClientMessage::Request(request)) = rx.recv().await? else {
                return Ok::<(), Error>(());
            };
            let incoming = Incoming {
                request,
                reply: out_tx.clone(),
            };
            if requests.send(incoming).is_err() {
                return Ok(());
            }
        }
    };
    tokio::select! {
        () = stop.cancelled() => Ok(()),
        r = reader => r,
        r = writer => r,
    }
}

type Key = (ClientId, u64);

/// How many newest committed lines are searched for the one with the highest log position
/// when the log was truncated past a replica.
const LINES_SEARCHED: usize = 16;
/// How often one read of the log may find it truncated past the state, each time loading a
/// newer line, before it reports an error.
const STALE_RELOADS: usize = 4;
/// How many ticks a takeover looks for its own fence in the log before it gives up.
const FENCE_LOOKS: u32 = 3;

/// An activation the driver is catching up for.
#[derive(Clone, Copy, Debug)]
struct Takeover {
    se: SlotEpoch,
    since: Instant,
    /// Catch-ups that read the whole log without finding the activation's fence.
    fence_missing: u32,
}

/// What reading the log after the state found.
enum Ahead {
    /// The entries after the state's position, contiguous and verified.
    Entries(Vec<LogEntry>),
    /// The log was truncated past the state's position: load a newer line.
    Stale,
}

struct Driver<S> {
    style: ReplicationStyle,
    replica: Replica<S>,
    handle: MemberHandle,
    log: FencedLog,
    store: CheckpointStore,
    options: ServerOptions,
    /// The activation it serves under, once caught up.
    serving: Option<SlotEpoch>,
    /// An activation it has not caught up for yet.
    takeover: Option<Takeover>,
    pending: HashMap<Key, Vec<mpsc::UnboundedSender<ServerMessage>>>,
    queue: Vec<LoggedRequest>,
    line: Option<CheckpointId>,
    /// The log position of the newest checkpoint written or loaded.
    checkpointed: u64,
    last_checkpoint: Instant,
    /// When the primary last collected old checkpoints.
    last_collection: Option<Instant>,
    checkpoint: Option<JoinHandle<Result<CheckpointDone, Error>>>,
    status: watch::Sender<ServerStatus>,
}

impl<S: Service> Driver<S> {
    async fn run(
        mut self,
        mut member: Member,
        mut requests: mpsc::UnboundedReceiver<Incoming>,
        shutdown: CancellationToken,
        mut leave: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(self.options.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    member.kill();
                    return;
                }
                _ = &mut leave => {
                    self.step_down("the server is leaving");
                    member.leave().await;
                    shutdown.cancel();
                    return;
                }
                event = member.next_event() => match event {
                    Some(event) => self.on_event(event).await,
                    None => return,
                },
                joined = async {
                    match self.checkpoint.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.checkpoint = None;
                    match joined {
                        Ok(Ok(done)) => {
                            self.line = Some(done.id);
                            self.checkpointed = self.checkpointed.max(done.at);
                            match done.truncated {
                                Ok(Some(through)) => self.status.send_modify(|s| {
                                    s.log_truncated_through = s.log_truncated_through.max(through);
                                }),
                                Ok(None) => {}
                                Err(err) => self.report(format!(
                                    "truncating the log below checkpoint {} failed: {err}; the next \
                                     checkpoint retries",
                                    done.id
                                )),
                            }
                            match done.collected {
                                Some(Ok(expired)) => self.status.send_modify(|s| {
                                    s.checkpoints_collected += expired as u64;
                                }),
                                Some(Err(err)) => self.report(format!(
                                    "collecting old checkpoints failed: {err}; a later checkpoint \
                                     retries"
                                )),
                                None => {}
                            }
                        }
                        Ok(Err(err)) => self.report(format!("checkpoint failed: {err}")),
                        Err(err) => self.report(format!("checkpoint task failed: {err}")),
                    }
                    self.publish();
                }
                Some(incoming) = requests.recv() => {
                    self.accept(incoming);
                    while self.queue.len() < self.options.max_batch {
                        match requests.try_recv() {
                            Ok(incoming) => self.accept(incoming),
                            Err(_) => break,
                        }
                    }
                    self.flush().await;
                    // Under a steady stream of requests this branch wins every turn of the
                    // biased select and the tick never runs: checkpoint from here too, so that
                    // a busy primary still writes one every checkpoint_interval.
                    self.maybe_checkpoint().await;
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    fn publish(&self) {
        self.status.send_modify(|s| {
            s.serving = self.serving;
            s.applied = self.replica.applied;
            s.line = self.line;
        });
    }

    fn report(&self, problem: String) {
        tracing::warn!(member = %self.handle.id(), "{problem}");
        self.status.send_modify(|s| s.last_error = Some(problem));
    }

    async fn on_event(&mut self, event: MemberEvent) {
        match event {
            MemberEvent::Activate(se) => {
                self.takeover = Some(Takeover {
                    se,
                    since: Instant::now(),
                    fence_missing: 0,
                });
                self.try_take_over().await;
            }
            MemberEvent::Deactivate { slot_epoch, reason } => {
                if self.takeover.is_some_and(|t| t.se == slot_epoch) {
                    self.takeover = None;
                }
                if self.serving == Some(slot_epoch) {
                    self.step_down(&format!("deactivated: {reason:?}"));
                }
            }
            _ => {}
        }
    }

    /// Catches up with the newest line and the log, then serves. Retried every tick until it
    /// succeeds or the activation ends.
    async fn try_take_over(&mut self) {
        let Some(Takeover { se, since, .. }) = self.takeover else {
            return;
        };
        let before = self.replica.applied;
        if self.style.logs_requests() {
            if let Err(err) = self.catch_up_fully().await {
                self.report(format!("taking over {se}: {err}; retrying"));
                return;
            }
            if !self.own_fence_applied(se) {
                return;
            }
        }
        self.takeover = None;
        self.serving = Some(se);
        // A fresh interval: the new primary's first checkpoint covers what it replayed.
        self.last_checkpoint = Instant::now() - self.options.checkpoint_interval;
        let took = since.elapsed();
        let replayed = self.replica.applied - before;
        tracing::info!(member = %self.handle.id(), %se, ?took, replayed, "serving");
        self.status.send_modify(|s| {
            s.last_takeover = Some(took);
            s.last_replayed = replayed;
        });
        self.publish();
    }

    async fn catch_up_fully(&mut self) -> Result<(), Error> {
        let line = self
            .store
            .recovery_line()
            .await
            .map_err(|source| Error::ReplicaCheckpoint {
                operation: "find the recovery line of the replicated state".to_owned(),
                source: Box::new(source),
            })?;
        if let Some(line) = line {
            self.load(line.manifest).await?;
        }
        self.advance(true).await
    }

    /// Whether the state has applied this activation's own fence, which must be in the log
    /// before the member serves: a fence that landed on a number a truncation had freed is not
    /// part of the log that others replay, so it fences nobody, and the member claims again.
    /// A newer fence of the slot means a successor exists. Both end the takeover.
    fn own_fence_applied(&mut self, se: SlotEpoch) -> bool {
        let seen = self.replica.fences.get(&se.slot).copied().unwrap_or(0);
        if seen == se.epoch {
            return true;
        }
        let Some(takeover) = self.takeover.as_mut() else {
            return false;
        };
        if seen < se.epoch && takeover.fence_missing < FENCE_LOOKS {
            // Read to the end of the log and not found: look again on the next tick.
            takeover.fence_missing += 1;
            return false;
        }
        self.takeover = None;
        let by = seen.max(se.epoch);
        self.report(format!(
            "taking over {se}: {}; giving the activation up",
            if seen > se.epoch {
                format!("the log holds a newer fence (epoch {seen})")
            } else {
                "its fence is not in the log (it landed among truncated numbers)".to_owned()
            }
        ));
        self.handle.report_fenced(se, by);
        false
    }

    /// Reads the log after the state (all of it that exists when `listing`, else one entry at
    /// a time until the first missing one) and applies it. When the log was truncated past the
    /// state's position, it loads a newer checkpoint first.
    async fn advance(&mut self, listing: bool) -> Result<(), Error> {
        for _ in 0..STALE_RELOADS {
            match self.read_ahead(None, listing).await? {
                Ahead::Entries(entries) => {
                    for entry in entries {
                        self.apply_entry(entry).await?;
                    }
                    return Ok(());
                }
                Ahead::Stale => self.load_covering().await?,
            }
        }
        Err(self.truncated_past())
    }

    fn truncated_past(&self) -> Error {
        Error::DamagedLog {
            seq: self.replica.applied + 1,
            reason: format!(
                "the log was truncated past this replica's position ({}) and no committed \
                 checkpoint among the newest {LINES_SEARCHED} of {} covers it",
                self.replica.applied,
                self.store.url()
            ),
        }
    }

    /// Reads the entries after the state's position, contiguous, up to `until` (or the end),
    /// then checks that the state's position still holds the entry it applied: if it does, no
    /// entry read is a number re-created after a truncation (ARCHITECTURE.md, "Truncating the
    /// log").
    async fn read_ahead(&self, until: Option<u64>, listing: bool) -> Result<Ahead, Error> {
        let from = self.replica.applied + 1;
        let mut entries: Vec<LogEntry> = Vec::new();
        if listing {
            for entry in self.log.read_from(from).await? {
                if until.is_some_and(|u| entry.seq > u) || entry.seq != from + entries.len() as u64
                {
                    break;
                }
                entries.push(entry);
            }
        } else {
            let mut next = from;
            while until.is_none_or(|u| next <= u) {
                match self.log.read(next).await? {
                    Some(entry) => entries.push(entry),
                    None => break,
                }
                next += 1;
            }
        }
        if self.log.holds(self.replica.anchor).await? {
            Ok(Ahead::Entries(entries))
        } else {
            Ok(Ahead::Stale)
        }
    }

    /// Applies one entry read by [`read_ahead`](Self::read_ahead): a batch, or a fence (a
    /// newer fence of the slot this server serves deposes it).
    async fn apply_entry(&mut self, entry: LogEntry) -> Result<(), Error> {
        let id = entry.id();
        match entry.kind {
            EntryKind::Data(data) => self.apply(entry.seq, data).await?,
            EntryKind::Fence { .. } => {
                self.replica.note_fence(entry.writer);
                self.replica.skip_to(entry.seq);
                if let Some(se) = self.serving
                    && entry.writer.slot == se.slot
                    && entry.writer.epoch > se.epoch
                {
                    self.handle.report_fenced(se, entry.writer.epoch);
                    self.step_down(&format!("deposed: {} fenced the log", entry.writer));
                }
            }
        }
        self.replica.settle(id);
        self.log.saw(id.seq + 1);
        Ok(())
    }

    /// After the log was truncated past the state: loads the committed line with the highest
    /// log position among the newest [`LINES_SEARCHED`] (the newest line is not always the
    /// furthest: a deposed primary may still commit one of an older position).
    async fn load_covering(&mut self) -> Result<(), Error> {
        let store = &self.store;
        let best = async {
            let ids = store.committed_ids().await?;
            let mut best: Option<Manifest> = None;
            for id in ids.iter().rev().take(LINES_SEARCHED) {
                // A damaged manifest is no candidate; recovery skips it the same way.
                if let Ok(manifest) = store.read_manifest(*id).await
                    && best
                        .as_ref()
                        .is_none_or(|b| log_seq_of(&manifest) > log_seq_of(b))
                {
                    best = Some(manifest);
                }
            }
            Ok::<_, cohort_checkpoint::Error>(best)
        }
        .await
        .map_err(|source| Error::ReplicaCheckpoint {
            operation: "find a checkpoint past the truncated log".to_owned(),
            source: Box::new(source),
        })?;
        match best {
            Some(manifest) if log_seq_of(&manifest) > self.replica.applied => {
                tracing::info!(member = %self.handle.id(), applied = self.replica.applied, line = %manifest.id, "the log was truncated past this replica: loading a newer line");
                self.load(manifest).await
            }
            _ => Err(self.truncated_past()),
        }
    }

    /// Loads a committed line if it is ahead of the state.
    async fn load(&mut self, manifest: Manifest) -> Result<(), Error> {
        let at = log_seq_of(&manifest);
        if at <= self.replica.applied {
            self.line = Some(self.line.map_or(manifest.id, |l| l.max(manifest.id)));
            return Ok(());
        }
        let states =
            self.store
                .read_states(&manifest)
                .await
                .map_err(|source| Error::ReplicaCheckpoint {
                    operation: format!("read checkpoint {}", manifest.id),
                    source: Box::new(source),
                })?;
        let Some((_, state)) = states
            .into_iter()
            .find(|(id, _)| id.as_str() == REPLICA_OBJECT)
        else {
            return Err(Error::InvalidConfig {
                scope: "replicated service",
                reason: format!(
                    "checkpoint {} of {} holds no `{REPLICA_OBJECT}` object: the store is shared \
                     with something else; give the group a store of its own",
                    manifest.id,
                    self.store.url()
                ),
            });
        };
        self.replica.restore(&state).await?;
        self.line = Some(manifest.id);
        self.checkpointed = self.checkpointed.max(self.replica.applied);
        tracing::debug!(member = %self.handle.id(), line = %manifest.id, applied = self.replica.applied, "loaded a committed line");
        self.publish();
        Ok(())
    }

    /// Applies the batch logged at `seq` (through [`Updateable::apply_update`]) and answers the
    /// requests of it that are waiting here.
    async fn apply(&mut self, seq: u64, data: Bytes) -> Result<(), Error> {
        let batch = Batch::decode(seq, &data)?;
        self.replica
            .apply_update(&Batch::to_update(seq, data))
            .await?;
        for r in &batch.requests {
            if let Some(waiting) = self.pending.remove(&(r.client.clone(), r.id)) {
                let msg = match self.replica.replies.lookup(&r.client, r.id) {
                    Lookup::Cached(outcome) => ServerMessage::Reply { id: r.id, outcome },
                    Lookup::Acknowledged | Lookup::Fresh => ServerMessage::Retry {
                        id: r.id,
                        reason: "the reply is no longer retained".to_owned(),
                    },
                };
                for w in waiting {
                    let _ = w.send(msg.clone());
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, incoming: Incoming) {
        let Incoming { request, reply } = incoming;
        if self.serving.is_none() {
            let _ = reply.send(ServerMessage::Redirect {
                id: request.id,
                reason: format!("{} is not serving", self.handle.id()),
            });
            return;
        }
        match self.replica.replies.lookup(&request.client, request.id) {
            Lookup::Cached(outcome) => {
                let _ = reply.send(ServerMessage::Reply {
                    id: request.id,
                    outcome,
                });
            }
            Lookup::Acknowledged => {
                let _ = reply.send(ServerMessage::Reply {
                    id: request.id,
                    outcome: Outcome::Failed(format!(
                        "request {} of {} was acknowledged already",
                        request.id, request.client
                    )),
                });
            }
            Lookup::Fresh => {
                let waiting = self
                    .pending
                    .entry((request.client.clone(), request.id))
                    .or_default();
                if waiting.is_empty() {
                    self.queue.push(request);
                }
                waiting.push(reply);
            }
        }
    }

    async fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut self.queue);
        if !self.style.logs_requests() {
            for r in queue {
                let outcome = self.replica.execute_unlogged(&r).await;
                self.answer(&r, ServerMessage::Reply { id: r.id, outcome });
            }
            return;
        }
        let batch = Batch { requests: queue };
        let data = match batch.encode() {
            Ok(data) => data,
            Err(err) => {
                self.fail_batch(&batch, &err.to_string());
                return;
            }
        };
        // The append is the acknowledgement: nothing of this batch is executed or answered
        // before it is durable in the fenced log.
        match self.handle.commit(data.clone()).await {
            Ok(id) => {
                match self.apply_own(id, data).await {
                    Ok(true) => {}
                    Ok(false) => self.fail_batch(
                        &batch,
                        "the entry landed below a truncation of the log, where nobody replays it",
                    ),
                    Err(err) => {
                        self.report(format!("applying log entry {}: {err}", id.seq));
                        self.fail_batch(&batch, &err.to_string());
                    }
                }
                self.publish();
            }
            Err(err) if err.is_fenced() || matches!(err, Error::NotActive { .. }) => {
                // Deposed: never answer success; the member deactivates.
                self.step_down(&err.to_string());
            }
            Err(err) => {
                self.report(format!("logging a batch failed: {err}"));
                self.fail_batch(&batch, &err.to_string());
            }
        }
    }

    /// Applies this server's own entry `id` (its batch, `data`), after the entries between the
    /// state and it (other writers' batches, fences, or an earlier append of ours whose answer
    /// was lost). `Ok(false)` when the entry is not part of the log that replicas replay: it
    /// landed on a number freed by a truncation (this server was behind or deposed); nothing of
    /// it is applied or answered, and a newer line is loaded if the state fell behind.
    async fn apply_own(&mut self, id: EntryId, data: Bytes) -> Result<bool, Error> {
        if id.seq <= self.replica.applied {
            // A number this state already applied another entry at.
            return Ok(false);
        }
        let entries = match self.read_ahead(Some(id.seq - 1), false).await? {
            Ahead::Entries(entries) => entries,
            Ahead::Stale => {
                self.load_covering().await?;
                return Ok(false);
            }
        };
        let reached = entries.last().map_or(self.replica.applied, |e| e.seq);
        if reached + 1 != id.seq {
            return Err(Error::DamagedLog {
                seq: reached + 1,
                reason: format!("entry {} is missing below entry {}", reached + 1, id.seq),
            });
        }
        for entry in entries {
            self.apply_entry(entry).await?;
        }
        if self.serving.is_none() {
            // Deposed by a fence among them: the entry is not acknowledged.
            return Ok(false);
        }
        self.apply(id.seq, data).await?;
        self.replica.settle(id);
        Ok(true)
    }

    /// Follows the log as far as it goes (the active style's replicas, between their own
    /// appends).
    async fn follow_log(&mut self) -> Result<(), Error> {
        self.advance(false).await
    }

    fn answer(&mut self, r: &LoggedRequest, msg: ServerMessage) {
        if let Some(waiting) = self.pending.remove(&(r.client.clone(), r.id)) {
            for w in waiting {
                let _ = w.send(msg.clone());
            }
        }
    }

    fn fail_batch(&mut self, batch: &Batch, reason: &str) {
        for r in &batch.requests {
            self.answer(
                r,
                ServerMessage::Retry {
                    id: r.id,
                    reason: reason.to_owned(),
                },
            );
        }
    }

    fn step_down(&mut self, reason: &str) {
        if self.serving.take().is_some() {
            tracing::info!(member = %self.handle.id(), "stopped serving: {reason}");
        }
        self.queue.clear();
        for ((_, id), waiting) in self.pending.drain() {
            for w in waiting {
                let _ = w.send(ServerMessage::Redirect {
                    id,
                    reason: reason.to_owned(),
                });
            }
        }
        self.publish();
    }

    async fn on_tick(&mut self) {
        if self.takeover.is_some() {
            self.try_take_over().await;
            return;
        }
        let result = match self.style.between_requests(self.serving.is_some()) {
            Between::LoadNewestLine => self.load_newest_line().await,
            Between::FollowLog => self.follow_log().await,
            Between::Nothing => Ok(()),
        };
        if let Err(err) = result {
            self.report(format!("following the group: {err}"));
        }
        self.maybe_checkpoint().await;
        self.publish();
    }

    /// A warm backup loads each committed line as it lands.
    async fn load_newest_line(&mut self) -> Result<(), Error> {
        let ids = self
            .store
            .committed_ids()
            .boxed()
            .await
            .map_err(Error::replica_checkpoint("list the committed lines"))?;
        let Some(&newest) = ids.last() else {
            return Ok(());
        };
        if self.line.is_some_and(|l| l >= newest) {
            return Ok(());
        }
        let manifest =
            self.store
                .read_manifest(newest)
                .boxed()
                .await
                .map_err(Error::replica_checkpoint(format!(
                    "read checkpoint {newest}"
                )))?;
        self.load(manifest).await
    }

    /// The primary (in the active style, the holder of slot 0) checkpoints every
    /// `checkpoint_interval` if it executed anything since the last one.
    async fn maybe_checkpoint(&mut self) {
        let Some(se) = self.serving else { return };
        if !self.style.checkpoints_from(se.slot)
            || self.checkpoint.is_some()
            || self.replica.applied <= self.checkpointed
            || self.last_checkpoint.elapsed() < self.options.checkpoint_interval
        {
            return;
        }
        self.last_checkpoint = Instant::now();
        let snapshot = match self.replica.capture().await {
            Ok(s) => s,
            Err(err) => {
                self.report(format!("capturing the replicated state failed: {err}"));
                return;
            }
        };
        let store = self.store.clone();
        let at = self.replica.applied;
        // Truncation needs the checkpoint's position to be verifiable by whoever restores it.
        let log = self.replica.anchor.is_some().then(|| self.log.clone());
        let collect = self.collection_due();
        let clock = self.options.member.clock.clone();
        self.checkpoint = Some(tokio::spawn(write_checkpoint(
            store, se, at, snapshot, log, clock, collect,
        )));
    }

    /// The retention to apply after this checkpoint, if a collection is due: never fewer than
    /// [`LINES_SEARCHED`] newest lines, so that the line with the highest log position among
    /// them (what a replica loads after a truncation) is never collected.
    fn collection_due(&mut self) -> Option<Retention> {
        let retention = self.options.retention?;
        if self
            .last_collection
            .is_some_and(|at| at.elapsed() < self.options.gc_interval)
        {
            return None;
        }
        self.last_collection = Some(Instant::now());
        let mut floor = Retention::newest(retention.keep.max(LINES_SEARCHED));
        if let Some(window) = retention.keep_for {
            floor = floor.within(window);
        }
        Some(floor)
    }
}

fn log_seq_of(manifest: &Manifest) -> u64 {
    manifest
        .metadata
        .get(LOG_SEQ_KEY)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// What a checkpoint task did.
struct CheckpointDone {
    id: CheckpointId,
    /// The log position it covers.
    at: u64,
    /// The number the log was truncated through, if it was.
    truncated: Result<Option<u64>, Error>,
    /// How many old checkpoints a collection expired, if one ran.
    collected: Option<Result<usize, Error>>,
}

/// Writes the replica's snapshot as the next checkpoint of `store`, fenced by the slot epoch;
/// then, given the `log`, deletes the log's entries below the checkpoint's position (that
/// entry itself stays: restoring the checkpoint verifies it); then, given a retention,
/// collects old checkpoints.
async fn write_checkpoint(
    store: CheckpointStore,
    se: SlotEpoch,
    at: u64,
    snapshot: Snapshot,
    log: Option<FencedLog>,
    clock: Clock,
    collect: Option<Retention>,
) -> Result<CheckpointDone, Error> {
    let newest = store
        .committed_ids()
        .await
        .map_err(Error::replica_checkpoint("list the committed lines"))?
        .last()
        .map_or(0, |id| id.get());
    let id = CheckpointId::new(newest + 1);
    let round = format!("e{}-p{at}-{:08x}", se.epoch, clock.random_u64() as u32);
    let object = ObjectId::new(REPLICA_OBJECT)?;
    let mut writer = store.segment_writer(id, &round, "replica");
    let location = writer
        .add(&object, &snapshot)
        .await
        .map_err(Error::replica_checkpoint(format!("write checkpoint {id}")))?;
    writer
        .finish()
        .await
        .map_err(Error::replica_checkpoint(format!("write checkpoint {id}")))?;
    let created_at_ms = clock.wall_ms();
    let mut manifest = Manifest::new(id, se.epoch, created_at_ms, round);
    manifest.parent = (newest > 0).then(|| CheckpointId::new(newest));
    manifest.objects.insert(
        object,
        ObjectEntry {
            type_name: REPLICA_TYPE.into(),
            version: 1,
            generation: None,
            location,
        },
    );
    manifest
        .metadata
        .insert(LOG_SEQ_KEY.to_owned(), at.to_be_bytes().to_vec());
    store
        .commit(&manifest)
        .await
        .map_err(Error::replica_checkpoint(format!("commit checkpoint {id}")))?;
    let truncated = match log {
        Some(log) if at > 1 => log
            .truncate_through(at - 1)
            .await
            .map(|deleted| (deleted > 0).then_some(at - 1)),
        _ => Ok(None),
    };
    // After the truncation: the checkpoint it relied on is the newest, which is kept.
    let collected = match collect {
        Some(retention) => Some(
            store
                .gc_with(retention, created_at_ms, false)
                .await
                .map(|report| report.expired.len())
                .map_err(Error::replica_checkpoint("collect old checkpoints")),
        ),
        None => None,
    };
    Ok(CheckpointDone {
        id,
        at,
        truncated,
        collected,
    })
}
