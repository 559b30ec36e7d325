//! `cohort pin ID` and `cohort unpin ID`: keep a checkpoint however old it gets.

use std::io::Write;

use cohort_checkpoint::Error as StoreError;
use cohort_object_api::CheckpointId;

use crate::cli::StoreArgs;
use crate::cli::failure::{Code, Failure};
use crate::cli::output;
use crate::cli::store;

/// Pin a checkpoint, so that garbage collection keeps it.
///
/// A pinned checkpoint, and every blob it references, is kept however old it gets: `cohort gc` and the retention of `cohort serve --keep` never expire a pinned checkpoint; a
/// pinned one stays a valid target for `cohort rollback --to`. `cohort list` marks pins.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 pinned; 2 usage, IO or configuration error (an unknown or expired checkpoint).

Examples:
  cohort pin 42
  cohort list --json | jq '.[] | select(.pinned) | .id'")]
pub(crate) struct PinArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint to keep, as `cohort list` shows it.
    #[arg(value_name = "ID")]
    id: CheckpointId,

    /// Accept a store that failed the create-if-absent probe.
    #[arg(long)]
    allow_unsafe_store: bool,
}

/// Unpin a checkpoint, so that garbage collection may expire it again.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 unpinned (or it was not pinned); 2 usage, IO or configuration error.

Examples:
  cohort unpin 42")]
pub(crate) struct UnpinArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint to release.
    #[arg(value_name = "ID")]
    id: CheckpointId,

    /// Accept a store that failed the create-if-absent probe.
    #[arg(long)]
    allow_unsafe_store: bool,
}

pub(crate) async fn pin(args: PinArgs) -> anyhow::Result<Code> {
    let store = store::open_writable(&args.store, args.allow_unsafe_store).await?;
    match store.pin(args.id).await {
        Ok(()) => {}
        Err(e @ StoreError::NotFound { .. }) => {
            return Err(Failure::usage(e.to_string())
                .hint("only a committed checkpoint that GC has not expired can be pinned; run `cohort list`")
                .into());
        }
        Err(e) => return Err(e.into()),
    }
    let mut out = output::stdout();
    writeln!(
        out,
        "pinned checkpoint {}: garbage collection keeps it until `cohort unpin {}`",
        args.id, args.id
    )?;
    Ok(Code::Ok)
}

pub(crate) async fn unpin(args: UnpinArgs) -> anyhow::Result<Code> {
    let store = store::open_writable(&args.store, args.allow_unsafe_store).await?;
    let was_pinned = store.pins().await?.contains(&args.id);
    store.unpin(args.id).await?;
    let mut out = output::stdout();
    if was_pinned {
        writeln!(
            out,
            "unpinned checkpoint {}: garbage collection may expire it",
            args.id
        )?;
    } else {
        writeln!(out, "checkpoint {} was not pinned", args.id)?;
    }
    Ok(Code::Ok)
}
