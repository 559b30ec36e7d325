//! Operating a running cluster: real `cohort serve` processes (a leader and a standby on one
//! store) and bank node processes (this test binary, re-executed in `bank_node_role`) on
//! loopback.
//!
//! - Retention: `cohort serve --keep 5` over 50 checkpoints leaves the newest 5 and the pinned
//!   one (and the full manifests kept deltas are stored against); `cohort verify` passes, and a
//!   takeover after SIGKILL of the leader recovers from what is left.
//! - A live rollback: `cohort rollback --to ID --live` while the cluster runs fences the
//!   coordinators, one takes over from the rollback, every node restores ID's states, and the
//!   command reports who took over and which nodes restored. Every account then holds its
//!   state at ID and money is conserved.
//! - Advertised addresses: `cohort serve --listen 0.0.0.0:P --advertise HOST:P` records HOST:P
//!   in its epoch record and `cohort status` reports it; a node on every interface registers
//!   the address it advertises; neither starts on a wildcard without one.
//!
//! Synchronisation is by bounded polling of what the processes print and the store holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

mod ha_support;

#[path = "support/bank.rs"]
#[allow(dead_code)]
mod bank;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::Duration;

use bank::{Account, AccountState, BankMsg, account_id, line_money};
use cohort::CheckpointId;
use cohort::ObjectId;
use cohort::checkpoint::{CheckpointStore, Manifest, ManifestKind};
use cohort::coordinator::node::Node;
use ha_support::{Proc, address_in, cohort_bin, poll, quick_node_settings, store_dir};

const NODE_ENV: &str = "COHORT_HA_BANK_NODE";
const BALANCE: i64 = 1_000;
const SEED: u64 = 7;

/// Not a test of its own: the body of a bank node process when `COHORT_HA_BANK_NODE` is
/// `index|nodes|accounts|store|coordinator,coordinator|quiet-marker`. It hosts the accounts
/// `i % nodes == index`, and ticks them (each tick: a transfer to a random account) every 5 ms
/// once every account is placed, except while the quiet marker exists. Runs until killed (two
/// minutes at most).
#[test]
fn bank_node_role() {
    let Ok(spec) = std::env::var(NODE_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let index: u64 = parts[0].parse().unwrap();
    let nodes: u64 = parts[1].parse().unwrap();
    let accounts: u64 = parts[2].parse().unwrap();
    let url = parts[3].to_owned();
    let coordinators: Vec<String> = parts[4].split(',').map(str::to_owned).collect();
    let quiet = std::path::PathBuf::from(parts[5]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&url, Default::default())
            .await
            .unwrap();
        let settings = quick_node_settings();
        let node = Node::builder(store)
            .name(format!("node-{index}"))
            .coordinators(coordinators)
            .settings(settings)
            // Accounts may move here (a drain, a dead node): restored from the line at once.
            .host_type(move |id: &cohort::ObjectId| {
                let i = id
                    .as_str()
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Account::new(i, accounts, 0, SEED)
            })
            .build()
            .await
            .unwrap();
        let mine: Vec<_> = (index..accounts)
            .step_by(nodes as usize)
            .map(|i| {
                node.spawn(account_id(i), Account::new(i, accounts, BALANCE, SEED))
                    .unwrap()
            })
            .collect();
        println!("node node-{index} started");
        // An account resolves the others through the placement: no tick before it is whole.
        let placed = tokio::time::Instant::now() + Duration::from_secs(30);
        while !(0..accounts).all(|i| node.address::<BankMsg>(&account_id(i)).is_ok()) {
            assert!(tokio::time::Instant::now() < placed, "never placed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("node node-{index} ticking");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while tokio::time::Instant::now() < deadline {
            tick.tick().await;
            if quiet.exists() {
                continue;
            }
            for account in &mine {
                // A held (restoring) account queues its inputs; a restore drops them.
                let _ = account.tell(BankMsg::Tick { count: 1 });
            }
        }
    });
}

/// A bank cluster: `cohort serve` processes and bank node processes on one store.
struct Bank {
    _dir: tempfile::TempDir,
    url: String,
    quiet: std::path::PathBuf,
    accounts: u64,
    serves: Vec<(Proc, String)>,
    nodes: Vec<Proc>,
}

impl Bank {
    fn new(accounts: u64) -> Self {
        let (dir, url) = store_dir();
        let quiet = dir.path().join("quiet");
        Self {
            _dir: dir,
            url,
            quiet,
            accounts,
            serves: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// Starts a `cohort serve` (lease 1 s) with `extra` arguments; returns its index.
    fn serve(&mut self, extra: &[&str]) -> usize {
        let name = format!("serve-{}", self.serves.len());
        let mut cmd = Command::new(cohort_bin());
        cmd.args([
            "serve",
            "--store",
            &self.url,
            "--listen",
            "127.0.0.1:0",
            "--lease",
            "1s",
            "--heartbeat",
            "100ms",
            "--heartbeat-timeout",
            "800ms",
        ])
        .args(extra)
        .env("RUST_LOG", "warn");
        let proc = Proc::spawn(&name, cmd);
        let line = proc.wait_for_line("nodes connect to", Duration::from_secs(20));
        let addr = address_in(&line, "nodes connect to ");
        self.serves.push((proc, addr));
        self.serves.len() - 1
    }

    fn addresses(&self) -> Vec<String> {
        self.serves.iter().map(|(_, a)| a.clone()).collect()
    }

    /// Starts `count` bank nodes that know every coordinator started so far.
    fn nodes(&mut self, count: u64) {
        for index in 0..count {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "bank_node_role",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                NODE_ENV,
                format!(
                    "{index}|{count}|{}|{}|{}|{}",
                    self.accounts,
                    self.url,
                    self.addresses().join(","),
                    self.quiet.display()
                ),
            )
            .env("RUST_LOG", "warn");
            self.nodes.push(Proc::spawn(&format!("node-{index}"), cmd));
        }
    }

    fn cohort(&self, args: &[&str]) -> Output {
        Command::new(cohort_bin())
            .args(args)
            .env("RUST_LOG", "")
            .env("NO_COLOR", "1")
            .env("COHORT_STORE", &self.url)
            .env_remove("COHORT_COORDINATOR")
            .env_remove("COHORT_TOKEN")
            .output()
            .unwrap()
    }

    fn store(&self) -> (tokio::runtime::Runtime, CheckpointStore) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt
            .block_on(CheckpointStore::open_read_only(&self.url))
            .unwrap();
        (rt, store)
    }

    fn committed(&self) -> Vec<CheckpointId> {
        let (rt, store) = self.store();
        rt.block_on(store.committed_ids()).unwrap()
    }

    fn manifest(&self, id: CheckpointId) -> Manifest {
        let (rt, store) = self.store();
        rt.block_on(store.read_manifest(id)).unwrap()
    }

    /// Every account's state and the transfers in transit to it, in checkpoint `id`.
    fn accounts_at(&self, id: CheckpointId) -> BTreeMap<ObjectId, (AccountState, i64)> {
        let (rt, store) = self.store();
        rt.block_on(async {
            let m = store.read_manifest(id).await.unwrap();
            let mut out: BTreeMap<ObjectId, (AccountState, i64)> = BTreeMap::new();
            for (object, state) in store.read_states(&m).await.unwrap() {
                out.insert(object, (state.decode().unwrap(), 0));
            }
            for (entry, state) in store.read_in_transit(&m).await.unwrap() {
                if let BankMsg::Transfer { amount } = state.decode().unwrap() {
                    out.get_mut(&entry.to).unwrap().1 += amount;
                }
            }
            out
        })
    }

    /// Asserts that every committed line holding every account holds all the money.
    fn assert_money_conserved(&self) {
        let (rt, store) = self.store();
        let total = BALANCE * self.accounts as i64;
        rt.block_on(async {
            for id in store.committed_ids().await.unwrap() {
                let m = match store.read_manifest(id).await {
                    Ok(m) => m,
                    // Collected by the running leader's retention since it was listed.
                    Err(cohort::checkpoint::Error::NotFound { .. }) => continue,
                    Err(e) => panic!("checkpoint {id}: {e}"),
                };
                if m.objects.len() as u64 != self.accounts {
                    continue; // before every node registered
                }
                let money = match line_money(&store, &m).await {
                    Ok(money) => money,
                    // Its segments went with it, if retention collected it meanwhile.
                    Err(e) if store.read_manifest(id).await.is_err() => {
                        eprintln!("checkpoint {id} collected while it was read: {e:#}");
                        continue;
                    }
                    Err(e) => panic!("checkpoint {id}: {e:#}"),
                };
                assert_eq!(
                    money.total(),
                    total,
                    "checkpoint {id} ({:?}, epoch {}): {money:?}",
                    m.kind,
                    m.epoch
                );
            }
        });
    }

    /// The newest checkpoint of kind checkpoint holding every account, waiting up to `within`.
    fn wait_full_checkpoint(&self, after: CheckpointId, within: Duration) -> Manifest {
        poll(within, || {
            let ids = self.committed();
            ids.iter().rev().filter(|id| **id > after).find_map(|id| {
                let m = self.manifest(*id);
                (m.kind == ManifestKind::Checkpoint && m.objects.len() as u64 == self.accounts)
                    .then_some(m)
            })
        })
        .unwrap_or_else(|| panic!("no checkpoint of every account after {after} within {within:?}"))
    }
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn serve_keeps_the_newest_checkpoints_and_the_pinned_ones() {
    let mut bank = Bank::new(8);
    let keep = ["--keep", "5", "--gc-interval", "100ms"];
    let a = bank.serve(&keep);
    bank.serves[a]
        .0
        .wait_for_line("leading under epoch 1", Duration::from_secs(10));
    bank.serve(&keep);
    bank.serves[1]
        .0
        .wait_for_line("standby: epoch 1", Duration::from_secs(10));
    bank.nodes(2);
    for node in &bank.nodes {
        node.wait_for_line("ticking", Duration::from_secs(20));
    }

    // Checkpoints on demand, so that the count is exact: pin the third, then 50 more.
    let leader = bank.serves[a].1.clone();
    let now = |bank: &Bank| -> CheckpointId {
        let out = ok(&bank.cohort(&["checkpoint", "--now", "--coordinator", &leader]));
        CheckpointId::new(out.trim().parse().unwrap())
    };
    let first = now(&bank);
    assert_eq!(bank.manifest(first).objects.len(), 8);
    now(&bank);
    let pinned = now(&bank);
    let said = ok(&bank.cohort(&["pin", &pinned.to_string()]));
    assert!(
        said.contains(&format!("pinned checkpoint {pinned}")),
        "{said}"
    );
    let mut newest = pinned;
    for _ in 0..50 {
        newest = now(&bank);
    }

    // The trailing collection after the last commit leaves the newest 5, the pin, and the
    // full manifests that kept deltas are stored against.
    let (rt, store) = bank.store();
    let expected = |ids: &[CheckpointId]| -> BTreeSet<CheckpointId> {
        let mut keep: BTreeSet<CheckpointId> = ids.iter().rev().take(5).copied().collect();
        keep.insert(pinned);
        let bases: Vec<CheckpointId> = keep
            .iter()
            .filter_map(|id| rt.block_on(store.manifest_base(*id)).unwrap())
            .collect();
        keep.extend(bases);
        keep
    };
    let settled = poll(Duration::from_secs(10), || {
        let ids = rt.block_on(store.committed_ids()).unwrap();
        (ids.last() == Some(&newest)
            && ids.iter().copied().collect::<BTreeSet<_>>() == expected(&ids))
        .then_some(ids)
    })
    .unwrap_or_else(|| {
        panic!(
            "the store never settled at the newest 5 and the pin: {:?}",
            rt.block_on(store.committed_ids()).unwrap()
        )
    });
    assert!(settled.len() <= 5 + 1 + 6, "{settled:?}");
    assert!(settled.contains(&pinned), "{settled:?}");
    assert_eq!(
        settled.iter().rev().take(5).copied().collect::<Vec<_>>(),
        (newest.get() - 4..=newest.get())
            .rev()
            .map(CheckpointId::new)
            .collect::<Vec<_>>()
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&bank.cohort(&["list", "--json"]))).unwrap();
    let pinned_rows: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["pinned"] == true)
        .map(|row| row["id"].as_u64().unwrap())
        .collect();
    assert_eq!(pinned_rows, vec![pinned.get()]);
    ok(&bank.cohort(&["verify"]));

    // What is left recovers: the standby takes over from the newest line after SIGKILL of the
    // leader, every node restores from it, and checkpoints go on.
    bank.serves[a].0.signal("KILL");
    bank.serves[1]
        .0
        .wait_for_line("leading under epoch 2", Duration::from_secs(10));
    let after = bank.wait_full_checkpoint(newest, Duration::from_secs(20));
    assert_eq!(after.epoch, 2);
    bank.assert_money_conserved();
    ok(&bank.cohort(&["verify"]));
    drop((rt, store));
}

#[test]
fn a_live_rollback_restores_every_account_to_its_state_at_the_target() {
    let mut bank = Bank::new(12);
    let interval = ["--interval", "100ms"];
    bank.serve(&interval);
    bank.serves[0]
        .0
        .wait_for_line("leading under epoch 1", Duration::from_secs(10));
    bank.serve(&interval);
    bank.serves[1]
        .0
        .wait_for_line("standby: epoch 1", Duration::from_secs(10));
    bank.nodes(3);
    for node in &bank.nodes {
        node.wait_for_line("ticking", Duration::from_secs(20));
    }
    // A target where money has moved, then a few more checkpoints past it.
    let start = bank.wait_full_checkpoint(CheckpointId::ZERO, Duration::from_secs(20));
    let target = poll(Duration::from_secs(20), || {
        let m = bank.wait_full_checkpoint(start.id, Duration::from_secs(20));
        let moved = bank
            .accounts_at(m.id)
            .values()
            .filter(|(state, _)| state.balance != BALANCE)
            .count();
        (moved >= 4).then_some(m)
    })
    .expect("money moves between accounts");
    let past = bank.wait_full_checkpoint(
        CheckpointId::new(target.id.get() + 3),
        Duration::from_secs(20),
    );
    let at_target = bank.accounts_at(target.id);
    assert_ne!(
        bank.accounts_at(past.id)
            .iter()
            .map(|(a, (s, _))| (a.clone(), s.rng))
            .collect::<Vec<_>>(),
        at_target
            .iter()
            .map(|(a, (s, _))| (a.clone(), s.rng))
            .collect::<Vec<_>>(),
        "the accounts moved on past the target"
    );

    // No more inputs from now on, so that what the accounts hold after the rollback is the
    // target's states and the transfers in transit at it, nothing new.
    std::fs::write(&bank.quiet, b"").unwrap();
    let out = bank.cohort(&[
        "rollback",
        "--to",
        &target.id.to_string(),
        "--live",
        "--yes",
        "--wait",
        "30s",
    ]);
    let report = ok(&out);
    eprintln!("{report}");
    let line = |prefix: &str| -> String {
        report
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{report}"))
            .to_owned()
    };
    let rolled = line("rolled back: checkpoint ");
    let rollback: u64 = address_in(&rolled, "rolled back: checkpoint ")
        .parse()
        .unwrap();
    let took_over = line("took over: coordinator ");
    let epoch: u64 = address_in(&took_over, "leads under epoch ")
        .parse()
        .unwrap();
    let restored = line("restored: ");
    for n in 0..3 {
        assert!(
            restored.contains(&format!("node-{n} (4 objects)")),
            "{restored}"
        );
    }
    let after: u64 = address_in(&restored, "; checkpoint ").parse().unwrap();
    // The coordinator named took over under the epoch named, after the rollback's.
    let new_leader = bank
        .serves
        .iter()
        .find(|(_, addr)| took_over.contains(&format!(" at {addr} ")))
        .unwrap_or_else(|| panic!("no coordinator of {:?} in {took_over}", bank.addresses()));
    new_leader.0.wait_for_line(
        &format!("leading under epoch {epoch}"),
        Duration::from_secs(1),
    );
    let rollback = bank.manifest(CheckpointId::new(rollback));
    assert_eq!(rollback.kind, ManifestKind::Rollback { to: target.id });
    assert!(epoch > rollback.epoch);

    // Every account holds its state at the target: the same random stream (it moves only on a
    // tick), and its balance plus what is in transit to it are the target's.
    let now = bank.accounts_at(CheckpointId::new(after));
    assert_eq!(now.len(), at_target.len());
    for (account, (state, incoming)) in &at_target {
        let (later, later_incoming) = &now[account];
        assert_eq!(
            later.rng, state.rng,
            "{account} was not restored to the target"
        );
        assert_eq!(
            later.balance + later_incoming,
            state.balance + incoming,
            "{account}: balance + in transit differs from the target's"
        );
    }
    bank.assert_money_conserved();
}

/// `cohort drain NODE --wait`: the node's accounts move to the other node at the checkpoint
/// the command triggers, the command returns once it holds none, and `cohort status` says it
/// is drained. An unknown node is refused with the reason.
#[test]
fn drain_moves_a_nodes_accounts_away_and_says_when_it_can_stop() {
    let mut bank = Bank::new(8);
    let a = bank.serve(&[]);
    bank.serves[a]
        .0
        .wait_for_line("leading under epoch 1", Duration::from_secs(10));
    bank.nodes(2);
    for node in &bank.nodes {
        node.wait_for_line("ticking", Duration::from_secs(20));
    }
    let leader = bank.serves[a].1.clone();
    let out = bank.cohort(&["drain", "node-9", "--coordinator", &leader]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot drain node-9") && err.contains("not a connected node"),
        "{err}"
    );

    let said = ok(&bank.cohort(&["drain", "node-1", "--wait", "--coordinator", &leader]));
    assert!(said.contains("node-1 is draining"), "{said}");
    assert!(
        said.contains("node-1 holds no objects: it can stop"),
        "{said}"
    );
    let status = ok(&bank.cohort(&["status", "--json", "--coordinator", &leader]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    let row = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap().clone();
    assert_eq!(row("node-1")["draining"], true, "{status}");
    assert_eq!(row("node-1")["objects"], 0, "{status}");
    assert_eq!(row("node-0")["objects"], 8, "{status}");
    let text = ok(&bank.cohort(&["status", "--coordinator", &leader]));
    assert!(text.contains("drained (it can stop)"), "{text}");
    // Checkpoints of every account go on, all on node-0.
    let out = ok(&bank.cohort(&["checkpoint", "--now", "--coordinator", &leader]));
    let id = CheckpointId::new(out.trim().parse().unwrap());
    assert_eq!(bank.manifest(id).objects.len(), 8);
}

/// `cohort remove OBJECT --wait`: the account leaves at the checkpoint the command triggers,
/// the command returns once it is no longer placed, and later lines hold the others only,
/// with the same money in each (what it held went with it). An id that is not a member is
/// refused with the reason. Then `cohort recover` rolls the cohort back to its newest line.
#[test]
fn remove_takes_an_account_out_of_a_running_cohort() {
    let mut bank = Bank::new(8);
    let a = bank.serve(&[]);
    bank.serves[a]
        .0
        .wait_for_line("leading under epoch 1", Duration::from_secs(10));
    bank.nodes(2);
    for node in &bank.nodes {
        node.wait_for_line("ticking", Duration::from_secs(20));
    }
    let leader = bank.serves[a].1.clone();
    let out = bank.cohort(&["remove", "account-99", "--coordinator", &leader]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot remove account-99") && err.contains("not a member"),
        "{err}"
    );
    let said = ok(&bank.cohort(&["remove", "account-3", "--wait", "--coordinator", &leader]));
    assert!(
        said.contains("account-3 is removed after checkpoint"),
        "{said}"
    );
    assert!(said.contains("account-3 is no longer placed"), "{said}");
    let status = ok(&bank.cohort(&["status", "--json", "--coordinator", &leader]));
    assert!(!status.contains("account-3"), "{status}");
    // The others go on, past it, and no money appears or vanishes from then on.
    let (rt, store) = bank.store();
    let mut totals = Vec::new();
    for _ in 0..2 {
        let out = ok(&bank.cohort(&["checkpoint", "--now", "--coordinator", &leader]));
        let id = CheckpointId::new(out.trim().parse().unwrap());
        let manifest = bank.manifest(id);
        assert_eq!(manifest.objects.len(), 7, "checkpoint {id}");
        assert!(!manifest.objects.contains_key(&account_id(3)));
        totals.push(rt.block_on(line_money(&store, &manifest)).unwrap().total());
    }
    assert_eq!(
        totals[0], totals[1],
        "money changed between lines without account-3"
    );
    // `cohort recover` rolls the running cohort back to its newest line (it also ends a halt).
    let said = ok(&bank.cohort(&["recover", "--coordinator", &leader]));
    assert!(said.contains("recovered to checkpoint"), "{said}");
    let out = ok(&bank.cohort(&["checkpoint", "--now", "--coordinator", &leader]));
    let id = CheckpointId::new(out.trim().parse().unwrap());
    let manifest = bank.manifest(id);
    assert_eq!(manifest.objects.len(), 7, "checkpoint {id}");
    assert_eq!(
        rt.block_on(line_money(&store, &manifest)).unwrap().total(),
        totals[0]
    );
}

#[test]
fn an_advertised_address_is_recorded_and_reported() {
    const TOKEN: &str = "a long enough shared token";
    let (_dir, url) = store_dir();
    // On every interface, nobody can dial the bound address: refused without --advertise.
    let serve = |extra: &[&str]| {
        let mut cmd = Command::new(cohort_bin());
        cmd.args(["serve", "--store", &url, "--lease", "1s", "--token", TOKEN])
            .args(extra)
            .env("RUST_LOG", "warn");
        cmd
    };
    let out = serve(&["--listen", "0.0.0.0:7411"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0:7411 listens on every interface") && err.contains("--advertise"),
        "{err}"
    );

    // A free port, to listen on every interface and advertise a name for it.
    let port = ha_support::free_port("0.0.0.0");
    let advertised = format!("localhost:{port}");
    let listen = format!("0.0.0.0:{port}");
    let proc = Proc::spawn(
        "serve",
        serve(&["--listen", &listen, "--advertise", &advertised]),
    );
    let line = proc.wait_for_line("nodes connect to", Duration::from_secs(20));
    assert!(
        line.contains(&format!(
            "nodes connect to {advertised} (listening on {listen})"
        )),
        "{line}"
    );
    proc.wait_for_line("leading under epoch 1", Duration::from_secs(10));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(CheckpointStore::open_read_only(&url)).unwrap();
    let record = rt.block_on(store.newest_epoch()).unwrap().unwrap();
    assert_eq!(record.address.as_deref(), Some(advertised.as_str()));

    // The CLI finds the coordinator through the record and reports the advertised address.
    let out = Command::new(cohort_bin())
        .args(["status", "--json", "--store", &url, "--token", TOKEN])
        .env("RUST_LOG", "")
        .env_remove("COHORT_COORDINATOR")
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(status["source"], "coordinator", "{status}");
    assert_eq!(status["leader"]["address"], advertised.as_str(), "{status}");
    assert_eq!(
        status["coordinator"]["address"],
        advertised.as_str(),
        "{status}"
    );

    // A node on every interface needs an advertised address too, and registers it.
    rt.block_on(async {
        let token = cohort::wire::Secret::new(TOKEN.as_bytes().to_vec()).unwrap();
        let store = CheckpointStore::open(&url, Default::default())
            .await
            .unwrap();
        let err = Node::builder(store.clone())
            .name("wildcard")
            .listen("0.0.0.0:0".parse().unwrap())
            .token(token.clone())
            .build()
            .await
            .err()
            .expect("a node on every interface without an advertised address is refused");
        assert!(err.to_string().contains("every interface"), "{err}");
        let node = Node::builder(store)
            .name("advertised")
            .coordinators(vec![advertised.clone()])
            .listen("0.0.0.0:0".parse().unwrap())
            .advertise("localhost:7999")
            .token(token)
            .build()
            .await
            .unwrap();
        assert_eq!(node.peer_addr(), "localhost:7999");
        let mut status = node.status();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| {
                matches!(s, cohort::coordinator::node::NodeStatus::Registered { .. })
            }),
        )
        .await
        .expect("the node registers through the advertised name")
        .unwrap();
        node.shutdown();
    });
    let out = Command::new(cohort_bin())
        .args(["status", "--json", "--store", &url, "--token", TOKEN])
        .env("RUST_LOG", "")
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        status["nodes"][0]["peer_addr"], "localhost:7999",
        "{status}"
    );
}
