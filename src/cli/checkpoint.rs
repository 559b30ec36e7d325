//! `cohort checkpoint --now`: ask the leading coordinator for a checkpoint, print its id.

use std::io::Write;

use cohort_coordinator::service::control::{ControlReply, ControlRequest};

use crate::cli::control::{CoordinatorArgs, not_leading, unexpected};
use crate::cli::failure::{Code, Failure};
use crate::cli::output;

/// Take a checkpoint now, and print its id once it committed.
///
/// Asks the coordinators given (a standby points at the leader), which runs one checkpoint
/// round and answers when the manifest is created. Nothing else is printed on stdout, so the
/// id can be captured by a script.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 committed; 1 the checkpoint aborted, or no coordinator leads right now (retry);
2 no coordinator could be reached, or a usage error.

Examples:
  cohort checkpoint --now
  id=$(cohort checkpoint --now --coordinator 10.0.0.5:7411,10.0.0.6:7411 --token \"$TOKEN\")")]
pub(crate) struct Args {
    /// Take the checkpoint now (required: this command never waits for the interval).
    #[arg(long, required = true)]
    now: bool,

    #[command(flatten)]
    coordinator: CoordinatorArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    debug_assert!(args.now, "clap requires --now");
    let (addrs, reply) = args.coordinator.ask(ControlRequest::Checkpoint).await?;
    match reply {
        ControlReply::Checkpointed { id } => {
            tracing::info!(checkpoint = %id, "committed");
            let mut out = output::stdout();
            writeln!(out, "{id}")?;
            Ok(Code::Ok)
        }
        ControlReply::NotLeader { leader } => Err(not_leading(&addrs, leader).into()),
        ControlReply::Failed { reason } => Err(Failure::refused(format!(
            "the checkpoint did not commit: {reason}"
        ))
        .hint("retry; `cohort status` shows the nodes and what is in flight")
        .into()),
        other => Err(unexpected(&other).into()),
    }
}
