//! `cohort remove OBJECT`: take an object out of a running cohort.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use cohort::ObjectId;
use cohort_coordinator::service::control::{ControlReply, ControlRequest};

use crate::cli::control::{CoordinatorArgs, not_leading, unexpected};
use crate::cli::failure::{Code, Failure};
use crate::cli::output;

/// Remove an object from a running cohort of nodes.
///
/// The leader takes a checkpoint; right after it commits, the object's node drops it and the
/// cohort recovers to that checkpoint without it. That checkpoint is the last line holding its
/// state; messages in transit to it there are discarded, and messages still sent to it fail at
/// their sender (unknown object), so stop sending to it first. With --wait, the command
/// returns once the coordinator's state table no longer places it.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 removed at the next line (with --wait: no longer placed); 1 the object is not a
member, no coordinator leads right now, or --wait timed out; 2 no coordinator could be reached,
or a usage error.

Examples:
  cohort remove session-4711 --wait
  cohort remove session-4711 --coordinator 10.0.0.5:7411,10.0.0.6:7411 --token \"$TOKEN\"")]
pub(crate) struct Args {
    /// The object's id, as `cohort status --json` lists it under placement.
    object: String,

    /// Return once the object is no longer placed (or fail after --timeout).
    #[arg(long)]
    wait: bool,

    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    #[command(flatten)]
    coordinator: CoordinatorArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let object = ObjectId::new(args.object.clone()).map_err(|e| {
        Failure::usage(format!("{:?} is not an object id: {e}", args.object))
            .hint("`cohort status --json` lists the objects under placement")
    })?;
    let request = ControlRequest::Remove {
        object: object.clone(),
    };
    let (addrs, reply) = args.coordinator.ask(request).await?;
    let at = match reply {
        ControlReply::Removing { at, .. } => at,
        ControlReply::NotLeader { leader } => return Err(not_leading(&addrs, leader).into()),
        ControlReply::Failed { reason } => {
            return Err(
                Failure::refused(format!("cannot remove {object}: {reason}"))
                    .hint("`cohort status --json` lists the objects under placement")
                    .into(),
            );
        }
        other => return Err(unexpected(&other).into()),
    };
    let mut out = output::stdout();
    writeln!(
        out,
        "{object} is removed after checkpoint {at}, the last line that holds it"
    )?;
    if !args.wait {
        return Ok(Code::Ok);
    }
    let deadline = Instant::now() + args.timeout;
    loop {
        let (_, reply) = args.coordinator.ask(ControlRequest::Status).await?;
        let placed = match reply {
            ControlReply::Status(report) => Some(report.table.placement.contains_key(&object)),
            _ => None,
        };
        if placed == Some(false) {
            writeln!(out, "{object} is no longer placed")?;
            return Ok(Code::Ok);
        }
        if Instant::now() >= deadline {
            return Err(Failure::refused(format!(
                "{object} is still placed after {:?}",
                args.timeout
            ))
            .hint(
                "its removal waits for a checkpoint to commit: `cohort status` says why none does",
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
