//! `cohort list`: the committed checkpoints, newest first.

use std::collections::BTreeMap;
use std::io::Write;

use anstyle::Style;
use cohort_checkpoint::{CheckpointStore, Damage, DamageKind, Error as StoreError, Manifest};
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
/// states stored by an older checkpoint), how its manifest is stored (whole, or as a delta of
/// an earlier full manifest), whether it is pinned (`cohort pin`: garbage collection keeps it)
/// and whether it is the recovery line: the newest checkpoint whose blobs all verify. Finding the recovery line reads the newest checkpoints' blobs; damaged
/// ones met on the way are marked, and one written by a newer cohort stops the search.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cohort list --store file:///var/lib/bank/checkpoints
  cohort list --json | jq '.[] | select(.recovery_line) | .id'")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// Print a JSON array of objects with id, created_at (RFC 3339) and created_at_ms, kind,
    /// rollback_to, epoch, objects, in_transit, bytes, parent, incremental, stored ("whole" or
    /// "delta"), delta_of (the checkpoint whose full manifest a delta is stored against),
    /// pinned, recovery_line, damage (null when intact or not checked) and newer_format (written by a
    /// newer cohort: not damaged, but unreadable by this build).
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
    /// `whole` or `delta`; null when the manifest is unreadable.
    stored: Option<&'static str>,
    /// For a delta, the checkpoint whose full manifest it is stored against.
    delta_of: Option<CheckpointId>,
    /// Pinned: garbage collection keeps it.
    pinned: bool,
    recovery_line: bool,
    /// What is damaged, when the checkpoint failed verification or its manifest is unreadable.
    damage: Option<String>,
    /// A blob of it was written by a newer format version than this build reads.
    newer_format: bool,
}

/// Why a checkpoint could not be read or verified.
#[derive(Clone, Debug)]
struct Problem {
    text: String,
    /// A newer cohort wrote it: not damage.
    newer_format: bool,
}

impl Problem {
    fn of_damage(d: &Damage) -> Self {
        Self {
            text: store::damage_text(d),
            newer_format: matches!(d.kind, DamageKind::FutureFormat { .. }),
        }
    }
}

/// How many manifests are read at once.
const CONCURRENCY: usize = 8;

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let ids = store.committed_ids().await?;
    let manifests = read_all(&store, &ids).await?;
    let pins = store.pins().await?;
    // A checkpoint of a newer format stops the search for the line; the rows still show.
    let (line, blocked) = match store.recovery_line().await {
        Ok(line) => (line, None),
        Err(e @ StoreError::FutureFormat { .. }) => (None, Some(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let recovery = line.as_ref().map(|l| l.manifest.id);
    let mut problems: BTreeMap<CheckpointId, Problem> = line
        .iter()
        .flat_map(|l| &l.skipped)
        .filter_map(|r| {
            r.damaged
                .first()
                .map(|d| (r.checkpoint, Problem::of_damage(d)))
        })
        .collect();
    if recovery.is_none() {
        // No line, and recovery_line() does not say why for each: ask each one.
        for id in manifests.keys() {
            let report = store.verify(*id).await?;
            if let Some(d) = report.damaged.first() {
                problems.insert(*id, Problem::of_damage(d));
            }
        }
    }

    let entries: Vec<Entry> = manifests
        .iter()
        .rev()
        .map(|(id, read)| {
            let mut entry = match &read.manifest {
                Ok(m) => from_manifest(m),
                Err(p) => unreadable(*id, p),
            };
            if let Some(delta_of) = read.delta_of {
                entry.stored = Some(store::stored_name(delta_of));
                entry.delta_of = delta_of;
            }
            entry.recovery_line = recovery == Some(*id);
            entry.pinned = pins.contains(id);
            if let Some(p) = problems.get(id)
                && entry.damage.is_none()
            {
                entry.damage = Some(p.text.clone());
                entry.newer_format = p.newer_format;
            }
            entry
        })
        .collect();

    let epoch_problems = store::epoch_problems(store.newest_epoch_state().await?.as_ref());

    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &entries)?;
        // Not a checkpoint, so not a row: said on stderr, where a pipe into jq still shows it.
        for problem in &epoch_problems {
            tracing::warn!("{problem}");
        }
        return Ok(Code::Ok);
    }
    let styles = Styles::default();
    if entries.is_empty() {
        writeln!(out, "no committed checkpoints in {}", store.url())?;
        for problem in &epoch_problems {
            writeln!(out, "{}", styles.bad.paint(problem))?;
        }
        return Ok(Code::Ok);
    }
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("CREATED", Align::Left),
        ("KIND", Align::Left),
        ("OBJECTS", Align::Right),
        ("BYTES", Align::Right),
        ("PARENT", Align::Right),
        ("INCREMENTAL", Align::Left),
        ("STORED", Align::Left),
        ("STATUS", Align::Left),
    ]);
    let none = || "-".to_owned();
    let plain = |s: String| (s, Style::new());
    for e in &entries {
        let (mut status, style) = match (&e.damage, e.recovery_line) {
            (_, true) => ("recovery line".to_owned(), styles.ok),
            (Some(_), false) if e.newer_format => ("newer format".to_owned(), styles.warn),
            (Some(_), false) => ("damaged".to_owned(), styles.bad),
            (None, false) => (String::new(), Style::new()),
        };
        if e.pinned {
            status = if status.is_empty() {
                "pinned".to_owned()
            } else {
                format!("{status}, pinned")
            };
        }
        let status = (status, style);
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
            plain(match (e.stored, e.delta_of) {
                (Some(_), Some(base)) => format!("delta of {base}"),
                (Some(stored), None) => stored.to_owned(),
                (None, _) => none(),
            }),
            status,
        ]);
    }
    table.write(&mut out, &styles)?;
    for e in &entries {
        match &e.damage {
            Some(why) if e.newer_format => {
                let what = format!("checkpoint {} was written by a newer cohort", e.id);
                writeln!(out, "{}: {why}", styles.warn.paint(what))?;
            }
            Some(damage) => {
                let what = format!("checkpoint {} is damaged", e.id);
                writeln!(out, "{}: {damage}", styles.bad.paint(what))?;
            }
            None => {}
        }
    }
    if let Some(why) = blocked {
        let what = "no recovery line: this build cannot read a newer checkpoint";
        writeln!(out, "{}: {why}", styles.warn.paint(what))?;
    }
    for problem in &epoch_problems {
        writeln!(out, "{}", styles.bad.paint(problem))?;
    }
    Ok(Code::Ok)
}

/// One manifest, or why it cannot be read, and how it is stored when that is known.
struct Read {
    manifest: Result<Manifest, Problem>,
    /// The checkpoint it is a delta of (`Some(None)`: stored whole); `None` when unknown.
    delta_of: Option<Option<CheckpointId>>,
}

async fn read_all(
    store: &CheckpointStore,
    ids: &[CheckpointId],
) -> anyhow::Result<BTreeMap<CheckpointId, Read>> {
    let mut reads = futures::stream::iter(ids.iter().copied())
        .map(|id| async move {
            let manifest = store.read_manifest(id).await;
            // Only the delta's base can be at fault then: its own blob read, so say how it is
            // stored. For any other failure the header is not to be trusted.
            let base_known = match &manifest {
                Ok(_) => true,
                Err(e) => e
                    .damage()
                    .is_some_and(|d| matches!(d.kind, DamageKind::BaseUnusable { .. })),
            };
            let delta_of = if base_known {
                Some(store.manifest_base(id).await)
            } else {
                None
            };
            (id, manifest, delta_of)
        })
        .buffer_unordered(CONCURRENCY);
    let mut out = BTreeMap::new();
    while let Some((id, manifest, delta_of)) = reads.next().await {
        let delta_of = match delta_of {
            None => None,
            Some(Ok(delta_of)) => Some(delta_of),
            // Changed since the manifest was read (GC expired it): not known.
            Some(Err(
                StoreError::Damaged { .. }
                | StoreError::FutureFormat { .. }
                | StoreError::NotFound { .. },
            )) => None,
            Some(Err(e)) => return Err(e.into()),
        };
        let manifest = match manifest {
            Ok(m) => Ok(m),
            // Unreadable manifests are shown, not fatal; a store that stops answering is.
            Err(StoreError::Damaged { damage, .. }) => Err(Problem::of_damage(&damage)),
            Err(e @ StoreError::FutureFormat { .. }) => Err(Problem {
                text: e.to_string(),
                newer_format: true,
            }),
            // Expired by a concurrent GC between the listing and the read.
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        out.insert(id, Read { manifest, delta_of });
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
        stored: None,
        delta_of: None,
        pinned: false,
        recovery_line: false,
        damage: None,
        newer_format: false,
    }
}

fn unreadable(id: CheckpointId, why: &Problem) -> Entry {
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
        stored: None,
        delta_of: None,
        pinned: false,
        recovery_line: false,
        damage: Some(why.text.clone()),
        newer_format: why.newer_format,
    }
}
