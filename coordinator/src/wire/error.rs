//! The error type of the wire layer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything that can go wrong on a cohort connection, from binding a port to receiving a frame.
///
/// `peer` fields hold the remote address as text (a socket address for TCP), so every message
/// names the other side. The variants are grouped by what the caller should do about them:
///
/// - **fix the local configuration** (retrying will not help):
///   [`TokenRequired`](Self::TokenRequired), [`WeakToken`](Self::WeakToken),
///   [`InvalidName`](Self::InvalidName), [`InvalidConfig`](Self::InvalidConfig),
///   [`Bind`](Self::Bind);
/// - **fix the peer**: it is not a cohort endpoint, runs another protocol version, does not hold
///   the same token or has the wrong role ([`Garbage`](Self::Garbage),
///   [`BadMagic`](Self::BadMagic), [`BadHello`](Self::BadHello),
///   [`VersionMismatch`](Self::VersionMismatch),
///   [`Unauthorized`](Self::Unauthorized), [`RoleRefused`](Self::RoleRefused),
///   [`Rejected`](Self::Rejected) unless it [is retryable](Self::is_retryable));
/// - **drop the connection**: the peer broke the framing or the message schema
///   ([`FrameTooLarge`](Self::FrameTooLarge), [`Decode`](Self::Decode),
///   [`Truncated`](Self::Truncated)), or this side tried to send something it must not
///   ([`MessageTooLarge`](Self::MessageTooLarge), [`Encode`](Self::Encode), both of which leave
///   the connection usable);
/// - **reconnect, maybe elsewhere**: the network or the peer went away
///   ([`Connect`](Self::Connect), [`HandshakeTimeout`](Self::HandshakeTimeout),
///   [`Closed`](Self::Closed), [`Io`](Self::Io), [`Unusable`](Self::Unusable)).
///
/// [`is_retryable`](Self::is_retryable) sorts them for code that reconnects by itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A listener was configured on a non-loopback address without a shared token.
    #[error(
        "refusing to listen on {addr} without a token: a non-loopback address accepts connections \
         from other hosts; pass --token or set COHORT_TOKEN (the same value on every node and \
         coordinator), or listen on a loopback address such as 127.0.0.1"
    )]
    TokenRequired {
        /// The address that was refused.
        addr: SocketAddr,
    },

    /// The shared token is too short to resist guessing.
    #[error(
        "the token is {len} bytes long, shorter than the minimum of {min}: use a long random \
         value, such as the output of `openssl rand -hex 32`"
    )]
    WeakToken {
        /// The length of the rejected token.
        len: usize,
        /// The minimum length.
        min: usize,
    },

    /// A local endpoint name broke the naming rules.
    #[error("invalid endpoint name {name:?}: {reason}; use 1-128 printable characters")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A limit or timeout of the local configuration is out of range.
    #[error("invalid wire configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and the accepted range.
        reason: String,
    },

    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    /// A TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address that was dialled.
        addr: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    /// The peer sent bytes that are not a cohort handshake: another program or protocol is
    /// talking to this port, or the peer connected to the wrong port.
    #[error("{peer} is not speaking the cohort protocol: {detail}; the connection is closed")]
    Garbage {
        /// The remote address.
        peer: String,
        /// What was received, and what it looks like.
        detail: String,
    },

    /// The peer's handshake carried another magic string than `cohort`.
    #[error(
        "{peer} sent a handshake with magic {found:?} instead of \"cohort\": it is another \
         program; check the address"
    )]
    BadMagic {
        /// The remote address.
        peer: String,
        /// The magic received, shortened and escaped.
        found: String,
    },

    /// The two sides speak different versions of the wire protocol.
    #[error(
        "cohort wire protocol mismatch with {peer}: this side speaks version {ours}, the peer \
         ({peer_software}) speaks version {theirs}; run the same cohort release on every node \
         and coordinator (upgrade the side with the older version)"
    )]
    VersionMismatch {
        /// The remote address.
        peer: String,
        /// The protocol version of this side.
        ours: u16,
        /// The protocol version of the peer.
        theirs: u16,
        /// The software the peer announced, such as `cohort 0.1.0`.
        peer_software: String,
    },

    /// The handshake's token check failed, on either side.
    #[error("authentication with {peer} failed: {reason}")]
    Unauthorized {
        /// The remote address.
        peer: String,
        /// Which side lacks the token or holds another one, and how to fix it.
        reason: String,
    },

    /// The peer connected with a role that this endpoint does not talk to.
    #[error(
        "{peer} announced itself as a {role}, which this endpoint does not accept (it accepts: \
         {accepted}); check which address the peer was given"
    )]
    RoleRefused {
        /// The remote address.
        peer: String,
        /// The role the peer announced.
        role: String,
        /// The roles this endpoint accepts.
        accepted: String,
    },

    /// The peer's hello carried the cohort magic and version but a malformed field, or the
    /// server's reply to a hello was not a verdict.
    #[error("{peer} sent a malformed cohort handshake: {reason}")]
    BadHello {
        /// The remote address.
        peer: String,
        /// Which field is wrong, and how.
        reason: String,
    },

    /// The server rejected the handshake for another reason than version or token.
    #[error("{peer} rejected the handshake ({code}): {reason}")]
    Rejected {
        /// The remote address.
        peer: String,
        /// The machine-readable rejection code, such as `shutdown` or `role`.
        code: String,
        /// The server's explanation.
        reason: String,
    },

    /// The peer announced a frame larger than this side accepts. Nothing was allocated for it.
    #[error(
        "{peer} announced a {len}-byte frame, over this side's {max}-byte limit; the connection \
         is closed (if such large messages are intended, raise max_frame_len on both sides)"
    )]
    FrameTooLarge {
        /// The remote address.
        peer: String,
        /// The length the peer announced.
        len: u64,
        /// The limit in force.
        max: usize,
    },

    /// A message of this side encodes to more bytes than the peer accepts. Nothing was sent and
    /// the connection stays usable.
    #[error(
        "cannot send a {len}-byte message to {peer}: over the {max}-byte frame limit of this \
         connection; the coordinator carries votes and metadata only, never state bytes"
    )]
    MessageTooLarge {
        /// The remote address.
        peer: String,
        /// The encoded length of the message.
        len: usize,
        /// The smaller of this side's and the peer's limit.
        max: usize,
    },

    /// A frame from the peer did not decode as the expected message type.
    #[error("{peer} sent a frame that does not decode as {expected}: {source}")]
    Decode {
        /// The remote address.
        peer: String,
        /// The Rust type that was expected.
        expected: &'static str,
        /// The msgpack decoder's complaint.
        #[source]
        source: rmp_serde::decode::Error,
    },

    /// A message of this side could not be encoded. Nothing was sent and the connection stays
    /// usable.
    #[error("cannot encode a message for {peer}: {source}")]
    Encode {
        /// The remote address.
        peer: String,
        /// The msgpack encoder's complaint.
        #[source]
        source: rmp_serde::encode::Error,
    },

    /// The peer closed the connection in the middle of a frame.
    #[error(
        "{peer} closed the connection in the middle of a frame ({buffered} bytes of it received)"
    )]
    Truncated {
        /// The remote address.
        peer: String,
        /// How many bytes of the unfinished frame had arrived, its length prefix included.
        buffered: usize,
    },

    /// The peer did not finish the handshake in time (a stalled network, or a client that holds
    /// connections open without speaking).
    #[error("{peer} did not complete the handshake within {after:?}; the connection is closed")]
    HandshakeTimeout {
        /// The remote address.
        peer: String,
        /// The handshake timeout in force.
        after: Duration,
    },

    /// The peer closed the connection before the exchange was complete.
    #[error("{peer} closed the connection during the {during}")]
    Closed {
        /// The remote address.
        peer: String,
        /// What was in progress, such as `handshake`.
        during: &'static str,
    },

    /// Reading from or writing to the connection failed.
    #[error("connection with {peer} failed: {source}")]
    Io {
        /// The remote address.
        peer: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    /// The connection failed earlier, and was used again.
    #[error("the connection with {peer} failed earlier; drop it and reconnect")]
    Unusable {
        /// The remote address.
        peer: String,
    },
}

impl WireError {
    /// Whether reconnecting (to the same or another address) may succeed without a change of
    /// configuration on either side.
    ///
    /// True for network failures, timeouts, closed connections and a server that is shutting
    /// down; false for everything that needs a person to fix a configuration or a peer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::HandshakeTimeout { .. }
            | Self::Closed { .. }
            | Self::Truncated { .. }
            | Self::Io { .. }
            | Self::Unusable { .. } => true,
            Self::Rejected { code, .. } => code == super::handshake::REJECT_SHUTDOWN,
            Self::TokenRequired { .. }
            | Self::WeakToken { .. }
            | Self::InvalidName { .. }
            | Self::InvalidConfig { .. }
            | Self::Bind { .. }
            | Self::Garbage { .. }
            | Self::BadMagic { .. }
            | Self::BadHello { .. }
            | Self::VersionMismatch { .. }
            | Self::Unauthorized { .. }
            | Self::RoleRefused { .. }
            | Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::Decode { .. }
            | Self::Encode { .. } => false,
        }
    }
}
