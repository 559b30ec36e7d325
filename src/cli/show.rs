//! `cohort show ID`: one manifest in readable form.

use std::collections::BTreeMap;
use std::io::Write;

use anstyle::Style;
use base64::Engine as _;
use cohort_checkpoint::Manifest;
use cohort_object_api::{CheckpointId, ObjectId};
use serde::Serialize;

use crate::cli::failure::Code;
use crate::cli::output::{self, Align, Paint, Styles, Table};
use crate::cli::store;
use crate::cli::{Parsed, StoreArgs};

/// Show one checkpoint's manifest: objects, segments, in-transit messages.
///
/// Lists its objects with their types, schema versions, sizes and the segments they live in,
/// and the in-transit messages recorded with it, and says how the manifest is stored: whole, or
/// as a delta of an earlier checkpoint's full manifest (the entries that differ from it). Only
/// the manifest (and a delta's base) is read; `cohort verify ID` checks the blobs it points at.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cohort show 42
  cohort show 42 --json | jq '.objects[] | select(.type == \"Account\") | .id'")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// The checkpoint id, as `cohort list` shows it.
    #[arg(value_name = "ID", value_parser = Parsed::<CheckpointId>::new())]
    id: CheckpointId,

    /// Print a JSON object; `stored` is "whole" or "delta" and `delta_of` the checkpoint a
    /// delta is stored against (null when whole); its `objects` array has entries with id,
    /// type, version, bytes, generation, segment, offset and crc.
    #[arg(long)]
    json: bool,
}

/// `cohort show --json`.
#[derive(Debug, Serialize)]
struct Shown {
    id: CheckpointId,
    created_at: String,
    created_at_ms: u64,
    kind: &'static str,
    #[serde(skip)]
    label: String,
    rollback_to: Option<CheckpointId>,
    epoch: u64,
    round: String,
    parent: Option<CheckpointId>,
    incremental: bool,
    /// `whole` or `delta`.
    stored: &'static str,
    /// For a delta, the checkpoint whose full manifest it is stored against.
    delta_of: Option<CheckpointId>,
    bytes: u64,
    objects: Vec<ShownObject>,
    segments: Vec<ShownSegment>,
    in_transit: Vec<ShownMessage>,
    /// Free metadata, each value base64.
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct ShownObject {
    id: ObjectId,
    #[serde(rename = "type")]
    type_name: String,
    version: u32,
    generation: Option<u64>,
    bytes: u64,
    segment: String,
    offset: u64,
    crc: u32,
}

#[derive(Debug, Serialize)]
struct ShownSegment {
    key: String,
    /// The checkpoint that wrote it: another one than `id` for an incremental reference.
    written_by: Option<CheckpointId>,
    entries: usize,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct ShownMessage {
    from: ObjectId,
    to: ObjectId,
    seq: u64,
    bytes: u64,
    segment: String,
    offset: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let manifest = store::read_manifest(&store, args.id).await?;
    let delta_of = store.manifest_base(args.id).await?;
    let shown = describe(&manifest, delta_of);
    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &shown)?;
    } else {
        write_human(&mut out, &shown)?;
    }
    Ok(Code::Ok)
}

fn describe(m: &Manifest, delta_of: Option<CheckpointId>) -> Shown {
    let mut segments: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for l in m.locations() {
        let s = segments.entry(&l.segment).or_default();
        s.0 += 1;
        s.1 = s.1.saturating_add(l.len);
    }
    Shown {
        id: m.id,
        created_at: output::time_precise(m.created_at_ms),
        created_at_ms: m.created_at_ms,
        kind: store::kind_name(&m.kind),
        label: store::kind_label(&m.kind),
        rollback_to: store::rollback_target(&m.kind),
        epoch: m.epoch,
        round: m.round.clone(),
        parent: m.parent,
        incremental: store::is_incremental(m),
        stored: store::stored_name(delta_of),
        delta_of,
        bytes: m.referenced_bytes(),
        objects: m
            .objects
            .iter()
            .map(|(id, e)| ShownObject {
                id: id.clone(),
                type_name: e.type_name.clone(),
                version: e.version,
                generation: e.generation,
                bytes: e.location.len,
                segment: e.location.segment.clone(),
                offset: e.location.offset,
                crc: e.location.crc,
            })
            .collect(),
        segments: segments
            .into_iter()
            .map(|(key, (entries, bytes))| ShownSegment {
                key: key.to_owned(),
                written_by: store::segment_checkpoint(key),
                entries,
                bytes,
            })
            .collect(),
        in_transit: m
            .in_transit
            .iter()
            .map(|t| ShownMessage {
                from: t.from.clone(),
                to: t.to.clone(),
                seq: t.seq,
                bytes: t.location.len,
                segment: t.location.segment.clone(),
                offset: t.location.offset,
            })
            .collect(),
        metadata: m
            .metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect(),
    }
}

fn write_human(out: &mut impl Write, s: &Shown) -> anyhow::Result<()> {
    let styles = Styles::default();
    writeln!(
        out,
        "{}",
        styles.header.paint(format!("checkpoint {}", s.id))
    )?;
    let fields = [
        ("created", s.created_at.clone()),
        ("kind", s.label.clone()),
        ("epoch", s.epoch.to_string()),
        ("round", s.round.clone()),
        (
            "parent",
            s.parent.map_or_else(|| "-".into(), |p| p.to_string()),
        ),
        (
            "objects",
            format!("{} ({})", s.objects.len(), output::size(s.bytes)),
        ),
        (
            "incremental",
            if s.incremental { "yes" } else { "no" }.into(),
        ),
        (
            "stored",
            match s.delta_of {
                Some(base) => format!("delta of checkpoint {base}"),
                None => s.stored.to_owned(),
            },
        ),
        (
            "in transit",
            output::count(s.in_transit.len(), "message", "messages"),
        ),
        (
            "metadata",
            if s.metadata.is_empty() {
                "-".into()
            } else {
                s.metadata.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        ),
    ];
    for (name, value) in fields {
        writeln!(out, "  {name:<12}{value}")?;
    }

    writeln!(out)?;
    let mut objects = Table::new(&[
        ("OBJECT", Align::Left),
        ("TYPE", Align::Left),
        ("VERSION", Align::Right),
        ("GENERATION", Align::Right),
        ("BYTES", Align::Right),
        ("SEGMENT", Align::Left),
        ("OFFSET", Align::Right),
    ]);
    for o in &s.objects {
        objects.row(vec![
            o.id.to_string(),
            o.type_name.clone(),
            o.version.to_string(),
            o.generation.map_or_else(|| "-".into(), |g| g.to_string()),
            o.bytes.to_string(),
            o.segment.clone(),
            o.offset.to_string(),
        ]);
    }
    objects.write(out, &styles)?;

    writeln!(out)?;
    let mut segments = Table::new(&[
        ("SEGMENT", Align::Left),
        ("ENTRIES", Align::Right),
        ("BYTES", Align::Right),
        ("WRITTEN BY", Align::Left),
    ]);
    for seg in &s.segments {
        let (by, style) = match seg.written_by {
            Some(id) if id == s.id => ("this checkpoint".to_owned(), Style::new()),
            Some(id) => (format!("checkpoint {id}"), styles.dim),
            None => ("?".to_owned(), styles.warn),
        };
        segments.styled_row(vec![
            (seg.key.clone(), Style::new()),
            (seg.entries.to_string(), Style::new()),
            (seg.bytes.to_string(), Style::new()),
            (by, style),
        ]);
    }
    segments.write(out, &styles)?;

    if !s.in_transit.is_empty() {
        writeln!(out)?;
        let mut messages = Table::new(&[
            ("FROM", Align::Left),
            ("TO", Align::Left),
            ("SEQ", Align::Right),
            ("BYTES", Align::Right),
            ("SEGMENT", Align::Left),
            ("OFFSET", Align::Right),
        ]);
        for t in &s.in_transit {
            messages.row(vec![
                t.from.to_string(),
                t.to.to_string(),
                t.seq.to_string(),
                t.bytes.to_string(),
                t.segment.clone(),
                t.offset.to_string(),
            ]);
        }
        messages.write(out, &styles)?;
    }
    Ok(())
}
