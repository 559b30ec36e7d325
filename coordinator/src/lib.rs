//! The cohort coordinator: the two-phase checkpoint protocol as a pure engine, the runtime that
//! drives objects through it, the coordinator service, and the replication and failover layer.

pub mod engine;
