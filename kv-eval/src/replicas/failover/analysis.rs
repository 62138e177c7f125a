//! What a recorded failover run shows: operations by outcome in and out of the outage,
//! throughput over time, stalls, and whether every acknowledged append landed exactly once.
//! Pure functions over a [`crate::harness::history::History`], tested here without a cluster
//! (the append audit is the harness's shared one, [`crate::harness::checks`]).
//!
//! Times are seconds since the load started (`from` on the history's clock). What the sharded
//! runner's resharding phase measures the same way (the load's operations, slices of throughput,
//! the longest latency) comes from the crate's shared [`crate::load::analysis`]; what is here is the
//! failover's own.

use std::time::Duration;

use super::Counts;
use crate::harness::history::{Operation, Outcome};
use crate::load::analysis::Bucket;
pub(super) use crate::load::analysis::{audit_appends, buckets, load_ops, max_latency_ms};

/// Seconds since `from`, at `at` (0 before it).
fn secs(at: Duration, from: Duration) -> f64 {
    at.saturating_sub(from).as_secs_f64()
}

/// Whether `op` was in flight at some time within `window` (seconds since `from`, inclusive).
pub(super) fn overlaps(op: &Operation, from: Duration, window: (f64, f64)) -> bool {
    secs(op.invoked, from) <= window.1 && secs(op.completed, from) >= window.0
}

/// `ops` counted by outcome.
pub(super) fn counts<'a>(ops: impl IntoIterator<Item = &'a Operation>) -> Counts {
    ops.into_iter().fold(Counts::default(), |mut c, op| {
        match op.outcome {
            Outcome::Ok(_) => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Unknown => c.unknown += 1,
        }
        c
    })
}

/// Successful operations per second among `ops` that completed within `span` (seconds since
/// `from`); 0 for an empty span.
pub(super) fn rate(ops: &[&Operation], from: Duration, span: (f64, f64)) -> f64 {
    let length = span.1 - span.0;
    if length <= 0.0 {
        return 0.0;
    }
    let done = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
        .filter(|op| (span.0..span.1).contains(&secs(op.completed, from)))
        .count();
    done as f64 / length
}

/// The lowest rate among the slices that overlap `window`; 0 without any.
pub(super) fn min_rate(buckets: &[Bucket], window: (f64, f64)) -> f64 {
    let rates = buckets
        .iter()
        .filter(|b| b.start_secs <= window.1 && b.start_secs + b.secs >= window.0)
        .map(|b| b.ops_per_sec);
    let min = rates.fold(f64::INFINITY, f64::min);
    if min.is_finite() { min } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::history::{History, Input, Output};

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

    fn ok() -> Outcome {
        Outcome::Ok(Output::Unit)
    }

    fn get(process: u64, ms: (u64, u64), outcome: Outcome) -> Operation {
        op(process, "k", Input::Get, ms, outcome)
    }

    #[test]
    fn operations_are_counted_in_and_out_of_the_outage() {
        // The load starts at 1 s; the outage is 1 s to 2 s into it.
        let from = Duration::from_secs(1);
        let ops = vec![
            get(0, (1000, 1100), Outcome::Ok(Output::Value(None))),
            get(1, (1900, 2100), Outcome::Unknown),
            get(2, (2500, 3600), Outcome::Ok(Output::Value(None))),
            get(3, (3100, 3200), Outcome::Fail),
            get(0, (3300, 3400), Outcome::Ok(Output::Value(None))),
            // The preload (before `from`) and the final reader (process 4) are not the load.
            get(0, (500, 600), ok()),
            get(4, (3500, 3600), ok()),
        ];
        let history = History { ops };
        let load = load_ops(&history, 4, from);
        assert_eq!(load.len(), 5);
        let window = (1.0, 2.0);
        let outage = counts(load.iter().copied().filter(|op| overlaps(op, from, window)));
        assert_eq!(outage, Counts { ok: 1, fail: 0, unknown: 1 }, "the op that ends at 2.6 s overlaps");
        assert_eq!(counts(load.iter().copied()), Counts { ok: 3, fail: 1, unknown: 1 });
        assert!((max_latency_ms(&load, from, Some(window)) - 1100.0).abs() < 1e-6);
        assert!((max_latency_ms(&load, from, Some((0.0, 0.5))) - 100.0).abs() < 1e-6);
        assert!((rate(&load, from, (2.0, 3.0)) - 2.0).abs() < 1e-9, "two ok completions in 2..3 s");
        assert_eq!(rate(&load, from, (2.0, 2.0)), 0.0);

        let b = buckets(&load, from, 2.6, Duration::from_millis(500));
        assert_eq!(b.len(), 5, "the 0.1 s tail joins the last slice");
        assert_eq!((b[0].ok, b[2].unknown, b[4].ok, b[4].fail), (1, 1, 2, 1));
        assert!((b[4].secs - 0.6).abs() < 1e-9 && (b[0].ops_per_sec - 2.0).abs() < 1e-9);
        assert_eq!(min_rate(&b, (1.0, 2.0)), 0.0, "nothing succeeded 1.0 to 2.0 s in");
        assert_eq!(min_rate(&[], (1.0, 2.0)), 0.0);
    }
}
