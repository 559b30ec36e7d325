//! Self-healing with REAL node processes on loopback: nodes register the account type
//! (`NodeBuilder::host_type`), so when one is SIGKILLed (or two at once) and declared dead, the
//! coordinator moves its accounts to the survivors, which create them and restore them from the
//! recovery line: checkpoints holding every account commit again with no replacement process.
//! A node stopped (SIGSTOP) past the heartbeat timeout and resumed (SIGCONT) is told to drop the
//! accounts that moved, and rejoins empty. Application code creates accounts through the cohort
//! (`Node::create`): the coordinator places them. Every committed line holds all the money.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_coordinator::Error;
use cohort_coordinator::node::Node;
use cohort_coordinator::service::StateTable;
use cohort_coordinator::service::protocol::CoordinatorFrame;
use cohort_object_api::ObjectId;
use support::bank::{
    ACCOUNTS_PER_NODE, Cluster, Msg, Options, account_ids, all_live, live, node_of,
};
use support::proxy::Seen;

/// The node role: runs only in a child process.
#[test]
fn node_process() {
    support::bank::node_role();
}

const LONG: Duration = Duration::from_secs(20);

async fn started(nodes: usize, proxied: bool) -> Cluster {
    let cluster = Cluster::start(Options {
        host_accounts: true,
        proxied,
        ..Options::new(nodes, Duration::from_millis(500))
    })
    .await;
    cluster
        .wait_for("every node live", LONG, all_live(nodes))
        .await;
    cluster.moving_line().await;
    cluster
}

fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// Every account is placed, none on the `gone` nodes.
fn moved_off(gone: &[usize], nodes: usize) -> impl Fn(&StateTable) -> bool {
    let gone: BTreeSet<String> = gone.iter().map(|i| node_name(*i)).collect();
    move |t| {
        t.placement.len() == nodes * ACCOUNTS_PER_NODE
            && t.placement.values().all(|n| !gone.contains(n))
    }
}

/// After the `victims` died with no replacement: their accounts move to the survivors, a
/// checkpoint holding every account (the moved ones having handled more messages) commits, and
/// every committed line holds all the money.
async fn survivors_take_over(cluster: &Cluster, victims: &[usize]) {
    let nodes = cluster.options.nodes;
    let hops_of = |accounts: &std::collections::BTreeMap<ObjectId, (i64, u64)>, victim: usize| {
        accounts
            .iter()
            .filter(|(a, _)| node_of(a) == victim)
            .map(|(_, (_, h))| h)
            .sum::<u64>()
    };
    let at_line = cluster.accounts_at_line().await;
    let before: Vec<u64> = victims.iter().map(|v| hops_of(&at_line, *v)).collect();
    let moved = moved_off(victims, nodes);
    cluster
        .wait_for(
            "the dead nodes' accounts moved to the survivors",
            LONG,
            |s| s.recoveries >= 1 && moved(&s.table),
        )
        .await;
    // Lines where the moved accounts handled more messages: they run on their new nodes.
    let mut line = cohort_object_api::CheckpointId::ZERO;
    for (victim, before) in victims.iter().zip(before) {
        line = cluster
            .line_with_more_hops_on(Some(*victim), before, 3)
            .await;
    }
    let manifest = cluster.manifest(line).await;
    let all: BTreeSet<ObjectId> = account_ids(nodes).into_iter().collect();
    let held: BTreeSet<ObjectId> = manifest.objects.keys().cloned().collect();
    assert_eq!(held, all, "line {line} holds every account");
    let table =
        StateTable::decode(&manifest.metadata[cohort_coordinator::service::STATE_TABLE_KEY])
            .unwrap();
    assert!(
        moved(&table),
        "line {line} places every account on a survivor: {table:?}"
    );
    let (newest, money) = cluster.money_at_line().await;
    assert!(newest >= line);
    assert_eq!(money, cluster.total(), "money is conserved");
    cluster.assert_money_in_every_line().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_node_moves_its_accounts_to_the_survivors() {
    let mut cluster = started(3, false).await;
    cluster.kill(1);
    survivors_take_over(&cluster, &[1]).await;
    let status = cluster.status();
    assert!(!live(&status, 1));
    // Balanced by count: each survivor holds 3 of the 6 accounts.
    for survivor in [0, 2] {
        let name = node_name(survivor);
        let held = status
            .table
            .placement
            .values()
            .filter(|n| **n == name)
            .count();
        assert_eq!(held, 3, "{name} holds {held} accounts: {:?}", status.table);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_two_nodes_at_once_moves_their_accounts_to_the_survivors() {
    let mut cluster = started(4, false).await;
    cluster.kill(1);
    cluster.kill(2);
    survivors_take_over(&cluster, &[1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_the_timeout_is_fenced_and_rejoins_empty() {
    let cluster = started(3, true).await;
    cluster.signal(1, "STOP");
    survivors_take_over(&cluster, &[1]).await;
    let mark = cluster.proxy(1).mark();
    cluster.signal(1, "CONT");
    let disowned = cluster
        .proxy(1)
        .wait_seen(
            "the order to drop the moved accounts",
            mark,
            LONG,
            |s| match s {
                Seen::Down(CoordinatorFrame::Disown { objects }) => Some(objects.clone()),
                _ => None,
            },
        )
        .await;
    let expected: Vec<ObjectId> = account_ids(3)
        .into_iter()
        .filter(|a| node_of(a) == 1)
        .collect();
    let disowned: BTreeSet<ObjectId> = disowned.into_iter().collect();
    assert!(
        disowned.iter().all(|a| expected.contains(a)),
        "node-1 was told to drop {disowned:?}"
    );
    // node-1 rejoined empty: it restores nothing it held, and the next commit gives it a share
    // of the accounts again (a rebalance), moved off the fullest nodes.
    let before = cluster.hops_at_line().await;
    cluster.line_with_more_hops(before, 3).await;
    cluster
        .wait_for(
            "node-1 live again, with a share of the accounts",
            LONG,
            |s| {
                live(s, 1) && s.table.objects_on(&node_name(1)) >= 1 && s.table.placement.len() == 6
            },
        )
        .await;
    let before = cluster.hops_at_line().await;
    cluster.line_with_more_hops(before, 5).await;
    cluster.assert_money_in_every_line().await;
}

/// Per node, the accounts placed on it.
fn held(table: &StateTable, nodes: usize) -> Vec<usize> {
    (0..nodes)
        .map(|i| table.objects_on(&node_name(i)))
        .collect()
}

/// A node that starts with only the account type joins a running cohort of three (two
/// accounts each): the next commit moves one account onto it (the fullest node gives it up),
/// the cohort recovers to that line, and checkpoints holding every account go on, the moved
/// one handling messages on its new node. Money is conserved in every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_takes_a_share_of_the_accounts_at_a_checkpoint() {
    let mut cluster = started(3, false).await;
    let joiner = cluster.spawn_empty();
    cluster
        .wait_for("the new node live", LONG, |s| live(s, joiner))
        .await;
    let before = cluster.hops_at_line().await;
    cluster.line_with_more_hops(before, 3).await;
    cluster
        .wait_for("an account moved to the new node", LONG, |s| {
            s.table.objects_on(&node_name(joiner)) == 1 && s.table.placement.len() == 6
        })
        .await;
    let counts = held(&cluster.status().table, 4);
    assert_eq!(counts.iter().sum::<usize>(), 6, "{counts:?}");
    assert!(counts.iter().all(|n| (1..=2).contains(n)), "{counts:?}");
    let moved: Vec<ObjectId> = cluster
        .status()
        .table
        .placement
        .iter()
        .filter(|(_, n)| **n == node_name(joiner))
        .map(|(a, _)| a.clone())
        .collect();
    let victim = node_of(&moved[0]);
    let at_line = cluster.accounts_at_line().await;
    let hops: u64 = at_line
        .iter()
        .filter(|(a, _)| node_of(a) == victim)
        .map(|(_, (_, h))| h)
        .sum();
    let line = cluster.line_with_more_hops_on(Some(victim), hops, 3).await;
    let manifest = cluster.manifest(line).await;
    assert_eq!(manifest.objects.len(), 6, "line {line} holds every account");
    cluster.assert_money_in_every_line().await;
}

/// `Service::drain` (what `cohort drain` asks for): node-1's accounts move to the others at
/// the next commit; it ends holding none, and stopping it then costs no recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_over_its_accounts_and_stops_without_a_recovery() {
    let mut cluster = started(3, false).await;
    let unknown = cluster.service.drain("node-9").await.unwrap_err();
    assert!(
        unknown.to_string().contains("not a connected node"),
        "{unknown}"
    );
    cluster.service.drain(&node_name(1)).await.unwrap();
    cluster.checkpoint(LONG).await;
    let moved = moved_off(&[1], 3);
    cluster
        .wait_for("node-1 drained", LONG, |s| {
            moved(&s.table) && s.table.nodes[&node_name(1)].draining
        })
        .await;
    assert_eq!(held(&cluster.status().table, 3), vec![3, 0, 3]);
    let before = cluster.hops_at_line().await;
    let line = cluster.line_with_more_hops(before, 3).await;
    let table = StateTable::decode(
        &cluster.manifest(line).await.metadata[cohort_coordinator::service::STATE_TABLE_KEY],
    )
    .unwrap();
    assert!(
        moved(&table),
        "line {line} places nothing on node-1: {table:?}"
    );
    // It holds nothing: stopping it is no loss, and no recovery follows.
    let recoveries = cluster.status().recoveries;
    cluster.kill(1);
    cluster
        .wait_for("node-1 gone from the table", LONG, |s| {
            !s.table.nodes.contains_key(&node_name(1))
        })
        .await;
    let before = cluster.hops_at_line().await;
    cluster.line_with_more_hops(before, 3).await;
    assert_eq!(
        cluster.status().recoveries,
        recoveries,
        "stopping a drained node recovered the cohort"
    );
    cluster.assert_money_in_every_line().await;
}

/// An application node with no factory of its own asks the cohort for three accounts: the
/// coordinator places one on each node (each holds two), the asker gets their addresses, and
/// the next checkpoint holds them. A taken id and an unknown type are
/// refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_created_through_the_cohort_are_placed_by_the_coordinator() {
    let cluster = started(3, false).await;
    let store = CheckpointStore::open(&cluster.store_url(), StoreOptions::default())
        .await
        .unwrap();
    let app = Node::builder(store)
        .name("app")
        .coordinators(vec![cluster.service.local_addr().to_string()])
        .build()
        .await
        .unwrap();
    let new: Vec<ObjectId> = (0..3)
        .map(|i| ObjectId::new(format!("acct-9-{i}")).unwrap())
        .collect();
    for id in &new {
        // The address resolves through the placement: the account lives on another node
        // (inputs from outside the cohort go to local objects only, so none is sent here).
        let account = app.create::<Msg>(id.clone(), "Account").await.unwrap();
        assert_eq!(account.id(), id);
    }
    let status = cluster.status();
    let hosts: BTreeSet<&String> = new.iter().map(|id| &status.table.placement[id]).collect();
    assert_eq!(
        hosts.len(),
        3,
        "one new account per node: {:?}",
        status.table
    );
    match app.create::<Msg>(new[0].clone(), "Account").await {
        Err(Error::CreateRefused { reason, .. }) => assert!(reason.contains("already"), "{reason}"),
        other => panic!(
            "a taken id must be refused, got {:?}",
            other.map(|a| a.id().clone())
        ),
    }
    match app
        .create::<Msg>(ObjectId::new("acct-9-9").unwrap(), "Nope")
        .await
    {
        Err(Error::CreateRefused { reason, .. }) => assert!(reason.contains("Nope"), "{reason}"),
        other => panic!(
            "an unknown type must be refused, got {:?}",
            other.map(|a| a.id().clone())
        ),
    }
    let line = cluster.checkpoint(LONG).await;
    let manifest = cluster.manifest(line).await;
    for id in &new {
        assert!(manifest.objects.contains_key(id), "line {line} holds {id}");
    }
    cluster.assert_money_in_every_line().await;
    app.shutdown();
}

/// An account is removed from the running cohort (`Service::remove`, what `cohort remove`
/// asks): right after the next checkpoint its node drops it and the cohort recovers to that
/// line without it. Later lines do not hold it, the other accounts go on paying each other
/// (past it: a send to it fails at the sender), and every line holds all the money but what it
/// took with it. An id that is not a member is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_removed_from_a_running_cohort_is_in_no_later_line() {
    let cluster = started(3, false).await;
    // The account the bank kicks: it sent one message more than it received.
    let gone = account_ids(3)[0].clone();
    let unknown = cluster
        .service
        .remove(&ObjectId::new("acct-9-9").unwrap())
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("not a member"), "{unknown}");
    cluster.service.remove(&gone).await.unwrap();
    let recoveries = cluster.status().recoveries;
    cluster.checkpoint(LONG).await;
    cluster
        .wait_for("the account is no longer placed", LONG, |s| {
            !s.table.placement.contains_key(&gone) && s.recoveries > recoveries
        })
        .await;
    let before = cluster.hops_at_line().await;
    let line = cluster.line_with_more_hops(before, 3).await;
    let manifest = cluster.manifest(line).await;
    assert!(
        !manifest.objects.contains_key(&gone),
        "line {line} still holds {gone}"
    );
    assert_eq!(manifest.objects.len(), 3 * ACCOUNTS_PER_NODE - 1);
    let again = cluster.service.remove(&gone).await.unwrap_err();
    assert!(again.to_string().contains("not a member"), "{again}");
    cluster.assert_money_in_every_line_without(&gone).await;
}
