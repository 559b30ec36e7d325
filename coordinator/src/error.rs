//! The one public error type of this crate.

use cohort_object_api::{CheckpointId, ErrorKind, ObjectError, ObjectId};

use crate::engine::AbortReason;

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong running a cohort: the in-process runtime, the coordinator
/// service and its nodes.
///
/// The variants are grouped by what the caller should do about them, which
/// [`kind`](Self::kind) answers:
///
/// - **retry** ([`ErrorKind::Transient`]): the checkpoint did not commit this time
///   ([`Aborted`](Self::Aborted)), or an input was not acknowledged in time
///   ([`Unacknowledged`](Self::Unacknowledged)), or went to a process that does not serve its
///   log now ([`IngressElsewhere`](Self::IngressElsewhere));
/// - **step down** ([`ErrorKind::Fenced`]): a coordinator with a newer epoch owns the store
///   ([`Fenced`](Self::Fenced));
/// - **start a new one** and recover ([`ErrorKind::Closed`]): the cohort was shut down
///   ([`Stopped`](Self::Stopped)) or stopped at a fail point ([`Crashed`](Self::Crashed));
/// - **fix the configuration or the call** ([`ErrorKind::Invalid`]):
///   [`InvalidConfig`](Self::InvalidConfig), [`DuplicateObject`](Self::DuplicateObject),
///   [`UnknownObject`](Self::UnknownObject), [`WrongType`](Self::WrongType),
///   [`CreateRefused`](Self::CreateRefused),
///   [`MissingObjects`](Self::MissingObjects), [`InputRefused`](Self::InputRefused);
/// - **look at the data** ([`ErrorKind::Data`]): an object's recorded state or an in-transit
///   message could not be used ([`Restore`](Self::Restore), [`Message`](Self::Message));
/// - **as the store or the connection says**: [`Store`](Self::Store), [`Wire`](Self::Wire).
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

    /// No ingress endpoint acknowledged an input within the client's deadline: it may or may
    /// not be stored. Submit it again with the same sequence number (it is applied once).
    #[error(
        "no ingress endpoint acknowledged input {seq} of client {client} within {deadline:?} (last fault: {last}); submit it again with the same sequence number, it is applied once"
    )]
    Unacknowledged {
        /// The client id.
        client: String,
        /// The input's sequence number.
        seq: u64,
        /// The client's deadline.
        deadline: std::time::Duration,
        /// The last fault the client saw (a refused connection, a store failure).
        last: String,
    },

    /// This process does not serve ingress log `log` now: a log is written where its source
    /// runs, and the source is elsewhere (or moving). Submit through another endpoint; an
    /// [`IngressClient`](crate::ingress::endpoint::IngressClient) does by itself.
    #[error(
        "ingress log {log} is written where its source runs, and that is not this process; submit through another endpoint"
    )]
    IngressElsewhere {
        /// The log's name.
        log: String,
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

    // ---- start a new one ----
    /// The cohort (the runtime, the coordinator service or a node) was shut down, or crashed.
    #[error("the {what} is stopped; build a new one (and recover) to continue")]
    Stopped {
        /// What stopped: `cohort`.
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

    // ---- fix the configuration or the call ----
    /// A setting is out of range or inconsistent with another.
    #[error("invalid cohort configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, with the values involved and the accepted range.
        reason: String,
    },

    /// An object with this id is already in the cohort.
    #[error("object {0} is already in the cohort; ids must be unique")]
    DuplicateObject(ObjectId),

    /// No object with this id is in the cohort (never spawned, or dropped by recovery).
    #[error(
        "no object {0} in the cohort: spawn it first (recovery drops objects created after the line, and a stopped cohort has none)"
    )]
    UnknownObject(ObjectId),

    /// The coordinator refused to create an object (`Node::create`): the id is taken, or no
    /// live node registered a factory for the type.
    #[error("the cohort did not create {object}: {reason}")]
    CreateRefused {
        /// The object asked for.
        object: ObjectId,
        /// Why, and what to do.
        reason: String,
    },

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

    /// An ingress endpoint refused an input: its target is not a member that takes the
    /// ingress's messages, or its payload is not one. It was not stored.
    #[error(
        "the ingress refused input {seq} of client {client}: {reason}; it was not stored, fix the input"
    )]
    InputRefused {
        /// The client id.
        client: String,
        /// The input's sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },

    // ---- look at the data ----
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

    // ---- the store or the connection ----
    /// The checkpoint store failed; its [`kind`](cohort_checkpoint::Error::kind) says what to
    /// do.
    #[error(transparent)]
    Store(Box<cohort_checkpoint::Error>),

    /// A connection between the coordinator, its nodes or the CLI failed; its
    /// [`kind`](cohort_wire::Error::kind) says what to do.
    #[error(transparent)]
    Wire(#[from] cohort_wire::Error),
}

impl Error {
    /// What to do about it; see the groups above.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Aborted { .. } | Self::Unacknowledged { .. } | Self::IngressElsewhere { .. } => {
                ErrorKind::Transient
            }
            Self::Fenced { .. } => ErrorKind::Fenced,
            Self::Stopped { .. } | Self::Crashed { .. } => ErrorKind::Closed,
            Self::InvalidConfig { .. }
            | Self::DuplicateObject(_)
            | Self::UnknownObject(_)
            | Self::WrongType { .. }
            | Self::CreateRefused { .. }
            | Self::MissingObjects { .. }
            | Self::InputRefused { .. } => ErrorKind::Invalid,
            Self::Restore { .. } | Self::Message { .. } => ErrorKind::Data,
            Self::Store(e) => e.kind(),
            Self::Wire(e) => e.kind(),
        }
    }

    /// Whether retrying the same operation later (or reconnecting) may succeed without a change
    /// of configuration: [`ErrorKind::Transient`].
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Whether a coordinator with a newer epoch took over the store ([`ErrorKind::Fenced`]):
    /// this side's work was not committed and it must stop.
    pub fn is_fenced(&self) -> bool {
        self.kind() == ErrorKind::Fenced
    }

    /// A [`Stopped`](Self::Stopped) for the cohort (the runtime, the coordinator service or a
    /// node): build a new one and recover.
    pub(crate) const COHORT_STOPPED: Self = Self::Stopped { what: "cohort" };

    /// An [`InvalidConfig`](Self::InvalidConfig) of the cohort's own settings.
    pub(crate) fn invalid_settings(reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
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

    #[test]
    fn fenced_is_fenced() {
        let fenced = Error::Fenced { epoch: 3 };
        assert!(fenced.is_fenced());
        assert!(!fenced.is_retryable());
        assert!(fenced.to_string().contains("newer epoch than ours (3)"));
        let store_fenced = Error::from(cohort_checkpoint::Error::Fenced {
            id: CheckpointId::new(4),
            epoch: 3,
            by: "epoch 4".into(),
            url: "memory:///".into(),
        });
        assert!(store_fenced.is_fenced());
    }

    #[test]
    fn kinds_follow_the_store_and_the_wire() {
        assert!(Error::from(unavailable_store()).is_retryable());
        let wire = Error::from(cohort_wire::Error::Connect {
            addr: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert!(wire.is_retryable());
        assert_eq!(Error::COHORT_STOPPED.kind(), ErrorKind::Closed);
        assert_eq!(
            Error::invalid_settings("zero timeout").kind(),
            ErrorKind::Invalid
        );
    }

    #[test]
    fn stopped_says_what_to_do() {
        assert_eq!(
            Error::COHORT_STOPPED.to_string(),
            "the cohort is stopped; build a new one (and recover) to continue"
        );
        assert_eq!(
            Error::invalid_settings("timeout is 0").to_string(),
            "invalid cohort configuration: timeout is 0"
        );
    }
}
