//! The checks of a recorded history that the simulator and the chaos runs against real
//! processes share, so that both hold the store to the same promises.
//!
//! - **Linearizable** (where promised: strong mode): the harness's checker over the whole
//!   history, final reads included.
//! - **Appends exactly once** (every mode): every append writes a unique token, so a key's final
//!   value lists the appends it holds ([`AppendAudit`]). No token twice, none that failed
//!   definitely, none made up; and, where the store promises it (strong; eventual with a
//!   synchronous secondary), no acknowledged one missing.
//! - **Longest write gap**: the longest any key went without a successful write in a window.
//!
//! Pure functions over a [`History`] and the final values read; they decide nothing about
//! when a run reads them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::harness::history::{History, Input, Operation, Outcome};
use crate::harness::linearizability;

/// How long the linearizability checker may take over one run's history, by default.
pub const CHECK_BUDGET: Duration = Duration::from_secs(20);

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
    check_history_within(promises, history, append_keys, finals, initial, CHECK_BUDGET)
}

/// [`check_history`], with the linearizability checker given `budget` (an undecided check is a
/// problem too).
pub(crate) fn check_history_within(
    promises: Promises,
    history: &History,
    append_keys: &[String],
    finals: &BTreeMap<String, Option<String>>,
    initial: impl Fn(&str) -> String,
    budget: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    if promises.linearizable {
        let report = linearizability::check_with_budget(history, budget);
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
                        audit.problem(format!(
                            "{key}: acknowledged append {token:?} (at {:.3} s) is missing",
                            op.completed.as_secs_f64()
                        ));
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
        let mut unexplained: Vec<&str> = counts.into_keys().collect();
        unexplained.sort_unstable();
        for token in unexplained {
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
        let finals = BTreeMap::from([("a".to_owned(), None)]);
        let ops = vec![append(0, "0.1", ok())];
        let a = audit_appends(&History { ops }, &["a".to_owned()], &finals, |k| format!("{k}:0;"));
        assert_eq!((a.initial_missing, a.lost), (1, 1), "a key not read back holds nothing");
    }
}
