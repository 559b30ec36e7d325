//! `cohort rollback --to ID`: commit a new checkpoint that points at ID's states.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, Manifest};
use cohort_object_api::CheckpointId;

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
/// It refuses while a coordinator holds the lease, because that coordinator's objects still
/// hold newer states: it watches the newest epoch's lease for up to --lease, and a renewal (or a
/// new epoch) seen meanwhile means a live coordinator. Stop it first, or pass --force. On a
/// terminal it asks for confirmation; otherwise it needs --yes.
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
    #[arg(long, value_name = "ID", value_parser = Parsed::<CheckpointId>::new())]
    to: CheckpointId,

    /// Do not ask for confirmation; required when stdin or stderr is not a terminal.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Roll back even while a coordinator holds the lease; it is fenced and must recover.
    #[arg(long)]
    force: bool,

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

    if args.force {
        let mut err = anstream::stderr().lock();
        writeln!(
            err,
            "{}: not checking the lease (--force): a coordinator still running is fenced by this rollback and must recover",
            styles.warn.paint("warning")
        )?;
    } else {
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
            .hint("stop the coordinator and retry, or pass --force: the rollback then fences it, and it must recover")
            .into());
        }
    }

    if !args.yes && !confirm(&store, &target)? {
        return Err(Failure::refused("rollback cancelled: nothing was changed").into());
    }

    let now_ms = now_ms();
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
    // The one wall-clock read of the command, at its edge, for the records' creation time.
    cohort_object_api::Clock::system().wall_ms()
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
