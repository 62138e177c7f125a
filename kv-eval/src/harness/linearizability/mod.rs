//! A linearizability checker for the store's histories.
//!
//! A history is linearizable if every operation can be given a single instant, between its
//! invocation and its completion, such that running the operations one by one in the order of
//! those instants, on the sequential model of the store, gives the results the clients saw.
//!
//! # The model
//!
//! Each key is a string register that starts missing: `get` returns the value (or none), `put`
//! sets it, `append` concatenates to its right end (creating the key), `lpop`/`rpop` remove and
//! return the first/last Unicode character (none on a missing key, `""` on an empty value, both
//! changing nothing), and `delete` removes the key, returning whether it existed. The model is
//! written here on its own (`model.rs`), not taken from `kv-core`, so the checker does not trust
//! the code it checks.
//!
//! # The algorithm
//!
//! Linearizability is compositional: a history is linearizable if and only if its restriction to
//! every key is. So the history is split by key and the keys are checked independently (on all
//! cores, with [`std::thread::scope`]). For one key, the checker runs the search of Wing & Gong
//! with the memoisation of Lowe, as Knossos and Porcupine do (see `search.rs`): a depth-first
//! search for an order of the operations that respects real time, which lifts an operation out of
//! an event list once it is linearized, backtracks when it meets the completion of an operation
//! it has not linearized yet, and never explores twice the same pair (set of linearized
//! operations as a bitset, model state).
//!
//! Only a *strictly* earlier completion orders two operations: an operation invoked at the very
//! instant another completed is treated as concurrent with it.
//!
//! # Cost
//!
//! The search takes time about linear in a key's operations while few of them are in flight at
//! once, but exponential in how many are. Spread over keys, load is cheap: 10,000 operations by
//! 16 processes over 100 keys check in milliseconds. On one key, 3,000 operations by 4
//! processes take milliseconds, by 8 up to seconds, while a dozen or more processes hammering a
//! single key may exhaust any budget: give [`check_with_budget`] a budget where that can happen,
//! and spread workloads over keys.
//!
//! # Failed and unknown operations
//!
//! - `Fail` operations are known not to have happened: they are dropped before checking.
//! - `Unknown` operations may have taken effect at any point after their invocation, even after
//!   the client gave up, or never: their completion is taken to be at +infinity, any output is
//!   accepted for them, and a linearization need not contain them. (An unknown `get` constrains
//!   nothing and is dropped.)
//!
//! # When a history is not linearizable
//!
//! The report names the key and a small *window* of operations that cannot be ordered, found by
//! `explain.rs`: the search reports the operation whose completion no partial linearization got
//! past; the operations that completed well before it are summarised by the states they can leave
//! the key in; the remaining operations around it are then shrunk, keeping only those the failure
//! depends on. A time budget turns a search that takes too long into an `Unknown` verdict instead
//! of an endless run.

mod cache;
mod explain;
#[cfg(test)]
mod generate;
mod model;
mod search;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::harness::history::{History, Input, Operation, Outcome, Output};
use search::{GaveUp, Limit, Spec};

/// The result of checking a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The answer.
    pub verdict: Verdict,
    /// Keys whose check finished (all of them, unless the check stopped early).
    pub keys_checked: usize,
    /// Operations of those keys, failed ones excluded.
    pub ops_checked: usize,
    /// Wall-clock time the check took, in seconds.
    pub elapsed: f64,
}

/// Whether a history is linearizable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// Every key's operations can be ordered.
    Linearizable,
    /// The operations of `key` cannot be ordered.
    NotLinearizable {
        /// The first key (in key order) found not linearizable.
        key: String,
        /// A small set of that key's operations that cannot be ordered, sorted by invocation:
        /// the operation that could not be placed, with the operations it conflicts with. Failed
        /// operations whose value the failing result contains are listed too, as likely culprits.
        window: Vec<Operation>,
        /// What went wrong, in a sentence.
        reason: String,
    },
    /// The time budget ran out before every key was decided, and none was found wrong.
    Unknown {
        /// Why there is no answer.
        reason: String,
    },
}

impl Report {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        self.verdict == Verdict::Linearizable
    }
}

/// Checks a history, for as long as it takes.
pub fn check(history: &History) -> Report {
    run(history, None)
}

/// Checks a history, giving up with [`Verdict::Unknown`] once `budget` has passed.
///
/// Explaining a violation, once found, may take a few seconds more.
pub fn check_with_budget(history: &History, budget: Duration) -> Report {
    run(history, Some(budget))
}

/// The operations of one key.
struct KeyHistory<'h> {
    key: &'h str,
    /// What the search orders: `Ok` operations, and `Unknown` ones that may change the value.
    ops: Vec<&'h Operation>,
    /// `Fail` operations: not checked, but shown when a result looks like their doing.
    failed: Vec<&'h Operation>,
    /// Operations counted as checked: all but the failed ones.
    counted: usize,
}

enum KeyVerdict {
    Linearizable,
    Violation(explain::Explanation),
    GaveUp,
}

fn run(history: &History, budget: Option<Duration>) -> Report {
    let started = Instant::now();
    let deadline = budget.and_then(|b| started.checked_add(b));
    let keys = partition(history);
    // Keys are handed out in order. One violation settles the verdict, so once any key is found
    // wrong the others stop (a key whose search explodes must not hold up a violation found
    // elsewhere); the lowest wrong key among those decided is reported.
    let first_violation = AtomicUsize::new(usize::MAX);
    let next_key = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next_key.fetch_add(1, Ordering::Relaxed);
            let Some(key) = keys.get(i) else { break };
            if first_violation.load(Ordering::Relaxed) != usize::MAX {
                break;
            }
            let cancelled = || first_violation.load(Ordering::Relaxed) != usize::MAX;
            let verdict = check_key(key, &Limit { deadline, cancelled: &cancelled });
            if matches!(verdict, KeyVerdict::Violation(_)) {
                first_violation.fetch_min(i, Ordering::Relaxed);
            }
            done.push((i, verdict));
        }
        done
    };
    let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(keys.len());
    let mut results = if workers <= 1 {
        work()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    };
    results.sort_by_key(|(i, _)| *i);

    let (mut keys_checked, mut ops_checked) = (0, 0);
    let mut violation = None;
    let mut undecided = Vec::new();
    for (i, verdict) in results {
        match verdict {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation(explanation) => {
                if violation.is_none() {
                    violation = Some((keys[i].key, explanation));
                }
            }
            KeyVerdict::GaveUp => {
                undecided.push(keys[i].key);
                continue;
            }
        }
        keys_checked += 1;
        ops_checked += keys[i].counted;
    }
    let verdict = match violation {
        Some((key, explanation)) => Verdict::NotLinearizable {
            key: key.to_owned(),
            window: explanation.window,
            reason: explanation.reason,
        },
        None if undecided.is_empty() && keys_checked == keys.len() => Verdict::Linearizable,
        None => Verdict::Unknown {
            reason: format!(
                "the time budget of {:.3} s ran out with {} of {} keys undecided (first: {:?})",
                budget.unwrap_or_default().as_secs_f64(),
                keys.len() - keys_checked,
                keys.len(),
                undecided.first().copied().unwrap_or_default(),
            ),
        },
    };
    Report { verdict, keys_checked, ops_checked, elapsed: started.elapsed().as_secs_f64() }
}

/// Splits the history by key, in key order, dropping what cannot matter.
fn partition(history: &History) -> Vec<KeyHistory<'_>> {
    let mut by_key: BTreeMap<&str, KeyHistory<'_>> = BTreeMap::new();
    for op in &history.ops {
        let key = by_key.entry(op.key.as_str()).or_insert_with(|| KeyHistory {
            key: &op.key,
            ops: Vec::new(),
            failed: Vec::new(),
            counted: 0,
        });
        match (&op.outcome, &op.input) {
            (Outcome::Fail, _) => key.failed.push(op),
            // A get that may or may not have happened, returning anything, constrains nothing.
            (Outcome::Unknown, Input::Get) => key.counted += 1,
            _ => {
                key.ops.push(op);
                key.counted += 1;
            }
        }
    }
    by_key.into_values().collect()
}

fn check_key(key: &KeyHistory<'_>, limit: &Limit<'_>) -> KeyVerdict {
    let specs: Vec<Spec<'_>> = key.ops.iter().map(|op| spec(op)).collect();
    match search::check(&specs, &None, limit) {
        Ok(None) => KeyVerdict::Linearizable,
        Ok(Some(culprit)) => KeyVerdict::Violation(explain::explain(&key.ops, &specs, &key.failed, culprit)),
        Err(GaveUp) => KeyVerdict::GaveUp,
    }
}

fn spec(op: &Operation) -> Spec<'_> {
    let call = nanos(op.invoked);
    match &op.outcome {
        Outcome::Ok(output) => {
            Spec { call, ret: Some(nanos(op.completed).max(call)), input: &op.input, expect: Some(output) }
        }
        Outcome::Unknown | Outcome::Fail => Spec { call, ret: None, input: &op.input, expect: None },
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = format!(
            "{}, {} checked in {:.3} s",
            plural(self.keys_checked, "key"),
            plural(self.ops_checked, "operation"),
            self.elapsed
        );
        match &self.verdict {
            Verdict::Linearizable => write!(f, "linearizable: {checked}"),
            Verdict::Unknown { reason } => write!(f, "unknown: {reason} ({checked})"),
            Verdict::NotLinearizable { key, window, reason } => {
                writeln!(f, "NOT linearizable: key {key:?} ({checked})")?;
                writeln!(f, "  {reason}")?;
                write!(f, "  window ({}):", plural(window.len(), "operation"))?;
                for op in window {
                    write!(f, "\n    {}", OpLine(op))?;
                }
                Ok(())
            }
        }
    }
}

/// One operation on one line: process, times in ms, input, outcome.
struct OpLine<'a>(&'a Operation);

impl fmt::Display for OpLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        let input = InputText(&op.input).to_string();
        write!(
            f,
            "process {:<3} {:>10.3} – {:>10.3} ms  {:<20} ",
            op.process,
            millis(op.invoked),
            millis(op.completed),
            input
        )?;
        match &op.outcome {
            Outcome::Ok(Output::Unit) => f.write_str("ok"),
            Outcome::Ok(output) => write!(f, "ok {}", OutputText(output)),
            Outcome::Fail => f.write_str("fail"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

struct InputText<'a>(&'a Input);

impl fmt::Display for InputText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Input::Get => f.write_str("get"),
            Input::Put(v) => write!(f, "put({v:?})"),
            Input::Append(v) => write!(f, "append({v:?})"),
            Input::Lpop => f.write_str("lpop"),
            Input::Rpop => f.write_str("rpop"),
            Input::Delete => f.write_str("delete"),
        }
    }
}

struct OutputText<'a>(&'a Output);

impl fmt::Display for OutputText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Output::Value(Some(v)) => write!(f, "{v:?}"),
            Output::Value(None) => f.write_str("no value"),
            Output::Unit => f.write_str("done"),
            Output::Deleted(existed) => write!(f, "{existed}"),
        }
    }
}

/// "1 key", "2 keys".
fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
