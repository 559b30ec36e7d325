//! Replication styles (FT-CORBA `ReplicationStyle`) on top of the fault-tolerance groups.
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

pub use cold::{ColdSupervisor, Launcher};

use crate::Error;

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

    /// What a member of this style does between requests (on every tick), by whether it
    /// serves: the style's own rule, which the server carries out.
    pub(crate) fn between_requests(self, serving: bool) -> Between {
        match self {
            Self::Stateless | Self::ColdPassive => Between::Nothing,
            Self::WarmPassive => warm::between_requests(serving),
            Self::Active => active::between_requests(serving),
        }
    }

    /// Whether the member holding `slot` writes the group's checkpoints: the primary of a
    /// style that logs (slot 0; in the active style, the holder of slot 0).
    pub(crate) fn checkpoints_from(self, slot: u32) -> bool {
        self.logs_requests() && slot == 0
    }
}

/// What a member does between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Between {
    /// Nothing beyond serving.
    Nothing,
    /// Load the newest committed line if it is newer than the one held (a warm backup).
    LoadNewestLine,
    /// Execute the log's batches past the position held, in sequence order (an active replica).
    FollowLog,
}

impl fmt::Display for ReplicationStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicationStyle {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stateless" => Ok(Self::Stateless),
            "cold" | "cold_passive" | "cold-passive" => Ok(Self::ColdPassive),
            "warm" | "warm_passive" | "warm-passive" => Ok(Self::WarmPassive),
            "active" | "hot" => Ok(Self::Active),
            other => Err(Error::InvalidConfig {
                scope: "replicated service",
                reason: format!(
                    "unknown replication style {other:?}: use stateless, cold, warm or active"
                ),
            }),
        }
    }
}
