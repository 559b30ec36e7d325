//! `cohort diff A B`: the objects added, removed and changed between two checkpoints, with a
//! field-level diff of the changed states.

use std::collections::BTreeMap;
use std::io::Write;

use cohort_checkpoint::{CheckpointStore, Manifest, ObjectEntry};
use cohort_object_api::{CheckpointId, EncodedState, ObjectId};
use serde::Serialize;

use crate::cli::decode::{self, BinaryAs};
use crate::cli::failure::{Code, Failure};
use crate::cli::jsondiff::{self, Change};
use crate::cli::output::{self, Paint, Styles};
use crate::cli::store;
use crate::cli::{Parsed, StoreArgs};

/// Compare two checkpoints, object by object and field by field.
///
/// Lists the objects added, removed or changed from A to B, and for each changed object a
/// field-level diff of its decoded state. Objects whose entry is shared (B references A's stored state) or whose bytes are equal are
/// unchanged and not read twice. Paths name fields and indexes: .balance, .history[3],
/// .owners["first name"]. The exit code is 0 whether or not anything changed.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cohort diff 41 42
  cohort diff 41 42 --json | jq '.changed[].id'")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// The older checkpoint.
    #[arg(value_name = "A", value_parser = Parsed::<CheckpointId>::new())]
    a: CheckpointId,

    /// The newer checkpoint.
    #[arg(value_name = "B", value_parser = Parsed::<CheckpointId>::new())]
    b: CheckpointId,

    /// Print a JSON object with added, removed and changed objects (each changed one with its
    /// changes: op, path, and from/to or value) and the count of unchanged ones.
    #[arg(long)]
    json: bool,

    /// How to show binary data in changed values.
    #[arg(long, value_enum, default_value_t = BinaryAs::Base64, value_name = "AS")]
    binary: BinaryAs,
}

#[derive(Debug, Serialize)]
struct Diff {
    from: CheckpointId,
    to: CheckpointId,
    added: Vec<Listed>,
    removed: Vec<Listed>,
    changed: Vec<Changed>,
    unchanged: usize,
}

#[derive(Debug, Serialize)]
struct Listed {
    id: ObjectId,
    #[serde(rename = "type")]
    type_name: String,
    version: u32,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Changed {
    id: ObjectId,
    from: Tag,
    to: Tag,
    changes: Vec<Change>,
}

#[derive(Debug, PartialEq, Serialize)]
struct Tag {
    #[serde(rename = "type")]
    type_name: String,
    version: u32,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let (a, b) = futures::try_join!(
        store::read_manifest(&store, args.a),
        store::read_manifest(&store, args.b)
    )?;
    let diff = compare(&store, &a, &b, args.binary).await?;
    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &diff)?;
    } else {
        write_human(&mut out, &diff)?;
    }
    Ok(Code::Ok)
}

async fn compare(
    store: &CheckpointStore,
    a: &Manifest,
    b: &Manifest,
    binary: BinaryAs,
) -> anyhow::Result<Diff> {
    let listed = |id: &ObjectId, e: &ObjectEntry| Listed {
        id: id.clone(),
        type_name: e.type_name.to_string(),
        version: e.version,
        bytes: e.location.len,
    };
    let added = b
        .objects
        .iter()
        .filter(|(id, _)| !a.objects.contains_key(*id))
        .map(|(id, e)| listed(id, e))
        .collect();
    let removed = a
        .objects
        .iter()
        .filter(|(id, _)| !b.objects.contains_key(*id))
        .map(|(id, e)| listed(id, e))
        .collect();
    let mut unchanged = 0;
    let mut candidates = Vec::new();
    for (id, ea) in &a.objects {
        if let Some(eb) = b.objects.get(id) {
            if ea.location == eb.location {
                unchanged += 1;
            } else {
                candidates.push(id.clone());
            }
        }
    }

    // One coalesced, checked read per side, of the candidates only.
    let old = read_subset(store, a, &candidates).await?;
    let new = read_subset(store, b, &candidates).await?;
    let mut changed = Vec::new();
    for id in &candidates {
        let (Some(x), Some(y)) = (old.get(id), new.get(id)) else {
            // read_states returns every object asked for, or fails.
            continue;
        };
        if x == y {
            unchanged += 1;
            continue;
        }
        let from = decode_state(x, id, a.id, binary)?;
        let to = decode_state(y, id, b.id, binary)?;
        changed.push(Changed {
            id: id.clone(),
            from: tag(x),
            to: tag(y),
            changes: jsondiff::diff(&from, &to),
        });
    }
    Ok(Diff {
        from: a.id,
        to: b.id,
        added,
        removed,
        changed,
        unchanged,
    })
}

async fn read_subset(
    store: &CheckpointStore,
    manifest: &Manifest,
    objects: &[ObjectId],
) -> anyhow::Result<BTreeMap<ObjectId, EncodedState>> {
    if objects.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut subset = manifest.clone();
    subset.objects.retain(|id, _| objects.contains(id));
    subset.in_transit.clear();
    Ok(store.read_states(&subset).await?.into_iter().collect())
}

fn decode_state(
    state: &EncodedState,
    object: &ObjectId,
    checkpoint: CheckpointId,
    binary: BinaryAs,
) -> anyhow::Result<serde_json::Value> {
    decode::msgpack_to_json(state.payload(), binary).map_err(|e| {
        Failure::damaged(format!(
            "the state of {object} ({}) in checkpoint {checkpoint} passes its crc check but is not msgpack: {e:#}",
            state.tag()
        ))
        .into()
    })
}

fn tag(state: &EncodedState) -> Tag {
    Tag {
        type_name: state.tag().type_name.to_string(),
        version: state.tag().version,
    }
}

/// Longest rendering of one value in the human form; `--json` has them whole.
const VALUE_WIDTH: usize = 120;

fn write_human(out: &mut impl Write, d: &Diff) -> anyhow::Result<()> {
    let styles = Styles::default();
    writeln!(
        out,
        "{}",
        styles.header.paint(format!(
            "checkpoint {} → {}: {} added, {} removed, {} changed, {} unchanged",
            d.from,
            d.to,
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.unchanged
        ))
    )?;
    for l in &d.added {
        let line = format!("+ {}  {} v{}", l.id, l.type_name, l.version);
        writeln!(out, "{}", styles.ok.paint(line))?;
    }
    for l in &d.removed {
        let line = format!("- {}  {} v{}", l.id, l.type_name, l.version);
        writeln!(out, "{}", styles.bad.paint(line))?;
    }
    for c in &d.changed {
        let tag = if c.from == c.to {
            format!("{} v{}", c.to.type_name, c.to.version)
        } else {
            format!(
                "{} v{} → {} v{}",
                c.from.type_name, c.from.version, c.to.type_name, c.to.version
            )
        };
        writeln!(out, "{}", styles.warn.paint(format!("~ {}  {tag}", c.id)))?;
        if c.changes.is_empty() {
            // Different bytes, same decoded value (for example a map written in another order).
            writeln!(out, "    (same value, encoded differently)")?;
        }
        for change in &c.changes {
            let line = match change {
                Change::Added { path, value } => format!("{path}: added {}", short(value)),
                Change::Removed { path, value } => format!("{path}: removed {}", short(value)),
                Change::Changed { path, from, to } => {
                    format!("{path}: {} → {}", short(from), short(to))
                }
            };
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}

fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= VALUE_WIDTH {
        return text;
    }
    let cut: String = text.chars().take(VALUE_WIDTH - 1).collect();
    format!("{cut}…")
}
