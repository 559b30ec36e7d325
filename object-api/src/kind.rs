//! [`ErrorKind`]: what a caller should do about an error, the same for every cohort crate.

use std::fmt;

/// What the caller should do about an error: the sort that every cohort crate's error enum
/// answers with its `kind()` method (`ObjectError::kind`, `cohort_checkpoint::Error::kind`,
/// `cohort_wire::Error::kind`, `cohort_replication::Error::kind`,
/// `cohort_coordinator::Error::kind`), so that code which retries, steps down or reports by
/// itself, and the CLI's exit codes, need not match on variants. The variant's message says
/// exactly what went wrong and what to do.
///
/// ```
/// use cohort_object_api::{ErrorKind, ObjectError};
///
/// let err = ObjectError::InvalidCheckpointId { id: "x".into() };
/// assert_eq!(err.kind(), ErrorKind::Invalid);
/// assert!(!err.kind().is_retryable());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Try again later, maybe elsewhere: the network, a peer or the store did not answer in
    /// time, or a checkpoint attempt aborted. Nothing needs fixing.
    Transient,
    /// Someone else got there first: another writer committed the slot, or the other side
    /// declined this request. Re-read, then decide; sending the same thing again gets the same
    /// answer.
    Refused,
    /// A newer owner took over (a coordinator of a newer epoch, a newer activation of a group
    /// slot): this side's work was not committed, and it must step down.
    Fenced,
    /// This handle (a cohort, service, member, client or connection) is stopped: start a new
    /// one.
    Closed,
    /// The call, the local configuration or this build does not fit: a bad argument, setting,
    /// name or URL, an unknown id, a port in use, blobs of a newer format (upgrade). Retrying
    /// will not help; fix the call or the configuration.
    Invalid,
    /// The other side cannot be talked to: another program, protocol version, token, role or
    /// certificate, or it broke the framing. Fix the peer or the address.
    Peer,
    /// Stored data or an object's state is missing, damaged or does not decode: fall back to
    /// an older checkpoint, restore from elsewhere, or look at the data.
    Data,
}

impl ErrorKind {
    /// Whether retrying the same operation later may succeed without a change on either side.
    pub fn is_retryable(self) -> bool {
        self == Self::Transient
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient",
            Self::Refused => "refused",
            Self::Fenced => "fenced",
            Self::Closed => "closed",
            Self::Invalid => "invalid",
            Self::Peer => "peer",
            Self::Data => "data",
        })
    }
}
