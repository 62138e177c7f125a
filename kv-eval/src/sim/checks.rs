//! The checks at the end of a simulated run, over its recorded history, the final values read
//! at the primaries, and the replicas' engines.
//!
//! - **Linearizable** (strong mode): the harness's checker over the whole history, final reads
//!   included.
//! - **Appends exactly once** (every mode): every append writes a unique token, so a key's final
//!   value lists the appends it holds. No token twice, none that failed definitely, none made
//!   up; and, where the store promises it (strong; eventual with a synchronous secondary), no
//!   acknowledged one missing.
//! - **Replicas identical** once writes have stopped and the background sync has run: every
//!   replica's engine holds the primary's value of every key.
//! - **Liveness**: after the heal, every key takes a successful write within the bound, and
//!   never waits longer than the bound for the next one while clients keep writing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::history::{History, Input, Outcome};
use crate::harness::linearizability;
use crate::load::analysis::audit_appends;

/// How long the linearizability checker may take over one run's history.
const CHECK_BUDGET: Duration = Duration::from_secs(20);

/// The longest a key may go without a successful write after the heal (the bound this
/// simulator enforces: failure detection takes 0.8 s, an install and a fence up to 0.5 s more,
/// and a restarted server's join moves its slots back).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(4);

/// What the store promises in a setting, which decides the checks that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promises {
    /// Every operation is linearizable (strong consistency).
    pub linearizable: bool,
    /// No acknowledged write is lost under one failure (strong; eventual with a synchronous
    /// secondary).
    pub keeps_acknowledged: bool,
}

/// Checks the history; returns what is wrong (nothing: it passed).
pub(crate) fn check_history(
    promises: Promises,
    history: &History,
    append_keys: &[String],
    finals: &BTreeMap<String, Option<String>>,
    initial: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut problems = Vec::new();
    if promises.linearizable {
        let report = linearizability::check_with_budget(history, CHECK_BUDGET);
        match report.verdict {
            linearizability::Verdict::Linearizable => {}
            linearizability::Verdict::NotLinearizable { key, reason, .. } => {
                problems.push(format!("not linearizable: key {key:?}: {reason}"));
            }
            linearizability::Verdict::Unknown { reason } => {
                problems.push(format!("linearizability undecided: {reason}"));
            }
        }
    }
    let audit = audit_appends(history, append_keys, finals, initial);
    let strict = promises.keeps_acknowledged;
    let broken = audit.duplicated > 0
        || audit.failed_applied > 0
        || audit.unexplained > 0
        || (strict && (audit.lost > 0 || audit.initial_missing > 0));
    if broken {
        problems.push(format!(
            "appends: {} lost, {} duplicated, {} failed yet applied, {} unexplained, {} keys without their \
             preload: {}",
            audit.lost,
            audit.duplicated,
            audit.failed_applied,
            audit.unexplained,
            audit.initial_missing,
            audit.examples.join("; ")
        ));
    }
    problems
}

/// The longest any of `keys` went without a successful write between `from` and `to` (from the
/// start of the window to the first, between two, from the last to the end).
pub(crate) fn longest_write_gap(
    history: &History,
    keys: &[String],
    from: Duration,
    to: Duration,
) -> (Duration, String) {
    let mut worst = (Duration::ZERO, String::new());
    for key in keys {
        let mut done: Vec<Duration> = history
            .ops
            .iter()
            .filter(|op| op.key == *key)
            .filter(|op| matches!(op.input, Input::Put(_) | Input::Append(_)))
            .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
            .map(|op| op.completed)
            .filter(|&at| at >= from && at <= to)
            .collect();
        done.sort_unstable();
        let mut last = from;
        for at in done.into_iter().chain([to]) {
            if at - last > worst.0 {
                worst = (at - last, key.clone());
            }
            last = at;
        }
    }
    worst
}
