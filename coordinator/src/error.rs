//! The one public error type of this crate.

use cohort_object_api::{CheckpointId, ObjectError, ObjectId};

use crate::engine::AbortReason;

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while running a cohort.
///
/// The variants are grouped by what the caller should do about them:
///
/// - **retry**: the checkpoint did not commit this time ([`Aborted`](Self::Aborted));
/// - **step down**: a newer coordinator took over ([`Fenced`](Self::Fenced));
/// - **build a new cohort and recover**: this one stopped ([`Stopped`](Self::Stopped),
///   [`Crashed`](Self::Crashed));
/// - **fall back or restore from elsewhere**: stored data or an object's state could not be
///   used ([`Store`](Self::Store), [`Restore`](Self::Restore), [`Message`](Self::Message));
/// - **fix the call**: [`DuplicateObject`](Self::DuplicateObject),
///   [`UnknownObject`](Self::UnknownObject), [`WrongType`](Self::WrongType),
///   [`MissingObjects`](Self::MissingObjects), [`InvalidSettings`](Self::InvalidSettings).
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

    // ---- step down ----
    /// A coordinator with a newer epoch owns the store: this cohort takes no more checkpoints.
    #[error(
        "fenced: a coordinator with a newer epoch than ours ({epoch}) took over the store; this cohort takes no more checkpoints, stop it"
    )]
    Fenced {
        /// Our (deposed) epoch.
        epoch: u64,
    },

    // ---- build a new cohort and recover ----
    /// The cohort was shut down.
    #[error("the cohort is shut down; build a new one (and recover) to continue")]
    Stopped,
    /// The coordinator stopped at a fail point, as a crash would: nothing after it ran.
    #[error(
        "the coordinator crashed at fail point {point:?}; build a new cohort on the same store and recover"
    )]
    Crashed {
        /// The fail point's name.
        point: String,
    },

    // ---- fall back or restore from elsewhere ----
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(Box<cohort_checkpoint::Error>),
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

    /// A connection failed or could not be opened (a node, a peer, the coordinator). Usually
    /// retried by the caller's reconnect loop; a bind error means the port is taken.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),

    // ---- fix the call ----
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
    /// A setting is out of range.
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
}

impl From<cohort_checkpoint::Error> for Error {
    fn from(e: cohort_checkpoint::Error) -> Self {
        Self::Store(Box::new(e))
    }
}
