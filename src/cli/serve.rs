//! `cohort serve`: run a coordinator service, leader or standby, on a store.
//!
//! The process binds the node port at once (a standby answers nodes with the leader's address),
//! runs the leadership driver against the store, and follows what it says: it leads under the
//! epoch the driver claimed (and fenced), and steps down when the driver does or when a commit
//! finds a newer epoch. On SIGINT or SIGTERM it steps down and exits 0; a standby takes over
//! one lease later.
//!
//! With `--http ADDR` it also serves the dashboard, its JSON and `/metrics` (`crate::http`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use cohort_checkpoint::{CheckpointStore, Retention};
use cohort_coordinator::engine::RestartPolicy;
use cohort_coordinator::failpoint::{FAIL_POINTS_ENV, FailPoints};
use cohort_coordinator::runtime::MIN_INTERVAL;
use cohort_coordinator::service::control::Responder;
use cohort_coordinator::service::leadership::{self, Leadership, LeadershipConfig, Transition};
use cohort_coordinator::service::metrics::ServiceMetrics;
use cohort_coordinator::service::{Service, ServiceConfig};
use cohort_object_api::{CheckpointId, Clock};
use cohort_wire::{
    CancellationToken, ConnectConfig, DEFAULT_PORT, Role, Secret, TOKEN_ENV, advertised_address,
};

use crate::cli::StoreArgs;
use crate::cli::failure::{Code, Failure};
use crate::cli::store;
use crate::cli::tls::TlsArgs;
use crate::http::{self, Dashboard, Guard, HttpListener, Settings, StoreWatch};

/// Run a coordinator: the leader, or a standby that takes over when the leader goes.
///
/// Nodes connect to --listen. Run two or more `cohort serve` against one store for high
/// availability: exactly one leads (it holds the newest epoch and renews its lease every third
/// of --lease); the others answer nodes with the leader's address and take over when the lease
/// runs out, after fencing the old leader so that it can never commit again.
///
/// Others reach this coordinator at --advertise (recorded in its epoch record, which standbys,
/// nodes and the CLI read), by default the --listen address; listening on every interface
/// (0.0.0.0) needs --advertise. A non-loopback --listen needs mutual TLS (--tls-cert, --tls-key
/// and --tls-ca: the recommended mode across hosts) or a shared token (--token or COHORT_TOKEN,
/// at least 16 bytes, for a trusted network); nodes and the CLI must use the same.
///
/// With --keep, the leader collects old checkpoints after commits (at most every
/// --gc-interval), as `cohort gc --keep N` does: never a pinned one, the recovery line, or
/// anything a kept one references.
///
/// --http ADDR serves a dashboard at http://ADDR/ (the leader, the standbys, the checkpoint
/// history, the recovery line, the nodes, recoveries and takeovers; live), the JSON it reads
/// under /api/, and Prometheus metrics at /metrics. A non-loopback --http needs the token too:
/// the API and /metrics then require `Authorization: Bearer <token>`, and the page asks for it.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 stopped by SIGINT or SIGTERM; 2 usage, IO or configuration error (a bad address,
a port in use, an unusable store).

Examples:
  cohort serve --store file:///var/lib/bank/checkpoints --interval 5s --keep 10
  cohort serve --store file:///var/lib/bank/checkpoints --interval 5s --http 127.0.0.1:8080
  cohort serve --store s3://bank-checkpoints/prod --listen 0.0.0.0:7411 --advertise 10.0.0.5:7411 --tls-cert certs/coord-1.pem --tls-key certs/coord-1.key --tls-ca certs/ca.pem
  cohort serve --store s3://bank-checkpoints/prod --listen 10.0.0.5:7411 --lease 3s --http 10.0.0.5:8080 --token \"$TOKEN\"")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// Where nodes connect.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    listen: SocketAddr,

    /// The address nodes, standbys and the CLI dial to reach this coordinator (HOST:PORT), when
    /// it is not the --listen address: required with --listen 0.0.0.0:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,

    /// Take a checkpoint this often, from 100ms up; without it, only on `cohort checkpoint
    /// --now`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    interval: Option<Duration>,

    /// Leave at least this long between the end of one checkpoint attempt and the start of the
    /// next.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    min_pause: Duration,

    /// Consecutive failed checkpoint attempts tolerated before the cohort is reported unhealthy
    /// (`cohort status`, the dashboard).
    #[arg(long, value_name = "N", default_value_t = 0)]
    tolerable_failures: u32,

    /// Restarts of the cohort from its line that failed objects (a handler that returned an
    /// error or panicked) may cause within --restart-window; one more failure halts the cohort
    /// (`cohort status` names the object and the error).
    #[arg(long, value_name = "N", default_value_t = RestartPolicy::default().max_restarts)]
    max_restarts: u32,

    /// The sliding window --max-restarts counts in.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    restart_window: Duration,

    /// The wait before a restart; it doubles with each restart still in the window, up to 20
    /// times it.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    restart_backoff: Duration,

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

    /// The shared token nodes must prove they hold; off loopback, this or TLS is required.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,

    #[command(flatten)]
    tls: TlsArgs,

    /// Serve the dashboard at http://ADDR/, its JSON under /api/ and Prometheus metrics at
    /// /metrics (--metrics is another name for it). Off loopback it needs the token, which
    /// requests must send as `Authorization: Bearer <token>`.
    #[arg(long, visible_alias = "metrics", value_name = "ADDR")]
    http: Option<SocketAddr>,

    /// A host name the HTTP port answers to besides IP addresses and localhost (repeatable):
    /// requests naming any other Host are refused, against DNS rebinding.
    #[arg(long, value_name = "NAME", requires = "http")]
    http_host: Vec<String>,

    /// Keep the newest N checkpoints (and the pinned ones, and the recovery line) and collect
    /// the others after commits, while leading. Without it nothing is collected.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,

    /// With --keep, also keep every checkpoint created less than this long ago.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "keep")]
    keep_for: Option<Duration>,

    /// Collect at most this often. Each collection verifies the recovery line's blobs, so keep
    /// it well above the time that takes.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    gc_interval: Duration,

    /// Accept a store that failed the create-if-absent probe. Unsafe with more than one
    /// coordinator: fencing needs create-if-absent.
    #[arg(long)]
    allow_unsafe_store: bool,
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
    if let Some(at) = args.http
        && !at.ip().is_loopback()
        && token.is_none()
    {
        return Err(Failure::usage(format!(
            "--http {at} is not a loopback address, and no token was given"
        ))
        .hint("pass --token (or COHORT_TOKEN): off loopback the API and /metrics require it as a bearer token")
        .into());
    }
    if let Some(interval) = args.interval.filter(|i| *i < MIN_INTERVAL) {
        return Err(Failure::usage(format!(
            "--interval {} is too short",
            humantime::format_duration(interval)
        ))
        .hint(format!(
            "use {} or more: every checkpoint writes a manifest and waits for every node",
            humantime::format_duration(MIN_INTERVAL)
        ))
        .into());
    }
    // Checked before the port is taken (the bound port replaces a --listen port 0 below).
    let advertise_failure = |e: cohort_wire::Error| {
        Failure::usage(e.to_string()).hint(
            "pass --advertise HOST:PORT: the address nodes, standbys and the CLI dial to reach this coordinator",
        )
    };
    advertised_address(args.listen, args.advertise.as_deref()).map_err(advertise_failure)?;
    let store = store::open_writable(&args.store, args.allow_unsafe_store).await?;
    // Bound first, so that a port in use fails before anything starts.
    let http_listener = match args.http {
        Some(at) => Some(
            HttpListener::bind(at)
                .await
                .map_err(|e| Failure::usage(e.to_string()))?,
        ),
        None => None,
    };

    let mut config = ServiceConfig::new(args.listen);
    let announce_token = token.clone();
    config.listen.token = token;
    let tls = args.tls.config()?;
    config.listen.tls.clone_from(&tls);
    config.interval = args.interval;
    config.timeout = args.timeout;
    config.heartbeat_interval = args.heartbeat;
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.lead_at_start = false;
    config.min_pause = args.min_pause;
    config.tolerable_failures = args.tolerable_failures;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if args.restart_window.is_zero() {
        return Err(Failure::usage("--restart-window must be positive")
            .hint("restarts are counted within it; use e.g. 60s")
            .into());
    }
    config.restart = RestartPolicy {
        max_restarts: args.max_restarts,
        window_ms: ms(args.restart_window),
        backoff_ms: ms(args.restart_backoff),
        max_backoff_ms: ms(args.restart_backoff).saturating_mul(20),
    };
    // Fault-injection drills and tests arm the core's fail points here (crash, or stop the
    // process as a pause would), as they arm the in-process runtime's.
    if let Ok(spec) = std::env::var(FAIL_POINTS_ENV) {
        config.fail_points = FailPoints::parse(&spec).map_err(|e| {
            Failure::usage(format!("{FAIL_POINTS_ENV}: {e}"))
                .hint("unset it; it is for fault-injection drills only")
        })?;
        say(format_args!(
            "fail points armed from {FAIL_POINTS_ENV}: {spec}"
        ));
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
        .hint("check that the port is free and, for a non-loopback address, pass --tls-cert, --tls-key and --tls-ca (or --token on a trusted network)")
    })?;
    let addr = advertised_address(service.local_addr(), args.advertise.as_deref())
        .map_err(advertise_failure)?;

    let stop = CancellationToken::new();
    if let Some(listener) = http_listener {
        let bound = listener.local_addr();
        let url = http::dashboard_url(bound, &addr);
        responder.set_dashboard(&url);
        let clock = Clock::system();
        let watch = StoreWatch::new(store.clone(), clock.clone());
        tokio::spawn(watch.clone().run(stop.clone()));
        let dashboard = Dashboard {
            responder: responder.clone(),
            metrics: metrics.clone(),
            store: watch,
            settings: Settings {
                lease_ms: millis(args.lease),
                interval_ms: args.interval.map(millis),
                heartbeat_timeout_ms: millis(args.heartbeat_timeout),
            },
            clock,
        };
        // The token is required of HTTP requests off loopback only, as on the wire port.
        let guard = Guard::new(
            &args.http_host,
            args.token
                .as_deref()
                .filter(|_| !bound.ip().is_loopback())
                .map(str::as_bytes),
        );
        say(format_args!(
            "dashboard at {url} (JSON under /api/, metrics at http://{bound}/metrics)"
        ));
        tokio::spawn(listener.serve(http::router(dashboard, guard), stop.clone()));
    }

    let leadership_config = LeadershipConfig::new(args.lease, Some(addr.clone()))?;
    let holder = leadership_config.holder.clone();
    let leadership = Leadership::spawn(store.clone(), leadership_config);
    responder.attach_at(service.clone(), leadership.clone(), holder.clone(), &addr);
    // Standbys tell the leader they are there, and learn its status for the dashboard.
    {
        let mut connect = ConnectConfig::new(Role::Cli, holder.clone());
        connect.token.clone_from(&announce_token);
        connect.tls = tls;
        let responder = responder.clone();
        let stop = stop.clone();
        tokio::spawn(async move { responder.announce(connect, stop).await });
    }
    let bound = match service.local_addr().to_string() {
        bound if bound == addr => String::new(),
        bound => format!(" (listening on {bound})"),
    };
    say(format_args!(
        "coordinator {holder}: nodes connect to {addr}{bound}; store {}; lease {}",
        store.url(),
        humantime::format_duration(args.lease)
    ));
    if let Some(keep) = args.keep {
        let mut retention = Retention::newest(usize::try_from(keep).unwrap_or(usize::MAX));
        if let Some(window) = args.keep_for {
            retention = retention.within(window);
        }
        say(format_args!(
            "retention: keeping the newest {keep} checkpoints{}, the pinned ones and the recovery line; collecting at most every {}",
            args.keep_for
                .map(|w| format!(" and those of the last {}", humantime::format_duration(w)))
                .unwrap_or_default(),
            humantime::format_duration(args.gc_interval)
        ));
        tokio::spawn(collect(
            store.clone(),
            service.clone(),
            leadership.clone(),
            retention,
            args.gc_interval,
            stop.clone(),
        ));
    }

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

/// Collects old checkpoints after commits, while this coordinator leads: at most every `every`,
/// and once more after the last commit seen (a trailing run), so that the store settles at
/// what `retention` keeps. A failed collection is reported and retried after the next commit.
async fn collect(
    store: CheckpointStore,
    service: Service,
    leadership: Leadership,
    retention: Retention,
    every: Duration,
    stop: CancellationToken,
) {
    let mut status = service.status();
    let mut collected_through = CheckpointId::ZERO;
    let mut last_run: Option<tokio::time::Instant> = None;
    loop {
        let newer = tokio::select! {
            () = stop.cancelled() => return,
            newer = status.wait_for(|s| s.last_committed > collected_through) => newer.is_ok(),
        };
        if !newer {
            return;
        }
        if let Some(at) = last_run {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(at + every) => {}
            }
        }
        let newest = status.borrow().last_committed;
        if leadership.view().serving_epoch().is_none() {
            // A standby collects nothing: the leader does.
            collected_through = newest;
            continue;
        }
        last_run = Some(tokio::time::Instant::now());
        match store.gc_with(retention, store::now_ms(), false).await {
            Ok(report) => {
                collected_through = newest;
                if !report.expired.is_empty() || !report.deleted.is_empty() {
                    tracing::info!(
                        expired = report.expired.len(),
                        deleted = report.deleted.len(),
                        bytes_freed = report.bytes_freed,
                        retained = ?report.retained,
                        "retention collected old checkpoints"
                    );
                }
            }
            Err(e) => {
                collected_through = newest;
                say(format_args!(
                    "retention: cannot collect old checkpoints: {e}; retrying after the next commit"
                ));
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Tells the operator (and the metrics and history) what the coordinator just did.
fn tell(metrics: &ServiceMetrics, t: Transition) {
    metrics.record_transition(&t);
    match t {
        Transition::Leading { epoch, fence } => match fence {
            Some(id) => say(format_args!(
                "leading under epoch {epoch}: fenced the previous epochs with checkpoint {id}"
            )),
            None => say(format_args!(
                "leading under epoch {epoch}: no committed checkpoint to fence"
            )),
        },
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
            say(format_args!("stepped down from epoch {epoch}"));
        }
        Transition::Following { leader } => match leader {
            Some(record) => say(format_args!(
                "standby: epoch {} is held by {} at {}",
                record.epoch,
                record.holder,
                record.address.as_deref().unwrap_or("an unknown address")
            )),
            // Before any epoch was claimed, and while this coordinator claims the next one.
            None => say(format_args!(
                "standby: no leader to follow (no epoch claimed yet, or claiming one)"
            )),
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
