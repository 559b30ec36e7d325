//! Nodes: participant processes that host objects for a coordinator [`Service`](crate::service::Service).
//!
//! A [`Node`] spawns objects with the same [`Actor`] API as [`Cohort`](crate::Cohort), connects
//! to the coordinator (trying each address it was given, following a "not leader" answer to
//! the leader, reconnecting with backoff), registers its objects, answers prepare, commit and
//! abort, writes its objects' states to the store itself (writer token = node name: the
//! coordinator only sees entry metadata), and restores them on recovery orders.
//!
//! Objects on different nodes talk node to node over TCP (wire role `peer`): each message
//! carries its sender's colour and sequence number, and the receiving node applies the same
//! cut rules ([`CutState`](crate::engine::CutState)) as the in-process runtime. Addresses
//! resolve through the placement table the coordinator pushes. A message to an object whose
//! node is unreachable waits in the sender node's queue and is re-sent until acknowledged; the
//! receiver drops duplicates by (sender, receiver, sequence number) and drops messages of an
//! incarnation older than its own (sent before a recovery, so part of the discarded future).
//!
//! ```no_run
//! # async fn demo() -> cohort_coordinator::Result<()> {
//! use cohort_checkpoint::CheckpointStore;
//! use cohort_coordinator::node::Node;
//!
//! let store = CheckpointStore::open("./cohort-data", Default::default()).await?;
//! let node = Node::builder(store)
//!     .name("node-1")
//!     .coordinators(vec!["127.0.0.1:7411".into()])
//!     .build()
//!     .await?;
//! // node.spawn(id, object)? for every object it hosts; they run once the coordinator
//! // released them (after restoring them from the recovery line, if they are in it).
//! # Ok(()) }
//! ```

mod session;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use cohort_checkpoint::CheckpointStore;
use cohort_object_api::{CheckpointId, ObjectId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::{RestoreFailure, Round};
use crate::error::{Error, Result};
use crate::messaging::{
    Actor, Address, Directory, Envelope, Location, RemoteEnvelope, Route, address_at,
};
use crate::participant::{lock, mailbox, read, write};
use crate::service::protocol::{NodeFrame, PeerFrame};
use cohort_wire::{
    BoxStream, ConnectConfig, ListenConfig, Network, Role, Secret, TcpConnector, TlsConfig,
};

use crate::participant::object::{Control, ObjectTask};
use crate::participant::restore::{self, AppliedLine, HeldObjects, LineStates};
use crate::participant::writer::{WriterMsg, Written};
use crate::participant::{ActiveRound, Host, VoteSink};
use crate::service::protocol::WireVote;

/// Node settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeSettings {
    /// Send a heartbeat this often. Default 200 ms (the coordinator's Welcome overrides it).
    pub heartbeat_interval: Duration,
    /// Reconnect after this long without a frame from the coordinator. Default 2 s.
    pub heartbeat_timeout: Duration,
    /// First reconnection delay, doubled up to [`max_backoff`](Self::max_backoff).
    pub min_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    store: CheckpointStore,
    name: String,
    coordinators: Vec<String>,
    listen: SocketAddr,
    advertise: Option<String>,
    token: Option<Secret>,
    tls: Option<TlsConfig>,
    settings: NodeSettings,
    network: Arc<dyn Network>,
    factories: BTreeMap<String, Factory>,
}

/// Where a node stands with its coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeStatus {
    /// Not registered (yet, or again after losing the coordinator).
    Connecting,
    /// Registered; objects run once released.
    Registered {
        /// The coordinator's address.
        coordinator: String,
        /// The session id.
        session: u64,
        /// Sessions this node started (a resumed one does not count).
        sessions: u64,
        /// Restores this node completed (each recovery it took part in, and its restore on
        /// joining after a recovery).
        recoveries: u64,
    },
    /// The coordinator refused the registration; the node stopped.
    Refused(String),
}

/// A participant process's handle: hosts objects for a coordinator service. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    shared: Arc<NodeShared>,
}

pub(crate) struct NodeSlot {
    /// The object's cell: its queues, and whether the node may count it in a round without
    /// waking it.
    cell: mailbox::Handle,
    /// Decodes a peer frame's payload and queues it in the mailbox.
    deliver: Box<dyn Fn(PeerFrame) -> std::result::Result<(), String> + Send + Sync>,
    /// The incarnation of the last restore that ordered this object (0: none yet).
    restored_in: Arc<AtomicU64>,
    /// Spawned after the node's last restore looked at its objects, and not yet restored from
    /// that line: it votes no rather than be captured in its initial state.
    awaiting_restore: Arc<AtomicBool>,
    /// The object's `Checkpointable::type_name`.
    type_name: &'static str,
}

/// Creates an object of one type under an id, on a node, from a factory
/// ([`NodeBuilder::host_type`]).
/// `announce`: tell the coordinator once created (`Spawned`).
type Factory = Arc<dyn Fn(&Arc<NodeShared>, ObjectId, bool) -> Result<()> + Send + Sync>;

/// A restore order from the coordinator.
pub(crate) struct RecoveryOrder {
    /// Part of a cohort recovery (messages after the line are discarded), not a joining
    /// node's restore.
    pub(crate) cohort_recovery: bool,
    pub(crate) line: Option<CheckpointId>,
    pub(crate) colour: Round,
    pub(crate) incarnation: u64,
    /// Objects to create from the factories first, with their type names.
    pub(crate) create: Vec<(ObjectId, String)>,
}

#[derive(Default)]
struct Placement {
    objects: BTreeMap<ObjectId, String>,
    nodes: BTreeMap<String, String>,
}

/// The state every task of a node shares.
pub(crate) struct NodeShared {
    /// Itself, for the links its handlers' addresses open.
    me: Weak<NodeShared>,
    name: String,
    store: CheckpointStore,
    peer_addr: String,
    token: Option<Secret>,
    tls: Option<TlsConfig>,
    settings: NodeSettings,
    network: Arc<dyn Network>,
    /// Type name → factory: the types the coordinator may place on this node.
    factories: BTreeMap<String, Factory>,
    objects: RwLock<BTreeMap<ObjectId, NodeSlot>>,
    /// Callers of [`Node::create`] waiting for the coordinator's answer.
    create_waiters:
        Mutex<HashMap<ObjectId, tokio::sync::oneshot::Sender<std::result::Result<(), String>>>>,
    /// Disowned objects whose tasks have not acknowledged their stop yet.
    stopping: Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
    active: Mutex<Option<ActiveRound>>,
    /// Objects start held: the coordinator releases them (after restoring them if needed).
    held: AtomicBool,
    /// The newest round started, the colour of objects spawned now. Raised only under
    /// [`early`](Self::early)'s lock, so that no frame is parked after its round started.
    colour_floor: AtomicU64,
    /// Frames from other nodes coloured with a round this node has not started yet: a sender
    /// captured for it before this node got the `Prepare`. Delivered now, the receiver would
    /// handle a message sent after the sender's cut without capturing first (an orphan), so
    /// they wait until the round starts here (or a newer one, or a recovery).
    /// Also every frame while a restore runs: one of the new incarnation would otherwise land
    /// in a mailbox the restore then discards.
    early: Mutex<Vec<PeerFrame>>,
    /// A restore is running: frames are parked (set and cleared under `early`'s lock).
    restoring: AtomicBool,
    /// Serialises restores and holds the last one that succeeded: a `Restore` sent again after
    /// a reconnection is answered without restoring twice (a second restore would drop what
    /// the first let into the mailboxes), and an object spawned after it is restored from its
    /// line on its own.
    restored: tokio::sync::Mutex<Restored>,
    /// The last line the objects were committed or restored to: a restore to it keeps the
    /// states that did not change since.
    applied: AppliedLine,
    /// Which objects are clean, for prepares that skip them.
    tally: crate::participant::Tally,
    incarnation: AtomicU64,
    /// Restores completed, for [`NodeStatus::Registered`].
    restores: AtomicU64,
    placement: RwLock<Placement>,
    links: Mutex<HashMap<String, mpsc::UnboundedSender<PeerFrame>>>,
    /// The sender's incarnation and highest sequence number delivered per (sender,
    /// receiver): duplicates of a re-send after a reconnection are dropped. A newer
    /// incarnation starts afresh (a recovery restores the senders' counters, so sequence
    /// numbers go back).
    delivered: Mutex<HashMap<(ObjectId, ObjectId), (u64, u64)>>,
    to_coordinator: mpsc::UnboundedSender<NodeFrame>,
    status: watch::Sender<NodeStatus>,
    shutdown: CancellationToken,
    /// Pause times of this node's objects (prepare and capture), for [`Node::metrics`].
    pub(crate) metrics: crate::Metrics,
    /// The runtime the node was started on, which its objects' tasks run on.
    runtime: tokio::runtime::Handle,
}

impl Host for NodeShared {
    fn active(&self) -> Option<ActiveRound> {
        lock(&self.active).clone()
    }

    fn metrics(&self) -> &crate::Metrics {
        &self.metrics
    }

    fn tally(&self) -> &crate::participant::Tally {
        &self.tally
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn object_failed(&self, object: &ObjectId, error: Option<&str>) {
        // The coordinator decides what follows (restart or halt, by its policy).
        if let Some(error) = error {
            let _ = self.to_coordinator.send(NodeFrame::ObjectFailed {
                object: object.clone(),
                incarnation: self.incarnation.load(Ordering::SeqCst),
                error: error.to_owned(),
            });
        }
    }
}

impl Directory for NodeShared {
    /// A local mailbox, or a link to the node the placement table names.
    fn locate(&self, id: &ObjectId) -> Result<Location> {
        if let Some(slot) = read(&self.objects).get(id) {
            return Ok(Location::Local(slot.cell.reference()));
        }
        if !read(&self.placement).objects.contains_key(id) {
            return Err(Error::UnknownObject(id.clone()));
        }
        let node = self.me.clone();
        Ok(Location::Remote(Arc::new(
            move |envelope: RemoteEnvelope| {
                let node = node.upgrade().ok_or(Error::COHORT_STOPPED)?;
                node.send_remote(PeerFrame {
                    from: envelope.from,
                    to: envelope.to,
                    colour: envelope.colour,
                    seq: envelope.seq,
                    incarnation: node.incarnation.load(Ordering::SeqCst),
                    payload: envelope.payload,
                })
            },
        )))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A node's writer reports to the coordinator in frames.
pub(crate) struct NodeSink(pub(crate) mpsc::UnboundedSender<NodeFrame>);

impl VoteSink for NodeSink {
    fn votes(
        &self,
        round: Round,
        ballots: Vec<(
            ObjectId,
            crate::engine::Ballot<cohort_checkpoint::ObjectEntry>,
        )>,
        written: Written,
    ) {
        let votes = ballots
            .into_iter()
            .map(|(object, b)| {
                let entry = match b.state {
                    crate::engine::VotedState::Written(entry) => Some(entry),
                    crate::engine::VotedState::Unchanged => None,
                };
                let vote = WireVote::Yes {
                    entry,
                    sent: b.sent,
                    received: b.received,
                };
                (object, vote)
            })
            .collect();
        let _ = self.0.send(NodeFrame::Votes {
            round,
            votes,
            bytes: written.bytes,
            pause_max_us: u64::try_from(written.pause_max.as_micros()).unwrap_or(u64::MAX),
        });
    }

    fn refused(&self, round: Round, object: ObjectId, reason: String) {
        let _ = self.0.send(NodeFrame::Votes {
            round,
            votes: vec![(object, WireVote::No { reason })],
            bytes: 0,
            pause_max_us: 0,
        });
    }

    fn in_transit(&self, round: Round, entry: cohort_checkpoint::InTransitEntry) {
        let _ = self.0.send(NodeFrame::ChannelState {
            round,
            entries: vec![entry],
        });
    }
}

impl NodeShared {
    pub(crate) fn writer_for(&self, round: Round) -> Option<mpsc::UnboundedSender<WriterMsg>> {
        lock(&self.active)
            .as_ref()
            .filter(|a| a.round == round)
            .map(|a| a.writer.clone())
    }

    fn send_remote(self: &Arc<Self>, frame: PeerFrame) -> Result<()> {
        let node_name = read(&self.placement)
            .objects
            .get(&frame.to)
            .cloned()
            .ok_or_else(|| Error::UnknownObject(frame.to.clone()))?;
        let mut links = lock(&self.links);
        let link = links.entry(node_name.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(peer_link(Arc::downgrade(self), node_name.clone(), rx));
            tx
        });
        link.send(frame).map_err(|_| Error::COHORT_STOPPED)
    }

    /// A frame from another node: parks it while its colour is a round not started here,
    /// else delivers it.
    fn deliver(&self, frame: PeerFrame) {
        let mut early = lock(&self.early);
        if self.restoring.load(Ordering::SeqCst) || self.must_wait(&frame) {
            early.push(frame);
            return;
        }
        // Under the lock: a frame must not overtake parked frames being flushed.
        self.deliver_now(frame);
        drop(early);
    }

    /// Raises the newest round started to `round` and delivers the parked frames it allows,
    /// in arrival order.
    fn raise_floor(&self, round: Round) {
        self.raise_floor_ending_restore(round, false);
    }

    /// [`raise_floor`](Self::raise_floor), and with `end_restore` first ends the parking of a
    /// restore, under the same lock so that no new frame overtakes the parked ones.
    fn raise_floor_ending_restore(&self, round: Round, end_restore: bool) {
        let mut early = lock(&self.early);
        if end_restore {
            self.restoring.store(false, Ordering::SeqCst);
        }
        if self.restoring.load(Ordering::SeqCst) {
            return; // the restore's end raises it and flushes
        }
        self.colour_floor.fetch_max(round.0, Ordering::SeqCst);
        for frame in std::mem::take(&mut *early) {
            if self.must_wait(&frame) {
                early.push(frame);
            } else {
                self.deliver_now(frame);
            }
        }
    }

    /// A frame waits while its colour is a round not started here, or while it comes from an
    /// incarnation this node has not been restored into: delivered now, it would land in a
    /// state the coming restore discards (its sender, already released, would not re-send).
    fn must_wait(&self, frame: &PeerFrame) -> bool {
        frame.colour.0 > self.colour_floor.load(Ordering::SeqCst)
            || frame.incarnation > self.incarnation.load(Ordering::SeqCst)
    }

    /// Checks a frame's incarnation and sequence, then queues it in its receiver's mailbox.
    fn deliver_now(&self, frame: PeerFrame) {
        if frame.incarnation < self.incarnation.load(Ordering::SeqCst) {
            tracing::trace!(from = %frame.from, to = %frame.to, incarnation = frame.incarnation, seq = frame.seq, "dropped a frame of an older incarnation");
            return; // sent before a recovery: part of the discarded future
        }
        {
            let mut delivered = lock(&self.delivered);
            let last = delivered
                .entry((frame.from.clone(), frame.to.clone()))
                .or_insert((frame.incarnation, 0));
            if frame.incarnation < last.0 || (frame.incarnation == last.0 && frame.seq <= last.1) {
                tracing::trace!(from = %frame.from, to = %frame.to, incarnation = frame.incarnation, seq = frame.seq, "dropped a frame delivered before");
                return; // a re-send of a message already delivered, or an older incarnation's
            }
            *last = (frame.incarnation, frame.seq);
        }
        let objects = read(&self.objects);
        match objects.get(&frame.to) {
            Some(slot) => {
                let (from, to) = (frame.from.clone(), frame.to.clone());
                if let Err(e) = (slot.deliver)(frame) {
                    tracing::error!(%from, %to, error = %e, "dropping a message that does not decode as the receiver's message type");
                }
            }
            None => {
                tracing::warn!(to = %frame.to, "a message for an object this node does not host; dropped")
            }
        }
    }

    async fn hold_all(&self) -> HeldObjects {
        let applied = self.applied.get();
        let acks = HeldObjects::hold(read(&self.objects).iter().map(|(id, s)| (id, &*s.cell)));
        HeldObjects::collect(applied, acks).await
    }

    fn release_all(&self) {
        // `held` first, `awaiting_restore` after; `restore_late` does the opposite, so an
        // object whose late restore ends meanwhile is released by one of the two.
        self.held.store(false, Ordering::SeqCst);
        for slot in read(&self.objects).values() {
            if !slot.awaiting_restore.load(Ordering::SeqCst) {
                let _ = slot.cell.send_control(Control::Release);
            }
        }
    }

    /// Drops `objects` (they live on another node now): they leave the table at once, so they
    /// are never asked to vote again, and each is told to stop. A handler running now may
    /// still send, stamped with this node's incarnation: the next restore waits for these
    /// tasks to end (see [`stopping`](Self::stopping)) before it raises the incarnation, so
    /// nothing they send can pass for a message of the new one.
    fn disown(&self, objects: &[ObjectId]) {
        let mut slots = write(&self.objects);
        self.tally.table_changed();
        let mut stopping = lock(&self.stopping);
        for id in objects {
            if let Some(slot) = slots.remove(id) {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if slot.cell.send_control(Control::Stop(tx)).is_ok() {
                    stopping.push(rx);
                }
            }
        }
    }
}

/// Sends frames to one other node, in order, re-sending those not acknowledged after a
/// reconnection; waits (with backoff) while the node is unreachable or unplaced.
async fn peer_link(
    node: std::sync::Weak<NodeShared>,
    target: String,
    mut rx: mpsc::UnboundedReceiver<PeerFrame>,
) {
    let mut unacked: VecDeque<PeerFrame> = VecDeque::new();
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(shared) = node.upgrade() else { return };
        let shutdown = shared.shutdown.clone();
        let addr = read(&shared.placement).nodes.get(&target).cloned();
        let mut config = ConnectConfig::new(Role::Peer, shared.name.clone());
        config.token = shared.token.clone();
        config.tls = shared.tls.clone();
        config.accept_roles = vec![Role::Peer];
        config.handshake_timeout = shared.settings.heartbeat_timeout;
        let network = Arc::clone(&shared.network);
        // Frames unacknowledged this long mean a dead connection (a peer gone without a reset,
        // a partition): reconnect and send them again, as the coordinator link's heartbeats do.
        let stall = shared.settings.heartbeat_timeout;
        drop(shared);
        let connected = match addr {
            Some(addr) => config
                .connect_via::<u64, PeerFrame>(network.as_ref(), &addr)
                .await
                .ok(),
            None => None,
        };
        let Some(conn) = connected else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(20);
        let (mut recv, mut send) = conn.split();
        let mut sent_on_conn = 0u64;
        let mut failed = false;
        for frame in &unacked {
            if send.send_within(frame, stall).await.is_err() {
                failed = true;
                break;
            }
            sent_on_conn += 1;
        }
        // Acks count frames delivered on this connection.
        let mut acked_on_conn = 0u64;
        let mut ack_due = tokio::time::Instant::now() + stall;
        while !failed {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(ack_due), if !unacked.is_empty() => {
                    tracing::warn!(peer = %target, unacked = unacked.len(), "no acknowledgement from a peer for {stall:?}; reconnecting");
                    failed = true;
                }
                frame = rx.recv() => match frame {
                    None => return,
                    Some(frame) => {
                        let current = node.upgrade().map(|n| n.incarnation.load(Ordering::SeqCst));
                        if current.is_some_and(|c| frame.incarnation < c) {
                            continue;
                        }
                        if unacked.is_empty() {
                            ack_due = tokio::time::Instant::now() + stall;
                        }
                        let result = send.send_within(&frame, stall).await;
                        unacked.push_back(frame);
                        if result.is_err() { failed = true; } else { sent_on_conn += 1; }
                    }
                },
                ack = recv.recv() => match ack {
                    Ok(Some(n)) if n > acked_on_conn && n <= sent_on_conn => {
                        for _ in acked_on_conn..n { unacked.pop_front(); }
                        acked_on_conn = n;
                        ack_due = tokio::time::Instant::now() + stall;
                    }
                    Ok(Some(_)) => {}
                    _ => failed = true,
                },
            }
        }
        // Drop frames a recovery made obsolete before re-sending the rest.
        if let Some(n) = node.upgrade() {
            let current = n.incarnation.load(Ordering::SeqCst);
            unacked.retain(|f| f.incarnation >= current);
        }
    }
}

impl Node {
    /// Starts building a node that writes its objects' states to `store`.
    pub fn builder(store: CheckpointStore) -> NodeBuilder {
        NodeBuilder {
            store,
            name: format!("node-{}", std::process::id()),
            coordinators: vec![format!("127.0.0.1:{}", cohort_wire::DEFAULT_PORT)],
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            token: None,
            tls: None,
            settings: NodeSettings::default(),
            network: Arc::new(TcpConnector),
            factories: BTreeMap::new(),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where other nodes reach this node's objects.
    pub fn peer_addr(&self) -> &str {
        &self.shared.peer_addr
    }

    /// Watches where the node stands with its coordinator.
    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.shared.status.subscribe()
    }

    /// Hosts `object` under `id`. It runs once the coordinator released it, restored from the
    /// recovery line if the line holds `id`.
    pub fn spawn<A: Actor>(&self, id: ObjectId, object: A) -> Result<Address<A::Message>> {
        spawn_object(&self.shared, id, object, true)
    }

    /// Asks the cohort to create object `id` of type `type_name` (a
    /// [`Checkpointable::type_name`](cohort_object_api::Checkpointable::type_name) some node
    /// registered with [`NodeBuilder::host_type`]): the coordinator places it on the live node
    /// of that type holding the fewest objects, which creates it from its factory. Returns its
    /// address once placed; it is addressable by id from every node, wherever it lives (it may
    /// move if its node dies). Waits while the coordinator is unreachable.
    ///
    /// # Errors
    ///
    /// [`Error::CreateRefused`] when the id is taken or no live node hosts the type;
    /// [`Error::Stopped`] when this node stopped.
    pub async fn create<M: Serialize + Send + 'static>(
        &self,
        id: ObjectId,
        type_name: &str,
    ) -> Result<Address<M>> {
        let shared = &self.shared;
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&shared.create_waiters).insert(id.clone(), tx);
        let asked = shared.to_coordinator.send(NodeFrame::Create {
            object: id.clone(),
            type_name: type_name.to_owned(),
        });
        if asked.is_err() {
            lock(&shared.create_waiters).remove(&id);
            return Err(Error::COHORT_STOPPED);
        }
        let answer = tokio::select! {
            answer = rx => answer.map_err(|_| Error::COHORT_STOPPED)?,
            () = shared.shutdown.cancelled() => return Err(Error::COHORT_STOPPED),
        };
        answer.map_err(|reason| Error::CreateRefused {
            object: id.clone(),
            reason,
        })?;
        self.address(&id)
    }

    /// The address of object `id`, on this node or another.
    pub fn address<M: Serialize + Send + 'static>(&self, id: &ObjectId) -> Result<Address<M>> {
        address_at(id, self.shared.locate(id)?)
    }

    /// How long this node's objects were paused by checkpoints (prepare and capture; encoding
    /// and upload happen after they are released): [`Metrics::pauses`](crate::Metrics::pauses).
    pub fn metrics(&self) -> &crate::Metrics {
        &self.shared.metrics
    }

    /// The ids of the objects hosted here, sorted.
    pub fn objects(&self) -> Vec<ObjectId> {
        read(&self.shared.objects).keys().cloned().collect()
    }

    /// Stops the node: closes its connections and stops its objects (their state is lost
    /// unless checkpointed, as in a crash).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        // Closed, not only dropped: see `Shared::stop` in the runtime.
        let objects = std::mem::take(&mut *write(&self.shared.objects));
        self.shared.tally.table_changed();
        for slot in objects.values() {
            slot.cell.close();
        }
    }
}

impl NodeBuilder {
    /// The node's name: 1-48 of `[A-Za-z0-9_-]`, unique in the cohort (it names the node's
    /// segments). Default `node-<pid>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The coordinators to try, in order. A standby answers with the leader's address.
    pub fn coordinators(mut self, addrs: Vec<String>) -> Self {
        self.coordinators = addrs;
        self
    }

    /// Where this node accepts other nodes' messages. Default `127.0.0.1:0` (any free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The address other nodes dial to reach this one (`HOST:PORT`), when it is not the
    /// [`listen`](Self::listen) address: required when listening on a wildcard such as
    /// `0.0.0.0`, and for a node behind a NAT or a proxy. Default: the bound address.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// The shared token (off loopback, this or [`tls`](Self::tls); both the coordinator and
    /// peers must hold it).
    pub fn token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// TLS with the coordinators and the other nodes (mutual: this node's certificate must be
    /// valid for its advertised address, since other nodes dial it).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Lets the coordinator place objects of type `A` on this node: when a node hosting such
    /// objects dies, the coordinator may move some here, and this node creates each with
    /// `factory(id)` and restores it from the recovery line (an object the line does not hold
    /// keeps the state the factory gives it). The type is known by its
    /// [`type_name`](cohort_object_api::Checkpointable::type_name), read from one object the
    /// factory builds here (so a factory should be cheap and free of side effects); objects of
    /// the type that this node [`spawn`](Node::spawn)s are moved the same way.
    ///
    /// A node that registers no type keeps today's behaviour: its objects wait for it (or a
    /// node with the same objects) to come back.
    pub fn host_type<A, F>(mut self, factory: F) -> Self
    where
        A: Actor,
        F: Fn(&ObjectId) -> A + Send + Sync + 'static,
    {
        let probe = ObjectId::new("cohort-type-probe").expect("a valid id");
        let name = factory(&probe).type_name().to_owned();
        let create: Factory = Arc::new(
            move |shared: &Arc<NodeShared>, id: ObjectId, announce: bool| {
                let object = factory(&id);
                spawn_object(shared, id, object, announce).map(|_| ())
            },
        );
        self.factories.insert(name, create);
        self
    }

    /// Heartbeats and reconnection timing.
    pub fn settings(mut self, settings: NodeSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The network to listen on and dial through: TCP ([`TcpConnector`]) unless a simulation
    /// supplies its own.
    pub fn network(mut self, network: Arc<dyn Network>) -> Self {
        self.network = network;
        self
    }

    /// Binds the peer listener and starts connecting to the coordinator. Call inside a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad name, no coordinator, or a bad or missing advertised
    /// address; [`Error::Wire`] ([`Bind`](cohort_wire::Error::Bind)) when the peer port cannot
    /// be bound (or another wire error for bad listen settings).
    pub async fn build(self) -> Result<Node> {
        let valid = !self.name.is_empty()
            && self.name.len() <= 48
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::invalid_settings(format!(
                "node name {:?}: use 1-48 of [A-Za-z0-9_-] (it names the node's segments)",
                self.name
            )));
        }
        if self.coordinators.is_empty() {
            return Err(Error::invalid_settings(
                "no coordinator address; give at least one",
            ));
        }
        let mut listen = ListenConfig::new(self.listen);
        listen.name = self.name.clone();
        listen.role = Role::Peer;
        listen.accept_roles = vec![Role::Peer];
        listen.token = self.token.clone();
        listen.tls = self.tls.clone();
        let listener = listen.bind_on(self.network.as_ref()).await?;
        let peer_addr =
            cohort_wire::advertised_address(listener.local_addr(), self.advertise.as_deref())?;
        let (to_coordinator, outbox) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let shared = Arc::new_cyclic(|me| NodeShared {
            me: me.clone(),
            name: self.name,
            store: self.store,
            peer_addr,
            token: self.token,
            tls: self.tls,
            settings: self.settings,
            network: self.network,
            factories: self.factories,
            objects: RwLock::new(BTreeMap::new()),
            stopping: Mutex::new(Vec::new()),
            create_waiters: Mutex::new(HashMap::new()),
            active: Mutex::new(None),
            held: AtomicBool::new(true),
            colour_floor: AtomicU64::new(0),
            early: Mutex::new(Vec::new()),
            restoring: AtomicBool::new(false),
            restored: tokio::sync::Mutex::new(Restored::default()),
            applied: AppliedLine::default(),
            tally: crate::participant::Tally::default(),
            incarnation: AtomicU64::new(0),
            restores: AtomicU64::new(0),
            placement: RwLock::new(Placement::default()),
            links: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            to_coordinator,
            status: watch::Sender::new(NodeStatus::Connecting),
            shutdown: shutdown.clone(),
            metrics: crate::Metrics::default(),
            runtime: tokio::runtime::Handle::current(),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(cohort_wire::serve(
            listener,
            move |mut conn: cohort_wire::Connection<PeerFrame, u64, BoxStream>,
                  stop: CancellationToken| {
                let node = weak.clone();
                async move {
                    let mut delivered = 0u64;
                    loop {
                        let stop: &CancellationToken = &stop;
                        let frame = tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            f = conn.recv() => f?,
                        };
                        let Some(frame) = frame else { return Ok(()) };
                        let Some(node) = node.upgrade() else {
                            return Ok(());
                        };
                        node.deliver(frame);
                        let stall = node.settings.heartbeat_timeout;
                        drop(node);
                        delivered += 1;
                        // A sender that stopped reading its acks is stalled: its link
                        // reconnects and sends again what this one did not acknowledge.
                        conn.send_within(&delivered, stall).await?;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), Error>(())
                }
            },
            shutdown.clone(),
        ));
        tokio::spawn(session::run(
            Arc::downgrade(&shared),
            self.coordinators,
            outbox,
        ));
        Ok(Node { shared })
    }
}

/// Hosts `object` under `id` on the node; `announce`: tell the coordinator (an object the
/// coordinator placed here itself needs not be announced).
fn spawn_object<A: Actor>(
    shared: &Arc<NodeShared>,
    id: ObjectId,
    object: A,
    announce: bool,
) -> Result<Address<A::Message>> {
    if shared.shutdown.is_cancelled() {
        return Err(Error::COHORT_STOPPED);
    }
    let mut objects = write(&shared.objects);
    shared.tally.table_changed();
    if objects.contains_key(&id) {
        return Err(Error::DuplicateObject(id));
    }
    let (cell, inbox, queues) =
        mailbox::cell::<Envelope<A::Message>>(crate::messaging::type_names::<A>);
    let object_type = object.type_name();
    // Held until `restore_late` (or the node's release) lets it run: the node's last
    // restore may have looked at its objects before this one existed.
    let task = ObjectTask::new(
        id.clone(),
        object,
        Round(shared.colour_floor.load(Ordering::SeqCst)),
        true,
        queues,
        Arc::clone(shared),
    );
    let deliver_tx = inbox.clone();
    let deliver = move |frame: PeerFrame| -> std::result::Result<(), String> {
        let message: A::Message =
            rmp_serde::from_slice(&frame.payload).map_err(|e| e.to_string())?;
        deliver_tx
            .send(Envelope {
                from: Some(frame.from),
                colour: frame.colour,
                seq: frame.seq,
                message,
            })
            .map_err(|_| "the receiver's task ended".to_owned())
    };
    objects.insert(
        id.clone(),
        NodeSlot {
            cell,
            deliver: Box::new(deliver),
            type_name: object_type,
            restored_in: Arc::new(AtomicU64::new(0)),
            awaiting_restore: Arc::new(AtomicBool::new(true)),
        },
    );
    drop(objects);
    let address = Address {
        to: id.clone(),
        tx: Route::Local(inbox),
    };
    task.launch(&address);
    tokio::spawn(restore_late(Arc::clone(shared), id.clone()));
    if announce {
        let _ = shared.to_coordinator.send(NodeFrame::Spawned {
            objects: vec![id.clone()],
            types: BTreeMap::from([(id.clone(), object_type.to_owned())]),
        });
    }
    Ok(address)
}

/// The last restore this node carried out.
#[derive(Clone, Debug, Default)]
pub(crate) struct Restored {
    /// Its incarnation (0: none yet).
    incarnation: u64,
    /// The line it restored (`None`: nothing was committed).
    line: Option<CheckpointId>,
    /// The colour it gave the objects.
    colour: Round,
    /// The objects that line holds a state of, or messages to: an object spawned later that
    /// is not among them runs at once, without reading the line again.
    in_line: Arc<BTreeSet<ObjectId>>,
}

/// Carries out a recovery order: hold, restore from the line in the store, answer. An order
/// for an incarnation already restored is a repeat: answered at once.
async fn restore(
    shared: &Arc<NodeShared>,
    order: RecoveryOrder,
) -> std::result::Result<(), RestoreFailure> {
    let RecoveryOrder {
        cohort_recovery,
        line,
        colour,
        incarnation,
        create,
    } = order;
    let mut restored = shared.restored.lock().await;
    if incarnation <= restored.incarnation {
        tracing::debug!(
            incarnation,
            restored = restored.incarnation,
            "a restore order already carried out"
        );
        return Ok(());
    }
    {
        let _early = lock(&shared.early);
        shared.restoring.store(true, Ordering::SeqCst);
    }
    let before = shared.incarnation.load(Ordering::SeqCst);
    tracing::debug!(
        incarnation,
        ?line,
        cohort_recovery,
        create = create.len(),
        "restoring"
    );
    let result = restore_objects(shared, cohort_recovery, line, colour, incarnation, &create).await;
    if result.is_err() {
        // Not restored into `incarnation`: its frames keep waiting (delivered now, they would
        // land in mailboxes the next restore empties, and their senders would not re-send).
        shared.incarnation.store(before, Ordering::SeqCst);
        shared.raise_floor_ending_restore(restored.colour, true);
    } else {
        // Frames that arrived meanwhile: those of an older incarnation are dropped, the rest
        // reach the restored mailboxes.
        shared.raise_floor_ending_restore(colour, true);
    }
    if let Ok(in_line) = &result {
        *restored = Restored {
            incarnation,
            line,
            colour,
            in_line: Arc::clone(in_line),
        };
    }
    result.map(|_| ())
}

/// Restores `id`, spawned after the node's last restore looked at its objects, from that
/// restore's line, then lets it run: otherwise an object the line holds would run from its
/// initial state, and its in-transit messages would never arrive (the cohort could not commit
/// again). No checkpoint commits meanwhile (the cohort's member votes no until it is here and
/// restored), so the line is still the newest.
async fn restore_late(shared: Arc<NodeShared>, id: ObjectId) {
    // After any restore in flight: that one may have ordered the object already.
    let guard = shared.restored.lock().await;
    let restored = guard.clone();
    let Some((control, restored_in, awaiting)) = read(&shared.objects).get(&id).map(|slot| {
        (
            slot.cell.clone(),
            Arc::clone(&slot.restored_in),
            Arc::clone(&slot.awaiting_restore),
        )
    }) else {
        return;
    };
    let done = |awaiting: &AtomicBool| {
        awaiting.store(false, Ordering::SeqCst);
        // Held with the whole node (a restore's `Release` is still to come), or on its own.
        if !shared.held.load(Ordering::SeqCst) {
            let _ = control.send_control(Control::Release);
        }
    };
    // No restore yet (the first one will order it), or the last one ordered it.
    if restored.incarnation == 0 || restored_in.load(Ordering::SeqCst) >= restored.incarnation {
        done(&awaiting);
        return;
    }
    let Some(line) = restored.line.filter(|_| restored.in_line.contains(&id)) else {
        // Nothing committed, or the line does not know it: it keeps its state, as a joining
        // object does.
        done(&awaiting);
        return;
    };
    let one = BTreeSet::from([id.clone()]);
    let order = match read_line(&shared, line, &one, &HeldObjects::default()).await {
        Ok((mut states, _)) => {
            let mut order = states.order(&id, restored.colour, false);
            // What reached its mailbox since the spawn was sent after the line: it stays.
            order.discard = false;
            order
        }
        Err(e) => {
            tracing::error!(object = %id, %line, error = %e, "cannot read the line to restore an object spawned after this node's restore; it stays held and votes no");
            return;
        }
    };
    if !order.state.in_line() && order.redeliver.is_empty() {
        // Not in the line: a new object keeps its state.
        done(&awaiting);
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if control
        .send_control(Control::Restore(Box::new(order), tx))
        .is_err()
    {
        return;
    }
    match rx.await {
        Ok(Ok(())) => {
            tracing::info!(object = %id, %line, "restored an object spawned after this node's restore");
            restored_in.store(restored.incarnation, Ordering::SeqCst);
            done(&awaiting);
        }
        Ok(Err(e)) => {
            tracing::error!(object = %id, %line, error = %e, "cannot restore an object spawned after this node's restore; it stays held and votes no");
        }
        Err(_) => {}
    }
    drop(guard);
}

/// Store reads of a restore are retried this often (with doubling backoff) while the store
/// does not answer, before the node reports that it cannot restore.
const RESTORE_READ_TRIES: u32 = 4;

async fn restore_objects(
    shared: &Arc<NodeShared>,
    cohort_recovery: bool,
    line: Option<CheckpointId>,
    colour: Round,
    incarnation: u64,
    create: &[(ObjectId, String)],
) -> std::result::Result<Arc<BTreeSet<ObjectId>>, RestoreFailure> {
    shared.held.store(true, Ordering::SeqCst);
    let held = shared.hold_all().await;
    // Until this restore succeeds, the objects are at no one line.
    shared.applied.set(None);
    // Disowned objects still running a handler would otherwise send under the new incarnation.
    let stopping = std::mem::take(&mut *lock(&shared.stopping));
    for ack in stopping {
        let _ = ack.await;
    }
    // Objects moved here from a dead node: created held, then restored with the others.
    for (id, type_name) in create {
        if read(&shared.objects).contains_key(id) {
            continue; // a repeated order
        }
        let Some(factory) = shared.factories.get(type_name) else {
            return Err(RestoreFailure::Refused {
                reason: format!(
                    "the coordinator placed {id} of type {type_name:?} here, but this node has no factory for that type; register it with NodeBuilder::host_type"
                ),
            });
        };
        factory(shared, id.clone(), false).map_err(|e| RestoreFailure::Refused {
            reason: format!("creating {id} of type {type_name:?}: {e}"),
        })?;
    }
    shared.incarnation.fetch_max(incarnation, Ordering::SeqCst);
    *lock(&shared.active) = None;
    let ids: BTreeSet<ObjectId> = read(&shared.objects).keys().cloned().collect();
    let (mut states, in_line) = match line {
        Some(id) => read_line(shared, id, &ids, &held)
            .await
            .map_err(|e| restore::restore_failure(&e))?,
        None => (LineStates::empty(), BTreeSet::new()),
    };
    let mut acks = Vec::new();
    for id in &ids {
        let order = states.order(id, colour, cohort_recovery);
        let Some(control) = read(&shared.objects).get(id).map(|slot| {
            slot.restored_in.store(incarnation, Ordering::SeqCst);
            slot.cell.clone()
        }) else {
            continue;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if control
            .send_control(Control::Restore(Box::new(order), tx))
            .is_ok()
        {
            acks.push(rx);
        }
    }
    for ack in acks {
        match ack.await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(e)) => return Err(restore::restore_failure(&e)),
        }
    }
    shared.applied.set(line);
    Ok(Arc::new(in_line))
}

/// Reads line `id`'s entries for the objects hosted here, retrying while the store does not
/// answer; also the objects the line holds a state of or messages to.
async fn read_line(
    shared: &Arc<NodeShared>,
    id: CheckpointId,
    hosted: &BTreeSet<ObjectId>,
    held: &HeldObjects,
) -> Result<(LineStates, BTreeSet<ObjectId>)> {
    let mut backoff = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        let read = async {
            let manifest = shared.store.read_manifest(id).await?;
            let states =
                LineStates::read(&shared.store, &manifest, |o| hosted.contains(o), held).await?;
            let in_line: BTreeSet<ObjectId> = manifest
                .objects
                .keys()
                .chain(manifest.in_transit.iter().map(|m| &m.to))
                .cloned()
                .collect();
            Ok::<_, cohort_checkpoint::Error>((states, in_line))
        };
        match read.await {
            Ok(states) => return Ok(states),
            Err(e) if e.is_retryable() && tries + 1 < RESTORE_READ_TRIES => {
                tracing::warn!(line = %id, error = %e, "reading the recovery line failed; retrying");
                tries += 1;
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
