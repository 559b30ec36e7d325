//! What members and monitors say to each other over the wire, and how they open connections.
//!
//! Every member listens for its peers and dials every member it knows; each side sends its
//! heartbeats over the connection it dialled. A monitor dials members and subscribes to their
//! heartbeats; a pull detector dials a member and polls `is_alive`. Connections are cohort
//! wire connections ([`crate::wire`]): framed msgpack with the versioned, optionally
//! token-authenticated handshake, role [`Role::Peer`](crate::wire::Role::Peer), named by member
//! id.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::group::Heartbeat;

/// One message between members, monitors and pollers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupMessage {
    /// A member's heartbeat.
    Heartbeat(Heartbeat),
    /// Monitor → member: send me your heartbeats on this connection.
    Subscribe,
    /// Poller → member: are you alive? (FT-CORBA `PullMonitorable::is_alive`.)
    IsAlive {
        /// Echoed in the answer.
        seq: u64,
    },
    /// Member → poller: the answer to [`IsAlive`](Self::IsAlive).
    Alive {
        /// The poll's number.
        seq: u64,
        /// What the application's liveness check said.
        alive: bool,
    },
}

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
