//! `cohort status`: who leads, under which epoch, the nodes and their objects, the last
//! committed line and what is in flight.

use std::collections::BTreeMap;
use std::io::Write;

use anstyle::Style;
use cohort_checkpoint::{CheckpointStore, Manifest};
use cohort_coordinator::service::control::{ControlReply, ControlRequest, StatusReport};
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

    /// Print one JSON object with leader (epoch, holder, address), coordinator (the leader's
    /// own report: counters, in flight), standby (the standby asked first, if any),
    /// last_committed, in_flight, nodes (name, peer_addr, live, objects), objects, lease and
    /// source ("coordinator" or "store").
    #[arg(long)]
    json: bool,
}

/// `cohort status --json`.
#[derive(Debug, Default, Serialize)]
struct Status {
    leader: Option<Leader>,
    coordinator: Option<Report>,
    standby: Option<Report>,
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
}

#[derive(Debug, Serialize)]
struct Leader {
    epoch: u64,
    holder: Option<String>,
    address: Option<String>,
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
}

#[derive(Debug, Serialize)]
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
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let mut status = Status::default();
    let mut table: Option<StateTable> = None;

    // The coordinators first: they know what is in flight.
    match ask(&args.coordinator).await {
        Ok((asked, leader)) => {
            if let Some(l) = &leader {
                status.leader = l.epoch.map(|epoch| Leader {
                    epoch,
                    holder: Some(l.holder.clone()),
                    address: Some(l.address.clone()),
                });
                status.in_flight = l.in_flight.as_ref().map(|(id, round)| InFlight {
                    id: *id,
                    round: round.clone(),
                });
                table = Some(l.table.clone());
                status.source = Some("coordinator");
                status.coordinator = Some(report(l));
            }
            if !asked.leading {
                if status.leader.is_none() {
                    status.leader = asked.epoch.map(|epoch| Leader {
                        epoch,
                        holder: None,
                        address: asked.leader.clone(),
                    });
                }
                status.standby = Some(report(&asked));
            }
        }
        Err(e) if args.coordinator.store.is_some() => status.unreachable = Some(format!("{e:#}")),
        Err(e) => return Err(e),
    }

    // Then the store, when named: the committed line, the epoch and its lease.
    if let Some(url) = &args.coordinator.store {
        let store = CheckpointStore::open_read_only(url)
            .await
            .map_err(|e| Failure::usage(e.to_string()).hint("check --store or COHORT_STORE"))?;
        if let Some(record) = store.newest_epoch().await? {
            if let Some(lease) = store.epoch_lease(record.epoch).await? {
                status.lease = Some(Lease {
                    epoch: lease.epoch,
                    renewal: lease.renewal,
                    renewed_at: output::time_precise(lease.renewed_at_ms),
                });
            }
            match &mut status.leader {
                Some(l) if l.epoch == record.epoch => {
                    l.holder.get_or_insert(record.holder);
                    if l.address.is_none() {
                        l.address = record.address;
                    }
                }
                Some(_) => {}
                None => {
                    status.leader = Some(Leader {
                        epoch: record.epoch,
                        holder: Some(record.holder),
                        address: record.address,
                    });
                }
            }
        }
        if let Some(newest) = newest_manifest(&store).await? {
            if table.is_none() {
                table = newest
                    .metadata
                    .get(STATE_TABLE_KEY)
                    .and_then(|b| StateTable::decode(b).ok());
                status.source = table.as_ref().map(|_| "store");
            }
            status.last_committed = Some(Line {
                id: newest.id,
                kind: store::kind_name(&newest.kind),
                epoch: newest.epoch,
                created_at: output::time_precise(newest.created_at_ms),
                objects: newest.objects.len(),
                in_transit: newest.in_transit.len(),
            });
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
                objects: per_node.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        status.objects = table.placement.len();
    }

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
    at_leader.coordinators = vec![leader];
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
        other => Err(Failure::usage(format!(
            "the coordinator gave an unexpected answer: {other:?}"
        ))
        .into()),
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
    if let Some(standby) = &s.standby {
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
            let state = if n.live {
                styles.ok.paint("live")
            } else {
                styles.bad.paint("lost")
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
