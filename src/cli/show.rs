//! `cohort show ID`: one manifest in readable form.

use std::collections::BTreeMap;
use std::io::Write;

use anstyle::Style;
use base64::Engine as _;
use cohort_checkpoint::{CheckpointStore, Error as StoreError, InTransitEntry, Manifest};
use cohort_object_api::{CheckpointId, EncodedState, ObjectId};
use serde::Serialize;
use serde_json::Value as Json;

use crate::cli::decode::{self, BinaryAs};
use crate::cli::failure::Code;
use crate::cli::output::{self, Align, Paint, Styles, Table};
use crate::cli::store;
use crate::cli::{Parsed, StoreArgs};

/// Show one checkpoint's manifest: objects, segments, in-transit messages.
///
/// Lists its objects with their types, schema versions, sizes and the segments they live in,
/// and the in-transit messages recorded with it, each decoded into JSON without the
/// application's types (as `cohort inspect` decodes a state), and says how the manifest is
/// stored: whole, or as a delta of an earlier checkpoint's full manifest (the entries that
/// differ from it). Reads the manifest (and a delta's base) and the in-transit messages; `cohort
/// verify ID` checks every blob it points at.
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
    /// type, version, bytes, generation, segment, offset and crc; its `in_transit` array has
    /// from, to, seq, type, bytes, segment, offset, the decoded message, and damage (why the
    /// message could not be read, else null).
    #[arg(long)]
    json: bool,

    /// How to print binary data in messages.
    #[arg(long, value_enum, default_value_t = BinaryAs::Base64, value_name = "AS")]
    binary: BinaryAs,
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
    /// The ingress sources: where each has read its log to (replay resumes there).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ingress: Vec<ShownIngress>,
}

#[derive(Debug, Serialize)]
struct ShownIngress {
    source: ObjectId,
    log: String,
    position: u64,
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
    /// The message type recorded with it; null when it could not be read.
    #[serde(rename = "type")]
    type_name: Option<String>,
    bytes: u64,
    segment: String,
    offset: u64,
    /// The message, decoded; null when it could not be read.
    message: Option<Json>,
    /// Why it could not be read or decoded.
    damage: Option<String>,
}

/// One in-transit message read back: its tag and decoded payload, or why not.
type ReadMessage = Result<(String, Json), String>;

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let manifest = store::read_manifest(&store, args.id).await?;
    let delta_of = store.manifest_base(args.id).await?;
    let messages = read_messages(&store, &manifest, args.binary).await?;
    let mut shown = describe(&manifest, delta_of, messages);
    shown.ingress = cohort::coordinator::ingress::source_positions(&store, &manifest)
        .await?
        .into_iter()
        .map(|(source, log, position)| ShownIngress {
            source,
            log,
            position,
        })
        .collect();
    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &shown)?;
    } else {
        write_human(&mut out, &shown)?;
    }
    Ok(Code::Ok)
}

/// Reads and decodes the in-transit messages, one result per message: a damaged one is shown
/// as such, not fatal (`cohort verify` reports damage).
async fn read_messages(
    store: &CheckpointStore,
    m: &Manifest,
    binary: BinaryAs,
) -> anyhow::Result<Vec<ReadMessage>> {
    let decode = |state: &EncodedState| -> ReadMessage {
        decode::msgpack_to_json(state.payload(), binary)
            .map(|json| (state.tag().type_name.to_string(), json))
            .map_err(|e| format!("passes its crc check but is not msgpack: {e:#}"))
    };
    match store.read_in_transit(m).await {
        Ok(read) => Ok(read.iter().map(|(_, state)| decode(state)).collect()),
        // One bad blob: read each on its own, so that the others still show.
        Err(StoreError::Damaged { .. } | StoreError::FutureFormat { .. }) => {
            let mut out = Vec::with_capacity(m.in_transit.len());
            for t in &m.in_transit {
                out.push(read_one(store, t).await?.and_then(|s| decode(&s)));
            }
            Ok(out)
        }
        Err(e) => Err(e.into()),
    }
}

async fn read_one(
    store: &CheckpointStore,
    t: &InTransitEntry,
) -> anyhow::Result<Result<EncodedState, String>> {
    match store.read_state(&t.location).await {
        Ok(state) => Ok(Ok(state)),
        Err(e @ (StoreError::Damaged { .. } | StoreError::FutureFormat { .. })) => {
            Ok(Err(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

fn describe(m: &Manifest, delta_of: Option<CheckpointId>, messages: Vec<ReadMessage>) -> Shown {
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
                type_name: e.type_name.to_string(),
                version: e.version,
                generation: e.generation,
                bytes: e.location.len,
                segment: e.location.segment.to_string(),
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
            .zip(messages)
            .map(|(t, read)| {
                let (type_name, message, damage) = match read {
                    Ok((type_name, json)) => (Some(type_name), Some(json), None),
                    Err(why) => (None, None, Some(why)),
                };
                ShownMessage {
                    from: t.from.clone(),
                    to: t.to.clone(),
                    seq: t.seq,
                    type_name,
                    bytes: t.location.len,
                    segment: t.location.segment.to_string(),
                    offset: t.location.offset,
                    message,
                    damage,
                }
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
        ingress: Vec::new(),
    }
}

/// Longest message shown in the table; `--json` has them whole.
const MESSAGE_WIDTH: usize = 60;

/// A decoded message on one line, cut at [`MESSAGE_WIDTH`] characters.
fn one_line(json: &Json) -> String {
    let text = json.to_string();
    if text.chars().count() <= MESSAGE_WIDTH {
        return text;
    }
    let mut cut: String = text.chars().take(MESSAGE_WIDTH - 1).collect();
    cut.push('…');
    cut
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
    for i in &s.ingress {
        writeln!(
            out,
            "  {:<12}{} has read ingress log {} to position {}",
            "ingress", i.source, i.log, i.position
        )?;
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
            ("TYPE", Align::Left),
            ("MESSAGE", Align::Left),
        ]);
        for t in &s.in_transit {
            let (message, style) = match (&t.message, &t.damage) {
                (Some(json), _) => (one_line(json), Style::new()),
                (None, _) => ("damaged".to_owned(), styles.bad),
            };
            messages.styled_row(vec![
                (t.from.to_string(), Style::new()),
                (t.to.to_string(), Style::new()),
                (t.seq.to_string(), Style::new()),
                (t.bytes.to_string(), Style::new()),
                (t.segment.clone(), Style::new()),
                (t.offset.to_string(), Style::new()),
                (
                    t.type_name.clone().unwrap_or_else(|| "?".into()),
                    Style::new(),
                ),
                (message, style),
            ]);
        }
        messages.write(out, &styles)?;
        for t in &s.in_transit {
            if let Some(why) = &t.damage {
                let what = format!("the message {} -> {} #{} is damaged", t.from, t.to, t.seq);
                writeln!(out, "{}: {why}", styles.bad.paint(what))?;
            }
        }
    }
    Ok(())
}
