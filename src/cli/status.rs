//! `cohort status`: who leads, under which epoch, the standbys, the nodes and their objects,
//! the last committed line and what is in flight.
//!
//! [`Status`] is also what the dashboard's `/api/status` serves (`crate::http`), assembled by
//! the same [`Status::assemble`] from the same coordinator reports and store reads.

use std::collections::BTreeMap;
use std::io::Write;

use anstyle::Style;
use cohort_checkpoint::{CheckpointStore, EpochLease, EpochRecord, Manifest};
use cohort_coordinator::engine::Halt;
use cohort_coordinator::service::control::{
    ControlReply, ControlRequest, StandbyReport, StatusReport,
};
use cohort_coordinator::service::{STATE_TABLE_KEY, StateTable};
use cohort_object_api::CheckpointId;
use serde::Serialize;

use crate::cli::control::CoordinatorArgs;
use crate::cli::failure::{Code, Failure};
use crate::cli::output::{self, Paint, Styles};
use crate::cli::store;

/// Show the leader, its epoch, the nodes, the object counts, the last committed line and what
/// is in flight.
///
/// Asks a running coordinator (a standby answers too, and the leader it names is asked next).
/// With --store (or COHORT_STORE) it also reads the store, so that it still says something
/// useful when no coordinator answers: the newest epoch and its lease, and the nodes and
/// placement recorded with the newest checkpoint.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 shown; 2 neither a coordinator nor the store could be reached, or a usage error.

Examples:
  cohort status --store file:///var/lib/bank/checkpoints
  cohort status --coordinator 10.0.0.5:7411 --token \"$TOKEN\" --json | jq .leader")]
pub(crate) struct Args {
    #[command(flatten)]
    coordinator: CoordinatorArgs,

    /// Print one JSON object with leader (epoch, holder, address, dashboard), coordinator (the
    /// leader's own report: counters, in flight), standby (the standby asked first, if any),
    /// standbys (those the leader heard from lately), last_committed, in_flight, nodes (name,
    /// peer_addr, live, objects), objects, lease, source ("coordinator" or "store") and damaged
    /// (what is wrong with the newest epoch's record or lease in the store, one line each).
    #[arg(long)]
    json: bool,
}

/// `cohort status --json`, and the dashboard's `/api/status` `cohort` field.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Status {
    leader: Option<Leader>,
    coordinator: Option<Report>,
    standby: Option<Report>,
    /// The standbys the leader heard from lately.
    standbys: Vec<StandbyReport>,
    last_committed: Option<Line>,
    in_flight: Option<InFlight>,
    nodes: Vec<NodeRow>,
    objects: usize,
    lease: Option<Lease>,
    /// Where the nodes and placement come from: the leader ("coordinator"), or the newest
    /// manifest ("store").
    source: Option<&'static str>,
    /// Why the coordinators were not asked or did not answer.
    unreachable: Option<String>,
    /// What is wrong with the newest epoch's record or lease in the store, one line each.
    damaged: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Leader {
    epoch: u64,
    holder: Option<String>,
    address: Option<String>,
    /// The leader's dashboard, when it serves one and answered.
    dashboard: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    holder: String,
    address: String,
    leading: bool,
    epoch: Option<u64>,
    last_committed: CheckpointId,
    committed: u64,
    aborted: u64,
    recoveries: u64,
    /// The leader's cohort is healthy: its failed attempts in a row are within
    /// --tolerable-failures.
    healthy: bool,
    consecutive_failures: u32,
    /// Why the leader's cohort halted beyond its restart policy: the object, its error, the
    /// restarts in the window and the policy.
    halted: Option<Halt>,
    dashboard: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Line {
    id: CheckpointId,
    kind: &'static str,
    epoch: u64,
    created_at: String,
    objects: usize,
    in_transit: usize,
}

#[derive(Debug, Serialize)]
struct InFlight {
    id: CheckpointId,
    round: String,
}

#[derive(Debug, Serialize)]
struct NodeRow {
    name: String,
    peer_addr: String,
    live: bool,
    /// Being drained (`cohort drain`); omitted when not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
    objects: usize,
}

#[derive(Debug, Serialize)]
struct Lease {
    epoch: u64,
    renewal: u64,
    /// The holder's clock at the renewal: compare with care across hosts.
    renewed_at: String,
}

fn report(r: &StatusReport) -> Report {
    Report {
        holder: r.holder.clone(),
        address: r.address.clone(),
        leading: r.leading,
        epoch: r.epoch,
        last_committed: r.last_committed,
        committed: r.committed,
        aborted: r.aborted,
        recoveries: r.recoveries,
        healthy: r.healthy,
        consecutive_failures: r.consecutive_failures,
        halted: r.halt.clone(),
        dashboard: r.dashboard.clone(),
    }
}

/// What `cohort status` reads from the store: the newest epoch, its lease, and the newest
/// committed line with the state table recorded in it.
#[derive(Clone, Debug, Default)]
pub(crate) struct StoreFacts {
    pub(crate) epoch: Option<EpochRecord>,
    pub(crate) lease: Option<EpochLease>,
    pub(crate) newest: Option<NewestLine>,
    /// What is wrong with the newest epoch's record or lease, one line each.
    pub(crate) damaged: Vec<String>,
}

/// The newest committed manifest, summed up.
#[derive(Clone, Debug)]
pub(crate) struct NewestLine {
    line: Line,
    table: Option<StateTable>,
}

impl StoreFacts {
    /// Reads them (a listing of the epochs and of the manifests, the lease, the newest
    /// manifest).
    pub(crate) async fn read(store: &CheckpointStore) -> anyhow::Result<Self> {
        let mut facts = Self::read_epoch(store).await?;
        facts.newest = newest_manifest(store).await?.as_ref().map(NewestLine::of);
        Ok(facts)
    }

    /// Reads the newest epoch and its lease only (`newest` is left empty).
    pub(crate) async fn read_epoch(store: &CheckpointStore) -> anyhow::Result<Self> {
        let mut facts = Self::default();
        // A damaged record or lease is shown, not fatal: the rest of the store still reads.
        let state = store.newest_epoch_state().await?;
        facts.damaged = store::epoch_problems(state.as_ref());
        if let Some(state) = state {
            facts.lease = state.lease.ok().flatten();
            // Its number is taken whatever the record holds; who holds it is unknown.
            facts.epoch = Some(state.record.unwrap_or_else(|_| EpochRecord {
                epoch: state.epoch,
                holder: "unknown (its record is damaged)".to_owned(),
                created_at_ms: 0,
                address: None,
            }));
        }
        Ok(facts)
    }
}

impl NewestLine {
    /// The summary of manifest `m`, with its state table.
    pub(crate) fn of(m: &Manifest) -> Self {
        Self {
            line: Line {
                id: m.id,
                kind: store::kind_name(&m.kind),
                epoch: m.epoch,
                created_at: output::time_precise(m.created_at_ms),
                objects: m.objects.len(),
                in_transit: m.in_transit.len(),
            },
            table: m
                .metadata
                .get(STATE_TABLE_KEY)
                .and_then(|b| StateTable::decode(b).ok()),
        }
    }

    /// Its checkpoint.
    pub(crate) fn id(&self) -> CheckpointId {
        self.line.id
    }
}

/// The state table a status was assembled from: the leader's, or the newest manifest's.
pub(crate) type Table = Option<StateTable>;

impl Status {
    /// Assembles the status from the coordinator asked and the leader's report (the same one
    /// when the coordinator asked leads), or why no coordinator answered, and what the store
    /// says, if it was read. Also returns the state table the nodes were taken from.
    pub(crate) fn assemble(
        reports: Result<(&StatusReport, Option<&StatusReport>), String>,
        store: Option<&StoreFacts>,
    ) -> (Self, Table) {
        let mut status = Status {
            damaged: store.map(|s| s.damaged.clone()).unwrap_or_default(),
            ..Status::default()
        };
        let mut table: Option<StateTable> = None;

        // The coordinators first: they know what is in flight.
        match reports {
            Ok((asked, leader)) => {
                if let Some(l) = leader {
                    status.leader = l.epoch.map(|epoch| Leader {
                        epoch,
                        holder: Some(l.holder.clone()),
                        address: Some(l.address.clone()),
                        dashboard: l.dashboard.clone(),
                    });
                    status.in_flight = l.in_flight.as_ref().map(|(id, round)| InFlight {
                        id: *id,
                        round: round.clone(),
                    });
                    table = Some(l.table.clone());
                    status.source = Some("coordinator");
                    status.coordinator = Some(report(l));
                    status.standbys = l.standbys.clone();
                }
                if !asked.leading {
                    if status.leader.is_none() {
                        status.leader = asked.epoch.map(|epoch| Leader {
                            epoch,
                            holder: None,
                            address: asked.leader.clone(),
                            dashboard: None,
                        });
                    }
                    status.standby = Some(report(asked));
                    if !status.standbys.iter().any(|s| s.holder == asked.holder) {
                        let mut me = StandbyReport::new(&asked.holder, &asked.address);
                        me.dashboard = asked.dashboard.clone();
                        status.standbys.push(me);
                    }
                }
            }
            Err(why) => status.unreachable = Some(why),
        }

        // Then the store, when read: the committed line, the epoch and its lease.
        if let Some(facts) = store {
            if let Some(record) = &facts.epoch {
                if let Some(lease) = facts.lease.as_ref().filter(|l| l.epoch == record.epoch) {
                    status.lease = Some(Lease {
                        epoch: lease.epoch,
                        renewal: lease.renewal,
                        renewed_at: output::time_precise(lease.renewed_at_ms),
                    });
                }
                match &mut status.leader {
                    Some(l) if l.epoch == record.epoch => {
                        l.holder.get_or_insert_with(|| record.holder.clone());
                        if l.address.is_none() {
                            l.address.clone_from(&record.address);
                        }
                    }
                    Some(_) => {}
                    None => {
                        status.leader = Some(Leader {
                            epoch: record.epoch,
                            holder: Some(record.holder.clone()),
                            address: record.address.clone(),
                            dashboard: None,
                        });
                    }
                }
            }
            if let Some(newest) = &facts.newest {
                if table.is_none() {
                    table.clone_from(&newest.table);
                    status.source = table.as_ref().map(|_| "store");
                }
                status.last_committed = Some(newest.line.clone());
            }
        }

        if let Some(table) = &table {
            let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
            for node in table.placement.values() {
                *per_node.entry(node).or_default() += 1;
            }
            status.nodes = table
                .nodes
                .iter()
                .map(|(name, n)| NodeRow {
                    name: name.clone(),
                    peer_addr: n.peer_addr.clone(),
                    live: n.live,
                    draining: n.draining,
                    objects: per_node.get(name.as_str()).copied().unwrap_or(0),
                })
                .collect();
            status.objects = table.placement.len();
        }
        (status, table)
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    // The coordinators first: they know what is in flight.
    let reports = match ask(&args.coordinator).await {
        Ok(reports) => Ok(reports),
        Err(e) if args.coordinator.store.is_some() => Err(format!("{e:#}")),
        Err(e) => return Err(e),
    };
    // Then the store, when named.
    let facts = match &args.coordinator.store {
        Some(url) => {
            let store = CheckpointStore::open_read_only(url)
                .await
                .map_err(|e| Failure::usage(e.to_string()).hint("check --store or COHORT_STORE"))?;
            Some(StoreFacts::read(&store).await?)
        }
        None => None,
    };
    let (status, _) = Status::assemble(
        reports
            .as_ref()
            .map(|(asked, leader)| (asked, leader.as_ref()))
            .map_err(Clone::clone),
        facts.as_ref(),
    );

    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &status)?;
    } else {
        print(&mut out, &status)?;
    }
    Ok(Code::Ok)
}

/// Asks the coordinators for their status; when the one that answered stands by, asks the
/// leader it names too. Returns (the one asked, the leader's report if reached).
async fn ask(args: &CoordinatorArgs) -> anyhow::Result<(StatusReport, Option<StatusReport>)> {
    let (_, reply) = args.ask(ControlRequest::Status).await?;
    let asked = expect_status(reply)?;
    if asked.leading {
        return Ok((asked.clone(), Some(asked)));
    }
    let Some(leader) = asked.leader.clone().filter(|l| *l != asked.address) else {
        return Ok((asked, None));
    };
    let mut at_leader = args.clone();
    at_leader.connect.coordinators = vec![leader];
    // A leader that does not answer is reported as such; the standby's view still stands.
    match at_leader.ask(ControlRequest::Status).await {
        Ok((_, reply)) => {
            let report = expect_status(reply)?;
            let leads = report.leading;
            Ok((asked, leads.then_some(report)))
        }
        Err(e) => {
            tracing::info!(error = %format!("{e:#}"), "the leader named by the standby did not answer");
            Ok((asked, None))
        }
    }
}

fn expect_status(reply: ControlReply) -> anyhow::Result<StatusReport> {
    match reply {
        ControlReply::Status(report) => Ok(*report),
        ControlReply::Failed { reason } => Err(Failure::refused(format!(
            "the coordinator did not report its status: {reason}"
        ))
        .into()),
        other => Err(crate::cli::control::unexpected(&other).into()),
    }
}

async fn newest_manifest(store: &CheckpointStore) -> anyhow::Result<Option<Manifest>> {
    let Some(&id) = store.committed_ids().await?.last() else {
        return Ok(None);
    };
    match store.read_manifest(id).await {
        Ok(m) => Ok(Some(m)),
        Err(cohort_checkpoint::Error::Damaged { damage, .. }) => {
            tracing::warn!(checkpoint = %id, damage = %store::damage_text(&damage), "the newest manifest is damaged");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn print(out: &mut impl Write, s: &Status) -> anyhow::Result<()> {
    let styles = Styles::default();
    let label = |text: &str| styles.header.paint(format!("{text:<11}"));
    let none = |text: &str| styles.dim.paint(text);
    match &s.leader {
        Some(l) => {
            let who = match (&l.holder, &l.address) {
                (Some(h), Some(a)) => format!("{h} at {a}"),
                (Some(h), None) => h.clone(),
                (None, Some(a)) => format!("at {a}"),
                (None, None) => "unknown".into(),
            };
            let live = match &s.coordinator {
                Some(_) => styles.ok.paint("answering"),
                None => styles.warn.paint("not reached"),
            };
            writeln!(out, "{} epoch {}: {who} ({live})", label("leader"), l.epoch)?;
        }
        None => writeln!(
            out,
            "{} {}",
            label("leader"),
            none("none: no epoch was ever claimed")
        )?,
    }
    if let Some(url) = s.leader.as_ref().and_then(|l| l.dashboard.as_ref()) {
        writeln!(out, "{} {url}", label("dashboard"))?;
    }
    for standby in &s.standbys {
        writeln!(
            out,
            "{} {} at {}",
            label("standby"),
            standby.holder,
            standby.address
        )?;
    }
    if let Some(lease) = &s.lease {
        writeln!(
            out,
            "{} epoch {} renewal {}, last at {} (the holder's clock)",
            label("lease"),
            lease.epoch,
            lease.renewal,
            lease.renewed_at
        )?;
    }
    match (&s.last_committed, &s.coordinator) {
        (Some(l), _) => writeln!(
            out,
            "{} checkpoint {} ({}, epoch {}) at {}: {}, {}",
            label("last line"),
            l.id,
            l.kind,
            l.epoch,
            l.created_at,
            output::count(l.objects, "object", "objects"),
            output::count(l.in_transit, "message in transit", "messages in transit"),
        )?,
        (None, Some(c)) if c.last_committed != CheckpointId::ZERO => {
            writeln!(
                out,
                "{} checkpoint {}",
                label("last line"),
                c.last_committed
            )?;
        }
        _ => writeln!(out, "{} {}", label("last line"), none("none committed"))?,
    }
    if s.coordinator.is_some() {
        match &s.in_flight {
            Some(f) => writeln!(
                out,
                "{} checkpoint {}, round {}",
                label("in flight"),
                f.id,
                f.round
            )?,
            None => writeln!(out, "{} {}", label("in flight"), none("nothing"))?,
        }
    }
    if s.source.is_some() {
        let live = s.nodes.iter().filter(|n| n.live).count();
        let from = if s.source == Some("store") {
            " (as recorded with the newest checkpoint)"
        } else {
            ""
        };
        writeln!(
            out,
            "{} {} live of {}{from}",
            label("nodes"),
            live,
            s.nodes.len()
        )?;
        for n in &s.nodes {
            let state = match (n.live, n.draining) {
                (true, false) => styles.ok.paint("live"),
                (true, true) if n.objects == 0 => styles.ok.paint("drained (it can stop)"),
                (true, true) => styles.warn.paint("live, draining"),
                (false, _) => styles.bad.paint("lost"),
            };
            writeln!(
                out,
                "{} {} {state} at {}: {}",
                label(""),
                n.name,
                n.peer_addr,
                output::count(n.objects, "object", "objects")
            )?;
        }
        writeln!(out, "{} {}", label("objects"), s.objects)?;
    }
    if let Some(c) = &s.coordinator {
        writeln!(
            out,
            "{} {} committed, {} aborted, {} recoveries (by this leader)",
            label("counters"),
            c.committed,
            c.aborted,
            c.recoveries
        )?;
        if c.leading {
            let health = if c.healthy {
                styles.ok.paint("healthy")
            } else {
                styles.bad.paint(format!(
                    "unhealthy: {} checkpoint attempts failed in a row",
                    c.consecutive_failures
                ))
            };
            writeln!(out, "{} {health}", label("health"))?;
            if let Some(halt) = &c.halted {
                writeln!(
                    out,
                    "{} {}",
                    label("halted"),
                    styles.bad.paint(halt.to_string())
                )?;
            }
        }
    }
    for problem in &s.damaged {
        writeln!(out, "{} {}", label("damaged"), styles.bad.paint(problem))?;
    }
    if let Some(why) = &s.unreachable {
        writeln!(
            out,
            "{}: no coordinator answered ({why}); shown from the store",
            Style::new().paint("note")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use cohort_coordinator::engine::RestartPolicy;
    use cohort_object_api::ObjectId;

    use super::*;

    #[test]
    fn the_json_names_the_object_the_error_and_the_policy_of_a_halt() {
        let mut r = StatusReport::new("c1", "127.0.0.1:7411");
        r.leading = true;
        r.halt = Some(Halt {
            object: ObjectId::new("acct-1").unwrap(),
            error: "panicked: boom".into(),
            restarts: 3,
            policy: RestartPolicy::default(),
        });
        let json = serde_json::to_value(report(&r)).unwrap();
        let halted = &json["halted"];
        assert_eq!(halted["object"], "acct-1", "{json}");
        assert_eq!(halted["error"], "panicked: boom", "{json}");
        assert_eq!(halted["restarts"], 3, "{json}");
        assert_eq!(halted["policy"]["max_restarts"], 3, "{json}");
        assert_eq!(halted["policy"]["window_ms"], 60_000, "{json}");
    }
}
