//! What the failover phase tells people: two tables (the recovery, then the operations), the
//! recovery time against its bar in words that stand out, the checks, and a chart per setting.

use std::fmt::Write as _;

use anyhow::Result;

use super::{Counts, FailoverReport, RECOVERY_LIMIT};
use crate::harness::linearizability::Verdict;
use crate::load::chart::{self, Marker};
use crate::load::checks::CheckOutcome;
use crate::load::report::{self, Align};
use crate::replicas::levels::verdict_word;
use crate::replicas::presentation::check;

fn secs(value: Option<f64>) -> String {
    value.map_or_else(|| "NO".to_owned(), |s| format!("{s:.3}"))
}

fn outcomes(c: &Counts) -> String {
    format!("{}/{}/{}", c.ok, c.fail, c.unknown)
}

/// The recovery and the operations as tables, then what needs saying in words.
pub(in crate::replicas) fn table(reports: &[FailoverReport]) -> String {
    let Some(first) = reports.first() else { return "  (no setting run)\n".to_owned() };
    let c = &first.config;
    let mut out = format!(
        "  {} clients (reads from any replica) over {} keys, mix {}; kill -9 after {:.1} s, load for {:.1} s \
         after; {} probes (1 attempt, {} ms timeout); {} ms slices\n",
        c.clients,
        c.keys,
        c.mix,
        c.before_kill.as_secs_f64(),
        c.after_kill.as_secs_f64(),
        c.probes,
        c.probe_timeout.as_millis(),
        c.bucket.as_millis()
    );
    let recovery: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.setting.to_string(),
                r.setting.describe(),
                r.killed.clone(),
                r.primary_slots.to_string(),
                secs(r.failed_over_after_secs),
                secs(r.recovered_after_secs),
                match (r.recovered_after_secs, r.within_bar()) {
                    (None, _) => "NONE".to_owned(),
                    (Some(_), true) => "within".to_owned(),
                    (Some(_), false) => "ABOVE".to_owned(),
                },
                format!("{:.0}", r.ops_per_sec_before),
                format!("{:.0}", r.min_ops_per_sec),
                format!("{:.0}", r.ops_per_sec_after),
                format!("{:.0}/{:.0}/{:.0}", r.stalls.primary_ms, r.stalls.secondary_ms, r.stalls.other_ms),
            ]
        })
        .collect();
    let bar = format!("{:.1} s bar", first.recovery_bar_secs);
    out.push_str(&report::table(
        &[
            "setting",
            "consistency",
            "killed",
            "slots",
            "off the map s",
            "writes again s",
            &bar,
            "ops/s before",
            "min ops/s",
            "ops/s after",
            "longest stall ms p/s/o",
        ],
        &[Align::Left, Align::Left, Align::Left].into_iter().chain([Align::Right; 8]).collect::<Vec<_>>(),
        &recovery,
    ));
    out.push_str(
        "  off the map: from the kill until the shard master's map no longer held the server; writes again: \
         until every probed slot took a put; min ops/s: the slowest slice in between; longest stall: the \
         slowest successful operation in flight in between (retries included), on keys the killed server \
         was the primary of / a secondary of / neither\n\n",
    );
    let operations: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let a = &r.appends;
            vec![
                r.setting.to_string(),
                format!("{:.3}", r.recovered_after_secs.unwrap_or(r.load_secs - r.killed_at_secs)),
                outcomes(&r.outage),
                outcomes(&r.outage_victim_keys),
                outcomes(&r.overall),
                a.acknowledged.to_string(),
                a.lost.to_string(),
                a.duplicated.to_string(),
                format!("{}/{}", a.unknown_applied, a.unknown),
                verdict_word(&r.linearizability).to_owned(),
            ]
        })
        .collect();
    out.push_str(&report::table(
        &[
            "setting",
            "outage s",
            "outage ok/fail/unk",
            "its keys ok/fail/unk",
            "all ok/fail/unk",
            "appends acked",
            "lost",
            "dup",
            "unk applied",
            "history",
        ],
        &[Align::Left].into_iter().chain([Align::Right; 8]).chain([Align::Left]).collect::<Vec<_>>(),
        &operations,
    ));
    out.push_str(
        "  outage: operations in flight between the kill and the recovery; its keys: those on keys whose \
         primary was killed; all: the whole load (preload and final reads apart); appends: acknowledged, \
         then missing from the final value, found twice, and of unknown outcome found applied\n",
    );
    for r in reports {
        words(&mut out, r);
    }
    out
}

/// The recovery against its bar, where the slots went, and any problem, in sentences.
fn words(out: &mut String, r: &FailoverReport) {
    let s = r.setting;
    let bar = r.recovery_bar_secs;
    let _ = match r.recovered_after_secs {
        Some(after) if r.within_bar() => {
            writeln!(out, "  {s}: writes again {after:.3} s after the kill, within the {bar:.1} s bar")
        }
        Some(after) => writeln!(
            out,
            "  !! {s}: RECOVERY {after:.3} s, ABOVE THE {bar:.1} s BAR (reported, not failed: on a loaded \
             machine timers slip; off the map after {})",
            secs(r.failed_over_after_secs)
        ),
        None => writeln!(
            out,
            "  !! {s}: NO RECOVERY: the killed primary's slots took no write within {} s",
            RECOVERY_LIMIT.as_secs()
        ),
    };
    let _ = writeln!(
        out,
        "  {s}: {}'s slots went to {}; epoch {} -> {}, {} members after",
        r.killed,
        r.promoted.as_deref().unwrap_or("(unknown: not failed over)"),
        r.epoch_before,
        r.epoch_after,
        r.members_after
    );
    match &r.linearizability.verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, reason, .. } if !s.is_strong() => {
            let _ = writeln!(out, "  {s}: NOT linearizable, as eventual reads may be: key {key:?}: {reason}");
        }
        _ => {
            for line in r.linearizability.to_string().lines() {
                let _ = writeln!(out, "  {s}: {line}");
            }
        }
    }
    if !r.appends.is_clean() {
        let expected = if r.keeps_acknowledged_writes() { "" } else { " (level 0 may lose these)" };
        let _ = writeln!(out, "  {s}: appends{expected}: {}", r.appends.examples.join("; "));
    }
}

/// The phase's checks, per setting.
pub(in crate::replicas) fn checks(reports: &[FailoverReport]) -> Vec<CheckOutcome> {
    let mut out = Vec::new();
    for r in reports {
        let s = r.setting;
        out.push(check(
            format!("failover: {s}: the killed primary's slots took writes again"),
            r.recovered_after_secs.is_none().then(|| {
                format!(
                    "no probe put accepted within {} s of the kill ({} off the map)",
                    RECOVERY_LIMIT.as_secs(),
                    secs(r.failed_over_after_secs)
                )
            }),
            r.recovered_after_secs.unwrap_or(RECOVERY_LIMIT.as_secs_f64()),
            format!(
                "ok: after {} s ({} the {:.1} s bar, which fails nothing)",
                secs(r.recovered_after_secs),
                if r.within_bar() { "within" } else { "ABOVE" },
                r.recovery_bar_secs
            ),
        ));
        out.push(check(
            format!("failover: {s}: every key read back after the failover ({} keys)", r.config.keys),
            (!r.unread_keys.is_empty())
                .then(|| format!("{} key(s) unreadable, e.g. {}", r.unread_keys.len(), r.unread_keys[0])),
            0.0,
            "ok".into(),
        ));
        let lin = &r.linearizability;
        if s.is_strong() {
            out.push(check(
                format!("failover: {s} (strong): the history is linearizable"),
                match &lin.verdict {
                    Verdict::Linearizable => None,
                    Verdict::NotLinearizable { key, reason, .. } => {
                        Some(format!("NOT linearizable on key {key}: {reason}"))
                    }
                    Verdict::Unknown { reason } => Some(format!("undecided: {reason}")),
                },
                lin.elapsed,
                format!("ok: {} operations on {} keys", lin.ops_checked, lin.keys_checked),
            ));
        }
        if r.keeps_acknowledged_writes() {
            let a = &r.appends;
            out.push(check(
                format!("failover: {s}: every acknowledged append applied exactly once"),
                a.problems(),
                0.0,
                a.summary(),
            ));
        }
    }
    out
}

/// Throughput over time across the failover, with the kill (shaded to the recovery) and the
/// shard master's new map marked (SVG).
pub(in crate::replicas) fn chart(r: &FailoverReport) -> Result<String> {
    let points: Vec<(f64, f64)> =
        r.buckets.iter().map(|b| (b.start_secs + b.secs / 2.0, b.ops_per_sec)).collect();
    let mut markers = vec![Marker {
        at: r.killed_at_secs,
        until: r.recovered_after_secs.map_or(r.load_secs, |after| r.killed_at_secs + after),
        label: format!("kill -9 {}", r.killed),
        detail: match r.recovered_after_secs {
            Some(after) => format!("writes again after {after:.2} s (bar {:.1} s)", r.recovery_bar_secs),
            None => format!("no write accepted within {} s", RECOVERY_LIMIT.as_secs()),
        },
        removal: true,
    }];
    if let Some(after) = r.failed_over_after_secs {
        markers.push(Marker {
            at: r.killed_at_secs + after,
            until: r.killed_at_secs + after,
            label: format!("off the map after {after:.2} s"),
            detail: format!("slots to {}", r.promoted.as_deref().unwrap_or("?")),
            removal: false,
        });
    }
    let title = format!(
        "Throughput across a primary's failover ({}, {}; {} clients, {} ms slices)",
        r.setting,
        r.setting.describe(),
        r.config.clients,
        r.config.bucket.as_millis()
    );
    chart::throughput_svg(&title, &points, &markers, r.load_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::history::History;
    use crate::harness::linearizability;
    use crate::load::analysis::{AppendAudit, Bucket};
    use crate::replicas::Setting;
    use crate::replicas::failover::{FailoverConfig, Stalls};

    fn report(setting: &str, recovered: Option<f64>) -> FailoverReport {
        let buckets = (0..40)
            .map(|i| Bucket {
                start_secs: f64::from(i) * 0.1,
                secs: 0.1,
                ok: 100,
                fail: 0,
                unknown: 0,
                ops_per_sec: if (15..24).contains(&i) { 0.0 } else { 1000.0 },
            })
            .collect();
        FailoverReport {
            setting: setting.parse::<Setting>().unwrap(),
            config: FailoverConfig::default(),
            killed: "127.0.0.1:20001".into(),
            killed_node: 2,
            key: "fp0000".into(),
            primary_slots: 683,
            victim_keys: 50,
            victim_secondary_keys: 100,
            epoch_before: 7,
            epoch_after: 8,
            members_after: 5,
            promoted: Some("127.0.0.1:20002".into()),
            killed_at_secs: 1.5,
            failed_over_after_secs: Some(0.85),
            recovered_after_secs: recovered,
            probe_secs: vec![recovered; 3],
            recovery_bar_secs: 1.5,
            load_secs: 4.0,
            overall: Counts { ok: 700, fail: 3, unknown: 2 },
            outage: Counts { ok: 40, fail: 3, unknown: 2 },
            outage_victim_keys: Counts { ok: 1, fail: 3, unknown: 2 },
            ops_per_sec_before: 1000.0,
            ops_per_sec_after: 990.0,
            min_ops_per_sec: 0.0,
            stalls: Stalls { primary_ms: 930.0, secondary_ms: 1010.0, other_ms: 12.0 },
            unread_keys: Vec::new(),
            appends: AppendAudit { keys: 225, acknowledged: 300, ..AppendAudit::default() },
            linearizability: linearizability::check(&History::default()),
            buckets,
            history: History::default(),
        }
    }

    #[test]
    fn the_chart_marks_the_kill_and_the_recovery() {
        let svg = chart(&report("3:2", Some(0.93))).unwrap();
        assert!(svg.contains("kill -9 127.0.0.1:20001"), "{svg}");
        assert!(svg.contains("writes again after 0.93 s (bar 1.5 s)"));
        assert!(svg.contains("off the map after 0.85 s") && svg.contains("slots to 127.0.0.1:20002"));
        assert!(svg.contains("R=3 level 2, strong"));
    }

    #[test]
    fn a_slow_recovery_is_loud_but_passes_and_no_recovery_fails() {
        let slow = report("3:2", Some(1.74));
        let text = table(std::slice::from_ref(&slow));
        assert!(text.contains("RECOVERY 1.740 s, ABOVE THE 1.5 s BAR"), "{text}");
        assert!(checks(&[slow]).iter().all(|c| c.passed));

        let quick = report("3:2", Some(0.93));
        let text = table(std::slice::from_ref(&quick));
        assert!(text.contains("within the 1.5 s bar") && !text.contains("ABOVE"), "{text}");
        let names: Vec<String> = checks(&[quick]).into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 4, "recovery, read back, linearizable, appends: {names:?}");

        let none = report("3:2", None);
        assert!(table(std::slice::from_ref(&none)).contains("NO RECOVERY"));
        let failed: Vec<CheckOutcome> = checks(&[none]).into_iter().filter(|c| !c.passed).collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].name.contains("took writes again"));
    }

    #[test]
    fn lost_appends_fail_where_the_store_promises_to_keep_them() {
        let mut lost = AppendAudit { keys: 1, acknowledged: 2, lost: 1, ..AppendAudit::default() };
        lost.examples.push("fa0001: acknowledged append \"3.7\" (at 2.000 s) is missing".into());
        let failing = |setting: &str| {
            let mut r = report(setting, Some(0.9));
            r.appends = lost.clone();
            checks(&[r]).into_iter().filter(|c| !c.passed).count()
        };
        assert_eq!(failing("3:2"), 1, "strong");
        assert_eq!(failing("3:1"), 1, "eventual with a synchronous secondary, which is promoted");
        assert_eq!(failing("3:0"), 0, "level 0 documents the loss: shown, not checked");
        let mut r = report("3:0", Some(0.9));
        r.appends = lost;
        assert!(table(&[r]).contains("(level 0 may lose these)"));
    }
}
