//! Listening and connecting: configuration, the loopback rule, and TCP.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use super::handshake::{self, HANDSHAKE_MAX_FRAME_LEN, Local, NonceSource, OsNonces, Role};
use super::transport::{BoxAcceptor, BoxStream, Connector, Network};
use super::{Connection, Secret, TlsConfig};
use crate::Error;

/// The port a coordinator listens on when none is given.
pub const DEFAULT_PORT: u16 = 7411;

/// The default largest frame: 16 MiB. The coordinator carries votes and metadata, never state
/// bytes, so real frames are far smaller.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The default time a peer has to complete the handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default budget of bytes a listener reserves for frames being received, over all its
/// connections: 256 MiB.
pub const DEFAULT_MAX_FRAME_BYTES_IN_FLIGHT: usize = 256 * 1024 * 1024;

/// What a listener allows the peers of each role: how many established connections at once,
/// and the largest frame after the handshake (never more than the listener's
/// [`max_frame_len`](ListenConfig::max_frame_len)).
///
/// The defaults: 1024 connections each of nodes, peers and clients, 64 of coordinators and 16
/// of the CLI, whose frames (status and checkpoint requests) are at most 64 KiB. A peer over
/// the connection limit is refused in the handshake with code `busy` (it may retry later).
///
/// ```
/// use cohort_wire::{RoleLimits, Role};
/// let limits = RoleLimits::default().with_max_connections(Role::Cli, 4);
/// assert_eq!(limits.max_connections(Role::Cli), 4);
/// assert_eq!(limits.max_frame_len(Role::Cli), 64 * 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleLimits {
    connections: [usize; Role::ALL.len()],
    frame_len: [usize; Role::ALL.len()],
}

impl Default for RoleLimits {
    fn default() -> Self {
        let mut limits = Self {
            connections: [1024; Role::ALL.len()],
            frame_len: [usize::MAX; Role::ALL.len()],
        };
        limits.connections[Role::Coordinator.index()] = 64;
        limits.connections[Role::Cli.index()] = 16;
        limits.frame_len[Role::Cli.index()] = HANDSHAKE_MAX_FRAME_LEN;
        limits
    }
}

impl RoleLimits {
    /// How many established connections of `role` a listener keeps at once.
    pub fn max_connections(&self, role: Role) -> usize {
        self.connections[role.index()]
    }

    /// The largest frame accepted from a peer of `role` (capped by the listener's own limit).
    pub fn max_frame_len(&self, role: Role) -> usize {
        self.frame_len[role.index()]
    }

    /// Sets how many established connections of `role` a listener keeps at once.
    pub fn with_max_connections(mut self, role: Role, max: usize) -> Self {
        self.connections[role.index()] = max;
        self
    }

    /// Sets the largest frame accepted from a peer of `role`.
    pub fn with_max_frame_len(mut self, role: Role, max: usize) -> Self {
        self.frame_len[role.index()] = max;
        self
    }
}

/// How a listener accepts connections and checks who connects.
///
/// The address is loopback unless set otherwise, and a non-loopback address needs
/// [`tls`](Self::tls) or a [`token`](Self::token): [`bind`](Self::bind) refuses to start
/// without one.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// The address to listen on; `127.0.0.1:7411` by default.
    pub addr: SocketAddr,
    /// This endpoint's name, sent in its hello; `coordinator` by default.
    pub name: String,
    /// This endpoint's role, sent in its hello; [`Role::Coordinator`] by default.
    pub role: Role,
    /// The roles of the peers this listener talks to; all by default.
    pub accept_roles: Vec<Role>,
    /// The shared token that peers must prove they hold. A non-loopback address needs it, or
    /// [`tls`](Self::tls).
    pub token: Option<Secret>,
    /// TLS on every connection, with client certificates of the same authority required
    /// (mutual TLS). `None`: plain TCP.
    pub tls: Option<TlsConfig>,
    /// The largest frame accepted after the handshake; [`DEFAULT_MAX_FRAME_LEN`] by default.
    pub max_frame_len: usize,
    /// The time a peer has to complete the handshake (TLS included); [`DEFAULT_HANDSHAKE_TIMEOUT`]
    /// by default.
    pub handshake_timeout: Duration,
    /// How many handshakes may be in progress at once, so that a flood of silent connections
    /// cannot exhaust memory or descriptors. Beyond it the one that has waited longest is
    /// closed (code `busy`), so that silent connections never delay a new peer. 256 by
    /// default.
    pub max_pending_handshakes: usize,
    /// Per-role limits on established connections and frame lengths; see [`RoleLimits`].
    pub limits: RoleLimits,
    /// The bytes reserved for frames being received, over all connections: a frame longer
    /// than 64 KiB is charged from its length prefix until it is received, and a connection
    /// whose frame would exceed the budget is closed. [`DEFAULT_MAX_FRAME_BYTES_IN_FLIGHT`]
    /// by default; at least [`max_frame_len`](Self::max_frame_len).
    pub max_frame_bytes_in_flight: usize,
    /// How long [`serve`](super::serve) waits for open connections to finish after shutdown
    /// before aborting them; 5 s by default.
    pub shutdown_grace: Duration,
    /// Where handshake nonces come from; [`OsNonces`] by default.
    pub nonces: Arc<dyn NonceSource>,
}

impl ListenConfig {
    /// The default configuration on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            ..Self::default()
        }
    }

    /// Checks the configuration and binds a TCP listener on [`addr`](Self::addr).
    ///
    /// # Errors
    ///
    /// [`Error::TokenRequired`] for a non-loopback address without TLS or a token (checked before
    /// the port is taken), [`Error::InvalidName`] or [`Error::InvalidConfig`] for a bad
    /// setting, [`Error::Bind`] when the port cannot be opened.
    pub async fn bind(self) -> Result<Listener<TcpListener>, Error> {
        self.validate(self.addr)?;
        let tcp = TcpListener::bind(self.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: self.addr,
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| Error::Bind {
            addr: self.addr,
            source,
        })?;
        Ok(Listener {
            acceptor: tcp,
            local_addr,
            config: self,
        })
    }

    /// [`bind`](Self::bind) through `network` (TCP in production, a simulated network in
    /// tests): the listener hands out boxed streams.
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind).
    pub async fn bind_on(self, network: &dyn Network) -> Result<Listener<BoxAcceptor>, Error> {
        self.validate(self.addr)?;
        let acceptor = network
            .bind(self.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: self.addr,
                source,
            })?;
        self.listen_on(acceptor)
    }

    /// Checks the configuration against an acceptor that is already listening (a simulated
    /// network's listener, for instance), whose own address replaces [`addr`](Self::addr).
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind), and [`Error::Bind`] if the acceptor cannot tell its address.
    pub fn listen_on<A: Accept>(self, acceptor: A) -> Result<Listener<A>, Error> {
        let local_addr = acceptor.local_addr().map_err(|source| Error::Bind {
            addr: self.addr,
            source,
        })?;
        self.validate(local_addr)?;
        Ok(Listener {
            acceptor,
            local_addr,
            config: self,
        })
    }

    fn validate(&self, addr: SocketAddr) -> Result<(), Error> {
        if !addr.ip().to_canonical().is_loopback() && self.token.is_none() && self.tls.is_none() {
            return Err(Error::TokenRequired { addr });
        }
        check_common(
            &self.name,
            &self.accept_roles,
            self.max_frame_len,
            self.handshake_timeout,
        )?;
        if self.max_pending_handshakes == 0 {
            return Err(Error::InvalidConfig {
                reason: "max_pending_handshakes is 0; allow at least one".to_owned(),
            });
        }
        if self.max_frame_bytes_in_flight < self.max_frame_len {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "max_frame_bytes_in_flight is {} bytes, less than max_frame_len ({}): a \
                     largest frame could never be received; allow at least max_frame_len",
                    self.max_frame_bytes_in_flight, self.max_frame_len
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn local(&self) -> Local<'_> {
        Local {
            name: &self.name,
            role: self.role,
            accept_roles: &self.accept_roles,
            token: self.token.as_ref(),
            tls: self.tls.as_ref(),
            max_frame_len: self.max_frame_len,
            handshake_timeout: self.handshake_timeout,
            nonces: self.nonces.as_ref(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            name: "coordinator".to_owned(),
            role: Role::Coordinator,
            accept_roles: Role::ALL.to_vec(),
            token: None,
            tls: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: 256,
            limits: RoleLimits::default(),
            max_frame_bytes_in_flight: DEFAULT_MAX_FRAME_BYTES_IN_FLIGHT,
            shutdown_grace: Duration::from_secs(5),
            nonces: Arc::new(OsNonces),
        }
    }
}

/// How a client connects and checks whom it reached.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// This endpoint's name, sent in its hello.
    pub name: String,
    /// This endpoint's role, sent in its hello.
    pub role: Role,
    /// The roles of the servers this client talks to; all by default.
    pub accept_roles: Vec<Role>,
    /// The shared token to prove, and to demand the server proves. Must match the server's:
    /// both have one, or neither.
    pub token: Option<Secret>,
    /// TLS, presenting this side's certificate and checking that the server's is signed by the
    /// authority and valid for the host dialled. Must match the server's: both use TLS, or
    /// neither.
    pub tls: Option<TlsConfig>,
    /// The largest frame accepted after the handshake; [`DEFAULT_MAX_FRAME_LEN`] by default.
    pub max_frame_len: usize,
    /// The time allowed to open the TCP connection, and again to complete the handshake;
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] by default.
    pub handshake_timeout: Duration,
    /// Where handshake nonces come from; [`OsNonces`] by default.
    pub nonces: Arc<dyn NonceSource>,
}

impl ConnectConfig {
    /// The default configuration for an endpoint of `role` called `name`.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            role,
            accept_roles: Role::ALL.to_vec(),
            token: None,
            tls: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            nonces: Arc::new(OsNonces),
        }
    }

    /// Opens a TCP connection to `addr` and runs the handshake over it.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the connection cannot be opened in time; otherwise as
    /// [`handshake`](Self::handshake).
    pub async fn connect<In, Out>(
        &self,
        addr: impl ToSocketAddrs + fmt::Display,
    ) -> Result<Connection<In, Out, TcpStream>, Error>
    where
        In: DeserializeOwned,
        Out: Serialize,
    {
        self.validate()?;
        let connect_error = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(self.handshake_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_elapsed| {
                connect_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.handshake_timeout),
                ))
            })?
            .map_err(connect_error)?;
        set_nodelay(&stream);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| addr.to_string(), |peer| peer.to_string());
        // TLS checks the server's certificate against the address as dialled (a DNS name stays
        // a name), not the socket address it resolved to.
        self.handshake_with(stream, peer, &addr.to_string()).await
    }

    /// [`connect`](Self::connect) through `connector` (TCP in production, a simulated
    /// network in tests) to `addr` as `HOST:PORT`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_via<In, Out>(
        &self,
        connector: &dyn Connector,
        addr: &str,
    ) -> Result<Connection<In, Out, BoxStream>, Error>
    where
        In: DeserializeOwned,
        Out: Serialize,
    {
        self.validate()?;
        let connect_error = |source| Error::Connect {
            addr: addr.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(self.handshake_timeout, connector.connect(addr))
            .await
            .map_err(|_elapsed| {
                connect_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.handshake_timeout),
                ))
            })?
            .map_err(connect_error)?;
        self.handshake_with(stream, addr.to_owned(), addr).await
    }

    /// Runs the client side of the handshake over an already open stream (an in-memory pipe,
    /// a simulated network's stream, a proxy); `peer` names the other side in errors and, with
    /// [`tls`](Self::tls), is the `HOST:PORT` whose host the server's certificate must name.
    ///
    /// # Errors
    ///
    /// [`Error::HandshakeTimeout`], [`Error::Closed`], [`Error::Garbage`],
    /// [`Error::BadMagic`], [`Error::VersionMismatch`], [`Error::BadHello`],
    /// [`Error::RoleRefused`], [`Error::Unauthorized`], [`Error::Rejected`] or
    /// [`Error::Io`]; the bad settings of [`bind`](ListenConfig::bind).
    pub async fn handshake<In, Out, S>(
        &self,
        stream: S,
        peer: impl Into<String>,
    ) -> Result<Connection<In, Out, S>, Error>
    where
        In: DeserializeOwned,
        Out: Serialize,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let peer = peer.into();
        let dialled = peer.clone();
        self.handshake_with(stream, peer, &dialled).await
    }

    async fn handshake_with<In, Out, S>(
        &self,
        stream: S,
        peer: String,
        dialled: &str,
    ) -> Result<Connection<In, Out, S>, Error>
    where
        In: DeserializeOwned,
        Out: Serialize,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.validate()?;
        let local = Local {
            name: &self.name,
            role: self.role,
            accept_roles: &self.accept_roles,
            token: self.token.as_ref(),
            tls: self.tls.as_ref(),
            max_frame_len: self.max_frame_len,
            handshake_timeout: self.handshake_timeout,
            nonces: self.nonces.as_ref(),
        };
        let (wire, info) = handshake::connect(stream, &peer, dialled, &local).await?;
        Ok(Connection::new(wire, info, self.max_frame_len))
    }

    /// Checks the settings as [`connect`](Self::connect) does, without connecting: a client
    /// can refuse a bad name or limit when it is configured rather than at its first call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] or [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<(), Error> {
        check_common(
            &self.name,
            &self.accept_roles,
            self.max_frame_len,
            self.handshake_timeout,
        )
    }
}

fn check_common(
    name: &str,
    accept_roles: &[Role],
    max_frame_len: usize,
    handshake_timeout: Duration,
) -> Result<(), Error> {
    handshake::check_name(name).map_err(|reason| Error::InvalidName {
        what: "endpoint name",
        name: name.to_owned(),
        reason,
    })?;
    if accept_roles.is_empty() {
        return Err(Error::InvalidConfig {
            reason: "accept_roles is empty, so no peer could ever connect; list at least one role"
                .to_owned(),
        });
    }
    if !(HANDSHAKE_MAX_FRAME_LEN as u64..=u64::from(u32::MAX)).contains(&(max_frame_len as u64)) {
        return Err(Error::InvalidConfig {
            reason: format!(
                "max_frame_len is {max_frame_len} bytes; use {HANDSHAKE_MAX_FRAME_LEN} to {} \
                 bytes",
                u32::MAX
            ),
        });
    }
    if handshake_timeout.is_zero() {
        return Err(Error::InvalidConfig {
            reason: "handshake_timeout is zero; allow at least a few hundred milliseconds"
                .to_owned(),
        });
    }
    Ok(())
}

/// Small frames go out at once: a vote waiting for Nagle's algorithm would add tens of
/// milliseconds to a checkpoint round.
fn set_nodelay(stream: &TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!("cannot disable Nagle's algorithm on a connection: {err}");
    }
}

/// Something that accepts connections for [`serve`](super::serve): a TCP listener, or a
/// simulated network's listener wrapped in a newtype.
pub trait Accept: Send + 'static {
    /// The connection type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection. Must be cancel-safe: [`serve`](super::serve) races it
    /// against shutdown.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address this acceptor listens on.
    ///
    /// # Errors
    ///
    /// When the operating system cannot tell.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        set_nodelay(&stream);
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// A checked configuration with an acceptor that is listening; hand it to
/// [`serve`](super::serve).
#[derive(Debug)]
pub struct Listener<A = TcpListener> {
    pub(crate) acceptor: A,
    pub(crate) local_addr: SocketAddr,
    pub(crate) config: ListenConfig,
}

impl<A> Listener<A> {
    /// The address the listener is bound to (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration in force.
    pub fn config(&self) -> &ListenConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn token() -> Secret {
        Secret::new("a long enough shared token").unwrap()
    }

    #[tokio::test]
    async fn non_loopback_addresses_need_a_token() {
        let open = ListenConfig::new(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let err = open.clone().bind().await.unwrap_err();
        assert!(matches!(err, Error::TokenRequired { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("--token") && message.contains("COHORT_TOKEN"),
            "{message}"
        );

        let v6 = ListenConfig::new(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
        assert!(matches!(
            v6.validate(v6.addr),
            Err(Error::TokenRequired { .. })
        ));
        // An IPv4-mapped loopback address is loopback.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
        assert!(ListenConfig::new(mapped).validate(mapped).is_ok());

        let listener = ListenConfig {
            token: Some(token()),
            ..open
        }
        .bind()
        .await
        .unwrap();
        assert_ne!(listener.local_addr().port(), 0);
    }

    #[tokio::test]
    async fn loopback_is_the_default_and_needs_no_token() {
        let config = ListenConfig::default();
        assert!(config.addr.ip().is_loopback());
        assert!(config.validate(config.addr).is_ok());
        let listener = ListenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .bind()
            .await
            .unwrap();
        assert!(listener.local_addr().ip().is_loopback());
    }

    #[test]
    fn bad_settings_are_refused() {
        let base = ListenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let cases = [
            ListenConfig {
                name: String::new(),
                ..base.clone()
            },
            ListenConfig {
                accept_roles: Vec::new(),
                ..base.clone()
            },
            ListenConfig {
                max_frame_len: 1024,
                ..base.clone()
            },
            ListenConfig {
                handshake_timeout: Duration::ZERO,
                ..base.clone()
            },
            ListenConfig {
                max_pending_handshakes: 0,
                ..base.clone()
            },
        ];
        for case in cases {
            assert!(case.validate(case.addr).is_err(), "{case:?}");
        }
        let mut client = ConnectConfig::new(Role::Node, "node\u{7}");
        assert!(matches!(
            client.validate(),
            Err(Error::InvalidName {
                what: "endpoint name",
                ..
            })
        ));
        client.name = "node".to_owned();
        assert!(client.validate().is_ok());
    }
}
