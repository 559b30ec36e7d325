//! What members and monitors say to each other over the wire.
//!
//! Every member listens for its peers and dials every member it knows; each side sends its
//! heartbeats over the connection it dialled. A monitor dials members and subscribes to their
//! heartbeats; a pull detector dials a member and polls `is_alive`. Connections are cohort
//! wire connections ([`cohort_wire`]): framed msgpack with the versioned, optionally
//! token-authenticated handshake, role [`Role::Peer`](cohort_wire::Role::Peer), named by member
//! id.

use serde::{Deserialize, Serialize};

use super::group::Heartbeat;

/// One message between members, monitors and pollers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupMessage {
    /// A member's heartbeat.
    Heartbeat(Heartbeat),
    /// Monitor → member: send me your heartbeats on this connection.
    Subscribe,
    /// Poller → member: are you alive? (FT-CORBA `PullMonitorable::is_alive`.)
    IsAlive {
        /// Echoed in the answer.
        seq: u64,
    },
    /// Member → poller: the answer to [`IsAlive`](Self::IsAlive).
    Alive {
        /// The poll's number.
        seq: u64,
        /// What the application's liveness check said.
        alive: bool,
    },
}
