//! The cohort coordinator: the two-phase checkpoint protocol as a pure engine, the core that
//! carries it out against the store, and the two transports that carry it to participants.
//!
//! The layers, each using only those before it:
//!
//! - [`engine`]: the protocol as a pure state machine (events in, commands out), from one
//!   attempt to recovery and takeover.
//! - [`messaging`]: [`Actor`], [`Address`] and [`Context`]: object-to-object messages that the
//!   consistent cut accounts for.
//! - `participant` (private): what runs one object on either side of a transport: its task,
//!   the writer of an attempt, the restore loader, the [`Metrics`] of pauses.
//! - `core` (private): one engine and the one way its store commands are carried out (the
//!   manifest, the line, the fence), with [`failpoint`]s.
//! - [`runtime`]: [`Cohort`], the in-process transport (objects on tokio tasks), and [`node`]:
//!   [`Node`](node::Node), a participant process of a coordinator service.
//! - [`service`]: the coordinator service, the transport that reaches nodes by frames, with
//!   leadership, the CLI's control requests and metrics.
//!
//! ARCHITECTURE.md ("Protocol" and "Recovery") explains the algorithm and its guarantees.

mod core;
pub mod engine;
mod error;
pub mod failpoint;
pub mod ingress;
pub mod messaging;
pub mod node;
mod participant;
pub mod runtime;
pub mod service;

pub use error::{Error, Result};
pub use messaging::{Actor, Address, Context};
pub use participant::metrics::{CheckpointStats, Metrics, PauseStats};
pub use participant::restore::COUNTERS_KEY;
pub use runtime::{Cohort, Health, RecoveryReport, Settings};
