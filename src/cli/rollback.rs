//! `cohort rollback --to ID`: commit a new checkpoint that points at ID's states.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, EpochRecord, Manifest, ManifestKind};
use cohort_coordinator::service::StateTable;
use cohort_coordinator::service::control::{ControlReply, ControlRequest, StatusReport};
use cohort_object_api::{CheckpointId, ObjectId};
use tokio::time::Instant;

use crate::cli::control::ConnectArgs;
use crate::cli::failure::{Code, Failure};
use crate::cli::output::{self, Paint, Styles};
use crate::cli::store;
use crate::cli::{Parsed, StoreArgs};

/// The holder name of the epochs the CLI claims, so that people reading `epochs/` can tell a
/// rollback's epoch from a coordinator's.
const CLI_HOLDER: &str = "cohort-cli rollback";

/// Roll back to an older checkpoint, keeping history.
///
/// ID is verified first. Then a new checkpoint is committed at the next id, of kind rollback,
/// pointing at ID's states: it becomes the recovery line, and the history before it is kept.
/// The rollback takes a new coordinator epoch, so a coordinator that is still running is fenced:
/// its next commit fails and it must recover, which restores ID's states.
///
/// A running cluster is rolled back with --live, as one action: after the commit, a coordinator
/// takes over from the rollback (one lease later), every node restores ID's states, and the
/// command waits until a checkpoint of every object commits after it, then reports which
/// coordinator took over and which nodes restored.
///
/// Without --live it refuses while a coordinator holds the lease, because that coordinator's
/// objects still hold newer states: it watches the newest epoch's lease for up to --lease, and
/// a renewal (or a new epoch) seen meanwhile means a live coordinator. Stop it first, pass
/// --live, or pass --force (roll back without waiting for the cluster). On a terminal it asks
/// for confirmation; otherwise it needs --yes.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 rolled back (with --live: and the cluster restored it); 1 refused (a coordinator
holds the lease, ID is damaged, no confirmation), or with --live the cluster did not restore it
within --wait; 2 usage, IO or configuration error.

Examples:
  cohort rollback --to 41
  cohort rollback --to 41 --yes --store s3://bank-checkpoints/prod
  cohort rollback --to 41 --live --yes --coordinator 10.0.0.5:7411,10.0.0.6:7411")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint to roll back to.
    #[arg(long, value_name = "ID", value_parser = Parsed::<CheckpointId>::new())]
    to: CheckpointId,

    /// Do not ask for confirmation; required when stdin or stderr is not a terminal.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Roll back even while a coordinator holds the lease; it is fenced and must recover.
    #[arg(long, conflicts_with = "live")]
    force: bool,

    /// Roll back a running cluster: fence its coordinators, wait until one takes over from the
    /// rollback and every node restored ID's states, and report it.
    #[arg(long)]
    live: bool,

    /// With --live, how long to wait for the takeover and the nodes (the coordinators' lease,
    /// their restore and a checkpoint).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    wait: Duration,

    /// With --live: how to reach the coordinators.
    #[command(flatten)]
    connect: ConnectArgs,

    /// How long to watch the lease for a renewal: the coordinators' lease duration (10s by
    /// default). A live coordinator renews every third of it and is found well within it; with
    /// none running, the rollback waits this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,

    /// Accept a store that failed the create-if-absent probe. Only safe when nothing else
    /// writes to the store meanwhile.
    #[arg(long)]
    allow_unsafe_store: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let styles = Styles::default();
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.yes && !interactive {
        return Err(Failure::refused(format!(
            "refusing to roll back to checkpoint {} without confirmation: stdin is not a terminal",
            args.to
        ))
        .hint("pass --yes to confirm non-interactively")
        .into());
    }
    let store = store::open_writable(&args.store, args.allow_unsafe_store).await?;
    let target = store::read_manifest(&store, args.to).await?;

    let report = store.verify(args.to).await?;
    if let Some(first) = report.damaged.first() {
        return Err(Failure::damaged(format!(
            "refusing to roll back to damaged checkpoint {}: {} of {} entries damaged, the first: {}",
            args.to,
            report.damaged.len(),
            report.entries,
            store::damage_text(first)
        ))
        .hint(format!(
            "run `cohort verify {}` for every damaged entry, and pick an intact checkpoint with `cohort list`",
            args.to
        ))
        .into());
    }

    let cluster = if args.live {
        Some(running_cluster(&store, &args.connect).await?)
    } else {
        None
    };
    if args.force {
        let mut err = anstream::stderr().lock();
        writeln!(
            err,
            "{}: not checking the lease (--force): a coordinator still running is fenced by this rollback and must recover",
            styles.warn.paint("warning")
        )?;
    } else if !args.live {
        if interactive {
            let mut err = anstream::stderr().lock();
            writeln!(
                err,
                "checking that no coordinator holds the lease (up to {}; --force skips this)",
                humantime::format_duration(args.lease)
            )?;
        }
        if let Some(holder) = watch_lease(&store, args.lease).await? {
            return Err(Failure::refused(format!(
                "refusing to roll back: {holder}, so it is running; its objects still hold newer states and its next checkpoint would replace the rollback"
            ))
            .hint("pass --live to roll the running cluster back (its nodes restore the states), stop the coordinator and retry, or pass --force")
            .into());
        }
    }

    if !args.yes && !confirm(&store, &target)? {
        return Err(Failure::refused("rollback cancelled: nothing was changed").into());
    }

    let now_ms = store::now_ms();
    let claimed = store.claim_epoch(CLI_HOLDER, now_ms).await?;
    tracing::info!(epoch = claimed.epoch, "claimed an epoch for the rollback");
    let id = store.rollback(args.to, claimed.epoch, now_ms).await?;
    tracing::info!(checkpoint = %id, to = %args.to, "committed the rollback");
    let mut out = output::stdout();
    writeln!(
        out,
        "rolled back: checkpoint {id} (epoch {}) points at the states of checkpoint {}: {}, {}; it is the new recovery line",
        claimed.epoch,
        args.to,
        output::count(target.objects.len(), "object", "objects"),
        output::count(
            target.in_transit.len(),
            "in-transit message",
            "in-transit messages"
        ),
    )?;
    out.flush()?;
    let Some(cluster) = cluster else {
        return Ok(Code::Ok);
    };
    if interactive {
        let mut err = anstream::stderr().lock();
        writeln!(
            err,
            "waiting for a coordinator to take over from the rollback and for the nodes to restore (up to {})",
            humantime::format_duration(args.wait)
        )?;
    }
    let live = Live {
        store: &store,
        connect: &args.connect,
        claimed: claimed.epoch,
        rollback: id,
        target: &target,
        deadline: Instant::now() + args.wait,
        wait: args.wait,
    };
    let took_over = live.takeover().await?;
    writeln!(
        out,
        "took over: coordinator {} at {} leads under epoch {}; its fence, checkpoint {}, restores the states of checkpoint {}",
        took_over.record.holder,
        took_over
            .record
            .address
            .as_deref()
            .unwrap_or("an unrecorded address"),
        took_over.record.epoch,
        took_over.fence,
        args.to
    )?;
    out.flush()?;
    let restored = live.restored(&took_over).await?;
    let nodes: Vec<String> = restored
        .nodes
        .iter()
        .map(|(name, objects)| format!("{name} ({})", output::count(*objects, "object", "objects")))
        .collect();
    writeln!(
        out,
        "restored: {}; checkpoint {} committed after the rollback with every object",
        if nodes.is_empty() {
            "no node hosts an object".to_owned()
        } else {
            nodes.join(", ")
        },
        restored.checkpoint
    )?;
    let before: BTreeSet<&String> = cluster.nodes.iter().collect();
    let absent: Vec<&&String> = before
        .iter()
        .filter(|n| !restored.nodes.contains_key(n.as_str()))
        .collect();
    if !absent.is_empty() {
        writeln!(
            out,
            "{}: nodes of the cluster before the rollback that host no object now: {}",
            styles.warn.paint("note"),
            absent
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    Ok(Code::Ok)
}

/// The running cluster, as its leader reports it before the rollback.
struct Cluster {
    /// The nodes the leader knows.
    nodes: Vec<String>,
}

/// Asks the coordinators (given, else the one the store names) who leads and which nodes run.
async fn running_cluster(
    store: &CheckpointStore,
    connect: &ConnectArgs,
) -> anyhow::Result<Cluster> {
    let addrs = connect.addresses(Some(store)).await?;
    let not_running = |why: String| {
        Failure::refused(format!(
            "--live: no coordinator leads at {}: {why}",
            addrs.join(", ")
        ))
        .hint("without --live a stopped cluster is rolled back, and restores the rollback when it starts; pass --coordinator ADDR if the coordinators are elsewhere")
    };
    let reply = match connect.ask_at(addrs.clone(), ControlRequest::Status).await {
        Ok((_, reply)) => reply,
        Err(e) => return Err(not_running(format!("{e:#}")).into()),
    };
    match reply {
        ControlReply::Status(report) if report.leading => Ok(Cluster {
            nodes: report.table.nodes.keys().cloned().collect(),
        }),
        ControlReply::Status(report) => Err(not_running(format!(
            "the coordinator that answered ({}) stands by, and no leader answered",
            report.address
        ))
        .into()),
        other => Err(not_running(format!("it answered {other:?}")).into()),
    }
}

/// Following a live rollback: the takeover, then the nodes.
struct Live<'a> {
    store: &'a CheckpointStore,
    connect: &'a ConnectArgs,
    /// The epoch the rollback was committed under.
    claimed: u64,
    /// The rollback's checkpoint.
    rollback: CheckpointId,
    /// The checkpoint rolled back to.
    target: &'a Manifest,
    deadline: Instant,
    wait: Duration,
}

/// The coordinator that took over, and its fence.
struct TookOver {
    record: EpochRecord,
    fence: CheckpointId,
}

/// The first checkpoint committed after the takeover, and the nodes hosting its objects.
struct Restored {
    checkpoint: CheckpointId,
    /// Node name → how many of the checkpoint's objects it hosts.
    nodes: BTreeMap<String, usize>,
}

/// How often the store and the coordinators are asked while waiting.
const POLL: Duration = Duration::from_millis(100);

impl Live<'_> {
    /// Exit 1 with what is done and what did not happen in time.
    fn late(&self, what: &str) -> anyhow::Error {
        Failure::refused(format!(
            "the rollback is committed (checkpoint {} points at checkpoint {}), but {what} within {}",
            self.rollback,
            self.target.id,
            humantime::format_duration(self.wait)
        ))
        .hint("`cohort status` shows the coordinators and the nodes; a node that comes back restores the rollback before it takes part")
        .into()
    }

    async fn sleep(&self, what: &str) -> anyhow::Result<()> {
        if Instant::now() + POLL > self.deadline {
            return Err(self.late(what));
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }

    /// Waits for a coordinator to claim an epoch after the rollback's and to write its fence.
    async fn takeover(&self) -> anyhow::Result<TookOver> {
        let what = "no coordinator took over";
        loop {
            if let Some(record) = self.store.newest_epoch().await?
                && record.epoch > self.claimed
            {
                for id in self.store.committed_ids().await? {
                    if id <= self.rollback {
                        continue;
                    }
                    let m = match self.store.read_manifest(id).await {
                        Ok(m) => m,
                        // Expired by retention meanwhile: not the fence we wait for.
                        Err(cohort_checkpoint::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    if m.kind == ManifestKind::Fence && m.epoch == record.epoch {
                        return Ok(TookOver { record, fence: id });
                    }
                }
            }
            self.sleep(what).await?;
        }
    }

    /// Waits until a checkpoint of every object commits after the fence (so every node hosting
    /// one restored and took part), then asks the leader where the objects live.
    async fn restored(&self, took_over: &TookOver) -> anyhow::Result<Restored> {
        let mut addrs: Vec<String> = took_over.record.address.iter().cloned().collect();
        addrs.extend(self.connect.coordinators.iter().cloned());
        let what =
            "no checkpoint of every object committed after the takeover (a node has not restored)";
        let checkpoint = loop {
            match self
                .connect
                .ask_at(addrs.clone(), ControlRequest::Checkpoint)
                .await
            {
                Ok((_, ControlReply::Checkpointed { id })) if id > took_over.fence => {
                    let m = self.store.read_manifest(id).await?;
                    let missing = self
                        .target
                        .objects
                        .keys()
                        .filter(|o| !m.objects.contains_key(*o))
                        .count();
                    if missing == 0 {
                        break m;
                    }
                    tracing::info!(checkpoint = %id, missing, "a checkpoint without every object of the line");
                }
                Ok((_, reply)) => tracing::debug!(?reply, "not yet"),
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "not yet"),
            }
            self.sleep(what).await?;
        };
        let report = loop {
            match self
                .connect
                .ask_at(addrs.clone(), ControlRequest::Status)
                .await
            {
                Ok((_, ControlReply::Status(report))) if report.leading => break report,
                _ => {
                    self.sleep("the new leader did not report its status")
                        .await?
                }
            }
        };
        Ok(Restored {
            checkpoint: checkpoint.id,
            nodes: hosts(&report, checkpoint.objects.keys()),
        })
    }
}

/// The live nodes hosting `objects`, with how many each hosts.
fn hosts<'a>(
    report: &StatusReport,
    objects: impl Iterator<Item = &'a ObjectId>,
) -> BTreeMap<String, usize> {
    let table: &StateTable = &report.table;
    let mut nodes = BTreeMap::new();
    for object in objects {
        if let Some(node) = table.placement.get(object)
            && table.nodes.get(node).is_some_and(|n| n.live)
        {
            *nodes.entry(node.clone()).or_default() += 1;
        }
    }
    nodes
}

/// What the lease looks like at one moment: the newest epoch and its lease's renewal counter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sighting {
    epoch: u64,
    holder: String,
    renewal: Option<u64>,
}

/// A live coordinator, in words, when `now` differs from `first`; `None` when nothing moved.
///
/// Only changes count, never timestamps: the lease's wall-clock time is the holder's, and
/// clocks of different hosts are not compared (as the coordinators' own standbys do).
fn moved(first: Option<&Sighting>, now: Option<&Sighting>) -> Option<String> {
    match (first, now) {
        (_, None) => None,
        (None, Some(n)) => Some(format!(
            "coordinator {:?} took epoch {} while we watched",
            n.holder, n.epoch
        )),
        (Some(f), Some(n)) if n.epoch != f.epoch => Some(format!(
            "coordinator {:?} took epoch {} while we watched",
            n.holder, n.epoch
        )),
        (Some(f), Some(n)) if n.renewal != f.renewal => Some(format!(
            "coordinator {:?} renewed the lease of epoch {} while we watched",
            n.holder, n.epoch
        )),
        _ => None,
    }
}

/// The newest epoch and its lease as they stand. A damaged record leaves the holder unknown and
/// a damaged lease reads as one that does not move, as coordinators see them: the rollback's
/// own claim takes the number after the newest, whatever the record holds.
/// `first`: the first look of a watch, which says what is damaged (once).
async fn sight(store: &CheckpointStore, first: bool) -> anyhow::Result<Option<Sighting>> {
    let Some(state) = store.newest_epoch_state().await? else {
        return Ok(None);
    };
    if first {
        for problem in store::epoch_problems(Some(&state)) {
            tracing::warn!("{problem}");
        }
    }
    Ok(Some(Sighting {
        epoch: state.epoch,
        holder: state.record.map_or_else(
            |_| "unknown (its record is damaged)".to_owned(),
            |r| r.holder,
        ),
        renewal: state.lease.ok().flatten().map(|l| l.renewal),
    }))
}

/// Watches the newest epoch and its lease for up to `window`, on this process's monotonic
/// clock; returns who holds the lease as soon as anything moves.
async fn watch_lease(store: &CheckpointStore, window: Duration) -> anyhow::Result<Option<String>> {
    let first = sight(store, true).await?;
    // A leader renews every third of its lease; four looks per window see each renewal.
    let every = (window / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every.min(deadline - now)).await;
        let seen = sight(store, false).await?;
        tracing::debug!(?first, ?seen, "watching the lease");
        if let Some(holder) = moved(first.as_ref(), seen.as_ref()) {
            return Ok(Some(holder));
        }
    }
}

/// Asks on the terminal; only `y` or `yes` goes ahead.
fn confirm(store: &CheckpointStore, target: &Manifest) -> anyhow::Result<bool> {
    let mut err = anstream::stderr().lock();
    write!(
        err,
        "Roll back {} to checkpoint {} (created {}, {})? A new checkpoint will point at its states; history is kept. [y/N] ",
        store.url(),
        target.id,
        output::time_short(target.created_at_ms),
        output::count(target.objects.len(), "object", "objects"),
    )?;
    err.flush()?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(epoch: u64, renewal: Option<u64>) -> Sighting {
        Sighting {
            epoch,
            holder: "node-1".into(),
            renewal,
        }
    }

    #[test]
    fn a_renewal_or_a_new_epoch_is_a_live_coordinator() {
        let first = seen(3, Some(7));
        assert_eq!(
            moved(Some(&first), Some(&seen(3, Some(8)))).as_deref(),
            Some("coordinator \"node-1\" renewed the lease of epoch 3 while we watched")
        );
        assert!(moved(Some(&first), Some(&seen(4, None))).is_some());
        assert!(moved(None, Some(&seen(1, None))).is_some());
        // A first renewal of a freshly claimed epoch counts too.
        assert!(moved(Some(&seen(3, None)), Some(&seen(3, Some(1)))).is_some());
    }

    #[test]
    fn nothing_moving_is_no_coordinator() {
        assert!(moved(Some(&seen(3, Some(7))), Some(&seen(3, Some(7)))).is_none());
        assert!(moved(Some(&seen(3, None)), Some(&seen(3, None))).is_none());
        assert!(moved(None, None).is_none());
    }
}
