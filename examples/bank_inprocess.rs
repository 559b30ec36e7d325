//! The bank: accounts are objects that transfer random amounts to each other concurrently
//! through cohort messaging, while cohort takes consistent checkpoints every few hundred
//! milliseconds. Partway through, the coordinator crashes in the middle of a checkpoint (after
//! the votes, before the commit point); a new cohort is built on the same store, as a restarted
//! process would, recovers to the recovery line and carries on.
//!
//! The invariant: total money = sum of balances + transfers recorded in transit, in every
//! committed checkpoint and after recovery. The run exits 1 if it ever broke, 2 on any other
//! failure.
//!
//! ```text
//! cargo run --release --example bank_inprocess          # checkpoints under ./cohort-data/bank-inprocess
//! cargo run --release --example bank_inprocess -- --store memory://
//! cargo run --release --example bank_inprocess -- --help
//! ```
//!
//! Run it twice on the same store and the second run starts from the first one's recovery line.
#![allow(
    clippy::disallowed_methods,
    reason = "the example runs real processes on real time"
)]

#[path = "../tests/support/bank.rs"]
mod bank;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bank::{Account, AccountState, BankMsg, account_id, line_money};
use clap::Parser;
use cohort::CheckpointId;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::PauseStats;
use cohort::coordinator::failpoint::{self, FailPoints};
use cohort::coordinator::{Address, Cohort, Error, Settings};

const BALANCE: i64 = 1_000;

/// Accounts transfer money through cohort messaging while cohort checkpoints them; a crash
/// partway is recovered from.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where checkpoints go: a path, file:///abs/path, s3://bucket/prefix or memory://.
    #[arg(long, default_value = "./cohort-data/bank-inprocess")]
    store: String,
    /// How many accounts (objects).
    #[arg(long, default_value_t = 64)]
    accounts: u64,
    /// How long to run, in seconds (the crash happens at 40%).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Checkpoint interval, in milliseconds.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    /// Seed of the accounts' random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
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
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One "process": a cohort with every account spawned, recovered to the recovery line.
struct Life {
    cohort: Cohort,
    accounts: Vec<Address<BankMsg>>,
    recovery: Duration,
    line: Option<CheckpointId>,
    redelivered: usize,
}

async fn start(store: &CheckpointStore, args: &Args, points: &FailPoints) -> anyhow::Result<Life> {
    let settings = Settings::default()
        .interval(Duration::from_millis(args.interval_ms))
        .timeout(Duration::from_secs(10))
        .tolerable_failures(2);
    let cohort = Cohort::builder(store.clone())
        .settings(settings)
        .fail_points(points.clone())
        .paused(true)
        .build()
        .await?;
    let accounts = (0..args.accounts)
        .map(|i| {
            cohort.spawn(
                account_id(i),
                Account::new(i, args.accounts, BALANCE, args.seed),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let report = cohort.recover().await.context(
        "recovery failed (a store left by a run with other --accounts cannot be restored; use another --store)",
    )?;
    let recovery = started.elapsed();
    Ok(Life {
        cohort,
        accounts,
        recovery,
        line: report.line,
        redelivered: report.redelivered,
    })
}

/// Checks that the held objects hold exactly the line's states and, with the transfers queued
/// for redelivery, all the money.
async fn check_recovered(store: &CheckpointStore, life: &Life, total: i64) -> anyhow::Result<bool> {
    let Some(line) = life.line else {
        return Ok(true);
    };
    let manifest = store.read_manifest(line).await?;
    let money = line_money(store, &manifest).await?;
    let mut balances = 0;
    for (id, state) in store.read_states(&manifest).await? {
        let recorded: AccountState = state.decode()?;
        let live = life
            .cohort
            .inspect(&id, |a: &Account| a.state.clone())
            .await?;
        if live != recorded {
            eprintln!("INVARIANT BROKEN: {id} was not restored to checkpoint {line}");
            return Ok(false);
        }
        balances += live.balance;
    }
    let ok = balances + money.in_transit == total;
    if !ok {
        eprintln!(
            "INVARIANT BROKEN after recovery: balances {balances} + in transit {} != {total}",
            money.in_transit
        );
    }
    Ok(ok)
}

/// Sends ticks to random accounts until told to stop or the cohort is gone.
fn drive(
    accounts: Vec<Address<BankMsg>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    ticks: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut x = seed | 1;
        let mut interval = tokio::time::interval(Duration::from_millis(1));
        while !stop.load(Ordering::Relaxed) {
            interval.tick().await;
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let who = (x % accounts.len() as u64) as usize;
                let count = 1 + (x >> 32) as u32 % 4;
                if accounts[who].tell(BankMsg::Tick { count }).is_err() {
                    return; // the cohort crashed
                }
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn fmt_pause(p: PauseStats) -> String {
    format!(
        "p50 {:?}, p99 {:?}, max {:?} over {} captures",
        p.p50, p.p99, p.max, p.count
    )
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if args.accounts < 2 {
        bail!("--accounts must be at least 2");
    }
    let total = BALANCE * args.accounts as i64;
    let store = CheckpointStore::open(&args.store, StoreOptions::default()).await?;
    let run_for = Duration::from_secs(args.seconds.max(2));
    let mut ok = true;
    println!(
        "bank: {} accounts, {} in total, checkpoint every {} ms to {}",
        args.accounts, total, args.interval_ms, store
    );

    // Life 1: run, then crash in the middle of a checkpoint.
    let points = FailPoints::default();
    let first = start(&store, &args, &points).await?;
    if let Some(line) = first.line {
        println!("resumed from checkpoint {line} of an earlier run");
    }
    ok &= check_recovered(&store, &first, total).await?;
    first.cohort.resume().await?;
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = drive(
        first.accounts.clone(),
        args.seed,
        stop.clone(),
        ticks.clone(),
    );
    tokio::time::sleep(run_for.mul_f64(0.4)).await;
    points.crash_at(failpoint::COMMIT_BEFORE_MANIFEST, 1);
    match first.cohort.trigger().await {
        Err(Error::Crashed { point }) => println!(
            "injected failure: the coordinator crashed at {point:?} (votes in, no manifest)"
        ),
        other => bail!("expected the injected crash, got {other:?}"),
    }
    driver.await.ok();
    let metrics = first.cohort.metrics();
    let (committed_1, aborted_1, pause_1) =
        (metrics.committed(), metrics.aborted(), metrics.pauses());
    let newest = store.committed_ids().await?.last().copied();
    drop(first);

    // Life 2: a new process recovers to the recovery line and carries on.
    let second = start(&store, &args, &FailPoints::default()).await?;
    if second.line != newest {
        eprintln!(
            "INVARIANT BROKEN: recovery landed on {:?}, the newest committed line is {newest:?}",
            second.line
        );
        ok = false;
    }
    ok &= check_recovered(&store, &second, total).await?;
    println!(
        "recovered to checkpoint {} in {:?}: {} accounts restored, {} in-transit transfers redelivered",
        second.line.map_or("none".to_string(), |l| l.to_string()),
        second.recovery,
        args.accounts,
        second.redelivered
    );
    second.cohort.resume().await?;
    let driver = drive(
        second.accounts.clone(),
        args.seed ^ 0xA5A5,
        stop.clone(),
        ticks.clone(),
    );
    tokio::time::sleep(run_for.mul_f64(0.6)).await;
    stop.store(true, Ordering::Relaxed);
    driver.await.ok();
    let last = second.cohort.trigger().await?;

    // Every committed checkpoint conserves the money.
    let ids = store.committed_ids().await?;
    for id in &ids {
        let manifest = store.read_manifest(*id).await?;
        let money = line_money(&store, &manifest).await?;
        if money.total() != total {
            eprintln!("INVARIANT BROKEN in checkpoint {id}: {money:?} != {total}");
            ok = false;
        }
    }
    let m = second.cohort.metrics();
    println!("ticks sent: {}", ticks.load(Ordering::Relaxed));
    println!(
        "checkpoints: {} committed, {} aborted (before the crash: {committed_1} committed, {aborted_1} aborted)",
        committed_1 + m.committed(),
        aborted_1 + m.aborted(),
    );
    println!("transfers recorded in transit: {}", m.recorded_in_transit());
    println!("pause before the crash: {}", fmt_pause(pause_1));
    println!("pause after recovery:   {}", fmt_pause(m.pauses()));
    println!("recovery time: {:?}", second.recovery);
    println!(
        "invariant checked in {} committed manifests (newest {last}) and after recovery: {}",
        ids.len(),
        if ok { "OK" } else { "BROKEN" }
    );
    if args.store.contains("://") && !args.store.starts_with("file://") {
        println!("checkpoints are in {store}");
    } else {
        println!(
            "checkpoints are in {store}; list them with `cargo run -- list --store {}`",
            args.store
        );
    }
    second.cohort.shutdown().await;
    Ok(ok)
}
