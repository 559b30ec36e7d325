//! A fault-injecting TCP proxy between one node and the coordinator service.
//!
//! The node connects to the proxy, the proxy to the service. The test can:
//! - **sever** every connection (both sockets dropped) and **refuse** new ones (accepted and
//!   closed at once, so the node's handshake fails and it backs off) until it heals;
//! - **blackhole** the link: open connections stay open but no byte moves either way, and new
//!   connections are accepted and left silent; only heartbeats can tell;
//! - **hold** one direction from the first frame a predicate picks: that frame and every later
//!   one in that direction wait, in order, until released (a delayed `Prepare`, a `Seal` or a
//!   `Decided` that never arrives before a kill). Heartbeats still pass, so that a hold is a
//!   slow peer, not a dead connection: a test decides when the node dies.
//!
//! It also **taps** the frames it forwards (the wire's 4-byte length prefix, then msgpack: see
//! `cohort_wire`), so a test knows, without sleeping, that a vote reached the
//! service or that a `Decided` was caught. Handshake frames are forwarded without being logged.
//!
//! A **raw** proxy ([`Options::raw`]) forwards bytes as they come, without reading frames (a
//! TLS connection's records, an HTTP store's requests): sever, refuse and blackhole work on it,
//! holds and taps do not. It can add **latency** to every byte each way
//! ([`Options::latency`], [`Proxy::set_latency`]): this machine's kernel has no `netem` qdisc,
//! so a slow network is made here.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_coordinator::service::protocol::{CoordinatorFrame, NodeFrame};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What happens to connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// New connections are accepted and closed at once.
    Refuse,
    /// No byte moves on open connections; new ones are accepted and left silent.
    Blackhole,
}

/// A frame the proxy saw (heartbeats are not logged).
#[derive(Clone, Debug)]
pub enum Seen {
    /// Node → service, forwarded.
    Up(NodeFrame),
    /// Service → node, forwarded.
    Down(CoordinatorFrame),
    /// Node → service, caught by a hold.
    HeldUp(NodeFrame),
    /// Service → node, caught by a hold.
    HeldDown(CoordinatorFrame),
}

type Gate<F> = Arc<dyn Fn(&F) -> bool + Send + Sync>;

/// How a proxy starts.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Where it listens; a free loopback port by default.
    pub listen: SocketAddr,
    /// Forward bytes without reading frames.
    pub raw: bool,
    /// Delay every byte by this much, each way (raw proxies only).
    pub latency: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            raw: false,
            latency: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
struct Control {
    mode: Mode,
    latency: Duration,
    /// Bumped by a sever: connections of an older generation end.
    generation: u64,
    hold_up: Option<Gate<NodeFrame>>,
    hold_down: Option<Gate<CoordinatorFrame>>,
}

struct Inner {
    upstream: SocketAddr,
    raw: bool,
    control: watch::Sender<Control>,
    log: Mutex<Vec<Seen>>,
    logged: watch::Sender<usize>,
    refused: AtomicUsize,
    accepted: AtomicUsize,
}

impl Inner {
    fn record(&self, seen: Seen) {
        let mut log = self.log.lock().unwrap();
        log.push(seen);
        self.logged.send_replace(log.len());
    }
}

/// The proxy; it stops accepting when dropped.
pub struct Proxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends the open connections too.
        self.inner.control.send_modify(|c| c.generation += 1);
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_with(upstream, Options::default()).await
    }

    /// Listens and forwards to `upstream` as `options` say.
    pub async fn start_with(upstream: SocketAddr, options: Options) -> Self {
        let listener = TcpListener::bind(options.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            upstream,
            raw: options.raw,
            control: watch::Sender::new(Control {
                mode: Mode::Pass,
                latency: options.latency,
                generation: 0,
                hold_up: None,
                hold_down: None,
            }),
            log: Mutex::new(Vec::new()),
            logged: watch::Sender::new(0),
            refused: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&inner)));
        Self {
            addr,
            inner,
            accept,
        }
    }

    /// Where the node connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops both sockets of every open connection and refuses new ones until [`heal`].
    ///
    /// [`heal`]: Self::heal
    pub fn cut(&self) {
        self.inner.control.send_modify(|c| {
            c.generation += 1;
            c.mode = Mode::Refuse;
        });
    }

    /// Open connections go silent (both ways) and new ones are left silent, until [`heal`].
    ///
    /// [`heal`]: Self::heal
    pub fn blackhole(&self) {
        self.inner.control.send_modify(|c| c.mode = Mode::Blackhole);
    }

    /// Forwards again: silent connections resume (whoever timed out has closed its side).
    pub fn heal(&self) {
        self.inner.control.send_modify(|c| c.mode = Mode::Pass);
    }

    /// Delays every byte read from now on by `latency` before it is forwarded, each way (the
    /// order is kept). Raw proxies only.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.control.send_modify(|c| c.latency = latency);
    }

    /// Service → node frames wait, from the first one `pick` chooses, until [`release`].
    ///
    /// [`release`]: Self::release
    pub fn hold_down(&self, pick: impl Fn(&CoordinatorFrame) -> bool + Send + Sync + 'static) {
        self.inner
            .control
            .send_modify(|c| c.hold_down = Some(Arc::new(pick)));
    }

    /// Node → service frames wait, from the first one `pick` chooses, until [`release`].
    ///
    /// [`release`]: Self::release
    pub fn hold_up(&self, pick: impl Fn(&NodeFrame) -> bool + Send + Sync + 'static) {
        self.inner
            .control
            .send_modify(|c| c.hold_up = Some(Arc::new(pick)));
    }

    /// Ends both holds: the frames they caught go on, in order.
    pub fn release(&self) {
        self.inner.control.send_modify(|c| {
            c.hold_up = None;
            c.hold_down = None;
        });
    }

    /// Ends the node → service hold only.
    pub fn release_up(&self) {
        self.inner.control.send_modify(|c| c.hold_up = None);
    }

    /// Ends the service → node hold only.
    pub fn release_down(&self) {
        self.inner.control.send_modify(|c| c.hold_down = None);
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> usize {
        self.inner.refused.load(Ordering::SeqCst)
    }

    /// Connections accepted (forwarded or left silent) since the start.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// The log's length now: pass it to [`wait_seen`](Self::wait_seen) to look only at later
    /// frames.
    pub fn mark(&self) -> usize {
        self.inner.log.lock().unwrap().len()
    }

    /// The frames logged since `since`.
    pub fn seen_since(&self, since: usize) -> Vec<Seen> {
        self.inner.log.lock().unwrap()[since..].to_vec()
    }

    /// The first frame logged since `since` that `pick` maps to a value; panics after
    /// `deadline`.
    pub async fn wait_seen<T>(
        &self,
        what: &str,
        since: usize,
        deadline: Duration,
        pick: impl Fn(&Seen) -> Option<T>,
    ) -> T {
        match self.try_wait_seen(since, deadline, pick).await {
            Some(found) => found,
            None => {
                let log = self.seen_since(since);
                let tail = &log[log.len().saturating_sub(12)..];
                panic!("timed out after {deadline:?} waiting for {what}; last frames: {tail:#?}");
            }
        }
    }

    /// [`wait_seen`](Self::wait_seen), but `None` after `deadline`.
    pub async fn try_wait_seen<T>(
        &self,
        since: usize,
        deadline: Duration,
        pick: impl Fn(&Seen) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + deadline;
        let mut logged = self.inner.logged.subscribe();
        loop {
            logged.borrow_and_update();
            if let Some(found) = self.inner.log.lock().unwrap()[since..]
                .iter()
                .find_map(&pick)
            {
                return Some(found);
            }
            if tokio::time::timeout_at(end, logged.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Waits until `ready` holds for the proxy's counters; panics after `deadline`. The
    /// counters change on connection attempts, which the node makes by itself.
    pub async fn wait_counts(&self, what: &str, deadline: Duration, ready: impl Fn(&Self) -> bool) {
        let end = Instant::now() + deadline;
        let mut logged = self.inner.logged.subscribe();
        while !ready(self) {
            // Counters are bumped with a log notification (see `accept_loop`).
            if tokio::time::timeout_at(end, logged.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {deadline:?} waiting for {what} (refused {}, accepted {})",
                    self.refused(),
                    self.accepted()
                );
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let control = inner.control.borrow().clone();
        match control.mode {
            Mode::Refuse => {
                drop(client);
                inner.refused.fetch_add(1, Ordering::SeqCst);
            }
            Mode::Blackhole => {
                inner.accepted.fetch_add(1, Ordering::SeqCst);
                let mut rx = inner.control.subscribe();
                // Silent until the mode changes, then closed (it never reached the service).
                tokio::spawn(async move {
                    let _ = rx
                        .wait_for(|c| {
                            c.mode != Mode::Blackhole || c.generation != control.generation
                        })
                        .await;
                    drop(client);
                });
            }
            Mode::Pass => {
                inner.accepted.fetch_add(1, Ordering::SeqCst);
                let inner = Arc::clone(&inner);
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(inner.upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (up_read, up_write) = upstream.into_split();
                    let generation = control.generation;
                    if inner.raw {
                        tokio::spawn(pump_raw(
                            Arc::clone(&inner),
                            client_read,
                            up_write,
                            generation,
                        ));
                        tokio::spawn(pump_raw(inner, up_read, client_write, generation));
                        return;
                    }
                    tokio::spawn(pump::<Up>(
                        Arc::clone(&inner),
                        client_read,
                        up_write,
                        generation,
                    ));
                    tokio::spawn(pump::<Down>(inner, up_read, client_write, generation));
                });
            }
        }
        // Wakes `wait_counts`.
        inner.logged.send_modify(|_| {});
    }
}

trait Direction: Send + 'static {
    type Frame: DeserializeOwned + Clone + Send + 'static;
    fn gate(control: &Control) -> Option<Gate<Self::Frame>>;
    fn seen(frame: Self::Frame, held: bool) -> Seen;
    fn is_heartbeat(frame: &Self::Frame) -> bool;
}

/// Node → service.
struct Up;
/// Service → node.
struct Down;

impl Direction for Up {
    type Frame = NodeFrame;
    fn gate(control: &Control) -> Option<Gate<NodeFrame>> {
        control.hold_up.clone()
    }
    fn seen(frame: NodeFrame, held: bool) -> Seen {
        if held {
            Seen::HeldUp(frame)
        } else {
            Seen::Up(frame)
        }
    }
    fn is_heartbeat(frame: &NodeFrame) -> bool {
        matches!(frame, NodeFrame::Heartbeat)
    }
}

impl Direction for Down {
    type Frame = CoordinatorFrame;
    fn gate(control: &Control) -> Option<Gate<CoordinatorFrame>> {
        control.hold_down.clone()
    }
    fn seen(frame: CoordinatorFrame, held: bool) -> Seen {
        if held {
            Seen::HeldDown(frame)
        } else {
            Seen::Down(frame)
        }
    }
    fn is_heartbeat(frame: &CoordinatorFrame) -> bool {
        matches!(frame, CoordinatorFrame::Heartbeat)
    }
}

/// One wire frame: its bytes (prefix included) and its decoding, if it is a protocol frame.
struct Frame<F> {
    raw: Bytes,
    decoded: Option<F>,
}

/// Cuts one whole frame off the front of `buf`, if it holds one.
fn split_frame<F: DeserializeOwned>(buf: &mut BytesMut) -> Option<Frame<F>> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().unwrap()) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    let raw = buf.split_to(4 + len).freeze();
    let decoded = rmp_serde::from_slice(&raw[4..]).ok();
    Some(Frame { raw, decoded })
}

/// Forwards one direction of one connection, frame by frame, under the proxy's control.
async fn pump<D: Direction>(
    inner: Arc<Inner>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    generation: u64,
) {
    let mut control = inner.control.subscribe();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut held: VecDeque<Frame<D::Frame>> = VecDeque::new();
    loop {
        let (mode, current, gate) = {
            let c = control.borrow_and_update();
            (c.mode, c.generation, D::gate(&c))
        };
        if current != generation {
            return; // severed: both sockets are dropped with the two pumps
        }
        if mode == Mode::Blackhole {
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        if gate.is_none() {
            while let Some(frame) = held.pop_front() {
                if !forward::<D>(&inner, &mut to, frame).await {
                    return;
                }
            }
        }
        tokio::select! {
            changed = control.changed() => if changed.is_err() { return },
            read = from.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    // What was forwarded stays ahead of the close (FIN, not reset).
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(_) => {
                    while let Some(frame) = split_frame::<D::Frame>(&mut buf) {
                        let heartbeat = frame.decoded.as_ref().is_some_and(D::is_heartbeat);
                        let catch = held.is_empty()
                            && gate.as_ref().zip(frame.decoded.as_ref()).is_some_and(|(g, f)| g(f));
                        if !heartbeat && (catch || !held.is_empty()) {
                            if let Some(f) = frame.decoded.clone().filter(|f| !D::is_heartbeat(f)) {
                                inner.record(D::seen(f, true));
                            }
                            held.push_back(frame);
                        } else if !forward::<D>(&inner, &mut to, frame).await {
                            return;
                        }
                    }
                }
            },
        }
    }
}

/// Forwards one direction of one raw connection, chunk by chunk, each after the latency in
/// force when it was read.
async fn pump_raw(
    inner: Arc<Inner>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    generation: u64,
) {
    // The reader stamps chunks; the writer sends each at its stamp plus the latency, so a
    // steady stream is delayed once, not once per chunk.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Bytes)>();
    let mut control = inner.control.subscribe();
    let writer = {
        let mut control = inner.control.subscribe();
        tokio::spawn(async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                loop {
                    let (mode, current) = {
                        let c = control.borrow_and_update();
                        (c.mode, c.generation)
                    };
                    if current != generation {
                        return;
                    }
                    if mode != Mode::Blackhole {
                        break;
                    }
                    if control.changed().await.is_err() {
                        return;
                    }
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            // What was forwarded stays ahead of the close (FIN, not reset).
            let _ = to.shutdown().await;
        })
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let (current, latency) = {
            let c = control.borrow_and_update();
            (c.generation, c.latency)
        };
        if current != generation {
            break;
        }
        tokio::select! {
            changed = control.changed() => if changed.is_err() { break },
            read = from.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if tx.send((Instant::now() + latency, chunk)).is_err() {
                        break;
                    }
                }
            },
        }
    }
    drop(tx);
    let severed = inner.control.borrow().generation != generation;
    if severed {
        writer.abort();
    } else {
        let _ = writer.await;
    }
}

async fn forward<D: Direction>(
    inner: &Inner,
    to: &mut OwnedWriteHalf,
    frame: Frame<D::Frame>,
) -> bool {
    if to.write_all(&frame.raw).await.is_err() {
        return false;
    }
    if let Some(f) = frame.decoded.filter(|f| !D::is_heartbeat(f)) {
        inner.record(D::seen(f, false));
    }
    true
}
