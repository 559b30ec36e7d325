//! `cohort drain NODE`: move a node's objects to the other nodes, so that it can stop.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use cohort_coordinator::service::control::{ControlReply, ControlRequest};

use crate::cli::control::{CoordinatorArgs, not_leading, unexpected};
use crate::cli::failure::{Code, Failure};
use crate::cli::output;

/// Drain a node: it gets no new objects, and its objects move to the other nodes.
///
/// The leader marks the node draining and takes a checkpoint; right after it commits, the
/// node's objects are placed on the other nodes that registered their types (fewest objects
/// first) and the cohort recovers to that checkpoint, the new nodes creating and restoring the
/// objects it holds. Objects no other node can host stay. With --wait, the command returns once
/// the node holds no objects: then it can be stopped without a recovery. `cohort status` shows
/// draining nodes and their objects.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 draining (with --wait: the node holds no objects); 1 the node is not connected,
no coordinator leads right now, or --wait timed out; 2 no coordinator could be reached, or a
usage error.

Examples:
  cohort drain node-3 --wait && systemctl stop cohort-node@3
  cohort drain node-3 --coordinator 10.0.0.5:7411,10.0.0.6:7411 --token \"$TOKEN\"")]
pub(crate) struct Args {
    /// The node's name, as `cohort status` lists it.
    node: String,

    /// Return once the node holds no objects (or fail after --timeout).
    #[arg(long)]
    wait: bool,

    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    #[command(flatten)]
    coordinator: CoordinatorArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let request = ControlRequest::Drain {
        node: args.node.clone(),
    };
    let (addrs, reply) = args.coordinator.ask(request).await?;
    let at = match reply {
        ControlReply::Draining { at, .. } => at,
        ControlReply::NotLeader { leader } => return Err(not_leading(&addrs, leader).into()),
        ControlReply::Failed { reason } => {
            return Err(
                Failure::refused(format!("cannot drain {}: {reason}", args.node))
                    .hint("`cohort status` lists the nodes and whether each is connected")
                    .into(),
            );
        }
        other => return Err(unexpected(&other).into()),
    };
    let mut out = output::stdout();
    writeln!(
        out,
        "{} is draining: its objects move at checkpoint {at}",
        args.node
    )?;
    if !args.wait {
        return Ok(Code::Ok);
    }
    let deadline = Instant::now() + args.timeout;
    loop {
        let (_, reply) = args.coordinator.ask(ControlRequest::Status).await?;
        let held = match reply {
            ControlReply::Status(report) => Some(report.table.objects_on(&args.node)),
            _ => None,
        };
        if held == Some(0) {
            writeln!(out, "{} holds no objects: it can stop", args.node)?;
            return Ok(Code::Ok);
        }
        if Instant::now() >= deadline {
            return Err(Failure::refused(format!(
                "{} still holds {} objects after {:?}",
                args.node,
                held.map_or_else(|| "some".to_owned(), |n| n.to_string()),
                args.timeout
            ))
            .hint("objects no other node can host stay: start a node that registers their types, or wait longer")
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
