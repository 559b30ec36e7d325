//! `cohort export ID`: every object's decoded state, and every in-transit message, as JSON lines.

use std::io::Write;

use cohort_checkpoint::Manifest;
use cohort_object_api::{CheckpointId, EncodedState, ObjectId};
use serde::Serialize;
use serde_json::Value as Json;

use crate::cli::StoreArgs;
use crate::cli::decode::{self, BinaryAs};
use crate::cli::failure::{Code, Failure};
use crate::cli::output;
use crate::cli::store;

/// Write a checkpoint's objects and in-transit messages as JSON lines.
///
/// Every object's state, then every in-transit message, decoded without the application's types
/// (as `cohort inspect` decodes a state). One line per record, in object id order, then the in-transit messages in recorded order.
/// An object line has kind "object", id, type, version, generation and state; a message line
/// has kind "in_transit", from, to, seq, type, version and message. Every entry's length and
/// crc are checked first: a damaged checkpoint writes nothing and exits 1.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 written; 1 the checkpoint is damaged; 2 usage, IO or configuration error.

Examples:
  cohort export 42 > checkpoint-42.jsonl
  cohort export 42 | jq -s 'map(select(.kind == \"object\") | .state.balance) | add'")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint id, as `cohort list` shows it.
    #[arg(value_name = "ID")]
    id: CheckpointId,

    /// How to print binary data.
    #[arg(long, value_enum, default_value_t = BinaryAs::Base64, value_name = "AS")]
    binary: BinaryAs,
}

/// One line of the export.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line<'a> {
    Object {
        id: &'a ObjectId,
        #[serde(rename = "type")]
        type_name: &'a str,
        version: u32,
        generation: Option<u64>,
        state: Json,
    },
    InTransit {
        from: &'a ObjectId,
        to: &'a ObjectId,
        seq: u64,
        #[serde(rename = "type")]
        type_name: &'a str,
        version: u32,
        message: Json,
    },
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let manifest = store::read_manifest(&store, args.id).await?;
    // Read and decode everything before writing a line: a damaged checkpoint writes nothing.
    let states = store.read_states(&manifest).await?;
    let messages = store.read_in_transit(&manifest).await?;
    let mut lines = Vec::with_capacity(states.len() + messages.len());
    for (id, state) in &states {
        lines.push(Line::Object {
            id,
            type_name: &state.tag().type_name,
            version: state.tag().version,
            generation: manifest.objects.get(id).and_then(|e| e.generation),
            state: decoded(&manifest, id, "the state of", state, args.binary)?,
        });
    }
    for (t, state) in &messages {
        lines.push(Line::InTransit {
            from: &t.from,
            to: &t.to,
            seq: t.seq,
            type_name: &state.tag().type_name,
            version: state.tag().version,
            message: decoded(
                &manifest,
                &t.to,
                "a message in transit to",
                state,
                args.binary,
            )?,
        });
    }
    let mut out = output::stdout();
    for line in &lines {
        serde_json::to_writer(&mut out, line)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(Code::Ok)
}

fn decoded(
    manifest: &Manifest,
    object: &ObjectId,
    what: &str,
    state: &EncodedState,
    binary: BinaryAs,
) -> anyhow::Result<Json> {
    decode::msgpack_to_json(state.payload(), binary).map_err(|e| {
        Failure::damaged(format!(
            "{what} {object} ({}) in checkpoint {} passes its crc check but is not msgpack: {e:#}",
            state.tag(),
            manifest.id
        ))
        .into()
    })
}
