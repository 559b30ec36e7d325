//! The whole service in one deterministic process, on turmoil's simulated network and clock.
//!
//! The world: [`COORDINATORS`] coordinators, each the production [`Service`] driven by
//! [`Leadership`] as `cohort serve` wires them; [`NODES`] production [`Node`]s hosting the
//! bank's accounts, which pay each other across nodes; one in-memory object store that every
//! process reaches through its own [`FaultyStore`] (latency, failures and pauses are per
//! process). Every process runs on its own turmoil host (its own tokio runtime with simulated
//! time), and they talk over turmoil's TCP through the wire crate's [`Network`] hook. A
//! checker host reads the store (never through a fault) and checks the invariants every
//! [`CHECK_EVERY`].
//!
//! One seed drives everything: turmoil's own randomness (message latencies, the order hosts
//! run in), every process's [`Clock`], the store latencies and the fault schedule. A run of a
//! seed is a function of the seed: [`run`] returns its [`Trace`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort::checkpoint::object_store::memory::InMemory;
use cohort::checkpoint::object_store::path::Path;
use cohort::checkpoint::{
    CheckpointStore, InTransitEntry, ManifestKind, ObjectEntry, StoreOptions,
};
use cohort::coordinator::node::{Node, NodeSettings};
use cohort::coordinator::service::leadership::{self, Leadership, LeadershipConfig, Transition};
use cohort::coordinator::service::{STATE_TABLE_KEY, Service, ServiceConfig, StateTable};
use cohort::wire::{
    AcceptFuture, BindFuture, BoxAcceptor, BoxStream, ConnectFuture, Connector, DynAccept, Network,
    Secret,
};
use cohort::{CheckpointId, Clock, ObjectId};
use cohort_checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::bank::{Account, BankMsg, account_id, line_money};

/// Coordinators (`coord1`...): one leads, the others stand by.
pub(crate) const COORDINATORS: usize = 3;
/// Nodes (`node1`...).
pub(crate) const NODES: usize = 3;
/// Accounts, spread over the nodes round-robin.
pub(crate) const ACCOUNTS: u64 = 6;
/// What every account starts with.
pub(crate) const BALANCE: i64 = 1_000;
/// The coordinators' lease.
pub(crate) const LEASE: Duration = Duration::from_millis(600);
/// Faults start this long into the run...
pub(crate) const FAULTS_FROM: Duration = Duration::from_millis(400);
/// ...and stop here: every link is repaired, every process restarted and every store healed.
pub(crate) const FAULTS_UNTIL: Duration = Duration::from_millis(3_400);
/// After the faults stop, a checkpoint of every account must commit within this long.
pub(crate) const LIVENESS_BOUND: Duration = Duration::from_secs(8);
/// The checker reads the store this often.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(50);

const PORT: u16 = 7411;
const PEER_PORT: u16 = 7500;
const HOLDER_KEY: &str = "sim.holder";
/// The wall clock's start, Unix ms (any fixed value: only the order of time matters).
const WALL_START_MS: u64 = 1_800_000_000_000;

/// What a run did, in order: the faults applied and the manifests committed. Two runs of one
/// seed give the same trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Trace {
    /// One line per fault, with its simulated time.
    pub(crate) faults: Vec<String>,
    /// One line per committed manifest, by id: epoch, kind, the coordinator that wrote it.
    pub(crate) manifests: Vec<String>,
    /// Simulated time at the end of the run.
    pub(crate) elapsed: Duration,
}

/// Knobs for a deliberate departure from the default world.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    /// No faults at all: the run only has to commit.
    pub(crate) calm: bool,
    /// Self-healing: every node registers the account type, so a dead node's accounts move
    /// to the survivors, and a node that comes back takes a share again at a commit.
    pub(crate) heal: bool,
}

/// Runs one seed; `Err` names the invariant broken (with the trace so far).
pub(crate) fn run(seed: u64, options: Options) -> Result<Trace, String> {
    let memory = Arc::new(InMemory::new());
    let token = Secret::new(format!("cohort-simulation-token-{seed:016x}").into_bytes())
        .map_err(|e| e.to_string())?;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(FAULTS_UNTIL + LIVENESS_BOUND + Duration::from_secs(2))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(4))
        .enable_random_order()
        .build();

    let mut hosts = Vec::new();
    let mut stores = BTreeMap::new();
    let leader: Arc<Mutex<Option<String>>> = Arc::default();
    let slow = Arc::new(AtomicU64::new(0));
    let coordinators: Vec<String> = (1..=COORDINATORS)
        .map(|i| format!("coord{i}:{PORT}"))
        .collect();

    for i in 1..=COORDINATORS {
        let name = format!("coord{i}");
        let faulty = process_store(&memory, seed, &name, &slow);
        stores.insert(name.clone(), faulty.clone());
        hosts.push(name.clone());
        let token = token.clone();
        let leader = Arc::clone(&leader);
        let starts = Arc::new(AtomicU64::new(0));
        let host = name.clone();
        sim.host(host.as_str(), move || {
            let start = starts.fetch_add(1, Ordering::SeqCst);
            coordinator(
                name.clone(),
                start,
                seed,
                faulty.clone(),
                token.clone(),
                Arc::clone(&leader),
            )
        });
    }
    for i in 1..=NODES {
        let name = format!("node{i}");
        let faulty = process_store(&memory, seed, &name, &slow);
        stores.insert(name.clone(), faulty.clone());
        hosts.push(name.clone());
        let token = token.clone();
        let coordinators = coordinators.clone();
        let host = name.clone();
        let heal = options.heal;
        sim.host(host.as_str(), move || {
            node(
                name.clone(),
                i,
                seed,
                heal,
                faulty.clone(),
                token.clone(),
                coordinators.clone(),
            )
        });
    }

    let trace = Arc::new(Mutex::new(Trace::default()));
    {
        let memory = Arc::clone(&memory);
        let trace = Arc::clone(&trace);
        sim.client("checker", async move {
            check_run(memory, trace).await.map_err(Into::into)
        });
    }

    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED_FA17);
    let mut schedule = if options.calm {
        Vec::new()
    } else {
        schedule(&mut rng, &hosts)
    };
    schedule.sort_by_key(|(at, _)| *at);
    let mut schedule = std::collections::VecDeque::from(schedule);
    let mut world = World {
        hosts,
        stores,
        leader,
        slow,
        crashed: Vec::new(),
        paused: None,
    };
    let mut healed = false;
    loop {
        let done = sim.step();
        let now = sim.elapsed();
        let outcome = match done {
            Ok(true) => break,
            Ok(false) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            let trace = lock(&trace).clone();
            return Err(format!("{e}\n{}", render(&trace)));
        }
        while schedule.front().is_some_and(|(at, _)| *at <= now) {
            let (_, action) = schedule.pop_front().expect("checked above");
            if let Some(line) = world.apply(&mut sim, action) {
                lock(&trace)
                    .faults
                    .push(format!("{:>5} ms {line}", now.as_millis()));
            }
        }
        if !healed && now >= FAULTS_UNTIL {
            healed = true;
            schedule.clear();
            world.heal(&mut sim);
            lock(&trace)
                .faults
                .push(format!("{:>5} ms heal everything", now.as_millis()));
        }
    }
    let mut trace = lock(&trace).clone();
    trace.elapsed = sim.elapsed();
    Ok(trace)
}

/// Renders a trace for a failure report.
pub(crate) fn render(trace: &Trace) -> String {
    let mut out = String::from("faults:\n");
    for f in &trace.faults {
        let _ = writeln!(out, "  {f}");
    }
    out.push_str("committed manifests:\n");
    for m in &trace.manifests {
        let _ = writeln!(out, "  {m}");
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The store as one process sees it: the shared memory behind its own faults, latency and
/// pauses. Latency is drawn from the process's own seeded stream; `slow` (ms) raises its
/// ceiling during slow-store faults.
fn process_store(
    memory: &Arc<InMemory>,
    seed: u64,
    name: &str,
    slow: &Arc<AtomicU64>,
) -> FaultyStore {
    let faulty = FaultyStore::new(Arc::clone(memory) as _);
    let salt = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(131) ^ u64::from(b));
    let rng = Mutex::new(SmallRng::seed_from_u64(seed ^ salt));
    let slow = Arc::clone(slow);
    faulty.set_latency(Some(Arc::new(move |_op| {
        let ceiling = 3 + slow.load(Ordering::SeqCst);
        Duration::from_millis(lock(&rng).random_range(0..=ceiling))
    })));
    faulty
}

fn checkpoint_store(faulty: &FaultyStore) -> CheckpointStore {
    CheckpointStore::from_object_store(
        Arc::new(faulty.clone()),
        Path::default(),
        StoreOptions::default(),
    )
    // It models S3: its injected failures are connection trouble, retried like S3's.
    .as_remote()
}

/// The simulated network under the production transport: turmoil's TCP.
#[derive(Debug)]
struct SimNetwork;

struct SimListener(turmoil::net::TcpListener);

impl Connector for SimNetwork {
    fn connect<'a>(&'a self, addr: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

impl Network for SimNetwork {
    fn bind(&self, addr: SocketAddr) -> BindFuture<'_> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(BoxAcceptor::new(SimListener(listener)))
        })
    }
}

impl DynAccept for SimListener {
    fn accept_boxed(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (stream, addr) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxStream, addr))
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// One coordinator process, as `cohort serve` runs it: the service, leadership, the driver.
async fn coordinator(
    name: String,
    start: u64,
    seed: u64,
    faulty: FaultyStore,
    token: Secret,
    leader: Arc<Mutex<Option<String>>>,
) -> turmoil::Result {
    let store = checkpoint_store(&faulty);
    let salt = name
        .bytes()
        .fold(start, |h, b| h.wrapping_mul(131) ^ u64::from(b));
    let clock = Clock::seeded(seed ^ salt, WALL_START_MS);
    let holder = format!("{name}-{start}");
    let mut config = ServiceConfig::new(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)));
    config.listen.token = Some(token);
    config.interval = Some(Duration::from_millis(150));
    config.timeout = Duration::from_secs(1);
    config.heartbeat_interval = Duration::from_millis(50);
    config.heartbeat_timeout = Duration::from_millis(300);
    config.lead_at_start = false;
    config.holder.clone_from(&holder);
    config.clock = clock.clone();
    config.network = Arc::new(SimNetwork);
    let tag = holder.clone().into_bytes();
    config.metadata = Some(Arc::new(move |_| {
        BTreeMap::from([(HOLDER_KEY.to_owned(), tag.clone())])
    }));
    let service = Service::start(store.clone(), config).await?;
    let mut leadership_config =
        LeadershipConfig::with_clock(LEASE, Some(format!("{name}:{PORT}")), clock)?;
    leadership_config.holder = holder;
    let leadership = Leadership::spawn(store, leadership_config);
    let me = name.clone();
    leadership::drive(service, leadership, CancellationToken::new(), move |t| {
        let mut leader = lock(&leader);
        match t {
            Transition::Leading { .. } => *leader = Some(me.clone()),
            Transition::SteppedDown { .. }
            | Transition::LeadFailed { .. }
            | Transition::Following { .. }
            | Transition::Fenced { .. }
                if leader.as_deref() == Some(me.as_str()) =>
            {
                *leader = None;
            }
            _ => {}
        }
    })
    .await?;
    Ok(())
}

/// One node process: its accounts, and inputs (ticks) to them once every account is placed.
async fn node(
    name: String,
    index: usize,
    seed: u64,
    heal: bool,
    faulty: FaultyStore,
    token: Secret,
    coordinators: Vec<String>,
) -> turmoil::Result {
    let mut settings = NodeSettings::default();
    settings.heartbeat_interval = Duration::from_millis(50);
    settings.heartbeat_timeout = Duration::from_millis(300);
    settings.min_backoff = Duration::from_millis(20);
    settings.max_backoff = Duration::from_millis(200);
    let node = Node::builder(checkpoint_store(&faulty))
        .name(name.clone())
        .coordinators(coordinators)
        .listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PEER_PORT)))
        .advertise(format!("{name}:{PEER_PORT}"))
        .token(token)
        .settings(settings)
        .network(Arc::new(SimNetwork));
    // A created account is restored from the line at once, so only its index matters.
    let node = if heal {
        node.host_type(move |id: &ObjectId| {
            let i = id
                .as_str()
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Account::new(i, ACCOUNTS, 0, seed)
        })
    } else {
        node
    };
    let node = node.build().await?;
    let mut mine = Vec::new();
    for i in (0..ACCOUNTS).filter(|i| (*i as usize) % NODES == index - 1) {
        mine.push(node.spawn(account_id(i), Account::new(i, ACCOUNTS, BALANCE, seed))?);
    }
    // Inputs start once every account is placed, so that a transfer always has a recipient
    // (and lines before that hold no transfers).
    while (0..ACCOUNTS).any(|i| node.address::<BankMsg>(&account_id(i)).is_err()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut next = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A held or restoring account queues its inputs; a full queue is not a failure here.
        let _ = mine[next % mine.len()].tell(BankMsg::Tick { count: 2 });
        next += 1;
    }
}

/// What the checker knows of a committed manifest.
struct Seen {
    epoch: u64,
    kind: ManifestKind,
    holder: String,
    accounts: usize,
    /// What the manifest points at: its objects' states and its in-transit messages.
    line: (BTreeMap<ObjectId, ObjectEntry>, Vec<InTransitEntry>),
}

/// Checks the invariants every [`CHECK_EVERY`] until the faults stop, then waits (checking)
/// for a checkpoint of every account newer than everything committed so far.
async fn check_run(memory: Arc<InMemory>, trace: Arc<Mutex<Trace>>) -> Result<(), String> {
    let store =
        CheckpointStore::from_object_store(memory, Path::default(), StoreOptions::default());
    let mut seen: BTreeMap<CheckpointId, Seen> = BTreeMap::new();
    let mut holders: BTreeMap<u64, String> = BTreeMap::new();
    let mut full_from: Option<CheckpointId> = None;
    let start = tokio::time::Instant::now();
    let quiet = start + FAULTS_UNTIL;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        check(&store, &mut seen, &mut holders, &mut full_from, &trace).await?;
        if tokio::time::Instant::now() >= quiet {
            break;
        }
    }
    let mark = seen
        .keys()
        .next_back()
        .copied()
        .unwrap_or(CheckpointId::ZERO);
    let deadline = tokio::time::Instant::now() + LIVENESS_BOUND;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        check(&store, &mut seen, &mut holders, &mut full_from, &trace).await?;
        let committed = seen
            .range(mark.next()..)
            .any(|(_, s)| s.kind == ManifestKind::Checkpoint && s.accounts == ACCOUNTS as usize);
        if committed {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "liveness: no checkpoint of all {ACCOUNTS} accounts committed within {LIVENESS_BOUND:?} after the faults stopped (newest manifest then: {mark})"
            ));
        }
    }
}

/// One pass over the store: every manifest not seen yet is read and checked, and the
/// invariants over all of them are checked again.
async fn check(
    store: &CheckpointStore,
    seen: &mut BTreeMap<CheckpointId, Seen>,
    holders: &mut BTreeMap<u64, String>,
    full_from: &mut Option<CheckpointId>,
    trace: &Mutex<Trace>,
) -> Result<(), String> {
    let store_error =
        |e: cohort::checkpoint::Error| format!("the checker cannot read the store: {e}");
    if let Some(record) = store.newest_epoch().await.map_err(store_error)? {
        match holders.get(&record.epoch) {
            Some(h) if *h != record.holder => {
                return Err(format!(
                    "epoch {} is recorded as held by {} and by {}",
                    record.epoch, h, record.holder
                ));
            }
            Some(_) => {}
            None => {
                holders.insert(record.epoch, record.holder);
            }
        }
    }
    let ids = store.committed_ids().await.map_err(store_error)?;
    // Ids are contiguous from the first, and nothing committed ever disappears (no GC here).
    for (n, id) in ids.iter().enumerate() {
        let expected = (0..=n).fold(CheckpointId::ZERO, |id, _| id.next());
        if *id != expected {
            return Err(format!(
                "manifest ids are not contiguous: {id} where {expected} was due ({ids:?})"
            ));
        }
    }
    if let Some((gone, _)) = seen.iter().find(|(id, _)| !ids.contains(id)) {
        return Err(format!("committed manifest {gone} disappeared"));
    }
    let new: Vec<CheckpointId> = ids
        .iter()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    for id in &new {
        let manifest = store
            .read_manifest(*id)
            .await
            .map_err(|e| format!("committed manifest {id} cannot be read: {e}"))?;
        let money = line_money(store, &manifest)
            .await
            .map_err(|e| format!("committed line {id} cannot be read: {e}"))?;
        let holder = manifest
            .metadata
            .get(HOLDER_KEY)
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let entry = Seen {
            epoch: manifest.epoch,
            kind: manifest.kind,
            holder,
            accounts: money.accounts,
            line: (manifest.objects.clone(), manifest.in_transit.clone()),
        };
        let mut balances = String::new();
        let table = manifest
            .metadata
            .get(STATE_TABLE_KEY)
            .and_then(|b| StateTable::decode(b).ok())
            .unwrap_or_default();
        if let Ok(states) = store.read_states(&manifest).await {
            for (object, state) in states {
                if let Ok(account) = state.decode::<super::bank::AccountState>() {
                    let segment = manifest
                        .objects
                        .get(&object)
                        .map(|e| {
                            e.location
                                .segment
                                .rsplit('/')
                                .next()
                                .unwrap_or("")
                                .to_owned()
                        })
                        .unwrap_or_default();
                    let node = table.placement.get(&object).map_or("?", String::as_str);
                    let _ = write!(
                        balances,
                        " {object}={}@g{}[{segment}]on:{node}",
                        account.balance, account.generation
                    );
                }
            }
        }
        lock(trace).manifests.push(format!(
            "{id}: epoch {} {:?} by {} ({} accounts, {} in transit){balances}",
            entry.epoch,
            entry.kind,
            if entry.kind == ManifestKind::Fence {
                "a new leader"
            } else {
                entry.holder.as_str()
            },
            money.accounts,
            money.messages
        ));
        // Money is conserved by every committed line.
        let expected = BALANCE * i64::try_from(money.accounts).unwrap_or(i64::MAX);
        if money.total() != expected {
            return Err(format!(
                "money not conserved in committed line {id}: {} in {} accounts + {} in {} transfers in transit = {}, not {expected}",
                money.balances,
                money.accounts,
                money.in_transit,
                money.messages,
                money.total()
            ));
        }
        // Once every account is in a line, every later line holds every account.
        if money.accounts == ACCOUNTS as usize {
            full_from.get_or_insert(*id);
        } else if full_from.is_some_and(|f| f < *id) {
            return Err(format!(
                "committed line {id} holds {} accounts, after line {} held all {ACCOUNTS}",
                money.accounts,
                full_from.expect("checked")
            ));
        }
        seen.insert(*id, entry);
    }
    let mut previous: Option<(&CheckpointId, &Seen)> = None;
    let mut writers: BTreeMap<u64, &str> = BTreeMap::new();
    for (id, s) in seen.iter() {
        if let Some((pid, p)) = previous {
            // Epochs never go down along the ids.
            if s.epoch < p.epoch {
                return Err(format!(
                    "epochs go down: manifest {id} of epoch {} follows {pid} of epoch {}",
                    s.epoch, p.epoch
                ));
            }
            // A fence points at the recovery line: the newest line committed before it.
            if s.kind == ManifestKind::Fence && s.line != p.line {
                return Err(format!(
                    "fence {id} (epoch {}) points behind committed manifest {pid} (epoch {}, {:?})",
                    s.epoch, p.epoch, p.kind
                ));
            }
        }
        // At most one leader commits per epoch, and it is the epoch's holder.
        if s.kind == ManifestKind::Checkpoint {
            match writers.get(&s.epoch) {
                Some(w) if *w != s.holder => {
                    return Err(format!(
                        "two leaders committed under epoch {}: {w} and {} (manifest {id})",
                        s.epoch, s.holder
                    ));
                }
                Some(_) => {}
                None => {
                    writers.insert(s.epoch, &s.holder);
                }
            }
            if let Some(h) = holders.get(&s.epoch)
                && *h != s.holder
            {
                return Err(format!(
                    "manifest {id} of epoch {} was committed by {}, but {h} holds the epoch",
                    s.epoch, s.holder
                ));
            }
        }
        previous = Some((id, s));
    }
    Ok(())
}

/// A fault, or the end of one.
#[derive(Clone, Debug)]
enum Action {
    Partition(String, String),
    Repair(String, String),
    Crash(String),
    Restart(String),
    /// Crash and start again at once.
    Bounce(String),
    /// Pause the leader (or `fallback` when none leads): its links held, its store calls held.
    Pause {
        fallback: String,
    },
    Resume,
    StoreFaults {
        host: String,
        rule: StoreRule,
    },
    SlowStore(u64),
}

#[derive(Clone, Debug)]
struct StoreRule {
    ops: Vec<Op>,
    nth: usize,
    times: usize,
    after_write: bool,
}

/// A random composition of faults over [`FAULTS_FROM`]..[`FAULTS_UNTIL`].
fn schedule(rng: &mut SmallRng, hosts: &[String]) -> Vec<(Duration, Action)> {
    let mut out = Vec::new();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut at = ms(FAULTS_FROM) + rng.random_range(0..300);
    let until = ms(FAULTS_UNTIL);
    let pick = |rng: &mut SmallRng| hosts[rng.random_range(0..hosts.len())].clone();
    let coordinator = |rng: &mut SmallRng| format!("coord{}", rng.random_range(1..=COORDINATORS));
    while at < until {
        let lasting = rng.random_range(100..1_200);
        let end = Duration::from_millis(at + lasting);
        let now = Duration::from_millis(at);
        match rng.random_range(0..100) {
            0..25 => {
                let a = pick(rng);
                let b = pick(rng);
                if a != b {
                    out.push((now, Action::Partition(a.clone(), b.clone())));
                    out.push((end, Action::Repair(a, b)));
                }
            }
            25..40 => {
                let host = pick(rng);
                out.push((now, Action::Crash(host.clone())));
                out.push((end, Action::Restart(host)));
            }
            40..50 => out.push((now, Action::Bounce(pick(rng)))),
            50..65 => {
                let pause = Duration::from_millis(rng.random_range(ms(LEASE)..ms(LEASE) * 3));
                out.push((
                    now,
                    Action::Pause {
                        fallback: coordinator(rng),
                    },
                ));
                out.push((now + pause, Action::Resume));
            }
            65..85 => {
                let all = [Op::Put, Op::PutCreate, Op::Get, Op::List, Op::Head];
                let ops: Vec<Op> = all
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                if !ops.is_empty() {
                    let rule = StoreRule {
                        ops,
                        nth: rng.random_range(1..20),
                        times: rng.random_range(1..6),
                        after_write: rng.random_bool(0.4),
                    };
                    out.push((
                        now,
                        Action::StoreFaults {
                            host: pick(rng),
                            rule,
                        },
                    ));
                }
            }
            _ => {
                out.push((now, Action::SlowStore(rng.random_range(20..400))));
                out.push((end, Action::SlowStore(0)));
            }
        }
        at += rng.random_range(50..500);
    }
    out
}

/// The fault state of the world, so that faults compose and all end at [`FAULTS_UNTIL`].
struct World {
    hosts: Vec<String>,
    stores: BTreeMap<String, FaultyStore>,
    leader: Arc<Mutex<Option<String>>>,
    slow: Arc<AtomicU64>,
    crashed: Vec<String>,
    paused: Option<String>,
}

impl World {
    /// Applies `action`; returns what happened, for the trace (`None`: nothing to do).
    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, action: Action) -> Option<String> {
        match action {
            Action::Partition(a, b) => {
                sim.partition(a.as_str(), b.as_str());
                Some(format!("partition {a} | {b}"))
            }
            Action::Repair(a, b) => {
                if self.paused.as_ref().is_some_and(|p| *p == a || *p == b) {
                    return None;
                }
                sim.repair(a.as_str(), b.as_str());
                Some(format!("repair {a} | {b}"))
            }
            Action::Crash(host) => {
                if self.crashed.contains(&host) || self.paused.as_ref() == Some(&host) {
                    return None;
                }
                sim.crash(host.as_str());
                self.crashed.push(host.clone());
                Some(format!("crash {host}"))
            }
            Action::Restart(host) => {
                if !self.crashed.contains(&host) {
                    return None;
                }
                self.crashed.retain(|h| *h != host);
                sim.bounce(host.as_str());
                Some(format!("restart {host}"))
            }
            Action::Bounce(host) => {
                if self.crashed.contains(&host) || self.paused.as_ref() == Some(&host) {
                    return None;
                }
                sim.bounce(host.as_str());
                Some(format!("crash and restart {host}"))
            }
            Action::Pause { fallback } => {
                if self.paused.is_some() {
                    return None;
                }
                let leader = lock(&self.leader).clone();
                let target = leader.clone().unwrap_or(fallback);
                if self.crashed.contains(&target) {
                    return None;
                }
                for other in self.hosts.iter().filter(|h| **h != target) {
                    sim.hold(target.as_str(), other.as_str());
                }
                self.stores[&target].pause();
                self.paused = Some(target.clone());
                Some(format!(
                    "pause {target}{}",
                    if leader.is_some() {
                        " (the leader)"
                    } else {
                        ""
                    }
                ))
            }
            Action::Resume => {
                let target = self.paused.take()?;
                for other in self.hosts.iter().filter(|h| **h != target) {
                    sim.release(target.as_str(), other.as_str());
                }
                self.stores[&target].resume();
                Some(format!("resume {target}"))
            }
            Action::StoreFaults { host, rule } => {
                let mut fault = FaultRule::on(rule.ops[0]);
                for op in &rule.ops[1..] {
                    fault = fault.or(*op);
                }
                let kind = if rule.after_write {
                    Fault::ErrorAfterWrite
                } else {
                    Fault::Error
                };
                self.stores[&host].inject(fault.nth(rule.nth).times(rule.times).fault(kind));
                Some(format!(
                    "store faults for {host}: {:?} from call {} on, {} times, {kind:?}",
                    rule.ops, rule.nth, rule.times
                ))
            }
            Action::SlowStore(ms) => {
                self.slow.store(ms, Ordering::SeqCst);
                Some(format!("store latency up to {ms} ms"))
            }
        }
    }

    /// Ends every fault: links released and repaired, stores healed, crashed hosts restarted.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        for (i, a) in self.hosts.iter().enumerate() {
            for b in &self.hosts[i + 1..] {
                sim.release(a.as_str(), b.as_str());
                sim.repair(a.as_str(), b.as_str());
            }
        }
        self.paused = None;
        for store in self.stores.values() {
            store.resume();
            store.clear();
        }
        self.slow.store(0, Ordering::SeqCst);
        for host in std::mem::take(&mut self.crashed) {
            sim.bounce(host.as_str());
        }
    }
}
