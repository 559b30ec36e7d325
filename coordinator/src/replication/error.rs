//! The error type of the replication layer.

use std::time::Duration;

use super::config::{GroupName, MemberId};
use super::fencing::SlotEpoch;

/// Everything that can go wrong in a fault-tolerance group: configuring and joining it, claiming
/// and using a fencing slot, talking to peers.
///
/// The variants are grouped by what the caller should do about them:
///
/// - **fix the configuration** (retrying will not help): [`InvalidConfig`](Self::InvalidConfig),
///   [`InvalidName`](Self::InvalidName), [`ConfigMismatch`](Self::ConfigMismatch);
/// - **step down**: a newer activation of the same slot exists; stop serving and let the group
///   decide again ([`Fenced`](Self::Fenced), [`NotActive`](Self::NotActive));
/// - **retry later**: the store or the network did not answer ([`Store`](Self::Store),
///   [`Wire`](Self::Wire), [`Stopped`](Self::Stopped));
/// - **look at the data**: a record on the store does not decode ([`Damaged`](Self::Damaged)).
///
/// [`is_retryable`](Self::is_retryable) sorts them for code that retries by itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    // ---- fix the configuration ----
    /// A setting is out of range or inconsistent with another.
    #[error("invalid group configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, with the values involved and the accepted range.
        reason: String,
    },

    /// A group name or member id broke the naming rules.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// `group name` or `member id`.
        what: &'static str,
        /// The rejected name, escaped.
        name: String,
        /// Which rule it broke.
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

    // ---- step down ----
    /// A newer activation holds this slot: this member was deposed (for example by a partition
    /// it could not see) and its work was not committed.
    #[error(
        "fenced: slot {} of group {group} was taken over by epoch {by} after this member's epoch \
         {}; the work was not committed, stop serving (the member deactivates)",
        .ours.slot, .ours.epoch
    )]
    Fenced {
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

    // ---- retry later ----
    /// The checkpoint store failed.
    #[error("group {group}: {operation}: {source}")]
    Store {
        /// The group.
        group: GroupName,
        /// What was being done.
        operation: String,
        /// The store's error; [`cohort_checkpoint::Error::is_retryable`] tells whether to retry.
        #[source]
        source: Box<cohort_checkpoint::Error>,
    },

    /// A connection could not be opened or broke.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),

    /// The member or monitor was shut down (or crashed); start a new one.
    #[error("the {what} is stopped; start a new one")]
    Stopped {
        /// `member` or `monitor`.
        what: &'static str,
    },

    /// A poll got no answer in time (pull-style failure detection).
    #[error("{peer} did not answer is_alive within {after:?}")]
    PollTimeout {
        /// The polled address.
        peer: String,
        /// The timeout in force.
        after: Duration,
    },

    // ---- look at the data ----
    /// A group record on the store does not decode.
    #[error(
        "damaged group record {key} in {url}: {reason}; it was not written by this version of \
         cohort, or was altered"
    )]
    Damaged {
        /// The record's key, relative to the store's prefix.
        key: String,
        /// The store.
        url: String,
        /// The decoder's complaint.
        reason: String,
    },
}

impl ReplicationError {
    /// Whether retrying the same operation later may succeed without a change of
    /// configuration: store unavailability, network failures, poll timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store { source, .. } => source.is_retryable(),
            Self::Wire(err) => err.is_retryable(),
            Self::PollTimeout { .. } => true,
            Self::InvalidConfig { .. }
            | Self::InvalidName { .. }
            | Self::ConfigMismatch { .. }
            | Self::Fenced { .. }
            | Self::NotActive { .. }
            | Self::Stopped { .. }
            | Self::Damaged { .. } => false,
        }
    }

    /// Whether this error means the member was deposed ([`ReplicationError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }
}
