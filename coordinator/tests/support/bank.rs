//! A bank across REAL node processes on loopback: accounts on several nodes pass money to each
//! other while a coordinator service in the test process checkpoints them.
//!
//! A node process is the test binary re-executed with `COHORT_SERVICE_NODE` set: the test
//! file's `node_process` test calls [`node_role`], which then runs a node instead of returning.
//! Each node can reach the service directly or through its own fault-injecting [`Proxy`].
//!
//! A node's accounts pause in a protocol phase (`prepare`, `on_committed`) while a marker file
//! exists ([`Cluster::block_after`]), so that a test can SIGKILL the node exactly there.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use cohort_checkpoint::{CheckpointStore, Manifest, ManifestKind, StoreOptions};
use cohort_coordinator::engine::RestartPolicy;
use cohort_coordinator::node::{Node, NodeStatus};
use cohort_coordinator::service::{Service, ServiceConfig, ServiceStatus};
use cohort_coordinator::{Actor, Context, Error};
use cohort_object_api::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::proxy::Proxy;

/// Every account's opening balance.
pub const INITIAL: i64 = 1_000;
/// Accounts hosted by each node: `acct-<node>-<n>`.
pub const ACCOUNTS_PER_NODE: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// An input: start passing money around.
    Kick,
    /// Money from another account.
    Credit(i64),
}

/// A protocol phase an account can be paused in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Inside `Checkpointable::prepare`: before the capture, so before the node votes.
    Prepare,
    /// Inside `Checkpointable::on_committed`: the node got `Decided` and handles it.
    Committed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Committed => "committed",
        }
    }
}

/// While it exists, node `index`'s accounts pause in `phase`.
fn block_marker(dir: &Path, index: usize, phase: Phase) -> PathBuf {
    dir.join(format!("block-{}-{index}", phase.name()))
}

/// While it exists, the next message one of node `index`'s accounts handles fails: the
/// handler panics if the file says `panic`, else returns an error. The account that fails
/// removes it first, so each marker fails one handler.
fn fault_marker(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("fault-{index}"))
}

/// Written by node `index` when one of its accounts paused in `phase`.
fn reached_marker(dir: &Path, index: usize, phase: Phase) -> PathBuf {
    dir.join(format!("reached-{}-{index}", phase.name()))
}

struct Account {
    balance: i64,
    peers: Vec<ObjectId>,
    hops: u64,
    node: usize,
    markers: PathBuf,
}

impl Account {
    /// Pauses while `phase`'s marker exists, in checkpoints after the id it holds (a late
    /// phase of an earlier one must not stall the test).
    async fn pause_in(&self, phase: Phase, checkpoint: CheckpointId) {
        let block = block_marker(&self.markers, self.node, phase);
        let Ok(after) = std::fs::read_to_string(&block) else {
            return;
        };
        let after = after.trim().parse::<u64>().unwrap_or_else(|_| {
            panic!(
                "block marker {} holds {after:?}, not a checkpoint id",
                block.display()
            )
        });
        if checkpoint.get() > after {
            std::fs::write(reached_marker(&self.markers, self.node, phase), b"").unwrap();
            // Waits for the test to SIGKILL this process (or to remove the marker).
            while block.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
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

    async fn prepare(&mut self, checkpoint: CheckpointId) -> Result<(), ObjectError> {
        self.pause_in(Phase::Prepare, checkpoint).await;
        Ok(())
    }

    async fn on_committed(&mut self, checkpoint: CheckpointId) {
        self.pause_in(Phase::Committed, checkpoint).await;
    }
}

#[async_trait]
impl Actor for Account {
    type Message = Msg;

    async fn handle(&mut self, message: Msg, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        let fault = fault_marker(&self.markers, self.node);
        if let Ok(kind) = std::fs::read_to_string(&fault)
            && std::fs::remove_file(&fault).is_ok()
        {
            if kind == "panic" {
                panic!("injected fault in {}", ctx.id());
            }
            return Err(ObjectError::Refused {
                reason: format!("injected fault in {}", ctx.id()),
            });
        }
        let amount = match message {
            Msg::Kick => 0,
            Msg::Credit(x) => x,
        };
        self.balance += amount;
        self.hops += 1;
        // Pace the traffic so that two cores are not spent on it alone.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let send = (self.balance / 10).max(1).min(self.balance);
        // Pass money to another account, mostly on another node; past accounts that were
        // removed (closed: the cohort no longer knows them).
        let first = self.hops as usize * 7 + 3;
        for i in 0..self.peers.len() {
            let next = &self.peers[(first + i) % self.peers.len()];
            if next == ctx.id() {
                continue;
            }
            let sent = ctx
                .address::<Msg>(next)
                .and_then(|to| ctx.send(&to, Msg::Credit(send)));
            match sent {
                Ok(()) => {
                    self.balance -= send;
                    return Ok(());
                }
                Err(Error::UnknownObject(_)) => continue,
                Err(e) => return Err(refused(e)),
            }
        }
        Ok(())
    }
}

fn refused(e: Error) -> ObjectError {
    ObjectError::Refused {
        reason: e.to_string(),
    }
}

/// Every account id of a bank of `nodes` nodes.
pub fn account_ids(nodes: usize) -> Vec<ObjectId> {
    (0..nodes)
        .flat_map(|n| {
            (0..ACCOUNTS_PER_NODE).map(move |a| ObjectId::new(format!("acct-{n}-{a}")).unwrap())
        })
        .collect()
}

/// The node hosting `account` (`acct-<node>-<n>`).
pub fn node_of(account: &ObjectId) -> usize {
    account.as_str().split('-').nth(1).unwrap().parse().unwrap()
}

fn store_options() -> StoreOptions {
    StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    }
}

/// Set for a node process whose stdin is a pipe from the test process: it exits when that
/// closes, so that no node outlives a test process that died without killing it.
const PARENT_PIPE_ENV: &str = "COHORT_PARENT_PIPE";

/// The node role: runs only in a child process (returns at once in the test process).
pub fn node_role() {
    let Ok(index) = std::env::var("COHORT_SERVICE_NODE") else {
        return;
    };
    if std::env::var(PARENT_PIPE_ENV).is_ok() {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    let index: usize = index.parse().unwrap();
    let nodes: usize = std::env::var("COHORT_NODES").unwrap().parse().unwrap();
    let coordinator = std::env::var("COHORT_COORDINATOR").unwrap();
    let store_dir = std::env::var("COHORT_STORE").unwrap();
    let markers = PathBuf::from(std::env::var("COHORT_MARKERS").unwrap());
    let kick = std::env::var("COHORT_KICK").is_ok();
    // Every account of this node starts a stream of transfers (heavy cross-node traffic).
    let kick_all = std::env::var("COHORT_KICK_ALL").is_ok();
    // Registers the account type: the coordinator may move a dead node's accounts here.
    let host_accounts = std::env::var("COHORT_HOST_ACCOUNTS").is_ok();
    // A node joining a running cohort: the account type only, no accounts of its own.
    let empty = std::env::var("COHORT_EMPTY").is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&store_dir, store_options())
            .await
            .unwrap();
        let peers = account_ids(nodes);
        let mut builder = Node::builder(store)
            .name(format!("node-{index}"))
            .coordinators(vec![coordinator]);
        if host_accounts {
            let (peers, markers) = (peers.clone(), markers.clone());
            builder = builder.host_type(move |_id: &ObjectId| Account {
                balance: 0,
                peers: peers.clone(),
                hops: 0,
                node: index,
                markers: markers.clone(),
            });
        }
        let node = builder.build().await.unwrap();
        let mut mine = Vec::new();
        let own = if empty { 0 } else { ACCOUNTS_PER_NODE };
        for a in 0..own {
            let id = ObjectId::new(format!("acct-{index}-{a}")).unwrap();
            let account = Account {
                balance: INITIAL,
                peers: peers.clone(),
                hops: 0,
                node: index,
                markers: markers.clone(),
            };
            mine.push(node.spawn(id, account).unwrap());
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
            let (kicked, kicks) = if kick_all {
                (&mine[..], 4)
            } else {
                (&mine[..1], 1)
            };
            for addr in kicked {
                for _ in 0..kicks {
                    addr.tell(Msg::Kick).unwrap();
                }
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

/// How a [`Cluster`] starts.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub nodes: usize,
    /// The service's heartbeat timeout: a connection silent this long is lost, a node lost
    /// this long is dead.
    pub heartbeat_timeout: Duration,
    /// Every account starts four streams of transfers, not only node 0's first account one.
    pub kick_all: bool,
    /// Each node reaches the service through its own [`Proxy`].
    pub proxied: bool,
    /// Nodes register the account type: a dead node's accounts move to the survivors.
    pub host_accounts: bool,
    /// The service's restart policy for failed accounts.
    pub restart: RestartPolicy,
}

impl Options {
    pub fn new(nodes: usize, heartbeat_timeout: Duration) -> Self {
        Self {
            nodes,
            heartbeat_timeout,
            kick_all: false,
            proxied: false,
            host_accounts: false,
            restart: RestartPolicy::default(),
        }
    }
}

/// A coordinator service in this process and node processes around it.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub service: Service,
    pub options: Options,
    children: Vec<Option<Child>>,
    proxies: Vec<Proxy>,
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
    pub async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            CheckpointStore::open(dir.path().join("store").to_str().unwrap(), store_options())
                .await
                .unwrap();
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
        config.heartbeat_interval = Duration::from_millis(50);
        config.heartbeat_timeout = options.heartbeat_timeout;
        config.timeout = Duration::from_secs(5);
        config.restart = options.restart;
        let service = Service::start(store, config).await.unwrap();
        let mut proxies = Vec::new();
        if options.proxied {
            for _ in 0..options.nodes {
                proxies.push(Proxy::start(service.local_addr()).await);
            }
        }
        let mut cluster = Self {
            dir,
            service,
            options,
            children: (0..options.nodes).map(|_| None).collect(),
            proxies,
        };
        for i in 0..options.nodes {
            cluster.spawn(i);
        }
        cluster
    }

    /// Starts node `index` (again: a replacement hosting the same account ids).
    pub fn spawn(&mut self, index: usize) {
        assert!(self.children[index].is_none(), "node {index} still runs");
        let coordinator = match self.proxies.get(index) {
            Some(proxy) => proxy.addr(),
            None => self.service.local_addr(),
        };
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["node_process", "--exact", "--nocapture", "--test-threads=1"])
            .env("COHORT_SERVICE_NODE", index.to_string())
            .env("COHORT_NODES", self.options.nodes.to_string())
            .env("COHORT_COORDINATOR", coordinator.to_string())
            .env("COHORT_STORE", self.store_url())
            .env("COHORT_MARKERS", self.dir.path())
            .env(PARENT_PIPE_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.options.host_accounts {
            cmd.env("COHORT_HOST_ACCOUNTS", "1");
        }
        if self.options.kick_all {
            cmd.env("COHORT_KICK_ALL", "1");
        } else if index == 0 {
            cmd.env("COHORT_KICK", "1");
        }
        self.children[index] = Some(cmd.spawn().unwrap());
    }

    /// Starts one more node, `node-{index}` after the others, that hosts no accounts of its
    /// own, only the account type: a node joining the running cohort. Returns its index.
    pub fn spawn_empty(&mut self) -> usize {
        let index = self.children.len();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["node_process", "--exact", "--nocapture", "--test-threads=1"])
            .env("COHORT_SERVICE_NODE", index.to_string())
            .env("COHORT_NODES", self.options.nodes.to_string())
            .env("COHORT_COORDINATOR", self.service.local_addr().to_string())
            .env("COHORT_STORE", self.store_url())
            .env("COHORT_MARKERS", self.dir.path())
            .env("COHORT_HOST_ACCOUNTS", "1")
            .env("COHORT_EMPTY", "1")
            .env(PARENT_PIPE_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.children.push(Some(cmd.spawn().unwrap()));
        index
    }

    /// SIGKILLs node `index` (`Child::kill` is SIGKILL on unix) and reaps it.
    pub fn kill(&mut self, index: usize) {
        let mut victim = self.children[index].take().unwrap();
        victim.kill().unwrap();
        victim.wait().unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `index`'s process.
    pub fn signal(&self, index: usize, signal: &str) {
        let pid = self.children[index].as_ref().unwrap().id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Node `index`'s proxy (the cluster must be started with `proxied`).
    pub fn proxy(&self, index: usize) -> &Proxy {
        &self.proxies[index]
    }

    /// Every proxy's [`Proxy::mark`], by node.
    pub fn marks(&self) -> Vec<usize> {
        self.proxies.iter().map(Proxy::mark).collect()
    }

    /// Node `index`'s accounts pause in `phase` from now on, until [`unblock`](Self::unblock).
    /// Only for checkpoints after `after`: a late phase of an earlier one (a decision still
    /// being handled, say) must not pause the node.
    pub fn block_after(&self, index: usize, phase: Phase, after: CheckpointId) {
        let marker = block_marker(self.dir.path(), index, phase);
        // Written aside and renamed into place: a node reading a half-written marker would
        // see no id and pause in every checkpoint, the earlier ones too.
        let staged = marker.with_extension("staged");
        std::fs::write(&staged, after.get().to_string()).unwrap();
        std::fs::rename(staged, marker).unwrap();
    }

    /// The next message one of node `index`'s accounts handles fails: its handler panics
    /// (`panic`) or returns an error.
    pub fn inject_fault(&self, index: usize, panic: bool) {
        let marker = fault_marker(self.dir.path(), index);
        let staged = marker.with_extension("staged");
        std::fs::write(&staged, if panic { "panic" } else { "error" }).unwrap();
        std::fs::rename(staged, marker).unwrap();
    }

    /// Whether node `index`'s injected fault has not failed a handler yet.
    pub fn fault_pending(&self, index: usize) -> bool {
        fault_marker(self.dir.path(), index).exists()
    }

    pub fn unblock(&self, index: usize, phase: Phase) {
        std::fs::remove_file(block_marker(self.dir.path(), index, phase)).unwrap();
    }

    /// Waits (bounded) until one of node `index`'s accounts paused in `phase`.
    pub async fn wait_reached(&self, index: usize, phase: Phase, deadline: Duration) {
        let reached = reached_marker(self.dir.path(), index, phase);
        let end = Instant::now() + deadline;
        while !reached.exists() {
            assert!(
                Instant::now() < end,
                "node {index} never paused in {}",
                phase.name()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn store_url(&self) -> String {
        self.dir.path().join("store").to_str().unwrap().to_owned()
    }

    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        f: impl Fn(&ServiceStatus) -> bool,
    ) {
        let mut status = self.service.status();
        let ok = matches!(
            tokio::time::timeout(deadline, status.wait_for(|s| f(s))).await,
            Ok(Ok(_))
        );
        assert!(ok, "timed out waiting for {what}: {:?}", *status.borrow());
    }

    pub fn status(&self) -> ServiceStatus {
        self.service.status().borrow().clone()
    }

    /// Triggers until a checkpoint commits (attempts abort while nodes register or restore).
    pub async fn checkpoint(&self, deadline: Duration) -> CheckpointId {
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
    pub async fn moving_line(&self) -> CheckpointId {
        self.line_with_more_hops(0, 50).await
    }

    /// Checkpoints until the newest line shows more than `more` messages handled beyond
    /// `before` by node `node`'s accounts, or by all accounts for `None`.
    pub async fn line_with_more_hops_on(
        &self,
        node: Option<usize>,
        before: u64,
        more: u64,
    ) -> CheckpointId {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let id = self.checkpoint(Duration::from_secs(20)).await;
            let hops: u64 = self
                .accounts_at_line()
                .await
                .iter()
                .filter(|(a, _)| node.is_none_or(|n| node_of(a) == n))
                .map(|(_, (_, h))| h)
                .sum();
            if hops >= before + more {
                return id;
            }
            assert!(
                Instant::now() < end,
                "messages stopped: {hops} handled at line {id}, {before} before"
            );
        }
    }

    /// [`line_with_more_hops_on`](Self::line_with_more_hops_on) over every account.
    pub async fn line_with_more_hops(&self, before: u64, more: u64) -> CheckpointId {
        self.line_with_more_hops_on(None, before, more).await
    }

    /// Runs `read` on a fresh handle of the store (one that caches nothing the nodes wrote).
    pub async fn read_store<T, F, Fut>(&self, read: F) -> T
    where
        F: FnOnce(CheckpointStore) -> Fut,
        Fut: Future<Output = T>,
    {
        let store = CheckpointStore::open(&self.store_url(), store_options())
            .await
            .unwrap();
        read(store).await
    }

    /// Every committed manifest, oldest first.
    pub async fn manifests(&self) -> Vec<Manifest> {
        self.read_store(|store| async move {
            let mut manifests = Vec::new();
            for id in store.committed_ids().await.unwrap() {
                manifests.push(store.read_manifest(id).await.unwrap());
            }
            manifests
        })
        .await
    }

    pub async fn manifest(&self, id: CheckpointId) -> Manifest {
        self.read_store(move |store| async move { store.read_manifest(id).await.unwrap() })
            .await
    }

    /// The manifest recovery would use now (no damaged line may be skipped).
    pub async fn recovery_line(&self) -> Manifest {
        self.read_store(|store| async move {
            let line = store.recovery_line().await.unwrap().unwrap();
            assert!(line.skipped.is_empty(), "damaged lines: {:?}", line.skipped);
            line.manifest
        })
        .await
    }

    /// Each account's (balance, messages handled) in the recovery line.
    pub async fn accounts_at_line(&self) -> BTreeMap<ObjectId, (i64, u64)> {
        self.read_store(|store| async move {
            let line = store.recovery_line().await.unwrap().unwrap();
            assert!(line.skipped.is_empty(), "damaged lines: {:?}", line.skipped);
            let states = store.read_states(&line.manifest).await.unwrap();
            states
                .into_iter()
                .map(|(id, s)| (id, s.decode::<(i64, u64)>().unwrap()))
                .collect()
        })
        .await
    }

    /// Messages handled before the recovery line, over every account.
    pub async fn hops_at_line(&self) -> u64 {
        self.accounts_at_line().await.values().map(|(_, h)| h).sum()
    }

    /// Σ balances + Σ in-transit credits of the recovery line, which must hold every account
    /// and show money moved between nodes.
    pub async fn money_at_line(&self) -> (CheckpointId, i64) {
        let accounts = self.options.nodes * ACCOUNTS_PER_NODE;
        self.read_store(move |store| async move {
            let line = store.recovery_line().await.unwrap().unwrap();
            assert!(line.skipped.is_empty(), "damaged lines: {:?}", line.skipped);
            let (money, hops) = money_in(&store, &line.manifest).await;
            assert!(
                hops >= 50,
                "too few messages were handled before line {}: {hops}",
                line.manifest.id
            );
            assert_eq!(
                line.manifest.objects.len(),
                accounts,
                "every account is in the line"
            );
            (line.manifest.id, money)
        })
        .await
    }

    /// `(id, kind, money, hops)` of every committed manifest.
    pub async fn money_in_every_line(&self) -> Vec<(CheckpointId, ManifestKind, i64, u64)> {
        self.read_store(|store| async move {
            let mut lines = Vec::new();
            for id in store.committed_ids().await.unwrap() {
                let manifest = store.read_manifest(id).await.unwrap();
                let (money, hops) = money_in(&store, &manifest).await;
                lines.push((id, manifest.kind, money, hops));
            }
            lines
        })
        .await
    }

    /// Asserts that every committed line holds all the money, but for what `removed` took with
    /// it: from the first line without it on, its balance and the credits in transit to it in
    /// the last line that held it (the line it was removed at) are gone, and nothing else.
    pub async fn assert_money_in_every_line_without(&self, removed: &ObjectId) {
        let removed = removed.clone();
        let total = self.total();
        let report = self
            .read_store(|store| async move {
                let mut loss = None;
                let mut lines = Vec::new();
                for id in store.committed_ids().await.unwrap() {
                    let manifest = store.read_manifest(id).await.unwrap();
                    let (money, _) = money_in(&store, &manifest).await;
                    let holds = manifest.objects.contains_key(&removed);
                    if holds {
                        let mut took = 0;
                        for (o, s) in store.read_states(&manifest).await.unwrap() {
                            if o == removed {
                                took += s.decode::<(i64, u64)>().unwrap().0;
                            }
                        }
                        for (entry, m) in store.read_in_transit(&manifest).await.unwrap() {
                            if entry.to == removed
                                && let Msg::Credit(x) = m.decode::<Msg>().unwrap()
                            {
                                took += x;
                            }
                        }
                        loss = Some(took);
                    }
                    lines.push((id, holds, money));
                }
                (loss, lines)
            })
            .await;
        let (loss, lines) = report;
        let loss = loss.expect("some line holds the removed object");
        let wrong: Vec<_> = lines
            .iter()
            .filter(|(_, holds, money)| *money != if *holds { total } else { total - loss })
            .collect();
        assert!(
            lines.iter().any(|(_, holds, _)| !holds),
            "no line without the removed object: {lines:?}"
        );
        assert!(
            wrong.is_empty(),
            "money not conserved (expected {total}, less {loss} without the removed account) in lines {wrong:?}"
        );
    }

    /// Asserts that every committed line (checkpoints and fences) holds all the money.
    pub async fn assert_money_in_every_line(&self) {
        let lines = self.money_in_every_line().await;
        assert!(!lines.is_empty());
        let wrong: Vec<_> = lines
            .iter()
            .filter(|(_, _, money, _)| *money != self.total())
            .collect();
        assert!(
            wrong.is_empty(),
            "money not conserved (expected {}) in lines {wrong:?}",
            self.total()
        );
    }

    pub fn total(&self) -> i64 {
        INITIAL * (self.options.nodes * ACCOUNTS_PER_NODE) as i64
    }
}

/// Σ balances + Σ in-transit credits of `manifest`, and the messages handled before it.
async fn money_in(store: &CheckpointStore, manifest: &Manifest) -> (i64, u64) {
    let mut money = 0;
    let mut hops = 0;
    for (_, s) in store.read_states(manifest).await.unwrap() {
        let (balance, h): (i64, u64) = s.decode().unwrap();
        money += balance;
        hops += h;
    }
    for (_, m) in store.read_in_transit(manifest).await.unwrap() {
        if let Msg::Credit(x) = m.decode::<Msg>().unwrap() {
            money += x;
        }
    }
    (money, hops)
}

/// Every node live and every account placed.
pub fn all_live(nodes: usize) -> impl Fn(&ServiceStatus) -> bool {
    move |s| {
        s.table.nodes.values().filter(|n| n.live).count() == nodes
            && s.table.placement.len() == nodes * ACCOUNTS_PER_NODE
    }
}

/// Whether node `index` is registered and connected.
pub fn live(status: &ServiceStatus, index: usize) -> bool {
    status
        .table
        .nodes
        .get(&format!("node-{index}"))
        .is_some_and(|n| n.live)
}
