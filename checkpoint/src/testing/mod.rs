//! Test support, behind the `testing` feature: a fault-injecting object store and the
//! behaviour suite every backend runs.
