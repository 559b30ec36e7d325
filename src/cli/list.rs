//! `cohort list`: the committed checkpoints, newest first.

use std::collections::BTreeMap;
use std::io::Write;

use anstyle::Style;
use cohort_checkpoint::{CheckpointStore, Manifest};
use cohort_object_api::CheckpointId;
use futures::StreamExt;
use serde::Serialize;

use crate::cli::StoreArgs;
use crate::cli::failure::Code;
use crate::cli::output::{self, Align, Paint, Styles, Table};
use crate::cli::store;

/// List the committed checkpoints, newest first.
///
/// For each: its id, creation time, kind (checkpoint, rollback or fence), object count, the
/// bytes of the states it references, its parent, whether it is incremental (it references
/// states stored by an older checkpoint) and whether it is the recovery line: the newest
/// checkpoint whose blobs all verify. Finding the recovery line reads the newest checkpoints'
/// blobs; damaged ones met on the way are marked.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cohort list --store file:///var/lib/bank/checkpoints
  cohort list --json | jq '.[] | select(.recovery_line) | .id'")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// Print a JSON array of objects with id, created_at (RFC 3339) and created_at_ms, kind,
    /// rollback_to, epoch, objects, in_transit, bytes, parent, incremental, recovery_line and
    /// damage (null when intact or not checked).
    #[arg(long)]
    json: bool,
}

/// One row of `cohort list --json`.
#[derive(Debug, Serialize)]
struct Entry {
    id: CheckpointId,
    /// RFC 3339, UTC, milliseconds; null when the manifest is unreadable.
    created_at: Option<String>,
    created_at_ms: Option<u64>,
    kind: Option<&'static str>,
    #[serde(skip)]
    label: Option<String>,
    /// For a rollback, the checkpoint it points at.
    rollback_to: Option<CheckpointId>,
    epoch: Option<u64>,
    objects: Option<usize>,
    in_transit: Option<usize>,
    bytes: Option<u64>,
    parent: Option<CheckpointId>,
    incremental: Option<bool>,
    recovery_line: bool,
    /// What is damaged, when the checkpoint failed verification or its manifest is unreadable.
    damage: Option<String>,
}

/// How many manifests are read at once.
const CONCURRENCY: usize = 8;

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let ids = store.committed_ids().await?;
    let manifests = read_all(&store, &ids).await?;
    let line = store.recovery_line().await?;
    let recovery = line.as_ref().map(|l| l.manifest.id);
    let mut damaged: BTreeMap<CheckpointId, String> = line
        .iter()
        .flat_map(|l| &l.skipped)
        .filter_map(|r| {
            r.damaged
                .first()
                .map(|d| (r.checkpoint, store::damage_text(d)))
        })
        .collect();
    if recovery.is_none() {
        // No checkpoint verifies at all, and recovery_line() does not say why: ask each one.
        for id in manifests.keys() {
            let report = store.verify(*id).await?;
            if let Some(d) = report.damaged.first() {
                damaged.insert(*id, store::damage_text(d));
            }
        }
    }

    let entries: Vec<Entry> = manifests
        .iter()
        .rev()
        .map(|(id, manifest)| {
            let mut entry = match manifest {
                Ok(m) => from_manifest(m),
                Err(e) => unreadable(*id, e),
            };
            entry.recovery_line = recovery == Some(*id);
            if let Some(d) = damaged.get(id) {
                entry.damage.get_or_insert_with(|| d.clone());
            }
            entry
        })
        .collect();

    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &entries)?;
        return Ok(Code::Ok);
    }
    if entries.is_empty() {
        writeln!(out, "no committed checkpoints in {}", store.url())?;
        return Ok(Code::Ok);
    }
    let styles = Styles::default();
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("CREATED", Align::Left),
        ("KIND", Align::Left),
        ("OBJECTS", Align::Right),
        ("BYTES", Align::Right),
        ("PARENT", Align::Right),
        ("INCREMENTAL", Align::Left),
        ("STATUS", Align::Left),
    ]);
    let none = || "-".to_owned();
    let plain = |s: String| (s, Style::new());
    for e in &entries {
        let status = match (&e.damage, e.recovery_line) {
            (_, true) => ("recovery line".to_owned(), styles.ok),
            (Some(_), false) => ("damaged".to_owned(), styles.bad),
            (None, false) => (String::new(), Style::new()),
        };
        table.styled_row(vec![
            plain(e.id.to_string()),
            plain(e.created_at_ms.map_or_else(none, output::time_short)),
            plain(e.label.clone().unwrap_or_else(|| "?".into())),
            plain(e.objects.map_or_else(none, |n| n.to_string())),
            plain(e.bytes.map_or_else(none, output::size)),
            plain(e.parent.map_or_else(none, |p| p.to_string())),
            plain(match e.incremental {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => none(),
            }),
            status,
        ]);
    }
    table.write(&mut out, &styles)?;
    for e in &entries {
        if let Some(damage) = &e.damage {
            let what = format!("checkpoint {} is damaged", e.id);
            writeln!(out, "{}: {damage}", styles.bad.paint(what))?;
        }
    }
    Ok(Code::Ok)
}

async fn read_all(
    store: &CheckpointStore,
    ids: &[CheckpointId],
) -> anyhow::Result<BTreeMap<CheckpointId, Result<Manifest, String>>> {
    let mut reads = futures::stream::iter(ids.iter().copied())
        .map(|id| async move { (id, store.read_manifest(id).await) })
        .buffer_unordered(CONCURRENCY);
    let mut out = BTreeMap::new();
    while let Some((id, result)) = reads.next().await {
        let result = match result {
            Ok(m) => Ok(m),
            // Unreadable manifests are shown, not fatal; a store that stops answering is.
            Err(cohort_checkpoint::Error::Damaged { damage, .. }) => {
                Err(store::damage_text(&damage))
            }
            Err(e @ cohort_checkpoint::Error::FutureFormat { .. }) => Err(e.to_string()),
            // Expired by a concurrent GC between the listing and the read.
            Err(cohort_checkpoint::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        out.insert(id, result);
    }
    Ok(out)
}

fn from_manifest(m: &Manifest) -> Entry {
    Entry {
        id: m.id,
        created_at: Some(output::time_precise(m.created_at_ms)),
        created_at_ms: Some(m.created_at_ms),
        kind: Some(store::kind_name(&m.kind)),
        label: Some(store::kind_label(&m.kind)),
        rollback_to: store::rollback_target(&m.kind),
        epoch: Some(m.epoch),
        objects: Some(m.objects.len()),
        in_transit: Some(m.in_transit.len()),
        bytes: Some(m.referenced_bytes()),
        parent: m.parent,
        incremental: Some(store::is_incremental(m)),
        recovery_line: false,
        damage: None,
    }
}

fn unreadable(id: CheckpointId, why: &str) -> Entry {
    Entry {
        id,
        created_at: None,
        created_at_ms: None,
        kind: None,
        label: None,
        rollback_to: None,
        epoch: None,
        objects: None,
        in_transit: None,
        bytes: None,
        parent: None,
        incremental: None,
        recovery_line: false,
        damage: Some(why.to_owned()),
    }
}
