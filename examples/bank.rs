//! The bank, across processes: accounts are objects hosted by several node processes; they
//! transfer random amounts to each other, node to node, while two coordinator processes (a
//! leader and a standby, on one store) take consistent checkpoints every few hundred
//! milliseconds.
//!
//! Partway through, node-0 is killed with SIGKILL and no replacement is started: the leader
//! finds it dead and moves its accounts and the deposits' source (below) to the surviving
//! nodes (every node registers both types with `NodeBuilder::host_type`), every node rolls back
//! to the recovery line, and the survivors create the dead node's objects and restore them
//! from it.
//! Later the leading coordinator is killed with SIGKILL: the standby takes over after the
//! lease, fences the old leader, rolls every node back to the recovery line, and carries on;
//! the nodes follow it.
//!
//! Meanwhile a depositor process outside the cohort pays 1 into a random account, hundreds of
//! times a second, through an ingress (`cohort::coordinator::ingress`): each deposit is
//! acknowledged once it is durable in the ingress log on the store, and the log's source, a
//! member of the cohort (on node-0, then on the survivor it moved to), sends it on to its
//! account. Every node serves an endpoint of the log, which takes deposits only where the
//! source runs; the depositor lists them all, reconnects to the next when one fails or
//! refuses, and resends whatever was not acknowledged; the log stores each deposit once.
//!
//! The invariant: total money = sum of balances + transfers recorded in transit = the money
//! the bank started with + the deposits the line's source had sent (its read position: every
//! deposit is 1), in every committed checkpoint, including the lines recovery and failover
//! land on. At the end, the last line holds every deposit the depositor had acknowledged,
//! exactly once. The run exits 1 if it ever broke, 2 on any other failure.
//!
//! ```text
//! cargo run --release --example bank                      # checkpoints under ./cohort-data/bank
//! cargo run --release --example bank -- --nodes 3 --accounts 30 --seconds 20
//! cargo run --release --example bank -- --help
//! ```
//!
//! Every process is this binary: `--role coordinator`, `--role node` and `--role depositor`
//! are what the orchestrator (the default role) starts. Children exit when the orchestrator's end of their
//! stdin closes, so none outlives it. `examples/bank_inprocess.rs` is the same bank in one
//! process, with a coordinator crash in the middle of a checkpoint.
#![allow(
    clippy::disallowed_methods,
    reason = "the example runs real processes on real time"
)]

#[path = "../tests/support/bank.rs"]
mod bank;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bank::{ACCOUNT_TYPE, Account, BankMsg, account_id, line_money};
use clap::{Parser, ValueEnum};
use cohort::CheckpointId;
use cohort::checkpoint::ingress::{IngressLog, IngressOptions};
use cohort::checkpoint::{CheckpointStore, Manifest, ManifestKind, StoreOptions};
use cohort::coordinator::ingress::endpoint::{IngressClient, IngressClientOptions, listen_config};
use cohort::coordinator::ingress::{Ingress, LogHandle, source_positions};
use cohort::coordinator::node::{Node, NodeSettings};
use cohort::coordinator::service::control::{
    self, ControlReply, ControlRequest, Responder, StatusReport,
};
use cohort::coordinator::service::leadership::{self, Leadership, LeadershipConfig, Transition};
use cohort::coordinator::service::{Service, ServiceConfig};
use cohort::wire::{CancellationToken, ConnectConfig, Role as WireRole};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BALANCE: i64 = 1_000;
/// The ingress log the depositor's deposits go through, and its source's id.
const DEPOSITS_LOG: &str = "deposits";
const DEPOSITS_SOURCE: &str = "ingress-deposits";

/// Accounts on several node processes transfer money while two coordinators checkpoint them;
/// a node and then the leader are killed with SIGKILL, and the money is checked throughout.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Where checkpoints go: a path, file:///abs/path or s3://bucket/prefix (every process
    /// opens it, so not memory://).
    #[arg(long, default_value = "./cohort-data/bank")]
    store: String,
    /// How many accounts (objects).
    #[arg(long, default_value_t = 64)]
    accounts: u64,
    /// How many node processes host them.
    #[arg(long, default_value_t = 4)]
    nodes: u64,
    /// How long to run, at least, in seconds: a node is killed at 30 %, the leader at 60 % (with --leader-kill).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Checkpoint interval, in milliseconds.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    /// The coordinators' lease, in milliseconds: a standby takes over this long after the
    /// leader's last renewal.
    #[arg(long, default_value_t = 1_000)]
    lease_ms: u64,
    /// Seed of the accounts' random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Which process this is (the orchestrator starts the others).
    #[arg(long, value_enum, default_value_t = ProcessRole::Orchestrator, hide = true)]
    role: ProcessRole,
    /// A node's index.
    #[arg(long, default_value_t = 0, hide = true)]
    index: u64,
    /// The coordinators a node connects to.
    #[arg(long, value_delimiter = ',', hide = true)]
    coordinators: Vec<String>,
    /// The ingress endpoints the depositor submits to, the log's writer first.
    #[arg(long, value_delimiter = ',', hide = true)]
    ingress: Vec<String>,
    /// Do not kill a node (isolates the no-fault path).
    #[arg(long, hide = true)]
    no_node_kill: bool,
    /// Do not kill the leading coordinator (isolates the node-failure path).
    #[arg(long, hide = true)]
    no_leader_kill: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProcessRole {
    Orchestrator,
    Coordinator,
    Node,
    Depositor,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match args.role {
            ProcessRole::Orchestrator => orchestrate(args).await,
            ProcessRole::Coordinator => coordinator(args).await.map(|()| true),
            ProcessRole::Node => node(args).await.map(|()| true),
            ProcessRole::Depositor => depositor(args).await.map(|()| true),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Lines of our stdin, read on a thread; the channel closes when the parent closes its end (or
/// dies): every child's way out.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Resolves when the parent closes our stdin.
async fn parent_gone() {
    let mut lines = stdin_lines();
    while lines.recv().await.is_some() {}
}

// ---------------------------------------------------------------------------------------------
// The coordinator process: what `cohort serve` does, through the library.

async fn coordinator(args: Args) -> anyhow::Result<()> {
    let store = CheckpointStore::open(&args.store, StoreOptions::default()).await?;
    let mut config = ServiceConfig::new(([127, 0, 0, 1], 0).into());
    config.lead_at_start = false;
    config.interval = Some(Duration::from_millis(args.interval_ms));
    config.timeout = Duration::from_secs(5);
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_timeout = Duration::from_millis(1_000);
    let responder = Responder::new();
    config.control = Some(responder.handler());
    let service = Service::start(store.clone(), config).await?;
    let addr = service.local_addr().to_string();
    let lease = LeadershipConfig::new(Duration::from_millis(args.lease_ms), Some(addr.clone()))?;
    let holder = lease.holder.clone();
    let leadership = Leadership::spawn(store, lease);
    responder.attach(service.clone(), leadership.clone(), holder);
    println!("coordinator at {addr}");
    let stop = CancellationToken::new();
    let driven = leadership::drive(
        service.clone(),
        leadership.clone(),
        stop.clone(),
        |t| match t {
            Transition::Leading { epoch, .. } => println!("leading under epoch {epoch}"),
            Transition::SteppedDown { epoch } => println!("stepped down from epoch {epoch}"),
            Transition::Following { leader: Some(r) } => {
                println!("standby behind epoch {}", r.epoch)
            }
            _ => {}
        },
    );
    tokio::select! {
        r = driven => r?,
        () = parent_gone() => {}
    }
    stop.cancel();
    leadership.stop().await;
    service.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The node process: hosts every account `i` with `i % nodes == index`.

async fn node(args: Args) -> anyhow::Result<()> {
    let store = CheckpointStore::open(&args.store, StoreOptions::default()).await?;
    let mut settings = NodeSettings::default();
    settings.heartbeat_interval = Duration::from_millis(100);
    settings.heartbeat_timeout = Duration::from_millis(1_000);
    settings.max_backoff = Duration::from_millis(100);
    let (accounts, seed) = (args.accounts, args.seed);
    let deposits = LogHandle::new(&store, DEPOSITS_LOG, IngressOptions::default());
    let sources = deposits.clone();
    let node = Node::builder(store.clone())
        .name(format!("node-{}", args.index))
        .coordinators(args.coordinators.clone())
        .settings(settings)
        // The coordinator may move a dead node's accounts here: each is created from this and
        // restored from the recovery line at once, so only its index matters.
        .host_type(move |id: &cohort::ObjectId| {
            let index = id
                .as_str()
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Account::new(index, accounts, 0, seed)
        })
        // And the deposits' source: it moves here too if node-0 dies.
        .host_type(move |_: &cohort::ObjectId| sources.source::<BankMsg>())
        .build()
        .await?;
    let mut mine = Vec::new();
    for i in (args.index..args.accounts).step_by(args.nodes.max(1) as usize) {
        let account = Account::new(i, args.accounts, BALANCE, args.seed);
        // On a store an earlier run left, the coordinator may have placed the account here
        // already (restored from the line): then it is ours as it is.
        mine.push(match node.spawn(account_id(i), account) {
            Err(cohort::coordinator::Error::DuplicateObject(id)) => node.address(&id)?,
            spawned => spawned?,
        });
    }
    println!("node hosts {} accounts", mine.len());
    // node-0 holds the deposits' ingress: the log's writer and its source. Every node serves
    // an endpoint of the log; the depositor lists node-0's first, and the others refuse
    // deposits (the depositor goes back to node-0) until node-0 is gone and the log is theirs
    // to open: when node-0 dies, the source moves to a survivor with its accounts.
    if args.index == 0 {
        match node.spawn(
            cohort::ObjectId::new(DEPOSITS_SOURCE)?,
            deposits.source::<BankMsg>(),
        ) {
            Ok(_) | Err(cohort::coordinator::Error::DuplicateObject(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let listener = listen_config(([127, 0, 0, 1], 0).into()).bind().await?;
    println!("ingress at {}", listener.local_addr());
    let stop = CancellationToken::new();
    let resolver = node.clone();
    tokio::spawn(std::sync::Arc::new(Ingress::<BankMsg>::on(deposits)).serve(
        listener,
        move |id| resolver.address::<BankMsg>(id),
        stop.clone(),
    ));
    let _serving = stop.drop_guard();
    // Inputs from outside: ticks to our own accounts, once the orchestrator says go (a line
    // on stdin), so that no money moves before every account is in the cohort.
    let mut lines = stdin_lines();
    if lines.recv().await.is_none() {
        return Ok(());
    }
    let mut x = args.seed ^ (args.index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            line = lines.recv() => if line.is_none() { break },
        }
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let who = (x % mine.len().max(1) as u64) as usize;
            let count = 1 + (x >> 32) as u32 % 3;
            // A held (recovering) account queues its inputs.
            let _ = mine[who].tell(BankMsg::Tick { count });
        }
    }
    let p = node.metrics().pauses();
    println!(
        "pauses {} {} {} {}",
        p.count,
        p.p50.as_nanos(),
        p.p99.as_nanos(),
        p.max.as_nanos()
    );
    node.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The depositor process: a client outside the cohort, paying 1 into a random account through
// the nodes' ingress endpoints, many deposits in flight, until its stdin closes.

async fn depositor(args: Args) -> anyhow::Result<()> {
    // A new client id per run: a client numbers its deposits from 1, and a number it used in
    // an earlier run would be taken for a retry.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let options = IngressClientOptions::new(format!("depositor-{started}"), args.ingress);
    let client = IngressClient::<BankMsg>::new(options)?;
    let mut lines = stdin_lines();
    if lines.recv().await.is_none() {
        return Ok(());
    }
    let mut x = args.seed | 1;
    let (mut seq, mut acknowledged) = (0u64, 0u64);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut settle = |done: Result<cohort::coordinator::Result<_>, tokio::task::JoinError>| {
        done??;
        acknowledged += 1;
        anyhow::Ok(())
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            line = lines.recv() => if line.is_none() { break },
        }
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seq += 1;
            let (client, to) = (client.clone(), account_id(x % args.accounts));
            in_flight.spawn(async move {
                client
                    .submit(seq, &to, &BankMsg::Transfer { amount: 1 })
                    .await
            });
        }
        while let Some(done) = in_flight.try_join_next() {
            settle(done)?;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        settle(done)?;
    }
    println!("deposited {acknowledged}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The orchestrator

/// A child process and the lines it prints.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn kill(&mut self) {
        // Child::start_kill is SIGKILL on unix.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
        }
    }
}

/// Lines from every child: (child name, line).
type Lines = mpsc::UnboundedReceiver<(String, String)>;

fn spawn(
    name: &str,
    args: &Args,
    extra: &[String],
    lines: &mpsc::UnboundedSender<(String, String)>,
) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("cannot find this program to start a child")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--store",
        &args.store,
        "--accounts",
        &args.accounts.to_string(),
        "--nodes",
        &args.nodes.to_string(),
        "--interval-ms",
        &args.interval_ms.to_string(),
        "--lease-ms",
        &args.lease_ms.to_string(),
        "--seed",
        &args.seed.to_string(),
    ])
    .args(extra)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdin = child.stdin.take();
    if let Some(out) = child.stdout.take() {
        let (tx, name) = (lines.clone(), name.to_owned());
        tokio::spawn(async move {
            let mut out = BufReader::new(out).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if std::env::var_os("BANK_ECHO").is_some() {
                    eprintln!("[{name}] {line}");
                }
                let _ = tx.send((name.clone(), line));
            }
        });
    }
    Ok(Proc {
        name: name.to_owned(),
        child,
        stdin,
    })
}

/// Waits for `who` to print a line containing `needle`; returns the line.
async fn wait_line(
    lines: &mut Lines,
    who: &str,
    needle: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some((name, line))) if name == who && line.contains(needle) => return Ok(line),
            Ok(Some(_)) => {}
            Ok(None) => bail!("every child is gone"),
            Err(_) => bail!("{who} did not print {needle:?} within {within:?}"),
        }
    }
}

fn coordinator_args() -> Vec<String> {
    vec!["--role".into(), "coordinator".into()]
}

fn depositor_args(ingress: &[String]) -> Vec<String> {
    vec![
        "--role".into(),
        "depositor".into(),
        "--ingress".into(),
        ingress.join(","),
    ]
}

fn node_args(index: u64, coordinators: &[String]) -> Vec<String> {
    vec![
        "--role".into(),
        "node".into(),
        "--index".into(),
        index.to_string(),
        "--coordinators".into(),
        coordinators.join(","),
    ]
}

/// Asks the coordinators for the leader's status.
async fn leader_status(coordinators: &[String]) -> Option<StatusReport> {
    let config = ConnectConfig::new(WireRole::Cli, "bank");
    let mut addrs = coordinators.to_vec();
    for _ in 0..2 {
        match control::request(&addrs, &config, ControlRequest::Status).await {
            Ok(ControlReply::Status(r)) if r.leading => return Some(*r),
            Ok(ControlReply::Status(r)) => addrs = r.leader.into_iter().collect(),
            _ => return None,
        }
    }
    None
}

/// What the orchestrator checks and counts in the store.
struct Audit {
    store: CheckpointStore,
    total: i64,
    accounts: usize,
    /// Manifests checked, and whether each held all the money.
    checked: BTreeMap<CheckpointId, bool>,
    /// Before this id, lines may hold only some accounts (nodes were registering).
    complete_from: Option<CheckpointId>,
    ok: bool,
}

impl Audit {
    /// Checks every manifest committed since the last look; returns the new ones.
    async fn look(&mut self) -> anyhow::Result<Vec<Manifest>> {
        let mut new = Vec::new();
        for id in self.store.committed_ids().await? {
            if self.checked.contains_key(&id) {
                continue;
            }
            let manifest = self.store.read_manifest(id).await?;
            let money = line_money(&self.store, &manifest).await?;
            let deposited = deposits_sent(&self.store, &manifest).await?;
            let complete = accounts_in(&manifest) == self.accounts;
            let good = if complete {
                money.total() == self.total + deposited as i64
            } else {
                // Only while the nodes first register, before any money moves (the accounts
                // may hold what an earlier run left, so their sum is not checked).
                self.complete_from.is_none_or(|from| id < from) && money.messages == 0
            };
            if !good {
                eprintln!(
                    "INVARIANT BROKEN in checkpoint {id} ({:?}, epoch {}): {} accounts, balances {} + in transit {} = {}, expected {}",
                    manifest.kind,
                    manifest.epoch,
                    money.accounts,
                    money.balances,
                    money.in_transit,
                    money.total(),
                    if complete {
                        format!("{} + {deposited} deposits", self.total)
                    } else {
                        "no line of some accounts after the start".into()
                    }
                );
                self.ok = false;
            }
            self.checked.insert(id, good);
            new.push(manifest);
        }
        Ok(new)
    }

    /// Looks until `found` matches a new manifest, for at most `within`.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        mut found: impl FnMut(&Manifest) -> bool,
    ) -> anyhow::Result<Manifest> {
        let deadline = Instant::now() + within;
        loop {
            for m in self.look().await? {
                if found(&m) {
                    return Ok(m);
                }
            }
            if Instant::now() >= deadline {
                bail!("{what}: not within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The accounts a line holds.
fn accounts_in(m: &Manifest) -> usize {
    m.objects
        .values()
        .filter(|e| *e.type_name == *ACCOUNT_TYPE)
        .count()
}

/// A checkpoint of every account and the deposits' source.
fn is_full_checkpoint(m: &Manifest, accounts: usize) -> bool {
    m.kind == ManifestKind::Checkpoint
        && accounts_in(m) == accounts
        && m.objects.keys().any(|o| o.as_str() == DEPOSITS_SOURCE)
}

/// The deposits the line's source had sent (its read position: each deposit is 1, and the
/// log numbers its inputs from 0 without gaps); 0 in a line without it.
async fn deposits_sent(store: &CheckpointStore, m: &Manifest) -> anyhow::Result<u64> {
    Ok(source_positions(store, m)
        .await?
        .into_iter()
        .find(|(_, log, _)| log == DEPOSITS_LOG)
        .map_or(0, |(_, _, next)| next))
}

async fn orchestrate(args: Args) -> anyhow::Result<bool> {
    if args.accounts < 2 || args.nodes < 2 || args.nodes > args.accounts {
        bail!("use at least 2 accounts and 2 nodes, and no more nodes than accounts");
    }
    if args.store.starts_with("memory:") {
        bail!("--store memory:// cannot be shared by processes; use a directory or s3://");
    }
    let started = Instant::now();
    let store = CheckpointStore::open(&args.store, StoreOptions::default()).await?;
    let run_for = Duration::from_secs(args.seconds.max(2));
    let lease = Duration::from_millis(args.lease_ms);
    let phase = Duration::from_secs(5).max(lease * 10);
    let total = BALANCE * args.accounts as i64;
    println!(
        "bank: {} accounts on {} node processes, {} in total; two coordinators (lease {:?}), a checkpoint every {} ms, to {}",
        args.accounts, args.nodes, total, lease, args.interval_ms, store
    );
    let mut audit = Audit {
        store: store.clone(),
        total,
        accounts: args.accounts as usize,
        checked: BTreeMap::new(),
        complete_from: None,
        ok: true,
    };
    // What an earlier run left is checked too, but not counted as this run's.
    audit.look().await?;
    let before: BTreeSet<CheckpointId> = audit.checked.keys().copied().collect();

    let (tx, mut lines) = mpsc::unbounded_channel();
    let mut coordinators: Vec<Proc> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for name in ["coordinator-a", "coordinator-b"] {
        let p = spawn(name, &args, &coordinator_args(), &tx)?;
        let line = wait_line(&mut lines, name, "coordinator at ", phase).await?;
        addrs.push(line.trim_start_matches("coordinator at ").to_owned());
        coordinators.push(p);
        if name == "coordinator-a" {
            wait_line(&mut lines, name, "leading under epoch", phase).await?;
        }
    }
    println!("coordinators: {} leads, {} stands by", addrs[0], addrs[1]);

    // Deposits already in the log (an earlier run's), so that this run's can be counted.
    let deposits_before = IngressLog::verify(&store, DEPOSITS_LOG).await?.end;
    let mut nodes: Vec<Proc> = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..args.nodes {
        let name = format!("node-{i}");
        nodes.push(spawn(&name, &args, &node_args(i, &addrs), &tx)?);
        let line = wait_line(&mut lines, &name, "ingress at ", phase).await?;
        endpoints.push(line.trim_start_matches("ingress at ").to_owned());
    }
    let ingress = endpoints[0].clone();
    let mut depositor = spawn("depositor", &args, &depositor_args(&endpoints), &tx)?;
    // Every account (and the deposits' source) registered and released: then money may move.
    let deadline = Instant::now() + phase;
    loop {
        if let Some(s) = leader_status(&addrs).await
            && s.table.placement.len() == args.accounts as usize + 1
            && s.table.nodes.values().all(|n| n.live)
            && s.table.nodes.len() == args.nodes as usize
        {
            break;
        }
        if Instant::now() >= deadline {
            let seen = leader_status(&addrs).await;
            bail!("the nodes did not all register within {phase:?}; the leader reports {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = audit
        .until(phase, "a checkpoint of every account", |m| {
            is_full_checkpoint(m, args.accounts as usize)
        })
        .await?;
    audit.complete_from = Some(first.id);
    for n in &mut nodes {
        n.say("go").await;
    }
    depositor.say("go").await;
    println!(
        "every account is in the cohort (checkpoint {}); transfers start, and deposits from a client process through node-0's ingress at {ingress}",
        first.id
    );

    // Phase 1: run; SIGKILL a node; recovery; the survivors take its accounts (no replacement).
    tokio::time::sleep(run_for.mul_f64(0.3)).await;
    let mut recovery_time = Duration::ZERO;
    if !args.no_node_kill {
        // node-0: it serves the deposits' ingress, which moves with its accounts.
        let victim = 0usize;
        audit.look().await?;
        let last_before = audit.checked.keys().last().copied();
        nodes[victim].kill().await;
        let killed = Instant::now();
        println!(
            "killed {} with SIGKILL (it served the deposits' ingress)",
            nodes[victim].name
        );
        // The leader finds it dead and every node rolls back: a fence marks the recovery.
        let fence = audit
            .until(phase, "the recovery's fence", |m| {
                m.kind == ManifestKind::Fence && Some(m.id) > last_before
            })
            .await?;
        let line = fence.parent.and_then(|p| audit.checked.get(&p).map(|_| p));
        let line_manifest = match line {
            Some(p) => Some(store.read_manifest(p).await?),
            None => None,
        };
        if line_manifest
            .as_ref()
            .is_some_and(|l| l.objects != fence.objects)
        {
            eprintln!(
                "INVARIANT BROKEN: recovery's fence {} does not point at the newest committed line",
                fence.id
            );
            audit.ok = false;
        }
        nodes.remove(victim);
        let after = audit
            .until(
                phase,
                "a checkpoint of every account after the recovery",
                |m| is_full_checkpoint(m, args.accounts as usize) && m.id > fence.id,
            )
            .await?;
        recovery_time = killed.elapsed();
        println!(
            "recovered: every node rolled back to checkpoint {} (fence {}), the surviving nodes took node-{victim}'s accounts and the deposits' source (no replacement); checkpoint {} committed {:?} after the kill",
            fence.parent.map_or("-".into(), |p| p.to_string()),
            fence.id,
            after.id,
            recovery_time
        );
    }

    // Phase 2: run; SIGKILL the leading coordinator while the standby runs.
    tokio::time::sleep(run_for.mul_f64(0.3)).await;
    let mut failover_time = Duration::ZERO;
    if !args.no_leader_kill {
        let epoch = store
            .newest_epoch()
            .await?
            .context("no epoch was claimed")?;
        let leader_at = epoch.address.clone().unwrap_or_default();
        let Some(li) = addrs.iter().position(|a| *a == leader_at) else {
            bail!("the leader's address {leader_at} is not one of ours");
        };
        coordinators[li].kill().await;
        let killed = Instant::now();
        println!(
            "killed the leading {} (epoch {}) with SIGKILL",
            coordinators[li].name, epoch.epoch
        );
        let taken = audit
            .until(phase, "a checkpoint under the standby", |m| {
                is_full_checkpoint(m, args.accounts as usize) && m.epoch > epoch.epoch
            })
            .await?;
        failover_time = killed.elapsed();
        println!(
            "failover: epoch {} took over and committed checkpoint {} {:?} after the kill",
            taken.epoch, taken.id, failover_time
        );
        // A new standby, as an operator would start.
        let name = "coordinator-c";
        let standby = spawn(name, &args, &coordinator_args(), &tx)?;
        let line = wait_line(&mut lines, name, "coordinator at ", phase).await?;
        addrs.push(line.trim_start_matches("coordinator at ").to_owned());
        coordinators.push(standby);
    }

    // Phase 3: run to the end, then one last checkpoint of everything.
    let remaining = run_for
        .saturating_sub(started.elapsed())
        .max(run_for.mul_f64(0.2));
    tokio::time::sleep(remaining).await;
    // The depositor stops and waits for its last acknowledgements; then a line must hold
    // every deposit in the log (and each once: the invariant).
    depositor.stdin = None;
    let said = wait_line(&mut lines, "depositor", "deposited ", phase).await?;
    let acknowledged: u64 = said.trim_start_matches("deposited ").parse()?;
    let log = IngressLog::verify(&store, DEPOSITS_LOG).await?;
    if !log.damaged.is_empty() || log.end - deposits_before != acknowledged {
        eprintln!(
            "INVARIANT BROKEN: the depositor had {acknowledged} deposits acknowledged, the ingress log holds {} new ones (damage: {:?})",
            log.end - deposits_before,
            log.damaged
        );
        audit.ok = false;
    }
    let mut last_seen = audit.checked.keys().last().copied().unwrap_or_default();
    let deadline = Instant::now() + phase;
    loop {
        let last = audit
            .until(phase, "a last checkpoint", |m| {
                is_full_checkpoint(m, args.accounts as usize) && m.id > last_seen
            })
            .await?;
        if deposits_sent(&store, &last).await? >= log.end {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "no line held all {} deposits of the ingress log within {phase:?}",
                log.end
            );
        }
        last_seen = last.id;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), depositor.child.wait()).await;
    let status = leader_status(&addrs).await;
    // The coordinators stop first: nodes leaving a running leader would be a node failure,
    // with a recovery and a fence at the end of every run.
    for c in &mut coordinators {
        c.stdin = None;
    }
    for c in &mut coordinators {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.child.wait()).await;
        if c.pid().is_some() {
            c.kill().await;
        }
    }
    // Each node says how long its accounts were paused, as it exits (in any order).
    for n in &mut nodes {
        n.stdin = None;
    }
    let mut pauses = Vec::new();
    let mut silent: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !silent.is_empty() {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some((name, line))) if line.starts_with("pauses ") && silent.remove(&name) => {
                let v: Vec<u128> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [count, p50, p99, max] = v[..] {
                    pauses.push((name, count, p50, p99, max));
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    pauses.sort();
    for p in &mut nodes {
        let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
        if p.pid().is_some() {
            p.kill().await;
        }
    }
    audit.look().await?;

    // The recovery line is what a restart would restore: it must hold all the money too.
    let line = store.recovery_line().await?.context("no recovery line")?;
    let money = line_money(&store, &line.manifest).await?;
    let deposited = deposits_sent(&store, &line.manifest).await?;
    if money.total() != total + deposited as i64
        || deposited != log.end
        || accounts_in(&line.manifest) != args.accounts as usize
    {
        eprintln!(
            "INVARIANT BROKEN in the recovery line {}: {money:?}",
            line.manifest.id
        );
        audit.ok = false;
    }

    let ours: Vec<&CheckpointId> = audit
        .checked
        .keys()
        .filter(|id| !before.contains(id))
        .collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &ours {
        let m = store.read_manifest(**id).await?;
        *kinds
            .entry(match m.kind {
                ManifestKind::Checkpoint => "checkpoints",
                ManifestKind::Fence => "fences",
                _ => "others",
            })
            .or_default() += 1;
    }
    println!(
        "checkpoints: {} committed ({} fences: recovery and failover), {} aborted by the last leader",
        kinds.get("checkpoints").copied().unwrap_or(0),
        kinds.get("fences").copied().unwrap_or(0),
        status
            .as_ref()
            .map_or("?".into(), |s| s.aborted.to_string()),
    );
    for (name, count, p50, p99, max) in &pauses {
        println!(
            "pause on {name}: p50 {:?}, p99 {:?}, max {:?} over {count} captures",
            Duration::from_nanos(*p50 as u64),
            Duration::from_nanos(*p99 as u64),
            Duration::from_nanos(*max as u64),
        );
    }
    println!(
        "recovery after the node kill: {recovery_time:?}; coordinator failover (kill to next checkpoint): {failover_time:?} with a {lease:?} lease"
    );
    println!(
        "deposits: {acknowledged} acknowledged to the depositor process through the ingress; the recovery line holds each exactly once ({} in its log, {deposited} sent by its source)",
        log.end
    );
    println!(
        "invariant checked in {} committed checkpoints (recovery line {}): {}",
        audit.checked.len(),
        line.manifest.id,
        if audit.ok { "OK" } else { "BROKEN" }
    );
    println!(
        "checkpoints are in {store}; look with `cargo run -- list --store {}` (took {:?})",
        args.store,
        started.elapsed()
    );
    Ok(audit.ok)
}
