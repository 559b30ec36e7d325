//! COLD_PASSIVE: one primary logs and executes; no backup runs. When the primary is lost, a
//! [`ColdSupervisor`] runs a user-supplied [`Launcher`] to start a replacement.
//!
//! The replacement is an ordinary [`ReplicatedServer`](crate::server::ReplicatedServer)
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

use super::ReplicationStyle;
use crate::Error;
use crate::member::MemberOptions;
use crate::monitor::{Monitor, MonitorOptions};
use crate::server::ServerOptions;

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

    /// The same launcher with `key=value` added to a command's environment (a closure is
    /// returned unchanged).
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Self::Command { env, .. } = &mut self {
            env.push((key.into(), value.into()));
        }
        self
    }

    /// Starts one replacement. A command is detached: it is reaped when it exits, and never
    /// killed.
    ///
    /// # Errors
    ///
    /// [`Error::Launch`] when the process cannot be spawned or the closure fails.
    pub async fn launch(&self) -> Result<(), Error> {
        if let Some(mut child) = self.start().await? {
            // Reap the child when it exits, so that it does not linger as a zombie.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Ok(())
    }

    /// Starts one replacement; a command's child process is returned for the caller to reap.
    async fn start(&self) -> Result<Option<tokio::process::Child>, Error> {
        match self {
            Self::Command { program, args, env } => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
                let child = cmd.spawn().map_err(|e| Error::Launch {
                    reason: format!("cannot spawn {program}: {e}"),
                })?;
                Ok(Some(child))
            }
            Self::Closure(f) => f()
                .await
                .map(|()| None)
                .map_err(|reason| Error::Launch { reason }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Command { program, .. } => program.clone(),
            Self::Closure(_) => "the launch closure".to_owned(),
        }
    }
}

/// What a [`ColdSupervisor`] sees and has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupervisorStatus {
    /// The active members its monitor counts now.
    pub active: usize,
    /// Replacements launched: the command was spawned, or the closure returned `Ok`.
    pub launches: u64,
    /// Launch attempts that failed (the command could not be spawned, the closure returned
    /// `Err`), and launched commands that exited unsuccessfully.
    pub failures: u64,
    /// The latest failure, with the launcher's reason; cleared by the next successful launch.
    pub last_error: Option<String>,
}

/// Watches a cold-passive group with a passive [`Monitor`] and launches a replacement whenever
/// fewer than `goal` members have been active for `grace` (and again every `grace` while that
/// lasts: a launch that failed, or a replacement that did not come up, is retried). While the
/// group is at its goal it never launches. Stops when dropped.
///
/// The monitor finds members through its seeds and their heartbeats; a replacement that comes
/// up at another address than the member it replaces is found only if the monitor also reads
/// the activation records: set [`MonitorOptions::discover`] to the group's store.
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
    /// and activate (its process start, one `activation_interval`, the claim and the restore),
    /// or a slow replacement is launched twice (the second then joins as a standby member).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero goal or grace;
    /// the monitor's errors (see [`Monitor::start`](crate::Monitor::start)) if it
    /// cannot start.
    pub fn start(
        monitor: MonitorOptions,
        goal: usize,
        grace: Duration,
        launcher: Launcher,
    ) -> Result<Self, Error> {
        if goal == 0 || grace.is_zero() {
            return Err(Error::InvalidConfig {
                scope: "replicated service",
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

fn fail(status: &watch::Sender<SupervisorStatus>, error: String) {
    tracing::warn!("{error}");
    status.send_modify(|s| {
        s.failures += 1;
        s.last_error = Some(error);
    });
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
    // Mirrors the monitor's count into the status, so that operators see what it decides on.
    let mirror = {
        let (mut counts, status, stop) = (monitor.counts(), status.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let active = counts.borrow_and_update().count;
                status.send_if_modified(|s| std::mem::replace(&mut s.active, active) != active);
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = counts.changed() => if changed.is_err() { return },
                }
            }
        })
    };
    let _mirror = AbortOnDrop(mirror);
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
        match launcher.start().await {
            Ok(child) => {
                tracing::info!("launched a replacement member");
                status.send_modify(|s| {
                    s.launches += 1;
                    s.last_error = None;
                });
                if let Some(mut child) = child {
                    // A command that exits unsuccessfully (a `systemctl start` that failed, a
                    // server that could not start) is a failure too; the next launch comes
                    // after another `grace` without enough active members.
                    let (status, what) = (status.clone(), launcher.describe());
                    tokio::spawn(async move {
                        match child.wait().await {
                            Ok(exit) if exit.success() => {}
                            Ok(exit) => {
                                fail(
                                    &status,
                                    format!("launched {what} exited unsuccessfully ({exit})"),
                                );
                            }
                            Err(e) => fail(&status, format!("waiting for launched {what}: {e}")),
                        }
                    });
                }
            }
            Err(err) => fail(&status, err.to_string()),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
