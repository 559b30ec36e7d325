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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cohort_coordinator::service::control::{
    ControlHandler, ControlReply, ControlRequest, StatusReport,
};
use cohort_coordinator::service::leadership::{Leadership, LeadershipConfig, Role, View};
use cohort_coordinator::service::metrics::{MetricsEndpoint, ServiceMetrics};
use cohort_coordinator::service::{Service, ServiceConfig, ServiceStatus, StateTable};
use cohort_coordinator::wire::{CancellationToken, DEFAULT_PORT, Secret, TOKEN_ENV};
use cohort_object_api::CheckpointId;

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
    let parts: Arc<OnceLock<Parts>> = Arc::new(OnceLock::new());
    config.control = Some(control_handler(Arc::clone(&parts)));
    let service = Service::start(store.clone(), config).await.map_err(|e| {
        Failure::usage(format!(
            "cannot start the coordinator on {}: {e}",
            args.listen
        ))
        .hint("check that the port is free and, for a non-loopback address, pass --token")
    })?;
    let addr = service.local_addr();

    let metrics = ServiceMetrics::new();
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
    // Set once, here; nothing else sets it.
    let _ = parts.set(Parts {
        service: service.clone(),
        leadership: leadership.clone(),
        holder: holder.clone(),
        address: addr.to_string(),
    });
    say(format_args!(
        "coordinator {holder}: nodes connect to {addr}; store {}; lease {}",
        store.url(),
        humantime::format_duration(args.lease)
    ));

    let mut glue = Glue {
        service,
        leadership,
        metrics,
        leading: None,
        following: None,
        seen: Counters::default(),
        fenced: false,
        attempt: None,
    };
    let outcome = glue.run(shutdown_signal()).await;
    glue.leadership.stop().await;
    glue.service.shutdown();
    stop.cancel();
    outcome?;
    say(format_args!("stopped"));
    Ok(Code::Ok)
}

/// Prints one line of the server's story on stdout (flushed: tests and operators read it as it
/// happens).
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop a coordinator.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The counters of [`ServiceStatus`] already turned into metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    committed: u64,
    aborted: u64,
    recoveries: u64,
}

/// What the glue follows between the leadership driver and the service.
struct Glue {
    service: Service,
    leadership: Leadership,
    metrics: ServiceMetrics,
    /// The epoch the service leads under.
    leading: Option<u64>,
    /// The leader address nodes are sent to while following.
    following: Option<Option<String>>,
    seen: Counters,
    /// Whether the service last reported a fenced commit.
    fenced: bool,
    /// The attempt in flight and when it was first seen, for the duration metric.
    attempt: Option<(CheckpointId, Instant)>,
}

impl Glue {
    async fn run(
        &mut self,
        signal: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let mut views = self.leadership.watch();
        let mut status = self.service.status();
        tokio::pin!(signal);
        self.on_view(views.borrow_and_update().clone()).await;
        loop {
            tokio::select! {
                stopped = &mut signal => {
                    stopped?;
                    say(format_args!("stopping: {}", match self.leading {
                        Some(e) => format!("stepping down from epoch {e}; a standby takes over after the lease"),
                        None => "standby".to_owned(),
                    }));
                    return Ok(());
                }
                changed = views.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the leadership driver stopped unexpectedly");
                    }
                    let view = views.borrow_and_update().clone();
                    self.on_view(view).await;
                }
                changed = status.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the coordinator service stopped unexpectedly");
                    }
                    let now = status.borrow_and_update().clone();
                    self.on_status(&now);
                }
            }
        }
    }

    async fn on_view(&mut self, view: View) {
        match (view.serving_epoch(), self.leading) {
            (Some(epoch), Some(current)) if epoch == current => {}
            (Some(epoch), _) => {
                let fence = view.fence.clone();
                let line = fence.as_ref().map(|f| f.id);
                if let Err(e) = self.service.lead(epoch, fence).await {
                    say(format_args!(
                        "cannot lead under epoch {epoch}: {e}; stepping down"
                    ));
                    self.leadership
                        .deposed(epoch, format!("the service could not start leading: {e}"));
                    return;
                }
                self.leading = Some(epoch);
                self.following = None;
                self.metrics.set_leader(Some(epoch));
                match line {
                    Some(id) => say(format_args!(
                        "leading under epoch {epoch}: fenced the previous epochs with checkpoint {id}"
                    )),
                    None => say(format_args!(
                        "leading under epoch {epoch}: no committed checkpoint to fence"
                    )),
                }
                self.retry_after_takeover(epoch);
            }
            (None, _) => {
                let leader = view.leader_address().map(str::to_owned);
                if let Some(epoch) = self.leading.take() {
                    self.metrics.set_leader(None);
                    say(format_args!("stepped down from epoch {epoch}"));
                }
                if self.following.as_ref() != Some(&leader) {
                    if let Role::Following {
                        leader: Some(record),
                    } = &view.role
                    {
                        say(format_args!(
                            "standby: epoch {} is held by {} at {}",
                            record.epoch,
                            record.holder,
                            record.address.as_deref().unwrap_or("an unknown address")
                        ));
                    }
                    self.service.follow(leader.clone());
                    self.following = Some(leader);
                }
            }
        }
    }

    /// A checkpoint in flight under the previous leader was aborted by the change: take one now
    /// rather than waiting for the next interval. Retried while this epoch leads, since the
    /// nodes need a moment to find the new leader.
    fn retry_after_takeover(&self, epoch: u64) {
        let service = self.service.clone();
        let views = self.leadership.watch();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(50);
            for _ in 0..40 {
                if views.borrow().serving_epoch() != Some(epoch) {
                    return;
                }
                match service.trigger().await {
                    Ok(id) => {
                        say(format_args!(
                            "checkpoint {id} committed under epoch {epoch}"
                        ));
                        return;
                    }
                    Err(cohort_coordinator::Error::Fenced { .. }) => return,
                    Err(e) => {
                        tracing::debug!(epoch, error = %e, "first checkpoint after taking over; retrying")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        });
    }

    fn on_status(&mut self, now: &ServiceStatus) {
        if now.fenced && !self.fenced {
            // Said whether or not the lease already made us step down: the commit was refused.
            say(format_args!(
                "a commit was fenced: a newer coordinator took over the store{}",
                if self.leading.is_some() {
                    "; stepping down"
                } else {
                    ""
                }
            ));
            if let Some(epoch) = self.leading {
                self.leadership
                    .deposed(epoch, "a commit found a newer epoch's manifest (fenced)");
            }
        }
        self.fenced = now.fenced;
        match (now.in_flight, self.attempt) {
            (Some((id, _)), Some((tracked, _))) if id == tracked => {}
            (Some((id, _)), _) => self.attempt = Some((id, Instant::now())),
            (None, _) => {}
        }
        let m = &self.metrics;
        for _ in self.seen.committed..now.committed {
            // The duration of the attempt seen in flight; none when it came and went between
            // two looks at the status.
            let took = match self.attempt.take() {
                Some((id, started)) if id <= now.last_committed => Some(started.elapsed()),
                other => {
                    self.attempt = other;
                    None
                }
            };
            m.record_committed(took, None);
        }
        for _ in self.seen.aborted..now.aborted {
            m.record_aborted();
        }
        for _ in self.seen.recoveries..now.recoveries {
            m.record_recovery();
        }
        if now.in_flight.is_none() {
            self.attempt = None;
        }
        self.seen = Counters {
            committed: now.committed,
            aborted: now.aborted,
            recoveries: now.recoveries,
        };
    }
}

type MetadataHook = Arc<dyn Fn(&StateTable) -> BTreeMap<String, Vec<u8>> + Send + Sync>;

/// What the control handler needs: the service, the leadership driver and who we are.
struct Parts {
    service: Service,
    leadership: Leadership,
    holder: String,
    address: String,
}

/// Answers `cohort status` and `cohort checkpoint --now`. Any coordinator reports its own
/// status; only the leader takes checkpoints, a standby points at it.
fn control_handler(parts: Arc<OnceLock<Parts>>) -> ControlHandler {
    Arc::new(move |request| {
        let parts = Arc::clone(&parts);
        Box::pin(async move {
            let Some(p) = parts.get() else {
                return ControlReply::Failed {
                    reason: "the coordinator is starting; retry in a moment".into(),
                };
            };
            let view = p.leadership.view();
            let leading = view.serving_epoch();
            match request {
                ControlRequest::Status => ControlReply::Status(Box::new(status_report(p, &view))),
                ControlRequest::Checkpoint if leading.is_none() => ControlReply::NotLeader {
                    leader: view.leader_address().map(str::to_owned),
                },
                ControlRequest::Checkpoint => match p.service.trigger().await {
                    Ok(id) => ControlReply::Checkpointed { id },
                    Err(e) => ControlReply::Failed {
                        reason: e.to_string(),
                    },
                },
                // A request of a newer CLI.
                _ => ControlReply::Failed {
                    reason: format!(
                        "{} requests are not supported by this coordinator; upgrade it",
                        request
                    ),
                },
            }
        })
    })
}

fn status_report(p: &Parts, view: &View) -> StatusReport {
    let status = p.service.status().borrow().clone();
    let mut report = StatusReport::new(&p.holder, &p.address);
    match &view.role {
        Role::Leading { epoch, serving } => {
            report.leading = *serving;
            report.epoch = Some(*epoch);
            report.leader = Some(p.address.clone());
        }
        Role::Claiming { epoch } => report.epoch = Some(*epoch),
        Role::Following { leader } => {
            report.epoch = leader.as_ref().map(|r| r.epoch);
            report.leader = leader.as_ref().and_then(|r| r.address.clone());
        }
        _ => {}
    }
    report.last_committed = status.last_committed;
    report.in_flight = status
        .in_flight
        .map(|(id, round)| (id, format!("e{}-{round}", report.epoch.unwrap_or(0))));
    report.committed = status.committed;
    report.aborted = status.aborted;
    report.recoveries = status.recoveries;
    report.table = status.table;
    report
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
