//! The coordinator service with REAL node processes on loopback: checkpoints across processes
//! and money moving between objects on different nodes, under light and heavy traffic. The
//! faults (SIGKILL in each phase, cut connections) are in `service_faults.rs`.
//!
//! A node process is this test binary re-executed with `COHORT_SERVICE_NODE` set: the
//! `node_process` test then runs a node instead of returning.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use support::bank::{Cluster, Options, all_live};
use tokio::time::Instant;

/// The node role: runs only in a child process.
#[test]
fn node_process() {
    support::bank::node_role();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_across_node_processes_keep_the_money() {
    let cluster = Cluster::start(Options::new(3, Duration::from_secs(2))).await;
    cluster
        .wait_for("three live nodes", Duration::from_secs(20), all_live(3))
        .await;
    let first = cluster.checkpoint(Duration::from_secs(20)).await;
    let second = cluster.moving_line().await;
    assert!(second > first);
    let (line, money) = cluster.money_at_line().await;
    assert_eq!(line, second);
    assert_eq!(
        money,
        cluster.total(),
        "money is conserved in the committed line"
    );
    assert_eq!(cluster.status().recoveries, 0);
}

/// Many transfers in flight between four node processes while checkpoints follow each other:
/// a message coloured with a round its receiver's node has not started yet (the sender's node
/// got the prepare first) must not be handled before the receiver captures, and every line
/// must hold all the money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_cross_node_traffic_keeps_the_money_in_every_line() {
    let cluster = Cluster::start(Options {
        kick_all: true,
        ..Options::new(4, Duration::from_secs(2))
    })
    .await;
    cluster
        .wait_for("four live nodes", Duration::from_secs(20), all_live(4))
        .await;
    let mut committed = 0;
    let end = Instant::now() + Duration::from_secs(60);
    while committed < 40 {
        assert!(
            Instant::now() < end,
            "only {committed} checkpoints committed"
        );
        cluster.checkpoint(Duration::from_secs(20)).await;
        committed += 1;
    }
    let lines = cluster.money_in_every_line().await;
    assert!(lines.len() >= 40, "{} lines", lines.len());
    cluster.assert_money_in_every_line().await;
    let hops = lines.last().map_or(0, |l| l.3);
    assert!(
        hops >= 500,
        "too little traffic before the last line: {hops}"
    );
    assert_eq!(cluster.status().recoveries, 0);
}
