//! What a recorded load under a cluster change shows: throughput over time, stalls, and whether
//! every append landed exactly once (the audit is [`crate::harness::checks`]'s, re-exported).
//! Pure functions over a [`History`], tested here without a cluster; the sharded runner's
//! resharding phase and the replicas runner's failover phase share them.

use std::time::Duration;

use serde::Serialize;

pub use crate::harness::checks::AppendAudit;
pub(crate) use crate::harness::checks::audit_appends;
use crate::harness::history::{History, Operation, Outcome};

/// Operations that completed in one slice of the load's time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the slice, in seconds since the load started.
    pub start_secs: f64,
    /// Length of the slice in seconds (the last one may be up to half a slice shorter or longer).
    pub secs: f64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations known not to have happened.
    pub fail: u64,
    /// Operations whose outcome is unknown.
    pub unknown: u64,
    /// `ok` per second.
    pub ops_per_sec: f64,
}

/// The operations of the load: those of processes below `processes`, invoked at `from` or later
/// (the preload runs on the same processes, before).
pub(crate) fn load_ops(history: &History, processes: u64, from: Duration) -> Vec<&Operation> {
    history.ops.iter().filter(|op| op.process < processes && op.invoked >= from).collect()
}

/// `ops` by completion time, in slices of `width` over `secs` seconds from `from`.
pub(crate) fn buckets(ops: &[&Operation], from: Duration, secs: f64, width: Duration) -> Vec<Bucket> {
    let width = width.as_secs_f64().max(1e-3);
    // A tail shorter than half a slice joins the last slice: a sliver holding only the last
    // operations in flight would show a rate that means nothing.
    let count = ((secs / width).round() as usize).max(1);
    let mut out: Vec<Bucket> = (0..count)
        .map(|i| {
            let start_secs = i as f64 * width;
            let secs = if i + 1 == count { (secs - start_secs).max(1e-3) } else { width };
            Bucket { start_secs, secs, ok: 0, fail: 0, unknown: 0, ops_per_sec: 0.0 }
        })
        .collect();
    for op in ops {
        let at = op.completed.saturating_sub(from).as_secs_f64();
        let bucket = &mut out[((at / width) as usize).min(count - 1)];
        match op.outcome {
            Outcome::Ok(_) => bucket.ok += 1,
            Outcome::Fail => bucket.fail += 1,
            Outcome::Unknown => bucket.unknown += 1,
        }
    }
    for bucket in &mut out {
        bucket.ops_per_sec = bucket.ok as f64 / bucket.secs;
    }
    out
}

/// The longest latency, in milliseconds, of a successful operation among `ops` that overlaps
/// `window` (times since `from`, in seconds), or of all of them without a window.
pub(crate) fn max_latency_ms(ops: &[&Operation], from: Duration, window: Option<(f64, f64)>) -> f64 {
    ops.iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
        .filter(|op| {
            window.is_none_or(|(start, end)| {
                let invoked = op.invoked.saturating_sub(from).as_secs_f64();
                let completed = op.completed.saturating_sub(from).as_secs_f64();
                invoked <= end && completed >= start
            })
        })
        .map(|op| op.completed.saturating_sub(op.invoked).as_secs_f64() * 1e3)
        .fold(0.0, f64::max)
}

/// The `q` quantile (0..=1) of the latencies of the successful operations, in milliseconds.
pub(crate) fn latency_quantile_ms(ops: &[&Operation], q: f64) -> f64 {
    let mut latencies: Vec<Duration> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
        .map(|op| op.completed.saturating_sub(op.invoked))
        .collect();
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let rank = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
    latencies[rank - 1].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::history::{Input, Output};

    fn op(process: u64, key: &str, input: Input, ms: (u64, u64), outcome: Outcome) -> Operation {
        Operation {
            process,
            key: key.to_owned(),
            input,
            invoked: Duration::from_millis(ms.0),
            completed: Duration::from_millis(ms.1),
            outcome,
        }
    }

    #[test]
    fn buckets_count_by_completion_and_stalls_by_window() {
        let ops: Vec<Operation> = vec![
            op(0, "k", Input::Get, (1000, 1100), Outcome::Ok(Output::Value(None))),
            op(1, "k", Input::Get, (1100, 1400), Outcome::Ok(Output::Value(None))),
            op(2, "k", Input::Get, (1200, 1300), Outcome::Unknown),
            op(3, "k", Input::Get, (1900, 2600), Outcome::Ok(Output::Value(None))),
        ];
        let refs: Vec<&Operation> = ops.iter().collect();
        let from = Duration::from_secs(1);
        let b = buckets(&refs, from, 1.6, Duration::from_millis(500));
        assert_eq!(b.len(), 3, "the 0.1 s tail joins the last slice");
        assert_eq!((b[0].ok, b[0].unknown, b[1].ok, b[2].ok), (2, 1, 0, 1));
        assert!((b[0].ops_per_sec - 4.0).abs() < 1e-9);
        assert!((b[2].secs - 0.6).abs() < 1e-9);
        let b = buckets(&refs, from, 1.8, Duration::from_millis(500));
        assert_eq!(b.len(), 4, "a 0.3 s tail is a slice of its own");
        assert!((b[3].secs - 0.3).abs() < 1e-9);
        assert!((max_latency_ms(&refs, from, None) - 700.0).abs() < 1e-6);
        assert!((max_latency_ms(&refs, from, Some((0.0, 0.5))) - 300.0).abs() < 1e-6);
        assert!((latency_quantile_ms(&refs, 0.5) - 300.0).abs() < 1e-6);
        let h = History { ops: ops.clone() };
        assert_eq!(load_ops(&h, 2, from).len(), 2);
    }
}
