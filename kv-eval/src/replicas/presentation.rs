//! What subtask 3 tells people: a table and the pass/fail checks of each phase, and its charts.

use std::fmt::Write as _;

use anyhow::Result;

use super::bars::{COLOURS, Series, grouped_bars_svg};
use super::levels::{LevelRow, LevelsConfig, verdict_word};
use super::staleness::StalenessRow;
use super::throughput::ThroughputRow;
use crate::harness::linearizability::Verdict;
use crate::load::checks::CheckOutcome;
use crate::load::report::{self, Align};

/// A check that passes unless `problem` says why not.
pub(super) fn check(name: String, problem: Option<String>, seconds: f64, note: String) -> CheckOutcome {
    CheckOutcome { name, passed: problem.is_none(), detail: problem.unwrap_or(note), seconds }
}

/// The levels as a table, with the verdicts explained below it.
pub(super) fn levels_table(rows: &[LevelRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let t = &row.tally;
            vec![
                row.setting.to_string(),
                row.setting.describe(),
                t.pairs.to_string(),
                format!("{:.0}", row.pairs_per_sec),
                format!("{:.1}", row.errors_per_sec),
                format!("{:.2}%", row.error_fraction * 100.0),
                t.stale.to_string(),
                t.newer.to_string(),
                t.failed.to_string(),
                t.unexplained.to_string(),
                verdict_word(&row.linearizability).to_owned(),
            ]
        })
        .collect();
    let mut out = report::table(
        &[
            "setting",
            "consistency",
            "pairs",
            "pairs/s",
            "errors/s",
            "errors",
            "stale",
            "newer",
            "failed",
            "unexplained",
            "history",
        ],
        &[Align::Left, Align::Left, Align::Right, Align::Right, Align::Right, Align::Right, Align::Right]
            .into_iter()
            .chain([Align::Right; 3])
            .chain([Align::Left])
            .collect::<Vec<_>>(),
        &cells,
    );
    out.push_str(
        "  errors: gets that did not return the value just written (or failed); stale: the value read had \
         been overwritten by a put that completed before the get began; newer: another client's put, \
         concurrent or later\n",
    );
    for row in rows {
        match &row.linearizability.verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { .. } if row.setting.is_strong() => {
                for line in row.linearizability.to_string().lines() {
                    let _ = writeln!(out, "  {}: {line}", row.setting);
                }
            }
            Verdict::NotLinearizable { key, reason, .. } => {
                let _ =
                    writeln!(out, "  {}: NOT linearizable, as expected: key {key:?}: {reason}", row.setting);
            }
            Verdict::Unknown { reason } => {
                let _ = writeln!(out, "  {}: undecided: {reason}", row.setting);
            }
        }
    }
    out
}

/// The levels' checks: a strong level reads nothing stale and is linearizable; at every level
/// every call succeeded and every value read was written.
pub(super) fn level_checks(rows: &[LevelRow]) -> Vec<CheckOutcome> {
    let mut out = Vec::new();
    for row in rows {
        let (t, lin) = (&row.tally, &row.linearizability);
        if row.setting.is_strong() {
            let problem = if t.stale > 0 {
                Some(format!("{} stale read(s) of {} pairs", t.stale, t.pairs))
            } else {
                match &lin.verdict {
                    Verdict::Linearizable => None,
                    Verdict::NotLinearizable { key, reason, .. } => {
                        Some(format!("NOT linearizable on key {key}: {reason}"))
                    }
                    Verdict::Unknown { reason } => Some(format!("undecided: {reason}")),
                }
            };
            out.push(check(
                format!("levels: {} (strong): no stale read, a linearizable history", row.setting),
                problem,
                lin.elapsed,
                format!("ok: {} operations on {} keys", lin.ops_checked, lin.keys_checked),
            ));
        }
        out.push(check(
            format!("levels: {}: every call succeeded, every value read was written", row.setting),
            (t.failed > 0 || t.unexplained > 0).then(|| {
                format!(
                    "{} pair(s) with a failed call, {} value(s) read that no put wrote",
                    t.failed, t.unexplained
                )
            }),
            row.secs,
            format!("ok: {} pairs", t.pairs),
        ));
    }
    out
}

/// Pairs, errors and stale reads per second, by level.
pub(super) fn levels_chart(config: &LevelsConfig, rows: &[LevelRow]) -> Result<String> {
    let categories: Vec<String> =
        rows.iter().map(|r| format!("{} ({})", r.setting, r.setting.describe())).collect();
    let per_sec = |f: fn(&LevelRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let series = vec![
        Series { name: "put+get pairs/s".into(), colour: COLOURS[0], values: per_sec(|r| r.pairs_per_sec) },
        Series { name: "errors/s".into(), colour: COLOURS[1], values: per_sec(|r| r.errors_per_sec) },
        Series {
            name: "stale reads/s".into(),
            colour: COLOURS[2],
            values: per_sec(|r| r.tally.stale as f64 / r.secs),
        },
    ];
    let title =
        format!("The assignment's experiment: {} clients, put then get of keys 0..=100", config.clients);
    grouped_bars_svg(&title, "per second", &categories, &series)
}

/// The throughput rows as a table, with the workload above it.
pub(super) fn throughput_table(rows: &[ThroughputRow]) -> String {
    let Some(first) = rows.first() else { return "  (no setting measured)\n".to_owned() };
    let c = &first.puts.config;
    let mut out = format!(
        "  {} in flight, {:.1} s (+{:.1} s warm-up) of puts, then of gets, per setting; {} keys of {} B, values of \
         {} B; one cluster client, reading from any replica\n",
        c.concurrency,
        c.duration.as_secs_f64(),
        c.warmup.as_secs_f64(),
        c.keys,
        c.key_size,
        c.value_size
    );
    let ms = |us: f64| format!("{:.3}", us / 1e3);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let (p, g) = (&row.puts.total, &row.gets.total);
            vec![
                row.setting.to_string(),
                row.setting.describe(),
                format!("{:.0}", p.ops_per_sec),
                ms(p.p50_us),
                ms(p.p99_us),
                format!("{:.0}", g.ops_per_sec),
                ms(g.p50_us),
                ms(g.p99_us),
                (p.errors + g.errors).to_string(),
            ]
        })
        .collect();
    out.push_str(&report::table(
        &[
            "setting",
            "consistency",
            "puts/s",
            "put p50 ms",
            "put p99 ms",
            "gets/s",
            "get p50 ms",
            "get p99 ms",
            "errors",
        ],
        &[
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
        &cells,
    ));
    for row in rows {
        for e in row.puts.sample_errors.iter().chain(&row.gets.sample_errors) {
            let _ = writeln!(out, "  error at {}: {e}", row.setting);
        }
    }
    out
}

/// The benchmark's check: no call failed, at any setting.
pub(super) fn throughput_checks(rows: &[ThroughputRow]) -> Vec<CheckOutcome> {
    rows.iter()
        .map(|row| {
            let (p, g) = (&row.puts.total, &row.gets.total);
            check(
                format!("throughput: {}: no call failed", row.setting),
                (p.errors + g.errors > 0).then(|| {
                    let sample = row.puts.sample_errors.iter().chain(&row.gets.sample_errors).next();
                    format!(
                        "{} put(s) and {} get(s) failed, e.g. {}",
                        p.errors,
                        g.errors,
                        sample.map_or("(no message)", String::as_str)
                    )
                }),
                row.puts.elapsed_secs + row.gets.elapsed_secs,
                format!("ok: {} puts, {} gets", p.ok, g.ok),
            )
        })
        .collect()
}

/// Puts and gets per second, by setting.
pub(super) fn throughput_chart(rows: &[ThroughputRow]) -> Result<String> {
    let categories: Vec<String> = rows.iter().map(|r| r.setting.to_string()).collect();
    let series = vec![
        Series {
            name: "puts/s".into(),
            colour: COLOURS[0],
            values: rows.iter().map(|r| r.puts.total.ops_per_sec).collect(),
        },
        Series {
            name: "gets/s (any replica)".into(),
            colour: COLOURS[1],
            values: rows.iter().map(|r| r.gets.total.ops_per_sec).collect(),
        },
    ];
    let concurrency = rows.first().map_or(0, |r| r.puts.config.concurrency);
    let title = format!("Throughput by replication factor R and level ({concurrency} requests in flight)");
    grouped_bars_svg(&title, "successful operations per second", &categories, &series)
}

/// The staleness rows as a table.
pub(super) fn staleness_table(rows: &[StalenessRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let (s, c) = (&row.stale, &row.convergence);
            vec![
                row.setting.to_string(),
                row.setting.describe(),
                format!("{:.0}", row.writes_per_sec),
                format!("{:.0}", row.reads_per_sec),
                s.stale.to_string(),
                format!("{:.2}%", s.fraction * 100.0),
                format!("{:.0}", s.median_lag_ms),
                format!("{:.0}", s.max_lag_ms),
                format!("{:.0}", s.max_missed_age_ms),
                c.secs.map_or_else(|| "NO".to_owned(), |secs| format!("{secs:.2}")),
                format!("{:.1}", c.bound_secs),
                row.failed.to_string(),
            ]
        })
        .collect();
    let mut out = report::table(
        &[
            "setting",
            "consistency",
            "puts/s",
            "gets/s",
            "stale",
            "stale %",
            "median lag ms",
            "max lag ms",
            "max missed age ms",
            "converged s",
            "bound s",
            "failed",
        ],
        &[Align::Left, Align::Left].into_iter().chain([Align::Right; 10]).collect::<Vec<_>>(),
        &cells,
    );
    out.push_str(
        "  lag: how long before the read began its value had been overwritten (by the first put known to \
         follow its writer); missed age: the age of the newest such put; converged: from the last write's \
         completion until every replica of every key held the primary's value\n",
    );
    for row in rows {
        if let Some(s) = &row.stale.stalest {
            let _ = writeln!(
                out,
                "  {}: stalest read: key {} at {:.2} s returned {:?}, overwritten {:.0} ms before (the newest put \
                 it missed: {:.0} ms before)",
                row.setting, s.key, s.at_secs, s.value, s.lag_ms, s.missed_age_ms
            );
        }
    }
    out
}

/// The staleness phase's checks: replicas converge in time; every call succeeded and every value
/// read was written; at a strong level, no read is stale.
pub(super) fn staleness_checks(rows: &[StalenessRow]) -> Vec<CheckOutcome> {
    let mut out = Vec::new();
    for row in rows {
        let (s, c) = (&row.stale, &row.convergence);
        out.push(check(
            format!(
                "staleness: {}: every replica holds its primary's value within {:.1} s of the last write",
                row.setting, c.bound_secs
            ),
            c.secs.is_none().then(|| {
                format!(
                    "after {} rounds, keys {} still disagree; {} direct reads failed{}",
                    c.rounds,
                    c.unconverged.join(", "),
                    c.read_errors,
                    c.sample_error.as_ref().map_or_else(String::new, |e| format!(", e.g. {e}"))
                )
            }),
            c.secs.unwrap_or(c.bound_secs),
            format!("ok: {} keys in {:.2} s", c.keys, c.secs.unwrap_or_default()),
        ));
        out.push(check(
            format!("staleness: {}: every call succeeded, every value read was written", row.setting),
            (row.failed > 0 || s.unexplained > 0).then(|| {
                format!("{} call(s) failed, {} value(s) read that no put wrote", row.failed, s.unexplained)
            }),
            row.load_secs,
            format!("ok: {} reads", s.reads),
        ));
        if row.setting.is_strong() {
            out.push(check(
                format!("staleness: {} (strong): no stale read", row.setting),
                (s.stale > 0)
                    .then(|| format!("{} stale read(s), the stalest {:.0} ms behind", s.stale, s.max_lag_ms)),
                row.load_secs,
                "ok".into(),
            ));
        }
    }
    out
}
