//! One benchmark report against the physical limits and the peers (issue 8):
//! `cargo bench --bench report` prints a table and writes `target/bench-report.json`, one entry
//! per figure, each beside a baseline measured (or configured) in the same run.
//!
//! `cargo bench --bench report -- pause_p99 failover` runs only the figures whose names contain
//! one of the words. `COHORT_BENCH_SCALE` (default 1) scales the bytes of `write_1gib` and
//! `restore_1gib`; `COHORT_BENCH_DIR` picks the disk (default: `target/tmp`). See
//! `benches/README.md` for what each figure means and how to profile one.
//!
//! Node and replica processes are this binary re-executed with `COHORT_REPORT_ROLE` set.
#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

#[path = "report/entry.rs"]
mod entry;
// The HA tests' process helpers (spawn, read output, poll with deadlines); they panic on a
// broken child, which `run_step` turns into a failed figure.
#[allow(clippy::unwrap_used)]
#[path = "../tests/ha_support/mod.rs"]
mod ha_support;
#[path = "report/ingress.rs"]
mod ingress;
#[path = "report/inproc.rs"]
mod inproc;
#[path = "report/processes.rs"]
mod processes;
#[path = "report/storage.rs"]
mod storage;
#[path = "report/warm.rs"]
mod warm;

use entry::Entry;

/// Set in a child process to the role it plays: `node` or `warm`.
const ROLE_ENV: &str = "COHORT_REPORT_ROLE";
/// The child's configuration, in the role's own format.
const SPEC_ENV: &str = "COHORT_REPORT_SPEC";

/// The path of this bench binary, to re-execute it in a role.
fn this_exe() -> PathBuf {
    // Only fails where /proc is missing; the argv[0] fallback then works from the same cwd.
    std::env::current_exe()
        .or_else(|_| std::env::args_os().next().map(PathBuf::from).ok_or(()))
        .unwrap_or_else(|()| PathBuf::from("report"))
}

/// Returns once the process that started this one is gone, so that a child of a report that
/// was interrupted does not outlive it.
async fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = std::os::unix::process::parent_id();
        if now != parent || now == 1 {
            return;
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// The run's settings, from the environment.
struct Config {
    scale: f64,
    /// Node processes of `coordination_remote` (`COHORT_BENCH_NODES`, default 64).
    nodes: usize,
    /// A fresh directory on the disk under test, removed at the end.
    dir: tempfile::TempDir,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let scale = match std::env::var("COHORT_BENCH_SCALE") {
            Ok(s) => s
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .with_context(|| {
                    format!("COHORT_BENCH_SCALE={s:?}: give a positive number, such as 0.25 or 2")
                })?,
            Err(_) => 1.0,
        };
        let nodes = match std::env::var("COHORT_BENCH_NODES") {
            Ok(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| {
                    format!("COHORT_BENCH_NODES={s:?}: give a positive whole number")
                })?,
            Err(_) => 64,
        };
        let base = std::env::var_os("COHORT_BENCH_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        std::fs::create_dir_all(&base)
            .with_context(|| format!("creating the bench dir {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("cohort-report-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a directory in {}", base.display()))?;
        Ok(Config { scale, nodes, dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A step of the report: the figures it yields and how to measure them.
struct Step {
    figures: &'static [&'static str],
    run: fn(&Config) -> anyhow::Result<Vec<Entry>>,
}

const STEPS: &[Step] = &[
    Step {
        figures: &["write_1gib", "restore_1gib"],
        run: |c| runtime()?.block_on(storage::large(c.dir.path(), c.scale)),
    },
    Step {
        figures: &["write_small_objects"],
        run: |c| Ok(vec![runtime()?.block_on(storage::small(c.dir.path()))?]),
    },
    Step {
        figures: &["ingress_throughput", "ingress_p99"],
        run: |c| runtime()?.block_on(ingress::figures(c.dir.path())),
    },
    Step {
        figures: &["pause_p99"],
        run: |c| {
            runtime()?.block_on(async {
                let url = c.path("pause").display().to_string();
                let options = cohort::checkpoint::StoreOptions::default();
                let store = cohort::checkpoint::CheckpointStore::open(&url, options).await?;
                Ok(vec![inproc::pause_p99(store).await?])
            })
        },
    },
    Step {
        figures: &["coordination_inproc"],
        run: |_| Ok(vec![runtime()?.block_on(inproc::coordination_inproc())?]),
    },
    Step {
        figures: &["incremental_1pct"],
        run: |_| Ok(vec![runtime()?.block_on(inproc::incremental_1pct())?]),
    },
    Step {
        figures: &["scale_1m_incremental"],
        run: |_| Ok(vec![runtime()?.block_on(inproc::scale_1m_incremental())?]),
    },
    Step {
        figures: &["idle_object_overhead"],
        run: |_| Ok(vec![inproc::idle_object_overhead()?]),
    },
    Step {
        figures: &["coordination_remote"],
        run: |c| {
            Ok(vec![
                runtime()?.block_on(processes::coordination_remote(c.nodes))?,
            ])
        },
    },
    Step {
        figures: &["node_loss_recovery"],
        run: |_| Ok(vec![runtime()?.block_on(processes::node_loss_recovery(5))?]),
    },
    Step {
        figures: &["failover_warm"],
        run: |_| Ok(vec![runtime()?.block_on(warm::failover_warm(9))?]),
    },
    Step {
        figures: &["coordinator_failover"],
        run: |_| Ok(vec![processes::coordinator_failover(5)?]),
    },
    Step {
        figures: &["coordinator_failover_1gib"],
        run: |_| Ok(vec![processes::coordinator_failover_1gib(3)?]),
    },
];

/// Runs `step`; a failure (an error or a panic) becomes a failed entry per figure.
fn run_step(step: &Step, config: &Config) -> Vec<Entry> {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (step.run)(config)));
    let why = match outcome {
        Ok(Ok(entries)) => {
            eprintln!(
                "report: {} measured in {:.1} s",
                step.figures.join(", "),
                started.elapsed().as_secs_f64()
            );
            return entries;
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
    };
    eprintln!("report: {} failed: {why}", step.figures.join(", "));
    let failed = |name: &&str| Entry::failed(name, why.clone());
    step.figures.iter().map(failed).collect()
}

fn role(role: &str) -> anyhow::Result<()> {
    let spec = std::env::var(SPEC_ENV).with_context(|| format!("{SPEC_ENV} is not set"))?;
    let rt = runtime()?;
    match role {
        "node" => rt.block_on(processes::node_role(&spec)),
        "warm" => rt.block_on(warm::member_role(&spec)),
        "idle" => rt.block_on(inproc::idle_object_role()),
        other => {
            anyhow::bail!("{ROLE_ENV}={other:?} is not a role of the report (node, warm, idle)")
        }
    }
}

fn report() -> anyhow::Result<bool> {
    // Cargo passes `--bench`; the other words select figures.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen = |step: &&Step| {
        words.is_empty()
            || step
                .figures
                .iter()
                .any(|f| words.iter().any(|w| f.contains(w.as_str())))
    };
    let config = Config::from_env()?;
    eprintln!(
        "report: scale {}, disk {}",
        config.scale,
        config.dir.path().display()
    );
    let started = Instant::now();
    let entries: Vec<Entry> = STEPS
        .iter()
        .filter(chosen)
        .flat_map(|step| run_step(step, &config))
        .collect();
    anyhow::ensure!(!entries.is_empty(), "no figure matches {words:?}");
    println!("\n{}", entry::table(&entries));
    let json = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("bench-report.json");
    entry::write_json(&json, &entries)?;
    println!(
        "{} figures in {:.0} s; written to {}. Figures are noisy on a shared machine: the ratios are what hold.",
        entries.len(),
        started.elapsed().as_secs_f64(),
        json.display()
    );
    Ok(entries.iter().all(|e| e.value.is_some()))
}

/// Logs to stderr at `RUST_LOG` (default `warn`), so that a failing figure says why.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let outcome = match std::env::var(ROLE_ENV) {
        Ok(r) => role(&r).map(|()| true),
        Err(_) => report(),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("report: {e:#}");
            ExitCode::FAILURE
        }
    }
}
