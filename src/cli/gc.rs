//! `cohort gc --keep N`: expire old checkpoints and delete the blobs nothing retained needs.

use std::io::Write;

use std::time::Duration;

use cohort_checkpoint::{GcReport, Retention};
use cohort_object_api::CheckpointId;
use serde::Serialize;

use crate::cli::StoreArgs;
use crate::cli::failure::Code;
use crate::cli::output::{self, Paint, Styles};
use crate::cli::store;

/// Expire old checkpoints and delete the blobs no kept one needs.
///
/// Keeps the newest N committed checkpoints (and, with --keep-for, every one created within that
/// window), the pinned ones and the recovery line; expires the others; deletes every blob that no kept checkpoint references (including the leftovers of
/// aborted attempts). Says what it deletes and the bytes it frees. Safe while a coordinator runs: blobs of checkpoints newer than the newest one seen at the
/// start are never touched. Expired manifests become tombstones, so their ids are never reused.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cohort gc --keep 10 --dry-run
  cohort gc --keep 10
  cohort gc --keep 3 --keep-for 7d")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// How many of the newest committed checkpoints to keep (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: u64,

    /// Also keep every checkpoint created less than this long ago (by its writer's clock), such
    /// as 36h or 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_for: Option<Duration>,

    /// Report what would be expired and deleted, and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Print the report as JSON: dry_run, retained, expired, deleted (key, bytes), bytes_freed.
    #[arg(long)]
    json: bool,

    /// Accept a store that failed the create-if-absent probe. Only safe when nothing else
    /// writes to the store meanwhile.
    #[arg(long)]
    allow_unsafe_store: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    dry_run: bool,
    retained: Vec<CheckpointId>,
    expired: Vec<CheckpointId>,
    deleted: Vec<Deleted>,
    bytes_freed: u64,
}

#[derive(Debug, Serialize)]
struct Deleted {
    key: String,
    bytes: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    // A dry run writes nothing, so it needs neither write access nor the probe.
    let store = if args.dry_run {
        store::open_read_only(&args.store).await?
    } else {
        store::open_writable(&args.store, args.allow_unsafe_store).await?
    };
    let keep = usize::try_from(args.keep).unwrap_or(usize::MAX);
    tracing::info!(keep, keep_for = ?args.keep_for, dry_run = args.dry_run, "collecting garbage");
    let mut retention = Retention::newest(keep);
    if let Some(window) = args.keep_for {
        retention = retention.within(window);
    }
    let report = from_report(
        store
            .gc_with(retention, store::now_ms(), args.dry_run)
            .await?,
    );
    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &report)?;
    } else {
        write_human(&mut out, &report)?;
    }
    Ok(Code::Ok)
}

pub(crate) fn from_report(r: GcReport) -> Report {
    Report {
        dry_run: r.dry_run,
        retained: r.retained,
        expired: r.expired,
        deleted: r
            .deleted
            .into_iter()
            .map(|d| Deleted {
                key: d.key,
                bytes: d.bytes,
            })
            .collect(),
        bytes_freed: r.bytes_freed,
    }
}

fn write_human(out: &mut impl Write, r: &Report) -> anyhow::Result<()> {
    let styles = Styles::default();
    let (expire, delete, free) = if r.dry_run {
        ("would expire", "would delete", "would free")
    } else {
        ("expired", "deleted", "freed")
    };
    let ids = |ids: &[CheckpointId]| {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if r.dry_run {
        writeln!(out, "{}", styles.warn.paint("dry run: nothing is changed"))?;
    }
    writeln!(
        out,
        "kept {}: {}",
        output::count(r.retained.len(), "checkpoint", "checkpoints"),
        if r.retained.is_empty() {
            "-".into()
        } else {
            ids(&r.retained)
        }
    )?;
    if r.expired.is_empty() {
        writeln!(out, "{expire} no checkpoint")?;
    } else {
        writeln!(
            out,
            "{expire} {}: {}",
            output::count(r.expired.len(), "checkpoint", "checkpoints"),
            ids(&r.expired)
        )?;
    }
    writeln!(
        out,
        "{delete} {}:",
        output::count(r.deleted.len(), "blob", "blobs")
    )?;
    for d in &r.deleted {
        writeln!(out, "  {}  {}", d.key, output::size(d.bytes))?;
    }
    writeln!(
        out,
        "{}",
        styles.header.paint(format!(
            "{free} {} ({} bytes)",
            output::size(r.bytes_freed),
            r.bytes_freed
        ))
    )?;
    Ok(())
}
