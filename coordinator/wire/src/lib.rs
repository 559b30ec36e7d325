//! The cohort wire: typed, authenticated connections between coordinators, nodes, the CLI,
//! and the members and clients of fault-tolerance groups.
//!
//! This layer moves messages; it knows nothing of checkpoints. The session layer above it picks
//! the message types, runs heartbeats (racing [`Connection::recv`], which is cancel-safe,
//! against a timer) and reconnects.
//!
//! # Frames
//!
//! A connection is a byte stream (TCP in production; anything `AsyncRead + AsyncWrite` in
//! tests) cut into frames by tokio-util's `LengthDelimitedCodec`: a 4-byte big-endian length,
//! then that many bytes of one msgpack value, structs encoded as maps with named fields
//! (`rmp_serde::to_vec_named`). A length above the receiver's limit is refused before any
//! buffer is reserved for it, and the connection is closed. The limit is 64 KiB
//! ([`HANDSHAKE_MAX_FRAME_LEN`]) until the handshake is done, then
//! [`max_frame_len`](ListenConfig::max_frame_len) (16 MiB by default), lowered per role by
//! [`RoleLimits`] (64 KiB for the CLI): the coordinator carries votes and metadata, never
//! state bytes. A frame must hold exactly one value, nested at most 64 deep. A listener
//! charges every frame over 64 KiB that it is receiving to one budget
//! ([`max_frame_bytes_in_flight`](ListenConfig::max_frame_bytes_in_flight)); a frame that
//! does not fit closes its connection.
//!
//! # TLS
//!
//! With a [`TlsConfig`] on both sides ([`ListenConfig::tls`], [`ConnectConfig::tls`]) every
//! connection runs over TLS 1.3 (rustls), before anything else is said: mutual, so each side
//! presents its certificate and checks that the other's is signed by the configured authority,
//! and the client checks that the server's names the host it dialled (ALPN `cohort/1`). The
//! frames after the handshake are encrypted and integrity-protected: a flipped bit ends the
//! connection. A peer without a valid certificate never reaches the cohort handshake
//! ([`Error::Tls`] on both sides, saying what is wrong). This is the recommended mode across
//! hosts; `cohort certs` makes an authority and certificates.
//!
//! # Handshake
//!
//! ```text
//! server → client  hello   { magic: "cohort", protocol_version, role, name, software,
//!                            nonce: 32 random bytes, max_frame_len }
//! client → server  hello   { the same fields, with the client's own nonce,
//!                            proof: HMAC-SHA256(token, client label ‖ transcript) if a token is set }
//! server → client  welcome { proof: HMAC-SHA256(token, server label ‖ transcript) if a token is set }
//!               or rejected { code, reason }, and the server closes
//! ```
//!
//! The transcript is the protocol version, both nonces, and both roles and names, each
//! length-prefixed; over TLS, also 32 bytes exported from the TLS session (label
//! `EXPORTER-cohort-wire-v1 handshake binding`), so that a proof is bound to the session it was
//! made in: a relay that terminates TLS on both sides (even with a certificate of the same
//! authority) cannot pass a client's proof on to the server. So the token never crosses the
//! wire, a recorded proof is useless on another connection, and each side learns that the
//! other holds the token (a node cannot be lured to a fake coordinator that lacks it). Proofs
//! are compared in constant time. A non-loopback listener needs TLS or a token
//! ([`Error::TokenRequired`]); the two sides must agree on each: both use TLS or neither, and
//! both have the same token or neither.
//!
//! Every hello field but `magic` and `protocol_version` may be missing, so a peer of another
//! version is always told the two version numbers rather than "garbage". The whole handshake,
//! TLS included, runs under [`handshake_timeout`](ListenConfig::handshake_timeout), and at most
//! [`max_pending_handshakes`](ListenConfig::max_pending_handshakes) run at once: beyond that
//! the one that waited longest is closed (code `busy`). A peer that passes it takes one of its
//! role's [`max_connections`](RoleLimits::max_connections) until its handler returns, or is
//! refused with code `busy`.
//!
//! Without TLS the token authenticates the handshake, not the frames after it: they are neither
//! encrypted nor signed. That mode is for loopback and trusted networks; across an untrusted
//! one use TLS. The failure model (ARCHITECTURE.md) excludes peers that hold the credentials
//! and lie.
//!
//! # Example
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddr};
//! use cohort_wire::{self as wire, CancellationToken, ConnectConfig, ListenConfig, Role};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cohort_wire::Error> {
//! let listener = ListenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).bind().await?;
//! let addr = listener.local_addr();
//! let shutdown = CancellationToken::new();
//! // An echo server: every `String` received is sent back.
//! let server = tokio::spawn(wire::serve(
//!     listener,
//!     |mut conn: wire::Connection<String, String>, _shutdown| async move {
//!         while let Some(text) = conn.recv().await? {
//!             conn.send(&text).await?;
//!         }
//!         Ok::<(), cohort_wire::Error>(())
//!     },
//!     shutdown.clone(),
//! ));
//!
//! let mut conn = ConnectConfig::new(Role::Node, "node-1")
//!     .connect::<String, String>(addr)
//!     .await?;
//! assert_eq!(conn.peer().role, Role::Coordinator);
//! conn.send(&"vote yes".to_owned()).await?;
//! assert_eq!(conn.recv().await?.as_deref(), Some("vote yes"));
//!
//! conn.close().await?;
//! shutdown.cancel();
//! server.await.expect("the server task ended cleanly");
//! # Ok(())
//! # }
//! ```

mod advertise;
mod codec;
mod config;
mod connection;
mod error;
pub(crate) mod handshake;
mod replay;
mod secret;
mod serve;
mod tls;
mod transport;

pub use advertise::advertised_address;
pub use config::{
    Accept, ConnectConfig, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_FRAME_BYTES_IN_FLIGHT,
    DEFAULT_MAX_FRAME_LEN, DEFAULT_PORT, ListenConfig, Listener, RoleLimits,
};
pub use connection::{Connection, Inbound, RecvHalf, SendHalf};
pub use error::{Error, Result};
pub use handshake::{
    HANDSHAKE_MAX_FRAME_LEN, MAGIC, NONCE_LEN, NonceSource, OsNonces, PROTOCOL_VERSION, PeerInfo,
    Role, SeededNonces,
};
pub use replay::{REPLAY_PEER, Replay, replay_as_server};
pub use secret::{Secret, TOKEN_ENV};
pub use serve::serve;
pub use tls::TlsConfig;
/// Re-exported: [`serve`] takes one to shut down, and hands a child of it to each handler.
pub use tokio_util::sync::CancellationToken;
pub use transport::{
    AcceptFuture, BindFuture, BoxAcceptor, BoxStream, ByteStream, ConnectFuture, Connector,
    DynAccept, Network, TcpConnector,
};
