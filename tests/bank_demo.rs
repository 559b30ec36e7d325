//! The Quick-start demo, as a test: `examples/bank.rs` with real processes on loopback (two
//! coordinators, three nodes, a depositor process paying in through node-0's ingress), node-0
//! (its ingress's source moves to a survivor) and then the leading coordinator killed with
//! SIGKILL, and the money (initial + every
//! deposit the line's source sent) checked in every committed checkpoint, and every
//! acknowledged deposit in the last line exactly once. The example exits 1 if the invariant broke
//! and 2 if a phase did not complete in time (no checkpoint after the recovery or the takeover).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

#[path = "support/examples.rs"]
mod examples;

use std::process::Command;

#[test]
fn the_bank_survives_a_node_kill_and_a_leader_kill_with_its_money() {
    let Some(exe) = examples::example("bank") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("bank");
    let out = Command::new(exe)
        .args(["--store", store.to_str().unwrap()])
        .args(["--accounts", "24", "--nodes", "3", "--seconds", "6"])
        .env("RUST_LOG", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the bank failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    for expected in [
        "killed node-0 with SIGKILL (it served the deposits' ingress)",
        "took node-0's accounts and the deposits' source",
        "recovered: every node rolled back",
        "with SIGKILL",
        "failover: epoch ",
        "acknowledged to the depositor process through the ingress; the recovery line holds each exactly once",
        ": OK",
    ] {
        assert!(
            stdout.contains(expected),
            "no {expected:?} in the output:\n{stdout}"
        );
    }
}
