//! Replication styles over real TCP and a local-disk store: SIGKILL of the serving process
//! under load (warm passive and active), a fenced primary that cannot acknowledge, and a
//! handover to a heavier member, each checked for lost and duplicated writes.
//!
//! Children are this test binary re-executed with `--ignored child_server` and a spec in
//! `COHORT_REPLICA_CHILD`; they print `member <addr>` and `serving <slot> <epoch>` lines.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "support/journal.rs"]
mod journal;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cohort_checkpoint::CheckpointStore;
use cohort_object_api::CheckpointId;
use cohort_replication::Error;
use cohort_replication::client::{ClientOptions, GroupClient};
use cohort_replication::fencing::{Claimant, claim_slot};
use cohort_replication::log::LoggedRequest;
use cohort_replication::replies::ClientId;
use cohort_replication::server::{
    ClientMessage, LOG_SEQ_KEY, ReplicatedServer, ServerMessage, ServerOptions, replica_store,
};
use cohort_replication::styles::ReplicationStyle;
use cohort_replication::{FencedLog, GroupConfig, GroupName, MemberId, MemberOptions};
use cohort_wire::{ConnectConfig, Role};
use tokio::time::Instant;

use journal::{Journal, Op, encode, expect_line, finish, open_store, start_load, wait_acked};

const CHILD_ENV: &str = "COHORT_REPLICA_CHILD";
const GROUP: &str = "journal";
const HB: Duration = Duration::from_millis(50);
const ACT: Duration = Duration::from_millis(150);
const PATIENCE: Duration = Duration::from_secs(20);

fn member(
    id: &str,
    weight: u16,
    goal: u32,
    store: &CheckpointStore,
    seeds: Vec<String>,
) -> MemberOptions {
    let config = GroupConfig::new(GROUP, goal)
        .unwrap()
        .with_weight(weight)
        .with_heartbeat_interval(HB)
        .with_activation_interval(ACT);
    let mut options = MemberOptions::new(config, MemberId::new(id).unwrap(), store.clone());
    options.seeds = seeds;
    options
}

fn client(store: &CheckpointStore, style: ReplicationStyle) -> GroupClient {
    let mut options = ClientOptions::new(store.clone(), GroupName::new(GROUP).unwrap(), style);
    options.deadline = PATIENCE;
    GroupClient::new(options).unwrap()
}

/// The child side: one server until killed. Does nothing unless started by a test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the SIGKILL tests"]
async fn child_server() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(';').collect();
    let [dir, id, weight, goal, style, seeds] = parts[..] else {
        panic!("bad spec {spec}");
    };
    let store = open_store(std::path::Path::new(dir)).await;
    let seeds = seeds
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let options = ServerOptions::new(
        style.parse().unwrap(),
        member(
            id,
            weight.parse().unwrap(),
            goal.parse().unwrap(),
            &store,
            seeds,
        ),
    );
    let server = ReplicatedServer::start(options, Journal::default())
        .await
        .unwrap();
    println!("member {}", server.member_addr());
    let mut status = server.status();
    loop {
        let serving = status.borrow_and_update().serving;
        if let Some(se) = serving {
            println!("serving {} {}", se.slot, se.epoch);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

async fn spawn_child(
    dir: &std::path::Path,
    id: &str,
    weight: u16,
    goal: u32,
    style: ReplicationStyle,
    seeds: &[String],
) -> journal::Child {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_server",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!(
                "{};{id};{weight};{goal};{style};{}",
                dir.display(),
                seeds.join(",")
            ),
        );
    journal::spawn_member(command, PATIENCE).await
}

async fn sigkill_under_load(style: ReplicationStyle, goal: u32) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut first = spawn_child(dir.path(), "a", 30, goal, style, &[]).await;
    let _ = expect_line(&mut first.lines, "serving ", PATIENCE).await;
    let seeds = vec![first.addr.clone()];
    let mut b = spawn_child(dir.path(), "b", 20, goal, style, &seeds).await;
    let _c = spawn_child(dir.path(), "c", 10, goal, style, &seeds).await;
    if goal > 1 {
        let _ = expect_line(&mut b.lines, "serving ", PATIENCE).await;
    }

    let client = client(&store, style);
    let load = start_load(&client, 4);
    wait_acked(&load, 200, PATIENCE).await;
    // The failover starts from a truncated log: what the new primary needs is the newest line
    // and the entries from its position on.
    let log = FencedLog::new(store.clone(), GroupName::new(GROUP).unwrap());
    let oldest = wait_truncated(&log, 1).await;
    let newest_at_kill = log.newest().await.unwrap();
    first.process.start_kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let before = load.acked.load(Ordering::Relaxed);
    if goal == 1 {
        let taken = expect_line(&mut b.lines, "serving ", PATIENCE).await;
        println!(
            "{style}: b serves ({taken}) {:?} after SIGKILL",
            killed.elapsed()
        );
    }
    wait_acked(&load, before + 200, PATIENCE).await;
    // The new primary (the holder of slot 0) truncates as it checkpoints.
    let oldest_after = wait_truncated(&log, newest_at_kill).await;
    println!(
        "{style}: the log began at {oldest} before the kill (newest {newest_at_kill}), at \
         {oldest_after} after"
    );
    let slowest = finish(load, &client).await;
    println!("{style}: slowest call across the failover {slowest:?}");
    assert!(!first.process.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_passive_survives_sigkill_of_the_primary_under_load() {
    sigkill_under_load(ReplicationStyle::WarmPassive, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_survives_sigkill_of_a_replica_under_load() {
    sigkill_under_load(ReplicationStyle::Active, 2).await;
}

/// Waits (bounded) until the log's oldest entry is above `above`, and returns it.
async fn wait_truncated(log: &FencedLog, above: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let oldest = log.oldest().await.unwrap();
        if oldest > above {
            return oldest;
        }
        assert!(
            Instant::now() < deadline,
            "the log was not truncated past {above}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // bounded polling, not synchronisation
    }
}

async fn start_server(
    store: &CheckpointStore,
    id: &str,
    weight: u16,
    seeds: Vec<String>,
) -> ReplicatedServer {
    let options = ServerOptions::new(
        ReplicationStyle::WarmPassive,
        member(id, weight, 1, store, seeds),
    );
    ReplicatedServer::start(options, Journal::default())
        .await
        .unwrap()
}

async fn wait_serving(server: &ReplicatedServer) {
    let mut status = server.status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.serving.is_some()))
        .await
        .expect("not serving in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primary_cannot_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let a = start_server(&store, "a", 10, vec![]).await;
    wait_serving(&a).await;
    let client = client(&store, ReplicationStyle::WarmPassive);
    client.call(encode(&Op::Write(1))).await.unwrap();

    // Another side of a partition takes the slot; `a` hears nothing of it.
    let group = GroupName::new(GROUP).unwrap();
    let claimant = Claimant {
        member: MemberId::new("other-side").unwrap(),
        service_addr: "127.0.0.1:9".to_owned(),
        addr: "127.0.0.1:9".to_owned(),
        now_unix_ms: 0,
    };
    claim_slot(&store, &group, 0, None, &claimant)
        .await
        .unwrap();

    // A request sent straight to `a` must not be acknowledged.
    let mut conn = ConnectConfig::new(Role::Client, "probe")
        .connect::<ServerMessage, ClientMessage>(a.service_addr())
        .await
        .unwrap();
    let request = LoggedRequest {
        client: ClientId::new("probe").unwrap(),
        id: 1,
        acked: 0,
        body: encode(&Op::Write(2)),
    };
    conn.send(&ClientMessage::Request(request)).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, conn.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, ServerMessage::Redirect { id: 1, .. }),
        "{answer:?}"
    );
    let mut status = a.status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.serving.is_none()))
        .await
        .unwrap()
        .unwrap();
    // Nothing of the refused write is in the log.
    let entries = a.member().log().read_from(1).await.unwrap();
    let data = entries
        .iter()
        .filter(|e| matches!(e.kind, cohort_replication::fencing::EntryKind::Data(_)))
        .count();
    assert_eq!(data, 1, "only the first write was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavier_member_takes_over_without_losing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let a = start_server(&store, "a", 10, vec![]).await;
    wait_serving(&a).await;
    let client = client(&store, ReplicationStyle::WarmPassive);
    let load = start_load(&client, 4);
    wait_acked(&load, 200, PATIENCE).await;
    let b = start_server(&store, "b", 50, vec![a.member_addr().to_owned()]).await;
    wait_serving(&b).await;
    let before = load.acked.load(Ordering::Relaxed);
    wait_acked(&load, before + 200, PATIENCE).await;
    assert!(a.status().borrow().serving.is_none(), "a stepped down");
    finish(load, &client).await;
    let replayed = b.status().borrow().last_replayed;
    println!("b replayed {replayed} log entries at the handover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_port_serves_group_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let a = start_server(&store, "a", 10, vec![]).await;
    for role in [Role::Node, Role::Peer, Role::Cli, Role::Coordinator] {
        let err = ConnectConfig::new(role, "confused")
            .connect::<ServerMessage, ClientMessage>(a.service_addr())
            .await
            .map(|_| ())
            .unwrap_err();
        match &err {
            cohort_wire::Error::Rejected { code, reason, .. } => {
                assert_eq!(code, "role", "{err}");
                assert!(
                    reason.contains("serves client connections only")
                        && reason.contains(&format!("not a {role}")),
                    "{reason}"
                );
            }
            other => panic!("{role}: expected a role rejection, got {other}"),
        }
    }
    // A client is welcome.
    let conn = ConnectConfig::new(Role::Client, "probe")
        .connect::<ServerMessage, ClientMessage>(a.service_addr())
        .await
        .unwrap();
    assert_eq!(conn.peer().name, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_truncated_below_each_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let a = start_server(&store, "a", 10, vec![]).await;
    wait_serving(&a).await;
    let client = client(&store, ReplicationStyle::WarmPassive);
    let load = start_load(&client, 4);
    wait_acked(&load, 300, PATIENCE).await;
    finish(load, &client).await;

    // Once quiet, the primary checkpoints what it executed last, at position S, and deletes
    // every entry below S: the store holds entry S (the checkpoint's position, which whoever
    // restores it checks) and nothing before it.
    let mut status = a.status();
    let settled = tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.applied > 0 && s.log_truncated_through + 1 == s.applied),
    )
    .await
    .expect("no checkpoint and truncation of the final position")
    .unwrap()
    .clone();
    let log = a.member().log();
    let left: Vec<u64> = log
        .read_from(1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![settled.applied], "{settled:?}");
    assert!(log.was_truncated().await.unwrap());
    let keys = store
        .list_group_records(&format!("{GROUP}/log"))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");

    // A newcomer restores that line and the one entry, and takes over with every write.
    let b = start_server(&store, "b", 50, vec![a.member_addr().to_owned()]).await;
    wait_serving(&b).await;
    let dump = client.call(encode(&Op::Dump)).await.unwrap();
    let journal: Vec<u64> = rmp_serde::from_slice(&dump).unwrap();
    assert!(journal.len() >= 300, "{}", journal.len());
    let b_status = b.status().borrow().clone();
    assert_eq!(b_status.last_replayed, 1, "the fence only: {b_status:?}");
}

/// The primary collects the group's old checkpoints: `replicas/<group>/` keeps the newest 16
/// (the lines a replica searches), however many were written, and a newcomer still restores
/// every acknowledged write from what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_checkpoints_of_the_group_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let replicas = replica_store(&store, &GroupName::new(GROUP).unwrap()).unwrap();
    let mut options = ServerOptions::new(
        ReplicationStyle::WarmPassive,
        member("a", 10, 1, &store, vec![]),
    );
    options.checkpoint_interval = Duration::from_millis(20);
    options.gc_interval = Duration::from_millis(100);
    let a = ReplicatedServer::start(options, Journal::default())
        .await
        .unwrap();
    wait_serving(&a).await;
    let client = client(&store, ReplicationStyle::WarmPassive);
    let load = start_load(&client, 4);
    // Many more checkpoints than are kept, and collections among them.
    let mut status = a.status();
    let waited = tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.line.is_some_and(|l| l.get() > 60) && s.checkpoints_collected >= 20),
    )
    .await
    .is_ok();
    assert!(
        waited,
        "checkpoints written and collected: {:?}, store holds {:?}",
        *a.status().borrow(),
        replicas.committed_ids().await.unwrap()
    );
    finish(load, &client).await;

    let kept = replicas.committed_ids().await.unwrap();
    let newest = kept.last().copied().unwrap();
    // The newest 16, and those written since the last collection (at most 100 ms of 20 ms).
    assert!(
        (16..=16 + 6).contains(&kept.len()),
        "{} kept: {kept:?}",
        kept.len()
    );
    assert!(
        kept.iter().all(|id| id.get() + 16 + 6 > newest.get()),
        "{kept:?}"
    );
    for id in &kept {
        assert!(
            replicas.verify(*id).await.unwrap().is_ok(),
            "checkpoint {id}"
        );
    }

    // A newcomer restores from what is left and takes over with every write.
    let b = start_server(&store, "b", 50, vec![a.member_addr().to_owned()]).await;
    wait_serving(&b).await;
    let dump = client.call(encode(&Op::Dump)).await.unwrap();
    let journal: Vec<u64> = rmp_serde::from_slice(&dump).unwrap();
    assert!(journal.len() >= 60, "{}", journal.len());
}

/// A backup whose newest line is older than the log's truncation (a deposed primary's late
/// checkpoint, say) finds its position gone when it takes over, loads the line with the
/// highest position instead, and loses nothing; read from its own position, the log would
/// have started after a gap, and the takeover would have served without the writes in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_from_a_line_older_than_the_truncation_loads_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let group = GroupName::new(GROUP).unwrap();
    let replicas = replica_store(&store, &group).unwrap();
    let a = start_server(&store, "a", 50, vec![]).await;
    wait_serving(&a).await;
    let client = client(&store, ReplicationStyle::WarmPassive);

    // An early line, at position S0.
    let load = start_load(&client, 4);
    wait_acked(&load, 50, PATIENCE).await;
    let mut status = a.status();
    let early = tokio::time::timeout(PATIENCE, status.wait_for(|s| s.line.is_some()))
        .await
        .unwrap()
        .unwrap()
        .line
        .unwrap();
    let early = replicas.read_manifest(early).await.unwrap();
    let s0 = u64::from_be_bytes(early.metadata[LOG_SEQ_KEY].as_slice().try_into().unwrap());
    // Much more work, then quiet: the log is truncated far past S0.
    wait_acked(&load, load.acked.load(Ordering::Relaxed) + 300, PATIENCE).await;
    let acked: Vec<u64> = journal::stop(load)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    let settled = tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.log_truncated_through + 1 == s.applied),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(
        settled.log_truncated_through > s0 + 10,
        "{settled:?} vs {s0}"
    );

    // The early line is committed again as the newest one.
    let newest = replicas
        .committed_ids()
        .await
        .unwrap()
        .last()
        .copied()
        .unwrap();
    let mut late = early.clone();
    late.id = CheckpointId::new(newest.get() + 1);
    late.parent = Some(newest);
    replicas.commit(&late).await.unwrap();

    // b starts now, loads that newest (old) line as a warm backup, and takes over when a
    // leaves.
    let b = start_server(&store, "b", 10, vec![a.member_addr().to_owned()]).await;
    let mut b_status = b.status();
    tokio::time::timeout(PATIENCE, b_status.wait_for(|s| s.line == Some(late.id)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_status.borrow().applied, s0);
    a.leave().await;
    wait_serving(&b).await;
    let dump = client.call(encode(&Op::Dump)).await.unwrap();
    let journal: Vec<u64> = rmp_serde::from_slice(&dump).unwrap();
    let lost: Vec<&u64> = acked.iter().filter(|v| !journal.contains(v)).collect();
    assert!(lost.is_empty(), "lost {} writes: {lost:?}", lost.len());
    assert_eq!(journal.len(), acked.len(), "no duplicates");
    assert!(b.status().borrow().applied > settled.applied);
}

#[test]
fn styles_parse() {
    for style in ["stateless", "cold", "warm", "active"] {
        assert_eq!(style.parse::<ReplicationStyle>().unwrap().as_str(), style);
    }
    let err = "lukewarm".parse::<ReplicationStyle>().unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidConfig {
            scope: "replicated service",
            ..
        }
    ));
}
