//! `cohort verify [ID]`: presence, length and crc of every entry of the retained checkpoints.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use cohort_checkpoint::ingress::IngressLog;
use cohort_checkpoint::{CheckpointStore, Damage, DamageKind, VerifyProgress, VerifyReport};
use cohort_object_api::{CheckpointId, ObjectId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::failure::Code;
use crate::cli::output::{self, Paint, Styles};
use crate::cli::store;
use crate::cli::{Parsed, StoreArgs};

/// Verify that checkpoints are intact.
///
/// Checks that every blob they reference is present, long enough, and matches its crc. With no
/// ID, every retained (committed, not expired) checkpoint is verified, oldest first,
/// with a progress bar on a terminal, then every ingress log (each batch's crc, no input
/// missing, and that the oldest checkpoint can still replay from where its source was). Each
/// damaged entry is named: the checkpoint, the object and the blob.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 when everything verified is intact, 1 when anything is damaged or was written by a
newer cohort (this build cannot check it: upgrade), 2 when the store cannot be read.

Examples:
  cohort verify
  cohort verify 42
  cohort verify --json | jq '.[] | select(.ok | not)'")]
pub(crate) struct Args {
    #[command(flatten)]
    store: StoreArgs,

    /// Verify only this checkpoint.
    #[arg(value_name = "ID", value_parser = Parsed::<CheckpointId>::new())]
    id: Option<CheckpointId>,

    /// Print a JSON array with one object per checkpoint: checkpoint, ok, newer_format,
    /// entries, bytes, and the damaged entries (checkpoint, object, blob, kind, problem, and
    /// for kind base_unusable the base manifest's key as base). Without ID, a damaged newest
    /// epoch record or lease adds an object with epoch set and checkpoint null.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Verified {
    /// Null for the newest epoch's record and lease.
    checkpoint: Option<CheckpointId>,
    /// Set for the newest epoch's record and lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    /// Set for an ingress log (entries: the inputs it holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress: Option<String>,
    ok: bool,
    /// Written by a newer cohort: not damaged, but this build cannot check it.
    newer_format: bool,
    entries: usize,
    bytes: u64,
    damaged: Vec<Damaged>,
}

#[derive(Debug, Serialize)]
struct Damaged {
    /// Null for an epoch record or lease.
    checkpoint: Option<CheckpointId>,
    /// Null when a manifest or a whole segment header is damaged.
    object: Option<ObjectId>,
    blob: String,
    /// missing, truncated, crc_mismatch, header_mismatch, undecodable, future_format (written
    /// by a newer cohort), base_unusable (a delta manifest whose base manifest cannot be used),
    /// other.
    kind: &'static str,
    problem: String,
    /// For base_unusable: the base manifest's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<String>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<Code> {
    let store = store::open_read_only(&args.store).await?;
    let reports = match args.id {
        Some(id) => vec![store.verify(id).await?],
        None => {
            let bar = progress_bar();
            let reports = store.verify_all_with_progress(|p| advance(&bar, &p)).await;
            bar.finish_and_clear();
            reports?
        }
    };
    let mut verified: Vec<Verified> = reports.iter().map(from_report).collect();
    // The newest epoch's record and lease: standbys read them to take over.
    if args.id.is_none()
        && let Some(state) = store.newest_epoch_state().await?
        && state.damage().next().is_some()
    {
        let damaged: Vec<Damaged> = state.damage().map(from_damage).collect();
        verified.push(Verified {
            checkpoint: None,
            ingress: None,
            epoch: Some(state.epoch),
            ok: false,
            newer_format: damaged.iter().all(|d| d.kind == "future_format"),
            entries: 0,
            bytes: 0,
            damaged,
        });
    }
    if args.id.is_none() {
        verified.extend(verify_ingress(&store).await?);
    }
    let damaged = verified.iter().filter(|v| !v.ok).count();

    let mut out = output::stdout();
    if args.json {
        output::write_json(&mut out, &verified)?;
    } else {
        write_human(&mut out, &verified, store.url())?;
    }
    Ok(if damaged == 0 {
        Code::Ok
    } else {
        Code::Failure
    })
}

/// Every ingress log: its blobs, and that the oldest committed checkpoint can still replay
/// from the position its source recorded (GC and truncation must not have gone past it).
async fn verify_ingress(store: &CheckpointStore) -> anyhow::Result<Vec<Verified>> {
    let names = IngressLog::names(store).await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let oldest = match store.committed_ids().await?.first() {
        Some(id) => Some(store.read_manifest(*id).await?),
        None => None,
    };
    let positions = match &oldest {
        Some(m) => cohort::coordinator::ingress::source_positions(store, m).await?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for name in names {
        let report = IngressLog::verify(store, &name).await?;
        let mut damaged: Vec<Damaged> = report.damaged.iter().map(from_damage).collect();
        for (source, log, next) in &positions {
            if *log == name && *next < report.first {
                damaged.push(Damaged {
                    checkpoint: oldest.as_ref().map(|m| m.id),
                    object: Some(source.clone()),
                    blob: format!("ingress/{name}/"),
                    kind: "missing",
                    problem: format!(
                        "the checkpoint replays from position {next}, but the log starts at {}",
                        report.first
                    ),
                    base: None,
                });
            }
        }
        out.push(Verified {
            checkpoint: None,
            epoch: None,
            ingress: Some(name),
            ok: damaged.is_empty(),
            newer_format: !damaged.is_empty() && damaged.iter().all(|d| d.kind == "future_format"),
            entries: usize::try_from(report.records).unwrap_or(usize::MAX),
            bytes: 0,
            damaged,
        });
        if let (Some(last), Some(key)) = (out.last(), &report.torn_tail) {
            tracing::info!(log = ?last.ingress, blob = %key, "the log ends in an append a crash cut off; the next open cuts it");
        }
    }
    Ok(out)
}

/// A bar on stderr when it is a terminal; hidden otherwise, so that logs and pipes stay clean.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    // Until the first checkpoint is done the count is unknown: a spinner, not an empty bar.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    // The templates are constants known to parse; fall back to the defaults regardless.
    let spinner = ProgressStyle::with_template("{spinner} verifying ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(spinner);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Switches the bar to a counted one once the total is known.
fn advance(bar: &ProgressBar, p: &VerifyProgress) {
    tracing::info!(checkpoint = %p.checkpoint, done = p.done, total = p.total, "verified");
    if bar.length().is_none() {
        let counted =
            ProgressStyle::with_template("verifying {bar:30} {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(counted);
    }
    bar.set_length(p.total as u64);
    bar.set_position(p.done as u64);
    bar.set_message(format!("checkpoint {}", p.checkpoint));
}

fn from_report(r: &VerifyReport) -> Verified {
    let damaged: Vec<Damaged> = r.damaged.iter().map(from_damage).collect();
    Verified {
        checkpoint: Some(r.checkpoint),
        ingress: None,
        epoch: None,
        ok: r.is_ok(),
        newer_format: !damaged.is_empty() && damaged.iter().all(|d| d.kind == "future_format"),
        entries: r.entries,
        bytes: r.bytes,
        damaged,
    }
}

fn from_damage(d: &Damage) -> Damaged {
    Damaged {
        checkpoint: (d.checkpoint != CheckpointId::ZERO).then_some(d.checkpoint),
        object: d.object.clone(),
        blob: d.blob.clone(),
        kind: match d.kind {
            DamageKind::Missing => "missing",
            DamageKind::Truncated { .. } => "truncated",
            DamageKind::CrcMismatch { .. } => "crc_mismatch",
            DamageKind::HeaderMismatch(_) => "header_mismatch",
            DamageKind::Undecodable(_) => "undecodable",
            DamageKind::FutureFormat { .. } => "future_format",
            DamageKind::BaseUnusable { .. } => "base_unusable",
            _ => "other",
        },
        problem: d.kind.to_string(),
        base: match &d.kind {
            DamageKind::BaseUnusable { base, .. } => Some(base.clone()),
            _ => None,
        },
    }
}

fn write_human(out: &mut impl Write, verified: &[Verified], url: &str) -> anyhow::Result<()> {
    let styles = Styles::default();
    if verified.is_empty() {
        writeln!(out, "no committed checkpoints in {url}")?;
        return Ok(());
    }
    for v in verified {
        let what = match (v.checkpoint, v.epoch, &v.ingress) {
            (Some(id), _, _) => format!("checkpoint {id}"),
            (None, Some(epoch), _) => format!("epoch {epoch}"),
            (None, None, Some(log)) => format!("ingress log {log}"),
            (None, None, None) => "?".to_owned(),
        };
        if v.ingress.is_some() && v.ok {
            writeln!(
                out,
                "{what}: {} ({})",
                styles.ok.paint("ok"),
                output::count(v.entries, "input", "inputs")
            )?;
            continue;
        }
        if v.ok {
            writeln!(
                out,
                "{what}: {} ({}, {})",
                styles.ok.paint("ok"),
                output::count(v.entries, "entry", "entries"),
                output::size(v.bytes)
            )?;
            continue;
        }
        if v.newer_format {
            // Not damage: a newer cohort wrote it, and this build cannot check it.
            writeln!(
                out,
                "{what}: {} (written by a newer cohort; upgrade cohort to verify it)",
                styles.warn.paint("NEWER FORMAT"),
            )?;
        } else if v.checkpoint.is_some() {
            writeln!(
                out,
                "{what}: {} ({} of {} damaged)",
                styles.bad.paint("DAMAGED"),
                v.damaged.len(),
                output::count(v.entries, "entry", "entries"),
            )?;
        } else if v.ingress.is_some() {
            writeln!(
                out,
                "{what}: {} (appends are refused until it is repaired or restored from a copy)",
                styles.bad.paint("DAMAGED"),
            )?;
        } else {
            writeln!(
                out,
                "{what}: {} (its record or lease; a coordinator claims epoch {} once its lease stops moving)",
                styles.bad.paint("DAMAGED"),
                v.epoch.unwrap_or_default() + 1,
            )?;
        }
        for d in &v.damaged {
            let mut line = String::from("  ");
            if let Some(checkpoint) = d.checkpoint {
                line.push_str(&format!("checkpoint {checkpoint}, "));
            }
            if let Some(object) = &d.object {
                line.push_str(&format!("object {object}, "));
            }
            writeln!(out, "{line}blob {}: {}", d.blob, d.problem)?;
        }
    }
    let checkpoints: Vec<&Verified> = verified.iter().filter(|v| v.checkpoint.is_some()).collect();
    let newer = checkpoints.iter().filter(|v| v.newer_format).count();
    let bad = checkpoints.iter().filter(|v| !v.ok).count() - newer;
    let mut summary = format!(
        "{} verified: {} intact, {} damaged",
        output::count(checkpoints.len(), "checkpoint", "checkpoints"),
        checkpoints.len() - bad - newer,
        bad
    );
    if newer > 0 {
        summary.push_str(&format!(", {newer} of a newer format"));
    }
    let logs: Vec<&Verified> = verified.iter().filter(|v| v.ingress.is_some()).collect();
    if !logs.is_empty() {
        summary.push_str(&format!(
            "; {} verified, {} damaged",
            output::count(logs.len(), "ingress log", "ingress logs"),
            logs.iter().filter(|v| !v.ok).count()
        ));
    }
    if let Some(epoch) = verified
        .iter()
        .find(|v| v.checkpoint.is_none() && v.ingress.is_none())
    {
        summary.push_str(&format!(
            "; the newest epoch's record or lease is {}",
            if epoch.newer_format {
                "of a newer format"
            } else {
                "damaged"
            }
        ));
    }
    if verified.iter().all(|v| v.ok) {
        writeln!(out, "{}", styles.ok.paint(summary))?;
    } else {
        writeln!(out, "{}", styles.bad.paint(summary))?;
    }
    Ok(())
}
