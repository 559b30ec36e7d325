//! The cohort coordinator: the two-phase checkpoint protocol as a pure engine, the runtime that
//! drives objects through it, typed messaging with consistent cuts, and recovery.
//!
//! - [`engine`]: the protocol as a pure state machine (events in, commands out).
//! - [`runtime`]: [`Cohort`], which runs objects on tokio and carries out the engine's
//!   commands against a [`CheckpointStore`](cohort_checkpoint::CheckpointStore).
//! - [`messaging`]: [`Actor`], [`Address`] and [`Context`]: object-to-object messages that
//!   the consistent cut accounts for.
//!
//! ARCHITECTURE.md ("Protocol" and "Recovery") explains the algorithm and its guarantees.

pub mod engine;
mod error;
pub mod messaging;
pub mod node;
mod participant;
pub mod runtime;
pub mod service;

pub use error::{Error, Result};
pub use messaging::{Actor, Address, Context};
pub use runtime::{Cohort, Health, RecoveryReport, Settings};
