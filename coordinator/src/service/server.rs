//! The service task: node connections, the engine, commits, recovery across nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_checkpoint::{CheckpointStore, InTransitEntry, Manifest, ManifestKind, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::history::RecoveryCause;
use super::metrics::ServiceMetrics;
use super::protocol::{CoordinatorFrame, NodeFrame, WireVote};
use super::table::{NodeEntry, StateTable};
use super::{COUNTERS_KEY, STATE_TABLE_KEY};
use crate::engine::{
    AbortReason, Ballot, Command, CommitOutcome, Config, Engine, Event, Round, Start,
    TriggerFailure, TriggerId, Vote, VotedState,
};
use crate::error::{Error, Result};
use crate::runtime::{Clock, Local};
use cohort_wire::{Connection, ListenConfig, Role};

/// Extra manifest metadata computed at every commit from the state table.
pub type MetadataHook = Arc<dyn Fn(&StateTable) -> BTreeMap<String, Vec<u8>> + Send + Sync>;

/// How a [`Service`] runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Where nodes connect; its role is set to `coordinator`, accepting `node`.
    pub listen: ListenConfig,
    /// Take a checkpoint this often; `None`: only on [`Service::trigger`].
    pub interval: Option<Duration>,
    /// Abort an attempt not decided after this long. Default 10 s.
    pub timeout: Duration,
    /// Least time between two attempts. Default 0.
    pub min_pause: Duration,
    /// Heartbeats both ways this often. Default 200 ms.
    pub heartbeat_interval: Duration,
    /// A connection silent this long is lost (the attempt in flight aborts); a node not back
    /// this long after that is dead (cohort recovery). Default 2 s.
    pub heartbeat_timeout: Duration,
    /// Recorded with the epoch claimed by [`lead_at_start`](Self::lead_at_start).
    pub holder: String,
    /// Claim an epoch and lead at start (no standby). Default true; set false when a
    /// leadership driver calls [`Service::lead`].
    pub lead_at_start: bool,
    /// Extra metadata for every manifest.
    pub metadata: Option<MetadataHook>,
    /// Wall clock for manifest timestamps (Unix ms).
    pub clock: Clock,
    /// Answers CLI connections (wire role `cli`) on the node port; without one they are told
    /// that this coordinator takes no control requests.
    pub control: Option<super::control::ControlHandler>,
    /// Where the service records what it does (checkpoint duration, size and pause, counts,
    /// recoveries), for a Prometheus endpoint.
    pub metrics: Option<ServiceMetrics>,
}

impl ServiceConfig {
    /// Defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let mut listen = ListenConfig::new(addr);
        listen.role = Role::Coordinator;
        listen.accept_roles = vec![Role::Node, Role::Cli];
        Self {
            listen,
            interval: None,
            timeout: Duration::from_secs(10),
            min_pause: Duration::ZERO,
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_secs(2),
            holder: format!("cohort-service-{}", std::process::id()),
            lead_at_start: true,
            metadata: None,
            clock: Arc::new(unix_ms),
            control: None,
            metrics: None,
        }
    }
}

/// What the service reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// The epoch led, if leading.
    pub epoch: Option<u64>,
    /// A commit found a newer epoch: this service is deposed (tell the leadership driver).
    pub fenced: bool,
    /// The newest manifest id this service knows.
    pub last_committed: CheckpointId,
    /// The attempt in flight.
    pub in_flight: Option<(CheckpointId, Round)>,
    /// Checkpoints committed by this service.
    pub committed: u64,
    /// Attempts aborted.
    pub aborted: u64,
    /// Cohort recoveries run.
    pub recoveries: u64,
    /// Nodes, objects, placement.
    pub table: StateTable,
}

/// The coordinator service's handle. Cheap to clone; stops on [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Service {
    input: mpsc::UnboundedSender<Input>,
    status: watch::Receiver<ServiceStatus>,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
}

enum Input {
    Connected {
        node: String,
        session: Option<u64>,
        peer_addr: String,
        objects: Vec<ObjectId>,
        conn: u64,
        tx: mpsc::UnboundedSender<CoordinatorFrame>,
        reply: oneshot::Sender<CoordinatorFrame>,
    },
    Frame {
        conn: u64,
        node: String,
        frame: NodeFrame,
    },
    Disconnected {
        conn: u64,
        node: String,
    },
    Trigger(oneshot::Sender<Result<CheckpointId>>),
    Lead {
        epoch: u64,
        fence: Option<Arc<Manifest>>,
        reply: oneshot::Sender<Result<()>>,
    },
    Follow {
        leader: Option<String>,
    },
    Cut {
        node: String,
    },
}

impl Service {
    /// Binds the node port and starts the service. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Wire`] ([`Bind`](cohort_wire::Error::Bind)) when the port cannot be bound, [`TokenRequired`](cohort_wire::Error::TokenRequired),
    /// [`InvalidName`](cohort_wire::Error::InvalidName) or [`Error::InvalidConfig`] when the listen settings are wrong,
    /// [`Error::InvalidConfig`] for zero timeouts, [`Error::Store`] when the epoch cannot be
    /// claimed or the store read.
    pub async fn start(store: CheckpointStore, config: ServiceConfig) -> Result<Self> {
        if config.timeout.is_zero()
            || config.heartbeat_interval.is_zero()
            || config.heartbeat_timeout <= config.heartbeat_interval
        {
            return Err(Error::invalid_settings(
                "timeout and heartbeat_interval must be positive and heartbeat_timeout longer than heartbeat_interval (e.g. 200 ms and 2 s)",
            ));
        }
        let mut listen = config.listen.clone();
        listen.role = Role::Coordinator;
        let listener = listen.bind().await?;
        let local_addr = listener.local_addr();
        let (input, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(ServiceStatus::default());
        let shutdown = CancellationToken::new();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let hb = (ms(config.heartbeat_interval), ms(config.heartbeat_timeout));
        let conns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handler_input = input.clone();
        let control = config.control.clone();
        tokio::spawn(cohort_wire::serve(
            listener,
            move |conn: Connection<NodeFrame, CoordinatorFrame>, stop| {
                if conn.peer().role == Role::Cli {
                    let serve = super::control::serve(conn, stop, control.clone());
                    return futures::future::Either::Left(serve);
                }
                let id = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                futures::future::Either::Right(handle_node(
                    conn,
                    stop,
                    handler_input.clone(),
                    id,
                    hb,
                ))
            },
            shutdown.clone(),
        ));
        let mut server = Server {
            store,
            config,
            engine: None,
            nodes: BTreeMap::new(),
            placement: BTreeMap::new(),
            next_session: rand::random::<u32>() as u64,
            triggers: HashMap::new(),
            next_trigger: 0,
            last_manifest: None,
            pending_commit: None,
            channel_nodes: BTreeSet::new(),
            prepared: BTreeSet::new(),
            recovery: None,
            recovery_seq: 0,
            incarnation: 0,
            status: status_tx,
            origin: tokio::time::Instant::now(),
            attempt_started: None,
            attempt_bytes: 0,
            attempt_pauses: BTreeMap::new(),
            leader_hint: None,
            fenced: false,
            committed: 0,
            aborted: 0,
            recoveries: 0,
        };
        if server.config.lead_at_start {
            let epoch = server
                .store
                .claim_epoch(&server.config.holder, (server.config.clock)())
                .await?
                .epoch;
            let line = recovery_line(&server.store).await?;
            server.lead(epoch, line).await?;
        }
        tokio::spawn(server.run(rx, shutdown.clone()));
        tracing::info!(addr = %local_addr, "coordinator service started");
        Ok(Self {
            input,
            status,
            local_addr,
            shutdown,
        })
    }

    /// Where nodes connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Watches the service's status.
    pub fn status(&self) -> watch::Receiver<ServiceStatus> {
        self.status.clone()
    }

    /// Takes a checkpoint that starts after this call; returns its id once committed.
    ///
    /// # Errors
    ///
    /// [`Error::Aborted`] (retry), [`Error::Fenced`], [`Error::Stopped`].
    pub async fn trigger(&self) -> Result<CheckpointId> {
        let (tx, rx) = oneshot::channel();
        self.input
            .send(Input::Trigger(tx))
            .map_err(|_| Error::COHORT_STOPPED)?;
        rx.await.map_err(|_| Error::COHORT_STOPPED)?
    }

    /// Starts leading under `epoch` (claimed by the leadership driver, which wrote `fence`).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store cannot be read; [`Error::Stopped`].
    pub async fn lead(&self, epoch: u64, fence: Option<Arc<Manifest>>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.input
            .send(Input::Lead {
                epoch,
                fence,
                reply: tx,
            })
            .map_err(|_| Error::COHORT_STOPPED)?;
        rx.await.map_err(|_| Error::COHORT_STOPPED)?
    }

    /// Stops leading: aborts the attempt in flight and sends nodes to `leader`.
    pub fn follow(&self, leader: Option<String>) {
        let _ = self.input.send(Input::Follow { leader });
    }

    /// Drops the connection of node `name` from this side, as a network fault would (the node
    /// reconnects; fault injection and operators).
    pub fn cut_connection(&self, name: &str) {
        let _ = self.input.send(Input::Cut {
            node: name.to_owned(),
        });
    }

    /// Stops the service: closes the port and every node connection.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// One node connection: registration, then frames both ways with heartbeats.
async fn handle_node(
    mut conn: Connection<NodeFrame, CoordinatorFrame>,
    stop: CancellationToken,
    input: mpsc::UnboundedSender<Input>,
    id: u64,
    (heartbeat_ms, timeout_ms): (u64, u64),
) -> std::result::Result<(), Error> {
    let node = conn.peer().name.clone();
    let timeout = Duration::from_millis(timeout_ms);
    let first = tokio::time::timeout(timeout, conn.recv()).await;
    let Ok(Some(NodeFrame::Register {
        session,
        peer_addr,
        objects,
    })) = first.unwrap_or(Ok(None))
    else {
        tracing::warn!(%node, "a node connected without registering; closed");
        return Ok(());
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let connected = Input::Connected {
        node: node.clone(),
        session,
        peer_addr,
        objects,
        conn: id,
        tx,
        reply: reply_tx,
    };
    if input.send(connected).is_err() {
        return Ok(());
    }
    let Ok(reply) = reply_rx.await else {
        return Ok(());
    };
    let welcome = matches!(reply, CoordinatorFrame::Welcome { .. });
    conn.send(&reply).await?;
    if !welcome {
        return Ok(conn.close().await?);
    }
    let mut beat = tokio::time::interval(Duration::from_millis(heartbeat_ms));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            out = rx.recv() => match out {
                Some(frame) => if let Err(e) = conn.send(&frame).await { break Err(e) },
                None => break Ok(()), // the service dropped this connection
            },
            frame = conn.recv() => match frame {
                Ok(Some(frame)) => {
                    deadline = tokio::time::Instant::now() + timeout;
                    if !matches!(frame, NodeFrame::Heartbeat) {
                        let _ = input.send(Input::Frame { conn: id, node: node.clone(), frame });
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            _ = beat.tick() => if let Err(e) = conn.send(&CoordinatorFrame::Heartbeat).await { break Err(e) },
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(%node, "no frame for {timeout:?}; dropping the connection");
                break Ok(());
            }
        }
    };
    let _ = input.send(Input::Disconnected { conn: id, node });
    Ok(result?)
}

struct NodeState {
    session: u64,
    conn: Option<(u64, mpsc::UnboundedSender<CoordinatorFrame>)>,
    peer_addr: String,
    lost_at: Option<tokio::time::Instant>,
    dead: bool,
    /// Restored (or resumed) and released: its objects can take part.
    ready: bool,
    /// The last decision sent to it: sent again when it resumes its session, in case the
    /// connection lost it (its objects' `on_committed` must not be missed; a repeat is ignored).
    last_decided: Option<(CheckpointId, Round, bool)>,
}

impl NodeState {
    fn send(&self, frame: CoordinatorFrame) {
        if let Some((_, tx)) = &self.conn {
            let _ = tx.send(frame);
        }
    }
}

struct PendingCommit {
    id: CheckpointId,
    round: Round,
    ballots: BTreeMap<ObjectId, Ballot<ObjectEntry>>,
    in_transit: Vec<InTransitEntry>,
    waiting: BTreeSet<String>,
}

struct Recovery {
    seq: u64,
    line: Option<Arc<Manifest>>,
    /// Nodes still restoring; after a takeover, also the expected nodes not registered yet.
    waiting: BTreeSet<String>,
    /// After a takeover: expected nodes not registered by then are left out (they are
    /// restored on their own when they come, as a replacement would be).
    deadline: Option<tokio::time::Instant>,
}

struct Server {
    store: CheckpointStore,
    config: ServiceConfig,
    engine: Option<Engine<Local>>,
    nodes: BTreeMap<String, NodeState>,
    placement: BTreeMap<ObjectId, String>,
    next_session: u64,
    triggers: HashMap<TriggerId, oneshot::Sender<Result<CheckpointId>>>,
    next_trigger: u64,
    last_manifest: Option<Arc<Manifest>>,
    pending_commit: Option<PendingCommit>,
    channel_nodes: BTreeSet<String>,
    /// Nodes sent the `Prepare` of the attempt in flight: they, and only they, get its decision.
    prepared: BTreeSet<String>,
    recovery: Option<Recovery>,
    recovery_seq: u64,
    incarnation: u64,
    status: watch::Sender<ServiceStatus>,
    origin: tokio::time::Instant,
    attempt_started: Option<Instant>,
    /// Bytes the nodes wrote for the attempt in flight (states and in-transit messages).
    attempt_bytes: u64,
    /// The longest pause of each node's objects in the attempt in flight (a node may vote in
    /// several frames: the objects it counted in without waking them, then the others).
    attempt_pauses: BTreeMap<String, Duration>,
    leader_hint: Option<String>,
    fenced: bool,
    committed: u64,
    aborted: u64,
    recoveries: u64,
}

impl Server {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>, shutdown: CancellationToken) {
        loop {
            self.publish();
            let deadline = self.next_deadline();
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                input = rx.recv() => match input {
                    Some(input) => Some(input),
                    None => return,
                },
                () = sleep_until(deadline) => None,
            };
            match input {
                None => self.on_tick().await,
                Some(input) => self.on_input(input).await,
            }
        }
    }

    fn in_flight_round(&self) -> Option<Round> {
        self.engine
            .as_ref()
            .and_then(Engine::in_flight)
            .map(|(_, r)| r)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let engine = self
            .engine
            .as_ref()
            .and_then(|e| e.next_deadline_ms())
            .map(|ms| self.origin + Duration::from_millis(ms));
        let dead = self
            .nodes
            .values()
            .filter(|n| !n.dead)
            .filter_map(|n| n.lost_at)
            .map(|t| t + self.config.heartbeat_timeout)
            .min();
        let takeover = self.recovery.as_ref().and_then(|r| r.deadline);
        [engine, dead, takeover].into_iter().flatten().min()
    }

    fn table(&self) -> StateTable {
        StateTable {
            nodes: self
                .nodes
                .iter()
                .map(|(name, n)| {
                    (
                        name.clone(),
                        NodeEntry {
                            peer_addr: n.peer_addr.clone(),
                            live: n.conn.is_some() && !n.dead,
                        },
                    )
                })
                .collect(),
            placement: self.placement.clone(),
        }
    }

    fn publish(&self) {
        let status = ServiceStatus {
            epoch: self.engine.as_ref().map(Engine::epoch),
            fenced: self.fenced,
            last_committed: self
                .engine
                .as_ref()
                .map_or(CheckpointId::ZERO, Engine::last_committed),
            in_flight: self.engine.as_ref().and_then(Engine::in_flight),
            committed: self.committed,
            aborted: self.aborted,
            recoveries: self.recoveries,
            table: self.table(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    fn push_placement(&self) {
        let objects = self.placement.clone();
        let nodes: BTreeMap<String, String> = self
            .nodes
            .iter()
            .map(|(n, s)| (n.clone(), s.peer_addr.clone()))
            .collect();
        for n in self.nodes.values() {
            n.send(CoordinatorFrame::Placement {
                objects: objects.clone(),
                nodes: nodes.clone(),
            });
        }
    }

    /// Starts leading under `epoch` from `line` (the recovery line or the fence): its objects
    /// are expected members, placed as its state table says.
    async fn lead(&mut self, epoch: u64, line: Option<Arc<Manifest>>) -> Result<()> {
        let last = self
            .store
            .committed_ids()
            .await?
            .last()
            .copied()
            .unwrap_or(CheckpointId::ZERO);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut engine = Engine::new(
            Config {
                interval_ms: self.config.interval.map(ms),
                timeout_ms: ms(self.config.timeout),
                min_pause_ms: ms(self.config.min_pause),
                tolerable_failures: 0,
            },
            Start {
                now_ms: self.now_ms(),
                epoch,
                last_committed: last,
                // Colours of an earlier leader's rounds stay below this leader's.
                round_floor: Round(epoch << 32),
            },
        );
        if let Some(line) = &line {
            let table = line
                .metadata
                .get(STATE_TABLE_KEY)
                .and_then(|b| StateTable::decode(b).ok())
                .unwrap_or_default();
            for object in line.objects.keys() {
                let node = table.placement.get(object).cloned().unwrap_or_default();
                self.placement.entry(object.clone()).or_insert(node);
            }
        }
        for object in self.placement.keys() {
            engine.handle(
                self.now_ms(),
                Event::Join {
                    object: object.clone(),
                },
            );
        }
        // Above every incarnation of an older epoch (those count up from `epoch << 32` too), so
        // that nodes drop the messages of the old leader's time once restored.
        self.incarnation = (epoch << 32) | 1;
        // The nodes ran on past the line under the old leader: all of them roll back to it,
        // and none runs before all are restored (one released early would send messages of
        // the new incarnation into a node still living the discarded future).
        let expected: BTreeSet<String> = self
            .placement
            .values()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        if !expected.is_empty() {
            engine.handle(self.now_ms(), Event::Halt);
            self.recoveries += 1;
            if let Some(m) = &self.config.metrics {
                m.record_recovery(
                    RecoveryCause::Takeover { epoch },
                    line.as_ref().map(|l| l.id),
                    &expected,
                );
            }
            self.recovery_seq += 1;
            self.recovery = Some(Recovery {
                seq: self.recovery_seq,
                line: line.clone(),
                waiting: expected,
                deadline: Some(tokio::time::Instant::now() + self.config.heartbeat_timeout),
            });
        }
        self.engine = Some(engine);
        self.last_manifest = line;
        self.fenced = false;
        tracing::info!(epoch, newest = %last, expected = self.placement.len(), "leading");
        Ok(())
    }

    async fn on_tick(&mut self) {
        let now = tokio::time::Instant::now();
        let mut newly_dead = Vec::new();
        for (name, n) in &mut self.nodes {
            if !n.dead
                && n.lost_at
                    .is_some_and(|t| now >= t + self.config.heartbeat_timeout)
            {
                n.dead = true;
                n.ready = false;
                newly_dead.push(name.clone());
            }
        }
        if !newly_dead.is_empty() {
            tracing::warn!(nodes = ?newly_dead, "nodes dead; cohort recovery");
            self.start_recovery().await;
        }
        if let Some(r) = &mut self.recovery
            && r.deadline.is_some_and(|d| now >= d)
        {
            r.deadline = None;
            let registered = &self.nodes;
            let absent: Vec<String> = r
                .waiting
                .iter()
                .filter(|n| registered.get(*n).is_none_or(|s| s.conn.is_none()))
                .cloned()
                .collect();
            if !absent.is_empty() {
                tracing::warn!(nodes = ?absent, "expected nodes did not come back after the takeover; the others resume without them");
                for n in &absent {
                    r.waiting.remove(n);
                }
            }
            if r.waiting.is_empty() {
                self.finish_recovery().await;
            }
        }
        self.feed(Event::Tick).await;
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Connected {
                node,
                session,
                peer_addr,
                objects,
                conn,
                tx,
                reply,
            } => {
                let answer = self
                    .register(node, session, peer_addr, objects, conn, tx)
                    .await;
                let _ = reply.send(answer);
            }
            Input::Frame { conn, node, frame } => {
                let current = self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.conn.as_ref().is_some_and(|(c, _)| *c == conn));
                if current {
                    self.on_frame(node, frame).await;
                }
            }
            Input::Disconnected { conn, node } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return;
                };
                if n.conn.as_ref().is_none_or(|(c, _)| *c != conn) {
                    return;
                }
                n.conn = None;
                n.lost_at = Some(tokio::time::Instant::now());
                tracing::warn!(%node, "lost a node's connection");
                self.node_lost(&node).await;
            }
            Input::Trigger(reply) => {
                if self.engine.is_none() {
                    let _ = reply.send(Err(Error::invalid_settings(
                        "this coordinator does not lead; ask the leader",
                    )));
                    return;
                }
                self.next_trigger += 1;
                let request = TriggerId(self.next_trigger);
                self.triggers.insert(request, reply);
                self.feed(Event::Trigger { request }).await;
            }
            Input::Lead {
                epoch,
                fence,
                reply,
            } => {
                let line = match fence {
                    Some(f) => Ok(Some(f)),
                    None => recovery_line(&self.store).await,
                };
                let result = match line {
                    Ok(line) => self.lead(epoch, line).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Input::Follow { leader } => {
                if let Some(engine) = self.engine.as_mut() {
                    engine.handle(0, Event::Halt);
                }
                self.engine = None;
                self.pending_commit = None;
                self.recovery = None;
                for (_, reply) in self.triggers.drain() {
                    let _ = reply.send(Err(Error::COHORT_STOPPED));
                }
                for n in self.nodes.values_mut() {
                    n.send(CoordinatorFrame::NotLeader {
                        leader: leader.clone(),
                    });
                    n.conn = None;
                }
                self.nodes.clear();
                self.placement.clear();
                self.leader_hint = leader;
            }
            Input::Cut { node } => {
                if let Some(n) = self.nodes.get_mut(&node)
                    && n.conn.take().is_some()
                {
                    n.lost_at = Some(tokio::time::Instant::now());
                    tracing::warn!(%node, "connection cut on request");
                    self.node_lost(&node).await;
                }
            }
        }
    }

    async fn register(
        &mut self,
        node: String,
        session: Option<u64>,
        peer_addr: String,
        objects: Vec<ObjectId>,
        conn: u64,
        tx: mpsc::UnboundedSender<CoordinatorFrame>,
    ) -> CoordinatorFrame {
        if self.engine.is_none() {
            return CoordinatorFrame::NotLeader {
                leader: self.leader_hint.clone(),
            };
        }
        let heartbeat_ms =
            u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        let timeout_ms =
            u64::try_from(self.config.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        let welcome = move |session, resumed| CoordinatorFrame::Welcome {
            session,
            resumed,
            heartbeat_ms,
            timeout_ms,
        };
        // A node taken over by someone else's objects is refused, whole.
        if let Some(clash) = objects.iter().find(|o| {
            self.placement.get(*o).is_some_and(|owner| {
                owner != &node
                    && self
                        .nodes
                        .get(owner)
                        .is_some_and(|n| !n.dead && n.conn.is_some())
            })
        }) {
            return CoordinatorFrame::Refused {
                reason: format!(
                    "object {clash} is hosted by live node {}; give each object one node",
                    self.placement.get(clash).map_or("?", String::as_str)
                ),
            };
        }
        if let Some(n) = self.nodes.get_mut(&node)
            && !n.dead
            && session == Some(n.session)
        {
            // A blip within the timeout: resume, nothing to restore, unless a recovery ran
            // (or runs) while the node was away: then it restores like the others did.
            n.conn = Some((conn, tx));
            n.lost_at = None;
            n.peer_addr = peer_addr;
            let session = n.session;
            let missed_restore = !n.ready;
            if let Some((id, round, committed)) = n.last_decided {
                n.send(CoordinatorFrame::Decided {
                    id,
                    round,
                    committed,
                });
            }
            tracing::info!(%node, session, missed_restore, "node resumed its session");
            self.add_objects(&node, objects).await;
            self.push_placement();
            if missed_restore {
                let restore = self.restore_frame(&node);
                if let Some(n) = self.nodes.get(&node) {
                    n.send(restore);
                }
            }
            return welcome(session, true);
        }
        // A new session: a new node, a restarted one, or one declared dead. Its objects are
        // restored from the newest line before they run.
        if let Some(old) = self.nodes.get(&node)
            && !old.dead
        {
            // The old process is gone (a restart faster than the timeout): as if it died.
            if let Some(n) = self.nodes.get_mut(&node) {
                n.dead = true;
                n.conn = None;
            }
            self.start_recovery().await;
        }
        self.next_session += 1;
        let session = self.next_session;
        self.nodes.insert(
            node.clone(),
            NodeState {
                session,
                conn: Some((conn, tx)),
                peer_addr,
                lost_at: None,
                dead: false,
                ready: false,
                last_decided: None,
            },
        );
        self.add_objects(&node, objects).await;
        self.push_placement();
        let restore = self.restore_frame(&node);
        // The reply goes out before anything queued for the connection.
        if let Some(n) = self.nodes.get(&node) {
            n.send(restore);
        }
        tracing::info!(%node, session, "node registered");
        welcome(session, false)
    }

    /// The order that brings `node` (registered, not ready) in line with the others.
    fn restore_frame(&mut self, node: &str) -> CoordinatorFrame {
        let colour = self.engine.as_ref().map_or(Round::ZERO, Engine::last_round);
        match &mut self.recovery {
            // A recovery is under way: this node is one more to restore before all resume.
            Some(r) => {
                r.waiting.insert(node.to_owned());
                CoordinatorFrame::Restore {
                    recovery: r.seq,
                    line: r.line.as_ref().map(|m| m.id),
                    colour,
                    incarnation: self.incarnation,
                }
            }
            // The others run: this node restores the newest line (no checkpoint commits
            // without its objects) and runs once restored.
            None => CoordinatorFrame::Restore {
                recovery: 0,
                line: self
                    .engine
                    .as_ref()
                    .map(Engine::last_committed)
                    .filter(|l| *l != CheckpointId::ZERO),
                colour,
                incarnation: self.incarnation,
            },
        }
    }

    async fn add_objects(&mut self, node: &str, objects: Vec<ObjectId>) {
        for object in objects {
            let owner = self.placement.get(&object);
            if owner.is_some_and(|o| o != node && self.nodes.get(o).is_some_and(|n| !n.dead)) {
                tracing::error!(%object, %node, "object already hosted by another live node; ignored");
                continue;
            }
            let known = owner.is_some();
            self.placement.insert(object.clone(), node.to_owned());
            if !known {
                self.feed(Event::Join { object }).await;
            }
        }
    }

    /// A node's connection is gone: the attempt it takes part in aborts now.
    async fn node_lost(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.ready = n.ready && !n.dead;
        }
        if let Some(p) = &mut self.pending_commit
            && p.waiting.contains(node)
        {
            let round = p.round;
            self.pending_commit = None;
            self.feed(Event::CommitResult {
                round,
                outcome: CommitOutcome::Failed {
                    reason: format!("node {node} was lost while sealing its channel state"),
                },
            })
            .await;
        }
        if let Some(r) = &mut self.recovery {
            r.waiting.remove(node);
            if r.waiting.is_empty() {
                self.finish_recovery().await;
            }
        }
        let in_flight = self.engine.as_ref().and_then(Engine::in_flight);
        if let Some((_, round)) = in_flight
            && let Some(object) = self
                .placement
                .iter()
                .find(|(_, n)| n.as_str() == node)
                .map(|(o, _)| o.clone())
        {
            self.feed(Event::Vote {
                round,
                object,
                vote: Vote::No {
                    reason: format!("its node {node} was lost"),
                },
            })
            .await;
        }
    }

    async fn on_frame(&mut self, node: String, frame: NodeFrame) {
        match frame {
            NodeFrame::Heartbeat | NodeFrame::Register { .. } | NodeFrame::Control(_) => {}
            NodeFrame::Spawned { objects } => {
                self.add_objects(&node, objects).await;
                self.push_placement();
            }
            NodeFrame::Votes {
                round,
                votes,
                bytes,
                pause_max_us,
            } => {
                if self.in_flight_round() == Some(round) {
                    self.attempt_bytes = self.attempt_bytes.saturating_add(bytes);
                    let longest = self.attempt_pauses.entry(node.clone()).or_default();
                    *longest = (*longest).max(Duration::from_micros(pause_max_us));
                }
                for (object, vote) in votes {
                    if self.placement.get(&object) != Some(&node) {
                        continue;
                    }
                    let vote = match vote {
                        WireVote::Yes {
                            entry,
                            sent,
                            received,
                        } => Vote::Yes(Ballot {
                            state: entry.map_or(VotedState::Unchanged, VotedState::Written),
                            sent,
                            received,
                        }),
                        WireVote::No { reason } => Vote::No { reason },
                    };
                    self.feed(Event::Vote {
                        round,
                        object,
                        vote,
                    })
                    .await;
                }
            }
            NodeFrame::ChannelState { round, entries } => {
                if self.in_flight_round() == Some(round) {
                    self.channel_nodes.insert(node);
                    let bytes: u64 = entries.iter().map(|e| e.location.len).sum();
                    self.attempt_bytes = self.attempt_bytes.saturating_add(bytes);
                }
                self.feed(Event::ChannelState {
                    round,
                    records: entries,
                })
                .await;
            }
            NodeFrame::Sealed { round, result } => {
                let Some(p) = self.pending_commit.as_mut().filter(|p| p.round == round) else {
                    return;
                };
                if let Err(reason) = result {
                    self.pending_commit = None;
                    self.feed(Event::CommitResult {
                        round,
                        outcome: CommitOutcome::Failed {
                            reason: format!(
                                "node {node} could not seal its channel state: {reason}"
                            ),
                        },
                    })
                    .await;
                    return;
                }
                p.waiting.remove(&node);
                if p.waiting.is_empty()
                    && let Some(p) = self.pending_commit.take()
                {
                    let outcome = self.commit(p.id, p.round, p.ballots, p.in_transit).await;
                    self.feed(Event::CommitResult { round, outcome }).await;
                }
            }
            NodeFrame::Restored { recovery, result } => {
                if let Err(e) = &result {
                    tracing::error!(%node, error = %e, "node failed to restore; it stays held");
                    return;
                }
                if recovery == 0 {
                    // A joining node restored its objects: it runs from now on.
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.ready = true;
                        n.send(CoordinatorFrame::Release {
                            incarnation: self.incarnation,
                        });
                    }
                    return;
                }
                if let Some(r) = &mut self.recovery
                    && r.seq == recovery
                {
                    r.waiting.remove(&node);
                    if r.waiting.is_empty() {
                        self.finish_recovery().await;
                    }
                }
            }
        }
    }

    /// Rolls every live node back to the recovery line.
    async fn start_recovery(&mut self) {
        // An attempt waiting for its channel state to be sealed is committing, which a halt
        // does not abort: fail it, or the engine would keep it and never resume.
        if let Some(p) = self.pending_commit.take() {
            self.feed(Event::CommitResult {
                round: p.round,
                outcome: CommitOutcome::Failed {
                    reason: "a cohort recovery started before its channel state was sealed".into(),
                },
            })
            .await;
        }
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let commands = engine.handle(now, Event::Halt);
        for c in commands {
            self.execute(c).await;
        }
        let line = match recovery_line(&self.store).await {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the recovery line; recovery retried at the next loss");
                None
            }
        };
        self.recovery_seq += 1;
        self.incarnation += 1;
        let colour = self.engine.as_ref().map_or(Round::ZERO, Engine::last_round);
        let mut waiting = BTreeSet::new();
        for (name, n) in &mut self.nodes {
            // A node away now (within its timeout) restores when it resumes.
            n.ready = false;
            if n.conn.is_some() && !n.dead {
                n.send(CoordinatorFrame::Restore {
                    recovery: self.recovery_seq,
                    line: line.as_ref().map(|m| m.id),
                    colour,
                    incarnation: self.incarnation,
                });
                waiting.insert(name.clone());
            }
        }
        self.recoveries += 1;
        if let Some(m) = &self.config.metrics {
            m.record_recovery(
                RecoveryCause::NodesDead {
                    nodes: self
                        .nodes
                        .iter()
                        .filter(|(_, n)| n.dead)
                        .map(|(name, _)| name.clone())
                        .collect(),
                },
                line.as_ref().map(|l| l.id),
                &waiting,
            );
        }
        self.recovery = Some(Recovery {
            seq: self.recovery_seq,
            line,
            waiting,
            deadline: None,
        });
        if self.recovery.as_ref().is_some_and(|r| r.waiting.is_empty()) {
            self.finish_recovery().await;
        }
    }

    /// Every live node restored: fence, release, resume.
    async fn finish_recovery(&mut self) {
        let Some(recovery) = self.recovery.take() else {
            return;
        };
        let Some(epoch) = self.engine.as_ref().map(Engine::epoch) else {
            return;
        };
        let mut last = self
            .engine
            .as_ref()
            .map_or(CheckpointId::ZERO, Engine::last_committed);
        // A takeover's line is already this epoch's fence, and the newest manifest.
        let fenced_already = recovery
            .line
            .as_ref()
            .is_some_and(|l| l.epoch == epoch && l.kind == ManifestKind::Fence && l.id == last);
        if let Some(line) = recovery.line.as_ref().filter(|_| !fenced_already) {
            match self.write_fence(epoch, line).await {
                Ok(fence) => {
                    last = fence.id;
                    self.last_manifest = Some(Arc::new(fence));
                }
                Err(Error::Fenced { .. }) => {
                    self.fenced = true;
                    tracing::error!("fenced while recovering: a newer coordinator leads");
                    return;
                }
                Err(e) => tracing::error!(error = %e, "cannot write the fence manifest"),
            }
        }
        for n in self.nodes.values_mut() {
            if n.conn.is_some() && !n.dead {
                n.ready = true;
                n.send(CoordinatorFrame::Release {
                    incarnation: self.incarnation,
                });
            }
        }
        tracing::info!(line = ?recovery.line.as_ref().map(|m| m.id), fence = %last, "cohort recovered");
        self.feed(Event::Resume {
            epoch,
            last_committed: last,
        })
        .await;
    }

    async fn write_fence(&self, epoch: u64, line: &Manifest) -> Result<Manifest> {
        let mut last_error = None;
        for _ in 0..8 {
            let newest = self
                .store
                .committed_ids()
                .await?
                .last()
                .copied()
                .unwrap_or(CheckpointId::ZERO);
            let mut fence = Manifest::new(
                newest.next(),
                epoch,
                (self.config.clock)(),
                format!("e{epoch}-fence-{}", self.recovery_seq),
            );
            fence.parent = (newest != CheckpointId::ZERO).then_some(newest);
            fence.kind = ManifestKind::Fence;
            fence.objects = line.objects.clone();
            fence.in_transit = line.in_transit.clone();
            fence.metadata = line.metadata.clone();
            match self.store.commit(&fence).await {
                Ok(()) => return Ok(fence),
                Err(e @ cohort_checkpoint::Error::Conflict { .. }) => last_error = Some(e),
                Err(e) if e.is_fenced() => return Err(Error::Fenced { epoch }),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_error.map_or(Error::COHORT_STOPPED, Error::from))
    }

    async fn feed(&mut self, event: Event<Local>) {
        let mut queue = VecDeque::new();
        queue.push_back(event);
        while let Some(event) = queue.pop_front() {
            let now = self.now_ms();
            let Some(engine) = self.engine.as_mut() else {
                return;
            };
            for command in engine.handle(now, event) {
                if let Some(next) = self.execute(command).await {
                    queue.push_back(next);
                }
            }
        }
    }

    fn token(&self, round: Round) -> String {
        let epoch = self.engine.as_ref().map_or(0, Engine::epoch);
        format!("e{epoch}-r{}", round.0)
    }

    async fn execute(&mut self, command: Command<Local>) -> Option<Event<Local>> {
        match command {
            Command::Prepare {
                id,
                round,
                participants,
            } => {
                self.attempt_started = Some(Instant::now());
                self.attempt_bytes = 0;
                self.attempt_pauses.clear();
                self.channel_nodes.clear();
                self.prepared.clear();
                let mut by_node: BTreeMap<&str, Vec<ObjectId>> = BTreeMap::new();
                let mut absent = None;
                for p in &participants {
                    match self.placement.get(p).and_then(|n| {
                        self.nodes
                            .get(n)
                            .filter(|s| s.ready && s.conn.is_some())
                            .map(|_| n)
                    }) {
                        Some(n) => by_node.entry(n.as_str()).or_default().push(p.clone()),
                        None => {
                            absent = Some(p.clone());
                            break;
                        }
                    }
                }
                if let Some(object) = absent {
                    let node = self.placement.get(&object).cloned().unwrap_or_default();
                    return Some(Event::Vote {
                        round,
                        object,
                        vote: Vote::No {
                            reason: format!("its node {node:?} is not connected"),
                        },
                    });
                }
                let token = self.token(round);
                tracing::debug!(checkpoint = %id, %round, participants = participants.len(), nodes = by_node.len(), "prepare");
                for (node, objects) in by_node {
                    if let Some(n) = self.nodes.get(node) {
                        self.prepared.insert(node.to_owned());
                        n.send(CoordinatorFrame::Prepare {
                            id,
                            round,
                            token: token.clone(),
                            objects,
                        });
                    }
                }
                None
            }
            Command::Commit {
                id,
                round,
                ballots,
                in_transit,
            } => {
                if self.channel_nodes.is_empty() {
                    let outcome = self
                        .commit(id, round, ballots, in_transit)
                        .instrument(tracing::info_span!("checkpoint", checkpoint = %id, %round))
                        .await;
                    return Some(Event::CommitResult { round, outcome });
                }
                let waiting = std::mem::take(&mut self.channel_nodes);
                // A node lost since it reported channel state cannot seal it: the `Seal` would
                // reach nobody and nothing would end the wait.
                if let Some(lost) = waiting
                    .iter()
                    .find(|n| self.nodes.get(*n).is_none_or(|s| s.conn.is_none()))
                {
                    return Some(Event::CommitResult {
                        round,
                        outcome: CommitOutcome::Failed {
                            reason: format!(
                                "node {lost} was lost before sealing its channel state"
                            ),
                        },
                    });
                }
                for node in &waiting {
                    if let Some(n) = self.nodes.get(node) {
                        n.send(CoordinatorFrame::Seal { round });
                    }
                }
                self.pending_commit = Some(PendingCommit {
                    id,
                    round,
                    ballots,
                    in_transit,
                    waiting,
                });
                None
            }
            Command::Decided {
                id,
                round,
                decision,
                participants: _,
            } => {
                let committed = decision == crate::engine::Decision::Committed;
                if let crate::engine::Decision::Aborted(reason) = &decision {
                    self.aborted += 1;
                    tracing::warn!(checkpoint = %id, %round, %reason, "checkpoint aborted");
                    if let Some(m) = &self.config.metrics {
                        let (took, bytes) = (
                            self.attempt_started.map(|t| t.elapsed()),
                            self.attempt_bytes,
                        );
                        // Aborted before the commit point, or the commit point failed.
                        match reason {
                            AbortReason::Store { .. } | AbortReason::Conflict => {
                                m.record_failed(id, reason, took, bytes, &self.attempt_pauses)
                            }
                            _ => m.record_aborted(id, reason, took, bytes, &self.attempt_pauses),
                        }
                    }
                } else {
                    self.committed += 1;
                    tracing::info!(checkpoint = %id, %round, "checkpoint committed");
                    if let Some(m) = &self.config.metrics {
                        let took = self.attempt_started.map(|t| t.elapsed());
                        m.record_committed(
                            id,
                            took,
                            Some(self.attempt_bytes),
                            &self.attempt_pauses,
                        );
                    }
                }
                // An attempt that never got to its prepare (a participant's node was away)
                // has nobody to tell.
                for node in std::mem::take(&mut self.prepared) {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.last_decided = Some((id, round, committed));
                        n.send(CoordinatorFrame::Decided {
                            id,
                            round,
                            committed,
                        });
                    }
                }
                None
            }
            Command::Discard { id, round } => {
                let store = self.store.clone();
                let token = self.token(round);
                tokio::spawn(async move {
                    if let Err(e) = store.discard_round(id, &token).await {
                        tracing::warn!(checkpoint = %id, round = %token, error = %e, "could not discard an aborted round's blobs; gc will");
                    }
                });
                None
            }
            Command::Reply { request, result } => {
                if let Some(reply) = self.triggers.remove(&request) {
                    let (epoch, next) = self.engine.as_ref().map_or((0, CheckpointId::ZERO), |e| {
                        (e.epoch(), e.last_committed().next())
                    });
                    let _ = reply.send(result.map_err(|f| match f {
                        TriggerFailure::Aborted(reason) => Error::Aborted { id: next, reason },
                        TriggerFailure::Fenced => Error::Fenced { epoch },
                    }));
                }
                None
            }
            Command::Health(_) => None,
        }
    }

    /// Builds the manifest from the ballots and creates it: the commit point.
    async fn commit(
        &mut self,
        id: CheckpointId,
        round: Round,
        ballots: BTreeMap<ObjectId, Ballot<ObjectEntry>>,
        in_transit: Vec<InTransitEntry>,
    ) -> CommitOutcome {
        let Some(engine) = self.engine.as_ref() else {
            return CommitOutcome::Failed {
                reason: "no longer leading".into(),
            };
        };
        let (epoch, last) = (engine.epoch(), engine.last_committed());
        let mut manifest = Manifest::new(id, epoch, (self.config.clock)(), self.token(round));
        manifest.parent = (last != CheckpointId::ZERO).then_some(last);
        let mut counters = BTreeMap::new();
        for (object, ballot) in ballots {
            let entry = match ballot.state {
                VotedState::Written(entry) => entry,
                VotedState::Unchanged => match self
                    .last_manifest
                    .as_ref()
                    .and_then(|m| m.objects.get(&object))
                {
                    Some(e) => e.clone(),
                    None => {
                        return CommitOutcome::Failed {
                            reason: format!(
                                "{object} reported no change but the previous line has no entry for it"
                            ),
                        };
                    }
                },
            };
            counters.insert(object.clone(), (ballot.sent, ballot.received));
            manifest.objects.insert(object, entry);
        }
        let table = self.table();
        let encoded = rmp_serde::to_vec(&counters).and_then(|c| Ok((c, table.encode()?)));
        match encoded {
            Ok((c, t)) => {
                manifest.metadata.insert(COUNTERS_KEY.to_owned(), c);
                manifest.metadata.insert(STATE_TABLE_KEY.to_owned(), t);
            }
            Err(e) => {
                return CommitOutcome::Failed {
                    reason: format!("encoding the metadata failed: {e}"),
                };
            }
        }
        if let Some(hook) = &self.config.metadata {
            manifest.metadata.extend(hook(&table));
        }
        manifest.in_transit = in_transit;
        let manifest = Arc::new(manifest);
        let outcome = match self.store.commit_shared(&manifest).await {
            Ok(()) => CommitOutcome::Committed,
            Err(e) if e.is_fenced() => {
                self.fenced = true;
                CommitOutcome::Fenced
            }
            Err(cohort_checkpoint::Error::Conflict { .. }) => {
                let newest = self
                    .store
                    .committed_ids()
                    .await
                    .ok()
                    .and_then(|ids| ids.last().copied());
                CommitOutcome::Conflict {
                    newest: newest.unwrap_or(id).max(id),
                }
            }
            Err(e) => match self.store.read_manifest(id).await {
                Ok(m) if m.round == manifest.round && m.epoch == manifest.epoch => {
                    CommitOutcome::Committed
                }
                _ => CommitOutcome::Failed {
                    reason: e.to_string(),
                },
            },
        };
        if outcome == CommitOutcome::Committed {
            tracing::debug!(checkpoint = %id, elapsed = ?self.attempt_started.map(|t| t.elapsed()), "manifest created");
            self.last_manifest = Some(manifest);
        }
        outcome
    }
}

/// The recovery line's manifest.
async fn recovery_line(store: &CheckpointStore) -> Result<Option<Arc<Manifest>>> {
    Ok(store.recovery_line().await?.map(|l| Arc::new(l.manifest)))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
