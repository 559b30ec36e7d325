//! How connections are opened: a [`Connector`] dials byte streams (TCP in production; an
//! in-memory pipe or a fault-injecting proxy in tests; a tunnel in some deployments).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream a connection can run over: TCP, an in-memory pipe, a fault-injecting proxy.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxStream = Box<dyn ByteStream>;

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Opens byte streams to addresses. Members, monitors and pollers dial through one, so that
/// tests (and deployments behind a tunnel) can choose the transport.
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Opens a stream to `addr`, as given in a seed list or announced by a member.
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a>;
}

/// Dials TCP, with Nagle's algorithm off (heartbeats are small and should go out at once).
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
