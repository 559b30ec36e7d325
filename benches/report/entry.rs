//! One line of the report (a figure beside its baseline), the printed table and the JSON file.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// What a figure must reach. Ratios are always `value / baseline_value`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Goal {
    /// The ratio is at least this (bandwidths: higher is better).
    RatioAtLeast(f64),
    /// The ratio is at most this (bytes, times against a configured bound).
    RatioAtMost(f64),
    /// The value itself is at most this, in the entry's unit.
    AtMost(f64),
    /// The value itself is at least this, in the entry's unit (rates).
    AtLeast(f64),
}

impl Goal {
    fn describe(self, unit: &str) -> String {
        match self {
            Goal::RatioAtLeast(r) => format!("ratio >= {r}"),
            Goal::RatioAtMost(r) => format!("ratio <= {r}"),
            Goal::AtMost(v) => format!("<= {v} {unit}"),
            Goal::AtLeast(v) => format!(">= {v} {unit}"),
        }
    }

    fn met(self, value: f64, ratio: Option<f64>) -> bool {
        match self {
            Goal::RatioAtLeast(r) => ratio.is_some_and(|x| x >= r),
            Goal::RatioAtMost(r) => ratio.is_some_and(|x| x <= r),
            Goal::AtMost(v) => value <= v,
            Goal::AtLeast(v) => value >= v,
        }
    }
}

/// One entry of `target/bench-report.json`: the fields issue 8 names, plus a free-form note
/// (sizes used, cache state, store kind, spread of the samples).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Entry {
    pub(crate) name: String,
    /// `None` when the figure could not be measured (the note says why).
    pub(crate) value: Option<f64>,
    pub(crate) unit: String,
    pub(crate) baseline_name: Option<String>,
    pub(crate) baseline_value: Option<f64>,
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: String,
    pub(crate) met: bool,
    pub(crate) note: String,
}

impl Entry {
    /// A figure without a baseline (an absolute goal).
    pub(crate) fn absolute(name: &str, value: f64, unit: &str, goal: Goal) -> Entry {
        Entry {
            name: name.to_owned(),
            value: Some(value),
            unit: unit.to_owned(),
            baseline_name: None,
            baseline_value: None,
            ratio: None,
            goal: goal.describe(unit),
            met: goal.met(value, None),
            note: String::new(),
        }
    }

    /// A figure beside a baseline measured (or configured) in the same run.
    pub(crate) fn against(
        name: &str,
        value: f64,
        unit: &str,
        baseline: (&str, f64),
        goal: Goal,
    ) -> Entry {
        let ratio = (baseline.1 > 0.0).then(|| value / baseline.1);
        Entry {
            baseline_name: Some(baseline.0.to_owned()),
            baseline_value: Some(baseline.1),
            ratio,
            met: goal.met(value, ratio),
            ..Entry::absolute(name, value, unit, goal)
        }
    }

    /// A figure whose measurement failed: no value, not met, the error in the note.
    pub(crate) fn failed(name: &str, why: String) -> Entry {
        Entry {
            name: name.to_owned(),
            value: None,
            unit: String::new(),
            baseline_name: None,
            baseline_value: None,
            ratio: None,
            goal: String::new(),
            met: false,
            note: format!("FAILED: {why}"),
        }
    }

    /// Adds `note` (sizes, cache state, spread) to the entry.
    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Entry {
        self.note = note.into();
        self
    }
}

/// Milliseconds, as the report's unit for times.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// MiB/s for `bytes` moved in `d`.
pub(crate) fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / f64::from(1u32 << 20) / d.as_secs_f64()
}

/// Sorted samples, for percentiles.
pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    /// Sorts `samples`; `None` when there are none.
    pub(crate) fn new(mut samples: Vec<Duration>) -> Option<Samples> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Samples(samples))
    }

    /// The `q` quantile (0.5 the median, 1.0 the largest), nearest rank.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let n = self.0.len();
        let rank = ((n as f64 * q).ceil() as usize).clamp(1, n);
        self.0[rank - 1]
    }

    /// The smallest sample.
    pub(crate) fn min(&self) -> Duration {
        self.0[0]
    }

    /// How many samples.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// `n=…, min …, p50 …, p90 …, max …` in milliseconds, for notes.
    pub(crate) fn spread(&self) -> String {
        format!(
            "n={}, min {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.len(),
            ms(self.min()),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
        )
    }
}

/// `v` with three significant digits (whole numbers from 100 up).
fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || v.abs() >= 100.0 {
        return format!("{v:.0}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

/// The report as a table, one line per entry, notes below.
pub(crate) fn table(entries: &[Entry]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let value = e
                .value
                .map_or("-".to_owned(), |v| format!("{} {}", number(v), e.unit));
            let baseline = match (&e.baseline_name, e.baseline_value) {
                (Some(name), Some(v)) => format!("{name}: {}", number(v)),
                _ => "(absolute)".to_owned(),
            };
            [
                e.name.clone(),
                value,
                baseline,
                e.ratio.map_or("-".to_owned(), number),
                e.goal.clone(),
                if e.met { "yes" } else { "NO" }.to_owned(),
            ]
        })
        .collect();
    let header = ["figure", "value", "baseline", "ratio", "goal", "met"].map(str::to_owned);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push('\n');
    for e in entries.iter().filter(|e| !e.note.is_empty()) {
        out.push_str(&format!("{}: {}\n", e.name, e.note));
    }
    out
}

/// Writes the entries to `path` as a JSON array.
pub(crate) fn write_json(path: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(entries).context("encoding the report")?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}
