//! [`GroupClient`]: the transparent client proxy of a replicated service (DCOM's distributed
//! components, FT-CORBA's object group reference with `FT_REQUEST`).
//!
//! - It finds the group's current primary (every active member, in the active style) through
//!   the activation records on the store ([`current_actives`]), and connects with the wire
//!   handshake as a [`Role::Client`] named by its [`ClientId`].
//! - It numbers requests under its [`ClientId`], piggybacks its acknowledged watermark, and
//!   keeps every request until its reply arrives.
//! - On a fault (connection broken, `Redirect`, `Retry`) it reconnects, with exponential
//!   backoff, and re-sends every request in flight with the same `(client id, request id)`;
//!   servers answer a request they executed from their reply cache, so it runs at most once.
//! - In the active style it sends each request to every active replica and keeps the first
//!   reply by request id; the others are dropped.
//!
//! The application sees no error across a failover, only a delay; a call fails only when no
//! member answered before the call's deadline ([`Error::Unavailable`]), or when the
//! service refused the request ([`Error::Refused`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cohort_checkpoint::CheckpointStore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::GroupName;
use super::fencing::current_actives;
use super::log::LoggedRequest;
use super::replies::{ClientId, MAX_RETAINED_PER_CLIENT, Outcome};
use super::server::{ClientMessage, ServerMessage};
use super::styles::ReplicationStyle;
use crate::Error;
use cohort_wire::{ConnectConfig, Inbound, Role, Secret, SendHalf, TlsConfig};

/// How to start a [`GroupClient`]. Build it with [`ClientOptions::new`] and set the public
/// fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The store that holds the group's activation records.
    pub store: CheckpointStore,
    /// The group.
    pub group: GroupName,
    /// The group's replication style (the active style sends to every active member).
    pub style: ReplicationStyle,
    /// This proxy's id; a fresh random one by default.
    pub client_id: ClientId,
    /// The shared token of the wire handshake.
    pub token: Option<Secret>,
    /// TLS towards the servers (mutual: the client presents a certificate too).
    pub tls: Option<TlsConfig>,
    /// How long one call may take, failovers included; 30 s by default.
    pub deadline: Duration,
    /// The first pause after a fault; doubled up to `max_backoff`. 5 ms by default.
    pub backoff: Duration,
    /// The longest pause between attempts; 100 ms by default.
    pub max_backoff: Duration,
    /// How long opening one connection may take; 1 s by default.
    pub connect_timeout: Duration,
    /// The most calls in flight at once; more wait. 256 by default (at most
    /// [`MAX_RETAINED_PER_CLIENT`]).
    pub max_in_flight: usize,
}

impl ClientOptions {
    /// A client of `group` (of `style`) whose activation records are on `store`.
    pub fn new(store: CheckpointStore, group: GroupName, style: ReplicationStyle) -> Self {
        Self {
            store,
            group,
            style,
            client_id: ClientId::random("client"),
            token: None,
            tls: None,
            deadline: Duration::from_secs(30),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            max_in_flight: 256,
        }
    }
}

/// Counters of a [`GroupClient`], for reports.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Connections opened (the first one included).
    pub connects: AtomicU64,
    /// Requests sent again after a fault.
    pub resent: AtomicU64,
    /// Duplicate replies dropped (active style).
    pub duplicates: AtomicU64,
}

struct Call {
    body: Bytes,
    reply: oneshot::Sender<Result<Bytes, Error>>,
}

/// A transparent proxy of a replicated service. Cheap to clone; clones share the connection
/// and the request numbering. Stops when the last clone is dropped.
#[derive(Clone)]
pub struct GroupClient {
    calls: mpsc::Sender<Call>,
    id: ClientId,
    stats: Arc<ClientStats>,
}

impl fmt::Debug for GroupClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupClient")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GroupClient {
    /// Starts the proxy. It connects on the first call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero deadline, backoff or in-flight limit.
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        if options.deadline.is_zero()
            || options.backoff.is_zero()
            || options.max_backoff < options.backoff
            || options.max_in_flight == 0
            || options.max_in_flight > MAX_RETAINED_PER_CLIENT
        {
            return Err(Error::InvalidConfig {
                scope: "replicated service",
                reason: format!(
                    "client deadline ({:?}) and backoff ({:?}) must be above zero, max_backoff \
                     ({:?}) at least backoff, and max_in_flight ({}) within 1..={MAX_RETAINED_PER_CLIENT}",
                    options.deadline, options.backoff, options.max_backoff, options.max_in_flight
                ),
            });
        }
        let (calls, rx) = mpsc::channel(options.max_in_flight);
        let stats = Arc::new(ClientStats::default());
        let id = options.client_id.clone();
        let proxy = Proxy {
            backoff: options.backoff,
            options,
            next_id: 1,
            pending: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            stats: Arc::clone(&stats),
            last_fault: "not connected yet".to_owned(),
            retry_at: None,
        };
        tokio::spawn(proxy.run(rx));
        Ok(Self { calls, id, stats })
    }

    /// This proxy's client id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// The proxy's counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Sends `request` to the group and returns the service's reply, across failovers.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] (the service's answer), [`Error::Unavailable`] (no
    /// member answered before the deadline; the request may or may not have run, at most
    /// once), [`Error::Stopped`].
    pub async fn call(&self, request: Bytes) -> Result<Bytes, Error> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call {
                body: request,
                reply,
            })
            .await
            .map_err(|_closed| Error::Stopped { what: "client" })?;
        rx.await
            .map_err(|_closed| Error::Stopped { what: "client" })?
    }
}

struct InFlight {
    body: Bytes,
    reply: oneshot::Sender<Result<Bytes, Error>>,
    deadline: Instant,
    started: Instant,
}

struct Conn {
    addr: String,
    tx: SendHalf<ClientMessage>,
}

/// What a connection's reader task reports.
enum FromConn {
    Message(u64, ServerMessage),
    Closed(u64, String),
}

struct Proxy {
    options: ClientOptions,
    next_id: u64,
    pending: BTreeMap<u64, InFlight>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    stats: Arc<ClientStats>,
    last_fault: String,
    backoff: Duration,
    /// When to look for members again after a fault.
    retry_at: Option<Instant>,
}

impl Proxy {
    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        let (from_tx, mut from_conns) = mpsc::unbounded_channel::<FromConn>();
        let mut readers = JoinSet::new();
        let mut open = true;
        loop {
            if !open && self.pending.is_empty() {
                break;
            }
            if self.conns.is_empty() && !self.pending.is_empty() && self.retry_at.is_none() {
                self.connect(&from_tx, &mut readers).await;
            }
            let wake = self.next_wake();
            tokio::select! {
                call = calls.recv(), if open && self.pending.len() < self.options.max_in_flight => match call {
                    Some(call) => self.submit(call, &from_tx, &mut readers).await,
                    None => open = false,
                },
                Some(event) = from_conns.recv() => self.on_conn(event).await,
                Some(_) = readers.join_next(), if !readers.is_empty() => {}
                () = sleep_until(wake) => self.on_timer(),
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let deadline = self.pending.values().map(|p| p.deadline).min();
        match (deadline, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(Error::Unavailable {
                    group: self.options.group.to_string(),
                    waited: now - p.started,
                    last: self.last_fault.clone(),
                }));
            }
        }
    }

    /// The highest id below which every reply has arrived.
    fn watermark(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .map_or(self.next_id - 1, |first| first - 1)
    }

    async fn submit(
        &mut self,
        call: Call,
        from: &mpsc::UnboundedSender<FromConn>,
        readers: &mut JoinSet<()>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        self.pending.insert(
            id,
            InFlight {
                body: call.body,
                reply: call.reply,
                deadline: now + self.options.deadline,
                started: now,
            },
        );
        if self.conns.is_empty() {
            if self.retry_at.is_none() {
                self.connect(from, readers).await;
            }
        } else {
            self.send(id).await;
        }
    }

    fn request(&self, id: u64) -> Option<ClientMessage> {
        let p = self.pending.get(&id)?;
        Some(ClientMessage::Request(LoggedRequest {
            client: self.options.client_id.clone(),
            id,
            acked: self.watermark(),
            body: p.body.clone(),
        }))
    }

    /// Sends request `id` on every connection; drops those that fail.
    async fn send(&mut self, id: u64) {
        let Some(msg) = self.request(id) else { return };
        let mut broken = Vec::new();
        for (n, conn) in &mut self.conns {
            if let Err(err) = conn.tx.send(&msg).await {
                broken.push((*n, format!("sending to {}: {err}", conn.addr)));
            }
        }
        for (n, why) in broken {
            self.drop_conn(n, why);
        }
    }

    fn drop_conn(&mut self, n: u64, why: String) {
        if self.conns.remove(&n).is_some() {
            tracing::debug!(client = %self.options.client_id, "{why}");
            self.last_fault = why;
            if self.conns.is_empty() {
                self.fault();
            }
        }
    }

    /// Schedules the next attempt with exponential backoff.
    fn fault(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.options.max_backoff);
    }

    /// Finds the active members and connects (to one in the passive styles, to all in the
    /// active style), then re-sends everything in flight.
    async fn connect(&mut self, from: &mpsc::UnboundedSender<FromConn>, readers: &mut JoinSet<()>) {
        let actives = match current_actives(&self.options.store, &self.options.group).await {
            Ok(a) => a,
            Err(err) => {
                self.last_fault = format!("finding the active members: {err}");
                self.fault();
                return;
            }
        };
        let mut addrs: Vec<String> = actives.into_iter().map(|a| a.service_addr).collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            self.last_fault = "no member of the group has ever activated".to_owned();
            self.fault();
            return;
        }
        if !self.options.style.sends_to_all() {
            // The newest activation of slot 0 first; in the passive styles there is one slot.
            addrs.truncate(1);
        }
        let config = ConnectConfig {
            token: self.options.token.clone(),
            tls: self.options.tls.clone(),
            handshake_timeout: self.options.connect_timeout,
            accept_roles: vec![Role::Peer],
            ..ConnectConfig::new(Role::Client, self.options.client_id.to_string())
        };
        for addr in addrs {
            let opened = tokio::time::timeout(
                self.options.connect_timeout,
                config.connect::<ServerMessage, ClientMessage>(addr.as_str()),
            )
            .await;
            let conn = match opened {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => {
                    self.last_fault = format!("connecting to {addr}: {err}");
                    continue;
                }
                Err(_elapsed) => {
                    self.last_fault = format!("connecting to {addr} timed out");
                    continue;
                }
            };
            let (rx, tx) = conn.split();
            let n = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(n, Conn { addr, tx });
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            readers.spawn(rx.forward(from.clone(), move |inbound| match inbound {
                Inbound::Message(msg) => FromConn::Message(n, msg),
                Inbound::Closed(why) => FromConn::Closed(n, why),
            }));
        }
        if self.conns.is_empty() {
            self.fault();
            return;
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        if self.stats.connects.load(Ordering::Relaxed) > 1 {
            self.stats
                .resent
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
        }
        for id in ids {
            self.send(id).await;
        }
    }

    async fn on_conn(&mut self, event: FromConn) {
        match event {
            FromConn::Closed(n, why) => {
                let addr = self.conns.get(&n).map(|c| c.addr.clone());
                if let Some(addr) = addr {
                    self.drop_conn(n, format!("connection to {addr}: {why}"));
                }
            }
            FromConn::Message(n, ServerMessage::Reply { id, outcome }) => {
                let Some(p) = self.pending.remove(&id) else {
                    // A duplicate (active style) or a reply to a call that timed out.
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if self.conns.contains_key(&n) {
                    // A reply is proof of a working server: reset the backoff.
                    self.backoff = self.options.backoff;
                }
                let result = match outcome {
                    Outcome::Ok(bytes) => Ok(bytes),
                    Outcome::Failed(message) => Err(Error::Refused { message }),
                };
                let _ = p.reply.send(result);
            }
            FromConn::Message(n, ServerMessage::Redirect { id, reason }) => {
                let _ = id;
                let addr = self.conns.get(&n).map(|c| c.addr.clone());
                if let Some(addr) = addr {
                    self.drop_conn(n, format!("{addr} does not serve: {reason}"));
                }
            }
            FromConn::Message(_, ServerMessage::Retry { id, reason }) => {
                self.last_fault = format!("request {id} was not logged: {reason}");
                // Re-sent on the next connect; the server was not deposed, so stay, after a
                // pause, by dropping every connection (simple, and rare).
                let all: Vec<u64> = self.conns.keys().copied().collect();
                for n in all {
                    self.drop_conn(n, self.last_fault.clone());
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
