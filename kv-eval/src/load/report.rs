//! Printing results as tables for people, and writing them as JSON for programs.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::load::bench::{BenchReport, OpStats};
use crate::load::checks::CheckOutcome;

/// The checks as a table, one line each.
pub fn checks_table(checks: &[CheckOutcome]) -> String {
    let mut out = String::new();
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0).max(5);
    let _ = writeln!(out, "  {:<width$}  {:<6}  {:>8}  detail", "check", "result", "seconds");
    for c in checks {
        let verdict = if c.passed { "pass" } else { "FAIL" };
        let _ = writeln!(out, "  {:<width$}  {:<6}  {:>8.3}  {}", c.name, verdict, c.seconds, c.detail);
    }
    out
}

/// A benchmark's results as a table, one line per operation and one for all.
pub fn bench_table(report: &BenchReport) -> String {
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(
        out,
        "  {} in flight, {:.0} s (+{:.0} s warm-up), {} keys of {} B, values of {} B, mix {}, seed {}",
        c.concurrency,
        c.duration.as_secs_f64(),
        c.warmup.as_secs_f64(),
        c.keys,
        c.key_size,
        c.value_size,
        c.mix,
        c.seed
    );
    let _ = writeln!(
        out,
        "  {:<7} {:>10} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ok", "errors", "ops/s", "mean ms", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for s in report.per_op.iter().chain(std::iter::once(&report.total)) {
        let _ = writeln!(out, "{}", stats_row(s));
    }
    for e in &report.sample_errors {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

fn stats_row(s: &OpStats) -> String {
    let ms = |us: f64| us / 1_000.0;
    format!(
        "  {:<7} {:>10} {:>7} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        s.op,
        s.ok,
        s.errors,
        s.ops_per_sec,
        ms(s.mean_us),
        ms(s.p50_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.max_us)
    )
}

/// How a column of a [`table`] lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left, so that digits line up.
    Right,
}

/// A plain-text table, indented by two spaces: a header line, then one line per row, each column
/// as wide as its widest cell. `align` gives each column's alignment (missing entries: left);
/// cells beyond the header's columns are dropped.
pub fn table(header: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells
            .take(columns)
            .enumerate()
            .map(|(i, cell)| {
                let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
                match align.get(i).copied().unwrap_or(Align::Left) {
                    Align::Left => format!("{cell}{pad}"),
                    Align::Right => format!("{pad}{cell}"),
                }
            })
            .collect();
        format!("  {}", cells.join("  ")).trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Writes `value` as pretty JSON to `path`, atomically (a temporary file renamed into place),
/// creating its folder if needed.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).context("cannot encode the results")?;
    create_parent(path)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates the folder `path` is in, if it has one and it is missing.
pub fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_their_columns() {
        let rows = vec![vec!["a".to_owned(), "1".to_owned()], vec!["bbbb".to_owned(), "1234".to_owned()]];
        let out = table(&["name", "n"], &[Align::Left, Align::Right], &rows);
        assert_eq!(out, "  name     n\n  a        1\n  bbbb  1234\n");
    }
}
