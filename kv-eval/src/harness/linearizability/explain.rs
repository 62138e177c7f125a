//! Explaining a violation: a small window of operations that cannot be ordered.
//!
//! The search names the operation `x` whose completion no partial linearization got past. From
//! there:
//! 1. *Cut the future.* Operations invoked after `x` completed cannot matter to it: without them
//!    the search runs exactly as before, and still fails at `x`.
//! 2. *Summarise the past.* Pick a start time `t0` a few invocations before `x` (the window
//!    stays small). Operations that completed before `t0` are replaced by the configurations they
//!    can leave: each a state of the key, with the set of still-running operations already
//!    applied (found by running the same search to the end, exhaustively). Every linearization
//!    passes through one of them, so the history is linearizable if and only if the window — the
//!    operations still running at `t0` or invoked since — can be ordered from one of them.
//! 3. *Shrink.* One by one, an operation's outcome is forgotten (made unknown: it may or may not
//!    have happened, at any time after its invocation) when the window still cannot be ordered,
//!    and `x` is still to blame (the window can be ordered once `x`'s outcome is forgotten).
//!    Forgetting keeps every writer the failure depends on: a write overwritten too early, a
//!    write a read missed. Then forgotten operations are dropped when the same still holds,
//!    except writes of a value that `x`'s result contains, kept to show where it came from.
//!
//! Every step only keeps a window that still cannot be ordered, so the window shown is a real
//! witness: its operations, from the states named in the reason, have no valid order.

use std::time::{Duration, Instant};

use super::model::State;
use super::search::{self, GaveUp, Limit, Spec};
use super::{InputText, OpLine, OutputText};
use crate::harness::history::{Input, Operation, Outcome, Output};

/// Time allowed for explaining one violation, on top of the check's budget.
const BUDGET: Duration = Duration::from_secs(5);
/// The window may reach back this many invocations before `x`...
const CONTEXT_STEPS: usize = 8;
/// ...as long as it holds no more than this many operations (or the smallest window, if bigger).
const WINDOW_OPS: usize = 16;
/// A window that could not be minimised shows at most this many operations.
const FALLBACK_OPS: usize = 32;
/// Failed operations shown as likely culprits, at most.
const FAILED_SHOWN: usize = 3;

/// A violation, explained.
pub(super) struct Explanation {
    pub(super) window: Vec<Operation>,
    pub(super) reason: String,
}

/// A window that cannot be ordered.
struct Witness {
    /// Indices of its operations.
    ops: Vec<usize>,
    /// The states the key may hold when the window opens.
    starts: Vec<State>,
    /// When the window opens (ns); `None` if no operation completed before it.
    from: Option<u64>,
    /// Whether shrinking ran to the end.
    shrunk: bool,
}

/// Explains why `ops` (with `specs`, their view for the search) cannot be linearized, given that
/// the search got stuck at the completion of `ops[culprit]`.
pub(super) fn explain(
    ops: &[&Operation],
    specs: &[Spec<'_>],
    failed: &[&Operation],
    culprit: usize,
) -> Explanation {
    let never = || false;
    let limit = Limit { deadline: Instant::now().checked_add(BUDGET), cancelled: &never };
    let x = ops[culprit];
    let seen = specs[culprit].expect;
    let mut suspects: Vec<&Operation> =
        failed.iter().copied().filter(|f| f.invoked <= x.completed && feeds(&f.input, seen)).collect();
    suspects.sort_by_key(|f| f.invoked);
    let suspects = &suspects[suspects.len().saturating_sub(FAILED_SHOWN)..];

    let (mut window, mut reason) = match witness(specs, culprit, &limit) {
        Some(w) => {
            let start = match w.from {
                None => "from the key missing at the start".to_owned(),
                Some(t0) => format!(
                    "from what the operations completed before {:.3} ms leave ({})",
                    t0 as f64 / 1e6,
                    describe_states(&w.starts)
                ),
            };
            let mut reason = format!(
                "{} ({}), but {start}, no order of the {} in the window, nor of all the operations \
                 in flight from then until it completed, gives every result they returned",
                outcome_text(x),
                when(x),
                super::plural(w.ops.len(), "operation")
            );
            if !w.shrunk {
                reason.push_str(" (the window was not fully shrunk: out of time)");
            }
            (w.ops.iter().map(|&i| ops[i].clone()).collect::<Vec<_>>(), reason)
        }
        None => {
            let mut near: Vec<usize> = (0..ops.len())
                .filter(|&i| {
                    specs[i].call <= specs[culprit].ret.unwrap_or(u64::MAX)
                        && specs[i].ret.is_none_or(|r| r >= specs[culprit].call)
                })
                .collect();
            near.sort_by_key(|&i| specs[i].call.abs_diff(specs[culprit].call));
            near.truncate(FALLBACK_OPS);
            let reason = format!(
                "{} ({}), and no order of the operations up to then gives every result they returned \
                 (the window shows the operations overlapping it, not shrunk)",
                outcome_text(x),
                when(x)
            );
            (near.iter().map(|&i| ops[i].clone()).collect(), reason)
        }
    };
    if !suspects.is_empty() {
        reason.push_str(&format!(
            "; note that the window shows {} that wrote a value this result contains, and a failed \
             operation must not take effect",
            super::plural(suspects.len(), "failed operation")
        ));
        window.extend(suspects.iter().map(|&f| f.clone()));
    }
    window.sort_by_key(|op| (op.invoked, op.completed, op.process));
    Explanation { window, reason }
}

/// Steps 1–3 of the module documentation; `None` if a step gave up before a witness was found.
fn witness(specs: &[Spec<'_>], x: usize, limit: &Limit<'_>) -> Option<Witness> {
    let t1 = specs[x].ret?;
    let cut: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].call <= t1).collect();

    // Where the window opens: as far back as the size allows, within a few invocations.
    let in_window = |i: usize, t0: u64| specs[i].call >= t0 || specs[i].ret.is_none_or(|r| r >= t0);
    let size = |t0: u64| cut.iter().filter(|&&i| in_window(i, t0)).count();
    let mut opens: Vec<u64> = cut.iter().map(|&i| specs[i].call).filter(|&c| c <= specs[x].call).collect();
    opens.sort_unstable_by(|a, b| b.cmp(a));
    opens.dedup();
    let cap = size(specs[x].call).max(WINDOW_OPS);
    opens.truncate(CONTEXT_STEPS + 1);
    let t0 = opens.iter().rev().copied().find(|&t| size(t) <= cap).unwrap_or(specs[x].call);

    // The past, as end configurations.
    let mut past = Vec::new();
    let mut past_ids = Vec::new();
    let mut window = Vec::new();
    for &i in &cut {
        let s = specs[i];
        if s.ret.is_some_and(|r| r < t0) {
            past.push(s);
            past_ids.push(i);
        } else if s.call < t0 {
            // Still running at t0: it may take effect before or after.
            past.push(Spec { ret: None, ..s });
            past_ids.push(i);
            window.push(i);
        } else {
            window.push(i);
        }
    }
    let configs: Vec<(State, Vec<usize>)> = search::end_configs(&past, &None, limit)
        .ok()?
        .into_iter()
        .map(|(state, linearized)| {
            let mut applied: Vec<usize> =
                linearized.into_iter().map(|k| past_ids[k]).filter(|i| window.contains(i)).collect();
            applied.sort_unstable();
            (state, applied)
        })
        .collect();
    let from = (!past.is_empty()).then_some(t0);
    let mut starts: Vec<State> = configs.iter().map(|(s, _)| s.clone()).collect();
    starts.sort();
    starts.dedup();

    // The window cannot be ordered from any configuration.
    let fails = |w: &[(usize, Spec<'_>)]| -> Result<bool, GaveUp> {
        for (state, applied) in &configs {
            let rest: Vec<Spec<'_>> =
                w.iter().filter(|(i, _)| applied.binary_search(i).is_err()).map(|&(_, s)| s).collect();
            if search::check(&rest, state, limit)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let blames_x = |w: &[(usize, Spec<'_>)]| -> Result<bool, GaveUp> {
        let forgiven: Vec<(usize, Spec<'_>)> =
            w.iter().map(|&(i, s)| (i, if i == x { s.relaxed() } else { s })).collect();
        Ok(!fails(&forgiven)?)
    };
    let mut w: Vec<(usize, Spec<'_>)> = window.iter().map(|&i| (i, specs[i])).collect();
    w.sort_by_key(|&(i, s)| (s.call, i));
    if configs.is_empty() || !fails(&w).ok()? {
        return None;
    }
    // If several faults overlap, forgetting `x` alone may not help: then only require failure.
    let x_matters = blames_x(&w).ok()?;
    let still_fails =
        |w: &[(usize, Spec<'_>)]| -> Result<bool, GaveUp> { Ok(fails(w)? && (!x_matters || blames_x(w)?)) };
    let done = |w: &[(usize, Spec<'_>)], shrunk: bool| Witness {
        ops: w.iter().map(|&(i, _)| i).collect(),
        starts: starts.clone(),
        from,
        shrunk,
    };

    for k in 0..w.len() {
        let (i, s) = w[k];
        if i == x || s.is_relaxed() {
            continue;
        }
        w[k].1 = s.relaxed();
        match still_fails(&w) {
            Ok(true) => {}
            Ok(false) => w[k].1 = s,
            Err(GaveUp) => {
                w[k].1 = s;
                return Some(done(&w, false));
            }
        }
    }
    let mut k = 0;
    while k < w.len() {
        let (i, s) = w[k];
        if i != x && s.is_relaxed() && !feeds(specs[i].input, specs[x].expect) {
            let removed = w.remove(k);
            match still_fails(&w) {
                Ok(true) => continue,
                Ok(false) => w.insert(k, removed),
                Err(GaveUp) => {
                    w.insert(k, removed);
                    return Some(done(&w, false));
                }
            }
        }
        k += 1;
    }
    Some(done(&w, true))
}

/// Whether `input` writes a value that shows in `seen` (the output of the failing operation).
fn feeds(input: &Input, seen: Option<&Output>) -> bool {
    let written = match input {
        Input::Put(v) | Input::Append(v) => v.as_str(),
        Input::Get | Input::Lpop | Input::Rpop | Input::Delete => return false,
    };
    match seen {
        Some(Output::Value(Some(s))) => {
            s.is_empty() || written.is_empty() || s.contains(written) || written.contains(s.as_str())
        }
        Some(Output::Deleted(true)) => true,
        _ => false,
    }
}

fn outcome_text(op: &Operation) -> String {
    match &op.outcome {
        Outcome::Ok(Output::Unit) => format!("{} completed", InputText(&op.input)),
        Outcome::Ok(output) => format!("{} returned {}", InputText(&op.input), OutputText(output)),
        Outcome::Fail | Outcome::Unknown => OpLine(op).to_string(),
    }
}

fn when(op: &Operation) -> String {
    format!(
        "process {}, {:.3}–{:.3} ms",
        op.process,
        op.invoked.as_secs_f64() * 1e3,
        op.completed.as_secs_f64() * 1e3
    )
}

fn describe_states(states: &[State]) -> String {
    const SHOWN: usize = 4;
    let mut parts: Vec<String> = states
        .iter()
        .take(SHOWN)
        .map(|s| match s {
            None => "key missing".to_owned(),
            Some(v) => format!("{v:?}"),
        })
        .collect();
    if states.len() > SHOWN {
        parts.push(format!("… {} states in all", states.len()));
    }
    if parts.is_empty() { "no state".to_owned() } else { parts.join(" or ") }
}
