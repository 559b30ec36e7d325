//! Test support, behind the `testing` feature: [`FaultyStore`], a fault-injecting object store
//! for crash and error tests, and [`suite`], the behaviour suite every backend runs.

mod faulty;
pub mod suite;

pub use faulty::{Fault, FaultRule, FaultyStore, InjectedFault, Latency, Op};
