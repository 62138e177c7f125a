//! What the resharding phase tells people: its pass/fail checks, its summary with a row per
//! membership change, and its chart of throughput over time.

use std::fmt::Write as _;

use anyhow::Result;

use super::membership::ChangeKind;
use super::resharding::ReshardingReport;
use crate::harness::linearizability;
use crate::load::chart::{self, Marker};
use crate::load::checks::CheckOutcome;
use crate::load::report::{self, Align};

/// The phase's pass/fail checks.
pub(super) fn phase_checks(report: &ReshardingReport) -> Vec<CheckOutcome> {
    let check = |name: String, problem: Option<String>, seconds: f64, note: String| CheckOutcome {
        name,
        passed: problem.is_none(),
        detail: problem.unwrap_or(note),
        seconds,
    };
    let changes = &report.changes;
    let joins = changes.iter().filter(|c| c.kind == ChangeKind::Join).count();
    let failed = changes.iter().find(|c| !c.succeeded);
    let unsettled = changes.iter().find_map(|c| {
        c.members
            .iter()
            .find(|m| {
                m.epoch != c.epoch_after
                    || m.incoming_slots > 0
                    || m.outgoing_slots > 0
                    || m.keys_held != m.keys_owned
            })
            .map(|m| {
                format!(
                    "after the {} at {:.2} s, {} is at epoch {} (master: {}) with {} incoming and {} \
                     outgoing slots, holding {} keys where it owns {}",
                    c.kind.name(),
                    c.at_secs,
                    m.server,
                    m.epoch,
                    c.epoch_after,
                    m.incoming_slots,
                    m.outgoing_slots,
                    m.keys_held,
                    m.keys_owned
                )
            })
    });
    let lin = &report.linearizability;
    let a = &report.appends;
    let lin_problem = match &lin.verdict {
        linearizability::Verdict::Linearizable => None,
        linearizability::Verdict::NotLinearizable { key, reason, .. } => {
            Some(format!("NOT linearizable on key {key}: {reason}"))
        }
        linearizability::Verdict::Unknown { reason } => Some(format!("undecided: {reason}")),
    };
    vec![
        check(
            format!("resharding: {} joins and {} leaves under load completed", joins, changes.len() - joins),
            failed.map(|c| {
                format!("the {} of {} at {:.2} s: {}", c.kind.name(), c.server, c.at_secs, c.detail)
            }),
            changes.iter().map(|c| c.duration_secs).sum(),
            "ok".into(),
        ),
        check(
            "resharding: after each change every member holds exactly the keys it owns".into(),
            unsettled,
            0.0,
            "ok".into(),
        ),
        check(
            format!("resharding: every key read back after the load ({} keys)", report.keys),
            (!report.unread_keys.is_empty()).then(|| {
                format!("{} key(s) unreadable, e.g. {}", report.unread_keys.len(), report.unread_keys[0])
            }),
            0.0,
            "ok".into(),
        ),
        check(
            "resharding: the history is linearizable".into(),
            lin_problem,
            lin.elapsed,
            format!("ok: {} operations on {} keys", lin.ops_checked, lin.keys_checked),
        ),
        check(
            "resharding: every acknowledged append applied exactly once".into(),
            a.problems(),
            0.0,
            a.summary(),
        ),
    ]
}

/// The phase's summary and its changes as a table.
pub(super) fn summary(r: &ReshardingReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  load: {:.2} s, {} ok, {} failed, {} unknown; {:.0} ops/s on average; p99 {:.2} ms",
        r.load_secs, r.ok, r.fail, r.unknown, r.ops_per_sec, r.p99_ms
    );
    let mut rates: Vec<f64> = r.buckets.iter().map(|b| b.ops_per_sec).collect();
    rates.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (rates.first(), rates.last()) {
        let _ = writeln!(
            out,
            "  ops/s per {} ms slice: min {min:.0}, median {:.0}, max {max:.0}",
            r.config.bucket.as_millis(),
            rates[rates.len() / 2]
        );
    }
    let _ = writeln!(out, "  longest stall (slowest successful operation): {:.1} ms", r.max_latency_ms);
    let rows: Vec<Vec<String>> = r
        .changes
        .iter()
        .map(|c| {
            vec![
                c.kind.name().to_owned(),
                c.node.map_or_else(|| "-".to_owned(), |id| format!("node {id}")),
                format!("{:.2}", c.at_secs),
                format!("{:.2}", c.duration_secs),
                format!("{} -> {}", c.members_before, c.members_after),
                c.keys_moved.to_string(),
                format!("{:.1}", c.keys_ideal),
                c.slots_moved.to_string(),
                format!("{:.0}", c.slots_ideal),
                format!("{:.1}", c.max_latency_ms),
                format!("{:.0}", c.min_ops_per_sec),
                if c.succeeded { "ok".to_owned() } else { "FAILED".to_owned() },
            ]
        })
        .collect();
    out.push_str(&report::table(
        &[
            "change",
            "server",
            "at s",
            "took s",
            "members",
            "keys moved",
            "ideal",
            "slots moved",
            "ideal",
            "max latency ms",
            "min ops/s",
            "result",
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
            Align::Right,
            Align::Right,
            Align::Left,
        ],
        &rows,
    ));
    for line in r.linearizability.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The chart of throughput over time, with the changes marked.
pub(super) fn chart(r: &ReshardingReport) -> Result<String> {
    let points: Vec<(f64, f64)> =
        r.buckets.iter().map(|b| (b.start_secs + b.secs / 2.0, b.ops_per_sec)).collect();
    let markers: Vec<Marker> = r
        .changes
        .iter()
        .map(|c| Marker {
            at: c.at_secs,
            until: c.at_secs + c.duration_secs,
            label: format!(
                "{} {}",
                c.kind.name(),
                c.node.map_or_else(|| "(no node)".to_owned(), |id| format!("node {id}"))
            ),
            detail: format!(
                "{} -> {} servers, {} keys moved",
                c.members_before, c.members_after, c.keys_moved
            ),
            removal: c.kind == ChangeKind::Leave,
        })
        .collect();
    let title = format!(
        "Throughput while servers join and leave ({} clients, {} keys, {} ms slices)",
        r.config.clients,
        r.config.keys,
        r.config.bucket.as_millis()
    );
    chart::throughput_svg(&title, &points, &markers, r.load_secs)
}
