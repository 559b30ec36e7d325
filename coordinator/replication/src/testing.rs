//! Fault injection for tests of groups and of what is built on them: a partition switch that
//! cuts real connections ([`Partitions`]), and an in-memory network ([`MemoryNetwork`]) that
//! runs members deterministically under tokio's paused time.
//!
//! Every connection a [`Partitions`] connector opens is relayed through an in-memory pipe that
//! the switch can cut: cutting drops both ends, so each side's next read sees the connection
//! close, exactly as when a peer crashes or a link fails; new connections between the two sides
//! are refused until [`heal`](Partitions::heal).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use cohort_wire::Accept;
use cohort_wire::{BoxStream, ConnectFuture, Connector};

/// The pipe buffer of relayed and in-memory connections.
const PIPE_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct PartitionState {
    /// Directed pairs (from, to) that cannot talk.
    blocked: BTreeSet<(String, String)>,
    /// Open relayed connections: (from, to, cut).
    links: Vec<(String, String, CancellationToken)>,
}

/// A partition switch over addresses. Give each endpoint a connector from
/// [`connector`](Self::connector), named by its own advertised address.
#[derive(Clone, Debug, Default)]
pub struct Partitions {
    state: Arc<Mutex<PartitionState>>,
}

impl Partitions {
    /// A switch with every link up.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PartitionState> {
        // A panic while holding the lock cannot leave the sets half-updated in a way that
        // matters to a test; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connector for the endpoint at `from` that dials through `inner` and obeys this switch.
    pub fn connector(
        &self,
        from: impl Into<String>,
        inner: Arc<dyn Connector>,
    ) -> Arc<dyn Connector> {
        Arc::new(FaultyConnector {
            from: from.into(),
            inner,
            partitions: self.clone(),
        })
    }

    /// Cuts every link between a member of `a` and a member of `b`, both ways, and refuses new
    /// ones until [`heal`](Self::heal).
    pub fn partition<S: AsRef<str>>(&self, a: &[S], b: &[S]) {
        let mut state = self.lock();
        for x in a {
            for y in b {
                let (x, y) = (x.as_ref().to_owned(), y.as_ref().to_owned());
                state.blocked.insert((x.clone(), y.clone()));
                state.blocked.insert((y, x));
            }
        }
        let PartitionState { blocked, links } = &mut *state;
        links.retain(|(from, to, cut)| {
            let keep = !blocked.contains(&(from.clone(), to.clone()));
            if !keep {
                cut.cancel();
            }
            keep && !cut.is_cancelled()
        });
    }

    /// Lifts every partition.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// How many relayed connections are open.
    pub fn open_links(&self) -> usize {
        let mut state = self.lock();
        state.links.retain(|(_, _, cut)| !cut.is_cancelled());
        state.links.len()
    }
}

#[derive(Debug)]
struct FaultyConnector {
    from: String,
    inner: Arc<dyn Connector>,
    partitions: Partitions,
}

impl Connector for FaultyConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let pair = (self.from.clone(), addr.to_owned());
            if self.partitions.lock().blocked.contains(&pair) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("partitioned: {} cannot reach {addr}", self.from),
                ));
            }
            let mut remote = self.inner.connect(addr).await?;
            let (local, mut relay) = tokio::io::duplex(PIPE_BYTES);
            let cut = CancellationToken::new();
            {
                let mut state = self.partitions.lock();
                if state.blocked.contains(&pair) {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("partitioned: {} cannot reach {addr}", self.from),
                    ));
                }
                state.links.push((pair.0, pair.1, cut.clone()));
            }
            tokio::spawn(async move {
                tokio::select! {
                    () = cut.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut relay, &mut remote) => {}
                }
                cut.cancel();
            });
            Ok(Box::new(local) as BoxStream)
        })
    }
}

#[derive(Debug, Default)]
struct NetworkState {
    listeners: BTreeMap<SocketAddr, mpsc::UnboundedSender<(DuplexStream, SocketAddr)>>,
    next_port: u16,
}

/// An in-memory network of tokio duplex pipes: no sockets, so that whole groups run under
/// `tokio::time::pause()` and every timing is exact. Addresses are `127.0.0.1:<port>`, handed
/// out by [`listen`](Self::listen). Connectors from [`connector`](Self::connector) obey the
/// network's [`partitions`](Self::partitions).
#[derive(Clone, Debug, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetworkState>>,
    partitions: Partitions,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_addr(state: &mut NetworkState) -> SocketAddr {
        state.next_port = state.next_port.wrapping_add(1).max(1);
        SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000u16.wrapping_add(state.next_port)))
    }

    /// A listener at a fresh address; dropping it refuses further connections to that address.
    pub fn listen(&self) -> MemoryAcceptor {
        let mut state = self.lock();
        let addr = Self::next_addr(&mut state);
        let (tx, rx) = mpsc::unbounded_channel();
        state.listeners.insert(addr, tx);
        MemoryAcceptor { addr, incoming: rx }
    }

    /// The connector of the endpoint at `from` (its own address, for partitions).
    pub fn connector(&self, from: impl Into<String>) -> Arc<dyn Connector> {
        let raw: Arc<dyn Connector> = Arc::new(MemoryConnector { net: self.clone() });
        self.partitions.connector(from, raw)
    }

    /// The network's partition switch.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }
}

#[derive(Debug)]
struct MemoryConnector {
    net: MemoryNetwork,
}

impl Connector for MemoryConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let refused = || {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens at {addr}"),
                )
            };
            let target: SocketAddr = addr
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
            let mut state = self.net.lock();
            let peer = MemoryNetwork::next_addr(&mut state);
            let Some(listener) = state.listeners.get(&target) else {
                return Err(refused());
            };
            let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
            if listener.send((theirs, peer)).is_err() {
                state.listeners.remove(&target);
                return Err(refused());
            }
            Ok(Box::new(ours) as BoxStream)
        })
    }
}

/// The accepting end of a [`MemoryNetwork`] address; hand it to
/// [`ListenConfig::listen_on`](cohort_wire::ListenConfig::listen_on).
#[derive(Debug)]
pub struct MemoryAcceptor {
    addr: SocketAddr,
    incoming: mpsc::UnboundedReceiver<(DuplexStream, SocketAddr)>,
}

impl Accept for MemoryAcceptor {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        match self.incoming.recv().await {
            Some(accepted) => Ok(accepted),
            // The network keeps a sender for as long as the address exists.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
