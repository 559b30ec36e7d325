//! The one public error type of this crate.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use cohort_object_api::{CheckpointId, ObjectError, ObjectId};

use crate::engine::AbortReason;
use crate::replication::{GroupName, MemberId, SlotEpoch};

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate: running a cohort, the coordinator service and its
/// nodes, the wire layer (from binding a port to receiving a frame), fault-tolerance groups and
/// replicated services, on the server or in a client proxy.
///
/// `peer` fields hold the remote address as text (a socket address for TCP), so every message
/// names the other side. The variants are grouped by what the caller should do about them:
///
/// - **retry**: the checkpoint did not commit this time ([`Aborted`](Self::Aborted)); no member
///   answered in time ([`Unavailable`](Self::Unavailable), [`PollTimeout`](Self::PollTimeout));
/// - **reconnect, maybe elsewhere**: the network or the peer went away
///   ([`Connect`](Self::Connect), [`HandshakeTimeout`](Self::HandshakeTimeout),
///   [`Closed`](Self::Closed), [`Io`](Self::Io), [`Unusable`](Self::Unusable), and
///   [`Rejected`](Self::Rejected) when the server is shutting down);
/// - **step down**: a newer owner took over and this one's work was not committed. Two distinct
///   facts: a coordinator with a newer epoch owns the checkpoint store
///   ([`Fenced`](Self::Fenced)), or a newer activation holds a group member's fencing slot
///   ([`SlotFenced`](Self::SlotFenced)); and work submitted to a member that is not active
///   ([`NotActive`](Self::NotActive)). [`is_fenced`](Self::is_fenced) is true for both fences;
/// - **start a new one** (and recover): the cohort, member, monitor, server or client was shut
///   down ([`Stopped`](Self::Stopped)), or the coordinator stopped at a fail point
///   ([`Crashed`](Self::Crashed));
/// - **fix the local configuration** (retrying will not help):
///   [`InvalidConfig`](Self::InvalidConfig), [`InvalidName`](Self::InvalidName),
///   [`ConfigMismatch`](Self::ConfigMismatch), [`TokenRequired`](Self::TokenRequired),
///   [`WeakToken`](Self::WeakToken), [`Bind`](Self::Bind);
/// - **fix the peer**: it is not a cohort endpoint, runs another protocol version, does not hold
///   the same token or has the wrong role ([`Garbage`](Self::Garbage),
///   [`BadMagic`](Self::BadMagic), [`BadHello`](Self::BadHello),
///   [`VersionMismatch`](Self::VersionMismatch), [`Unauthorized`](Self::Unauthorized),
///   [`RoleRefused`](Self::RoleRefused), [`Rejected`](Self::Rejected) unless it
///   [is retryable](Self::is_retryable));
/// - **drop the connection**: the peer broke the framing or the message schema
///   ([`FrameTooLarge`](Self::FrameTooLarge), [`Decode`](Self::Decode),
///   [`Truncated`](Self::Truncated), which is retryable), or this side tried to send something
///   it must not ([`MessageTooLarge`](Self::MessageTooLarge), [`Encode`](Self::Encode), both of
///   which leave the connection usable);
/// - **fix the call or the request**: [`DuplicateObject`](Self::DuplicateObject),
///   [`UnknownObject`](Self::UnknownObject), [`WrongType`](Self::WrongType),
///   [`MissingObjects`](Self::MissingObjects), [`InvalidRequest`](Self::InvalidRequest);
/// - **the service said no** (final; re-sending gets the same answer):
///   [`Refused`](Self::Refused);
/// - **the store failed**: retry when the store's error
///   [is retryable](cohort_checkpoint::Error::is_retryable), else fall back or restore from
///   elsewhere ([`Store`](Self::Store), [`GroupStore`](Self::GroupStore),
///   [`ReplicaCheckpoint`](Self::ReplicaCheckpoint));
/// - **fix the service or look at the data**: stored data or an object's state could not be
///   used ([`Restore`](Self::Restore), [`Message`](Self::Message),
///   [`ServiceState`](Self::ServiceState), [`DamagedRecord`](Self::DamagedRecord),
///   [`DamagedLog`](Self::DamagedLog)), or a replacement could not be launched
///   ([`Launch`](Self::Launch)).
///
/// [`is_retryable`](Self::is_retryable) sorts them for code that retries or reconnects by
/// itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- retry ----
    /// The attempt serving this request aborted; nothing was committed. Trigger again.
    #[error("checkpoint {id} aborted: {reason}; nothing was committed, trigger again")]
    Aborted {
        /// The checkpoint id the attempt had (its retry reuses it).
        id: CheckpointId,
        /// Why it aborted.
        reason: AbortReason,
    },

    /// No member of the group answered before the call's deadline.
    #[error(
        "group {group}: no active member answered within {waited:?} (last problem: {last}); \
         check that members run and are active (`cohort` status), then retry"
    )]
    Unavailable {
        /// The group.
        group: String,
        /// How long the call waited.
        waited: Duration,
        /// The last fault seen.
        last: String,
    },

    /// A poll got no answer in time (pull-style failure detection).
    #[error("{peer} did not answer is_alive within {after:?}")]
    PollTimeout {
        /// The polled address.
        peer: String,
        /// The timeout in force.
        after: Duration,
    },

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

    // ---- step down ----
    /// A coordinator with a newer epoch owns the store: this cohort takes no more checkpoints.
    #[error(
        "fenced: a coordinator with a newer epoch than ours ({epoch}) took over the store; this cohort takes no more checkpoints, stop it"
    )]
    Fenced {
        /// Our (deposed) epoch.
        epoch: u64,
    },

    /// A newer activation holds this group member's fencing slot: this member was deposed (for
    /// example by a partition it could not see) and its work was not committed.
    #[error(
        "fenced: slot {} of group {group} was taken over by epoch {by} after this member's epoch \
         {}; the work was not committed, stop serving (the member deactivates)",
        .ours.slot, .ours.epoch
    )]
    SlotFenced {
        /// The group.
        group: GroupName,
        /// The deposed activation.
        ours: SlotEpoch,
        /// The newer epoch that holds the slot.
        by: u64,
    },

    /// Work was submitted while this member is not active.
    #[error("member {member} of group {group} is not active; only active members commit work")]
    NotActive {
        /// The group.
        group: GroupName,
        /// This member.
        member: MemberId,
    },

    // ---- start a new one ----
    /// The cohort, member, monitor, server or client was shut down (or crashed).
    #[error("the {what} is stopped; {}", stopped_advice(what))]
    Stopped {
        /// What stopped: `cohort` (build a new one and recover), `member`, `monitor`, `server`
        /// or `client` (start a new one).
        what: &'static str,
    },

    /// The coordinator stopped at a fail point, as a crash would: nothing after it ran.
    #[error(
        "the coordinator crashed at fail point {point:?}; build a new cohort on the same store and recover"
    )]
    Crashed {
        /// The fail point's name.
        point: String,
    },

    // ---- fix the local configuration ----
    /// A setting is out of range or inconsistent with another.
    #[error("invalid {scope} configuration: {reason}")]
    InvalidConfig {
        /// Whose configuration: `cohort` (the runtime, the coordinator service and its nodes),
        /// `wire`, `group` or `replicated service`.
        scope: &'static str,
        /// What is wrong, with the values involved and the accepted range.
        reason: String,
    },

    /// A local endpoint name, group name or member id broke the naming rules.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// `endpoint name`, `group name` or `member id`.
        what: &'static str,
        /// The rejected name, escaped.
        name: String,
        /// Which rule it broke, and what to use instead.
        reason: &'static str,
    },

    /// A member's settings disagree with this member's, or with the group's record on the
    /// store. Every member of a group must have the same `active_goal` and
    /// `activation_interval` (and, of course, the same group name).
    #[error(
        "group {group}: {other} has {field} {theirs}, but this member has {ours}; every member \
         of a group must agree on active_goal and activation_interval: fix the configuration of \
         one side (to change them for the whole group, stop every member and delete \
         groups/{group}/config on the store)"
    )]
    ConfigMismatch {
        /// The group.
        group: GroupName,
        /// Who disagrees: `member <id>` or `the group record on the store`.
        other: String,
        /// The setting that differs: `active_goal`, `activation_interval` or `group`.
        field: &'static str,
        /// This member's value.
        ours: String,
        /// The other side's value.
        theirs: String,
    },

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

    // ---- fix the call or the request ----
    /// An object with this id is already in the cohort.
    #[error("object {0} is already in the cohort; ids must be unique")]
    DuplicateObject(ObjectId),
    /// No object with this id is in the cohort (never spawned, or dropped by recovery).
    #[error(
        "no object {0} in the cohort: spawn it first (recovery drops objects created after the line, and a stopped cohort has none)"
    )]
    UnknownObject(ObjectId),
    /// The object exists but is of another type, or takes another message type.
    #[error("object {object} is a {actual}, not a {requested}")]
    WrongType {
        /// The object.
        object: ObjectId,
        /// What the caller asked for.
        requested: &'static str,
        /// What it is.
        actual: &'static str,
    },
    /// The recovery line holds objects that are not in this cohort, so it cannot be restored.
    #[error(
        "the recovery line (checkpoint {line}) holds {} objects that are not spawned, e.g. {}; spawn every object of the line before recover()",
        .missing.len(),
        .missing.first().map(ObjectId::as_str).unwrap_or("?")
    )]
    MissingObjects {
        /// The recovery line's id.
        line: CheckpointId,
        /// The objects it holds that are not spawned.
        missing: Vec<ObjectId>,
    },
    /// A request to a replicated service or an id broke a rule.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// Which rule.
        reason: String,
    },

    // ---- the service said no ----
    /// The service's `execute` refused the request; the message is the service's.
    #[error("the service refused the request: {message}")]
    Refused {
        /// The service's error, as text.
        message: String,
    },

    // ---- the store failed ----
    /// The checkpoint store failed; [`cohort_checkpoint::Error::is_retryable`] tells whether to
    /// retry.
    #[error(transparent)]
    Store(Box<cohort_checkpoint::Error>),

    /// The checkpoint store failed while a fault-tolerance group read or wrote its records.
    #[error("group {group}: {operation}: {source}")]
    GroupStore {
        /// The group.
        group: GroupName,
        /// What was being done.
        operation: String,
        /// The store's error; [`cohort_checkpoint::Error::is_retryable`] tells whether to retry.
        #[source]
        source: Box<cohort_checkpoint::Error>,
    },

    /// Writing or reading a replicated service's checkpoints failed.
    #[error("replica checkpoint: {operation}: {source}")]
    ReplicaCheckpoint {
        /// What was being done.
        operation: String,
        /// The store's error; [`cohort_checkpoint::Error::is_retryable`] tells whether to retry.
        #[source]
        source: Box<cohort_checkpoint::Error>,
    },

    // ---- fix the service or look at the data ----
    /// An object could not be restored from its recorded state (recovery stopped; the objects
    /// stay held).
    #[error(
        "cannot restore {object}: {source}; fix the state's type or migration, then recover again"
    )]
    Restore {
        /// The object.
        object: ObjectId,
        /// What `restore` said.
        #[source]
        source: Box<ObjectError>,
    },
    /// A recorded in-transit message could not be decoded for its receiver.
    #[error("cannot decode an in-transit message from {from} to {to}: {reason}")]
    Message {
        /// The sender.
        from: ObjectId,
        /// The receiver.
        to: ObjectId,
        /// The decoder's complaint.
        reason: String,
    },

    /// A replicated service's state could not be captured or restored.
    #[error("the service's state: {0}")]
    ServiceState(#[from] ObjectError),

    /// A group record on the store does not decode.
    #[error(
        "damaged group record {key} in {url}: {reason}; it was not written by this version of \
         cohort, or was altered"
    )]
    DamagedRecord {
        /// The record's key, relative to the store's prefix.
        key: String,
        /// The store.
        url: String,
        /// The decoder's complaint.
        reason: String,
    },

    /// A request log entry does not decode.
    #[error(
        "request log entry {seq} does not decode: {reason}; it was not written by this version \
         of cohort, or was altered"
    )]
    DamagedLog {
        /// The entry's sequence number (0 when unknown).
        seq: u64,
        /// The decoder's complaint.
        reason: String,
    },

    /// A cold-passive launcher could not start a replacement.
    #[error("launching a replacement failed: {reason}; check the launcher's command or closure")]
    Launch {
        /// What failed.
        reason: String,
    },
}

/// What to do about a [`Error::Stopped`]: a cohort is rebuilt and recovered, anything else is
/// started again.
fn stopped_advice(what: &str) -> &'static str {
    if what == "cohort" {
        "build a new one (and recover) to continue"
    } else {
        "start a new one"
    }
}

impl Error {
    /// Whether retrying the same operation later (or reconnecting, to the same or another
    /// address) may succeed without a change of configuration on either side.
    ///
    /// True for an aborted checkpoint, network failures, timeouts, closed connections, a server
    /// that is shutting down, a group with no member answering, and a store failure that
    /// [is retryable](cohort_checkpoint::Error::is_retryable); false for everything that needs
    /// a person to fix a configuration, a peer, the data, or a new cohort or member.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Aborted { .. }
            | Self::Unavailable { .. }
            | Self::PollTimeout { .. }
            | Self::Connect { .. }
            | Self::HandshakeTimeout { .. }
            | Self::Closed { .. }
            | Self::Truncated { .. }
            | Self::Io { .. }
            | Self::Unusable { .. } => true,
            Self::Rejected { code, .. } => code == crate::wire::handshake::REJECT_SHUTDOWN,
            Self::Store(source)
            | Self::GroupStore { source, .. }
            | Self::ReplicaCheckpoint { source, .. } => source.is_retryable(),
            Self::Fenced { .. }
            | Self::SlotFenced { .. }
            | Self::NotActive { .. }
            | Self::Stopped { .. }
            | Self::Crashed { .. }
            | Self::InvalidConfig { .. }
            | Self::InvalidName { .. }
            | Self::ConfigMismatch { .. }
            | Self::TokenRequired { .. }
            | Self::WeakToken { .. }
            | Self::Bind { .. }
            | Self::Garbage { .. }
            | Self::BadMagic { .. }
            | Self::VersionMismatch { .. }
            | Self::Unauthorized { .. }
            | Self::RoleRefused { .. }
            | Self::BadHello { .. }
            | Self::FrameTooLarge { .. }
            | Self::Decode { .. }
            | Self::MessageTooLarge { .. }
            | Self::Encode { .. }
            | Self::DuplicateObject(_)
            | Self::UnknownObject(_)
            | Self::WrongType { .. }
            | Self::MissingObjects { .. }
            | Self::InvalidRequest { .. }
            | Self::Refused { .. }
            | Self::Restore { .. }
            | Self::Message { .. }
            | Self::ServiceState(_)
            | Self::DamagedRecord { .. }
            | Self::DamagedLog { .. }
            | Self::Launch { .. } => false,
        }
    }

    /// Whether this error means this side was deposed by a newer owner: a coordinator with a
    /// newer epoch took over the store ([`Fenced`](Self::Fenced)), or a newer activation took
    /// over a group member's slot ([`SlotFenced`](Self::SlotFenced)). Either way its work was
    /// not committed and it must stop serving.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. } | Self::SlotFenced { .. })
    }

    /// A [`Stopped`](Self::Stopped) for the cohort (the runtime, the coordinator service or a
    /// node): build a new one and recover.
    pub(crate) const COHORT_STOPPED: Self = Self::Stopped { what: "cohort" };

    /// Wraps a checkpoint store error of a replicated service's checkpoints, naming what was
    /// being done.
    pub(crate) fn replica_checkpoint(
        operation: impl Into<String>,
    ) -> impl FnOnce(cohort_checkpoint::Error) -> Self {
        let operation = operation.into();
        move |source| Self::ReplicaCheckpoint {
            operation,
            source: Box::new(source),
        }
    }

    /// An [`InvalidConfig`](Self::InvalidConfig) of the cohort's own settings (the runtime, the
    /// coordinator service and its nodes).
    pub(crate) fn invalid_settings(reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            scope: "cohort",
            reason: reason.into(),
        }
    }
}

impl From<cohort_checkpoint::Error> for Error {
    fn from(e: cohort_checkpoint::Error) -> Self {
        Self::Store(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use cohort_checkpoint::object_store;

    use super::*;

    fn group() -> GroupName {
        GroupName::new("bank").expect("a valid group name")
    }

    fn unavailable_store() -> cohort_checkpoint::Error {
        cohort_checkpoint::Error::Unavailable {
            operation: "put manifests/1".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            source: object_store::Error::Generic {
                store: "test",
                source: Box::new(io::Error::other("connection reset")),
            },
        }
    }

    fn missing_store() -> cohort_checkpoint::Error {
        cohort_checkpoint::Error::NotFound {
            what: "manifest 1".into(),
            url: "memory:///".into(),
        }
    }

    #[test]
    fn both_fences_are_fenced_and_stay_distinguishable() {
        let coordinator = Error::Fenced { epoch: 3 };
        let slot = Error::SlotFenced {
            group: group(),
            ours: SlotEpoch { slot: 1, epoch: 2 },
            by: 5,
        };
        assert!(coordinator.is_fenced() && slot.is_fenced());
        assert!(!coordinator.is_retryable() && !slot.is_retryable());
        assert!(matches!(coordinator, Error::Fenced { epoch: 3 }));
        assert!(matches!(slot, Error::SlotFenced { by: 5, .. }));
        assert!(slot.to_string().contains("slot 1 of group bank"), "{slot}");
        assert!(
            coordinator
                .to_string()
                .contains("newer epoch than ours (3)")
        );
        let not_active = Error::NotActive {
            group: group(),
            member: MemberId::new("m1").expect("a valid member id"),
        };
        assert!(!not_active.is_fenced());
    }

    #[test]
    fn store_failures_are_retryable_as_the_store_says() {
        for (retryable, make) in [
            (true, unavailable_store as fn() -> cohort_checkpoint::Error),
            (false, missing_store),
        ] {
            let errors = [
                Error::from(make()),
                Error::GroupStore {
                    group: group(),
                    operation: "read the group record".into(),
                    source: Box::new(make()),
                },
                Error::replica_checkpoint("write checkpoint 1")(make()),
            ];
            for error in errors {
                assert_eq!(error.is_retryable(), retryable, "{error}");
                assert!(!error.is_fenced());
            }
        }
    }

    #[test]
    fn retryable_sorts_wire_and_service_errors() {
        let rejected = |code: &str| Error::Rejected {
            peer: "127.0.0.1:7000".into(),
            code: code.into(),
            reason: "because".into(),
        };
        assert!(rejected(crate::wire::handshake::REJECT_SHUTDOWN).is_retryable());
        assert!(!rejected("role").is_retryable());
        assert!(
            Error::Connect {
                addr: "127.0.0.1:1".into(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            }
            .is_retryable()
        );
        assert!(
            Error::Unavailable {
                group: "bank".into(),
                waited: Duration::from_secs(30),
                last: "no active member".into(),
            }
            .is_retryable()
        );
        assert!(!Error::COHORT_STOPPED.is_retryable());
        assert!(!Error::invalid_settings("zero timeout").is_retryable());
        assert!(
            !Error::Refused {
                message: "insufficient funds".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn stopped_says_what_to_do() {
        assert_eq!(
            Error::COHORT_STOPPED.to_string(),
            "the cohort is stopped; build a new one (and recover) to continue"
        );
        assert_eq!(
            Error::Stopped { what: "member" }.to_string(),
            "the member is stopped; start a new one"
        );
        assert_eq!(
            Error::InvalidConfig {
                scope: "wire",
                reason: "max_frame_len is 0".into()
            }
            .to_string(),
            "invalid wire configuration: max_frame_len is 0"
        );
    }
}
