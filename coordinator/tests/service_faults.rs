//! Faults of the coordinator service with REAL node processes on loopback: a node SIGKILLed in
//! each protocol phase, and connections between a node and the service cut, blackholed or
//! delayed by a fault-injecting TCP proxy (`support/proxy.rs`).
//!
//! The phases of a round: `Prepare` → the node's objects prepare and capture, the node writes
//! their states → `Votes` → (`ChannelState` → `Seal` → `Sealed`) → the manifest is created (the
//! commit point) → `Decided` → `on_committed`. Before the commit point a kill aborts the attempt;
//! after it the checkpoint stays committed. Either way the dead node's loss triggers a cohort
//! recovery to the newest committed line (a fence copying it), its replacement restores from it,
//! and every committed line holds all the money (Σ balances + Σ in-transit credits).
//!
//! Synchronisation is on what the processes show: the service's status, the store, the frames
//! the proxies forward or hold, and marker files the accounts write when they pause in a phase.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use cohort_checkpoint::{Manifest, ManifestKind};
use cohort_coordinator::Error;
use cohort_coordinator::engine::{AbortReason, Round};
use cohort_coordinator::service::protocol::{CoordinatorFrame, NodeFrame, WireVote};
use cohort_object_api::{CheckpointId, ObjectId};
use support::bank::{Cluster, Options, Phase, all_live, live, node_of};
use support::proxy::{Proxy, Seen};
use tokio::time::Instant;

/// The node role: runs only in a child process.
#[test]
fn node_process() {
    support::bank::node_role();
}

const LONG: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_secs(10);

/// Three proxied nodes, live, with money moving between them; returns the newest line.
async fn started(options: Options) -> (Cluster, Manifest) {
    let cluster = Cluster::start(Options {
        proxied: true,
        ..options
    })
    .await;
    cluster
        .wait_for("every node live", LONG, all_live(options.nodes))
        .await;
    let committed = cluster.moving_line().await;
    let line = cluster.manifest(committed).await;
    (cluster, line)
}

/// The attempt a node was asked to prepare (forwarded or held by its proxy) since `mark`:
/// `(id, round, round token)`.
async fn attempt_seen(proxy: &Proxy, mark: usize) -> (CheckpointId, Round, String) {
    proxy
        .wait_seen("a prepare", mark, SHORT, |s| match s {
            Seen::Down(CoordinatorFrame::Prepare {
                id, round, token, ..
            })
            | Seen::HeldDown(CoordinatorFrame::Prepare {
                id, round, token, ..
            }) => Some((*id, *round, token.clone())),
            _ => None,
        })
        .await
}

fn trigger(cluster: &Cluster) -> tokio::task::JoinHandle<cohort_coordinator::Result<CheckpointId>> {
    let service = cluster.service.clone();
    tokio::spawn(async move { service.trigger().await })
}

/// The attempt aborted because node `victim` was lost.
fn assert_aborted_by_loss(result: cohort_coordinator::Result<CheckpointId>, victim: usize) {
    match result {
        Err(Error::Aborted {
            reason: AbortReason::HostLost { host },
            ..
        }) => assert_eq!(host.as_str(), format!("node-{victim}")),
        other => panic!("the attempt must abort because node {victim} was lost, got {other:?}"),
    }
}

/// No manifest was committed by the round `token`.
async fn assert_no_manifest_of(cluster: &Cluster, token: &str) {
    let manifests = cluster.manifests().await;
    let found: Vec<_> = manifests
        .iter()
        .filter(|m| m.round == token)
        .map(|m| m.id)
        .collect();
    assert!(
        found.is_empty(),
        "the aborted round {token} left manifests {found:?}"
    );
}

/// After node `victim` was SIGKILLed: it is declared dead and the cohort recovers to `line` (a
/// fence copying it is the recovery line); no checkpoint commits while its accounts are away; a
/// replacement restores from the fence; checkpoints commit again with the replacement's accounts
/// handling messages; every committed line holds all the money; and nothing recovered twice.
async fn recovers_to(cluster: &mut Cluster, victim: usize, line: &Manifest, recoveries: u64) {
    cluster
        .wait_for(
            "the dead node's cohort recovery and its fence",
            SHORT,
            |s| s.recoveries > recoveries && !live(s, victim) && s.last_committed > line.id,
        )
        .await;
    let fence = cluster.recovery_line().await;
    assert_eq!(
        fence.kind,
        ManifestKind::Fence,
        "the recovery writes a fence"
    );
    assert!(fence.id > line.id);
    assert_eq!(
        fence.objects, line.objects,
        "the recovery rolled back to line {} (fence {})",
        line.id, fence.id
    );
    assert_eq!(fence.in_transit, line.in_transit);
    match cluster.service.trigger().await {
        Err(Error::Aborted { .. }) => {}
        other => panic!("a checkpoint without node {victim}'s accounts must abort, got {other:?}"),
    }
    let victim_hops: u64 = cluster
        .accounts_at_line()
        .await
        .iter()
        .filter(|(a, _)| node_of(a) == victim)
        .map(|(_, (_, h))| h)
        .sum();

    let mark = cluster.proxy(victim).mark();
    cluster.spawn(victim);
    let proxy = cluster.proxy(victim);
    let restored_from = proxy
        .wait_seen("the replacement's restore order", mark, LONG, |s| match s {
            Seen::Down(CoordinatorFrame::Restore { line, .. }) => Some(*line),
            _ => None,
        })
        .await;
    assert_eq!(
        restored_from,
        Some(fence.id),
        "the replacement restores the fence"
    );
    let restored = proxy
        .wait_seen("the replacement's answer", mark, LONG, |s| match s {
            Seen::Up(NodeFrame::Restored { result, .. }) => Some(result.clone()),
            _ => None,
        })
        .await;
    assert_eq!(restored, Ok(()));
    let after = cluster
        .line_with_more_hops_on(Some(victim), victim_hops, 5)
        .await;
    assert!(after > fence.id);
    let (newest, money) = cluster.money_at_line().await;
    assert_eq!(newest, after);
    assert_eq!(
        money,
        cluster.total(),
        "money is conserved across the recovery"
    );
    cluster.assert_money_in_every_line().await;
    assert_eq!(cluster.status().recoveries, recoveries + 1);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of a node in each phase

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_rounds_recovers_the_newest_line() {
    let (mut cluster, line) = started(Options::new(3, Duration::from_millis(500))).await;
    cluster.kill(1);
    recovers_to(&mut cluster, 1, &line, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_prepare_aborts_and_recovers_the_newest_line() {
    let (mut cluster, line) = started(Options::new(3, Duration::from_millis(500))).await;
    let marks = cluster.marks();
    cluster.block_after(2, Phase::Prepare, line.id);
    let attempt = trigger(&cluster);
    cluster.wait_reached(2, Phase::Prepare, SHORT).await;
    let (_, _, token) = attempt_seen(cluster.proxy(2), marks[2]).await;
    cluster.kill(2);
    cluster.unblock(2, Phase::Prepare);
    assert_aborted_by_loss(attempt.await.unwrap(), 2);
    assert_no_manifest_of(&cluster, &token).await;
    recovers_to(&mut cluster, 2, &line, 0).await;
}

/// Node 1 has voted (its votes went through its proxy to the service) while node 2 still
/// prepares: the round is undecided when node 1 dies, so it aborts. Node 1's states are
/// durable, so its loss alone need not abort the attempt; its death's recovery does, as
/// node 2 has not voted by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_vote_before_the_decision_aborts_and_recovers_the_newest_line() {
    let (mut cluster, line) = started(Options::new(3, Duration::from_secs(1))).await;
    let marks = cluster.marks();
    cluster.block_after(2, Phase::Prepare, line.id);
    let attempt = trigger(&cluster);
    cluster.wait_reached(2, Phase::Prepare, SHORT).await;
    let (id, round, token) = attempt_seen(cluster.proxy(1), marks[1]).await;
    let votes = cluster
        .proxy(1)
        .wait_seen("node 1's votes", marks[1], SHORT, |s| match s {
            Seen::Up(NodeFrame::Votes {
                round: r, votes, ..
            }) if *r == round => Some(votes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(votes.len(), 2, "{votes:?}");
    assert!(
        votes.iter().all(|(_, v)| matches!(v, WireVote::Yes { .. })),
        "{votes:?}"
    );
    assert_eq!(cluster.status().in_flight, Some((id, round)), "undecided");

    cluster.kill(1);
    match attempt.await.unwrap() {
        // Halted by the dead node's recovery (checked below).
        Err(Error::Aborted {
            reason: AbortReason::Halted,
            ..
        }) => {}
        other => assert_aborted_by_loss(other, 1),
    }
    // Node 2's accounts finish preparing a round that is over.
    cluster.unblock(2, Phase::Prepare);
    assert_no_manifest_of(&cluster, &token).await;
    recovers_to(&mut cluster, 1, &line, 0).await;
}

/// An attempt in which node 1 recorded messages in transit, with node 0's `Prepare` still held
/// by its proxy (release it to let the attempt go on).
struct ChannelRound {
    attempt: tokio::task::JoinHandle<cohort_coordinator::Result<CheckpointId>>,
    id: CheckpointId,
    round: Round,
    token: String,
    /// The newest line before the attempt.
    line: Manifest,
    /// Each proxy's mark before the attempt.
    marks: Vec<usize>,
}

/// Starts attempts until one has messages in transit to node 1. To have them for sure, node 0's
/// `Prepare` is held back: node 1 captures first, and what node 0's accounts send it before
/// their own capture crosses the cut. With `hold_seal`, node 1's proxy also holds the `Seal`.
async fn channel_round(cluster: &Cluster, hold_seal: bool) -> ChannelRound {
    for _ in 0..5 {
        let line = cluster.manifest(cluster.status().last_committed).await;
        let marks = cluster.marks();
        cluster
            .proxy(0)
            .hold_down(|f| matches!(f, CoordinatorFrame::Prepare { .. }));
        if hold_seal {
            cluster
                .proxy(1)
                .hold_down(|f| matches!(f, CoordinatorFrame::Seal { .. }));
        }
        let attempt = trigger(cluster);
        let (id, round, token) = attempt_seen(cluster.proxy(0), marks[0]).await;
        // Well within the heartbeat timeout: node 0 hears nothing while its frames are held.
        let recorded = cluster
            .proxy(1)
            .try_wait_seen(marks[1], Duration::from_millis(500), |s| {
                matches!(s, Seen::Up(NodeFrame::ChannelState { round: r, .. }) if *r == round)
                    .then_some(())
            })
            .await;
        if recorded.is_some() {
            return ChannelRound {
                attempt,
                id,
                round,
                token,
                line,
                marks,
            };
        }
        cluster.proxy(0).release();
        cluster.proxy(1).release();
        let _ = attempt.await.unwrap();
    }
    panic!("no messages in transit to node 1 in 5 attempts");
}

/// A [`channel_round`] whose votes are all in: node 0's prepare goes on, and node 1's `Seal`
/// is caught by its proxy (the attempt waits for it).
async fn seal_held(cluster: &Cluster) -> ChannelRound {
    let r = channel_round(cluster, true).await;
    cluster.proxy(0).release();
    cluster
        .proxy(1)
        .wait_seen("the seal held before node 1", r.marks[1], SHORT, |s| {
            matches!(s, Seen::HeldDown(CoordinatorFrame::Seal { round }) if *round == r.round)
                .then_some(())
        })
        .await;
    r
}

/// Node 1 recorded messages in transit and is asked to seal them (the `Seal` is held by its
/// proxy) when it dies: the attempt fails before the commit point and leaves no manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_sealing_channel_state_fails_the_attempt_and_recovers_the_newest_line() {
    let (mut cluster, _) = started(Options {
        kick_all: true,
        ..Options::new(3, Duration::from_secs(2))
    })
    .await;
    let r = seal_held(&cluster).await;
    assert_eq!(
        cluster.status().in_flight,
        Some((r.id, r.round)),
        "undecided"
    );
    cluster.kill(1);
    cluster.proxy(1).release();
    // Lost while it seals: the commit point was not reached, the attempt aborts.
    assert_aborted_by_loss(r.attempt.await.unwrap(), 1);
    assert_no_manifest_of(&cluster, &r.token).await;
    recovers_to(&mut cluster, 1, &r.line, 0).await;
}

/// The votes of `round` a proxy forwarded or holds since `mark`.
async fn votes_seen(proxy: &Proxy, mark: usize, round: Round) -> Vec<(ObjectId, WireVote)> {
    proxy
        .wait_seen("votes", mark, SHORT, |s| match s {
            Seen::Up(NodeFrame::Votes {
                round: r, votes, ..
            })
            | Seen::HeldUp(NodeFrame::Votes {
                round: r, votes, ..
            }) if *r == round => Some(votes.clone()),
            _ => None,
        })
        .await
}

/// In-transit records of `round` the proxies forwarded or hold since `marks`.
fn records_seen(cluster: &Cluster, marks: &[usize], round: Round) -> usize {
    (0..marks.len())
        .flat_map(|i| cluster.proxy(i).seen_since(marks[i]))
        .map(|s| match s {
            Seen::Up(NodeFrame::ChannelState { round: r, entries })
            | Seen::HeldUp(NodeFrame::ChannelState { round: r, entries })
                if r == round =>
            {
                entries.len()
            }
            _ => 0,
        })
        .sum()
}

/// Node 1 recorded messages in transit and voted, and every message that crossed the cut is
/// recorded; node 1 dies, and only then does the last vote (node 0's, held by its proxy) reach
/// the service. The commit needs node 1's channel state sealed, which a lost node cannot do:
/// the attempt fails at once instead of waiting for a `Sealed` that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_recording_channel_state_before_the_seal_fails_the_attempt() {
    let (mut cluster, _) = started(Options {
        kick_all: true,
        ..Options::new(3, Duration::from_secs(2))
    })
    .await;
    let r = channel_round(&cluster, false).await;
    cluster
        .proxy(0)
        .hold_up(|f| matches!(f, NodeFrame::Votes { .. }));
    cluster.proxy(0).release_down();
    // Σ sent − Σ received over every vote: the messages that crossed the cut.
    let mut crossed: i128 = 0;
    for i in 0..3 {
        for (_, vote) in votes_seen(cluster.proxy(i), r.marks[i], r.round).await {
            let WireVote::Yes { sent, received, .. } = vote else {
                panic!("node {i} voted no");
            };
            crossed += i128::from(sent) - i128::from(received);
        }
    }
    let end = Instant::now() + SHORT;
    while (records_seen(&cluster, &r.marks, r.round) as i128) < crossed {
        assert!(
            Instant::now() < end,
            "{crossed} messages crossed the cut but fewer were recorded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(1);
    cluster
        .wait_for("node 1 lost", SHORT, |s| !live(s, 1))
        .await;
    cluster.proxy(0).release_up();
    let result = tokio::time::timeout(SHORT, r.attempt)
        .await
        .expect("the attempt must end, not wait for a seal from a lost node")
        .unwrap();
    assert_aborted_by_loss(result, 1);
    assert_no_manifest_of(&cluster, &r.token).await;
    recovers_to(&mut cluster, 1, &r.line, 0).await;
}

/// The commit waits for node 1 to seal its channel state (its `Seal` is held by its proxy)
/// when node 2 dies: the attempt, past the votes but not committed, must end (node 2 takes
/// part in it) rather than wait for the seal, and the recovery must run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dead_while_another_seals_fails_the_attempt_and_recovers_the_newest_line() {
    let (mut cluster, _) = started(Options {
        kick_all: true,
        ..Options::new(3, Duration::from_secs(1))
    })
    .await;
    let r = seal_held(&cluster).await;
    // If node 2 recorded messages too, it was asked to seal them: let it answer first, so
    // that only its death can end the wait.
    let node2_records =
        cluster.proxy(2).seen_since(r.marks[2]).iter().any(
            |s| matches!(s, Seen::Up(NodeFrame::ChannelState { round, .. }) if *round == r.round),
        );
    if node2_records {
        cluster
            .proxy(2)
            .wait_seen("node 2 sealed", r.marks[2], SHORT, |s| {
                matches!(s, Seen::Up(NodeFrame::Sealed { round, .. }) if *round == r.round)
                    .then_some(())
            })
            .await;
    }
    cluster.kill(2);
    let result = tokio::time::timeout(SHORT, r.attempt)
        .await
        .expect("node 2's recovery must end the attempt")
        .unwrap();
    // Node 2 takes part: the attempt ends as soon as its loss is known, before the recovery.
    assert_aborted_by_loss(result, 2);
    // Node 1 gets its `Seal` late, then the recovery's orders.
    cluster.proxy(1).release();
    assert_no_manifest_of(&cluster, &r.token).await;
    recovers_to(&mut cluster, 2, &r.line, 0).await;
}

/// The manifest exists (the commit point is passed) and the `Decided` to node 1 is held by its
/// proxy when node 1 dies: the checkpoint stays committed and recovery lands on exactly it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_commit_point_before_the_decision_arrives_keeps_the_checkpoint() {
    let (mut cluster, before) = started(Options::new(3, Duration::from_secs(1))).await;
    let marks = cluster.marks();
    let newer = before.id;
    cluster
        .proxy(1)
        .hold_down(move |f| matches!(f, CoordinatorFrame::Decided { id, .. } if *id > newer));
    let attempt = trigger(&cluster);
    let (id, round, token) = attempt_seen(cluster.proxy(1), marks[1]).await;
    let committed = cluster
        .proxy(1)
        .wait_seen(
            "the decision held before node 1",
            marks[1],
            SHORT,
            |s| match s {
                Seen::HeldDown(CoordinatorFrame::Decided {
                    id: i,
                    round: r,
                    committed,
                }) if (*i, *r) == (id, round) => Some(*committed),
                _ => None,
            },
        )
        .await;
    assert!(committed);
    let manifest = cluster.manifest(id).await;
    assert_eq!(
        manifest.round, token,
        "the manifest of this round is the commit point"
    );

    cluster.kill(1);
    cluster.proxy(1).release();
    assert_eq!(attempt.await.unwrap().unwrap(), id);
    recovers_to(&mut cluster, 1, &manifest, 0).await;
}

/// Node 1's accounts got `Decided` and are inside `on_committed` when node 1 dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_handling_the_decision_keeps_the_checkpoint() {
    let (mut cluster, before) = started(Options::new(3, Duration::from_secs(1))).await;
    cluster.block_after(1, Phase::Committed, before.id);
    let id = cluster.service.trigger().await.unwrap();
    cluster.wait_reached(1, Phase::Committed, SHORT).await;
    cluster.kill(1);
    cluster.unblock(1, Phase::Committed);
    let manifest = cluster.manifest(id).await;
    assert_eq!(manifest.kind, ManifestKind::Checkpoint);
    recovers_to(&mut cluster, 1, &manifest, 0).await;
}

// ---------------------------------------------------------------------------------------------
// Cut connections

/// The session node 0 was welcomed with since `mark`: `(session, resumed)`.
async fn welcome(proxy: &Proxy, mark: usize) -> (u64, bool) {
    proxy
        .wait_seen("a welcome", mark, LONG, |s| match s {
            Seen::Down(CoordinatorFrame::Welcome {
                session, resumed, ..
            }) => Some((*session, *resumed)),
            _ => None,
        })
        .await
}

/// After node 0 was away longer than the timeout: it was declared dead and the others rolled
/// back to `line`; once the proxy heals, node 0 registers with a new session, restores the
/// fence, and its accounts handle messages again; no other recovery happens.
async fn returns_with_a_new_session(cluster: &Cluster, line: &Manifest, session: u64, mark: usize) {
    let fence = cluster.recovery_line().await;
    assert_eq!(fence.kind, ManifestKind::Fence);
    assert_eq!(
        fence.objects, line.objects,
        "rolled back to line {}",
        line.id
    );
    match cluster.service.trigger().await {
        Err(Error::Aborted { .. }) => {}
        other => panic!("a checkpoint without node 0's accounts must abort, got {other:?}"),
    }
    let node0_hops: u64 = cluster
        .accounts_at_line()
        .await
        .iter()
        .filter(|(a, _)| node_of(a) == 0)
        .map(|(_, (_, h))| h)
        .sum();
    cluster.proxy(0).heal();
    let proxy = cluster.proxy(0);
    let (again, resumed) = welcome(proxy, mark).await;
    assert!(!resumed, "a dead node's session is not resumed");
    assert_ne!(again, session);
    let restored_from = proxy
        .wait_seen("node 0's restore order", mark, LONG, |s| match s {
            Seen::Down(CoordinatorFrame::Restore { line, .. }) => Some(*line),
            _ => None,
        })
        .await;
    assert_eq!(restored_from, Some(fence.id));
    cluster.wait_for("node 0 back", LONG, all_live(3)).await;
    cluster.line_with_more_hops_on(Some(0), node0_hops, 5).await;
    let (_, money) = cluster.money_at_line().await;
    assert_eq!(money, cluster.total());
    cluster.assert_money_in_every_line().await;
    assert_eq!(cluster.status().recoveries, 1);
}

/// The proxy drops both sockets and refuses node 0 beyond the heartbeat timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_longer_than_the_timeout_recovers_and_the_node_returns_with_a_new_session() {
    let timeout = Duration::from_millis(500);
    let (cluster, line) = started(Options::new(3, timeout)).await;
    let (session, _) = welcome(cluster.proxy(0), 0).await;
    let mark = cluster.proxy(0).mark();
    cluster.proxy(0).cut();
    cluster
        .wait_for("node 0 declared dead and the fence", SHORT, |s| {
            s.recoveries == 1 && !live(s, 0) && s.last_committed > line.id
        })
        .await;
    cluster
        .proxy(0)
        .wait_counts("node 0 retrying during the cut", SHORT, |p| p.refused() > 0)
        .await;
    returns_with_a_new_session(&cluster, &line, session, mark).await;
}

/// The connection stays open but no byte moves: only heartbeats can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_longer_than_the_timeout_is_detected_by_heartbeats() {
    let timeout = Duration::from_millis(500);
    let (cluster, line) = started(Options::new(3, timeout)).await;
    let (session, _) = welcome(cluster.proxy(0), 0).await;
    let mark = cluster.proxy(0).mark();
    let started = Instant::now();
    cluster.proxy(0).blackhole();
    cluster
        .wait_for("node 0 lost", SHORT, |s| !live(s, 0))
        .await;
    // The timeout runs from the last frame, at most a heartbeat interval (50 ms) before.
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(100),
        "lost after {:?}: nothing closed the connection, only the heartbeat timeout may",
        started.elapsed()
    );
    cluster
        .wait_for("node 0 declared dead and the fence", SHORT, |s| {
            s.recoveries == 1 && s.last_committed > line.id
        })
        .await;
    assert_eq!(cluster.proxy(0).refused(), 0);
    returns_with_a_new_session(&cluster, &line, session, mark).await;
}

/// The proxy drops both sockets and refuses node 0 for less than the timeout: node 0 resumes
/// its session, nothing is restored, and messages keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_shorter_than_the_timeout_resumes_without_recovery() {
    let timeout = Duration::from_secs(3);
    let (cluster, _) = started(Options::new(3, timeout)).await;
    let (session, _) = welcome(cluster.proxy(0), 0).await;
    let before = cluster.hops_at_line().await;
    let mark = cluster.proxy(0).mark();
    let started = Instant::now();
    cluster.proxy(0).cut();
    cluster
        .wait_for("node 0 lost", SHORT, |s| !live(s, 0))
        .await;
    cluster
        .proxy(0)
        .wait_counts("node 0 retrying during the cut", SHORT, |p| p.refused() > 0)
        .await;
    cluster.proxy(0).heal();
    let (again, resumed) = welcome(cluster.proxy(0), mark).await;
    assert!(
        started.elapsed() < timeout,
        "the cut lasted {:?}, not less than the timeout; the test proves nothing",
        started.elapsed()
    );
    assert!(resumed, "the session resumes");
    assert_eq!(again, session);
    cluster.wait_for("node 0 back", SHORT, all_live(3)).await;
    cluster.line_with_more_hops(before, 20).await;
    for _ in 0..2 {
        cluster.service.trigger().await.unwrap();
    }
    // The new connection's first `Prepare` lists node 0's participants (the node forgot the
    // old connection's list); the next ones, with the same participants, do not list them.
    let listed: Vec<bool> = (cluster.proxy(0).seen_since(mark).into_iter())
        .skip_while(|s| !matches!(s, Seen::Down(CoordinatorFrame::Welcome { .. })))
        .filter_map(|s| match s {
            Seen::Down(CoordinatorFrame::Prepare { objects, .. }) => Some(objects.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(
        listed.first(),
        Some(&true),
        "a new connection's first Prepare lists the participants: {listed:?}"
    );
    assert!(
        listed[1..].contains(&false),
        "an unchanged list is not sent again: {listed:?}"
    );
    let (_, money) = cluster.money_at_line().await;
    assert_eq!(money, cluster.total());
    cluster.assert_money_in_every_line().await;
    assert_eq!(cluster.status().recoveries, 0);
    let restores = cluster
        .proxy(0)
        .seen_since(mark)
        .into_iter()
        .filter(|s| matches!(s, Seen::Down(CoordinatorFrame::Restore { .. })))
        .count();
    assert_eq!(restores, 0, "nothing is restored after a blip");
}

/// Node 1's `Decided` is lost with its connection (held by the proxy, then a cut shorter than
/// the timeout): when the node resumes its session, the service sends the decision again and
/// node 1's accounts run `on_committed` for that checkpoint (a 2PC sink must not miss it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_lost_in_a_short_cut_is_sent_again_when_the_session_resumes() {
    let timeout = Duration::from_secs(3);
    let (cluster, before) = started(Options::new(3, timeout)).await;
    let (session, _) = welcome(cluster.proxy(1), 0).await;
    let newer = before.id;
    // Only this test's checkpoint: a late decision of an earlier one must not pause node 1.
    cluster.block_after(1, Phase::Committed, newer);
    cluster
        .proxy(1)
        .hold_down(move |f| matches!(f, CoordinatorFrame::Decided { id, .. } if *id > newer));
    let mark = cluster.proxy(1).mark();
    let id = cluster.service.trigger().await.unwrap();
    cluster
        .proxy(1)
        .wait_seen("the decision held before node 1", mark, SHORT, |s| {
            matches!(s, Seen::HeldDown(CoordinatorFrame::Decided { id: i, committed: true, .. }) if *i == id)
                .then_some(())
        })
        .await;
    // The held decision dies with the connection; the next one is not held.
    let started = Instant::now();
    cluster.proxy(1).cut();
    cluster.proxy(1).release();
    cluster
        .wait_for("node 1 lost", SHORT, |s| !live(s, 1))
        .await;
    let mark = cluster.proxy(1).mark();
    cluster.proxy(1).heal();
    let (again, resumed) = welcome(cluster.proxy(1), mark).await;
    assert!(
        started.elapsed() < timeout,
        "the cut lasted {:?}, not less than the timeout; the test proves nothing",
        started.elapsed()
    );
    assert!(resumed && again == session, "the session resumes");
    cluster
        .proxy(1)
        .wait_seen("the decision sent again", mark, SHORT, |s| {
            matches!(s, Seen::Down(CoordinatorFrame::Decided { id: i, committed: true, .. }) if *i == id)
                .then_some(())
        })
        .await;
    // No other checkpoint was triggered: this on_committed is the resent decision's.
    cluster.wait_reached(1, Phase::Committed, SHORT).await;
    cluster.unblock(1, Phase::Committed);
    assert_eq!(cluster.status().recoveries, 0);
}

/// Node 0 is away (a cut shorter than its timeout) while a cohort recovery runs without it (node
/// 2 restarts, faster than the timeout: the service treats the old process as dead). When node 0
/// resumes its session it must restore to the line like the others did, not go on from where it
/// was: its accounts ran past the line, and the others' messages now come from a newer
/// incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_during_a_recovery_restores_when_it_resumes() {
    let timeout = Duration::from_secs(5);
    let (mut cluster, _) = started(Options::new(3, timeout)).await;
    let (session, _) = welcome(cluster.proxy(0), 0).await;
    let before = cluster.hops_at_line().await;
    let started = Instant::now();
    cluster.proxy(0).cut();
    cluster
        .wait_for("node 0 away", SHORT, |s| !live(s, 0))
        .await;
    cluster.kill(2);
    cluster.spawn(2);
    cluster
        .wait_for("the recovery for node 2's restart", SHORT, |s| {
            s.recoveries >= 1 && live(s, 1) && live(s, 2)
        })
        .await;
    let mark = cluster.proxy(0).mark();
    cluster.proxy(0).heal();
    let (again, resumed) = welcome(cluster.proxy(0), mark).await;
    assert!(
        started.elapsed() < timeout,
        "node 0 was away {:?}, not less than its timeout; the test proves nothing",
        started.elapsed()
    );
    assert!(resumed && again == session, "node 0 resumes its session");
    cluster
        .proxy(0)
        .wait_seen("node 0 told to restore", mark, SHORT, |s| {
            matches!(s, Seen::Down(CoordinatorFrame::Restore { .. })).then_some(())
        })
        .await;
    cluster
        .wait_for("every node live", SHORT, all_live(3))
        .await;
    cluster.line_with_more_hops(before, 20).await;
    let (_, money) = cluster.money_at_line().await;
    assert_eq!(money, cluster.total());
    cluster.assert_money_in_every_line().await;
}

/// The service drops node 0's connection itself (`Service::cut_connection`) within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_by_the_service_within_the_timeout_resumes_without_recovery() {
    let (cluster, _) = started(Options::new(2, Duration::from_secs(3))).await;
    let before = cluster.hops_at_line().await;
    let mark = cluster.proxy(0).mark();
    cluster.service.cut_connection("node-0");
    let (_, resumed) = welcome(cluster.proxy(0), mark).await;
    assert!(resumed);
    cluster.wait_for("node 0 back", SHORT, all_live(2)).await;
    cluster.line_with_more_hops(before, 20).await;
    assert_eq!(cluster.status().recoveries, 0);
    let (_, money) = cluster.money_at_line().await;
    assert_eq!(money, cluster.total());
}
