//! Printing results as tables for people, and writing them as JSON for programs.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::{BenchReport, OpStats};
use crate::checks::CheckOutcome;

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

/// Writes `value` as pretty JSON to `path`, atomically (a temporary file renamed into place).
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).context("cannot encode the results")?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
