//! What the resharding phase tells people: its summary with a row per membership change, and
//! its chart of throughput over time.

use std::fmt::Write as _;

use anyhow::Result;

use super::membership::ChangeKind;
use super::resharding::ReshardingReport;
use crate::load::chart::{self, Marker};
use crate::load::report::{self, Align};

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
