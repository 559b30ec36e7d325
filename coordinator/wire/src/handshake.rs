//! The versioned, authenticated handshake that opens every connection.
//!
//! See the [module documentation](super) for the exchange. Everything here runs under the
//! handshake timeout and with the small handshake frame limit, so a peer that has not proved
//! anything yet can hold neither time nor memory.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{self, CodecError, FrameBudget, FrameCodec};
use super::config::RoleLimits;
use super::tls::{self, Transport};
use super::{Secret, TlsConfig};
use crate::Error;

/// The magic string that opens every hello.
pub const MAGIC: &str = "cohort";

/// The version of the wire protocol this build speaks. Both sides must speak the same one: a
/// peer of another version is refused at the handshake, naming both, rather than failing on
/// a frame it does not know. 3: a node counts its clean objects in one `Clean` frame, and a
/// release names the line its objects were restored to.
pub const PROTOCOL_VERSION: u16 = 4;

/// The length in bytes of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;

/// The largest handshake frame, and the smallest accepted `max_frame_len`. Until a peer has
/// finished the handshake it cannot make this side buffer more than this.
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 64 * 1024;

/// Rejection codes of the `rejected` verdict. They are part of the wire format.
pub(crate) const REJECT_GARBAGE: &str = "garbage";
pub(crate) const REJECT_MAGIC: &str = "magic";
pub(crate) const REJECT_VERSION: &str = "version";
pub(crate) const REJECT_MALFORMED: &str = "malformed";
pub(crate) const REJECT_ROLE: &str = "role";
pub(crate) const REJECT_AUTH: &str = "auth";
pub(crate) const REJECT_TIMEOUT: &str = "timeout";
pub(crate) const REJECT_SHUTDOWN: &str = "shutdown";
/// The listener serves as many connections of the peer's role as it allows, or had to make
/// room for newer handshakes: retry later.
pub(crate) const REJECT_BUSY: &str = "busy";

/// Domain-separation labels, so that a client proof can never pass as a server proof.
const CLIENT_PROOF_LABEL: &[u8] = b"cohort wire v1: client proof";
const SERVER_PROOF_LABEL: &[u8] = b"cohort wire v1: server proof";

/// How long a rejecting server tries to deliver its verdict.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long, and how many bytes, a rejecting server reads and discards after its verdict, so
/// that the kernel closes with FIN rather than RST and the peer gets to read the verdict.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// The longest peer-supplied text (software, rejection reason) copied into errors and logs.
const MAX_PEER_TEXT: usize = 256;
/// The longest endpoint name.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// What an endpoint is, announced in its hello. A listener accepts a configured set of roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A participant process that hosts objects and answers the coordinator.
    Node,
    /// The coordinator service (leader or standby).
    Coordinator,
    /// A node talking to another node, for object-to-object messages.
    Peer,
    /// The `cohort` command line (status, checkpoint now).
    Cli,
    /// An application's proxy to a replicated service
    /// ([`GroupClient`](https://docs.rs/cohort-replication)): it sends requests to the
    /// service listener of a group member, which serves nothing else on that port.
    Client,
}

impl Role {
    /// Every role, for a listener that accepts anyone.
    pub const ALL: [Role; 5] = [
        Role::Node,
        Role::Coordinator,
        Role::Peer,
        Role::Cli,
        Role::Client,
    ];

    /// The role's name on the wire and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Coordinator => "coordinator",
            Role::Peer => "peer",
            Role::Cli => "cli",
            Role::Client => "client",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// Its place in [`Role::ALL`].
    pub(crate) const fn index(self) -> usize {
        match self {
            Role::Node => 0,
            Role::Coordinator => 1,
            Role::Peer => 2,
            Role::Cli => 3,
            Role::Client => 4,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is on the other end of an established connection, as its handshake showed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The remote address as text (a socket address for TCP).
    pub addr: String,
    /// The role the peer announced.
    pub role: Role,
    /// The name the peer announced; validated, printable.
    pub name: String,
    /// The wire protocol version, equal to [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The software the peer announced, such as `cohort 0.1.0`.
    pub software: String,
    /// Whether the peer proved who it is: with the shared token, or with a certificate of this
    /// side's authority (TLS). False only where neither is configured (a loopback deployment).
    pub authenticated: bool,
    /// Whether the connection runs over TLS: frames are encrypted and integrity-protected.
    pub encrypted: bool,
    /// The largest frame the peer accepts.
    pub max_frame_len: usize,
}

/// A source of handshake nonces. Nonces must be unpredictable in production, and may be
/// seeded in tests to make runs repeatable.
pub trait NonceSource: Send + Sync + fmt::Debug {
    /// Fills `nonce` with fresh bytes.
    fn fill(&self, nonce: &mut [u8; NONCE_LEN]);
}

/// Nonces from the thread-local cryptographic generator, seeded by the operating system. The
/// default.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsNonces;

impl NonceSource for OsNonces {
    #[allow(
        clippy::disallowed_methods,
        reason = "the production nonce source; simulations inject SeededNonces"
    )]
    fn fill(&self, nonce: &mut [u8; NONCE_LEN]) {
        rand::rng().fill_bytes(nonce);
    }
}

/// Nonces from a seeded generator: repeatable, hence for tests and simulations only.
#[derive(Debug)]
pub struct SeededNonces(Mutex<StdRng>);

impl SeededNonces {
    /// A generator that yields the same nonces for the same seed.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }
}

impl NonceSource for SeededNonces {
    fn fill(&self, nonce: &mut [u8; NONCE_LEN]) {
        // A panic elsewhere cannot leave a generator half-updated in a way that matters here.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fill_bytes(nonce);
    }
}

/// The first frame each way. Every field but `magic` and `protocol_version` has a default, so
/// that a hello of another version still decodes far enough to report the mismatch.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    magic: String,
    protocol_version: u16,
    #[serde(default)]
    role: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    software: String,
    #[serde(default)]
    nonce: Bytes,
    /// The client's HMAC; always absent in the server's hello, which speaks first.
    #[serde(default)]
    proof: Option<Bytes>,
    #[serde(default)]
    max_frame_len: u64,
}

/// The parts of a hello that every version must keep.
#[derive(Deserialize)]
struct HelloHead {
    magic: String,
    protocol_version: u16,
}

#[derive(Deserialize)]
struct HelloSoftware {
    #[serde(default)]
    software: String,
}

/// The server's answer to the client's hello.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    /// Accepted; `proof` is the server's HMAC when a token is in use.
    Welcome {
        #[serde(default)]
        proof: Option<Bytes>,
    },
    /// Refused; the server closes the connection after sending this.
    Rejected { code: String, reason: String },
}

/// A validated hello.
struct PeerHello {
    role: Role,
    name: String,
    software: String,
    nonce: Bytes,
    proof: Option<Bytes>,
    max_frame_len: usize,
}

/// The local side of a handshake, borrowed from a listen or connect configuration.
pub(crate) struct Local<'a> {
    pub(crate) name: &'a str,
    pub(crate) role: Role,
    pub(crate) accept_roles: &'a [Role],
    pub(crate) token: Option<&'a Secret>,
    pub(crate) tls: Option<&'a TlsConfig>,
    pub(crate) max_frame_len: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) nonces: &'a dyn NonceSource,
}

impl Local<'_> {
    /// Whether a peer that passes the handshake has proved who it is.
    fn authenticates(&self) -> bool {
        self.token.is_some() || self.tls.is_some()
    }
}

pub(crate) type Wire<S> = Framed<Transport<S>, FrameCodec>;

/// How many established connections of each role a listener serves, against its limits.
#[derive(Debug)]
pub(crate) struct Seats {
    limits: RoleLimits,
    taken: [AtomicUsize; Role::ALL.len()],
}

/// One established connection's place among its listener's [`Seats`], given back on drop.
#[derive(Debug)]
pub(crate) struct Seat {
    seats: Arc<Seats>,
    role: Role,
}

impl Seats {
    pub(crate) fn new(limits: RoleLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            taken: std::array::from_fn(|_| AtomicUsize::new(0)),
        })
    }

    /// A seat for a connection of `role`, if the limit allows one more.
    fn take(self: &Arc<Self>, role: Role) -> Option<Seat> {
        let limit = self.limits.max_connections(role);
        self.taken[role.index()]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Seat {
            seats: Arc::clone(self),
            role,
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.seats.taken[self.role.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the handshakes of one listener share: the seats of established connections, the
/// budget of frame bytes being received, and the token that closes this handshake to make
/// room for newer ones.
pub(crate) struct Admission<'a> {
    pub(crate) seats: &'a Arc<Seats>,
    pub(crate) budget: &'a Arc<FrameBudget>,
    pub(crate) evict: &'a CancellationToken,
}

/// Checks an endpoint name: it shows up in logs and in the coordinator's state table.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty; use 1-128 printable characters")
    } else if name.len() > MAX_NAME_LEN {
        Err("it is longer than 128 bytes; use 1-128 printable characters")
    } else if name.chars().any(char::is_control) {
        Err("it holds a control character; use 1-128 printable characters")
    } else {
        Ok(())
    }
}

/// Converts a framing error into the public error, naming the peer.
pub(crate) fn codec_error(err: CodecError, peer: &str) -> Error {
    match err {
        CodecError::TooLarge { len, max, .. } => Error::FrameTooLarge {
            peer: peer.to_owned(),
            len,
            max,
        },
        CodecError::Truncated { buffered } => Error::Truncated {
            peer: peer.to_owned(),
            buffered,
        },
        CodecError::OverBudget {
            len,
            in_flight,
            max,
        } => Error::FrameBudget {
            peer: peer.to_owned(),
            len,
            in_flight,
            max,
        },
        CodecError::Io(source) => Error::Io {
            peer: peer.to_owned(),
            source,
        },
    }
}

/// Peer-supplied text made safe for a log line: control characters escaped, length capped.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX_PEER_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn software() -> String {
    format!("cohort {}", env!("CARGO_PKG_VERSION"))
}

fn our_hello(local: &Local<'_>, nonce: &[u8; NONCE_LEN], proof: Option<Bytes>) -> Hello {
    Hello {
        magic: MAGIC.to_owned(),
        protocol_version: PROTOCOL_VERSION,
        role: local.role.as_str().to_owned(),
        name: local.name.to_owned(),
        software: software(),
        nonce: Bytes::copy_from_slice(nonce),
        proof,
        max_frame_len: local.max_frame_len as u64,
    }
}

/// Reads a handshake frame. An oversized one means the peer is not speaking cohort at all.
async fn read_handshake_frame<S>(wire: &mut Wire<S>, peer: &str) -> Result<BytesMut, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match wire.next().await {
        Some(Ok(frame)) => Ok(frame),
        None => Err(Error::Closed {
            peer: peer.to_owned(),
            during: "handshake",
        }),
        Some(Err(CodecError::TooLarge { len, max, prefix })) => Err(Error::Garbage {
            peer: peer.to_owned(),
            detail: format!(
                "{}, read as a length prefix of {len} bytes where a hello is at most {max}",
                codec::describe_foreign(&prefix)
            ),
        }),
        Some(Err(err)) => Err(codec_error(err, peer)),
    }
}

async fn send_handshake_frame<S, T>(wire: &mut Wire<S>, msg: &T, peer: &str) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = codec::encode(msg).map_err(|source| Error::Encode {
        peer: peer.to_owned(),
        source,
    })?;
    wire.send(frame).await.map_err(|err| codec_error(err, peer))
}

/// Decodes and validates a hello, the same way on both sides.
fn parse_hello(frame: &[u8], peer: &str) -> Result<PeerHello, Error> {
    let garbage = |detail: String| Error::Garbage {
        peer: peer.to_owned(),
        detail,
    };
    let head: HelloHead = codec::decode(frame).map_err(|err| {
        let shown = &frame[..frame.len().min(16)];
        garbage(format!(
            "its first frame is not a cohort hello ({err}); {}",
            codec::describe_foreign(shown)
        ))
    })?;
    if head.magic != MAGIC {
        return Err(Error::BadMagic {
            peer: peer.to_owned(),
            found: sanitize(&head.magic.chars().take(32).collect::<String>()),
        });
    }
    if head.protocol_version != PROTOCOL_VERSION {
        let software = codec::decode::<HelloSoftware>(frame)
            .ok()
            .map(|s| sanitize(&s.software))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown software".to_owned());
        return Err(Error::VersionMismatch {
            peer: peer.to_owned(),
            ours: PROTOCOL_VERSION,
            theirs: head.protocol_version,
            peer_software: software,
        });
    }
    let malformed = |reason: String| Error::BadHello {
        peer: peer.to_owned(),
        reason,
    };
    let hello: Hello = codec::decode(frame).map_err(|err| malformed(err.to_string()))?;
    let role = Role::parse(&hello.role)
        .ok_or_else(|| malformed(format!("unknown role {:?}", sanitize(&hello.role))))?;
    check_name(&hello.name).map_err(|reason| {
        malformed(format!(
            "invalid name {:?}: {reason}",
            sanitize(&hello.name)
        ))
    })?;
    if hello.nonce.len() != NONCE_LEN {
        return Err(malformed(format!(
            "a {}-byte nonce where {NONCE_LEN} bytes are required",
            hello.nonce.len()
        )));
    }
    let max_frame_len = usize::try_from(hello.max_frame_len)
        .ok()
        .filter(|&max| max >= HANDSHAKE_MAX_FRAME_LEN)
        .ok_or_else(|| {
            malformed(format!(
                "a max frame length of {} bytes, below the minimum of {HANDSHAKE_MAX_FRAME_LEN}",
                hello.max_frame_len
            ))
        })?;
    Ok(PeerHello {
        role,
        name: hello.name,
        software: sanitize(&hello.software),
        nonce: hello.nonce,
        proof: hello.proof,
        max_frame_len,
    })
}

/// The facts both proofs cover: both nonces, both identities and the protocol version, so a
/// proof cannot be replayed on another connection or passed off for another endpoint.
struct Transcript<'a> {
    server_nonce: &'a [u8],
    client_nonce: &'a [u8],
    server_role: Role,
    server_name: &'a str,
    client_role: Role,
    client_name: &'a str,
    /// With TLS, a value exported from the session: a proof made in one session is worthless
    /// in another (a relay that terminates TLS on both sides cannot forward it).
    binding: Option<&'a [u8]>,
}

impl Transcript<'_> {
    fn mac(&self, token: &Secret, label: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.expose())
            .expect("HMAC accepts keys of any length");
        let parts: [&[u8]; 8] = [
            label,
            &PROTOCOL_VERSION.to_be_bytes(),
            self.server_nonce,
            self.client_nonce,
            self.server_role.as_str().as_bytes(),
            self.server_name.as_bytes(),
            self.client_role.as_str().as_bytes(),
            self.client_name.as_bytes(),
        ];
        // Without TLS the transcript is what it always was, so plain peers of earlier releases
        // still agree; with TLS (which they cannot speak) the binding comes last.
        for part in parts.into_iter().chain(self.binding) {
            // Length-prefixed, so that no two different transcripts hash alike. Parts are
            // bounded by the handshake frame limit, far below u32::MAX.
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn prove(&self, token: &Secret, label: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&self.mac(token, label).finalize().into_bytes())
    }

    /// Checks a proof in constant time.
    fn verify(&self, token: &Secret, label: &[u8], proof: &[u8]) -> bool {
        self.mac(token, label).verify_slice(proof).is_ok()
    }
}

/// Why the server refuses a connection.
enum Refusal {
    /// Tell the peer why, then close.
    Reject {
        code: &'static str,
        reason: String,
        error: Box<Error>,
    },
    /// The connection is gone or unusable: just close.
    Fail(Error),
}

/// Why a handshake was cut short before its outcome.
enum CutShort {
    Shutdown,
    Evicted,
}

/// Runs the server side of the handshake on a fresh connection. An accepted peer gets a
/// [`Seat`] among the listener's connections of its role (none left: refused with code
/// `busy`), its role's frame limit, and frames charged to the listener's budget.
///
/// Returns `Ok(None)` when `shutdown` fired first, or the handshake was evicted to make room
/// for newer ones; the peer was told so.
pub(crate) async fn accept<S>(
    stream: S,
    peer: &str,
    local: &Local<'_>,
    shutdown: &CancellationToken,
    admission: Admission<'_>,
) -> Result<Option<(Wire<S>, PeerInfo, Seat)>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // One deadline for the TLS handshake and the cohort handshake together.
    let deadline = tokio::time::Instant::now() + local.handshake_timeout;
    let timed_out = || Error::HandshakeTimeout {
        peer: peer.to_owned(),
        after: local.handshake_timeout,
    };
    let stream = match local.tls {
        None => Transport::Plain(stream),
        Some(config) => {
            let handshake = tokio::time::timeout_at(deadline, tls::accept(config, stream, peer));
            let outcome = tokio::select! {
                outcome = handshake => outcome,
                // Nothing to tell a peer that has not finished TLS: just close.
                () = shutdown.cancelled() => return Ok(None),
            };
            match outcome {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    log_refusal(&error);
                    return Err(error);
                }
                Err(_elapsed) => {
                    let error = timed_out();
                    log_refusal(&error);
                    return Err(error);
                }
            }
        }
    };
    let binding = stream.binding();
    let mut wire = Framed::new(stream, FrameCodec::new(HANDSHAKE_MAX_FRAME_LEN));
    let outcome = {
        let exchange = tokio::time::timeout_at(
            deadline,
            server_exchange(
                &mut wire,
                peer,
                local,
                admission.seats,
                binding.as_ref().map(|b| &b[..]),
            ),
        );
        tokio::select! {
            result = exchange => Ok(result.unwrap_or_else(|_elapsed| Err(Refusal::Reject {
                code: REJECT_TIMEOUT,
                reason: format!(
                    "the handshake did not complete within {:?}",
                    local.handshake_timeout
                ),
                error: Box::new(timed_out()),
            }))),
            () = shutdown.cancelled() => Err(CutShort::Shutdown),
            () = admission.evict.cancelled() => Err(CutShort::Evicted),
        }
    };
    match outcome {
        Err(CutShort::Shutdown) => {
            let reason = "the server is shutting down; reconnect, possibly to another coordinator";
            reject(&mut wire, REJECT_SHUTDOWN, reason, true).await;
            Ok(None)
        }
        Err(CutShort::Evicted) => {
            // Routine under a flood of silent connections: not worth a warning each.
            tracing::debug!(%peer, "closed the handshake that waited longest, to make room for a newer one");
            let reason = "too many connections are completing their handshake at once, and this \
                          one had waited longest; reconnect";
            // No linger: a silent connection would hold its descriptor for it.
            reject(&mut wire, REJECT_BUSY, reason, false).await;
            Ok(None)
        }
        Ok(Ok((info, seat))) => {
            let max = local
                .max_frame_len
                .min(admission.seats.limits.max_frame_len(info.role));
            wire.codec_mut().set_max(max);
            wire.codec_mut().set_budget(Arc::clone(admission.budget));
            Ok(Some((wire, info, seat)))
        }
        Ok(Err(Refusal::Reject {
            code,
            reason,
            error,
        })) => {
            // Logged before the verdict goes out: delivering it may take a while.
            log_refusal(&error);
            reject(&mut wire, code, &reason, true).await;
            Err(*error)
        }
        Ok(Err(Refusal::Fail(error))) => {
            log_refusal(&error);
            Err(error)
        }
    }
}

/// A `warn` line naming the peer and what was wrong, except for a peer that closed without a
/// byte (port scanners, TCP health checks), which only gets a `debug` line.
fn log_refusal(error: &Error) {
    match error {
        Error::Closed { peer, .. } => {
            tracing::debug!(%peer, %error, "connection closed before the handshake");
        }
        Error::Tls { peer, .. }
        | Error::Garbage { peer, .. }
        | Error::BadMagic { peer, .. }
        | Error::VersionMismatch { peer, .. }
        | Error::BadHello { peer, .. }
        | Error::Unauthorized { peer, .. }
        | Error::RoleRefused { peer, .. }
        | Error::HandshakeTimeout { peer, .. }
        | Error::Truncated { peer, .. }
        | Error::Io { peer, .. }
        | Error::Encode { peer, .. } => {
            tracing::warn!(%peer, %error, "refused a connection");
        }
        error => tracing::warn!(%error, "refused a connection"),
    }
}

async fn server_exchange<S>(
    wire: &mut Wire<S>,
    peer: &str,
    local: &Local<'_>,
    seats: &Arc<Seats>,
    binding: Option<&[u8]>,
) -> Result<(PeerInfo, Seat), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut server_nonce = [0u8; NONCE_LEN];
    local.nonces.fill(&mut server_nonce);
    // The server speaks first, so that the client can prove itself over a fresh nonce.
    send_handshake_frame(wire, &our_hello(local, &server_nonce, None), peer)
        .await
        .map_err(Refusal::Fail)?;

    let frame = read_handshake_frame(wire, peer)
        .await
        .map_err(|error| match error {
            Error::Garbage { .. } => Refusal::Reject {
                code: REJECT_GARBAGE,
                reason: "this is a cohort endpoint; it expected a cohort hello".to_owned(),
                error: Box::new(error),
            },
            error => Refusal::Fail(error),
        })?;
    let client = parse_hello(&frame, peer).map_err(|error| {
        let (code, reason) = match &error {
            Error::BadMagic { .. } => (
                REJECT_MAGIC,
                "this is a cohort endpoint; the hello carried another magic".to_owned(),
            ),
            Error::VersionMismatch { theirs, .. } => (
                REJECT_VERSION,
                format!(
                    "this server ({}) speaks cohort wire protocol version {PROTOCOL_VERSION}, \
                     the client version {theirs}; run the same cohort release on every node and \
                     coordinator",
                    software()
                ),
            ),
            Error::BadHello { reason, .. } => {
                (REJECT_MALFORMED, format!("malformed hello: {reason}"))
            }
            _ => (
                REJECT_GARBAGE,
                "this is a cohort endpoint; it expected a cohort hello".to_owned(),
            ),
        };
        Refusal::Reject {
            code,
            reason,
            error: Box::new(error),
        }
    })?;

    if !local.accept_roles.contains(&client.role) {
        let accepted = role_list(local.accept_roles);
        return Err(Refusal::Reject {
            code: REJECT_ROLE,
            reason: format!(
                "this endpoint ({} {}) serves {accepted} connections only, not a {}; check which \
                 address the {} was given",
                local.role, local.name, client.role, client.role
            ),
            error: Box::new(Error::RoleRefused {
                peer: peer.to_owned(),
                role: client.role.to_string(),
                accepted,
            }),
        });
    }

    let transcript = Transcript {
        server_nonce: &server_nonce,
        client_nonce: &client.nonce,
        server_role: local.role,
        server_name: local.name,
        client_role: client.role,
        client_name: &client.name,
        binding,
    };
    let unauthorized = |to_peer: &str, to_us: &str| Refusal::Reject {
        code: REJECT_AUTH,
        reason: to_peer.to_owned(),
        error: Box::new(Error::Unauthorized {
            peer: peer.to_owned(),
            reason: to_us.to_owned(),
        }),
    };
    let server_proof = match (local.token, &client.proof) {
        (Some(token), Some(proof)) => {
            if !transcript.verify(token, CLIENT_PROOF_LABEL, proof) {
                return Err(unauthorized(
                    "the server holds another token than this client: give both the same \
                     --token or COHORT_TOKEN",
                    "the client's token proof does not match this server's token: give both the \
                     same --token or COHORT_TOKEN",
                ));
            }
            Some(transcript.prove(token, SERVER_PROOF_LABEL))
        }
        (Some(_), None) => {
            return Err(unauthorized(
                "the server requires a token and this client has none: pass the server's token \
                 with --token or COHORT_TOKEN",
                "the client sent no token proof and this server requires one: pass the same \
                 token to the client with --token or COHORT_TOKEN",
            ));
        }
        (None, Some(_)) => {
            return Err(unauthorized(
                "this client has a token but the server has none: start the server with the \
                 same --token, or remove the token from the client",
                "the client holds a token but this server has none: start the server with the \
                 same --token, or remove the token from the client",
            ));
        }
        (None, None) => None,
    };

    // Only a peer that proved itself takes a seat, so that strangers cannot fill them.
    let seat = seats.take(client.role).ok_or_else(|| {
        let limit = seats.limits.max_connections(client.role);
        Refusal::Reject {
            code: REJECT_BUSY,
            reason: format!(
                "this endpoint already serves {limit} {} connections, its limit; retry later",
                client.role
            ),
            error: Box::new(Error::TooManyConnections {
                peer: peer.to_owned(),
                role: client.role.to_string(),
                limit,
            }),
        }
    })?;
    send_handshake_frame(
        wire,
        &Verdict::Welcome {
            proof: server_proof,
        },
        peer,
    )
    .await
    .map_err(Refusal::Fail)?;
    let info = PeerInfo {
        addr: peer.to_owned(),
        role: client.role,
        name: client.name,
        protocol_version: PROTOCOL_VERSION,
        software: client.software,
        authenticated: local.authenticates(),
        encrypted: wire.get_ref().is_tls(),
        max_frame_len: client.max_frame_len,
    };
    Ok((info, seat))
}

/// Sends a `rejected` verdict, closes the write side and, when `linger`, lingers briefly, all
/// bounded in time. Failures are ignored: the peer may be gone already, and the caller reports
/// the real error.
async fn reject<S>(wire: &mut Wire<S>, code: &str, reason: &str, linger: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let verdict = Verdict::Rejected {
        code: code.to_owned(),
        reason: reason.to_owned(),
    };
    // A frame cut short by the deadline or shutdown is still buffered (perhaps a welcome): a
    // verdict behind it would be misread, so such a connection is only closed.
    let clean = wire.write_buffer().is_empty();
    let deliver = async {
        if clean {
            let frame = codec::encode(&verdict).map_err(|err| err.to_string())?;
            wire.send(frame).await.map_err(|err| format!("{err:?}"))?;
        }
        wire.close().await.map_err(|err| format!("{err:?}"))
    };
    match tokio::time::timeout(REJECT_WRITE_TIMEOUT, deliver).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%code, "could not deliver a rejection: {err}"),
        Err(_elapsed) => tracing::debug!(%code, "could not deliver a rejection in time"),
    }
    if !linger {
        return;
    }
    let stream = wire.get_mut();
    let linger = async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    // The linger ends at the peer's close, at the byte bound or at the deadline, whichever
    // comes first; all three are fine.
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// Runs the client side of the handshake on a fresh connection.
///
/// `dialled` is the address as the caller gave it (`HOST:PORT`): with TLS, the server's
/// certificate must name its host.
pub(crate) async fn connect<S>(
    stream: S,
    peer: &str,
    dialled: &str,
    local: &Local<'_>,
) -> Result<(Wire<S>, PeerInfo), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timed_out = || Error::HandshakeTimeout {
        peer: peer.to_owned(),
        after: local.handshake_timeout,
    };
    let deadline = tokio::time::Instant::now() + local.handshake_timeout;
    let stream = match local.tls {
        None => Transport::Plain(stream),
        Some(config) => {
            tokio::time::timeout_at(deadline, tls::connect(config, stream, peer, dialled))
                .await
                .map_err(|_elapsed| timed_out())??
        }
    };
    let binding = stream.binding();
    let mut wire = Framed::new(stream, FrameCodec::new(HANDSHAKE_MAX_FRAME_LEN));
    let exchange = client_exchange(&mut wire, peer, local, binding.as_ref().map(|b| &b[..]));
    let info = match tokio::time::timeout_at(deadline, exchange).await {
        // With TLS 1.3 the server checks the client's certificate after the client finished
        // its side: a refusal arrives as an alert at the first read.
        Ok(Err(Error::Io { source, .. })) if tls::failure_in(peer, &source).is_some() => {
            return Err(tls::failure_in(peer, &source).unwrap_or_else(|| Error::Io {
                peer: peer.to_owned(),
                source,
            }));
        }
        Ok(result) => result?,
        Err(_elapsed) => return Err(timed_out()),
    };
    wire.codec_mut().set_max(local.max_frame_len);
    Ok((wire, info))
}

async fn client_exchange<S>(
    wire: &mut Wire<S>,
    peer: &str,
    local: &Local<'_>,
    binding: Option<&[u8]>,
) -> Result<PeerInfo, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client_nonce = [0u8; NONCE_LEN];
    local.nonces.fill(&mut client_nonce);

    let frame = read_handshake_frame(wire, peer).await?;
    let server = match parse_hello(&frame, peer) {
        Ok(server) => server,
        Err(error @ Error::VersionMismatch { .. }) => {
            // Introduce ourselves all the same, so that the server logs the mismatch too.
            let hello = our_hello(local, &client_nonce, None);
            if let Err(err) = send_handshake_frame(wire, &hello, peer).await {
                tracing::debug!(%peer, "could not send a hello to a mismatched server: {err}");
            }
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    if !local.accept_roles.contains(&server.role) {
        return Err(Error::RoleRefused {
            peer: peer.to_owned(),
            role: server.role.to_string(),
            accepted: role_list(local.accept_roles),
        });
    }

    let transcript = Transcript {
        server_nonce: &server.nonce,
        client_nonce: &client_nonce,
        server_role: server.role,
        server_name: &server.name,
        client_role: local.role,
        client_name: local.name,
        binding,
    };
    let proof = local
        .token
        .map(|token| transcript.prove(token, CLIENT_PROOF_LABEL));
    send_handshake_frame(wire, &our_hello(local, &client_nonce, proof), peer).await?;

    let frame = read_handshake_frame(wire, peer).await?;
    let verdict: Verdict = codec::decode(&frame).map_err(|err| Error::BadHello {
        peer: peer.to_owned(),
        reason: format!("the server's reply to the hello is not a verdict: {err}"),
    })?;
    let server_proof = match verdict {
        Verdict::Welcome { proof } => proof,
        Verdict::Rejected { code, reason } => {
            let reason = sanitize(&reason);
            return Err(if code == REJECT_AUTH {
                Error::Unauthorized {
                    peer: peer.to_owned(),
                    reason,
                }
            } else {
                Error::Rejected {
                    peer: peer.to_owned(),
                    code: sanitize(&code),
                    reason,
                }
            });
        }
    };
    if let Some(token) = local.token {
        let proven =
            server_proof.is_some_and(|proof| transcript.verify(token, SERVER_PROOF_LABEL, &proof));
        if !proven {
            return Err(Error::Unauthorized {
                peer: peer.to_owned(),
                reason: "the server could not prove it holds this side's token: it has another \
                         token or none (give both the same --token or COHORT_TOKEN), or it is \
                         not the endpoint you meant"
                    .to_owned(),
            });
        }
    }
    Ok(PeerInfo {
        addr: peer.to_owned(),
        role: server.role,
        name: server.name,
        protocol_version: PROTOCOL_VERSION,
        software: server.software,
        authenticated: local.authenticates(),
        encrypted: wire.get_ref().is_tls(),
        max_frame_len: server.max_frame_len,
    })
}

fn role_list(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Node"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
        assert!(check_name("a\nb").is_err());
    }

    #[test]
    fn sanitize_escapes_and_caps() {
        assert_eq!(sanitize("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert!(sanitize(&"x".repeat(10_000)).len() < MAX_PEER_TEXT + 8);
    }

    fn transcript<'a>(server_nonce: &'a [u8], client_nonce: &'a [u8]) -> Transcript<'a> {
        Transcript {
            server_nonce,
            client_nonce,
            server_role: Role::Coordinator,
            server_name: "coordinator",
            client_role: Role::Node,
            client_name: "node-1",
            binding: None,
        }
    }

    #[test]
    fn proofs_bind_the_tls_session() {
        let token = Secret::new("0123456789abcdef0123").unwrap();
        let plain = transcript(&[1; NONCE_LEN], &[2; NONCE_LEN]);
        let session = |binding| Transcript {
            binding: Some(binding),
            ..transcript(&[1; NONCE_LEN], &[2; NONCE_LEN])
        };
        let proof = session(&[7; 32]).prove(&token, CLIENT_PROOF_LABEL);
        assert!(session(&[7; 32]).verify(&token, CLIENT_PROOF_LABEL, &proof));
        assert!(
            !session(&[8; 32]).verify(&token, CLIENT_PROOF_LABEL, &proof),
            "another session"
        );
        assert!(
            !plain.verify(&token, CLIENT_PROOF_LABEL, &proof),
            "no session"
        );
    }

    #[test]
    fn proofs_bind_token_nonces_and_direction() {
        let token = Secret::new("0123456789abcdef0123").unwrap();
        let other = Secret::new("0123456789abcdef0124").unwrap();
        let t = transcript(&[1; NONCE_LEN], &[2; NONCE_LEN]);
        let proof = t.prove(&token, CLIENT_PROOF_LABEL);
        assert!(t.verify(&token, CLIENT_PROOF_LABEL, &proof));
        assert!(!t.verify(&other, CLIENT_PROOF_LABEL, &proof));
        assert!(!t.verify(&token, SERVER_PROOF_LABEL, &proof), "reflection");
        let fresh = transcript(&[3; NONCE_LEN], &[2; NONCE_LEN]);
        assert!(!fresh.verify(&token, CLIENT_PROOF_LABEL, &proof), "replay");
        assert!(!t.verify(&token, CLIENT_PROOF_LABEL, &proof[..31]));
        assert!(!t.verify(&token, CLIENT_PROOF_LABEL, b""));
    }

    #[test]
    fn seeded_nonces_repeat_and_differ() {
        let (a, b) = (SeededNonces::new(7), SeededNonces::new(7));
        let (mut x, mut y, mut z) = ([0; NONCE_LEN], [0; NONCE_LEN], [0; NONCE_LEN]);
        a.fill(&mut x);
        b.fill(&mut y);
        a.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn hello_of_a_future_version_still_reports_the_mismatch() {
        // A v9 hello whose other fields changed shape entirely.
        #[derive(Serialize)]
        struct FutureHello {
            magic: &'static str,
            protocol_version: u16,
            software: &'static str,
            nonce: Vec<Vec<u8>>,
        }
        let frame = codec::encode(&FutureHello {
            magic: MAGIC,
            protocol_version: 9,
            software: "cohort 9.0.0",
            nonce: vec![vec![1]],
        })
        .unwrap();
        match parse_hello(&frame, "peer") {
            Err(Error::VersionMismatch {
                ours,
                theirs,
                peer_software,
                ..
            }) => {
                assert_eq!((ours, theirs), (PROTOCOL_VERSION, 9));
                assert_eq!(peer_software, "cohort 9.0.0");
            }
            other => panic!("expected a version mismatch, got {:?}", other.err()),
        }
    }
}
