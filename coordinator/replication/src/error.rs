//! The one public error type of this crate.

use std::time::Duration;

use cohort_object_api::{ErrorKind, ObjectError};

use crate::{GroupName, MemberId, SlotEpoch};

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fault-tolerance groups and replicated services, on a member,
/// a monitor, a server or in a client proxy.
///
/// The variants are grouped by what the caller should do about them, which
/// [`kind`](Self::kind) answers:
///
/// - **retry** ([`ErrorKind::Transient`]): no member answered in time
///   ([`Unavailable`](Self::Unavailable), [`PollTimeout`](Self::PollTimeout));
/// - **step down** ([`ErrorKind::Fenced`]): a newer activation holds this member's fencing slot
///   ([`SlotFenced`](Self::SlotFenced)), or work was submitted to a member that is not active
///   ([`NotActive`](Self::NotActive));
/// - **start a new one** ([`ErrorKind::Closed`]): [`Stopped`](Self::Stopped);
/// - **fix the configuration or the request** ([`ErrorKind::Invalid`]):
///   [`InvalidConfig`](Self::InvalidConfig), [`InvalidName`](Self::InvalidName),
///   [`ConfigMismatch`](Self::ConfigMismatch), [`InvalidRequest`](Self::InvalidRequest);
/// - **the service said no** ([`ErrorKind::Refused`], final): [`Refused`](Self::Refused);
/// - **the store failed**: as the store's error says ([`GroupStore`](Self::GroupStore),
///   [`ReplicaCheckpoint`](Self::ReplicaCheckpoint), [`Store`](Self::Store));
/// - **look at the data** ([`ErrorKind::Data`]): [`ServiceState`](Self::ServiceState),
///   [`DamagedRecord`](Self::DamagedRecord), [`DamagedLog`](Self::DamagedLog); or at the
///   launcher ([`Launch`](Self::Launch), [`ErrorKind::Invalid`]);
/// - **a connection failed**: as the wire error says ([`Wire`](Self::Wire)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- retry ----
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

    // ---- step down ----
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
    /// The member, monitor, server or client was shut down.
    #[error("the {what} is stopped; start a new one")]
    Stopped {
        /// What stopped: `member`, `monitor`, `server` or `client`.
        what: &'static str,
    },

    // ---- fix the local configuration ----
    /// A setting is out of range or inconsistent with another.
    #[error("invalid {scope} configuration: {reason}")]
    InvalidConfig {
        /// Whose configuration: `group` or `replicated service`.
        scope: &'static str,
        /// What is wrong, with the values involved and the accepted range.
        reason: String,
    },

    /// A local endpoint name, group name or member id broke the naming rules.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// `group name` or `member id`.
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

    // ---- fix the request ----
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

    // ---- look at the data or the launcher ----
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

    // ---- the connection or the store ----
    /// A connection to a member, monitor or client failed; its [`kind`](cohort_wire::Error::kind)
    /// says what to do.
    #[error(transparent)]
    Wire(#[from] cohort_wire::Error),

    /// The checkpoint store failed outside a group record or a replica checkpoint.
    #[error(transparent)]
    Store(Box<cohort_checkpoint::Error>),
}

impl Error {
    /// What to do about it; see the groups above.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } | Self::PollTimeout { .. } => ErrorKind::Transient,
            Self::SlotFenced { .. } | Self::NotActive { .. } => ErrorKind::Fenced,
            Self::Stopped { .. } => ErrorKind::Closed,
            Self::InvalidConfig { .. }
            | Self::InvalidName { .. }
            | Self::ConfigMismatch { .. }
            | Self::InvalidRequest { .. }
            | Self::Launch { .. } => ErrorKind::Invalid,
            Self::Refused { .. } => ErrorKind::Refused,
            Self::GroupStore { source, .. } | Self::ReplicaCheckpoint { source, .. } => {
                source.kind()
            }
            Self::Store(source) => source.kind(),
            Self::ServiceState(_) | Self::DamagedRecord { .. } | Self::DamagedLog { .. } => {
                ErrorKind::Data
            }
            Self::Wire(e) => e.kind(),
        }
    }

    /// Whether retrying the same call later (maybe against another member) may succeed
    /// without a change of configuration: [`ErrorKind::Transient`].
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Whether this member was deposed by a newer activation of its slot
    /// ([`SlotFenced`](Self::SlotFenced)): its work was not committed and it must stop serving.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::SlotFenced { .. })
    }

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
    fn a_slot_fence_is_fenced() {
        let slot = Error::SlotFenced {
            group: group(),
            ours: SlotEpoch { slot: 1, epoch: 2 },
            by: 5,
        };
        assert!(slot.is_fenced());
        assert_eq!(slot.kind(), ErrorKind::Fenced);
        assert!(slot.to_string().contains("slot 1 of group bank"), "{slot}");
        let not_active = Error::NotActive {
            group: group(),
            member: MemberId::new("m1").expect("a valid member id"),
        };
        assert!(!not_active.is_fenced());
        assert_eq!(not_active.kind(), ErrorKind::Fenced);
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
    fn kinds_sort_the_rest() {
        assert!(
            Error::Unavailable {
                group: "bank".into(),
                waited: Duration::from_secs(30),
                last: "no active member".into(),
            }
            .is_retryable()
        );
        assert_eq!(Error::Stopped { what: "member" }.kind(), ErrorKind::Closed);
        assert_eq!(
            Error::Stopped { what: "member" }.to_string(),
            "the member is stopped; start a new one"
        );
        assert_eq!(
            Error::Refused {
                message: "insufficient funds".into()
            }
            .kind(),
            ErrorKind::Refused
        );
        let wire = Error::from(cohort_wire::Error::Connect {
            addr: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert!(wire.is_retryable());
    }
}
