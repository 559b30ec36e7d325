//! Replication styles (FT-CORBA `ReplicationStyle`) on top of the fault-tolerance groups, and
//! the error type of the replicated service layer.
//!
//! | style | who executes | state of the others | failover |
//! |---|---|---|---|
//! | [`Stateless`](ReplicationStyle::Stateless) | any active member | none | the client reconnects to another active |
//! | [`ColdPassive`](ReplicationStyle::ColdPassive) | the primary | none running | a [`Launcher`] starts a replacement, which restores the newest line and replays the log |
//! | [`WarmPassive`](ReplicationStyle::WarmPassive) | the primary, logging first | each committed line, loaded as it lands | the elected backup replays the log since its line |
//! | [`Active`](ReplicationStyle::Active) | every replica, in log order | identical | none: the client takes the first reply |
//!
//! The runtime is [`ReplicatedServer`](super::server::ReplicatedServer); clients use
//! [`GroupClient`](super::client::GroupClient). Each style's own behaviour is in its module:
//! [`stateless`], [`cold`], [`warm`], [`active`]. ARCHITECTURE.md ("Replication styles and
//! transparent clients") explains the guarantees.

pub mod active;
pub mod cold;
pub mod stateless;
pub mod warm;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use cold::{ColdSupervisor, Launcher};

use super::error::ReplicationError;

/// How a group's members share the service's state (FT-CORBA `ReplicationStyle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicationStyle {
    /// No state: any active member serves, requests must be idempotent across members (the
    /// reply cache is per process).
    Stateless,
    /// One primary logs and executes; no backup runs. On failure a [`Launcher`] starts a
    /// replacement that restores the newest line, replays the log, then serves.
    ColdPassive,
    /// One primary logs (acknowledged before the reply) and executes; backups load each
    /// committed line as it lands, and the elected one replays the log since its line.
    WarmPassive,
    /// Every replica executes every logged request in log sequence order; clients send to all
    /// active replicas and keep the first reply.
    Active,
}

impl ReplicationStyle {
    /// The style's name: `stateless`, `cold`, `warm` or `active`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stateless => "stateless",
            Self::ColdPassive => "cold",
            Self::WarmPassive => "warm",
            Self::Active => "active",
        }
    }

    /// Whether requests go through the fenced request log.
    pub fn logs_requests(self) -> bool {
        !matches!(self, Self::Stateless)
    }

    /// Whether clients send every request to every active member.
    pub fn sends_to_all(self) -> bool {
        matches!(self, Self::Active)
    }
}

impl fmt::Display for ReplicationStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicationStyle {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stateless" => Ok(Self::Stateless),
            "cold" | "cold_passive" | "cold-passive" => Ok(Self::ColdPassive),
            "warm" | "warm_passive" | "warm-passive" => Ok(Self::WarmPassive),
            "active" | "hot" => Ok(Self::Active),
            other => Err(ServiceError::InvalidConfig {
                reason: format!(
                    "unknown replication style {other:?}: use stateless, cold, warm or active"
                ),
            }),
        }
    }
}

/// Everything that can go wrong in a replicated service, on the server or in a client proxy.
///
/// Grouped by what the caller should do:
///
/// - **fix the configuration or the request**: [`InvalidConfig`](Self::InvalidConfig),
///   [`InvalidRequest`](Self::InvalidRequest);
/// - **the service said no** (final; re-sending gets the same answer):
///   [`Refused`](Self::Refused);
/// - **retry later**: [`Unavailable`](Self::Unavailable) (a client's deadline passed with no
///   server answering), [`Replication`](Self::Replication) and [`Wire`](Self::Wire) when
///   [`is_retryable`](Self::is_retryable), [`Stopped`](Self::Stopped);
/// - **fix the service or look at the data**: [`Object`](Self::Object) (its state did not
///   capture or restore), [`Launch`](Self::Launch), [`DamagedLog`](Self::DamagedLog),
///   [`Checkpoint`](Self::Checkpoint).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    // ---- fix the configuration or the request ----
    /// A setting is out of range or inconsistent with another.
    #[error("invalid replicated service configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, with the values involved.
        reason: String,
    },

    /// A request or an id broke a rule.
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

    // ---- retry later ----
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

    /// The group layer failed: the store, a fence (the member deactivates), a peer.
    #[error(transparent)]
    Replication(#[from] ReplicationError),

    /// A connection could not be opened or broke.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),

    /// The server or client was shut down; start a new one.
    #[error("the {what} is stopped; start a new one")]
    Stopped {
        /// `server` or `client`.
        what: &'static str,
    },

    // ---- fix the service or look at the data ----
    /// The service's state could not be captured or restored.
    #[error("the service's state: {0}")]
    Object(#[from] cohort_object_api::ObjectError),

    /// A cold-passive launcher could not start a replacement.
    #[error("launching a replacement failed: {reason}; check the launcher's command or closure")]
    Launch {
        /// What failed.
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

    /// Writing or reading the replicated state's checkpoints failed.
    #[error("replica checkpoint: {operation}: {source}")]
    Checkpoint {
        /// What was being done.
        operation: String,
        /// The store's error; [`cohort_checkpoint::Error::is_retryable`] tells whether to retry.
        #[source]
        source: Box<cohort_checkpoint::Error>,
    },
}

impl ServiceError {
    /// Whether retrying later may succeed without a change of configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Replication(e) => e.is_retryable(),
            Self::Wire(e) => e.is_retryable(),
            Self::Checkpoint { source, .. } => source.is_retryable(),
            Self::InvalidConfig { .. }
            | Self::InvalidRequest { .. }
            | Self::Refused { .. }
            | Self::Stopped { .. }
            | Self::Object(_)
            | Self::Launch { .. }
            | Self::DamagedLog { .. } => false,
        }
    }

    /// Whether this error means this server was deposed by a newer activation.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Replication(e) if e.is_fenced())
    }

    pub(crate) fn checkpoint(
        operation: impl Into<String>,
    ) -> impl FnOnce(cohort_checkpoint::Error) -> Self {
        let operation = operation.into();
        move |source| Self::Checkpoint {
            operation,
            source: Box::new(source),
        }
    }
}
