//! `cohort inspect ID OBJECT`: one object's decoded state, as JSON.

use std::io::Write;

use anyhow::Context;

use cohort_object_api::{CheckpointId, ObjectId};

use crate::cli::decode::{self, BinaryAs};
use crate::cli::failure::{Code, Failure};
use crate::cli::output;
use crate::cli::store;
use crate::cli::{Parsed, StoreArgs};

/// Print one object's state in a checkpoint, decoded into JSON.
///
/// The decoding is generic, so it needs none of the application's types: structs are maps of
/// named fields, binary data is base64 (or an array of bytes with --binary array), maps whose
/// keys are neither strings nor integers become sorted [key, value] pairs. The entry's length
/// and crc are checked before it is decoded.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cohort inspect 42 account-17
  cohort inspect 42 account-17 --json | jq .balance")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint id.
    #[arg(value_name = "ID", value_parser = Parsed::<CheckpointId>::new())]
    id: CheckpointId,

    /// The object id, as `cohort show ID` lists it.
    #[arg(value_name = "OBJECT", value_parser = Parsed::<ObjectId>::new())]
    object: ObjectId,

    /// How to print binary data.
    #[arg(long, value_enum, default_value_t = BinaryAs::Base64, value_name = "AS")]
    binary: BinaryAs,

    /// Print the JSON on one line.
    #[arg(long)]
    compact: bool,

    /// Print JSON: what inspect always prints, accepted so that a script can pass --json to
    /// every read command.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let manifest = store::read_manifest(&store, args.id).await?;
    let Some(entry) = manifest.objects.get(&args.object) else {
        return Err(Failure::usage(format!(
            "checkpoint {} has no object {}",
            args.id, args.object
        ))
        .hint(format!(
            "run `cohort show {}` to list its {} objects",
            args.id,
            manifest.objects.len()
        ))
        .into());
    };
    let state = store.read_state(&entry.location).await.with_context(|| {
        format!(
            "cannot read the state of {} in checkpoint {}",
            args.object, args.id
        )
    })?;
    let json = decode::msgpack_to_json(state.payload(), args.binary).map_err(|e| {
        Failure::damaged(format!(
            "the state of {} ({}) in checkpoint {} passes its crc check but is not msgpack: {e:#}",
            args.object,
            state.tag(),
            args.id
        ))
    })?;
    let mut out = output::stdout();
    if args.compact {
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
    } else {
        output::write_json(&mut out, &json)?;
    }
    Ok(Code::Ok)
}
