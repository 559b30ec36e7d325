//! The service task: the [`Core`] with a transport that reaches nodes by frames. It keeps the
//! node connections and sessions; every protocol decision is the engine's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, Fence, FenceLine, FenceRequest, Manifest};
use cohort_object_api::{CheckpointId, Clock, ObjectId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::STATE_TABLE_KEY;
use super::metrics::ServiceMetrics;
use super::protocol::{CoordinatorFrame, NodeFrame, WireVote};
use super::table::{NodeEntry, StateTable};
use crate::core::{CommitStats, Core, RestoreOrder, Transport, line_info, recovery_error};
use crate::engine::{
    Ballot, ByHost, Config, Decision, Engine, Event, Halt, Health, HostId, Hosting, Liveness,
    RecoverId, Recovered, RecoveryCause, RecoveryFailure, Registration, RestartPolicy,
    RestoreFailure, Round, Start, Vote, VotedState,
};
use crate::error::{Error, Result};
use crate::failpoint::{Crash, FailPoints};
use crate::runtime::Local;
use cohort_wire::{BoxStream, Connection, ListenConfig, Network, Role, TcpConnector};

/// Extra manifest metadata computed at every commit from the state table.
pub type MetadataHook = Arc<dyn Fn(&StateTable) -> BTreeMap<String, Vec<u8>> + Send + Sync>;

/// How a [`Service`] runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Where nodes connect; its role is set to `coordinator`, accepting `node`.
    pub listen: ListenConfig,
    /// Take a checkpoint this often, at least [`MIN_INTERVAL`](crate::runtime::MIN_INTERVAL);
    /// `None`: only on [`Service::trigger`].
    pub interval: Option<Duration>,
    /// Abort an attempt not decided after this long. Default 10 s.
    pub timeout: Duration,
    /// Least time between two attempts. Default 0.
    pub min_pause: Duration,
    /// Consecutive failed attempts tolerated before the cohort is reported unhealthy. Default 0.
    pub tolerable_failures: u32,
    /// How often a failed object (a handler that returned an error or panicked) restarts the
    /// cohort from its line before the cohort halts. Default [`RestartPolicy::default`].
    pub restart: RestartPolicy,
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
    /// Wall clock for manifest timestamps (Unix ms) and randomness (session ids).
    pub clock: Clock,
    /// Fail points the service's core hits (the same as the in-process runtime's); a crash
    /// stops the service as a killed process would.
    pub fail_points: FailPoints,
    /// Answers CLI connections (wire role `cli`) on the node port; without one they are told
    /// that this coordinator takes no control requests.
    pub control: Option<super::control::ControlHandler>,
    /// Where the service records what it does (checkpoint duration, size and pause, counts,
    /// recoveries), for a Prometheus endpoint.
    pub metrics: Option<ServiceMetrics>,
    /// The network the node port listens on: TCP ([`TcpConnector`]) unless a simulation
    /// supplies its own.
    pub network: Arc<dyn Network>,
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
            tolerable_failures: 0,
            restart: RestartPolicy::default(),
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_secs(2),
            holder: format!("cohort-service-{}", std::process::id()),
            lead_at_start: true,
            metadata: None,
            clock: Clock::system(),
            fail_points: FailPoints::default(),
            control: None,
            metrics: None,
            network: Arc::new(TcpConnector),
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
    /// The cohort led is healthy: no more attempts failed in a row than
    /// [`ServiceConfig::tolerable_failures`]. False while not leading.
    pub healthy: bool,
    /// Attempts of the cohort led that failed in a row.
    pub consecutive_failures: u32,
    /// Nodes, objects, placement.
    pub table: StateTable,
    /// Why the cohort led halted beyond its restart policy, while it is halted for that.
    pub halt: Option<Halt>,
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
        announced: Announced,
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
    Drain {
        node: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Remove {
        object: ObjectId,
        reply: oneshot::Sender<Result<()>>,
    },
    Recover {
        reply: oneshot::Sender<Result<Recovered>>,
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
        if let Some(interval) = config
            .interval
            .filter(|i| *i < crate::runtime::MIN_INTERVAL)
        {
            return Err(Error::invalid_settings(format!(
                "interval is {interval:?}; use at least {:?}, or None to checkpoint only on trigger",
                crate::runtime::MIN_INTERVAL
            )));
        }
        let mut listen = config.listen.clone();
        listen.role = Role::Coordinator;
        let listener = listen.bind_on(config.network.as_ref()).await?;
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
            move |conn: Connection<NodeFrame, CoordinatorFrame, BoxStream>, stop| {
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
            core: None,
            registry: BTreeMap::new(),
            leader_hint: None,
            stats: Stats::default(),
            status: status_tx,
        };
        if server.config.lead_at_start {
            // No leadership driver: claim an epoch and fence, as the driver would.
            let now = server.config.clock.wall_ms();
            let epoch = server
                .store
                .claim_epoch(&server.config.holder, now)
                .await?
                .epoch;
            let fence = match server
                .store
                .fence(&FenceRequest::new(epoch, now, FenceLine::Newest))
                .await?
            {
                Fence::Written(fence) => Some(Arc::new(fence)),
                Fence::NoLine | Fence::LineMoved { .. } => None,
            };
            if server.lead(epoch, fence).await.is_err() {
                return Err(Error::COHORT_STOPPED);
            }
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

    /// Drains node `name`: it gets no new objects, and its objects move to the other nodes
    /// that can host their types at the next committed checkpoint (a recovery to that line);
    /// once the state table shows it holding none, it may stop. A node whose objects no other
    /// node can host keeps them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `name` is not a connected node or this service does
    /// not lead; [`Error::Stopped`].
    pub async fn drain(&self, name: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.input
            .send(Input::Drain {
                node: name.to_owned(),
                reply: tx,
            })
            .map_err(|_| Error::COHORT_STOPPED)?;
        rx.await.map_err(|_| Error::COHORT_STOPPED)?
    }

    /// Removes `object` from the cohort at the next committed checkpoint: its node drops it
    /// and the cohort recovers to that line without it (see `Event::Remove` in the engine).
    /// Its state is in no later line; messages still sent to it fail at their sender
    /// ([`Error::UnknownObject`]). Trigger a checkpoint to have it done now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `object` is not a member or this service does not lead;
    /// [`Error::Stopped`].
    pub async fn remove(&self, object: &ObjectId) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.input
            .send(Input::Remove {
                object: object.clone(),
                reply: tx,
            })
            .map_err(|_| Error::COHORT_STOPPED)?;
        rx.await.map_err(|_| Error::COHORT_STOPPED)?
    }

    /// Rolls every node back to the newest committed line now, as a takeover would: every
    /// object restored, the in-transit messages redelivered, a fence written. It also ends a
    /// halt beyond the restart policy (fix the cause first), forgetting the failures counted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when this service does not lead; the recovery's failure
    /// ([`Error::Store`], [`Error::Fenced`]); [`Error::Stopped`].
    pub async fn recover(&self) -> Result<Recovered> {
        let (tx, rx) = oneshot::channel();
        self.input
            .send(Input::Recover { reply: tx })
            .map_err(|_| Error::COHORT_STOPPED)?;
        rx.await.map_err(|_| Error::COHORT_STOPPED)?
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
    mut conn: Connection<NodeFrame, CoordinatorFrame, BoxStream>,
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
        types,
        factories,
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
        announced: Announced {
            objects,
            types,
            factories,
        },
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
    conn.send_within(&reply, timeout).await?;
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
                // Bounded: a node that stopped reading (paused, its window full) must still be
                // declared lost, and this loop is the one that notices.
                Some(frame) => if let Err(e) = conn.send_within(&frame, timeout).await { break Err(e) },
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
            _ = beat.tick() => if let Err(e) = conn.send_within(&CoordinatorFrame::Heartbeat, timeout).await { break Err(e) },
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(%node, "no frame for {timeout:?}; dropping the connection");
                break Ok(());
            }
        }
    };
    let _ = input.send(Input::Disconnected { conn: id, node });
    Ok(result?)
}

/// What a node announced when it registered: the objects it hosts, their types, and the types
/// it can create.
struct Announced {
    objects: Vec<ObjectId>,
    types: BTreeMap<ObjectId, String>,
    factories: Vec<String>,
}

/// The longest peer address a node may register (a host name of 253 bytes and a port fit).
pub const MAX_PEER_ADDR_LEN: usize = 262;

/// One node as the service knows it: its session and connection.
struct NodeConn {
    session: u64,
    conn: Option<(u64, mpsc::UnboundedSender<CoordinatorFrame>)>,
    peer_addr: String,
    /// The last decision sent to it: sent again when it resumes its session, in case the
    /// connection lost it (its objects' `on_committed` must not be missed; a repeat is ignored).
    last_decided: Option<(CheckpointId, Round, bool)>,
    /// The participants whose list this connection last carried in a `Prepare`: while the
    /// engine's are the same, a `Prepare` says so instead of listing them again.
    roster_sent: Option<ByHost>,
}

impl NodeConn {
    fn send(&self, frame: CoordinatorFrame) {
        if let Some((_, tx)) = &self.conn {
            let _ = tx.send(frame);
        }
    }
}

/// What the service counts, across terms.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    committed: u64,
    aborted: u64,
    recoveries: u64,
}

/// The remote transport: nodes, reached by frames on their connections.
struct Nodes {
    nodes: BTreeMap<String, NodeConn>,
    metadata: Option<MetadataHook>,
    metrics: Option<ServiceMetrics>,
    stats: Stats,
    /// Bytes the nodes wrote for the attempt in flight (states and in-transit messages).
    attempt_bytes: u64,
    /// The longest pause of each node's objects in the attempt in flight (a node may vote in
    /// several frames: the objects it counted in without waking them, then the others).
    attempt_pauses: BTreeMap<String, Duration>,
    attempt_started: Option<tokio::time::Instant>,
    /// A recovery that started and that the metrics' history has not recorded yet.
    recovery_unrecorded: Option<(u64, RecoveryCause)>,
    /// The store fenced a commit or a fence: this service is deposed.
    fenced: bool,
    /// The engine's placement version last pushed to the nodes.
    placement_pushed: u64,
    /// Objects application code asked to create (`NodeFrame::Create`) → the node that asked.
    create_requests: BTreeMap<ObjectId, String>,
    /// Why the engine refused the last removal it was asked for.
    removal_refused: Option<String>,
    /// Callers of [`Service::recover`] waiting for their recovery.
    recover_replies: BTreeMap<RecoverId, oneshot::Sender<Result<Recovered>>>,
    next_recover: u64,
}

impl Nodes {
    fn get(&self, host: &HostId) -> Option<&NodeConn> {
        self.nodes.get(host.as_str())
    }

    /// Nodes, objects and placement, as recorded in every manifest: the nodes the engine knows
    /// (a dead node leaves the table), and where each member lives.
    fn table(&self, engine: &Engine<Local>) -> StateTable {
        let nodes = engine
            .hosts()
            .map(|(host, up)| {
                let peer_addr = self
                    .get(host)
                    .map(|n| n.peer_addr.clone())
                    .unwrap_or_default();
                (
                    host.as_str().to_owned(),
                    NodeEntry {
                        peer_addr,
                        live: up == Liveness::Up,
                        draining: engine.draining(host),
                    },
                )
            })
            .collect();
        let placement = engine
            .placement()
            .iter()
            .map(|(o, h)| (o.clone(), h.as_str().to_owned()))
            .collect();
        StateTable { nodes, placement }
    }

    fn answer_create(&mut self, object: &ObjectId, result: std::result::Result<String, String>) {
        if let Some(asker) = self.create_requests.remove(object)
            && let Some(n) = self.nodes.get(&asker)
        {
            n.send(CoordinatorFrame::Created {
                object: object.clone(),
                result,
            });
        }
    }

    fn push_placement(&self, engine: &Engine<Local>) {
        let table = self.table(engine);
        let nodes: BTreeMap<String, String> = self
            .nodes
            .iter()
            .map(|(n, c)| (n.clone(), c.peer_addr.clone()))
            .collect();
        for n in self.nodes.values() {
            n.send(CoordinatorFrame::Placement {
                objects: table.placement.clone(),
                nodes: nodes.clone(),
            });
        }
    }
}

impl Transport for Nodes {
    async fn prepare(
        &mut self,
        id: CheckpointId,
        round: Round,
        token: &str,
        hosts: &ByHost,
    ) -> Vec<Event<Local>> {
        self.attempt_started = Some(tokio::time::Instant::now());
        self.attempt_bytes = 0;
        self.attempt_pauses.clear();
        let mut events = Vec::new();
        for (host, objects) in hosts.iter() {
            let node = self.nodes.get_mut(host.as_str());
            match node.filter(|n| n.conn.is_some()) {
                Some(n) => {
                    let unchanged = (n.roster_sent.as_ref()).is_some_and(|h| Arc::ptr_eq(h, hosts));
                    n.roster_sent = Some(Arc::clone(hosts));
                    n.send(CoordinatorFrame::Prepare {
                        id,
                        round,
                        token: token.to_owned(),
                        objects: (!unchanged).then(|| objects.clone()),
                    });
                }
                None => {
                    if let Some(object) = objects.first() {
                        events.push(Event::Vote {
                            round,
                            object: object.clone(),
                            vote: Vote::No {
                                reason: format!("its node {host} is not connected"),
                            },
                        });
                    }
                }
            }
        }
        events
    }

    async fn seal(&mut self, round: Round, hosts: &[HostId]) -> Vec<Event<Local>> {
        let mut events = Vec::new();
        for host in hosts {
            match self.get(host).filter(|n| n.conn.is_some()) {
                Some(n) => n.send(CoordinatorFrame::Seal { round }),
                // The seal would reach nobody and nothing would end the wait.
                None => events.push(Event::Sealed {
                    round,
                    host: host.clone(),
                    result: Err(format!(
                        "node {host} was lost before sealing its channel state"
                    )),
                }),
            }
        }
        events
    }

    fn decided(&mut self, id: CheckpointId, round: Round, decision: &Decision, hosts: &[HostId]) {
        let committed = *decision == Decision::Committed;
        let took = self.attempt_started.map(|t| t.elapsed());
        let (bytes, pauses) = (self.attempt_bytes, &self.attempt_pauses);
        match decision {
            Decision::Aborted(reason) => {
                self.stats.aborted += 1;
                if let Some(m) = &self.metrics {
                    // Aborted before the commit point, or the commit point failed.
                    if reason.is_commit_failure() {
                        m.record_failed(id, reason, took, bytes, pauses);
                    } else {
                        m.record_aborted(id, reason, took, bytes, pauses);
                    }
                }
            }
            Decision::Committed => {
                self.stats.committed += 1;
                tracing::info!(checkpoint = %id, %round, "checkpoint committed");
                if let Some(m) = &self.metrics {
                    m.record_committed(id, took, Some(bytes), pauses);
                }
            }
        }
        for host in hosts {
            if let Some(n) = self.nodes.get_mut(host.as_str()) {
                n.last_decided = Some((id, round, committed));
                n.send(CoordinatorFrame::Decided {
                    id,
                    round,
                    committed,
                });
            }
        }
    }

    async fn restore(&mut self, order: RestoreOrder<'_>) -> Vec<Event<Local>> {
        // The history records a recovery once its line is known: at its first restore.
        if let Some((recovery, cause)) = self.recovery_unrecorded.take() {
            if recovery == order.recovery {
                if let Some(m) = &self.metrics {
                    let restoring: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|(_, n)| n.conn.is_some())
                        .map(|(name, _)| name.clone())
                        .collect();
                    m.record_recovery(&cause, order.line_id, restoring);
                }
            } else {
                self.recovery_unrecorded = Some((recovery, cause));
            }
        }
        match self.get(order.host).filter(|n| n.conn.is_some()) {
            Some(n) => {
                n.send(CoordinatorFrame::Restore {
                    recovery: order.recovery,
                    line: order.line_id,
                    colour: order.colour,
                    incarnation: order.incarnation,
                    create: order.create.to_vec(),
                });
                Vec::new()
            }
            // Lost meanwhile: the engine hears of it, and restores it when it resumes.
            None => Vec::new(),
        }
    }

    fn create(&mut self, host: &HostId, object: &ObjectId, type_name: &str) {
        if let Some(n) = self.get(host) {
            n.send(CoordinatorFrame::Create {
                object: object.clone(),
                type_name: type_name.to_owned(),
            });
        }
        // The asker hears once the node announces it created the object (`Spawned`): a
        // message it sent earlier could reach the node before the object exists there.
    }

    fn create_refused(&mut self, object: &ObjectId, reason: &str) {
        self.answer_create(object, Err(reason.to_owned()));
    }

    fn remove_refused(&mut self, _object: &ObjectId, reason: &str) {
        self.removal_refused = Some(reason.to_owned());
    }

    fn disown(&mut self, host: &HostId, objects: &[ObjectId]) {
        if let Some(n) = self.get(host) {
            n.send(CoordinatorFrame::Disown {
                objects: objects.to_vec(),
            });
        }
    }

    fn release(&mut self, hosts: &[HostId], incarnation: u64, line: Option<CheckpointId>) {
        for host in hosts {
            if let Some(n) = self.get(host) {
                n.send(CoordinatorFrame::Release { incarnation, line });
            }
        }
    }

    fn recovering(&mut self, recovery: u64, cause: &RecoveryCause) {
        self.stats.recoveries += 1;
        self.recovery_unrecorded = Some((recovery, cause.clone()));
    }

    fn recovered(
        &mut self,
        requests: Vec<RecoverId>,
        result: std::result::Result<Recovered, RecoveryFailure>,
        error: Option<Error>,
    ) {
        let mut error = error;
        for request in requests {
            if let Some(reply) = self.recover_replies.remove(&request) {
                let epoch = result.as_ref().map_or(0, |r| r.epoch);
                let _ = reply.send(match &result {
                    Ok(r) => Ok(r.clone()),
                    Err(failure) => Err(error
                        .take()
                        .unwrap_or_else(|| recovery_error(failure, epoch))),
                });
            }
        }
        // A recovery that restored no node (every node was away) is recorded at its end.
        if let Some((_, cause)) = self.recovery_unrecorded.take()
            && let Some(m) = &self.metrics
        {
            let line = result.as_ref().ok().and_then(|r| r.line);
            m.record_recovery(&cause, line, Vec::<String>::new());
        }
    }

    fn health(&mut self, _health: &Health) {}

    fn halted(&mut self, halt: &Halt) {
        if let Some(m) = &self.metrics {
            m.record_halt(halt);
        }
    }

    fn deposed(&mut self, _reason: &str) {
        self.fenced = true;
    }

    fn committed(&mut self, _manifest: &Manifest, stats: CommitStats) {
        tracing::debug!(took = ?stats.duration, create = ?stats.create, "manifest created");
    }

    fn metadata(&self, engine: &Engine<Local>) -> BTreeMap<String, Vec<u8>> {
        let table = self.table(engine);
        let mut metadata = BTreeMap::new();
        match table.encode() {
            Ok(bytes) => {
                metadata.insert(STATE_TABLE_KEY.to_owned(), bytes);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the state table"),
        }
        if let Some(hook) = &self.metadata {
            metadata.extend(hook(&table));
        }
        metadata
    }

    fn line_hosts(&self, line: &Manifest) -> BTreeMap<ObjectId, Option<HostId>> {
        line_hosts(line)
    }
}

/// Where each object of `line` lived, from its state table.
fn line_hosts(line: &Manifest) -> BTreeMap<ObjectId, Option<HostId>> {
    let table = line
        .metadata
        .get(STATE_TABLE_KEY)
        .and_then(|b| match StateTable::decode(b) {
            Ok(table) => Some(table),
            Err(e) => {
                tracing::warn!(line = %line.id, error = %e, "the line's state table does not decode");
                None
            }
        })
        .unwrap_or_default();
    line.objects
        .keys()
        .map(|o| {
            let host = table
                .placement
                .get(o)
                .filter(|n| !n.is_empty())
                .map(HostId::new);
            (o.clone(), host)
        })
        .collect()
}

struct Server {
    store: CheckpointStore,
    config: ServiceConfig,
    /// Leading: the core and its nodes.
    core: Option<Core<Nodes>>,
    /// Sessions of nodes while not leading are not kept: they register again with the leader.
    registry: BTreeMap<String, ()>,
    leader_hint: Option<String>,
    /// What earlier terms counted.
    stats: Stats,
    status: watch::Sender<ServiceStatus>,
}

impl Server {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>, shutdown: CancellationToken) {
        loop {
            self.publish();
            let deadline = self.core.as_ref().and_then(Core::next_deadline);
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                input = rx.recv() => match input {
                    Some(input) => Some(input),
                    None => return,
                },
                () = sleep_until(deadline) => None,
            };
            let step = match input {
                None => self.feed(Event::Tick).await,
                Some(input) => self.on_input(input).await,
            };
            if let Some(core) = self.core.as_mut()
                && core.transport.placement_pushed != core.engine.placement_version()
            {
                // The engine moved objects (a dead node's, to the survivors): every node
                // learns where they live before it is released.
                core.transport.placement_pushed = core.engine.placement_version();
                core.transport.push_placement(&core.engine);
            }
            if let Err(Crash(point)) = step {
                // As a killed process: nothing after the fail point runs.
                tracing::error!(fail_point = %point, "the coordinator service crashed at a fail point");
                shutdown.cancel();
                return;
            }
        }
    }

    async fn feed(&mut self, event: Event<Local>) -> std::result::Result<(), Crash> {
        match self.core.as_mut() {
            Some(core) => core.feed(event).await,
            None => Ok(()),
        }
    }

    fn stats(&self) -> Stats {
        let mut stats = self.stats;
        if let Some(core) = &self.core {
            let term = core.transport.stats;
            stats.committed += term.committed;
            stats.aborted += term.aborted;
            stats.recoveries += term.recoveries;
        }
        stats
    }

    fn publish(&self) {
        let stats = self.stats();
        let status = match &self.core {
            Some(core) => ServiceStatus {
                epoch: Some(core.engine.epoch()),
                fenced: core.transport.fenced,
                last_committed: core.engine.last_committed(),
                in_flight: core.engine.in_flight(),
                committed: stats.committed,
                aborted: stats.aborted,
                recoveries: stats.recoveries,
                healthy: core.engine.health().healthy && core.engine.halt().is_none(),
                consecutive_failures: core.engine.health().consecutive_failures,
                table: core.transport.table(&core.engine),
                halt: core.engine.halt().cloned(),
            },
            None => ServiceStatus {
                committed: stats.committed,
                aborted: stats.aborted,
                recoveries: stats.recoveries,
                ..ServiceStatus::default()
            },
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// Starts leading under `epoch` from `fence`, the manifest the leadership wrote on taking
    /// the epoch (`None`: the store held no line): its objects are expected on the nodes its
    /// state table names, and every node rolls back to it before any runs again.
    async fn lead(
        &mut self,
        epoch: u64,
        fence: Option<Arc<Manifest>>,
    ) -> std::result::Result<Result<()>, Crash> {
        self.stop_leading(None);
        let last = match self.store.committed_ids().await {
            Ok(ids) => ids.last().copied().unwrap_or(CheckpointId::ZERO),
            Err(e) => return Ok(Err(e.into())),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            interval_ms: self.config.interval.map(ms),
            timeout_ms: ms(self.config.timeout),
            min_pause_ms: ms(self.config.min_pause),
            tolerable_failures: self.config.tolerable_failures,
            host_timeout_ms: ms(self.config.heartbeat_timeout),
            hosting: Hosting::Hosted,
            restart: self.config.restart,
            ..Config::default()
        };
        let origin = tokio::time::Instant::now();
        let engine = Engine::new(
            config,
            Start {
                now_ms: 0,
                epoch,
                last_committed: last,
                // Colours and incarnations of an earlier leader's rounds stay below this
                // leader's.
                round_floor: Round(epoch << 32),
                incarnation_floor: epoch << 32,
                ready_hosts: Vec::new(),
            },
        );
        let nodes = Nodes {
            nodes: BTreeMap::new(),
            metadata: self.config.metadata.clone(),
            metrics: self.config.metrics.clone(),
            stats: Stats::default(),
            attempt_bytes: 0,
            attempt_pauses: BTreeMap::new(),
            attempt_started: None,
            recovery_unrecorded: None,
            fenced: false,
            placement_pushed: 0,
            removal_refused: None,
            recover_replies: BTreeMap::new(),
            next_recover: 0,
            create_requests: BTreeMap::new(),
        };
        let mut core = Core::new(
            engine,
            nodes,
            self.store.clone(),
            self.config.clock.clone(),
            self.config.fail_points.clone(),
            origin,
        );
        let line = fence.as_ref().map(|f| line_info(f, line_hosts(f)));
        core.set_last_manifest(fence);
        tracing::info!(epoch, newest = %last, expected = line.as_ref().map_or(0, |l| l.objects.len()), "leading");
        self.core = Some(core);
        self.feed(Event::TakeOver { line }).await?;
        Ok(Ok(()))
    }

    /// Stops leading: the core is dropped (it writes nothing more), nodes are sent to `leader`.
    fn stop_leading(&mut self, leader: Option<String>) {
        let Some(mut core) = self.core.take() else {
            return;
        };
        let term = core.transport.stats;
        self.stats.committed += term.committed;
        self.stats.aborted += term.aborted;
        self.stats.recoveries += term.recoveries;
        core.fail_triggers(|| Error::COHORT_STOPPED);
        for n in core.transport.nodes.values() {
            n.send(CoordinatorFrame::NotLeader {
                leader: leader.clone(),
            });
        }
    }

    async fn on_input(&mut self, input: Input) -> std::result::Result<(), Crash> {
        match input {
            Input::Connected {
                node,
                session,
                peer_addr,
                announced,
                conn,
                tx,
                reply,
            } => {
                self.register(node, session, peer_addr, announced, conn, tx, reply)
                    .await
            }
            Input::Frame { conn, node, frame } => {
                let current = self.core.as_ref().is_some_and(|c| {
                    c.transport
                        .nodes
                        .get(&node)
                        .is_some_and(|n| n.conn.as_ref().is_some_and(|(c, _)| *c == conn))
                });
                if current {
                    self.on_frame(node, frame).await?;
                }
                Ok(())
            }
            Input::Disconnected { conn, node } => {
                let Some(core) = self.core.as_mut() else {
                    return Ok(());
                };
                let Some(n) = core.transport.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if n.conn.as_ref().is_none_or(|(c, _)| *c != conn) {
                    return Ok(());
                }
                n.conn = None;
                tracing::warn!(%node, "lost a node's connection");
                self.feed(Event::HostLost {
                    host: HostId::new(&node),
                })
                .await
            }
            Input::Trigger(reply) => match self.core.as_mut() {
                Some(core) => core.trigger(reply).await,
                None => {
                    let _ = reply.send(Err(Error::invalid_settings(
                        "this coordinator does not lead; ask the leader",
                    )));
                    Ok(())
                }
            },
            Input::Drain { node, reply } => {
                let Some(core) = self.core.as_mut() else {
                    let _ = reply.send(Err(Error::invalid_settings(
                        "this coordinator does not lead; ask the leader",
                    )));
                    return Ok(());
                };
                let host = HostId::new(&node);
                core.feed(Event::Drain { host: host.clone() }).await?;
                let draining = self
                    .core
                    .as_ref()
                    .is_some_and(|core| core.engine.draining(&host));
                let _ = reply.send(if draining {
                    tracing::info!(%node, "draining a node: its objects move at the next checkpoint");
                    Ok(())
                } else {
                    Err(Error::invalid_settings(format!(
                        "{node} is not a connected node; `cohort status` lists them"
                    )))
                });
                Ok(())
            }
            Input::Recover { reply } => {
                let Some(core) = self.core.as_mut() else {
                    let _ = reply.send(Err(Error::invalid_settings(
                        "this coordinator does not lead; ask the leader",
                    )));
                    return Ok(());
                };
                core.transport.next_recover += 1;
                let request = RecoverId(core.transport.next_recover);
                core.transport.recover_replies.insert(request, reply);
                tracing::warn!("recovering the cohort on request");
                core.feed(Event::Recover { request }).await
            }
            Input::Remove { object, reply } => {
                let Some(core) = self.core.as_mut() else {
                    let _ = reply.send(Err(Error::invalid_settings(
                        "this coordinator does not lead; ask the leader",
                    )));
                    return Ok(());
                };
                core.transport.removal_refused = None;
                core.feed(Event::Remove {
                    object: object.clone(),
                })
                .await?;
                let Some(core) = self.core.as_mut() else {
                    return Ok(());
                };
                let _ = reply.send(match core.transport.removal_refused.take() {
                    None => {
                        tracing::info!(%object, "removing an object at the next checkpoint");
                        Ok(())
                    }
                    Some(reason) => Err(Error::invalid_settings(reason)),
                });
                Ok(())
            }
            Input::Lead {
                epoch,
                fence,
                reply,
            } => {
                let result = self.lead(epoch, fence).await?;
                let _ = reply.send(result);
                Ok(())
            }
            Input::Follow { leader } => {
                self.stop_leading(leader.clone());
                self.leader_hint = leader;
                Ok(())
            }
            Input::Cut { node } => {
                let Some(core) = self.core.as_mut() else {
                    return Ok(());
                };
                if let Some(n) = core.transport.nodes.get_mut(&node)
                    && n.conn.take().is_some()
                {
                    tracing::warn!(%node, "connection cut on request");
                    return self
                        .feed(Event::HostLost {
                            host: HostId::new(&node),
                        })
                        .await;
                }
                Ok(())
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of one registration, named at the one call site"
    )]
    async fn register(
        &mut self,
        node: String,
        session: Option<u64>,
        peer_addr: String,
        announced: Announced,
        conn: u64,
        tx: mpsc::UnboundedSender<CoordinatorFrame>,
        reply: oneshot::Sender<CoordinatorFrame>,
    ) -> std::result::Result<(), Crash> {
        let _ = &self.registry;
        let Some(core) = self.core.as_mut() else {
            let _ = reply.send(CoordinatorFrame::NotLeader {
                leader: self.leader_hint.clone(),
            });
            return Ok(());
        };
        let host = HostId::new(&node);
        // Recorded in every manifest's state table: a peer address is a socket address.
        if peer_addr.len() > MAX_PEER_ADDR_LEN {
            let _ = reply.send(CoordinatorFrame::Refused {
                reason: format!(
                    "the peer address is {} bytes long; give a host:port of at most {MAX_PEER_ADDR_LEN} bytes",
                    peer_addr.len()
                ),
            });
            return Ok(());
        }
        // A dead node's session is over: it comes back with a new one.
        let known = core
            .engine
            .hosts()
            .any(|(h, l)| *h == host && l != Liveness::Down);
        let resumed = known
            && session.is_some()
            && core.transport.nodes.get(&node).map(|n| n.session) == session;
        let session = match core.transport.nodes.get(&node) {
            Some(n) if resumed => n.session,
            // Unguessable: a session id is what a node resumes with.
            _ => self.config.clock.random_u64(),
        };
        let last_decided = core
            .transport
            .nodes
            .get(&node)
            .filter(|_| resumed)
            .and_then(|n| n.last_decided);
        core.transport.nodes.insert(
            node.clone(),
            NodeConn {
                session,
                conn: Some((conn, tx)),
                peer_addr,
                last_decided,
                roster_sent: None,
            },
        );
        let heartbeat_ms =
            u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        let timeout_ms =
            u64::try_from(self.config.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        // The reply goes out before anything queued for the connection.
        let _ = reply.send(CoordinatorFrame::Welcome {
            session,
            resumed,
            heartbeat_ms,
            timeout_ms,
        });
        if let Some((id, round, committed)) = last_decided
            && let Some(n) = core.transport.nodes.get(&node)
        {
            n.send(CoordinatorFrame::Decided {
                id,
                round,
                committed,
            });
        }
        tracing::info!(%node, session, resumed, objects = announced.objects.len(), "node registered");
        let Announced {
            objects,
            types,
            factories,
        } = announced;
        // One event: the restore the engine orders knows what this node lacks. An object
        // announced here that lives on another live node now is disowned by the engine: the
        // node drops it (see Event::Join).
        let events = vec![Event::Register(Registration {
            host,
            resumed,
            types: factories.into_iter().collect(),
            objects,
            object_types: types,
        })];
        core.feed_all(events).await?;
        core.transport.push_placement(&core.engine);
        Ok(())
    }

    async fn on_frame(&mut self, node: String, frame: NodeFrame) -> std::result::Result<(), Crash> {
        let Some(core) = self.core.as_mut() else {
            return Ok(());
        };
        let host = HostId::new(&node);
        match frame {
            NodeFrame::Heartbeat | NodeFrame::Register { .. } | NodeFrame::Control(_) => Ok(()),
            NodeFrame::ObjectFailed {
                object,
                incarnation,
                error,
            } => {
                // A node reports its own objects only.
                if core.engine.placement().get(&object) != Some(&host) {
                    return Ok(());
                }
                tracing::error!(%node, %object, %error, "object failed");
                core.feed(Event::ObjectFailed {
                    object,
                    incarnation,
                    error,
                })
                .await
            }
            NodeFrame::Create { object, type_name } => {
                core.transport
                    .create_requests
                    .insert(object.clone(), node.clone());
                core.feed(Event::Create { object, type_name }).await
            }
            NodeFrame::Spawned { objects, types } => {
                let typed = types
                    .into_iter()
                    .map(|(object, type_name)| Event::ObjectType { object, type_name });
                for object in &objects {
                    if core.transport.create_requests.contains_key(object)
                        && core.engine.placement().get(object) == Some(&host)
                    {
                        core.transport.answer_create(object, Ok(node.clone()));
                    }
                }
                let joined = objects.into_iter().map(|object| Event::Join {
                    object,
                    host: host.clone(),
                });
                core.feed_all(typed.chain(joined)).await?;
                core.transport.push_placement(&core.engine);
                Ok(())
            }
            NodeFrame::Clean {
                round,
                objects,
                balance,
            } => {
                // The engine bounds the count by the participants this node holds.
                let objects = usize::try_from(objects).unwrap_or(usize::MAX);
                core.feed(Event::Clean {
                    round,
                    host,
                    objects,
                    balance,
                })
                .await
            }
            NodeFrame::Votes {
                round,
                votes,
                bytes,
                pause_max_us,
            } => {
                if core.engine.in_flight().is_some_and(|(_, r)| r == round) {
                    let t = &mut core.transport;
                    t.attempt_bytes = t.attempt_bytes.saturating_add(bytes);
                    let longest = t.attempt_pauses.entry(node.clone()).or_default();
                    *longest = (*longest).max(Duration::from_micros(pause_max_us));
                }
                let placement = core.engine.placement();
                let events: Vec<Event<Local>> = votes
                    .into_iter()
                    // A node votes for its own objects only.
                    .filter(|(object, _)| placement.get(object) == Some(&host))
                    .map(|(object, vote)| Event::Vote {
                        round,
                        object,
                        vote: match vote {
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
                        },
                    })
                    .collect();
                core.feed_all(events).await
            }
            NodeFrame::ChannelState { round, entries } => {
                if core.engine.in_flight().is_some_and(|(_, r)| r == round) {
                    let bytes = entries
                        .iter()
                        .fold(0u64, |sum, e| sum.saturating_add(e.location.len));
                    let t = &mut core.transport;
                    t.attempt_bytes = t.attempt_bytes.saturating_add(bytes);
                }
                core.feed(Event::ChannelState {
                    round,
                    host,
                    records: entries,
                })
                .await
            }
            NodeFrame::Sealed { round, result } => {
                core.feed(Event::Sealed {
                    round,
                    host,
                    result,
                })
                .await
            }
            NodeFrame::Restored {
                recovery,
                incarnation,
                result,
                damaged,
                unavailable,
            } => {
                let result = result.map_err(|reason| {
                    tracing::error!(%node, error = %reason, damaged, unavailable, "node failed to restore");
                    if damaged {
                        RestoreFailure::Damaged { reason }
                    } else if unavailable {
                        RestoreFailure::Unavailable { reason }
                    } else {
                        RestoreFailure::Refused { reason }
                    }
                });
                core.feed(Event::Restored {
                    recovery,
                    incarnation,
                    host,
                    result,
                })
                .await
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
