//! `cohort recover`: roll a running cohort back to its newest line, ending a halt.

use std::io::Write;

use cohort_coordinator::service::control::{ControlReply, ControlRequest};

use crate::cli::control::{CoordinatorArgs, not_leading, unexpected};
use crate::cli::failure::{Code, Failure};
use crate::cli::output;

/// Roll a running cohort back to its newest committed line now.
///
/// The leader holds every object, has every node restore the newest line (each object's
/// state and the messages in transit there), writes a fence over it and releases them, as
/// after a node loss. A cohort halted beyond its restart policy (`cohort status` names the
/// object and its error) runs again: fix the cause first, or it fails again. The restart
/// policy's count starts over.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 recovered; 1 the recovery failed (the reason is printed), or no coordinator leads
right now; 2 no coordinator could be reached, or a usage error.

Examples:
  cohort status            # halted: acct-3 failed: ...
  cohort recover")]
pub(crate) struct Args {
    #[command(flatten)]
    coordinator: CoordinatorArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let (addrs, reply) = args.coordinator.ask(ControlRequest::Recover).await?;
    match reply {
        ControlReply::Recovered { line, fence } => {
            let mut out = output::stdout();
            match (line, fence) {
                (Some(line), Some(fence)) => {
                    writeln!(out, "recovered to checkpoint {line} (fence {fence})")?
                }
                (Some(line), None) => writeln!(out, "recovered to checkpoint {line}")?,
                _ => writeln!(out, "recovered: nothing was committed yet")?,
            }
            Ok(Code::Ok)
        }
        ControlReply::NotLeader { leader } => Err(not_leading(&addrs, leader).into()),
        ControlReply::Failed { reason } => {
            Err(Failure::refused(format!("the recovery failed: {reason}"))
                .hint("`cohort status` shows the nodes and why; retry once the cause is fixed")
                .into())
        }
        other => Err(unexpected(&other).into()),
    }
}
