//! A highly available coordinator with real processes on loopback: two `cohort serve` on one
//! store and a node process (this test binary, re-executed in the `node_role` test).
//!
//! - SIGKILL of the leader: the standby claims the next epoch within its lease, and the next
//!   checkpoint commits under it.
//! - A leader stopped (SIGSTOP) right before a commit and resumed (SIGCONT) after the standby
//!   took over: its commit is fenced, it steps down, and the store holds no manifest of its
//!   epoch after the new leader's fence.
//! - A leader stopped in the middle of a cohort recovery (a node died), right before its fence,
//!   and resumed after the standby took over: its fence is refused, and no manifest of its
//!   epoch follows the new leader's, nor does any fence point behind a committed line.
//!
//! Synchronisation is by bounded polling with deadlines of what the processes print and what
//! the store holds; never by sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

mod ha_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use cohort::checkpoint::{CheckpointStore, Manifest, ManifestKind};
use ha_support::{Proc, address_in, cohort_bin, poll, store_dir};

const LEASE: Duration = Duration::from_secs(1);
/// Generous bounds for a debug build on two busy cores; the bench measures the real figures.
const SLACK: Duration = Duration::from_millis(1_500);
const NODE_ENV: &str = "COHORT_HA_TEST_NODE";

/// Not a test of its own: the body of a node process (see [`ha_support::node_role`]).
#[test]
fn node_role() {
    ha_support::node_role(NODE_ENV);
}

fn spawn_node(name: &str, store: &str, coordinators: &[&str]) -> Proc {
    ha_support::spawn_node(NODE_ENV, name, store, coordinators)
}

fn spawn_serve(name: &str, store: &str, extra: &[&str]) -> (Proc, String) {
    spawn_serve_env(name, store, extra, &[])
}

fn spawn_serve_env(
    name: &str,
    store: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, String) {
    let mut cmd = Command::new(cohort_bin());
    cmd.args([
        "serve",
        "--store",
        store,
        "--listen",
        "127.0.0.1:0",
        "--lease",
        "1s",
        "--interval",
        "200ms",
        "--heartbeat",
        "100ms",
        "--heartbeat-timeout",
        "800ms",
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .envs(env.iter().copied());
    let proc = Proc::spawn(name, cmd);
    let line = proc.wait_for_line("nodes connect to", Duration::from_secs(20));
    let addr = address_in(&line, "nodes connect to ");
    (proc, addr)
}

/// Reads the store (a fresh handle each time, as another process would).
fn manifests(url: &str) -> Vec<Manifest> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = CheckpointStore::open_read_only(url).await.unwrap();
        let mut out = Vec::new();
        for id in store.committed_ids().await.unwrap() {
            out.push(store.read_manifest(id).await.unwrap());
        }
        out
    })
}

fn newest_epoch(url: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = CheckpointStore::open_read_only(url).await.unwrap();
        store.newest_epoch().await.unwrap().map_or(0, |r| r.epoch)
    })
}

/// The first committed checkpoint (not a fence) of `epoch` holding every counter of `nodes`.
fn checkpoint_of(url: &str, epoch: u64, objects: usize) -> Option<Manifest> {
    manifests(url).into_iter().find(|m| {
        m.epoch == epoch && m.kind == ManifestKind::Checkpoint && m.objects.len() == objects
    })
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn sigkill_of_the_leader_hands_over_within_the_lease() {
    let (_dir, url) = store_dir();
    let (a, a_addr) = spawn_serve("serve-a", &url, &[]);
    a.wait_for_line("leading under epoch 1", Duration::from_secs(10));
    let (b, b_addr) = spawn_serve("serve-b", &url, &[]);
    b.wait_for_line("standby: epoch 1", Duration::from_secs(10));
    let _node = spawn_node("node-1", &url, &[&a_addr, &b_addr]);
    poll(Duration::from_secs(20), || checkpoint_of(&url, 1, 4))
        .expect("a checkpoint of the node's four counters under epoch 1");

    let mut a = a;
    a.signal("KILL");
    let killed = Instant::now();
    a.wait_exit(Duration::from_secs(5));

    poll(Duration::from_secs(10), || {
        (newest_epoch(&url) >= 2).then_some(())
    })
    .expect("the standby claims epoch 2");
    let claimed = killed.elapsed();
    let committed = poll(Duration::from_secs(20), || checkpoint_of(&url, 2, 4))
        .expect("a checkpoint under epoch 2");
    let recovered = killed.elapsed();
    eprintln!(
        "failover: claimed after {claimed:?}, next checkpoint {} after {recovered:?}",
        committed.id
    );
    b.wait_for_line("leading under epoch 2", Duration::from_secs(1));
    // A lease since the last renewal (at most a third of a lease before the kill), a poll, and
    // the claim.
    assert!(
        claimed <= LEASE + LEASE / 4 + SLACK,
        "claimed after {claimed:?}"
    );
    assert!(
        claimed >= LEASE / 2,
        "claimed after only {claimed:?}: the lease was not waited out"
    );
    assert!(
        recovered <= 2 * LEASE + 2 * SLACK,
        "next checkpoint after {recovered:?}"
    );

    // The fence sits between the two epochs, and nothing of epoch 1 follows it.
    let all = manifests(&url);
    let fence = all
        .iter()
        .find(|m| m.kind == ManifestKind::Fence && m.epoch == 2)
        .expect("epoch 2's fence");
    assert!(all.iter().filter(|m| m.id > fence.id).all(|m| m.epoch == 2));
}

#[test]
fn a_paused_leader_resumed_after_a_takeover_is_fenced() {
    let (_dir, url) = store_dir();
    // a stops itself (SIGSTOP, at the core's fail point) right before the manifest create
    // of its fifth commit.
    let (a, a_addr) = spawn_serve_env(
        "serve-a",
        &url,
        &["--metrics", "127.0.0.1:0"],
        &[("COHORT_FAIL_POINTS", "commit.before-manifest=stop@5")],
    );
    let metrics = address_in(
        &a.wait_for_line("metrics at http://", Duration::from_secs(10)),
        "metrics at http://",
    )
    .trim_end_matches("/metrics")
    .to_owned();
    a.wait_for_line("leading under epoch 1", Duration::from_secs(10));
    let (b, b_addr) = spawn_serve("serve-b", &url, &[]);
    b.wait_for_line("standby: epoch 1", Duration::from_secs(10));
    let _node = spawn_node("node-1", &url, &[&a_addr, &b_addr]);

    a.wait_for_line("fail points armed", Duration::from_secs(10));
    // The fail point stops the process from inside; wait until the kernel says so.
    poll(Duration::from_secs(30), || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", a.pid())).ok()?;
        let state = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .to_owned();
        (state == "T").then_some(())
    })
    .expect("a is stopped");
    let stopped_at = manifests(&url).last().map_or(0, |m| m.id.get());

    b.wait_for_line("leading under epoch 2", Duration::from_secs(10));
    let fence = poll(Duration::from_secs(5), || {
        manifests(&url)
            .into_iter()
            .find(|m| m.kind == ManifestKind::Fence && m.epoch == 2)
    })
    .expect("epoch 2's fence");
    assert_eq!(
        fence.id.get(),
        stopped_at + 1,
        "the fence takes the id a was about to create"
    );

    a.signal("CONT");
    // Its commit in flight is refused by the store. When its lease timer fires first it has
    // stepped down by then, and the refusal is logged (as the service's `deposed`) rather
    // than announced as a leadership transition: either line says the commit was fenced.
    poll(Duration::from_secs(10), || {
        a.output().into_iter().find(|l| {
            l.contains("a commit was fenced") || l.contains("the store fenced the commit")
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "serve-a never said its commit was fenced; it printed:\n{}",
            a.output().join("\n")
        )
    });
    a.wait_for_line("stepped down from epoch 1", Duration::from_secs(10));
    a.wait_for_line("standby: epoch 2", Duration::from_secs(10));
    let exposition = poll(Duration::from_secs(5), || {
        let text = scrape(&metrics);
        text.lines().any(|l| l == "cohort_leader 0").then_some(text)
    })
    .expect("a's metrics say it no longer leads");
    assert!(exposition.contains("cohort_leader_epoch 0"), "{exposition}");
    // Four checkpoints committed before the pause: timed, sized and with the node's pause.
    let value = |name: &str| -> f64 {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {exposition}"))
    };
    assert!(
        value("cohort_checkpoints_committed_total") >= 4.0,
        "{exposition}"
    );
    for histogram in [
        "cohort_checkpoint_duration_seconds_count",
        "cohort_checkpoint_size_bytes_count",
    ] {
        assert!(value(histogram) >= 4.0, "{histogram}: {exposition}");
    }
    assert!(
        value("cohort_checkpoint_size_bytes_sum") > 0.0,
        "{exposition}"
    );
    // A sample per checkpoint the node captured in: the first checkpoints may commit before it
    // registered, and its idle objects are not captured again (minimal participation).
    assert!(
        value("cohort_checkpoint_pause_seconds_count") >= 1.0,
        "{exposition}"
    );

    // The new leader goes on committing, and no manifest of epoch 1 follows its fence.
    poll(Duration::from_secs(20), || checkpoint_of(&url, 2, 4))
        .expect("a checkpoint under epoch 2");
    let all = manifests(&url);
    let late: Vec<_> = all
        .iter()
        .filter(|m| m.id > fence.id && m.epoch < 2)
        .map(|m| (m.id, m.epoch))
        .collect();
    assert!(
        late.is_empty(),
        "manifests of a deposed epoch after the fence: {late:?}"
    );
    drop(b);
}

/// The deposed-leader bug a cluster under SIGKILL and SIGSTOP found: a leader counts a node
/// lost, is paused past its lease while its recovery is pending, the standby claims the next
/// epoch and fences, and the old leader resumes. Its recovery's fence must not land: epochs
/// never go down along the ids, and no fence points behind a committed checkpoint.
#[test]
fn a_leader_paused_inside_a_recovery_writes_no_fence_after_the_takeover() {
    let (_dir, url) = store_dir();
    // a stops itself (SIGSTOP, at the core's fail point) right before its first recovery's
    // fence: the recovery that node-2's death starts.
    let (a, a_addr) = spawn_serve_env(
        "serve-a",
        &url,
        &[],
        &[("COHORT_FAIL_POINTS", "recover.before-fence=stop@1")],
    );
    a.wait_for_line("leading under epoch 1", Duration::from_secs(10));
    let (b, b_addr) = spawn_serve("serve-b", &url, &[]);
    b.wait_for_line("standby: epoch 1", Duration::from_secs(10));
    let _node1 = spawn_node("node-1", &url, &[&a_addr, &b_addr]);
    let node2 = spawn_node("node-2", &url, &[&a_addr, &b_addr]);
    poll(Duration::from_secs(20), || checkpoint_of(&url, 1, 8)).expect("both nodes take part");

    node2.signal("KILL");
    // Declared dead, the node's recovery restores node-1 and stops before the fence.
    poll(Duration::from_secs(20), || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", a.pid())).ok()?;
        let state = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .to_owned();
        (state == "T").then_some(())
    })
    .expect("a stops before its recovery's fence");
    b.wait_for_line("leading under epoch 2", Duration::from_secs(10));
    let before = manifests(&url);
    let fence2 = before
        .iter()
        .find(|m| m.kind == ManifestKind::Fence && m.epoch == 2)
        .expect("epoch 2's fence")
        .clone();

    a.signal("CONT");
    // Resumed, a finishes its recovery's step (the fence) before it learns it is deposed: by
    // the time it stands by, whatever it wrote is in the store.
    a.wait_for_line("standby: epoch 2", Duration::from_secs(10));
    let all = manifests(&url);
    let late: Vec<_> = all
        .iter()
        .filter(|m| m.id > fence2.id && m.epoch < 2)
        .map(|m| (m.id, m.epoch, m.kind))
        .collect();
    assert!(
        late.is_empty(),
        "manifests of the deposed epoch after the new leader's fence: {late:?}"
    );
    assert!(
        all.windows(2).all(|w| w[0].epoch <= w[1].epoch),
        "epochs go down along the ids: {:?}",
        all.iter().map(|m| (m.id, m.epoch)).collect::<Vec<_>>()
    );
    // Every fence holds the line before it: never a committed checkpoint's predecessor.
    for fence in all.iter().filter(|m| m.kind == ManifestKind::Fence) {
        let before = all
            .iter()
            .rfind(|m| m.id < fence.id)
            .expect("a fence follows a line");
        assert_eq!(
            fence.objects, before.objects,
            "fence {} points behind checkpoint {}",
            fence.id, before.id
        );
    }
    drop(b);
}

fn cohort(args: &[&str]) -> std::process::Output {
    Command::new(cohort_bin())
        .args(args)
        .env("RUST_LOG", "")
        .env_remove("COHORT_STORE")
        .env_remove("COHORT_COORDINATOR")
        .env_remove("COHORT_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn operators_see_the_leader_and_take_checkpoints_through_a_standby() {
    let (_dir, url) = store_dir();
    let (a, a_addr) = spawn_serve("serve-a", &url, &[]);
    a.wait_for_line("leading under epoch 1", Duration::from_secs(10));
    let (b, b_addr) = spawn_serve("serve-b", &url, &[]);
    b.wait_for_line("standby: epoch 1", Duration::from_secs(10));
    let _node = spawn_node("node-1", &url, &[&a_addr, &b_addr]);
    poll(Duration::from_secs(20), || checkpoint_of(&url, 1, 4)).expect("the node takes part");

    // Asked through the standby, the leader takes the checkpoint; only its id is printed.
    let out = cohort(&["checkpoint", "--now", "--coordinator", &b_addr]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let m = manifests(&url)
        .into_iter()
        .find(|m| m.id.get() == id)
        .unwrap();
    assert_eq!(
        (m.epoch, m.kind, m.objects.len()),
        (1, ManifestKind::Checkpoint, 4)
    );

    let out = cohort(&[
        "status",
        "--json",
        "--coordinator",
        &b_addr,
        "--store",
        &url,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["leader"]["epoch"], 1, "{status}");
    assert_eq!(status["leader"]["address"], a_addr.as_str(), "{status}");
    assert_eq!(status["coordinator"]["leading"], true, "{status}");
    assert_eq!(status["coordinator"]["healthy"], true, "{status}");
    assert_eq!(status["coordinator"]["consecutive_failures"], 0, "{status}");
    assert_eq!(status["standby"]["address"], b_addr.as_str(), "{status}");
    assert_eq!(status["source"], "coordinator", "{status}");
    assert_eq!(status["objects"], 4, "{status}");
    assert_eq!(status["nodes"][0]["name"], "node-1", "{status}");
    assert_eq!(status["nodes"][0]["live"], true, "{status}");
    assert_eq!(status["nodes"][0]["objects"], 4, "{status}");
    assert!(
        status["last_committed"]["id"].as_u64().unwrap() >= id,
        "{status}"
    );
    assert!(
        status["lease"]["renewal"].as_u64().unwrap() >= 1,
        "{status}"
    );
    // The standby announces itself to the leader, whose status lists it (once a second). Asked
    // every 200 ms: each ask is a process, and the other tests of this file run meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut listed = None;
    while listed.is_none() && Instant::now() < deadline {
        let out = cohort(&["status", "--json", "--coordinator", &a_addr]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let standbys = status["standbys"].as_array().cloned().unwrap_or_default();
        if standbys.iter().any(|s| s["address"] == b_addr.as_str()) {
            listed = Some(status);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        listed.is_some(),
        "the leader's status never listed the standby {b_addr}"
    );

    // The human form says the same in words.
    let out = cohort(&["status", "--coordinator", &a_addr]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("epoch 1: ") && text.contains(&a_addr),
        "{text}"
    );
    assert!(text.contains("1 live of 1"), "{text}");

    // Nobody there: a one-line error and exit 2; with the store, the store still speaks.
    let out = cohort(&["checkpoint", "--now", "--coordinator", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot reach a coordinator at 127.0.0.1:1"),
        "{err}"
    );
    let out = cohort(&["status", "--coordinator", "127.0.0.1:1", "--store", &url]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("no coordinator answered"), "{text}");
    assert!(
        text.contains("as recorded with the newest checkpoint"),
        "{text}"
    );
}
