//! What a recorded load under a cluster change shows: throughput over time, stalls, and whether
//! every append landed exactly once. Pure functions over a [`History`], tested here without a
//! cluster; the sharded runner's resharding phase and the replicas runner's failover phase share
//! them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::harness::history::{History, Input, Operation, Outcome};

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

/// Whether the appends of a history landed exactly once, by the final values of their keys.
///
/// Every value written is unique and ends with `;`, so a final value reads as the list of the
/// writes it holds: the preloaded value first, then the appends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppendAudit {
    /// Keys written only by appends (after their preload).
    pub keys: usize,
    /// Appends the store acknowledged.
    pub acknowledged: usize,
    /// Acknowledged appends missing from the final value: lost writes.
    pub lost: usize,
    /// Appends found more than once: applied twice.
    pub duplicated: usize,
    /// Appends that failed definitely (refused: known not to have happened).
    pub failed: usize,
    /// Definitely failed appends found in the final value anyway.
    pub failed_applied: usize,
    /// Appends of unknown outcome (timed out, cut off).
    pub unknown: usize,
    /// Appends of unknown outcome found in the final value (once): they happened.
    pub unknown_applied: usize,
    /// Pieces of final values that no write of the history explains.
    pub unexplained: usize,
    /// Keys whose final value does not start with their preloaded value, or could not be read.
    pub initial_missing: usize,
    /// The first few problems, for diagnosis.
    pub examples: Vec<String>,
}

impl AppendAudit {
    /// Whether no write was lost, applied twice, applied after failing, or made up.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.failed_applied == 0
            && self.unexplained == 0
            && self.initial_missing == 0
    }

    /// What went wrong, for a failed check; `None` if the audit is clean.
    pub fn problems(&self) -> Option<String> {
        (!self.is_clean()).then(|| {
            format!(
                "{} lost, {} duplicated, {} failed yet applied, {} unexplained, {} keys without their \
                 preload: {}",
                self.lost,
                self.duplicated,
                self.failed_applied,
                self.unexplained,
                self.initial_missing,
                self.examples.join("; ")
            )
        })
    }

    /// What a clean audit found, for a passed check.
    pub fn summary(&self) -> String {
        format!(
            "ok: {} acknowledged, all found once; {} failed, none applied; {} unknown, {} applied",
            self.acknowledged, self.failed, self.unknown, self.unknown_applied
        )
    }

    fn problem(&mut self, text: String) {
        if self.examples.len() < 5 {
            self.examples.push(text);
        }
    }
}

/// Audits the appends to `keys`, whose final values are in `finals` (`None`, or no entry: not
/// read) and whose preloaded values `initial` gives.
pub(crate) fn audit_appends(
    history: &History,
    keys: &[String],
    finals: &BTreeMap<String, Option<String>>,
    initial: impl Fn(&str) -> String,
) -> AppendAudit {
    let mut audit = AppendAudit { keys: keys.len(), ..AppendAudit::default() };
    let mut appends: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in &history.ops {
        if let Input::Append(_) = op.input {
            appends.entry(op.key.as_str()).or_default().push(op);
        }
    }
    for key in keys {
        let empty = String::new();
        let read = finals.get(key).and_then(Option::as_ref);
        let value = read.unwrap_or(&empty);
        let tokens: Vec<&str> = value.split(';').filter(|t| !t.is_empty()).collect();
        let first = initial(key);
        let first = first.trim_end_matches(';');
        if tokens.first() != Some(&first) {
            audit.initial_missing += 1;
            let got = read.map_or_else(|| "no value read".to_owned(), |v| format!("{:?}…", truncate(v, 40)));
            audit.problem(format!("{key}: does not start with its preloaded {first:?}: {got}"));
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for token in &tokens {
            *counts.entry(token).or_default() += 1;
        }
        if counts.remove(first).is_some_and(|n| n > 1) {
            audit.duplicated += 1;
            audit.problem(format!("{key}: its preloaded value appears more than once"));
        }
        for op in appends.get(key.as_str()).map_or(&[][..], Vec::as_slice) {
            let Input::Append(value) = &op.input else { continue };
            let token = value.trim_end_matches(';');
            let found = counts.remove(token).unwrap_or(0);
            if found > 1 {
                audit.duplicated += 1;
                audit.problem(format!("{key}: append {token:?} applied {found} times"));
            }
            match op.outcome {
                Outcome::Ok(_) => {
                    audit.acknowledged += 1;
                    if found == 0 {
                        audit.lost += 1;
                        audit.problem(format!("{key}: acknowledged append {token:?} is missing"));
                    }
                }
                Outcome::Fail => {
                    audit.failed += 1;
                    if found > 0 {
                        audit.failed_applied += 1;
                        audit.problem(format!("{key}: append {token:?} failed, yet was applied"));
                    }
                }
                Outcome::Unknown => {
                    audit.unknown += 1;
                    audit.unknown_applied += usize::from(found > 0);
                }
            }
        }
        for token in counts.keys() {
            audit.unexplained += 1;
            audit.problem(format!("{key}: {token:?} was written by no append"));
        }
    }
    audit
}

fn truncate(s: &str, chars: usize) -> &str {
    s.char_indices().nth(chars).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::history::Output;

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

    fn append(process: u64, token: &str, outcome: Outcome) -> Operation {
        op(process, "a", Input::Append(format!("{token};")), (10, 20), outcome)
    }

    fn audit(ops: Vec<Operation>, last: &str) -> AppendAudit {
        let finals = BTreeMap::from([("a".to_owned(), Some(last.to_owned()))]);
        audit_appends(&History { ops }, &["a".to_owned()], &finals, |k| format!("{k}:0;"))
    }

    #[test]
    fn a_clean_history_passes_the_audit() {
        let ops = vec![
            append(0, "0.1", ok()),
            append(1, "1.1", ok()),
            append(1, "1.2", Outcome::Unknown),
            append(2, "2.1", Outcome::Unknown),
            append(2, "2.2", Outcome::Fail),
        ];
        let a = audit(ops, "a:0;1.1;0.1;2.1;");
        assert!(a.is_clean(), "{a:?}");
        assert_eq!((a.acknowledged, a.unknown, a.unknown_applied, a.failed), (2, 2, 1, 1));
    }

    #[test]
    fn the_audit_finds_lost_duplicated_failed_and_made_up_writes() {
        let ops = vec![append(0, "0.1", ok()), append(0, "0.2", ok()), append(1, "1.1", Outcome::Fail)];
        let a = audit(ops, "a:0;0.2;0.2;1.1;9.9;");
        assert_eq!((a.lost, a.duplicated, a.failed_applied, a.unexplained), (1, 1, 1, 1), "{a:?}");
        assert!(!a.is_clean());
        let a = audit(vec![], "x");
        assert_eq!((a.initial_missing, a.unexplained), (1, 1));
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
