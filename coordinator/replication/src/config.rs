//! Names and settings of a fault-tolerance group, and their validation.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The largest `active_goal`: the group keeps one fencing slot per active member.
pub const MAX_ACTIVE_GOAL: u32 = 1024;

/// The longest group name or member id, in bytes.
pub const MAX_NAME_LEN: usize = 64;

fn check_token(what: &'static str, name: &str, extra: &[u8]) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 64 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
    {
        Some(if extra.is_empty() {
            "use only ASCII letters, digits, `-` and `_`"
        } else {
            "use only ASCII letters, digits, `-`, `_` and `.`"
        })
    } else if name.starts_with('.') {
        Some("it must not start with `.`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.escape_debug().to_string(),
            reason,
        }),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `name` and wraps it.
            ///
            /// # Errors
            ///
            /// [`Error::InvalidName`] naming the broken rule.
            pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
                let name = name.as_ref();
                check_token($what, name, $extra)?;
                Ok(Self(Arc::from(name)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        // Names arrive from peers and from the store: validated as they are decoded.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of a fault-tolerance group: 1 to 64 of `[A-Za-z0-9_-]`. It is part of store keys
    /// (`groups/<group>/...`), hence the strict alphabet.
    GroupName,
    "group name",
    &[]
);

name_type!(
    /// The stable identity of a member within its group: 1 to 64 of `[A-Za-z0-9_.-]`, not
    /// starting with `.`. It is the member's wire name, breaks ranking ties, and is recorded
    /// with each activation. Give every process its own id (a host name and a role, say); a
    /// restarted process may reuse its id.
    MemberId,
    "member id",
    b"."
);

/// The settings of one member of a fault-tolerance group, with Rendezvous semantics.
///
/// Build it with [`GroupConfig::new`] and the setters; [`validate`](Self::validate) (run by
/// every constructor of an engine, member or monitor) checks the ranges:
///
/// - `weight` 1..=65535 ranks the member (higher first); 0 disables it: it never activates.
/// - `active_goal` (1..=[`MAX_ACTIVE_GOAL`]) members are active at once.
/// - `heartbeat_interval` < `activation_interval`: a member silent for `activation_interval`
///   is lost, so it must be able to send several heartbeats in that time.
/// - `preparation_interval`, optional, strictly between the two: when an active member has been
///   silent that long, the next in line is told `PrepareToActivate`.
/// - `quorum`, optional (beyond Rendezvous): claim only while hearing that many members; see
///   [`with_quorum`](Self::with_quorum).
///
/// `active_goal` and `activation_interval` must be the same on every member (checked against
/// each peer's heartbeats and against the group record on the store); the heartbeat interval
/// and the weight are each member's own.
///
/// ```
/// use std::time::Duration;
/// use cohort_replication::GroupConfig;
///
/// let config = GroupConfig::new("orders", 1)
///     .unwrap()
///     .with_weight(100)
///     .with_heartbeat_interval(Duration::from_millis(50))
///     .with_preparation_interval(Some(Duration::from_millis(100)))
///     .with_activation_interval(Duration::from_millis(150));
/// assert!(config.validate().is_ok());
///
/// let slow = config.clone().with_heartbeat_interval(Duration::from_millis(200));
/// assert!(slow.validate().unwrap_err().to_string().contains("heartbeat_interval"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    group: GroupName,
    weight: u16,
    active_goal: u32,
    heartbeat_interval: Duration,
    preparation_interval: Option<Duration>,
    activation_interval: Duration,
    quorum: Option<u32>,
}

impl GroupConfig {
    /// A member of `group` that aims for `active_goal` active members, with weight 1 and
    /// Rendezvous's default intervals (heartbeat 1.5 s, activation 4.8 s, no preparation).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a bad group name.
    pub fn new(group: impl AsRef<str>, active_goal: u32) -> Result<Self, Error> {
        Ok(Self {
            group: GroupName::new(group)?,
            weight: 1,
            active_goal,
            heartbeat_interval: Duration::from_millis(1500),
            preparation_interval: None,
            activation_interval: Duration::from_millis(4800),
            quorum: None,
        })
    }

    /// Sets the weight (0 disables the member).
    #[must_use]
    pub fn with_weight(mut self, weight: u16) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the active goal.
    #[must_use]
    pub fn with_active_goal(mut self, goal: u32) -> Self {
        self.active_goal = goal;
        self
    }

    /// Sets the heartbeat interval.
    #[must_use]
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets (or clears) the preparation interval.
    #[must_use]
    pub fn with_preparation_interval(mut self, interval: Option<Duration>) -> Self {
        self.preparation_interval = interval;
        self
    }

    /// Sets the activation interval.
    #[must_use]
    pub fn with_activation_interval(mut self, interval: Duration) -> Self {
        self.activation_interval = interval;
        self
    }

    /// Sets (or clears) the quorum: with `Some(n)`, a member only claims a slot while it hears
    /// at least `n` members, itself included. Beyond Rendezvous: without it (the default), the
    /// members on each side of a partition keep trying to activate, so a member cut off from
    /// the rest takes its slot back whenever its fence backoff ends (safely: fencing lets only
    /// one of them commit at a time, but each steal is a failover). With `n` a majority of the
    /// group's size, only the majority side activates; the price is that fewer than `n`
    /// surviving members never activate.
    #[must_use]
    pub fn with_quorum(mut self, quorum: Option<u32>) -> Self {
        self.quorum = quorum;
        self
    }

    /// The group's name.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The member's weight.
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// The active goal.
    pub fn active_goal(&self) -> u32 {
        self.active_goal
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The preparation interval, if any.
    pub fn preparation_interval(&self) -> Option<Duration> {
        self.preparation_interval
    }

    /// The activation interval.
    pub fn activation_interval(&self) -> Duration {
        self.activation_interval
    }

    /// The quorum, if any.
    pub fn quorum(&self) -> Option<u32> {
        self.quorum
    }

    /// Checks every range and order rule listed on [`GroupConfig`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the setting, its value and the rule.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                scope: "group",
                reason,
            })
        };
        if self.active_goal == 0 || self.active_goal > MAX_ACTIVE_GOAL {
            return invalid(format!(
                "active_goal is {}; use 1 to {MAX_ACTIVE_GOAL} (the number of members active at \
                 once)",
                self.active_goal
            ));
        }
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat_interval < Duration::from_millis(1) {
            return invalid(format!(
                "heartbeat_interval is {:?}; use at least 1 ms",
                self.heartbeat_interval
            ));
        }
        if ms(self.activation_interval) > u128::from(u32::MAX) {
            return invalid(format!(
                "activation_interval is {:?}; use at most {} ms",
                self.activation_interval,
                u32::MAX
            ));
        }
        if ms(self.heartbeat_interval) >= ms(self.activation_interval) {
            return invalid(format!(
                "heartbeat_interval ({:?}) must be shorter than activation_interval ({:?}): a \
                 member silent for activation_interval is declared lost, so it must be able to \
                 send several heartbeats in that time",
                self.heartbeat_interval, self.activation_interval
            ));
        }
        if self.quorum.is_some_and(|q| q == 0 || q > MAX_ACTIVE_GOAL) {
            return invalid(format!(
                "quorum is {:?}; use 1 to {MAX_ACTIVE_GOAL} members, or none",
                self.quorum
            ));
        }
        if let Some(prep) = self.preparation_interval
            && !(ms(self.heartbeat_interval) < ms(prep) && ms(prep) < ms(self.activation_interval))
        {
            return invalid(format!(
                "preparation_interval ({prep:?}) must lie strictly between heartbeat_interval \
                 ({:?}) and activation_interval ({:?})",
                self.heartbeat_interval, self.activation_interval
            ));
        }
        Ok(())
    }

    /// The intervals in whole milliseconds, as the engine counts time.
    pub(crate) fn heartbeat_ms(&self) -> u64 {
        duration_ms(self.heartbeat_interval)
    }

    pub(crate) fn activation_ms(&self) -> u64 {
        duration_ms(self.activation_interval)
    }

    pub(crate) fn preparation_ms(&self) -> Option<u64> {
        self.preparation_interval.map(duration_ms)
    }
}

/// Whole milliseconds, saturating (validation bounds every interval far below that).
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(GroupName::new("orders-1_a").is_ok());
        for bad in ["", "a/b", "a.b", "../x", &"x".repeat(65), "tab\t"] {
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
        assert!(MemberId::new("host-1.primary").is_ok());
        for bad in ["", ".hidden", "a b", "a/b", &"y".repeat(65)] {
            assert!(MemberId::new(bad).is_err(), "{bad:?}");
        }
        let decoded: Result<MemberId, _> =
            rmp_serde::from_slice(&rmp_serde::to_vec("a/b").unwrap());
        assert!(decoded.is_err());
    }

    #[test]
    fn ranges_and_orders_are_checked() {
        let base = GroupConfig::new("g", 1)
            .unwrap()
            .with_heartbeat_interval(Duration::from_millis(50))
            .with_activation_interval(Duration::from_millis(150));
        assert!(base.validate().is_ok());
        let cases = [
            (base.clone().with_active_goal(0), "active_goal is 0"),
            (
                base.clone().with_active_goal(MAX_ACTIVE_GOAL + 1),
                "active_goal is 1025",
            ),
            (
                base.clone()
                    .with_heartbeat_interval(Duration::from_millis(150)),
                "must be shorter than activation_interval",
            ),
            (
                base.clone().with_heartbeat_interval(Duration::ZERO),
                "heartbeat_interval is 0ns",
            ),
            (
                base.clone()
                    .with_preparation_interval(Some(Duration::from_millis(50))),
                "strictly between",
            ),
            (
                base.clone()
                    .with_preparation_interval(Some(Duration::from_millis(150))),
                "strictly between",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(
            base.with_preparation_interval(Some(Duration::from_millis(100)))
                .validate()
                .is_ok()
        );
    }
}
