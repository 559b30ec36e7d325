//! cohort: two-phase coordinated checkpointing for collaborating objects, with a replication and
//! failover layer on top.
//!
//! This facade re-exports the public API of the member crates.

pub use cohort_object_api::*;

/// Stable storage: the checkpoint format and its stores.
pub use cohort_checkpoint as checkpoint;

/// The two-phase protocol, its runtime and the coordinator service.
pub use cohort_coordinator as coordinator;

/// Typed, authenticated connections between coordinators, nodes, members and clients.
pub use cohort_wire as wire;

/// Fault-tolerance groups, failure detection, replication styles and transparent clients.
pub use cohort_replication as replication;
