//! The coordinator service with REAL node processes on loopback: checkpoints across processes,
//! money moving between objects on different nodes, SIGKILL of a node (`Child::kill`) and
//! recovery, a cut connection that resumes without recovery.
//!
//! A node process is this test binary re-executed with `COHORT_SERVICE_NODE` set: the
//! `node_process` test then runs a node instead of returning.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use cohort_checkpoint::{CheckpointStore, ManifestKind, StoreOptions};
use cohort_coordinator::node::{Node, NodeStatus};
use cohort_coordinator::service::{Service, ServiceConfig, ServiceStatus};
use cohort_coordinator::{Actor, Context, Error};
use cohort_object_api::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const INITIAL: i64 = 1_000;
const ACCOUNTS_PER_NODE: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    /// An input: start passing money around.
    Kick,
    /// Money from another account.
    Credit(i64),
}

struct Account {
    balance: i64,
    peers: Vec<ObjectId>,
    hops: u64,
    /// A marker file: when it exists, `prepare` blocks until it is removed (a phase to kill in).
    block_prepare: Option<PathBuf>,
    reached: Option<PathBuf>,
}

#[async_trait]
impl Checkpointable for Account {
    fn type_name(&self) -> &'static str {
        "Account"
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new("Account", 1, (self.balance, self.hops)))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        (self.balance, self.hops) = state.decode()?;
        Ok(())
    }

    async fn prepare(&mut self, _checkpoint: CheckpointId) -> Result<(), ObjectError> {
        if let (Some(block), Some(reached)) = (&self.block_prepare, &self.reached)
            && block.exists()
        {
            std::fs::write(reached, b"prepare").ok();
            // Waits for the test to kill this process (or to remove the marker).
            while block.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Actor for Account {
    type Message = Msg;

    async fn handle(&mut self, message: Msg, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        let amount = match message {
            Msg::Kick => 0,
            Msg::Credit(x) => x,
        };
        self.balance += amount;
        self.hops += 1;
        // Pace the traffic so that two cores are not spent on it alone.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let send = (self.balance / 10).max(1).min(self.balance);
        // Pass money to another account, mostly on another node.
        let mut next = &self.peers[(self.hops as usize * 7 + 3) % self.peers.len()];
        if next == ctx.id() {
            next = &self.peers[(self.hops as usize + 1) % self.peers.len()];
        }
        let to = ctx.address::<Msg>(next).map_err(refused)?;
        self.balance -= send;
        ctx.send(&to, Msg::Credit(send)).map_err(refused)
    }
}

fn refused(e: Error) -> ObjectError {
    ObjectError::Refused {
        reason: e.to_string(),
    }
}

fn account_ids(nodes: usize) -> Vec<ObjectId> {
    (0..nodes)
        .flat_map(|n| {
            (0..ACCOUNTS_PER_NODE).map(move |a| ObjectId::new(format!("acct-{n}-{a}")).unwrap())
        })
        .collect()
}

fn store_options() -> StoreOptions {
    StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    }
}

/// The node role: runs only in a child process.
#[test]
fn node_process() {
    let Ok(index) = std::env::var("COHORT_SERVICE_NODE") else {
        return;
    };
    let index: usize = index.parse().unwrap();
    let nodes: usize = std::env::var("COHORT_NODES").unwrap().parse().unwrap();
    let coordinator = std::env::var("COHORT_COORDINATOR").unwrap();
    let store_dir = std::env::var("COHORT_STORE").unwrap();
    let kick = std::env::var("COHORT_KICK").is_ok();
    // Every account of this node starts a stream of transfers (heavy cross-node traffic).
    let kick_all = std::env::var("COHORT_KICK_ALL").is_ok();
    let block = std::env::var("COHORT_BLOCK").ok().map(PathBuf::from);
    let reached = std::env::var("COHORT_REACHED").ok().map(PathBuf::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&store_dir, store_options())
            .await
            .unwrap();
        let node = Node::builder(store)
            .name(format!("node-{index}"))
            .coordinators(vec![coordinator])
            .build()
            .await
            .unwrap();
        let peers = account_ids(nodes);
        let mut first = None;
        let mut mine = Vec::new();
        for a in 0..ACCOUNTS_PER_NODE {
            let id = ObjectId::new(format!("acct-{index}-{a}")).unwrap();
            let addr = node
                .spawn(
                    id,
                    Account {
                        balance: INITIAL,
                        peers: peers.clone(),
                        hops: 0,
                        block_prepare: block.clone(),
                        reached: reached.clone(),
                    },
                )
                .unwrap();
            mine.push(addr.clone());
            first.get_or_insert(addr);
        }
        if kick || kick_all {
            // Start the money moving once every account is placed (bounded wait).
            let end = Instant::now() + Duration::from_secs(20);
            while !peers.iter().all(|p| node.address::<Msg>(p).is_ok()) {
                assert!(
                    Instant::now() < end,
                    "the placement never listed every account"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if kick_all {
                for addr in &mine {
                    for _ in 0..4 {
                        addr.tell(Msg::Kick).unwrap();
                    }
                }
            } else {
                first.unwrap().tell(Msg::Kick).unwrap();
            }
        }
        let mut status = node.status();
        // Run until killed, or until refused.
        loop {
            if matches!(*status.borrow(), NodeStatus::Refused(_)) {
                panic!("refused: {:?}", *status.borrow());
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

struct Cluster {
    dir: tempfile::TempDir,
    service: Service,
    nodes: usize,
    children: Vec<Option<Child>>,
    kick_all: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    async fn start(nodes: usize, heartbeat_timeout: Duration) -> Self {
        Self::start_with(nodes, heartbeat_timeout, false).await
    }

    /// `kick_all`: every account starts four streams of transfers, not only node 0's first.
    async fn start_with(nodes: usize, heartbeat_timeout: Duration, kick_all: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            CheckpointStore::open(dir.path().join("store").to_str().unwrap(), store_options())
                .await
                .unwrap();
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
        config.heartbeat_interval = Duration::from_millis(50);
        config.heartbeat_timeout = heartbeat_timeout;
        config.timeout = Duration::from_secs(5);
        let service = Service::start(store, config).await.unwrap();
        let mut cluster = Self {
            dir,
            service,
            nodes,
            children: Vec::new(),
            kick_all,
        };
        for i in 0..nodes {
            let child = cluster.spawn_node(i, None);
            cluster.children.push(Some(child));
        }
        cluster
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("marker-{name}"))
    }

    fn spawn_node(&self, index: usize, block: Option<(&Path, &Path)>) -> Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["node_process", "--exact", "--nocapture", "--test-threads=1"])
            .env("COHORT_SERVICE_NODE", index.to_string())
            .env("COHORT_NODES", self.nodes.to_string())
            .env("COHORT_COORDINATOR", self.service.local_addr().to_string())
            .env("COHORT_STORE", self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.kick_all {
            cmd.env("COHORT_KICK_ALL", "1");
        } else if index == 0 {
            cmd.env("COHORT_KICK", "1");
        }
        if let Some((block, reached)) = block {
            cmd.env("COHORT_BLOCK", block)
                .env("COHORT_REACHED", reached);
        }
        cmd.spawn().unwrap()
    }

    fn store_url(&self) -> String {
        self.dir.path().join("store").to_str().unwrap().to_owned()
    }

    async fn wait_for(&self, what: &str, deadline: Duration, f: impl Fn(&ServiceStatus) -> bool) {
        let mut status = self.service.status();
        let ok = matches!(
            tokio::time::timeout(deadline, status.wait_for(|s| f(s))).await,
            Ok(Ok(_))
        );
        assert!(ok, "timed out waiting for {what}: {:?}", *status.borrow());
    }

    /// Triggers until a checkpoint commits (attempts abort while nodes register or restore).
    async fn checkpoint(&self, deadline: Duration) -> CheckpointId {
        let end = Instant::now() + deadline;
        loop {
            match self.service.trigger().await {
                Ok(id) => return id,
                Err(Error::Aborted { .. }) if Instant::now() < end => {
                    // The next attempt waits for the status to change (a node registering).
                    let mut status = self.service.status();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
                }
                Err(e) => panic!("no checkpoint committed within {deadline:?}: {e}"),
            }
        }
    }

    /// Checkpoints until a line shows money moved between nodes (50 messages handled; the
    /// handlers pace themselves at 2 ms).
    async fn moving_line(&self) -> CheckpointId {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let id = self.checkpoint(Duration::from_secs(20)).await;
            if hops_at_line(self).await >= 50 {
                return id;
            }
            assert!(Instant::now() < end, "money does not move between nodes");
        }
    }

    /// Σ balances + Σ in-transit credits of the newest committed line.
    async fn money_at_line(&self) -> (CheckpointId, i64) {
        let store = CheckpointStore::open(&self.store_url(), store_options())
            .await
            .unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let line = store.recovery_line().await.unwrap().unwrap();
                assert!(line.skipped.is_empty(), "damaged lines: {:?}", line.skipped);
                let states = store.read_states(&line.manifest).await.unwrap();
                let messages = store.read_in_transit(&line.manifest).await.unwrap();
                let mut total = 0;
                let mut hops = 0;
                for (_, s) in states {
                    let (balance, h): (i64, u64) = s.decode().unwrap();
                    total += balance;
                    hops += h;
                }
                // Money moved between objects on different nodes before this line.
                assert!(
                    hops >= 50,
                    "too few messages were handled before line {}: {hops}",
                    line.manifest.id
                );
                for (_, m) in messages {
                    if let Msg::Credit(x) = m.decode::<Msg>().unwrap() {
                        total += x;
                    }
                }
                (line.manifest.id, total, line.manifest.objects.len())
            })
        })
        .await
        .unwrap();
        assert_eq!(
            line.2,
            self.nodes * ACCOUNTS_PER_NODE,
            "every account is in the line"
        );
        (line.0, line.1)
    }

    fn total(&self) -> i64 {
        INITIAL * (self.nodes * ACCOUNTS_PER_NODE) as i64
    }
}

/// Σ balances + Σ in-transit credits of every committed manifest, and the messages handled
/// before each (`(id, money, hops)`).
async fn money_in_every_line(cluster: &Cluster) -> Vec<(CheckpointId, i64, u64)> {
    let store = CheckpointStore::open(&cluster.store_url(), store_options())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut lines = Vec::new();
            for id in store.committed_ids().await.unwrap() {
                let manifest = store.read_manifest(id).await.unwrap();
                let mut money = 0;
                let mut hops = 0;
                for (_, s) in store.read_states(&manifest).await.unwrap() {
                    let (balance, h): (i64, u64) = s.decode().unwrap();
                    money += balance;
                    hops += h;
                }
                for (_, m) in store.read_in_transit(&manifest).await.unwrap() {
                    if let Msg::Credit(x) = m.decode::<Msg>().unwrap() {
                        money += x;
                    }
                }
                lines.push((id, money, hops));
            }
            lines
        })
    })
    .await
    .unwrap()
}

async fn hops_at_line(cluster: &Cluster) -> u64 {
    let store = CheckpointStore::open(&cluster.store_url(), store_options())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let line = store.recovery_line().await.unwrap().unwrap();
            assert!(line.skipped.is_empty(), "damaged lines: {:?}", line.skipped);
            let states = store.read_states(&line.manifest).await.unwrap();
            states
                .iter()
                .map(|(_, s)| s.decode::<(i64, u64)>().unwrap().1)
                .sum()
        })
    })
    .await
    .unwrap()
}

fn all_live(nodes: usize) -> impl Fn(&ServiceStatus) -> bool {
    move |s| {
        s.table.nodes.values().filter(|n| n.live).count() == nodes
            && s.table.placement.len() == nodes * ACCOUNTS_PER_NODE
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_across_node_processes_keep_the_money() {
    let cluster = Cluster::start(3, Duration::from_secs(2)).await;
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
    let status = cluster.service.status().borrow().clone();
    assert_eq!(status.recoveries, 0);
}

/// Many transfers in flight between four node processes while checkpoints follow each other:
/// a message coloured with a round its receiver's node has not started yet (the sender's node
/// got the prepare first) must not be handled before the receiver captures, and every line
/// must hold all the money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_cross_node_traffic_keeps_the_money_in_every_line() {
    let cluster = Cluster::start_with(4, Duration::from_secs(2), true).await;
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
    let lines = money_in_every_line(&cluster).await;
    assert!(lines.len() >= 40, "{} lines", lines.len());
    let wrong: Vec<_> = lines
        .iter()
        .filter(|(_, money, _)| *money != cluster.total())
        .collect();
    assert!(
        wrong.is_empty(),
        "money not conserved (expected {}) in lines {wrong:?}",
        cluster.total()
    );
    let hops = lines.last().map_or(0, |l| l.2);
    assert!(
        hops >= 500,
        "too little traffic before the last line: {hops}"
    );
    assert_eq!(cluster.service.status().borrow().recoveries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_between_rounds_recovers_and_the_replacement_restores() {
    let mut cluster = Cluster::start(3, Duration::from_millis(500)).await;
    cluster
        .wait_for("three live nodes", Duration::from_secs(20), all_live(3))
        .await;
    let committed = cluster.moving_line().await;

    // SIGKILL node 1 (Child::kill is SIGKILL on unix).
    let mut victim = cluster.children[1].take().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    cluster
        .wait_for("a recovery", Duration::from_secs(10), |s| s.recoveries >= 1)
        .await;
    // While its objects are absent, no checkpoint can commit.
    match cluster.service.trigger().await {
        Err(Error::Aborted { .. }) => {}
        other => panic!("a checkpoint without node 1's objects must abort, got {other:?}"),
    }
    // The fence points at the line that was committed before the kill.
    let store = CheckpointStore::open(&cluster.store_url(), store_options())
        .await
        .unwrap();
    let ids = store.committed_ids().await.unwrap();
    let fence = store.read_manifest(*ids.last().unwrap()).await.unwrap();
    assert_eq!(fence.kind, ManifestKind::Fence);
    assert!(fence.id > committed);

    // A replacement registering the same object ids restores them; checkpoints commit again.
    let replacement = cluster.spawn_node(1, None);
    cluster.children[1] = Some(replacement);
    let after = cluster.checkpoint(Duration::from_secs(20)).await;
    assert!(after > fence.id);
    let (line, money) = cluster.money_at_line().await;
    assert_eq!(line, after);
    assert_eq!(
        money,
        cluster.total(),
        "money is conserved across the recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_inside_prepare_aborts_and_recovers() {
    let mut cluster = Cluster::start(3, Duration::from_millis(500)).await;
    cluster
        .wait_for("three live nodes", Duration::from_secs(20), all_live(3))
        .await;
    let committed = cluster.moving_line().await;

    // Replace node 2 by one whose objects block in `prepare` once the marker exists.
    let block = cluster.marker("block");
    let reached = cluster.marker("reached");
    let mut old = cluster.children[2].take().unwrap();
    old.kill().unwrap();
    old.wait().unwrap();
    cluster
        .wait_for("the first recovery", Duration::from_secs(10), |s| {
            s.recoveries >= 1
        })
        .await;
    cluster.children[2] = Some(cluster.spawn_node(2, Some((&block, &reached))));
    let before = cluster.checkpoint(Duration::from_secs(20)).await;
    assert!(before > committed);

    std::fs::write(&block, b"").unwrap();
    let service = cluster.service.clone();
    let attempt = tokio::spawn(async move { service.trigger().await });
    // Wait (bounded) until node 2 is inside prepare, then SIGKILL it there.
    let end = Instant::now() + Duration::from_secs(10);
    while !reached.exists() {
        assert!(Instant::now() < end, "node 2 never reached prepare");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut victim = cluster.children[2].take().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    std::fs::remove_file(&block).unwrap();
    match attempt.await.unwrap() {
        Err(Error::Aborted { .. }) => {}
        other => panic!("the attempt in flight must abort, got {other:?}"),
    }
    cluster
        .wait_for("the second recovery", Duration::from_secs(10), |s| {
            s.recoveries >= 2
        })
        .await;
    cluster.children[2] = Some(cluster.spawn_node(2, None));
    let after = cluster.checkpoint(Duration::from_secs(20)).await;
    let (line, money) = cluster.money_at_line().await;
    assert_eq!(line, after);
    assert_eq!(money, cluster.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_within_the_timeout_resumes_without_recovery() {
    let cluster = Cluster::start(2, Duration::from_secs(3)).await;
    cluster
        .wait_for("two live nodes", Duration::from_secs(20), all_live(2))
        .await;
    cluster.moving_line().await;
    let before = hops_at_line(&cluster).await;

    // Within the timeout: the node reconnects with its session; no recovery.
    cluster.service.cut_connection("node-0");
    cluster
        .wait_for("node-0 back", Duration::from_secs(10), all_live(2))
        .await;
    // Messages keep flowing across the resumed session: a later line shows more of them.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        cluster.checkpoint(Duration::from_secs(20)).await;
        if hops_at_line(&cluster).await > before + 20 {
            break;
        }
        assert!(Instant::now() < end, "traffic stopped after the resume");
    }
    assert_eq!(cluster.service.status().borrow().recoveries, 0);
    let (_, money) = cluster.money_at_line().await;
    assert_eq!(money, cluster.total());
}
