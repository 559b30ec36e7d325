//! COLD_PASSIVE: a primary that is SIGKILLed under load is replaced by a `ColdSupervisor`,
//! through a `Launcher::Command` (a real process) and a `Launcher::Closure`; the replacement
//! restores the recovery line, replays the log and serves, and the client sees no error and no
//! lost or duplicated write. Also: failing launchers are reported and retried, and the
//! supervisor never launches while the group is at its goal (virtual time, in-memory network).
//!
//! Children are this test binary re-executed with `--ignored cold_child` and a spec in
//! `COHORT_COLD_CHILD`; they write their pid to `<store>/pids/<id>` (so that the test can stop
//! the ones a launcher started) and print `member <addr>` and `serving <slot> <epoch>` lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/journal.rs"]
mod journal;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_checkpoint::CheckpointStore;
use cohort_replication::client::{ClientOptions, GroupClient};
use cohort_replication::monitor::MonitorOptions;
use cohort_replication::server::{ReplicatedServer, ServerOptions};
use cohort_replication::styles::cold::{LaunchFuture, SupervisorStatus};
use cohort_replication::styles::{ColdSupervisor, Launcher, ReplicationStyle};
use cohort_replication::testing::{MemoryAcceptor, MemoryNetwork};
use cohort_replication::{GroupConfig, GroupName, Member, MemberId, MemberOptions};
use cohort_wire::Accept;
use tokio::sync::watch;
use tokio::time::Instant;

use journal::{Journal, expect_line, finish, open_store, start_load, wait_acked};

const CHILD_ENV: &str = "COHORT_COLD_CHILD";
const GROUP: &str = "ledger";
const HB: Duration = Duration::from_millis(50);
const ACT: Duration = Duration::from_millis(150);
/// How long the group may be short before the supervisor launches: more than a replacement
/// takes to start, wait one activation interval, claim and restore.
const GRACE: Duration = Duration::from_millis(1500);
const PATIENCE: Duration = Duration::from_secs(30);

fn group() -> GroupName {
    GroupName::new(GROUP).unwrap()
}

fn config() -> GroupConfig {
    GroupConfig::new(GROUP, 1)
        .unwrap()
        .with_heartbeat_interval(HB)
        .with_activation_interval(ACT)
}

fn server_options(id: &str, store: &CheckpointStore, seeds: Vec<String>) -> ServerOptions {
    let mut member = MemberOptions::new(config(), MemberId::new(id).unwrap(), store.clone());
    member.seeds = seeds;
    ServerOptions::new(ReplicationStyle::ColdPassive, member)
}

/// The child side: one cold server until killed. Does nothing unless started by a test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the cold-passive tests"]
async fn cold_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(';').collect();
    let [dir, id, seeds] = parts[..] else {
        panic!("bad spec {spec}");
    };
    let pids = Path::new(dir).join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    // Renamed into place, so that the cleanup never reads half a pid.
    let staged = Path::new(dir).join(format!("pid-{id}.staged"));
    std::fs::write(&staged, std::process::id().to_string()).unwrap();
    std::fs::rename(staged, pids.join(id)).unwrap();
    let store = open_store(Path::new(dir)).await;
    let seeds = seeds
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let server = ReplicatedServer::start(server_options(id, &store, seeds), Journal::default())
        .await
        .unwrap();
    println!("member {}", server.member_addr());
    let mut status = server.status();
    let mut shown = None;
    loop {
        let serving = status.borrow_and_update().serving;
        if serving != shown {
            if let Some(se) = serving {
                println!("serving {} {}", se.slot, se.epoch);
            }
            shown = serving;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

fn child_spec(dir: &Path, id: &str, seeds: &[String]) -> String {
    format!("{};{id};{}", dir.display(), seeds.join(","))
}

fn child_args() -> Vec<String> {
    [
        "--exact",
        "cold_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Stops, at the end of a test, every child that wrote a pid file under `dir` (those a
/// launcher started are not the test's own children).
struct KillChildren(PathBuf);

impl Drop for KillChildren {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.0.join("pids")) else {
            return;
        };
        for entry in entries.flatten() {
            if let Ok(pid) = std::fs::read_to_string(entry.path()) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

async fn spawn_child(dir: &Path, id: &str, seeds: &[String]) -> journal::Child {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(child_args())
        .env(CHILD_ENV, child_spec(dir, id, seeds));
    journal::spawn_member(command, PATIENCE).await
}

fn client(store: &CheckpointStore) -> GroupClient {
    let mut options = ClientOptions::new(store.clone(), group(), ReplicationStyle::ColdPassive);
    options.deadline = PATIENCE;
    GroupClient::new(options).unwrap()
}

/// A supervisor whose monitor knows the primary's group listener and reads the activation
/// records (a replacement comes up at a new address).
fn supervise(store: &CheckpointStore, seed: &str, launcher: Launcher) -> ColdSupervisor {
    let mut monitor = MonitorOptions::new(group(), ACT, vec![seed.to_owned()]);
    monitor.discover = Some(store.clone());
    ColdSupervisor::start(monitor, 1, GRACE, launcher).unwrap()
}

/// Waits (bounded) until the supervisor's status satisfies `pick`.
async fn wait_status(
    status: &mut watch::Receiver<SupervisorStatus>,
    what: &str,
    pick: impl FnMut(&SupervisorStatus) -> bool,
) -> SupervisorStatus {
    let reached = tokio::time::timeout(PATIENCE, status.wait_for(pick))
        .await
        .map(|seen| seen.unwrap().clone());
    reached.unwrap_or_else(|_| panic!("the supervisor never got to {what}: {:?}", *status.borrow()))
}

/// Runs a cold primary in a child process under load, SIGKILLs it, and waits for `launcher`'s
/// replacement to serve; checks the journal and returns the supervisor's final status and
/// every error it reported on the way.
async fn sigkill_and_replace(
    dir: &Path,
    store: &CheckpointStore,
    launcher: Launcher,
) -> (SupervisorStatus, Vec<String>) {
    let mut a = spawn_child(dir, "a", &[]).await;
    let _ = expect_line(&mut a.lines, "serving ", PATIENCE).await;
    let supervisor = supervise(store, &a.addr, launcher);
    let mut status = supervisor.status();
    let reported: Arc<Mutex<Vec<String>>> = Arc::default();
    let reporter = {
        let (mut status, reported) = (supervisor.status(), reported.clone());
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let error = status.borrow_and_update().last_error.clone();
                reported.lock().unwrap().extend(error);
            }
        })
    };
    wait_status(&mut status, "see the primary", |s| s.active == 1).await;

    let client = client(store);
    let load = start_load(&client, 4);
    wait_acked(&load, 200, PATIENCE).await;
    a.process.start_kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let before = load.acked.load(Ordering::Relaxed);
    wait_status(&mut status, "launch a replacement", |s| s.launches >= 1).await;
    let launched = killed.elapsed();
    // The replacement is found at its new address and counted: no second launch follows.
    wait_status(&mut status, "see the replacement", |s| s.active == 1).await;
    let counted = killed.elapsed();
    wait_acked(&load, before + 200, PATIENCE).await;
    let slowest = finish(load, &client).await;
    println!(
        "launched {launched:?} and counted {counted:?} after SIGKILL; slowest call {slowest:?}"
    );
    assert!(
        launched >= GRACE,
        "launched {launched:?} after the kill, within the grace period"
    );
    assert!(!a.process.wait().await.unwrap().success());
    // Reaped: its pid may be reused, so it is not one to kill at the end.
    std::fs::remove_file(dir.join("pids").join("a")).unwrap();
    let end = status.borrow().clone();
    reporter.abort();
    let reported = reported.lock().unwrap().clone();
    (end, reported)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_launcher_replaces_a_sigkilled_cold_primary_without_losing_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillChildren(dir.path().to_owned());
    let store = open_store(dir.path()).await;
    let launcher = Launcher::command(
        std::env::current_exe().unwrap().display().to_string(),
        child_args(),
    )
    .with_env(CHILD_ENV, child_spec(dir.path(), "b", &[]));
    let (status, errors) = sigkill_and_replace(dir.path(), &store, launcher).await;
    assert_eq!(
        (status.launches, status.failures, status.last_error),
        (1, 0, None),
        "exactly one launch, and it worked: {errors:?}"
    );
    assert!(
        dir.path().join("pids").join("b").exists(),
        "the replacement is the launched process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_launcher_that_fails_first_is_reported_retried_and_then_replaces_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillChildren(dir.path().to_owned());
    let store = open_store(dir.path()).await;
    // The closure refuses once (no capacity, say), then starts the replacement in this process.
    let attempts = Arc::new(AtomicU64::new(0));
    let replacement: Arc<Mutex<Option<ReplicatedServer>>> = Arc::default();
    let launcher = {
        let (attempts, replacement, store) = (attempts.clone(), replacement.clone(), store.clone());
        Launcher::Closure(Arc::new(move || -> LaunchFuture {
            let (attempts, replacement, store) =
                (attempts.clone(), replacement.clone(), store.clone());
            Box::pin(async move {
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("no capacity for a replacement (simulated)".to_owned());
                }
                let server = ReplicatedServer::start(
                    server_options("b", &store, vec![]),
                    Journal::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
                *replacement.lock().unwrap() = Some(server);
                Ok(())
            })
        }))
    };
    let (status, errors) = sigkill_and_replace(dir.path(), &store, launcher).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!((status.launches, status.failures), (1, 1), "{status:?}");
    assert_eq!(status.last_error, None, "cleared by the successful launch");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no capacity for a replacement (simulated)")),
        "the failure was reported before the retry: {errors:?}"
    );
    // The replacement restored the recovery line and replayed the log before serving.
    let server = replacement
        .lock()
        .unwrap()
        .take()
        .expect("a replacement ran");
    let served = server.status().borrow().clone();
    assert!(served.serving.is_some(), "{served:?}");
    assert!(
        served.line.is_some(),
        "it restored a checkpoint: {served:?}"
    );
    assert!(served.last_takeover.is_some(), "{served:?}");
    println!(
        "the replacement replayed {} log entries after its line",
        served.last_replayed
    );
}

/// Command launchers that cannot start, or whose process fails, are reported and retried every
/// grace period (real time: the processes are real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_launchers_that_fail_are_reported_and_retried() {
    let grace = Duration::from_millis(50);
    // No member is running: the group is short from the start.
    let monitor = MonitorOptions::new(group(), ACT, vec![]);
    let missing = Launcher::command("/nonexistent/cohort-replacement", Vec::new());
    let supervisor = ColdSupervisor::start(monitor.clone(), 1, grace, missing).unwrap();
    let mut status = supervisor.status();
    let seen = wait_status(&mut status, "retry a failed spawn", |s| s.failures >= 3).await;
    assert_eq!(seen.launches, 0);
    let error = seen.last_error.unwrap();
    assert!(
        error.contains("cannot spawn /nonexistent/cohort-replacement"),
        "{error}"
    );
    drop(supervisor);

    let failing = Launcher::command("false", Vec::new());
    let supervisor = ColdSupervisor::start(monitor, 1, grace, failing).unwrap();
    let mut status = supervisor.status();
    let seen = wait_status(&mut status, "see a launched command fail", |s| {
        s.failures >= 2 && s.last_error.is_some()
    })
    .await;
    assert!(seen.launches >= 2, "{seen:?}");
    let error = seen.last_error.unwrap();
    assert!(
        error.contains("launched false exited unsuccessfully"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Virtual time: exact timings, and no spurious launches

struct Net {
    net: MemoryNetwork,
    store: CheckpointStore,
}

impl Net {
    fn listen(&self) -> (MemoryAcceptor, String) {
        let acceptor = self.net.listen();
        let addr = acceptor.local_addr().unwrap().to_string();
        (acceptor, addr)
    }

    async fn start(&self, name: &str, weight: u16, seeds: &[String]) -> (Member, String) {
        let (acceptor, addr) = self.listen();
        let mut options = MemberOptions::new(
            config().with_weight(weight),
            MemberId::new(name).unwrap(),
            self.store.clone(),
        );
        options.connector = self.net.connector(addr.clone());
        options.seeds = seeds.to_vec();
        options.service_addr = format!("svc-{name}");
        let listener = options.listen_config().listen_on(acceptor).unwrap();
        (Member::start_on(options, listener).await.unwrap(), addr)
    }
}

async fn activated(member: &mut Member) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, member.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} did not activate in time", member.id()))
            .expect("the member stopped");
        if matches!(event, cohort_replication::MemberEvent::Activate(_)) {
            return Instant::now();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_supervisor_launches_once_per_loss_and_never_while_the_group_is_at_its_goal() {
    let net = Arc::new(Net {
        net: MemoryNetwork::new(),
        store: CheckpointStore::memory(),
    });
    let (mut a, a_addr) = net.start("a", 20, &[]).await;
    activated(&mut a).await;
    let (mut b, b_addr) = net.start("b", 10, std::slice::from_ref(&a_addr)).await;

    // The launcher starts a member at a fresh address, which no seed names.
    let launched: Arc<Mutex<Vec<(Instant, Member)>>> = Arc::default();
    let launcher = {
        let (net, launched) = (net.clone(), launched.clone());
        Launcher::Closure(Arc::new(move || -> LaunchFuture {
            let (net, launched) = (net.clone(), launched.clone());
            Box::pin(async move {
                let n = launched.lock().unwrap().len();
                let (member, _) = net.start(&format!("r{n}"), 10, &[]).await;
                launched.lock().unwrap().push((Instant::now(), member));
                Ok(())
            })
        }))
    };
    let grace = 4 * ACT;
    let mut monitor = MonitorOptions::new(group(), ACT, vec![a_addr.clone(), b_addr]);
    monitor.connector = net.net.connector("monitor");
    monitor.discover = Some(net.store.clone());
    let supervisor = ColdSupervisor::start(monitor, 1, grace, launcher).unwrap();
    let mut status = supervisor.status();
    wait_status(&mut status, "see a", |s| s.active == 1).await;

    // At its goal for a long while: nothing is launched.
    tokio::time::sleep(50 * grace).await;
    assert_eq!(status.borrow().launches, 0);

    // A handover shorter than the grace period: a leaves, b takes over at once.
    a.leave().await;
    activated(&mut b).await;
    tokio::time::sleep(10 * grace).await;
    assert_eq!(status.borrow().launches, 0, "a handover is no loss");
    assert_eq!(status.borrow().active, 1);

    // The only member crashes: one launch, after the monitor's lost interval plus the grace.
    let killed = Instant::now();
    b.kill();
    wait_status(&mut status, "launch", |s| s.launches == 1).await;
    let after = killed.elapsed();
    assert!(
        after >= ACT - HB + grace && after <= ACT + grace + HB,
        "launched {after:?} after the crash (lost interval {ACT:?} + grace {grace:?})"
    );
    let mut replacement = launched.lock().unwrap().pop().expect("a replacement").1;
    activated(&mut replacement).await;
    wait_status(&mut status, "count the replacement", |s| s.active == 1).await;

    // Back at its goal: no further launch, however long.
    tokio::time::sleep(50 * grace).await;
    let end = status.borrow().clone();
    assert_eq!(
        (end.launches, end.failures, end.active),
        (1, 0, 1),
        "{end:?}"
    );
}
