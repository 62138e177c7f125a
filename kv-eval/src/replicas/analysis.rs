//! What a recorded history of puts and gets says about replication: which reads were stale and
//! by how much, and, for the assignment's put-then-get pairs, which gets went wrong and why.
//! Pure functions over a [`History`], tested here without a cluster.
//!
//! # Stale reads
//!
//! Every value written is unique and every key starts missing, so the value a get returned names
//! the put that wrote it (missing: the key's start, before every put). The get is **stale** if
//! that value had been overwritten before the get began: some put *known* to come after the one
//! that wrote it (invoked after that put completed) had completed before the get was invoked.
//! No linearizable store returns such a value, whatever the order of concurrent operations; a
//! get that returned a concurrent put's value, or a put's that merely completed before the
//! reader's own, is not stale. Orders are strict, as in [`crate::harness::linearizability`]: operations
//! whose times touch count as concurrent.
//!
//! A stale read's **lag** is how long before the read began its value had been overwritten: from
//! the completion of the first put known to overwrite it. That is how far behind the replica that
//! served it was, at least. Its **missed-put age** is the age, when the read began, of the newest
//! such put: under frequent writes of a key it stays small however far behind the replica is, so
//! the lag is the measure of staleness, and the age is reported beside it.
//!
//! A put whose outcome is unknown may have landed at any time after its invocation: a value it
//! wrote is never counted stale, and it never counts as overwriting. A value no put wrote, or only
//! a refused one, is **unexplained**: the store made it up.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::harness::history::{History, Input, Operation, Outcome, Output};

/// How a successful get relates to the puts of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Its value had not been overwritten by any put known to come after it when the read began.
    Fresh,
    /// Its value had been overwritten `lag` before the read began.
    Stale {
        /// From the completion of the first put known to overwrite the value, to the read's
        /// invocation.
        lag: Duration,
        /// From the completion of the newest put known to overwrite the value, to the read's
        /// invocation.
        missed_age: Duration,
    },
    /// No put wrote its value, or only a refused one.
    Unexplained,
}

/// What wrote a value, as far as the history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Only puts the store refused.
    Refused,
    /// A put whose outcome is unknown: it may have landed at any time after its invocation.
    Unknown,
    /// A successful put, which completed then.
    Ended(Duration),
}

impl Writer {
    /// Values are meant to be unique; if one repeats, the writers that make the fewest reads
    /// stale count: a successful put over a refused one, the one that ended last.
    fn merge(self, other: Writer) -> Writer {
        match (self, other) {
            (Writer::Refused, w) | (w, Writer::Refused) => w,
            (Writer::Unknown, _) | (_, Writer::Unknown) => Writer::Unknown,
            (Writer::Ended(a), Writer::Ended(b)) => Writer::Ended(a.max(b)),
        }
    }
}

/// The puts of a history, indexed to judge its gets.
pub(super) struct Puts<'h> {
    /// By key and value.
    writers: HashMap<(&'h str, &'h str), Writer>,
    /// By key: the successful puts, by completion time.
    done: HashMap<&'h str, Vec<&'h Operation>>,
}

impl<'h> Puts<'h> {
    /// Indexes the puts of `history`.
    pub(super) fn new(history: &'h History) -> Self {
        let mut writers: HashMap<(&str, &str), Writer> = HashMap::new();
        let mut done: HashMap<&str, Vec<&Operation>> = HashMap::new();
        for op in &history.ops {
            let Input::Put(value) = &op.input else { continue };
            let writer = match op.outcome {
                Outcome::Ok(_) => {
                    done.entry(op.key.as_str()).or_default().push(op);
                    Writer::Ended(op.completed)
                }
                Outcome::Unknown => Writer::Unknown,
                Outcome::Fail => Writer::Refused,
            };
            let entry = writers.entry((op.key.as_str(), value.as_str())).or_insert(writer);
            *entry = entry.merge(writer);
        }
        for puts in done.values_mut() {
            puts.sort_by_key(|op| op.completed);
        }
        Puts { writers, done }
    }

    /// Judges a get of `key` invoked at `invoked` that returned `value`.
    pub(super) fn judge(&self, key: &str, value: Option<&str>, invoked: Duration) -> Read {
        // When the value's writer ended; `None` for a missing value: the key's start, before
        // every operation.
        let written = match value {
            None => None,
            Some(value) => match self.writers.get(&(key, value)) {
                None | Some(Writer::Refused) => return Read::Unexplained,
                Some(Writer::Unknown) => return Read::Fresh,
                Some(Writer::Ended(end)) => Some(*end),
            },
        };
        let Some(puts) = self.done.get(key) else { return Read::Fresh };
        // Puts that completed after the writer did, and before the read began; those also
        // invoked after the writer completed overwrote the value.
        let from = written.map_or(0, |end| puts.partition_point(|op| op.completed <= end));
        let mut overwriting = puts[from..]
            .iter()
            .take_while(|op| op.completed < invoked)
            .filter(|op| written.is_none_or(|end| op.invoked > end));
        let Some(first) = overwriting.next() else { return Read::Fresh };
        let newest = overwriting.last().unwrap_or(first);
        Read::Stale { lag: invoked - first.completed, missed_age: invoked - newest.completed }
    }

    /// Judges `op`, if it is a successful get.
    pub(super) fn judge_op(&self, op: &Operation) -> Option<Read> {
        match (&op.input, &op.outcome) {
            (Input::Get, Outcome::Ok(Output::Value(value))) => {
                Some(self.judge(&op.key, value.as_deref(), op.invoked))
            }
            _ => None,
        }
    }
}

/// The assignment's put-then-get pairs, counted by how their get went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairTally {
    /// Pairs: a put, then a get of the same key by the same client.
    pub pairs: usize,
    /// Pairs whose get returned the value just written.
    pub ok: usize,
    /// Pairs whose get returned a stale value: one already overwritten, when the get began, by a
    /// put known to follow the one that wrote it (often the client's own put).
    pub stale: usize,
    /// Pairs whose get rightly returned another client's value: a put concurrent with, or after,
    /// the client's own.
    pub newer: usize,
    /// Pairs whose get returned a value no put wrote.
    pub unexplained: usize,
    /// Pairs with a call that failed or whose outcome is unknown.
    pub failed: usize,
}

impl PairTally {
    /// Pairs whose get did not return the value just written, or that failed: the assignment's
    /// errors.
    pub fn errors(&self) -> usize {
        self.pairs - self.ok
    }
}

/// Counts the put-then-get pairs of `history`: each process's operations in order, a put
/// followed by a get of the same key making a pair (anything else is skipped).
pub(super) fn tally_pairs(history: &History) -> PairTally {
    let puts = Puts::new(history);
    let mut by_process: HashMap<u64, Vec<&Operation>> = HashMap::new();
    for op in &history.ops {
        by_process.entry(op.process).or_default().push(op);
    }
    let mut tally = PairTally::default();
    for ops in by_process.values_mut() {
        ops.sort_by_key(|op| op.invoked);
        for pair in ops.windows(2) {
            let (put, get) = (pair[0], pair[1]);
            let (Input::Put(written), Input::Get) = (&put.input, &get.input) else { continue };
            if put.key != get.key {
                continue;
            }
            tally.pairs += 1;
            match (&put.outcome, &get.outcome) {
                (Outcome::Ok(_), Outcome::Ok(Output::Value(Some(read)))) if read == written => tally.ok += 1,
                (Outcome::Ok(_), Outcome::Ok(_)) => match puts.judge_op(get) {
                    Some(Read::Stale { .. }) => tally.stale += 1,
                    Some(Read::Unexplained) => tally.unexplained += 1,
                    Some(Read::Fresh) | None => tally.newer += 1,
                },
                _ => tally.failed += 1,
            }
        }
    }
    tally
}

/// The stale reads of a history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StaleReads {
    /// Successful gets.
    pub reads: usize,
    /// Gets that returned a stale value.
    pub stale: usize,
    /// Gets that returned a value no put wrote.
    pub unexplained: usize,
    /// `stale / reads`.
    pub fraction: f64,
    /// Median lag of the stale reads, in milliseconds.
    pub median_lag_ms: f64,
    /// The largest lag: how far behind the stalest read was, in milliseconds.
    pub max_lag_ms: f64,
    /// The largest missed-put age, in milliseconds.
    pub max_missed_age_ms: f64,
    /// The stalest read, for diagnosis.
    pub stalest: Option<StaleRead>,
}

/// One stale read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaleRead {
    /// Its key.
    pub key: String,
    /// The value it returned (`None`: missing).
    pub value: Option<String>,
    /// When it began, in seconds since the history's start.
    pub at_secs: f64,
    /// Its lag, in milliseconds.
    pub lag_ms: f64,
    /// Its missed-put age, in milliseconds.
    pub missed_age_ms: f64,
}

/// Finds the stale reads of `history`.
pub(super) fn stale_reads(history: &History) -> StaleReads {
    let puts = Puts::new(history);
    let mut out = StaleReads::default();
    let mut lags = Vec::new();
    for op in &history.ops {
        let (Input::Get, Outcome::Ok(Output::Value(value))) = (&op.input, &op.outcome) else { continue };
        out.reads += 1;
        match puts.judge(&op.key, value.as_deref(), op.invoked) {
            Read::Fresh => {}
            Read::Unexplained => out.unexplained += 1,
            Read::Stale { lag, missed_age } => {
                out.stale += 1;
                lags.push(lag);
                out.max_missed_age_ms = out.max_missed_age_ms.max(ms(missed_age));
                if out.stalest.as_ref().is_none_or(|s| s.lag_ms < ms(lag)) {
                    out.stalest = Some(StaleRead {
                        key: op.key.clone(),
                        value: value.clone(),
                        at_secs: op.invoked.as_secs_f64(),
                        lag_ms: ms(lag),
                        missed_age_ms: ms(missed_age),
                    });
                }
            }
        }
    }
    lags.sort_unstable();
    out.fraction = out.stale as f64 / out.reads.max(1) as f64;
    out.median_lag_ms = lags.get(lags.len() / 2).copied().map_or(0.0, ms);
    out.max_lag_ms = lags.last().copied().map_or(0.0, ms);
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, input: Input, ms: (u64, u64), outcome: Outcome) -> Operation {
        Operation {
            process,
            key: "k".to_owned(),
            input,
            invoked: Duration::from_millis(ms.0),
            completed: Duration::from_millis(ms.1),
            outcome,
        }
    }

    fn put(process: u64, value: &str, ms: (u64, u64)) -> Operation {
        op(process, Input::Put(value.to_owned()), ms, Outcome::Ok(Output::Unit))
    }

    fn get(process: u64, value: Option<&str>, ms: (u64, u64)) -> Operation {
        op(process, Input::Get, ms, Outcome::Ok(Output::Value(value.map(str::to_owned))))
    }

    fn judge(ops: Vec<Operation>, value: Option<&str>, at: u64) -> Read {
        let history = History { ops };
        Puts::new(&history).judge("k", value, Duration::from_millis(at))
    }

    #[test]
    fn a_value_overwritten_by_a_later_completed_put_is_stale() {
        let ops = vec![put(0, "a", (0, 10)), put(1, "b", (20, 30)), put(1, "c", (40, 50))];
        let stale = |lag, missed_age| Read::Stale {
            lag: Duration::from_millis(lag),
            missed_age: Duration::from_millis(missed_age),
        };
        assert_eq!(judge(ops.clone(), Some("a"), 100), stale(70, 50));
        assert_eq!(judge(ops.clone(), Some("b"), 100), stale(50, 50));
        assert_eq!(judge(ops.clone(), Some("c"), 100), Read::Fresh);
        assert_eq!(judge(ops.clone(), None, 100), stale(90, 50));
        assert_eq!(judge(ops.clone(), Some("a"), 30), Read::Fresh, "touching times are concurrent");
        assert_eq!(judge(ops, Some("zz"), 100), Read::Unexplained);
    }

    #[test]
    fn concurrent_and_unknown_puts_never_make_a_read_stale() {
        // "b" overlaps "a": either order is possible, so reading "a" after both is not stale.
        let ops = vec![put(0, "a", (0, 10)), put(1, "b", (5, 15))];
        assert_eq!(judge(ops, Some("a"), 100), Read::Fresh);
        // An unknown put may land at any time; a refused one's value is made up.
        let ops = vec![
            op(0, Input::Put("a".into()), (0, 10), Outcome::Unknown),
            put(1, "b", (20, 30)),
            op(1, Input::Put("c".into()), (40, 50), Outcome::Fail),
        ];
        assert_eq!(judge(ops.clone(), Some("a"), 100), Read::Fresh);
        assert_eq!(judge(ops.clone(), Some("c"), 100), Read::Unexplained);
        let unknown_after =
            vec![put(0, "a", (0, 10)), op(1, Input::Put("b".into()), (20, 30), Outcome::Unknown)];
        assert_eq!(judge(unknown_after, Some("a"), 100), Read::Fresh, "an unknown put overwrites nothing");
    }

    #[test]
    fn pairs_are_told_apart() {
        let ops = vec![
            // Client 0 reads its own value: ok.
            put(0, "a", (0, 10)),
            get(0, Some("a"), (11, 12)),
            // Client 1 reads the value its own put overwrote: stale.
            put(1, "b", (20, 30)),
            get(1, Some("a"), (31, 32)),
            // Client 2's put is concurrent with client 3's, which reads client 2's: newer.
            put(2, "c", (40, 50)),
            get(2, Some("c"), (51, 52)),
            put(3, "d", (41, 49)),
            get(3, Some("c"), (53, 54)),
            // Client 4 reads something no one wrote; client 5's get fails.
            put(4, "e", (60, 61)),
            get(4, Some("??"), (62, 63)),
            put(5, "f", (70, 71)),
            op(5, Input::Get, (72, 73), Outcome::Unknown),
        ];
        let tally = tally_pairs(&History { ops });
        assert_eq!(
            tally,
            PairTally { pairs: 6, ok: 2, stale: 1, newer: 1, unexplained: 1, failed: 1 },
            "{tally:?}"
        );
        assert_eq!(tally.errors(), 4);
    }

    #[test]
    fn stale_reads_are_counted_with_their_lag() {
        let ops = vec![
            put(0, "a", (0, 10)),
            put(0, "b", (20, 30)),
            get(1, Some("a"), (130, 131)),
            get(1, Some("a"), (50, 51)),
            get(1, Some("b"), (60, 61)),
            get(1, Some("x"), (70, 71)),
            op(1, Input::Get, (80, 81), Outcome::Fail),
        ];
        let s = stale_reads(&History { ops });
        assert_eq!((s.reads, s.stale, s.unexplained), (4, 2, 1));
        assert!((s.fraction - 0.5).abs() < 1e-9);
        assert!((s.max_lag_ms - 100.0).abs() < 1e-6 && (s.median_lag_ms - 100.0).abs() < 1e-6, "{s:?}");
        let stalest = s.stalest.unwrap();
        assert_eq!((stalest.value.as_deref(), stalest.lag_ms.round()), (Some("a"), 100.0));
        assert_eq!((stalest.missed_age_ms.round(), s.max_missed_age_ms.round()), (100.0, 100.0));
    }
}
