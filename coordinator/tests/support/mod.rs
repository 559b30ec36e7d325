//! Shared by the service's integration tests (`service_nodes.rs`, `service_faults.rs`): a bank
//! across real node processes and a fault-injecting proxy.
// Each test binary uses a part of this module; tests may unwrap (a panic is a failed test).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

pub mod bank;
pub mod proxy;
