//! Failed objects under the restart policy, with REAL node processes on loopback: an account
//! whose handler panics (or returns an error) restarts the whole cohort from its recovery line
//! after the policy's backoff, and the money keeps moving; one more failure than the policy
//! allows within its window halts the cohort, and the service's status names the object, the
//! error and the policy, until a recovery on request (`cohort recover`) ends the halt. Every
//! committed line holds all the money.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use cohort_coordinator::Error;
use cohort_coordinator::engine::RestartPolicy;
use support::bank::{Cluster, Options, all_live, node_of};

/// The node role: runs only in a child process.
#[test]
fn node_process() {
    support::bank::node_role();
}

const LONG: Duration = Duration::from_secs(20);

async fn started(restart: RestartPolicy) -> Cluster {
    let cluster = Cluster::start(Options {
        restart,
        ..Options::new(2, Duration::from_secs(2))
    })
    .await;
    cluster.wait_for("every node live", LONG, all_live(2)).await;
    cluster.moving_line().await;
    cluster
}

/// Injects a fault into one of node `index`'s handlers and waits for the restart it causes
/// to run the cohort again: a later line shows more messages handled.
async fn fail_and_restart(cluster: &Cluster, index: usize, panic: bool) {
    let recoveries = cluster.status().recoveries;
    cluster.inject_fault(index, panic);
    cluster
        .wait_for("the restart of the failed account", LONG, |s| {
            s.recoveries > recoveries
        })
        .await;
    assert!(!cluster.fault_pending(index), "the fault failed a handler");
    let before = cluster.hops_at_line().await;
    cluster.line_with_more_hops(before, 20).await;
    let status = cluster.status();
    assert_eq!(status.halt, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_restarts_the_cohort_within_the_policy() {
    let cluster = started(RestartPolicy {
        max_restarts: 2,
        window_ms: 60_000,
        backoff_ms: 100,
        max_backoff_ms: 1_000,
    })
    .await;
    fail_and_restart(&cluster, 1, true).await;
    // The second restart of the window (an error this time) is within the policy too.
    fail_and_restart(&cluster, 0, false).await;
    let (_, money) = cluster.money_at_line().await;
    assert_eq!(money, cluster.total(), "money is conserved");
    cluster.assert_money_in_every_line().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_beyond_the_policy_halts_the_cohort_and_names_it() {
    let policy = RestartPolicy {
        max_restarts: 1,
        window_ms: 60_000,
        backoff_ms: 100,
        max_backoff_ms: 1_000,
    };
    let cluster = started(policy).await;
    fail_and_restart(&cluster, 0, true).await;
    let recoveries = cluster.status().recoveries;
    cluster.inject_fault(1, false);
    cluster
        .wait_for("the halt", LONG, |s| s.halt.is_some())
        .await;
    let status = cluster.status();
    let halt = status.halt.clone().unwrap();
    assert_eq!(node_of(&halt.object), 1, "{halt:?}");
    assert!(halt.error.contains("injected fault"), "{halt:?}");
    assert_eq!(halt.restarts, 1);
    assert_eq!(halt.policy, policy);
    assert!(!status.healthy);
    assert_eq!(
        status.recoveries, recoveries,
        "no restart beyond the policy"
    );
    // The reason as `cohort status --json` prints it (`coordinator.halted`).
    let json = serde_json::to_value(&halt).unwrap();
    assert_eq!(json["object"], halt.object.as_str());
    assert_eq!(json["policy"]["max_restarts"], 1);
    // Halted: no checkpoint is taken.
    match cluster.service.trigger().await {
        Err(Error::Aborted { .. }) => {}
        other => panic!("a halted cohort took a checkpoint: {other:?}"),
    }
    // The cause is gone (the fault fired once): a recovery on request (`cohort recover`) ends
    // the halt, and the money moves again.
    let recovered = cluster.service.recover().await.unwrap();
    assert!(recovered.line.is_some(), "{recovered:?}");
    let status = cluster.status();
    assert_eq!(status.halt, None);
    assert!(status.recoveries > recoveries);
    let before = cluster.hops_at_line().await;
    cluster.line_with_more_hops(before, 20).await;
    cluster.assert_money_in_every_line().await;
}
