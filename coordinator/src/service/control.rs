//! Control requests from the `cohort` CLI (wire role `cli`) on the coordinator's node port:
//! `cohort status` and `cohort checkpoint --now`.
//!
//! A CLI connection sends [`NodeFrame::Control`] frames and gets one
//! [`CoordinatorFrame::Control`] answer for each. What a request does is up to the process that
//! runs the service (`cohort serve` knows the leadership view as well as the service): it
//! installs a [`ControlHandler`] in [`ServiceConfig::control`](super::ServiceConfig::control).
//! A standby answers [`ControlReply::NotLeader`] with the leader's address, which
//! [`request`] follows.
//!
//! Standbys also announce themselves to the leader ([`ControlRequest::Announce`], every
//! [`ANNOUNCE_EVERY`], see [`Responder::announce`]), so that the leader's status lists its
//! standbys and a standby knows the leader's status (and its dashboard's address) to show.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cohort_object_api::{CheckpointId, ObjectId};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Service;
use super::leadership::{Leadership, Role as LeaderRole, View};
use super::protocol::{CoordinatorFrame, NodeFrame};
use super::table::StateTable;
use crate::error::{Error, Result};
use cohort_wire::{ConnectConfig, Connection, Role};

/// How long a CLI connection may stay idle between requests.
const IDLE: Duration = Duration::from_secs(30);

/// How many "not leader" answers [`request`] follows before giving up.
const MAX_HOPS: usize = 4;

/// How often a standby announces itself to the leader.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// A standby not heard from for this long is no longer listed, and a standby drops the
/// leader's status it heard this long ago.
const ANNOUNCE_EXPIRY: Duration = Duration::from_secs(5);

/// What the CLI asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ControlRequest {
    /// Where the coordinator stands: [`ControlReply::Status`].
    Status,
    /// Take a checkpoint now and answer once it committed: [`ControlReply::Checkpointed`].
    Checkpoint,
    /// A standby says it is there; the leader answers with its [`ControlReply::Status`] and
    /// lists the standby in its status for a while ([`ANNOUNCE_EVERY`]).
    Announce(StandbyReport),
    /// Drain a node (`cohort drain`): [`ControlReply::Draining`], then its objects move at the
    /// next checkpoint, which this request triggers.
    Drain {
        /// The node's name.
        node: String,
    },
    /// Roll the cohort back to its newest line now (`cohort recover`), which also ends a halt
    /// beyond the restart policy: [`ControlReply::Recovered`] once it is done.
    Recover,
    /// Remove an object from the cohort (`cohort remove`): [`ControlReply::Removing`], then
    /// it is removed right after the next checkpoint, which this request triggers.
    Remove {
        /// The object's id.
        object: ObjectId,
    },
}

/// A standby, as it announces itself to the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StandbyReport {
    /// Its name (its epoch holder name, should it take over).
    pub holder: String,
    /// Where it accepts nodes.
    pub address: String,
    /// Its dashboard's URL, if it serves one.
    pub dashboard: Option<String>,
}

impl StandbyReport {
    /// A report of the standby `holder` at `address`.
    pub fn new(holder: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            address: address.into(),
            dashboard: None,
        }
    }
}

/// The coordinator's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ControlReply {
    /// The status asked for.
    Status(Box<StatusReport>),
    /// The checkpoint committed.
    Checkpointed {
        /// Its id.
        id: CheckpointId,
    },
    /// The request could not be carried out.
    Failed {
        /// Why, and what to do.
        reason: String,
    },
    /// The node is draining; its objects move at checkpoint `at` (committed already).
    Draining {
        /// The node.
        node: String,
        /// The checkpoint whose commit moved its objects.
        at: CheckpointId,
    },
    /// The cohort recovered: every node restored `line`, under the fence `fence`.
    Recovered {
        /// The line restored (`None`: nothing was ever committed).
        line: Option<CheckpointId>,
        /// The fence written over it.
        fence: Option<CheckpointId>,
    },
    /// The object is removed right after checkpoint `at` (committed already), the last line
    /// that holds it.
    Removing {
        /// The object.
        object: ObjectId,
        /// The last checkpoint that holds it.
        at: CheckpointId,
    },
    /// This coordinator does not lead; ask `leader`, if known.
    NotLeader {
        /// The leader's address.
        leader: Option<String>,
    },
}

/// A coordinator's view of itself and its cohort.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusReport {
    /// The coordinator's name (its epoch holder name).
    pub holder: String,
    /// Where nodes reach it.
    pub address: String,
    /// Whether it leads.
    pub leading: bool,
    /// The epoch it leads under, or the newest epoch it saw while standing by.
    pub epoch: Option<u64>,
    /// The leader's address (its own when leading).
    pub leader: Option<String>,
    /// The newest manifest id it knows.
    pub last_committed: CheckpointId,
    /// The attempt in flight: checkpoint id and round token.
    pub in_flight: Option<(CheckpointId, String)>,
    /// Checkpoints committed by this process.
    pub committed: u64,
    /// Attempts aborted.
    pub aborted: u64,
    /// Cohort recoveries run.
    pub recoveries: u64,
    /// The cohort led is healthy: no more checkpoint attempts failed in a row than its
    /// `tolerable_failures`. False while not leading.
    #[serde(default)]
    pub healthy: bool,
    /// Checkpoint attempts of the cohort led that failed in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Nodes, objects and placement.
    pub table: StateTable,
    /// Why the cohort led halted beyond its restart policy, while it is halted for that.
    #[serde(default)]
    pub halt: Option<crate::engine::Halt>,
    /// The standbys that announced themselves recently (a leader's report only).
    #[serde(default)]
    pub standbys: Vec<StandbyReport>,
    /// The URL of this coordinator's dashboard, if it serves one.
    #[serde(default)]
    pub dashboard: Option<String>,
}

impl StatusReport {
    /// A report filled in field by field (the struct is non-exhaustive).
    pub fn new(holder: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            address: address.into(),
            ..Self::default()
        }
    }
}

/// Answers control requests; installed by the process that runs the service.
pub type ControlHandler =
    Arc<dyn Fn(ControlRequest) -> BoxFuture<'static, ControlReply> + Send + Sync>;

/// Serves one CLI connection: one answer per request, until the CLI closes, goes idle, or the
/// service stops.
pub(crate) async fn serve(
    mut conn: Connection<NodeFrame, CoordinatorFrame, cohort_wire::BoxStream>,
    stop: CancellationToken,
    handler: Option<ControlHandler>,
) -> std::result::Result<(), Error> {
    let who = conn.peer().name.clone();
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            frame = tokio::time::timeout(IDLE, conn.recv()) => frame,
        };
        let request = match frame {
            Err(_) | Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Some(NodeFrame::Control(request)))) => request,
            Ok(Ok(Some(NodeFrame::Heartbeat))) => continue,
            Ok(Ok(Some(_))) => {
                tracing::warn!(cli = %who, "a cli connection sent a node frame; closed");
                return Ok(());
            }
        };
        let reply = match &handler {
            Some(handle) => handle(request).await,
            None => ControlReply::Failed {
                reason: "this coordinator takes no control requests".into(),
            },
        };
        conn.send(&CoordinatorFrame::Control(reply)).await?;
    }
}

/// Sends `request` to the first coordinator of `addrs` that answers, following "not leader"
/// answers to the leader. `config` is the CLI's side of the handshake (role `cli`, token).
///
/// # Errors
///
/// A wire error such as [`Error::Wire`] ([`Connect`](cohort_wire::Error::Connect)) when no coordinator could be reached (the last
/// failure), [`Error::InvalidConfig`] when `addrs` is empty or the leader could not be found.
pub async fn request(
    addrs: &[String],
    config: &ConnectConfig,
    request: ControlRequest,
) -> Result<ControlReply> {
    let mut config = config.clone();
    config.role = Role::Cli;
    config.accept_roles = vec![Role::Coordinator];
    let mut last: Option<Error> = None;
    let mut queue: Vec<String> = addrs.to_vec();
    let mut hops = 0;
    let mut tried = Vec::new();
    let mut standby = None;
    while let Some(addr) = (!queue.is_empty()).then(|| queue.remove(0)) {
        if tried.contains(&addr) {
            continue;
        }
        tried.push(addr.clone());
        let mut conn = match config
            .connect::<CoordinatorFrame, NodeFrame>(addr.as_str())
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                last = Some(e.into());
                continue;
            }
        };
        conn.send(&NodeFrame::Control(request.clone())).await?;
        let reply = loop {
            match conn.recv().await? {
                Some(CoordinatorFrame::Control(reply)) => break Some(reply),
                Some(CoordinatorFrame::Heartbeat) => continue,
                Some(_) | None => break None,
            }
        };
        let _ = conn.close().await;
        match reply {
            Some(ControlReply::NotLeader {
                leader: Some(leader),
            }) if hops < MAX_HOPS && !tried.contains(&leader) => {
                hops += 1;
                queue.insert(0, leader);
            }
            // A standby whose leader cannot be followed: another address may still lead.
            Some(reply @ ControlReply::NotLeader { .. }) => standby = Some(reply),
            Some(reply) => return Ok(reply),
            None => {
                last = Some(Error::invalid_settings(format!(
                    "{addr} closed the connection without answering; is it a cohort coordinator of this version?"
                )));
            }
        }
    }
    if let Some(reply) = standby {
        return Ok(reply);
    }
    Err(last.unwrap_or_else(|| {
        Error::invalid_settings("no coordinator address given; pass at least one")
    }))
}

impl fmt::Display for ControlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Status => "status",
            Self::Checkpoint => "checkpoint",
            Self::Announce(_) => "announce",
            Self::Drain { .. } => "drain",
            Self::Remove { .. } => "remove",
            Self::Recover => "recover",
        })
    }
}

/// The standard answers of a coordinator run with a [`Leadership`] driver (what `cohort serve`
/// installs): any coordinator reports its own status, only the leader takes checkpoints, and a
/// standby points at the leader. Cheap to clone.
///
/// The handler must be in the [`ServiceConfig`](super::ServiceConfig) before the service
/// starts, and the service is needed to answer: make the responder, install
/// [`handler`](Self::handler), start the service and the driver, then
/// [`attach`](Self::attach) them. Requests before that are told to retry.
#[derive(Clone, Default)]
pub struct Responder {
    parts: Arc<OnceLock<Parts>>,
    dashboard: Arc<OnceLock<String>>,
    /// Standbys heard from, by holder name, with when.
    standbys: Arc<Mutex<BTreeMap<String, (StandbyReport, Instant)>>>,
    /// On a standby: the leader's answer to its last announcement, with when.
    leader: Arc<Mutex<Option<(StatusReport, Instant)>>>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("attached", &self.parts.get().is_some())
            .finish()
    }
}

struct Parts {
    service: Service,
    leadership: Leadership,
    holder: String,
    /// Where others reach this coordinator: its advertised address.
    address: String,
}

impl Responder {
    /// A responder that is not attached yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches the service and the driver; a second call changes nothing. The status names
    /// the service's bound address as the coordinator's: use [`attach_at`](Self::attach_at)
    /// when others reach it at another (advertised) address.
    pub fn attach(&self, service: Service, leadership: Leadership, holder: impl Into<String>) {
        let address = service.local_addr().to_string();
        self.attach_at(service, leadership, holder, address);
    }

    /// [`attach`](Self::attach), with the address others reach this coordinator at (the one
    /// its epoch records carry) for the status to report.
    pub fn attach_at(
        &self,
        service: Service,
        leadership: Leadership,
        holder: impl Into<String>,
        address: impl Into<String>,
    ) {
        let _ = self.parts.set(Parts {
            service,
            leadership,
            holder: holder.into(),
            address: address.into(),
        });
    }

    /// Sets the URL of this coordinator's dashboard, reported in its status and in its
    /// announcements; a second call changes nothing.
    pub fn set_dashboard(&self, url: impl Into<String>) {
        let _ = self.dashboard.set(url.into());
    }

    /// This coordinator's status, as `cohort status` would be told; `None` until
    /// [`attach`](Self::attach)ed.
    pub fn status(&self) -> Option<StatusReport> {
        let p = self.parts.get()?;
        Some(self.status_report(p, &p.leadership.view()))
    }

    /// On a standby: the leader's status, as the leader answered the last announcement (at
    /// most a few seconds old); `None` on the leader, or when no leader answered lately.
    pub fn leader_status(&self) -> Option<StatusReport> {
        let leader = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        leader
            .as_ref()
            .filter(|(_, at)| at.elapsed() < ANNOUNCE_EXPIRY)
            .map(|(report, _)| report.clone())
    }

    /// While this coordinator stands by behind a leader with a known address, announces it to
    /// the leader every [`ANNOUNCE_EVERY`] and keeps the leader's answer for
    /// [`leader_status`](Self::leader_status); runs until `stop`. `config` is this side of the
    /// handshake (its role is set to `cli`; the token must be the coordinators').
    pub async fn announce(&self, config: ConnectConfig, stop: CancellationToken) {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(p) = self.parts.get() else { continue };
            let view = p.leadership.view();
            // The advertised address: what the epoch records, hence the leader's, carry.
            let own = p.address.clone();
            let Some(leader) = view.leader_address().filter(|a| *a != own) else {
                *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = None;
                continue;
            };
            let mut me = StandbyReport::new(&p.holder, own);
            me.dashboard = self.dashboard.get().cloned();
            let asked = tokio::time::timeout(
                ANNOUNCE_EXPIRY,
                request(&[leader.to_owned()], &config, ControlRequest::Announce(me)),
            )
            .await;
            let heard = match asked {
                Ok(Ok(ControlReply::Status(report))) if report.leading => Some(*report),
                Ok(Ok(other)) => {
                    tracing::debug!(%leader, answer = ?other, "the leader did not take the announcement");
                    None
                }
                Ok(Err(e)) => {
                    tracing::debug!(%leader, error = %e, "cannot announce this standby to the leader");
                    None
                }
                Err(_) => None,
            };
            if let Some(report) = heard {
                *self.leader.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((report, Instant::now()));
            }
        }
    }

    /// The handler to install in [`ServiceConfig::control`](super::ServiceConfig::control).
    pub fn handler(&self) -> ControlHandler {
        let this = self.clone();
        Arc::new(move |request| {
            let this = this.clone();
            Box::pin(async move {
                let Some(p) = this.parts.get() else {
                    return ControlReply::Failed {
                        reason: "the coordinator is starting; retry in a moment".into(),
                    };
                };
                let view = p.leadership.view();
                match request {
                    ControlRequest::Status => {
                        ControlReply::Status(Box::new(this.status_report(p, &view)))
                    }
                    ControlRequest::Announce(_) if view.serving_epoch().is_none() => {
                        ControlReply::NotLeader {
                            leader: view.leader_address().map(str::to_owned),
                        }
                    }
                    ControlRequest::Announce(standby) => {
                        let mut standbys =
                            this.standbys.lock().unwrap_or_else(PoisonError::into_inner);
                        standbys.retain(|_, (_, at)| at.elapsed() < ANNOUNCE_EXPIRY);
                        standbys.insert(standby.holder.clone(), (standby, Instant::now()));
                        drop(standbys);
                        ControlReply::Status(Box::new(this.status_report(p, &view)))
                    }
                    ControlRequest::Checkpoint if view.serving_epoch().is_none() => {
                        ControlReply::NotLeader {
                            leader: view.leader_address().map(str::to_owned),
                        }
                    }
                    ControlRequest::Drain { .. }
                    | ControlRequest::Remove { .. }
                    | ControlRequest::Recover
                        if view.serving_epoch().is_none() =>
                    {
                        ControlReply::NotLeader {
                            leader: view.leader_address().map(str::to_owned),
                        }
                    }
                    ControlRequest::Drain { node } => {
                        if let Err(e) = p.service.drain(&node).await {
                            return ControlReply::Failed {
                                reason: e.to_string(),
                            };
                        }
                        // The move waits for a commit: take one now rather than at the next
                        // interval.
                        match p.service.trigger().await {
                            Ok(at) => ControlReply::Draining { node, at },
                            Err(e) => ControlReply::Failed {
                                reason: format!(
                                    "{node} is draining, but the checkpoint that moves its objects failed ({e}); the next one will"
                                ),
                            },
                        }
                    }
                    ControlRequest::Recover => match p.service.recover().await {
                        Ok(r) => ControlReply::Recovered {
                            line: r.line,
                            fence: r.fence,
                        },
                        Err(e) => ControlReply::Failed {
                            reason: e.to_string(),
                        },
                    },
                    ControlRequest::Remove { object } => {
                        if let Err(e) = p.service.remove(&object).await {
                            return ControlReply::Failed {
                                reason: e.to_string(),
                            };
                        }
                        match p.service.trigger().await {
                            Ok(at) => ControlReply::Removing { object, at },
                            Err(e) => ControlReply::Failed {
                                reason: format!(
                                    "{object} is to be removed, but the checkpoint after which it goes failed ({e}); the next one will remove it"
                                ),
                            },
                        }
                    }
                    ControlRequest::Checkpoint => match p.service.trigger().await {
                        Ok(id) => ControlReply::Checkpointed { id },
                        Err(e) => ControlReply::Failed {
                            reason: e.to_string(),
                        },
                    },
                }
            })
        })
    }
}

impl Responder {
    fn status_report(&self, p: &Parts, view: &View) -> StatusReport {
        let mut report = status_report(p, view);
        report.dashboard = self.dashboard.get().cloned();
        if report.leading {
            let standbys = self.standbys.lock().unwrap_or_else(PoisonError::into_inner);
            report.standbys = standbys
                .values()
                .filter(|(_, at)| at.elapsed() < ANNOUNCE_EXPIRY)
                .map(|(s, _)| s.clone())
                .collect();
        }
        report
    }
}

fn status_report(p: &Parts, view: &View) -> StatusReport {
    let status = p.service.status().borrow().clone();
    let address = p.address.clone();
    let mut report = StatusReport::new(&p.holder, &address);
    match &view.role {
        LeaderRole::Leading { epoch, serving } => {
            report.leading = *serving;
            report.epoch = Some(*epoch);
            report.leader = Some(address);
        }
        LeaderRole::Claiming { epoch } => report.epoch = Some(*epoch),
        LeaderRole::Following { leader } => {
            report.epoch = leader.as_ref().map(|r| r.epoch);
            report.leader = leader.as_ref().and_then(|r| r.address.clone());
        }
        LeaderRole::Stopped => {}
    }
    report.last_committed = status.last_committed;
    report.in_flight = status
        .in_flight
        .map(|(id, round)| (id, format!("e{}-{round}", report.epoch.unwrap_or(0))));
    report.committed = status.committed;
    report.aborted = status.aborted;
    report.recoveries = status.recoveries;
    report.healthy = status.healthy;
    report.consecutive_failures = status.consecutive_failures;
    report.table = status.table;
    report.halt = status.halt;
    report
}
