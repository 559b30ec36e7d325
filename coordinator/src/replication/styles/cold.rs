//! COLD_PASSIVE: one primary logs and executes; no backup runs. When the primary is lost, a
//! [`ColdSupervisor`] runs a user-supplied [`Launcher`] to start a replacement.
//!
//! The replacement is an ordinary [`ReplicatedServer`](crate::replication::server::ReplicatedServer)
//! of style [`ReplicationStyle::ColdPassive`]: once the group activates it, it restores the
//! recovery line (the newest checkpoint on the store), replays the log since, and serves.
//! Nothing is lost for the reason given in the [`warm`](super::warm) style; the failover is
//! slower by the launch and the full restore.
//!
//! The launcher is a closure or a command line, so the replacement can be a plain process, a
//! `systemctl start` or a `kubectl scale`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ReplicationStyle, ServiceError};
use crate::replication::member::MemberOptions;
use crate::replication::monitor::{Monitor, MonitorOptions};
use crate::replication::server::ServerOptions;

/// Server options for the cold passive style.
pub fn options(member: MemberOptions) -> ServerOptions {
    ServerOptions::new(ReplicationStyle::ColdPassive, member)
}

/// The future a [`Launcher::Closure`] returns.
pub type LaunchFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Starts a replacement member.
#[derive(Clone)]
#[non_exhaustive]
pub enum Launcher {
    /// Spawns `program` with `args` (and `env` added to the environment), detached: the
    /// supervisor does not wait for it or kill it.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: Vec<(String, String)>,
    },
    /// Runs a closure; an `Err` is reported and the launch is retried later.
    Closure(Arc<dyn Fn() -> LaunchFuture + Send + Sync>),
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command { program, args, .. } => f
                .debug_struct("Command")
                .field("program", program)
                .field("args", args)
                .finish_non_exhaustive(),
            Self::Closure(_) => f.write_str("Closure(..)"),
        }
    }
}

impl Launcher {
    /// A launcher that runs `program args...`.
    pub fn command(program: impl Into<String>, args: impl IntoIterator<Item = String>) -> Self {
        Self::Command {
            program: program.into(),
            args: args.into_iter().collect(),
            env: Vec::new(),
        }
    }

    /// Starts one replacement.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Launch`] when the process cannot be spawned or the closure fails.
    pub async fn launch(&self) -> Result<(), ServiceError> {
        match self {
            Self::Command { program, args, env } => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
                let mut child = cmd.spawn().map_err(|e| ServiceError::Launch {
                    reason: format!("cannot spawn {program}: {e}"),
                })?;
                // Reap the child when it exits, so that it does not linger as a zombie.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                Ok(())
            }
            Self::Closure(f) => f().await.map_err(|reason| ServiceError::Launch { reason }),
        }
    }
}

/// What a [`ColdSupervisor`] has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupervisorStatus {
    /// Replacements launched.
    pub launches: u64,
    /// The last launch failure.
    pub last_error: Option<String>,
}

/// Watches a cold-passive group with a passive [`Monitor`] and launches a replacement whenever
/// fewer than `goal` members have been active for `grace` (and again every `grace` while that
/// lasts). Stops when dropped.
#[derive(Debug)]
pub struct ColdSupervisor {
    status: watch::Receiver<SupervisorStatus>,
    stop: CancellationToken,
}

impl Drop for ColdSupervisor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ColdSupervisor {
    /// Starts supervising: `monitor` says which group and where its members are, `goal` is the
    /// group's `active_goal`, and `grace` should exceed the time a replacement takes to start
    /// and activate.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidConfig`] for a zero goal or grace;
    /// [`ServiceError::Replication`] if the monitor cannot start.
    pub fn start(
        monitor: MonitorOptions,
        goal: usize,
        grace: Duration,
        launcher: Launcher,
    ) -> Result<Self, ServiceError> {
        if goal == 0 || grace.is_zero() {
            return Err(ServiceError::InvalidConfig {
                reason: format!(
                    "supervisor goal ({goal}) and grace ({grace:?}) must be above zero"
                ),
            });
        }
        let monitor = Monitor::start(monitor)?;
        let (tx, status) = watch::channel(SupervisorStatus::default());
        let stop = CancellationToken::new();
        tokio::spawn(supervise(monitor, goal, grace, launcher, tx, stop.clone()));
        Ok(Self { status, stop })
    }

    /// A receiver of the supervisor's status.
    pub fn status(&self) -> watch::Receiver<SupervisorStatus> {
        self.status.clone()
    }
}

async fn supervise(
    monitor: Monitor,
    goal: usize,
    grace: Duration,
    launcher: Launcher,
    status: watch::Sender<SupervisorStatus>,
    stop: CancellationToken,
) {
    let mut counts = monitor.counts();
    loop {
        // Wait until the group is short of members.
        while counts.borrow_and_update().count >= goal {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = counts.changed() => if changed.is_err() { return },
            }
        }
        // Short for `grace` without recovering: launch.
        let recovered = tokio::select! {
            () = stop.cancelled() => return,
            recovered = tokio::time::timeout(grace, counts.wait_for(|c| c.count >= goal)) => recovered.is_ok(),
        };
        if recovered {
            continue;
        }
        let launched = launcher.launch().await;
        status.send_modify(|s| {
            s.launches += 1;
            s.last_error = launched.as_ref().err().map(ToString::to_string);
        });
        match launched {
            Ok(()) => tracing::info!("launched a replacement member"),
            Err(err) => tracing::warn!("{err}"),
        }
    }
}
