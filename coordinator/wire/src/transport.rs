//! How connections are opened and accepted: a [`Connector`] dials byte streams and a
//! [`Network`] also binds listeners (TCP in production; an in-memory pipe, a fault-injecting
//! proxy or a simulated network in tests; a tunnel in some deployments).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::config::Accept;

/// A byte stream a connection can run over: TCP, an in-memory pipe, a fault-injecting proxy.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxStream = Box<dyn ByteStream>;

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Opens byte streams to addresses. Members, monitors, pollers, nodes and standbys dial
/// through one, so that tests (and deployments behind a tunnel) can choose the transport.
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Opens a stream to `addr`, as given in a seed list or announced by a member.
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a>;
}

/// The future [`Network::bind`] returns.
pub type BindFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxAcceptor>> + Send + 'a>>;

/// The future [`DynAccept::accept_boxed`] returns.
pub type AcceptFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<(BoxStream, SocketAddr)>> + Send + 'a>>;

/// A [`Connector`] that also listens: the coordinator service binds its node port and a node
/// its peer port through one, so that a simulation can run them over its own network.
pub trait Network: Connector {
    /// Starts listening on `addr` (port 0: any free port).
    fn bind(&self, addr: SocketAddr) -> BindFuture<'_>;
}

/// An object-safe [`Accept`], for listeners chosen at run time (see [`BoxAcceptor`]).
pub trait DynAccept: Send + 'static {
    /// Waits for the next connection. Must be cancel-safe.
    fn accept_boxed(&mut self) -> AcceptFuture<'_>;

    /// The address this acceptor listens on.
    ///
    /// # Errors
    ///
    /// When the network cannot tell.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A listener of any [`Network`], handing out [`BoxStream`]s.
pub struct BoxAcceptor(Box<dyn DynAccept>);

impl BoxAcceptor {
    /// Boxes `acceptor`.
    pub fn new(acceptor: impl DynAccept) -> Self {
        Self(Box::new(acceptor))
    }
}

impl fmt::Debug for BoxAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoxAcceptor")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

impl Accept for BoxAcceptor {
    type Stream = BoxStream;

    async fn accept(&mut self) -> io::Result<(BoxStream, SocketAddr)> {
        self.0.accept_boxed().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Dials TCP, with Nagle's algorithm off (heartbeats are small and should go out at once), and
/// binds TCP listeners: the production [`Network`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!("cannot disable Nagle's algorithm towards {addr}: {err}");
            }
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

impl Network for TcpConnector {
    fn bind(&self, addr: SocketAddr) -> BindFuture<'_> {
        Box::pin(async move { Ok(BoxAcceptor::new(TcpListener::bind(addr).await?)) })
    }
}

impl DynAccept for TcpListener {
    fn accept_boxed(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (stream, addr) = Accept::accept(self).await?;
            Ok((Box::new(stream) as BoxStream, addr))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}
