//! The one public error type of this crate.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use cohort_object_api::ErrorKind;

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on the wire, from binding a port to receiving a frame.
///
/// `peer` fields hold the remote address as text (a socket address for TCP), so every message
/// names the other side. The variants are grouped by what the caller should do about them, which
/// [`kind`](Self::kind) answers:
///
/// - **reconnect, maybe elsewhere** ([`ErrorKind::Transient`]): the network or the peer went
///   away ([`Connect`](Self::Connect), [`HandshakeTimeout`](Self::HandshakeTimeout),
///   [`SendTimeout`](Self::SendTimeout), [`Closed`](Self::Closed), [`Io`](Self::Io), [`Truncated`](Self::Truncated), and
///   [`Rejected`](Self::Rejected) when the server is shutting down or busy,
///   [`FrameBudget`](Self::FrameBudget), [`TooManyConnections`](Self::TooManyConnections));
///   a connection that failed
///   earlier is [`Unusable`](Self::Unusable) ([`ErrorKind::Closed`]): drop it;
/// - **fix the local configuration** ([`ErrorKind::Invalid`]):
///   [`InvalidConfig`](Self::InvalidConfig), [`InvalidName`](Self::InvalidName),
///   [`TokenRequired`](Self::TokenRequired), [`WeakToken`](Self::WeakToken),
///   [`Bind`](Self::Bind); and a message of this side that cannot be sent
///   ([`MessageTooLarge`](Self::MessageTooLarge), [`Encode`](Self::Encode): nothing was sent and
///   the connection stays usable);
/// - **fix the peer** ([`ErrorKind::Peer`]): it is not a cohort endpoint, runs another protocol
///   version, does not hold the same token, failed TLS (no certificate of this side's
///   authority, not valid for the address dialled, no TLS), has the wrong role, or broke the
///   framing or the message schema ([`Tls`](Self::Tls), [`Garbage`](Self::Garbage), [`BadMagic`](Self::BadMagic),
///   [`BadHello`](Self::BadHello), [`VersionMismatch`](Self::VersionMismatch),
///   [`Unauthorized`](Self::Unauthorized), [`RoleRefused`](Self::RoleRefused),
///   [`Rejected`](Self::Rejected), [`FrameTooLarge`](Self::FrameTooLarge),
///   [`Decode`](Self::Decode)); the connection is closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- reconnect, maybe elsewhere ----
    /// A TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address that was dialled.
        addr: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
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

    /// The peer did not take what was sent within the time allowed
    /// ([`Connection::send_within`](crate::Connection::send_within)): it is stalled (paused,
    /// overloaded, or behind a network that drops everything), so its receive window stayed
    /// full. The connection is unusable; reconnect.
    #[error(
        "{peer} took nothing of what was sent for {after:?}: it is stalled; the connection is closed, reconnect"
    )]
    SendTimeout {
        /// The remote address.
        peer: String,
        /// How long the send waited.
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

    // ---- fix the local configuration ----
    /// A setting is out of range or inconsistent with another.
    #[error("invalid wire configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, with the values involved and the accepted range.
        reason: String,
    },

    /// A local endpoint name, group name or member id broke the naming rules.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What was named: `endpoint name`.
        what: &'static str,
        /// The rejected name, escaped.
        name: String,
        /// Which rule it broke, and what to use instead.
        reason: &'static str,
    },

    /// A listener was configured on a non-loopback address without TLS or a shared token.
    #[error(
        "refusing to listen on {addr} without TLS or a token: a non-loopback address accepts \
         connections from other hosts; pass --tls-cert, --tls-key and --tls-ca (mutual TLS, the \
         recommended mode across hosts), or --token / COHORT_TOKEN on a trusted network (the \
         same value on every node and coordinator), or listen on a loopback address such as \
         127.0.0.1"
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

    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    // ---- fix the peer ----
    /// The TLS handshake failed: the peer's certificate is not signed by this side's authority
    /// or not valid for the address dialled, it presented none, it refused this side's, or it
    /// does not speak TLS.
    #[error("TLS with {peer} failed: {reason}; the connection is closed")]
    Tls {
        /// The remote address.
        peer: String,
        /// What is wrong, and what to fix.
        reason: String,
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

    // ---- drop the connection ----
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

    /// A frame from the peer would take the listener past its budget of bytes reserved for
    /// frames being received (over all connections): the connection is closed and the peer
    /// may reconnect. Nothing was reserved for the frame.
    #[error(
        "{peer} announced a {len}-byte frame, but this listener already reserves {in_flight} \
         bytes for frames being received, and its limit is {max}; the connection is closed \
         (the peer may reconnect; raise max_frame_bytes_in_flight if large frames are normal)"
    )]
    FrameBudget {
        /// The remote address.
        peer: String,
        /// The length the peer announced.
        len: usize,
        /// The bytes reserved for other frames at that moment.
        in_flight: usize,
        /// The listener's budget.
        max: usize,
    },

    /// The listener already serves as many connections of the peer's role as it allows: the
    /// handshake was refused with code `busy`, and the peer may retry later.
    #[error(
        "{peer} wants a {role} connection, but this listener already serves {limit} of them, its \
         limit; refused (code busy): close idle ones or raise the listener's limits"
    )]
    TooManyConnections {
        /// The remote address.
        peer: String,
        /// The role the peer announced.
        role: String,
        /// The listener's limit for that role.
        limit: usize,
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
}

impl Error {
    /// What to do about it; see the groups above.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect { .. }
            | Self::HandshakeTimeout { .. }
            | Self::SendTimeout { .. }
            | Self::Closed { .. }
            | Self::Io { .. }
            | Self::Truncated { .. } => ErrorKind::Transient,
            Self::Rejected { code, .. }
                if code == crate::handshake::REJECT_SHUTDOWN
                    || code == crate::handshake::REJECT_BUSY =>
            {
                ErrorKind::Transient
            }
            Self::FrameBudget { .. } | Self::TooManyConnections { .. } => ErrorKind::Transient,
            Self::Unusable { .. } => ErrorKind::Closed,
            Self::InvalidConfig { .. }
            | Self::InvalidName { .. }
            | Self::TokenRequired { .. }
            | Self::WeakToken { .. }
            | Self::Bind { .. }
            | Self::MessageTooLarge { .. }
            | Self::Encode { .. } => ErrorKind::Invalid,
            Self::Tls { .. }
            | Self::Garbage { .. }
            | Self::BadMagic { .. }
            | Self::VersionMismatch { .. }
            | Self::Unauthorized { .. }
            | Self::RoleRefused { .. }
            | Self::BadHello { .. }
            | Self::Rejected { .. }
            | Self::FrameTooLarge { .. }
            | Self::Decode { .. } => ErrorKind::Peer,
        }
    }

    /// Whether reconnecting (to the same or another address) may succeed without a change of
    /// configuration on either side: [`ErrorKind::Transient`].
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_sort_what_to_do() {
        let rejected = |code: &str| Error::Rejected {
            peer: "127.0.0.1:7000".into(),
            code: code.into(),
            reason: "because".into(),
        };
        assert!(rejected(crate::handshake::REJECT_SHUTDOWN).is_retryable());
        assert_eq!(rejected("role").kind(), ErrorKind::Peer);
        assert!(
            Error::Connect {
                addr: "127.0.0.1:1".into(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            }
            .is_retryable()
        );
        assert_eq!(
            Error::Unusable { peer: "p".into() }.kind(),
            ErrorKind::Closed
        );
        let config = Error::InvalidConfig {
            reason: "max_frame_len is 0".into(),
        };
        assert_eq!(config.kind(), ErrorKind::Invalid);
        assert_eq!(
            config.to_string(),
            "invalid wire configuration: max_frame_len is 0"
        );
    }
}
