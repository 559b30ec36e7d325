//! A passive monitor: counts the active members of a group, without being a member (Rendezvous
//! "monitoring the number of active members").
//!
//! The monitor dials members (seeds, then the members their heartbeats name, and with
//! [`MonitorOptions::discover`] the holders named by the activation records on the store),
//! subscribes to their heartbeats, and forgets a member silent for `lost_interval`. It is told the number of
//! active members, and which they are, whenever that changes. It never claims, never votes and
//! never affects the group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cohort_checkpoint::CheckpointStore;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{GroupName, MemberId, duration_ms};
use super::detector::PushDetector;
use super::fencing::{SlotEpoch, current_actives};
use super::group::{Heartbeat, MAX_ADDR_LEN, MAX_GOSSIP};
use cohort_wire::{BoxStream, Connector, TcpConnector};

use super::protocol::GroupMessage;
use crate::Error;
use cohort_wire::{ConnectConfig, Connection, Role, Secret, TlsConfig};

/// The active members a monitor sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActiveCount {
    /// How many members say they are active.
    pub count: usize,
    /// Which, with their activations, in member id order.
    pub actives: Vec<(MemberId, SlotEpoch)>,
}

/// The monitor's logic, pure: heartbeats and time in, the active count out when it changes.
#[derive(Clone, Debug)]
pub struct MonitorView {
    group: GroupName,
    detector: PushDetector<MemberId>,
    active: BTreeMap<MemberId, SlotEpoch>,
    reported: Option<ActiveCount>,
}

impl MonitorView {
    /// A view of `group` that forgets members silent for `lost_interval`.
    pub fn new(group: GroupName, lost_interval: Duration) -> Self {
        Self {
            group,
            detector: PushDetector::new(lost_interval),
            active: BTreeMap::new(),
            reported: None,
        }
    }

    /// Takes a heartbeat (ignored if it is of another group) or, with `None`, only the passing
    /// of time; returns the new count if it changed.
    pub fn step(&mut self, now_ms: u64, heartbeat: Option<&Heartbeat>) -> Option<ActiveCount> {
        if let Some(hb) = heartbeat.filter(|hb| hb.group == self.group) {
            if hb.leaving {
                self.detector.forget(&hb.member);
                self.active.remove(&hb.member);
            } else {
                self.detector.heard(hb.member.clone(), now_ms);
                match hb.active {
                    Some(se) => self.active.insert(hb.member.clone(), se),
                    None => self.active.remove(&hb.member),
                };
            }
        }
        for lost in self.detector.expire(now_ms) {
            self.active.remove(&lost);
        }
        let count = ActiveCount {
            count: self.active.len(),
            actives: self.active.iter().map(|(m, se)| (m.clone(), *se)).collect(),
        };
        if self.reported.as_ref() == Some(&count) {
            return None;
        }
        self.reported = Some(count.clone());
        Some(count)
    }

    /// When the next member may be forgotten.
    pub fn next_deadline(&self) -> Option<u64> {
        self.detector.next_deadline()
    }
}

/// How to start a [`Monitor`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MonitorOptions {
    /// The group to watch.
    pub group: GroupName,
    /// Forget a member silent this long; should be at least the members' activation interval.
    pub lost_interval: Duration,
    /// Group listeners of members to dial at start (more are learned from heartbeats).
    pub seeds: Vec<String>,
    /// This monitor's wire name.
    pub name: String,
    /// The shared token of the wire handshake.
    pub token: Option<Secret>,
    /// TLS towards the members (mutual).
    pub tls: Option<TlsConfig>,
    /// How connections are opened; TCP by default.
    pub connector: Arc<dyn Connector>,
    /// How often a broken subscription is retried; 100 ms by default.
    pub retry: Duration,
    /// The store that holds the group's activation records, to find members that no seed and
    /// no heartbeat names (a replacement that came up at a new address): when set, the monitor
    /// reads the newest activation of each slot every `lost_interval` and subscribes to its
    /// member's group listener. `None` by default.
    pub discover: Option<CheckpointStore>,
}

impl MonitorOptions {
    /// Watches `group`, forgetting members silent for `lost_interval`, starting from `seeds`.
    pub fn new(group: GroupName, lost_interval: Duration, seeds: Vec<String>) -> Self {
        Self {
            group,
            lost_interval,
            seeds,
            name: "monitor".to_owned(),
            token: None,
            tls: None,
            connector: Arc::new(TcpConnector),
            retry: Duration::from_millis(100),
            discover: None,
        }
    }
}

/// A running passive monitor. Stops when dropped.
pub struct Monitor {
    counts: watch::Receiver<ActiveCount>,
    changes: mpsc::UnboundedReceiver<(Instant, ActiveCount)>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("count", &*self.counts.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

impl Monitor {
    /// Starts watching.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero `lost_interval` or `retry`.
    pub fn start(options: MonitorOptions) -> Result<Self, Error> {
        if options.lost_interval.is_zero() || options.retry.is_zero() {
            return Err(Error::InvalidConfig {
                scope: "group",
                reason: format!(
                    "monitor lost_interval ({:?}) and retry ({:?}) must be above zero",
                    options.lost_interval, options.retry
                ),
            });
        }
        let (count_tx, counts) = watch::channel(ActiveCount::default());
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(options, count_tx, changes_tx, stop.clone()));
        Ok(Self {
            counts,
            changes,
            stop,
            task,
        })
    }

    /// A receiver of the current count.
    pub fn counts(&self) -> watch::Receiver<ActiveCount> {
        self.counts.clone()
    }

    /// The next change of the count, with when the monitor noticed it; `None` once stopped.
    pub async fn next_change(&mut self) -> Option<(Instant, ActiveCount)> {
        self.changes.recv().await
    }
}

async fn run(
    options: MonitorOptions,
    counts: watch::Sender<ActiveCount>,
    changes: mpsc::UnboundedSender<(Instant, ActiveCount)>,
    stop: CancellationToken,
) {
    let origin = Instant::now();
    let now_ms = || duration_ms(origin.elapsed());
    let mut view = MonitorView::new(options.group.clone(), options.lost_interval);
    let (heard_tx, mut heard) = mpsc::unbounded_channel::<Heartbeat>();
    let mut dialled = BTreeSet::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let seeds: BTreeSet<String> = options.seeds.iter().cloned().collect();
    let connect = ConnectConfig {
        token: options.token.clone(),
        tls: options.tls.clone(),
        accept_roles: vec![Role::Peer],
        handshake_timeout: options.lost_interval.max(Duration::from_millis(500)),
        ..ConnectConfig::new(Role::Peer, options.name.clone())
    };
    // Seeds are retried for as long as the monitor runs; an address learned from a heartbeat
    // is given up after failing for four lost intervals (it is learned again if it comes back).
    let give_up = options.lost_interval * 4;
    let subscribe = |addr: String, dialled: &mut BTreeSet<String>, tasks: &mut JoinSet<String>| {
        if addr.is_empty() || addr.len() > MAX_ADDR_LEN || !dialled.insert(addr.clone()) {
            return;
        }
        let limit = (!seeds.contains(&addr)).then_some(give_up);
        let task = subscription(
            addr.clone(),
            Arc::clone(&options.connector),
            connect.clone(),
            heard_tx.clone(),
            options.retry,
            limit,
            stop.child_token(),
        );
        tasks.spawn(async move {
            task.await;
            addr
        });
    };
    for seed in &options.seeds {
        subscribe(seed.clone(), &mut dialled, &mut tasks);
    }
    let (found_tx, mut found) = mpsc::unbounded_channel::<String>();
    if let Some(store) = options.discover.clone() {
        tokio::spawn(discover(
            store,
            options.group.clone(),
            options.lost_interval,
            found_tx,
            stop.child_token(),
        ));
    }
    loop {
        let deadline = view
            .next_deadline()
            .map(|ms| origin + Duration::from_millis(ms));
        let heartbeat = tokio::select! {
            () = stop.cancelled() => return,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(addr) = done {
                    dialled.remove(&addr);
                }
                continue;
            }
            Some(addr) = found.recv() => {
                subscribe(addr, &mut dialled, &mut tasks);
                continue;
            }
            Some(hb) = heard.recv() => Some(hb),
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        if let Some(hb) = &heartbeat {
            subscribe(hb.addr.clone(), &mut dialled, &mut tasks);
            for peer in hb.peers.iter().take(MAX_GOSSIP) {
                subscribe(peer.addr.clone(), &mut dialled, &mut tasks);
            }
        }
        if let Some(count) = view.step(now_ms(), heartbeat.as_ref()) {
            tracing::debug!(group = %options.group, count = count.count, "active count changed");
            counts.send_replace(count.clone());
            let _ = changes.send((Instant::now(), count));
        }
    }
}

/// Reads the group's activation records every `every` and passes on the group listener of
/// each slot's newest activation.
async fn discover(
    store: CheckpointStore,
    group: GroupName,
    every: Duration,
    found: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) {
    loop {
        match current_actives(&store, &group).await {
            Ok(actives) => {
                for record in actives {
                    if found.send(record.addr).is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                tracing::debug!(%group, "monitor cannot read the activation records: {err}")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Keeps a subscription to one member open, passing its heartbeats on.
async fn subscription(
    addr: String,
    connector: Arc<dyn Connector>,
    connect: ConnectConfig,
    heard: mpsc::UnboundedSender<Heartbeat>,
    retry: Duration,
    give_up_after: Option<Duration>,
    stop: CancellationToken,
) {
    let mut last_success = Instant::now();
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = open(&addr, connector.as_ref(), &connect) => opened,
        };
        match opened {
            Ok(mut conn) => {
                last_success = Instant::now();
                let sent = conn.send(&GroupMessage::Subscribe).await;
                if sent.is_ok() {
                    loop {
                        let received = tokio::select! {
                            () = stop.cancelled() => return,
                            received = conn.recv() => received,
                        };
                        match received {
                            Ok(Some(GroupMessage::Heartbeat(hb))) => {
                                if heard.send(hb).is_err() {
                                    return;
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            Err(err) => {
                tracing::debug!(%addr, "monitor cannot reach a member: {err}");
                if give_up_after.is_some_and(|limit| last_success.elapsed() >= limit) {
                    return;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}

async fn open(
    addr: &str,
    connector: &dyn Connector,
    connect: &ConnectConfig,
) -> Result<Connection<GroupMessage, GroupMessage, BoxStream>, Error> {
    let stream = tokio::time::timeout(connect.handshake_timeout, connector.connect(addr))
        .await
        .map_err(|_elapsed| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
        .and_then(|r| r)
        .map_err(|source| cohort_wire::Error::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(connect.handshake(stream, addr.to_owned()).await?)
}
