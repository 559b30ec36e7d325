//! [`Member`]: runs a [`GroupEngine`] over the network and carries out its commands.
//!
//! One member is a few tasks:
//!
//! - the **driver** owns the engine: it feeds it heartbeats, control requests, claim results
//!   and ticks (at the engine's [`next_deadline`](GroupEngine::next_deadline)), and carries out
//!   the commands;
//! - the **listener** ([`cohort_wire::serve`]) accepts peers, monitors and pollers: it passes
//!   heartbeats to the driver, answers `is_alive`, and streams heartbeats to subscribers;
//! - one **dialer** per known address keeps a connection open and sends every heartbeat over
//!   it, reconnecting every heartbeat interval when it breaks;
//! - a **claim** task per [`Command::ClaimSlot`] runs [`claim_slot`] against the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_checkpoint::CheckpointStore;
use cohort_object_api::Clock;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{GroupConfig, MemberId, duration_ms};
use super::fencing::{
    Claim, Claimant, EntryId, FencedLog, SlotEpoch, claim_slot, ensure_group_record,
};
use super::group::{
    ClaimOutcome, Command, DeactivateReason, Event, GroupEngine, Heartbeat, MemberState,
};
use cohort_wire::{BoxStream, Connector, TcpConnector};

use super::protocol::GroupMessage;
use crate::Error;
use cohort_wire::{
    Accept, ConnectConfig, Connection, ListenConfig, Listener, Role, Secret, TlsConfig,
};

/// The application's answer to `is_alive` polls (FT-CORBA `PullMonitorable`).
pub type IsAlive = Arc<dyn Fn() -> bool + Send + Sync>;

/// How to start a [`Member`]. Build it with [`MemberOptions::new`] and set the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct MemberOptions {
    /// The group settings (weight, goal, intervals).
    pub config: GroupConfig,
    /// This member's id (its wire name too).
    pub id: MemberId,
    /// The store that holds the group record, the fencing slots and the fenced log.
    pub store: CheckpointStore,
    /// Where to listen for peers; `127.0.0.1:0` (a free loopback port) by default. A
    /// non-loopback address needs a [`token`](Self::token).
    pub listen: SocketAddr,
    /// The address peers are told to dial; the bound address by default. Set it when the member
    /// is reached through another name or a NAT.
    pub advertise: Option<String>,
    /// Where this member serves its clients; recorded with each activation for discovery.
    pub service_addr: String,
    /// Group listeners of other members to dial at start (more are learned by gossip). This
    /// member's own address may be among them.
    pub seeds: Vec<String>,
    /// The shared token of the wire handshake (the same on every member and monitor).
    pub token: Option<Secret>,
    /// TLS on every group connection (mutual: this member's certificate must be valid for the
    /// address peers dial).
    pub tls: Option<TlsConfig>,
    /// How connections to peers are opened; TCP by default.
    pub connector: Arc<dyn Connector>,
    /// The answer to `is_alive` polls; always `true` by default.
    pub is_alive: IsAlive,
    /// How long a slot claim may take on the store before it counts as failed; 10 s by default.
    pub claim_timeout: Duration,
    /// The wall clock stamped on records and the randomness of tokens; the system's by default.
    pub clock: Clock,
}

impl fmt::Debug for MemberOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberOptions")
            .field("config", &self.config)
            .field("id", &self.id)
            .field("store", &self.store)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("service_addr", &self.service_addr)
            .field("seeds", &self.seeds)
            .field("token", &self.token.is_some())
            .field("tls", &self.tls.is_some())
            .field("connector", &self.connector)
            .field("claim_timeout", &self.claim_timeout)
            .finish_non_exhaustive()
    }
}

impl MemberOptions {
    /// Options for member `id` of the group `config` describes, on `store`, with the defaults
    /// above and no seeds.
    pub fn new(config: GroupConfig, id: MemberId, store: CheckpointStore) -> Self {
        Self {
            config,
            id,
            store,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            advertise: None,
            service_addr: String::new(),
            seeds: Vec::new(),
            token: None,
            tls: None,
            connector: Arc::new(TcpConnector),
            is_alive: Arc::new(|| true),
            claim_timeout: Duration::from_secs(10),
            clock: Clock::system(),
        }
    }

    /// The listener configuration a member uses: named by its id, role
    /// [`Role::Peer`], accepting peers and command-line tools, with the token and TLS. Use it with
    /// [`ListenConfig::listen_on`] to build the listener for [`Member::start_on`].
    pub fn listen_config(&self) -> ListenConfig {
        ListenConfig {
            name: self.id.to_string(),
            role: Role::Peer,
            accept_roles: vec![Role::Peer, Role::Cli],
            token: self.token.clone(),
            tls: self.tls.clone(),
            ..ListenConfig::new(self.listen)
        }
    }
}

/// What a member tells its application: the Rendezvous callbacks, and what it observes.
#[derive(Debug)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A hint: this member is next in line and an active member has been silent for
    /// `preparation_interval`. Get ready; [`Activate`](Self::Activate) may follow.
    PrepareToActivate,
    /// This member is active now: serve, and commit work with [`Member::append`] (or a
    /// [`FencedLog`] under this [`SlotEpoch`]).
    Activate(SlotEpoch),
    /// Stop serving.
    Deactivate {
        /// The activation that ended.
        slot_epoch: SlotEpoch,
        /// Why.
        reason: DeactivateReason,
    },
    /// The number of active members this member sees changed (itself included).
    ActiveCount(usize),
    /// A peer was refused because its settings disagree
    /// ([`Error::ConfigMismatch`], naming both values).
    Rejected(Error),
    /// A slot claim failed on the store; the member stands by for `activation_interval` and
    /// lets the others go first.
    ClaimFailed(Error),
}

/// A member's state, as [`Member::status`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStatus {
    /// Where the member stands.
    pub state: MemberState,
    /// Its current weight.
    pub weight: u16,
    /// The number of active members it sees (itself included).
    pub active_count: usize,
    /// The members it hears, with the activation of those that are active.
    pub peers: BTreeMap<MemberId, Option<SlotEpoch>>,
}

impl MemberStatus {
    /// The activation, if the member is active.
    pub fn active(&self) -> Option<SlotEpoch> {
        match self.state {
            MemberState::Active(se) => Some(se),
            _ => None,
        }
    }
}

enum Control {
    SetWeight(u16),
    Fenced { ours: SlotEpoch, by: u64 },
    Leave(oneshot::Sender<()>),
}

/// A cheap, cloneable handle on a running [`Member`], for the tasks that serve requests while
/// another owns the member and its events: it commits work and reads the state.
#[derive(Clone)]
pub struct MemberHandle {
    id: MemberId,
    log: FencedLog,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<MemberStatus>,
}

impl fmt::Debug for MemberHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemberHandle {
    /// The member's id.
    pub fn id(&self) -> &MemberId {
        &self.id
    }

    /// A receiver of the member's state, updated after every change.
    pub fn status(&self) -> watch::Receiver<MemberStatus> {
        self.status.clone()
    }

    /// The activation, if the member is active now.
    pub fn active(&self) -> Option<SlotEpoch> {
        self.status.borrow().active()
    }

    /// Changes the weight at run time (0 disables the member: it deactivates).
    pub fn set_weight(&self, weight: u16) {
        // A closed channel means the member stopped; there is nothing left to change.
        let _ = self.control.send(Control::SetWeight(weight));
    }

    /// The group's fenced log.
    pub fn log(&self) -> &FencedLog {
        &self.log
    }

    /// Commits `bytes` to the group's fenced log under the member's current activation and
    /// returns its sequence number. When a newer epoch fenced the slot, the member deactivates
    /// ([`DeactivateReason::Fenced`]) and this returns [`Error::SlotFenced`].
    ///
    /// # Errors
    ///
    /// [`Error::NotActive`], [`Error::SlotFenced`], or the log's store errors
    /// (see [`FencedLog::append`]).
    pub async fn append(&self, bytes: Bytes) -> Result<u64, Error> {
        Ok(self.commit(bytes).await?.seq)
    }

    /// As [`append`](Self::append), returning the entry's [`EntryId`].
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub async fn commit(&self, bytes: Bytes) -> Result<EntryId, Error> {
        let Some(ours) = self.active() else {
            return Err(Error::NotActive {
                group: self.log.group().clone(),
                member: self.id.clone(),
            });
        };
        let appended = self.log.commit(ours, &self.id, bytes).await;
        if let Err(Error::SlotFenced { by, .. }) = &appended {
            self.report_fenced(ours, *by);
        }
        appended
    }

    /// Tells the member that work committed under `ours` was fenced by epoch `by` (for work
    /// committed through a [`FencedLog`] directly): it deactivates.
    pub fn report_fenced(&self, ours: SlotEpoch, by: u64) {
        let _ = self.control.send(Control::Fenced { ours, by });
    }
}

/// A running member of a fault-tolerance group. See the [module documentation](self).
///
/// Dropping it without [`leave`](Self::leave) stops it like a crash ([`kill`](Self::kill)):
/// peers notice after `activation_interval`.
pub struct Member {
    handle: MemberHandle,
    addr: String,
    events: mpsc::UnboundedReceiver<MemberEvent>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.handle.id)
            .field("addr", &self.addr)
            .field("status", &*self.handle.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Checks the configuration against the group's record on the store (creating it if this
    /// is the first member), binds [`listen`](MemberOptions::listen) on TCP, and starts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], [`Error::ConfigMismatch`] (with the
    /// store's record), [`Error::GroupStore`], or [`Error::Wire`] ([`Bind`](cohort_wire::Error::Bind)) when the
    /// port cannot be bound.
    pub async fn start(options: MemberOptions) -> Result<Self, Error> {
        options.config.validate()?;
        let listener = options.listen_config().bind().await?;
        Self::start_on(options, listener).await
    }

    /// As [`start`](Self::start), on a listener that is already bound (a simulated network's,
    /// for instance); [`listen`](MemberOptions::listen) is ignored.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_on<A: Accept>(
        options: MemberOptions,
        listener: Listener<A>,
    ) -> Result<Self, Error> {
        options.config.validate()?;
        ensure_group_record(
            &options.store,
            &options.config,
            &options.id,
            options.clock.wall_ms(),
        )
        .await?;
        let addr = options
            .advertise
            .clone()
            .unwrap_or_else(|| listener.local_addr().to_string());
        let origin = Instant::now();
        let engine = GroupEngine::new(
            options.config.clone(),
            options.id.clone(),
            addr.clone(),
            options.service_addr.clone(),
            0,
        )?;
        let shutdown = CancellationToken::new();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(MemberStatus {
            state: MemberState::Inactive,
            weight: options.config.weight(),
            active_count: 0,
            peers: BTreeMap::new(),
        });
        let (heartbeat_tx, _) = watch::channel::<Option<Arc<Heartbeat>>>(None);
        let heartbeats = heartbeat_tx.subscribe();

        let mut tasks = JoinSet::new();
        let is_alive = Arc::clone(&options.is_alive);
        let me = options.id.clone();
        tasks.spawn(cohort_wire::serve(
            listener,
            move |conn: Connection<GroupMessage, GroupMessage, A::Stream>, stop| {
                serve_peer(
                    conn,
                    stop,
                    me.clone(),
                    inbound_tx.clone(),
                    heartbeats.clone(),
                    Arc::clone(&is_alive),
                )
            },
            shutdown.clone(),
        ));
        let log = FencedLog::new(options.store.clone(), options.config.group().clone());
        let id = options.id.clone();
        let driver = Driver {
            engine,
            origin,
            addr: addr.clone(),
            options,
            events: events_tx,
            status: status_tx,
            heartbeats: heartbeat_tx,
            dialers: BTreeMap::new(),
            seeds: BTreeSet::new(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(driver.run(control_rx, inbound_rx));
        Ok(Self {
            handle: MemberHandle {
                id,
                log,
                control: control_tx,
                status: status_rx,
            },
            addr,
            events: events_rx,
            shutdown,
            tasks,
        })
    }

    /// This member's id.
    pub fn id(&self) -> &MemberId {
        &self.handle.id
    }

    /// The address peers dial (advertised).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A cloneable handle for the tasks that commit work.
    pub fn handle(&self) -> MemberHandle {
        self.handle.clone()
    }

    /// The next callback or observation; `None` once the member stopped. Events queue up
    /// until they are read (they come only with changes, so the queue stays short), and the
    /// callbacks must be acted on promptly: an active member that does not serve keeps its
    /// slot.
    pub async fn next_event(&mut self) -> Option<MemberEvent> {
        self.events.recv().await
    }

    /// A receiver of the member's state, updated after every change.
    pub fn status(&self) -> watch::Receiver<MemberStatus> {
        self.handle.status()
    }

    /// The activation, if the member is active now.
    pub fn active(&self) -> Option<SlotEpoch> {
        self.handle.active()
    }

    /// Changes the weight at run time (0 disables the member: it deactivates).
    pub fn set_weight(&self, weight: u16) {
        self.handle.set_weight(weight);
    }

    /// The group's fenced log.
    pub fn log(&self) -> &FencedLog {
        self.handle.log()
    }

    /// Commits work under the current activation; see [`MemberHandle::append`].
    ///
    /// # Errors
    ///
    /// As [`MemberHandle::append`].
    pub async fn append(&self, bytes: Bytes) -> Result<u64, Error> {
        self.handle.append(bytes).await
    }

    /// Leaves the group gracefully: deactivates (reported as an event), tells the peers, so that
    /// they do not wait `activation_interval`, and stops.
    pub async fn leave(mut self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.handle.control.send(Control::Leave(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stops at once, like a crash: no goodbye, every connection dropped.
    pub fn kill(mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
    }
}

/// The handshake timeout of member connections: long enough for a loaded host, short enough
/// that a blackholed peer is retried within a few activation intervals.
fn handshake_timeout(config: &GroupConfig) -> Duration {
    (config.activation_interval() * 2).max(Duration::from_millis(500))
}

/// How long a dialer for a gossip-learned address keeps trying after the last success.
fn give_up_after(config: &GroupConfig) -> Duration {
    config.activation_interval() * 4
}

/// Owns the engine and carries out its commands.
struct Driver {
    engine: GroupEngine,
    origin: Instant,
    addr: String,
    options: MemberOptions,
    events: mpsc::UnboundedSender<MemberEvent>,
    status: watch::Sender<MemberStatus>,
    heartbeats: watch::Sender<Option<Arc<Heartbeat>>>,
    /// Addresses with a live dialer task.
    dialers: BTreeMap<String, CancellationToken>,
    seeds: BTreeSet<String>,
    shutdown: CancellationToken,
}

/// What the driver's side tasks report when they end.
enum SideDone {
    Dialer(String),
    Claim,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        duration_ms(self.origin.elapsed())
    }

    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut inbound: mpsc::UnboundedReceiver<Heartbeat>,
    ) {
        let (claims_tx, mut claims) = mpsc::unbounded_channel::<(u32, ClaimOutcome)>();
        let mut side: JoinSet<SideDone> = JoinSet::new();
        self.seeds = self
            .options
            .seeds
            .iter()
            .filter(|s| **s != self.addr)
            .cloned()
            .collect();
        for seed in self.seeds.clone() {
            self.dial(seed, &mut side);
        }
        loop {
            let deadline = self
                .engine
                .next_deadline()
                .map(|ms| self.origin + Duration::from_millis(ms));
            let mut leaving = None;
            let event = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(ctl) = control.recv() => match ctl {
                    Control::SetWeight(weight) => Event::SetWeight(weight),
                    Control::Fenced { ours, by } => Event::Fenced { ours, by },
                    Control::Leave(ack) => {
                        leaving = Some(ack);
                        Event::Leave
                    }
                },
                Some(hb) = inbound.recv() => Event::Heartbeat(hb),
                Some((slot, outcome)) = claims.recv() => Event::ClaimResult { slot, outcome },
                Some(done) = side.join_next(), if !side.is_empty() => {
                    if let Ok(SideDone::Dialer(addr)) = done {
                        self.dialers.remove(&addr);
                    }
                    continue;
                }
                () = sleep_until(deadline) => Event::Tick,
            };
            let now = self.now_ms();
            let commands = self.engine.step(now, event);
            self.execute(commands, &claims_tx, &mut side);
            if let Some(ack) = leaving {
                // The goodbye is published; the dialers send it as they stop.
                let _ = ack.send(());
                break;
            }
        }
        for stop in self.dialers.values() {
            stop.cancel();
        }
        let grace = self.options.config.heartbeat_interval() * 2;
        let drained =
            tokio::time::timeout(grace, async { while side.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            side.shutdown().await;
        }
    }

    fn execute(
        &mut self,
        commands: Vec<Command>,
        claims: &mpsc::UnboundedSender<(u32, ClaimOutcome)>,
        side: &mut JoinSet<SideDone>,
    ) {
        let mut events = Vec::new();
        for command in commands {
            match command {
                Command::Broadcast(hb) => {
                    self.heartbeats.send_replace(Some(Arc::new(hb)));
                }
                Command::Connect(peer) => {
                    if peer.addr != self.addr && !self.dialers.contains_key(&peer.addr) {
                        self.dial(peer.addr, side);
                    }
                }
                Command::Lost(member) => {
                    tracing::debug!(%member, "member lost");
                }
                Command::PrepareToActivate => events.push(MemberEvent::PrepareToActivate),
                Command::ClaimSlot { slot, supersedes } => {
                    self.claim(slot, supersedes, claims.clone(), side);
                }
                Command::Activate(se) => {
                    tracing::info!(member = %self.options.id, %se, "activated");
                    events.push(MemberEvent::Activate(se));
                }
                Command::Deactivate { slot_epoch, reason } => {
                    tracing::info!(member = %self.options.id, se = %slot_epoch, ?reason, "deactivated");
                    events.push(MemberEvent::Deactivate { slot_epoch, reason });
                }
                Command::ActiveCount(count) => events.push(MemberEvent::ActiveCount(count)),
                Command::Rejected { member, error } => {
                    let error = error.to_error(&member);
                    tracing::warn!("{error}");
                    events.push(MemberEvent::Rejected(error));
                }
            }
        }
        // The status first, so that the application sees `active()` agree with the events.
        let status = MemberStatus {
            state: self.engine.state(),
            weight: self.engine.weight(),
            active_count: self.engine.actives().len(),
            peers: self
                .engine
                .peers()
                .iter()
                .map(|(id, p)| (id.clone(), p.active))
                .collect(),
        };
        self.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
        for event in events {
            // The application dropped its receiver: nobody is listening, go on regardless.
            let _ = self.events.send(event);
        }
    }

    fn dial(&mut self, addr: String, side: &mut JoinSet<SideDone>) {
        let stop = self.shutdown.child_token();
        self.dialers.insert(addr.clone(), stop.clone());
        let config = &self.options.config;
        let dialer = Dialer {
            give_up_after: (!self.seeds.contains(&addr)).then(|| give_up_after(config)),
            addr,
            me: self.options.id.clone(),
            connector: Arc::clone(&self.options.connector),
            connect: ConnectConfig {
                token: self.options.token.clone(),
                tls: self.options.tls.clone(),
                handshake_timeout: handshake_timeout(config),
                accept_roles: vec![Role::Peer],
                ..ConnectConfig::new(Role::Peer, self.options.id.to_string())
            },
            heartbeats: self.heartbeats.subscribe(),
            retry: config.heartbeat_interval(),
            stop,
        };
        side.spawn(async move {
            let addr = dialer.addr.clone();
            dialer.run().await;
            SideDone::Dialer(addr)
        });
    }

    fn claim(
        &self,
        slot: u32,
        supersedes: Option<u64>,
        claims: mpsc::UnboundedSender<(u32, ClaimOutcome)>,
        side: &mut JoinSet<SideDone>,
    ) {
        let store = self.options.store.clone();
        let group = self.options.config.group().clone();
        let claimant = Claimant {
            member: self.options.id.clone(),
            service_addr: self.options.service_addr.clone(),
            addr: self.addr.clone(),
            now_unix_ms: self.options.clock.wall_ms(),
        };
        let timeout = self.options.claim_timeout;
        let events = self.events.clone();
        side.spawn(async move {
            let claimed = tokio::time::timeout(
                timeout,
                claim_slot(&store, &group, slot, supersedes, &claimant),
            )
            .await;
            let outcome = match claimed {
                Ok(Ok(Claim::Won(se))) => ClaimOutcome::Won(se),
                Ok(Ok(Claim::Lost { by })) => ClaimOutcome::Lost { by },
                Ok(Err(err)) => {
                    let reason = err.to_string();
                    tracing::warn!("claiming slot {slot} failed: {reason}");
                    let _ = events.send(MemberEvent::ClaimFailed(err));
                    ClaimOutcome::Failed { reason }
                }
                Err(_elapsed) => {
                    let reason = format!("claiming slot {slot} took longer than {timeout:?}");
                    tracing::warn!("{reason}");
                    ClaimOutcome::Failed { reason }
                }
            };
            let _ = claims.send((slot, outcome));
            SideDone::Claim
        });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Keeps one connection to one address open and sends every heartbeat over it.
struct Dialer {
    addr: String,
    me: MemberId,
    connector: Arc<dyn Connector>,
    connect: ConnectConfig,
    heartbeats: watch::Receiver<Option<Arc<Heartbeat>>>,
    retry: Duration,
    /// `None` for seeds, which are dialled for as long as the member runs.
    give_up_after: Option<Duration>,
    stop: CancellationToken,
}

impl Dialer {
    async fn run(mut self) {
        let mut last_success = Instant::now();
        loop {
            let attempt = tokio::select! {
                () = self.stop.cancelled() => return,
                attempt = self.open() => attempt,
            };
            match attempt {
                Ok(conn) if conn.peer().name == self.me.as_str() => {
                    tracing::debug!(addr = %self.addr, "this address is this member; not dialling it");
                    return;
                }
                Ok(conn) => {
                    if self.pump(conn).await {
                        return;
                    }
                    last_success = Instant::now();
                }
                Err(err) => {
                    tracing::debug!(addr = %self.addr, "cannot reach a member: {err}");
                    if self
                        .give_up_after
                        .is_some_and(|limit| last_success.elapsed() >= limit)
                    {
                        tracing::debug!(addr = %self.addr, "giving up on an address learned by gossip");
                        return;
                    }
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(self.retry) => {}
            }
        }
    }

    async fn open(&self) -> Result<Connection<GroupMessage, GroupMessage, BoxStream>, Error> {
        let stream = tokio::time::timeout(
            self.connect.handshake_timeout,
            self.connector.connect(&self.addr),
        )
        .await
        .map_err(|_elapsed| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
        .and_then(|r| r)
        .map_err(|source| cohort_wire::Error::Connect {
            addr: self.addr.clone(),
            source,
        })?;
        Ok(self.connect.handshake(stream, self.addr.clone()).await?)
    }

    /// Sends heartbeats until the connection breaks (`false`) or the dialer stops (`true`).
    async fn pump(&mut self, mut conn: Connection<GroupMessage, GroupMessage, BoxStream>) -> bool {
        // Send the current heartbeat at once on a new connection.
        self.heartbeats.mark_changed();
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    // A leaving member's goodbye may be the last change: send it before closing.
                    if self.heartbeats.has_changed().unwrap_or(false) {
                        let latest = self.heartbeats.borrow_and_update().clone();
                        if let Some(hb) = latest {
                            let bye = GroupMessage::Heartbeat((*hb).clone());
                            let _ = tokio::time::timeout(self.retry, conn.send(&bye)).await;
                        }
                    }
                    let _ = tokio::time::timeout(self.retry, conn.close()).await;
                    return true;
                }
                changed = self.heartbeats.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                    let latest = self.heartbeats.borrow_and_update().clone();
                    if let Some(hb) = latest
                        && let Err(err) = conn.send(&GroupMessage::Heartbeat((*hb).clone())).await
                    {
                        tracing::debug!(addr = %self.addr, "heartbeat not sent: {err}");
                        return false;
                    }
                }
                received = conn.recv() => match received {
                    Ok(Some(_)) => {}
                    Ok(None) => return false,
                    Err(err) => {
                        tracing::debug!(addr = %self.addr, "connection to a member broke: {err}");
                        return false;
                    }
                },
            }
        }
    }
}

/// Serves one inbound connection: a peer's heartbeats, a monitor's subscription, a poller's
/// `is_alive`.
async fn serve_peer<S: cohort_wire::ByteStream>(
    mut conn: Connection<GroupMessage, GroupMessage, S>,
    stop: CancellationToken,
    me: MemberId,
    inbound: mpsc::UnboundedSender<Heartbeat>,
    heartbeats: watch::Receiver<Option<Arc<Heartbeat>>>,
    is_alive: IsAlive,
) -> Result<(), Error> {
    let peer = conn.peer().name.clone();
    let mut subscription: Option<watch::Receiver<Option<Arc<Heartbeat>>>> = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            changed = async {
                match subscription.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    return Ok(());
                }
                let latest = subscription.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                if let Some(hb) = latest {
                    conn.send(&GroupMessage::Heartbeat((*hb).clone())).await?;
                }
            }
            received = conn.recv() => match received? {
                None => return Ok(()),
                Some(GroupMessage::Heartbeat(hb)) => {
                    if hb.member == me {
                        continue;
                    }
                    if hb.member.as_str() != peer {
                        tracing::warn!(%peer, member = %hb.member, "a peer sent another member's heartbeat; ignored");
                        continue;
                    }
                    if inbound.send(hb).is_err() {
                        return Ok(());
                    }
                }
                Some(GroupMessage::Subscribe) => {
                    let mut rx = heartbeats.clone();
                    rx.mark_changed();
                    subscription = Some(rx);
                }
                Some(GroupMessage::IsAlive { seq }) => {
                    let alive = is_alive();
                    conn.send(&GroupMessage::Alive { seq, alive }).await?;
                }
                Some(GroupMessage::Alive { .. }) => {}
            },
        }
    }
}
