//! Human output: styles, aligned tables, sizes and times. Colour is decided by the stream
//! (anstream): only on a terminal, never with `NO_COLOR`, as `--color` says otherwise.

use std::fmt::Display;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use anstyle::{AnsiColor, Style};
use serde::Serialize;

/// The styles of the CLI's output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Styles {
    pub(crate) header: Style,
    pub(crate) ok: Style,
    pub(crate) bad: Style,
    pub(crate) warn: Style,
    pub(crate) dim: Style,
    pub(crate) error: Style,
    pub(crate) hint: Style,
}

impl Styles {
    /// The one palette; whether it shows is the stream's business.
    pub(crate) fn stderr() -> Self {
        Self::default()
    }
}

impl Default for Styles {
    fn default() -> Self {
        Self {
            header: Style::new().bold().underline(),
            ok: AnsiColor::Green.on_default(),
            bad: AnsiColor::Red.on_default().bold(),
            warn: AnsiColor::Yellow.on_default(),
            dim: Style::new().dimmed(),
            error: AnsiColor::Red.on_default().bold(),
            hint: AnsiColor::Cyan.on_default().bold(),
        }
    }
}

/// Styling for one piece of text.
pub(crate) trait Paint {
    /// `text` wrapped in this style's escape codes.
    fn paint(&self, text: impl Display) -> String;
}

impl Paint for Style {
    fn paint(&self, text: impl Display) -> String {
        format!("{self}{text}{self:#}")
    }
}

/// The stdout writer every command prints through; strips styles when colour is off.
pub(crate) fn stdout() -> anstream::AutoStream<io::StdoutLock<'static>> {
    anstream::stdout().lock()
}

/// Prints `value` as pretty JSON and a newline: the `--json` form of every read command.
pub(crate) fn write_json(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table of left- or right-aligned columns, two spaces apart, with a styled header.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<(String, Style)>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of unstyled cells.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.styled_row(cells.into_iter().map(|c| (c, Style::new())).collect());
    }

    /// Adds a row of cells, each with its style.
    pub(crate) fn styled_row(&mut self, cells: Vec<(String, Style)>) {
        self.rows.push(cells);
    }

    /// Writes the header and the rows, padding on the plain text so styles never misalign.
    pub(crate) fn write(&self, out: &mut impl Write, styles: &Styles) -> io::Result<()> {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(widths.len()) {
                widths[i] = widths[i].max(width(text));
            }
        }
        let header: Vec<(String, Style)> = self
            .columns
            .iter()
            .map(|(h, _)| ((*h).to_owned(), styles.header))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            let last = row.len().min(widths.len()).saturating_sub(1);
            for (i, (text, style)) in row.iter().enumerate().take(widths.len()) {
                let pad = " ".repeat(widths[i] - width(text));
                let align = self.columns[i].1;
                if i > 0 {
                    line.push_str("  ");
                }
                if align == Align::Right {
                    line.push_str(&pad);
                }
                if !text.is_empty() {
                    line.push_str(&style.paint(text));
                }
                if align == Align::Left && i != last {
                    line.push_str(&pad);
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds, for JSON.
pub(crate) fn time_precise(ms: u64) -> String {
    match at(ms) {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        None => format!("unix-ms:{ms}"),
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC to the second, for tables.
pub(crate) fn time_short(ms: u64) -> String {
    match at(ms) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => format!("unix-ms:{ms}"),
    }
}

/// `None` past the year 9999, which RFC 3339 cannot write (a damaged or hostile manifest).
fn at(ms: u64) -> Option<SystemTime> {
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    (ms < YEAR_10000_MS).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision loss above 2^53 bytes is irrelevant for a one-decimal display.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 entry` or `3 entries`.
pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn times() {
        assert_eq!(time_precise(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time_short(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(time_short(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_short(u64::MAX), format!("unix-ms:{}", u64::MAX));
    }

    #[test]
    fn table_aligns_on_plain_text() {
        let mut table = Table::new(&[
            ("ID", Align::Right),
            ("NAME", Align::Left),
            ("X", Align::Left),
        ]);
        table.styled_row(vec![
            ("7".into(), Styles::default().bad),
            ("alpha".into(), Style::new()),
            ("x".into(), Style::new()),
        ]);
        table.row(vec!["12".into(), "b".into(), "y".into()]);
        table.row(vec!["3".into(), "c".into(), String::new()]);
        let mut out = Vec::new();
        table.write(&mut out, &Styles::default()).unwrap();
        let plain = anstream::adapter::strip_str(std::str::from_utf8(&out).unwrap()).to_string();
        assert_eq!(plain, "ID  NAME   X\n 7  alpha  x\n12  b      y\n 3  c\n");
    }
}
