//! The coordinator service: the two-phase protocol across processes.
//!
//! The service is a transport of the one coordinator core (`core/`): the engine decides
//! (attempts, hosts, recovery, takeover), the core writes to the store, and this module only
//! turns the engine's commands into frames to nodes and their frames into events. The
//! in-process [`Cohort`](crate::runtime::Cohort) is the other transport of the same core.
//!
//! # The seam (for leadership, metrics and the CLI)
//!
//! - [`Service::start`]`(store, `[`ServiceConfig`]`)` binds the node port (wire role
//!   `coordinator`, accepting `node`) and runs the [`Engine`](crate::engine::Engine) with
//!   participants hosted on [`Node`](crate::node::Node)s. With
//!   [`ServiceConfig::lead_at_start`] (the default) it claims an epoch itself; otherwise it
//!   answers nodes `NotLeader` until [`Service::lead`].
//! - [`Service::lead`]`(epoch, fence)`: start leading under `epoch` (the leadership driver
//!   claimed it and wrote `fence`, whose metadata holds the previous leader's [`StateTable`]
//!   under [`STATE_TABLE_KEY`]: its objects are expected, and no checkpoint commits until they
//!   are all registered again). [`Service::follow`]`(leader)` steps down: the attempt in flight
//!   aborts and nodes are told `NotLeader { leader }`, which they follow.
//! - [`Service::status`] watches a [`ServiceStatus`]: epoch, `fenced` (a commit found a newer
//!   epoch: call `Leadership::deposed`), last committed id, attempt in flight, counters,
//!   health (`healthy`, `consecutive_failures`), the state table.
//! - Every commit records the [`StateTable`] under [`STATE_TABLE_KEY`] in the manifest metadata,
//!   plus whatever [`ServiceConfig::metadata`] adds.
//! - [`Service::trigger`] takes a checkpoint now (`cohort checkpoint --now`).
//!
//! # How a round goes
//!
//! One `Prepare` frame per node per round listing its participants; the node captures them,
//! writes their states to the store itself (writer token = node name) and answers with one
//! `Votes` frame carrying every ballot (entry metadata and counters, never state bytes).
//! In-transit messages recorded by a node are reported as `ChannelState`; before the commit the
//! service asks those nodes to `Seal` them (durable). Then the manifest is created (the commit
//! point) and `Decided` goes to every node.
//!
//! # Failures
//!
//! Nodes and the service exchange heartbeats ([`ServiceConfig::heartbeat_interval`]). A node
//! whose connection drops or goes silent aborts the attempt in flight at once. If it registers
//! again with its session id within [`ServiceConfig::heartbeat_timeout`], it resumes: nothing is
//! restored. Otherwise it is dead: cohort recovery runs (every live node restores its objects
//! from the recovery line, read from the store by the node; a fence manifest is written; the
//! nodes are released under a new incarnation, so peer messages of the discarded future are
//! dropped). The dead node's objects stay members, and the node stays in the state table as
//! down: checkpoints abort until the node, or a replacement registering the same object ids,
//! comes back and restores them from the line.

pub mod control;
pub mod history;
pub mod leadership;
pub mod metrics;
pub mod protocol;
mod server;
mod table;

pub use server::{MAX_PEER_ADDR_LEN, MetadataHook, Service, ServiceConfig, ServiceStatus};
pub use table::{NodeEntry, StateTable};

/// The manifest metadata key holding the service's [`StateTable`] (msgpack).
pub const STATE_TABLE_KEY: &str = "cohort.state_table";
