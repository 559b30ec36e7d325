//! `cohort rollback --to ID`: commit a new checkpoint that points at ID's states.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime};

use cohort_checkpoint::{CheckpointStore, EpochRecord, Manifest, ManifestKind};
use cohort_object_api::CheckpointId;

use crate::cli::StoreArgs;
use crate::cli::failure::{Code, Failure};
use crate::cli::output::{self, Paint, Styles};
use crate::cli::store;

/// The epoch holder name the CLI claims epochs under, so that its own epochs are not mistaken
/// for a live coordinator's.
const CLI_HOLDER: &str = "cohort-cli rollback";

/// Roll back to an older checkpoint, keeping history.
///
/// ID is verified first. Then a new checkpoint is committed at the next id, of kind rollback,
/// pointing at ID's states: it becomes the recovery line, and the history before it is kept.
/// The rollback takes a new coordinator epoch, so a coordinator that is still running is fenced:
/// its next commit fails and it must recover, which restores ID's states.
///
/// It refuses while a coordinator holds the lease (it took its epoch, or committed a
/// checkpoint, less than --lease ago), because that coordinator's objects still hold newer
/// states; stop it first, or pass --force. On a terminal it asks for confirmation; otherwise it
/// needs --yes.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 rolled back; 1 refused (a coordinator holds the lease, ID is damaged, no
confirmation); 2 usage, IO or configuration error.

Examples:
  cohort rollback --to 41
  cohort rollback --to 41 --yes --store s3://bank-checkpoints/prod")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint to roll back to.
    #[arg(long, value_name = "ID")]
    to: CheckpointId,

    /// Do not ask for confirmation; required when stdin or stderr is not a terminal.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Roll back even while a coordinator holds the lease; it is fenced and must recover.
    #[arg(long)]
    force: bool,

    /// How long after its last sign of life (taking its epoch, committing a checkpoint) a
    /// coordinator is taken to hold the lease.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
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
    let now_ms = now_ms();

    let epoch = store.newest_epoch().await?;
    let newest = newest_manifest(&store).await?;
    if let Some(holder) = lease_holder(epoch.as_ref(), newest.as_ref(), now_ms, args.lease) {
        if !args.force {
            return Err(Failure::refused(format!(
                "refusing to roll back: {holder}, within the {} lease, so a coordinator may be running; its objects still hold newer states and its next checkpoint would replace the rollback",
                humantime::format_duration(args.lease)
            ))
            .hint("stop the coordinator and retry, or pass --force: the rollback then fences it, and it must recover")
            .into());
        }
        let mut err = anstream::stderr().lock();
        writeln!(
            err,
            "{}: {holder}; forcing the rollback fences that coordinator: its next commit fails and it must recover",
            styles.warn.paint("warning")
        )?;
    }

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

    if !args.yes && !confirm(&store, &target)? {
        return Err(Failure::refused("rollback cancelled: nothing was changed").into());
    }

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
    Ok(Code::Ok)
}

fn now_ms() -> u64 {
    // The one clock read of the command, at its edge; a clock before 1970 reads as 0, which
    // only makes leases look younger (the safe side).
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The newest committed manifest, if it can be read; an unreadable one proves nothing about a
/// coordinator, and the epoch record still counts.
async fn newest_manifest(store: &CheckpointStore) -> anyhow::Result<Option<Manifest>> {
    let Some(&id) = store.committed_ids().await?.last() else {
        return Ok(None);
    };
    match store.read_manifest(id).await {
        Ok(m) => Ok(Some(m)),
        Err(
            e @ (cohort_checkpoint::Error::Unavailable { .. }
            | cohort_checkpoint::Error::Store { .. }),
        ) => Err(e.into()),
        Err(e) => {
            tracing::warn!(checkpoint = %id, error = %e, "cannot read the newest manifest for the lease check");
            Ok(None)
        }
    }
}

/// Who holds the lease, in words, or `None`.
///
/// The epoch record has no lease or heartbeat field, so a coordinator's last sign of life is
/// the later of taking its epoch and committing the newest manifest. Rollbacks written by this
/// CLI are not signs of a coordinator. A time in the future (clock skew) counts as now.
fn lease_holder(
    epoch: Option<&EpochRecord>,
    newest: Option<&Manifest>,
    now_ms: u64,
    lease: Duration,
) -> Option<String> {
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let young = |at: u64| now_ms.saturating_sub(at) < lease_ms;
    let ago = |at: u64| {
        humantime::format_duration(Duration::from_millis(
            now_ms.saturating_sub(at) / 1000 * 1000,
        ))
    };
    if let Some(e) = epoch.filter(|e| e.holder != CLI_HOLDER && young(e.created_at_ms)) {
        return Some(format!(
            "coordinator {:?} took epoch {} {} ago",
            e.holder,
            e.epoch,
            ago(e.created_at_ms)
        ));
    }
    let by_coordinator = |m: &&Manifest| !matches!(m.kind, ManifestKind::Rollback { .. });
    if let Some(m) = newest
        .filter(by_coordinator)
        .filter(|m| young(m.created_at_ms))
    {
        return Some(format!(
            "checkpoint {} was committed by epoch {} {} ago",
            m.id,
            m.epoch,
            ago(m.created_at_ms)
        ));
    }
    None
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

    const NOW: u64 = 1_700_000_000_000;
    const LEASE: Duration = Duration::from_secs(60);

    fn epoch(holder: &str, at: u64) -> EpochRecord {
        EpochRecord {
            epoch: 3,
            holder: holder.into(),
            created_at_ms: at,
            address: None,
        }
    }

    fn manifest(kind: ManifestKind, at: u64) -> Manifest {
        let mut m = Manifest::new(CheckpointId::new(9), 3, at, "e3-r1");
        m.kind = kind;
        m
    }

    #[test]
    fn a_young_epoch_holds_the_lease() {
        let held = lease_holder(Some(&epoch("node-1", NOW - 5_000)), None, NOW, LEASE);
        assert_eq!(
            held.as_deref(),
            Some("coordinator \"node-1\" took epoch 3 5s ago")
        );
        assert!(lease_holder(Some(&epoch("node-1", NOW - 61_000)), None, NOW, LEASE).is_none());
    }

    #[test]
    fn a_recent_checkpoint_holds_the_lease_even_with_an_old_epoch() {
        let old = epoch("node-1", NOW - 3_600_000);
        let recent = manifest(ManifestKind::Checkpoint, NOW - 1_000);
        assert!(lease_holder(Some(&old), Some(&recent), NOW, LEASE).is_some());
        let stale = manifest(ManifestKind::Checkpoint, NOW - 120_000);
        assert!(lease_holder(Some(&old), Some(&stale), NOW, LEASE).is_none());
    }

    #[test]
    fn the_clis_own_rollbacks_do_not_hold_it() {
        let mine = epoch(CLI_HOLDER, NOW - 1_000);
        let rollback = manifest(
            ManifestKind::Rollback {
                to: CheckpointId::new(2),
            },
            NOW - 1_000,
        );
        assert!(lease_holder(Some(&mine), Some(&rollback), NOW, LEASE).is_none());
    }

    #[test]
    fn clock_skew_counts_as_now() {
        assert!(lease_holder(Some(&epoch("node-1", NOW + 10_000)), None, NOW, LEASE).is_some());
    }
}
