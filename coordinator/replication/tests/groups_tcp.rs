//! Groups over real TCP on 127.0.0.1, with a local-disk store, in real time: failover after a
//! crash (a task's connections dropped, and a child process killed with SIGKILL), pull-style
//! `is_alive` detection, and the figures (`detection_and_failover_figures`, ignored by default:
//! `cargo test -p cohort-coordinator --test groups_tcp -- --ignored --nocapture`).
//!
//! No sleeps synchronise: tests wait for events or poll with a deadline. Timing bounds here
//! carry slack for a loaded machine; the exact bounds are asserted under virtual time in
//! `groups_net.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_replication::detector::{Liveness, PullMonitor, PullOptions};
use cohort_replication::monitor::MonitorOptions;
use cohort_replication::{
    GroupConfig, GroupName, Member, MemberEvent, MemberId, MemberOptions, Monitor, SlotEpoch,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

const HB: Duration = Duration::from_millis(50);
const ACT: Duration = Duration::from_millis(150);
/// Scheduling slack on a loaded machine, on top of the protocol's own bounds.
const SLACK: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(20);

const CHILD_ENV: &str = "COHORT_GROUPS_CHILD";

fn config(weight: u16) -> GroupConfig {
    GroupConfig::new("orders", 1)
        .unwrap()
        .with_weight(weight)
        .with_heartbeat_interval(HB)
        .with_activation_interval(ACT)
}

async fn open_store(dir: &std::path::Path) -> CheckpointStore {
    CheckpointStore::open(dir.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap()
}

fn options(name: &str, weight: u16, store: &CheckpointStore, seeds: &[String]) -> MemberOptions {
    let mut options =
        MemberOptions::new(config(weight), MemberId::new(name).unwrap(), store.clone());
    options.seeds = seeds.to_vec();
    options.service_addr = format!("svc-{name}");
    options
}

/// Binds the listeners first, so that every member can be seeded with every address.
async fn start_all(store: &CheckpointStore, members: &[(&str, u16)]) -> (Vec<Member>, Vec<String>) {
    let mut bound = Vec::new();
    for (name, weight) in members {
        let opts = options(name, *weight, store, &[]);
        let listener = opts.listen_config().bind().await.unwrap();
        bound.push((opts, listener));
    }
    let seeds: Vec<String> = bound
        .iter()
        .map(|(_, l)| l.local_addr().to_string())
        .collect();
    let mut started = Vec::new();
    for (mut opts, listener) in bound {
        opts.seeds = seeds.clone();
        started.push(Member::start_on(opts, listener).await.unwrap());
    }
    (started, seeds)
}

async fn wait_for<T>(
    member: &mut Member,
    mut pick: impl FnMut(&MemberEvent) -> Option<T>,
) -> (Instant, T) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, member.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} saw no expected event within {PATIENCE:?}", member.id()))
            .expect("the member stopped");
        if let Some(found) = pick(&event) {
            return (Instant::now(), found);
        }
    }
}

fn activated(event: &MemberEvent) -> Option<SlotEpoch> {
    match event {
        MemberEvent::Activate(se) => Some(*se),
        _ => None,
    }
}

async fn settled(member: &Member, peers: usize) {
    let mut status = member.status();
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.peers.len() == peers && s.active_count == 1),
    )
    .await
    .expect("the group did not settle")
    .unwrap();
}

/// Kills the active member of a settled three-member group; returns the failover time.
async fn one_failover(dir: &std::path::Path) -> Duration {
    let store = open_store(dir).await;
    let (members, _) = start_all(&store, &[("a", 30), ("b", 20), ("c", 10)]).await;
    let [mut a, mut b, c]: [Member; 3] = members.try_into().unwrap();
    wait_for(&mut a, activated).await;
    settled(&c, 2).await;
    let killed = Instant::now();
    a.kill();
    let (at, se) = wait_for(&mut b, activated).await;
    assert_eq!(se.slot, 0);
    b.leave().await;
    c.leave().await;
    at - killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_in_line_activates_after_the_active_member_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let failover = one_failover(dir.path()).await;
    println!(
        "failover after a crash over TCP: {failover:?} (heartbeat {HB:?}, activation {ACT:?})"
    );
    assert!(failover <= ACT + HB + SLACK, "failover took {failover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_joins_with_a_mismatched_goal_is_refused_with_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (_members, seeds) = start_all(&store, &[("a", 10)]).await;
    let mut opts = options("b", 10, &store, &seeds);
    opts.config = opts.config.with_active_goal(2);
    let err = Member::start(opts).await.unwrap_err().to_string();
    assert!(
        err.contains("active_goal 1") && err.contains("this member has 2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_detection_sees_unhealthy_and_crashed_members() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let mut opts = options("a", 10, &store, &[]);
    let flag = Arc::clone(&healthy);
    opts.is_alive = Arc::new(move || flag.load(Ordering::SeqCst));
    let member = Member::start(opts).await.unwrap();
    let (interval, timeout) = (Duration::from_millis(20), Duration::from_millis(50));
    let poller = PullMonitor::start(PullOptions::new(member.addr(), interval, timeout)).unwrap();
    let status = poller.status();
    let wait = |want: Liveness| {
        let mut status = status.clone();
        async move {
            tokio::time::timeout(PATIENCE, status.wait_for(|s| s.liveness == want))
                .await
                .unwrap_or_else(|_| panic!("never {want}"))
                .unwrap()
                .since
        }
    };
    wait(Liveness::Alive).await;
    assert!(status.borrow().last_rtt.is_some());
    healthy.store(false, Ordering::SeqCst);
    wait(Liveness::NotAlive).await;
    healthy.store(true, Ordering::SeqCst);
    wait(Liveness::Alive).await;
    let killed = Instant::now();
    member.kill();
    let seen = wait(Liveness::Unreachable).await;
    let latency = seen - killed;
    println!(
        "pull detection after a crash: {latency:?} (interval {interval:?}, timeout {timeout:?})"
    );
    assert!(latency <= interval + timeout + SLACK, "{latency:?}");
}

/// The child side of the SIGKILL test: runs one member until killed, printing its address and
/// its activations on stdout. Does nothing unless started by the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of sigkill_of_the_active_process_fails_over"]
async fn child_member() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(';');
    let (dir, seeds) = (parts.next().unwrap(), parts.next().unwrap());
    let seeds: Vec<String> = seeds.split(',').map(str::to_owned).collect();
    let store = open_store(std::path::Path::new(dir)).await;
    let mut member = Member::start(options("p", 30, &store, &seeds))
        .await
        .unwrap();
    println!("addr {}", member.addr());
    while let Some(event) = member.next_event().await {
        if let MemberEvent::Activate(se) = event {
            println!("activated {} {}", se.slot, se.epoch);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_active_process_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (members, seeds) = start_all(&store, &[("b", 20), ("c", 10)]).await;
    let [mut b, c]: [Member; 2] = members.try_into().unwrap();
    let (_, first) = wait_for(&mut b, activated).await;
    assert_eq!(first.epoch, 1);

    // A heavier member joins in its own process, and takes over.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_member",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{};{}", dir.path().display(), seeds.join(",")),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + PATIENCE;
    let mut next_line = async || {
        tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the child said nothing in time")
            .unwrap()
            .expect("the child exited")
    };
    let addr = loop {
        let line = next_line().await;
        // libtest may print "test child_member ... " before it on the same line.
        if let Some((_, addr)) = line.split_once("addr ") {
            break addr.parse::<SocketAddr>().unwrap();
        }
    };
    assert!(addr.ip().is_loopback());
    let taken = loop {
        let line = next_line().await;
        if let Some((_, rest)) = line.split_once("activated ") {
            break rest.to_owned();
        }
    };
    assert_eq!(taken, "0 2", "the child took slot 0 with epoch 2");
    let (_, reason) = wait_for(&mut b, |e| match e {
        MemberEvent::Deactivate { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    println!("b stepped down: {reason:?}");
    settled(&c, 2).await;

    let killed = Instant::now();
    child.start_kill().unwrap(); // SIGKILL
    let (at, se) = wait_for(&mut b, activated).await;
    let failover = at - killed;
    println!("failover after SIGKILL of the active process: {failover:?}");
    assert_eq!(se, SlotEpoch { slot: 0, epoch: 3 });
    assert!(failover <= ACT + HB + SLACK, "{failover:?}");
    let status = child.wait().await.unwrap();
    assert!(!status.success());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<44} n={:<3} min {:>7.1?}  median {:>7.1?}  p90 {:>7.1?}  max {:>7.1?}",
        samples.len(),
        samples[0],
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        samples[samples.len() - 1]
    );
}

/// Measures, over real TCP and a local-disk store (fsync on), with heartbeat 50 ms and
/// activation 150 ms: push detection (a monitor with lost_interval = activation), pull
/// detection (poll every 50 ms, timeout 100 ms), and failover (crash of the active member to
/// the activation of the next, fencing claim included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn detection_and_failover_figures() {
    const RUNS: usize = 20;
    let (mut push, mut pull, mut failover) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let (members, seeds) = start_all(&store, &[("a", 30), ("b", 20), ("c", 10)]).await;
        let [mut a, mut b, c]: [Member; 3] = members.try_into().unwrap();
        wait_for(&mut a, activated).await;
        settled(&c, 2).await;
        let mut monitor = Monitor::start(MonitorOptions::new(
            GroupName::new("orders").unwrap(),
            ACT,
            seeds.clone(),
        ))
        .unwrap();
        let mut counts = monitor.counts();
        tokio::time::timeout(
            PATIENCE,
            counts.wait_for(|c| c.count == 1 && c.actives[0].0.as_str() == "a"),
        )
        .await
        .unwrap()
        .unwrap();
        let poller = PullMonitor::start(PullOptions::new(seeds[0].clone(), HB, 2 * HB)).unwrap();
        let mut polled = poller.status();
        tokio::time::timeout(PATIENCE, polled.wait_for(|s| s.liveness == Liveness::Alive))
            .await
            .unwrap()
            .unwrap();

        // Spread the crash over the heartbeat period (not a synchronisation: a measurement
        // of a crash at any phase of it).
        tokio::time::sleep(HB * (run as u32 % 5) / 5).await;
        let killed = Instant::now();
        a.kill();
        let (at, _) = wait_for(&mut b, activated).await;
        failover.push(at - killed);
        let lost = loop {
            let (at, count) = tokio::time::timeout(PATIENCE, monitor.next_change())
                .await
                .unwrap()
                .unwrap();
            if at >= killed && !count.actives.iter().any(|(m, _)| m.as_str() == "a") {
                break at;
            }
        };
        push.push(lost - killed);
        let unreachable = tokio::time::timeout(
            PATIENCE,
            polled.wait_for(|s| s.liveness == Liveness::Unreachable),
        )
        .await
        .unwrap()
        .unwrap()
        .since;
        pull.push(unreachable - killed);
        b.leave().await;
        c.leave().await;
    }
    println!(
        "heartbeat {HB:?}, activation {ACT:?}, {RUNS} runs, TCP on loopback, local-disk store"
    );
    summary("push detection (monitor, lost_interval 150ms)", push);
    summary("pull detection (every 50ms, timeout 100ms)", pull);
    summary("failover (crash → next member active)", failover);
}
