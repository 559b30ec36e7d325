//! `cohort serve`: run a coordinator service, leader or standby, on a store.
//!
//! The process binds the node port at once (a standby answers nodes with the leader's address),
//! runs the leadership driver against the store, and follows what it says: it leads under the
//! epoch the driver claimed (and fenced), and steps down when the driver does or when a commit
//! finds a newer epoch. On SIGINT or SIGTERM it steps down and exits 0; a standby takes over
//! one lease later.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use cohort_coordinator::service::control::Responder;
use cohort_coordinator::service::leadership::{self, Leadership, LeadershipConfig, Transition};
use cohort_coordinator::service::metrics::{MetricsEndpoint, ServiceMetrics};
use cohort_coordinator::service::{MetadataHook, Service, ServiceConfig, StateTable};
use cohort_wire::{CancellationToken, DEFAULT_PORT, Secret, TOKEN_ENV};

use crate::cli::StoreArgs;
use crate::cli::failure::{Code, Failure};
use crate::cli::store;

/// Run a coordinator: the leader, or a standby that takes over when the leader goes.
///
/// Nodes connect to --listen. Run two or more `cohort serve` against one store for high
/// availability: exactly one leads (it holds the newest epoch and renews its lease every third
/// of --lease); the others answer nodes with the leader's address and take over when the lease
/// runs out, after fencing the old leader so that it can never commit again.
///
/// A non-loopback --listen needs a shared token (--token or COHORT_TOKEN, at least 16 bytes),
/// which nodes must hold too.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 stopped by SIGINT or SIGTERM; 2 usage, IO or configuration error (a bad address,
a port in use, an unusable store).

Examples:
  cohort serve --store file:///var/lib/bank/checkpoints --interval 5s
  cohort serve --store s3://bank-checkpoints/prod --listen 0.0.0.0:7411 --lease 3s --metrics 127.0.0.1:9464")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// Where nodes connect.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    listen: SocketAddr,

    /// Take a checkpoint this often; without it, only on `cohort checkpoint --now`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    interval: Option<Duration>,

    /// Abort a checkpoint attempt that is not decided after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// How long a leader may go without renewing its lease before a standby takes over (and
    /// before it steps down by itself); from 1s up.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,

    /// Nodes and the coordinator exchange heartbeats this often.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,

    /// A node silent this long is lost (the checkpoint in flight aborts); one that is not back
    /// this long after that is dead (cohort recovery).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,

    /// The shared token nodes must prove they hold; required on a non-loopback --listen.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Accept a store that failed the create-if-absent probe. Unsafe with more than one
    /// coordinator: fencing needs create-if-absent.
    #[arg(long)]
    allow_unsafe_store: bool,

    /// Test hook: stop this process (SIGSTOP) right before the manifest create of its Nth
    /// commit, so that a test can resume it after a standby took over and see its commit fenced.
    #[arg(long, value_name = "N", hide = true)]
    test_pause_before_commit: Option<u64>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let token = match &args.token {
        Some(t) => Some(Secret::new(t.as_bytes().to_vec()).map_err(|e| {
            Failure::usage(e.to_string())
                .hint("use a random token of 16 bytes or more, e.g. `openssl rand -hex 24`")
        })?),
        None => None,
    };
    if args.lease < Duration::from_secs(1) {
        return Err(Failure::usage(format!(
            "--lease {} is too short",
            humantime::format_duration(args.lease)
        ))
        .hint("use 1s or more; a standby takes over one lease after the leader goes")
        .into());
    }
    let store = store::open_writable(&args.store, args.allow_unsafe_store).await?;

    let mut config = ServiceConfig::new(args.listen);
    config.listen.token = token;
    config.interval = args.interval;
    config.timeout = args.timeout;
    config.heartbeat_interval = args.heartbeat;
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.lead_at_start = false;
    if let Some(n) = args.test_pause_before_commit {
        config.metadata = Some(pause_before_commit(n));
    }
    // Control requests may arrive as soon as the port is bound, before the leadership driver
    // exists: until then they are told to retry.
    let responder = Responder::new();
    config.control = Some(responder.handler());
    let metrics = ServiceMetrics::new();
    config.metrics = Some(metrics.clone());
    let service = Service::start(store.clone(), config).await.map_err(|e| {
        Failure::usage(format!(
            "cannot start the coordinator on {}: {e}",
            args.listen
        ))
        .hint("check that the port is free and, for a non-loopback address, pass --token")
    })?;
    let addr = service.local_addr();

    let stop = CancellationToken::new();
    if let Some(at) = args.metrics {
        let endpoint = MetricsEndpoint::bind(at)
            .await
            .map_err(|e| Failure::usage(e.to_string()))?;
        say(format_args!(
            "metrics at http://{}/metrics",
            endpoint.local_addr()
        ));
        tokio::spawn(endpoint.run(metrics.clone(), stop.clone()));
    }

    let leadership_config = LeadershipConfig::new(args.lease, Some(addr.to_string()))?;
    let holder = leadership_config.holder.clone();
    let leadership = Leadership::spawn(store.clone(), leadership_config);
    responder.attach(service.clone(), leadership.clone(), holder.clone());
    say(format_args!(
        "coordinator {holder}: nodes connect to {addr}; store {}; lease {}",
        store.url(),
        humantime::format_duration(args.lease)
    ));

    let running = CancellationToken::new();
    let driver = {
        let metrics = metrics.clone();
        leadership::drive(
            service.clone(),
            leadership.clone(),
            running.clone(),
            move |t| tell(&metrics, t),
        )
    };
    let outcome = tokio::select! {
        driven = driver => driven.context("the coordinator stopped unexpectedly"),
        signal = shutdown_signal() => {
            let leading = leadership.view().serving_epoch();
            say(format_args!("stopping: {}", match leading {
                Some(e) => format!("stepping down from epoch {e}; a standby takes over after the lease"),
                None => "standby".to_owned(),
            }));
            signal
        }
    };
    running.cancel();
    leadership.stop().await;
    service.shutdown();
    stop.cancel();
    outcome?;
    say(format_args!("stopped"));
    Ok(Code::Ok)
}

/// Tells the operator (and the metrics) what the coordinator just did.
fn tell(metrics: &ServiceMetrics, t: Transition) {
    match t {
        Transition::Leading { epoch, fence } => {
            metrics.set_leader(Some(epoch));
            match fence {
                Some(id) => say(format_args!(
                    "leading under epoch {epoch}: fenced the previous epochs with checkpoint {id}"
                )),
                None => say(format_args!(
                    "leading under epoch {epoch}: no committed checkpoint to fence"
                )),
            }
        }
        Transition::LeadFailed { epoch, reason } => {
            say(format_args!(
                "cannot lead under epoch {epoch}: {reason}; stepping down"
            ));
        }
        Transition::Retried { epoch, id } => {
            say(format_args!(
                "checkpoint {id} committed under epoch {epoch}"
            ));
        }
        Transition::SteppedDown { epoch } => {
            metrics.set_leader(None);
            say(format_args!("stepped down from epoch {epoch}"));
        }
        Transition::Following { leader } => match leader {
            Some(record) => say(format_args!(
                "standby: epoch {} is held by {} at {}",
                record.epoch,
                record.holder,
                record.address.as_deref().unwrap_or("an unknown address")
            )),
            None => say(format_args!("standby: no coordinator holds an epoch yet")),
        },
        Transition::Fenced { leading } => say(format_args!(
            "a commit was fenced: a newer coordinator took over the store{}",
            if leading.is_some() {
                "; stepping down"
            } else {
                ""
            }
        )),
        // A transition of a newer library.
        other => tracing::info!(?other, "coordinator transition"),
    }
}

/// Prints one line of the server's story on stdout (flushed: tests and operators read it as it
/// happens).
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop a coordinator.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The test hook behind `--test-pause-before-commit`.
fn pause_before_commit(nth: u64) -> MetadataHook {
    let commits = Arc::new(AtomicU64::new(0));
    Arc::new(move |_table: &StateTable| {
        if commits.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            say(format_args!(
                "test hook: pausing (SIGSTOP) before commit {nth}"
            ));
            let pid = std::process::id().to_string();
            // Stops this whole process; the call returns once it is resumed (SIGCONT).
            if let Err(e) = std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status()
            {
                say(format_args!("test hook: cannot stop: {e}"));
            }
            say(format_args!("test hook: resumed; committing"));
        }
        BTreeMap::new()
    })
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("cannot watch Ctrl-C")
    }
}
