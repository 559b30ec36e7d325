//! Seeded randomized bank runs: thousands of transfers between accounts, crashes injected at
//! random protocol steps (fail points), random store failures (`FaultyStore`), restarts and
//! in-place recoveries. Checked after every step that can change the store:
//!
//! - every committed line conserves money: balances + recorded in-transit transfers = total;
//! - every committed line is whole (all its blobs read back and verify): no half line;
//! - recovery lands exactly on the newest committed line, and the restored objects hold
//!   exactly its states.
//!
//! Each seed drives every decision (accounts, transfers, crash points, faults). Seeds run on a
//! current-thread runtime so that a seed replays the same run: a failure prints
//! `COHORT_SEED=<seed>`, and `COHORT_SEED=<seed> cargo test --test bank_random` replays it.
//! `COHORT_SEEDS=<n>` runs more seeds. One multi-threaded pass adds real concurrency (forced
//! captures), replaying decisions but not thread interleavings.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

#[path = "support/bank.rs"]
mod bank;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bank::{Account, AccountState, BankMsg, account_id, line_money};
use cohort::CheckpointId;
use cohort::checkpoint::object_store::memory::InMemory;
use cohort::checkpoint::object_store::path::Path;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::failpoint::{self, FailPoints};
use cohort::coordinator::{Address, Cohort, Error, Settings};
use cohort_checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const BALANCE: i64 = 1_000;

/// Prints the seed if the run panics, so it can be replayed.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "bank_random failed with seed {0}; replay with COHORT_SEED={0} cargo test --test bank_random",
                self.0
            );
        }
    }
}

/// The seeds of one test: `COHORT_SEED` alone if set (and in this test's range), else
/// `COHORT_SEEDS` (or `default`) seeds from `first`.
fn seeds(first: u64, default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("COHORT_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        let ours = (seed >= first) == (first > 0) || first == 0 && seed < 1_000_000;
        return if ours { vec![seed] } else { vec![] };
    }
    let n = std::env::var("COHORT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (first..first + n).collect()
}

#[derive(Default, Debug, Clone, Copy)]
struct Totals {
    transfers: u64,
    committed: u64,
    aborted: u64,
    crashes: u64,
    recoveries: u64,
    redelivered: u64,
    forced: u64,
    faults: u64,
}

struct Run {
    rng: SmallRng,
    seed: u64,
    accounts: u64,
    total: i64,
    faulty: FaultyStore,
    /// The store the cohorts use, through the fault injector.
    store: CheckpointStore,
    /// The same objects without faults, for the test's own checks.
    clean: CheckpointStore,
    /// Committed ids already checked.
    checked: BTreeSet<CheckpointId>,
    totals: Totals,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let accounts = rng.random_range(3..=48);
        let faulty = FaultyStore::new(Arc::new(InMemory::new()));
        let store = CheckpointStore::from_object_store(
            Arc::new(faulty.clone()),
            Path::from("bank"),
            StoreOptions::default(),
        );
        let clean = CheckpointStore::from_object_store(
            Arc::clone(faulty.inner()),
            Path::from("bank"),
            StoreOptions::default(),
        );
        Self {
            rng,
            seed,
            accounts,
            total: BALANCE * accounts as i64,
            faulty,
            store,
            clean,
            checked: BTreeSet::new(),
            totals: Totals::default(),
        }
    }

    /// Every committed line not yet checked is whole and conserves money.
    async fn check_lines(&mut self) {
        for id in self.clean.committed_ids().await.unwrap() {
            if self.checked.contains(&id) {
                continue;
            }
            let report = self.clean.verify(id).await.unwrap();
            assert!(report.is_ok(), "line {id} is not whole: {report}");
            let manifest = self.clean.read_manifest(id).await.unwrap();
            let money = line_money(&self.clean, &manifest).await.unwrap();
            assert_eq!(
                money.total(),
                self.total,
                "line {id} does not conserve money: {money:?}"
            );
            assert_eq!(money.accounts as u64, self.accounts, "line {id}");
            self.checked.insert(id);
        }
    }

    async fn newest(&self) -> Option<CheckpointId> {
        self.clean.committed_ids().await.unwrap().last().copied()
    }

    /// Maybe arms a random store fault.
    fn maybe_fault(&mut self) {
        if !self.rng.random_bool(0.3) {
            return;
        }
        let op = [
            Op::PutCreate,
            Op::Put,
            Op::Get,
            Op::List,
            Op::Delete,
            Op::Head,
        ][self.rng.random_range(0..6)];
        let fault = if self.rng.random_bool(0.5) {
            Fault::Error
        } else {
            Fault::ErrorAfterWrite
        };
        let nth = self.rng.random_range(1..=12);
        self.faulty
            .inject(FaultRule::on(op).nth(nth).times(1).fault(fault));
        self.totals.faults += 1;
    }

    /// Builds a cohort as a fresh process would (retrying while injected faults make the start
    /// fail), spawns every account, and recovers.
    async fn start(&mut self, points: &FailPoints) -> Option<(Cohort, Vec<Address<BankMsg>>)> {
        let settings = Settings::default()
            .timeout(Duration::from_secs(5))
            .tolerable_failures(3);
        let cohort = loop {
            match Cohort::builder(self.store.clone())
                .settings(settings.clone())
                .fail_points(points.clone())
                .paused(true)
                .build()
                .await
            {
                Ok(c) => break c,
                Err(Error::Store(_)) => self.faulty.clear(),
                Err(e) => panic!("start failed: {e}"),
            }
        };
        let addresses = (0..self.accounts)
            .map(|i| {
                cohort
                    .spawn(
                        account_id(i),
                        Account::new(i, self.accounts, BALANCE, self.seed),
                    )
                    .unwrap()
            })
            .collect();
        if self.recover(&cohort).await {
            cohort.resume().await.unwrap();
            Some((cohort, addresses))
        } else {
            None
        }
    }

    /// Recovers `cohort` (held) and checks where it landed. False if it crashed.
    async fn recover(&mut self, cohort: &Cohort) -> bool {
        loop {
            let newest = self.newest().await;
            match cohort.recover().await {
                Ok(report) => {
                    self.totals.recoveries += 1;
                    self.totals.redelivered += report.redelivered as u64;
                    assert_eq!(
                        report.line, newest,
                        "recovery did not land on the newest line"
                    );
                    self.check_restored(cohort, newest).await;
                    return true;
                }
                Err(Error::Crashed { .. }) => return false,
                // An injected store fault: it fires once; recover again.
                Err(Error::Store(_)) => continue,
                Err(e) => panic!("recover failed: {e}"),
            }
        }
    }

    /// The held objects hold exactly the line's states, and with its in-transit transfers
    /// (queued for redelivery) they add up to the total.
    async fn check_restored(&mut self, cohort: &Cohort, line: Option<CheckpointId>) {
        let Some(line) = line else { return };
        let manifest = self.clean.read_manifest(line).await.unwrap();
        let states = self.clean.read_states(&manifest).await.unwrap();
        let mut balances = 0;
        for (id, state) in states {
            let recorded: AccountState = state.decode().unwrap();
            let live = cohort
                .inspect(&id, |a: &Account| a.state.clone())
                .await
                .unwrap();
            assert_eq!(live, recorded, "{id} is not restored to line {line}");
            balances += live.balance;
        }
        let money = line_money(&self.clean, &manifest).await.unwrap();
        assert_eq!(balances + money.in_transit, self.total);
    }

    /// One life of the cohort: start, recover, transfer and checkpoint until a crash or the
    /// end of the life.
    async fn life(&mut self) {
        let points = FailPoints::default();
        if self.rng.random_bool(0.7) {
            let point = failpoint::ALL[self.rng.random_range(0..failpoint::ALL.len())];
            points.crash_at(point, self.rng.random_range(1..=3));
        }
        self.maybe_fault();
        let Some((cohort, accounts)) = self.start(&points).await else {
            self.totals.crashes += 1;
            self.check_lines().await;
            return;
        };
        let steps = self.rng.random_range(20..80);
        for step in 0..steps {
            let count = self.rng.random_range(1..6);
            let who = self.rng.random_range(0..accounts.len());
            if accounts[who].tell(BankMsg::Tick { count }).is_err() {
                break; // crashed: the mailboxes are gone
            }
            self.totals.transfers += u64::from(count);
            if step % 7 == 6 {
                self.maybe_fault();
                match cohort.trigger().await {
                    Ok(_) => {}
                    Err(Error::Aborted { .. }) => {}
                    Err(Error::Crashed { .. }) => break,
                    Err(e) => panic!("trigger failed unexpectedly: {e}"),
                }
                self.check_lines().await;
            }
            if step % 23 == 22 && self.rng.random_bool(0.3) {
                // An in-place recovery of a running cohort.
                cohort.pause().await.ok();
                if !self.recover(&cohort).await {
                    break;
                }
                cohort.resume().await.ok();
            }
        }
        if cohort.stopped().is_some() {
            self.totals.crashes += 1;
        }
        self.totals.committed += cohort.metrics().committed();
        self.totals.aborted += cohort.metrics().aborted();
        self.totals.forced += cohort.metrics().forced_captures();
        // Whatever the life ended with, the process dies here.
        drop(cohort);
        self.check_lines().await;
    }
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, t: Totals) {
        self.transfers += t.transfers;
        self.committed += t.committed;
        self.aborted += t.aborted;
        self.crashes += t.crashes;
        self.recoveries += t.recoveries;
        self.redelivered += t.redelivered;
        self.forced += t.forced;
        self.faults += t.faults;
    }
}

async fn run_seed(seed: u64) -> Totals {
    let _guard = SeedGuard(seed);
    let mut run = Run::new(seed);
    let lives = run.rng.random_range(2..=5);
    for _ in 0..lives {
        run.life().await;
    }
    // A final, clean life: it recovers to the newest line and takes a checkpoint.
    run.faulty.clear();
    let points = FailPoints::default();
    let (cohort, _) = run.start(&points).await.expect("no fail point is armed");
    let id = cohort.trigger().await.unwrap();
    run.check_lines().await;
    assert_eq!(run.newest().await, Some(id));
    run.totals.committed += 1;
    run.totals
}

#[test]
fn bank_random_replayable() {
    let mut all = Totals::default();
    for seed in seeds(0, 150) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        all += rt.block_on(run_seed(seed));
    }
    eprintln!("bank_random (current thread): {all:?}");
    if std::env::var("COHORT_SEED").is_err() {
        assert!(all.transfers > 5_000, "too little traffic: {all:?}");
        assert!(all.crashes > 10 && all.recoveries > 20, "{all:?}");
        assert!(
            all.redelivered > 0,
            "no in-transit message was ever redelivered: {all:?}"
        );
    }
}

#[test]
fn bank_random_concurrent() {
    let mut all = Totals::default();
    for seed in seeds(1_000_000, 40) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        all += rt.block_on(run_seed(seed));
    }
    eprintln!("bank_random (multi thread): {all:?}");
}
