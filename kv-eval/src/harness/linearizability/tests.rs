use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng, rngs::SmallRng};

use super::generate::{HistoryShape, random_history};
use super::model::{self, State};
use super::*;

const KEY: &str = "k";

/// An operation on [`KEY`], with times in milliseconds.
fn op(process: u64, from_ms: u64, to_ms: u64, input: Input, outcome: Outcome) -> Operation {
    Operation {
        process,
        key: KEY.to_owned(),
        input,
        invoked: Duration::from_millis(from_ms),
        completed: Duration::from_millis(to_ms),
        outcome,
    }
}

fn put(v: &str) -> Input {
    Input::Put(v.to_owned())
}

fn append(v: &str) -> Input {
    Input::Append(v.to_owned())
}

fn ok() -> Outcome {
    Outcome::Ok(Output::Unit)
}

fn value(v: &str) -> Outcome {
    Outcome::Ok(Output::Value(Some(v.to_owned())))
}

fn none() -> Outcome {
    Outcome::Ok(Output::Value(None))
}

fn deleted(existed: bool) -> Outcome {
    Outcome::Ok(Output::Deleted(existed))
}

fn history(ops: Vec<Operation>) -> History {
    History { ops }
}

fn assert_linearizable(ops: Vec<Operation>) {
    let report = check(&history(ops));
    assert!(report.is_linearizable(), "{report}");
}

/// Checks that the history is not linearizable on [`KEY`], with a window that holds `must` and
/// at most `max` operations; returns the report.
fn assert_violation(ops: Vec<Operation>, must: &[&Operation], max: usize) -> Report {
    let report = check(&history(ops));
    let Verdict::NotLinearizable { key, window, reason } = &report.verdict else {
        panic!("expected a violation, got {report}");
    };
    assert_eq!(key, KEY, "{report}");
    assert!(!reason.is_empty());
    assert!(!window.is_empty() && window.len() <= max, "window too big:\n{report}");
    for op in must {
        assert!(window.contains(op), "window lacks {op:?}:\n{report}");
    }
    report
}

// ---- the model ----

#[test]
fn the_model_follows_the_store_semantics() {
    let mut s: State = None;
    assert_eq!(model::run(&mut s, &Input::Lpop), Output::Value(None));
    assert_eq!(model::run(&mut s, &Input::Delete), Output::Deleted(false));
    assert_eq!(model::run(&mut s, &append("hé")), Output::Unit);
    assert_eq!(model::run(&mut s, &append("l€")), Output::Unit);
    assert_eq!(s.as_deref(), Some("hél€"));
    assert_eq!(model::run(&mut s, &Input::Rpop), Output::Value(Some("€".into())));
    assert_eq!(model::run(&mut s, &Input::Lpop), Output::Value(Some("h".into())));
    assert_eq!(model::run(&mut s, &Input::Lpop), Output::Value(Some("é".into())));
    assert_eq!(model::run(&mut s, &Input::Rpop), Output::Value(Some("l".into())));
    assert_eq!(model::run(&mut s, &Input::Rpop), Output::Value(Some(String::new())));
    assert_eq!(s.as_deref(), Some(""));
    assert_eq!(model::run(&mut s, &put("z")), Output::Unit);
    assert_eq!(model::run(&mut s, &Input::Get), Output::Value(Some("z".into())));
    assert_eq!(model::run(&mut s, &Input::Delete), Output::Deleted(true));
    assert_eq!(s, None);
}

// ---- linearizable histories ----

#[test]
fn an_empty_history_is_linearizable() {
    let report = check(&History::default());
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert_eq!((report.keys_checked, report.ops_checked), (0, 0));
}

#[test]
fn a_sequential_history_is_linearizable() {
    let steps = [
        (Input::Get, none()),
        (Input::Lpop, none()),
        (put("a"), ok()),
        (append("bé"), ok()),
        (Input::Get, value("abé")),
        (Input::Lpop, value("a")),
        (Input::Rpop, value("é")),
        (Input::Rpop, value("b")),
        (Input::Lpop, value("")),
        (Input::Get, value("")),
        (Input::Delete, deleted(true)),
        (Input::Delete, deleted(false)),
        (append("x"), ok()),
        (Input::Get, value("x")),
    ];
    let ops: Vec<Operation> = steps
        .into_iter()
        .enumerate()
        .map(|(i, (input, outcome))| op(1, 10 * i as u64, 10 * i as u64 + 5, input, outcome))
        .collect();
    let report = check(&history(ops));
    assert!(report.is_linearizable(), "{report}");
    assert_eq!((report.keys_checked, report.ops_checked), (1, 14));
}

#[test]
fn a_get_concurrent_with_a_put_may_see_either_value() {
    for seen in ["a", "b"] {
        assert_linearizable(vec![
            op(1, 0, 1, put("a"), ok()),
            op(1, 2, 10, put("b"), ok()),
            op(2, 3, 4, Input::Get, value(seen)),
            op(2, 11, 12, Input::Get, value("b")),
        ]);
    }
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    // Both appends overlap; the get after them sees them in the order opposite to invocation.
    assert_linearizable(vec![
        op(1, 0, 10, append("x"), ok()),
        op(2, 1, 9, append("y"), ok()),
        op(3, 11, 12, Input::Get, value("yx")),
    ]);
}

#[test]
fn an_unknown_append_that_took_effect_may_be_seen_later() {
    assert_linearizable(vec![
        op(1, 0, 1, put("a"), ok()),
        op(2, 2, 3, append("b"), Outcome::Unknown),
        op(3, 10, 11, Input::Get, value("a")),
        op(3, 12, 13, Input::Get, value("ab")),
    ]);
}

#[test]
fn an_unknown_put_may_never_take_effect() {
    assert_linearizable(vec![
        op(1, 0, 1, put("a"), ok()),
        op(2, 2, 3, put("b"), Outcome::Unknown),
        op(3, 10, 11, Input::Get, value("a")),
        op(3, 12, 13, Input::Get, value("a")),
    ]);
}

#[test]
fn unknown_gets_are_accepted_whatever_they_are() {
    let report = check(&history(vec![
        op(1, 0, 1, put("a"), ok()),
        op(2, 2, 3, Input::Get, Outcome::Unknown),
        op(3, 4, 5, Input::Get, value("a")),
    ]));
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.ops_checked, 3);
}

#[test]
fn failed_operations_are_ignored() {
    let report = check(&history(vec![
        op(1, 0, 1, put("a"), ok()),
        op(2, 2, 3, put("b"), Outcome::Fail),
        op(2, 4, 5, Input::Delete, Outcome::Fail),
        op(3, 6, 7, Input::Get, value("a")),
    ]));
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.ops_checked, 2);
}

#[test]
fn touching_intervals_are_concurrent_but_a_gap_orders_them() {
    // The get is invoked at the instant the put completes: it may go first.
    assert_linearizable(vec![op(1, 0, 5, put("a"), ok()), op(2, 5, 6, Input::Get, none())]);
    let late = op(2, 6, 7, Input::Get, none());
    assert_violation(vec![op(1, 0, 5, put("a"), ok()), late.clone()], &[&late], 2);
}

// ---- violations ----

#[test]
fn a_stale_read_after_a_completed_write_is_caught() {
    let overwrite = op(1, 2, 3, put("b"), ok());
    let stale = op(2, 4, 5, Input::Get, value("a"));
    assert_violation(
        vec![op(1, 0, 1, put("a"), ok()), overwrite.clone(), stale.clone()],
        &[&overwrite, &stale],
        3,
    );
}

#[test]
fn a_read_that_goes_back_in_time_is_caught() {
    // The slow put of "b" may take effect at any point, but once a get saw "b", a later get
    // cannot see "a" again.
    let new = op(3, 3, 4, Input::Get, value("b"));
    let old = op(3, 5, 6, Input::Get, value("a"));
    assert_violation(
        vec![op(1, 0, 1, put("a"), ok()), op(2, 2, 10, put("b"), ok()), new.clone(), old.clone()],
        &[&new, &old],
        4,
    );
}

#[test]
fn a_lost_append_is_caught() {
    let first = op(1, 0, 1, append("a"), ok());
    let lost = op(2, 0, 1, append("b"), ok());
    let get = op(3, 2, 3, Input::Get, value("a"));
    assert_violation(vec![first, lost.clone(), get.clone()], &[&lost, &get], 3);
}

#[test]
fn an_append_applied_twice_is_caught() {
    let once = op(1, 0, 1, append("a"), ok());
    let get = op(2, 2, 3, Input::Get, value("aa"));
    assert_violation(vec![once.clone(), get.clone()], &[&once, &get], 2);
}

#[test]
fn a_character_popped_twice_is_caught() {
    let first = op(2, 2, 3, Input::Lpop, value("a"));
    let again = op(2, 4, 5, Input::Lpop, value("a"));
    assert_violation(vec![op(1, 0, 1, put("ab"), ok()), first.clone(), again.clone()], &[&first, &again], 3);
}

#[test]
fn the_effect_of_a_failed_operation_is_caught() {
    let failed = op(1, 0, 1, put("a"), Outcome::Fail);
    let get = op(2, 2, 3, Input::Get, value("a"));
    let report = assert_violation(vec![failed.clone(), get.clone()], &[&get, &failed], 2);
    let Verdict::NotLinearizable { reason, .. } = &report.verdict else { unreachable!() };
    assert!(reason.contains("failed"), "{reason}");
}

#[test]
fn a_delete_that_finds_a_missing_key_is_caught() {
    let delete = op(2, 2, 3, Input::Delete, deleted(true));
    assert_violation(vec![op(1, 0, 1, Input::Get, none()), delete.clone()], &[&delete], 2);
}

#[test]
fn the_failing_key_is_named_among_good_ones() {
    let mut ops = Vec::new();
    for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let t = i as u64 * 10;
        ops.push(Operation { key: key.to_owned(), ..op(1, t, t + 1, put(key), ok()) });
        ops.push(Operation { key: key.to_owned(), ..op(2, t + 2, t + 3, Input::Get, value(key)) });
    }
    ops[5].outcome = value("wrong");
    let report = check(&history(ops));
    let Verdict::NotLinearizable { key, window, .. } = &report.verdict else { panic!("{report}") };
    assert_eq!(key, "c");
    assert!(window.iter().all(|op| op.key == "c"));
}

#[test]
fn a_report_reads_well_and_serialises() {
    let report = check(&history(vec![
        op(1, 0, 1, put("a"), ok()),
        op(1, 2, 3, put("b"), ok()),
        op(7, 4, 5, Input::Get, value("a")),
    ]));
    let text = report.to_string();
    assert!(text.starts_with("NOT linearizable: key \"k\""), "{text}");
    assert!(text.contains("get returned \"a\""), "{text}");
    assert!(text.contains("process 7"), "{text}");
    assert!(text.contains("put(\"b\")"), "{text}");
    assert!(text.contains("4.000"), "{text}");
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    assert!(json.contains("\"kind\":\"not_linearizable\""), "{json}");
}

#[test]
fn a_spent_budget_gives_unknown() {
    let h = random_history(&HistoryShape { ops: 200, keys: 5, ..HistoryShape::default() }, 1);
    let report = check_with_budget(&h, Duration::ZERO);
    assert!(matches!(report.verdict, Verdict::Unknown { .. }), "{report}");
    assert!(report.keys_checked < 5);
}

// ---- random histories ----

/// The speed test: 10,000 operations over 100 keys by 16 processes. Run it with `--release`
/// and `--nocapture` to see the time.
#[test]
fn a_large_generated_history_is_linearizable() {
    let shape = HistoryShape::default();
    let h = random_history(&shape, 0x11ea_5eed);
    let (_, failed, unknown) = h.counts();
    assert!(unknown > 0 && failed > 0);
    let started = Instant::now();
    let report = check(&h);
    let took = started.elapsed();
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.keys_checked, shape.keys);
    println!("{} ops ({unknown} unknown, {failed} failed): {report} [{took:?}]", h.ops.len());
}

#[test]
fn a_long_history_of_one_key_is_linearizable() {
    let shape = HistoryShape { ops: 3_000, keys: 1, processes: 4, ..HistoryShape::default() };
    let h = random_history(&shape, 7);
    let report = check(&h);
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.keys_checked, 1);
}

/// Sixteen processes on one key is past what this search can promise (the work grows
/// exponentially with the operations in flight on a key), but it must never give a wrong answer.
#[test]
fn a_hot_key_gives_a_right_answer_or_none() {
    let shape = HistoryShape { ops: 500, keys: 1, unknown: 0.0, fail: 0.0, ..HistoryShape::default() };
    for seed in 0..2 {
        let report = check_with_budget(&random_history(&shape, seed), Duration::from_millis(500));
        assert!(!matches!(report.verdict, Verdict::NotLinearizable { .. }), "{report}");
    }
}

#[test]
fn a_corrupted_read_in_a_large_history_is_caught_with_a_small_window() {
    let h = random_history(&HistoryShape { ops: 3_000, keys: 10, ..HistoryShape::default() }, 3);
    for seed in 0..3u64 {
        let mut h = h.clone();
        let gets: Vec<usize> = (0..h.ops.len())
            .filter(|&i| h.ops[i].input == Input::Get && matches!(h.ops[i].outcome, Outcome::Ok(_)))
            .collect();
        let victim = gets[(seed as usize * 397 + 1000) % gets.len()];
        h.ops[victim].outcome = value("#corrupt#");
        let report = check(&h);
        let Verdict::NotLinearizable { key, window, .. } = &report.verdict else { panic!("{report}") };
        assert_eq!(key, &h.ops[victim].key);
        assert!(window.contains(&h.ops[victim]), "{report}");
        assert!(window.len() <= 4, "{report}");
    }
}

/// Small random histories, checked against a brute-force search over all orders.
#[test]
fn the_checker_agrees_with_brute_force_on_small_histories() {
    let mut rng = SmallRng::seed_from_u64(42);
    let (mut yes, mut no) = (0, 0);
    // (most operations, percentage of unknown ones)
    let mixes = [(7, 10), (8, 35)];
    for i in 0..4_000 {
        let (most, unknown) = mixes[i % mixes.len()];
        let h = small_history(&mut rng, most, unknown);
        let expected = brute_force(&h.ops);
        let report = check(&h);
        match &report.verdict {
            Verdict::Linearizable => assert!(expected, "checker says yes, brute force no: {h:#?}"),
            Verdict::NotLinearizable { window, .. } => {
                assert!(!expected, "checker says no, brute force yes: {h:#?}\n{report}");
                assert!(!window.is_empty() && window.len() <= h.ops.len(), "{report}");
            }
            Verdict::Unknown { .. } => panic!("{report}"),
        }
        if expected { yes += 1 } else { no += 1 }
    }
    assert!(yes > 500 && no > 500, "poor coverage: {yes} linearizable, {no} not");
}

/// Up to `most` operations on one key with small integer times (so that ties happen), about
/// `unknown` % of them unknown, outputs from a real execution, then sometimes corrupted.
fn small_history(rng: &mut SmallRng, most: usize, unknown: u32) -> History {
    let n = rng.random_range(1..=most);
    let mut ops = Vec::new();
    let mut at = Vec::new();
    for _ in 0..n {
        let from = rng.random_range(0..10u64);
        let to = from + rng.random_range(0..5u64);
        let input = match rng.random_range(0..6) {
            0 => Input::Get,
            1 => put(["a", "b"][rng.random_range(0..2)]),
            2 => append(["a", "b", "é"][rng.random_range(0..3)]),
            3 => Input::Lpop,
            4 => Input::Rpop,
            _ => Input::Delete,
        };
        let roll = rng.random_range(0..100);
        let (outcome, lp) = if roll < unknown {
            (Outcome::Unknown, rng.random_bool(0.5).then(|| rng.random_range(from * 2..40)))
        } else if roll < unknown + 5 {
            (Outcome::Fail, None)
        } else {
            (ok(), Some(rng.random_range(from * 2..=to * 2)))
        };
        ops.push(op(rng.random_range(0..3), from, to, input, outcome));
        at.push(lp);
    }
    let mut order: Vec<(u64, usize)> = at.iter().enumerate().filter_map(|(i, t)| t.map(|t| (t, i))).collect();
    order.sort_unstable();
    let mut state: State = None;
    for (_, i) in order {
        let out = model::run(&mut state, &ops[i].input);
        if let Outcome::Ok(o) = &mut ops[i].outcome {
            *o = out;
        }
    }
    if rng.random_bool(0.5) {
        let i = rng.random_range(0..ops.len());
        if let Outcome::Ok(o) = &mut ops[i].outcome {
            *o = match rng.random_range(0..4) {
                0 => Output::Value(None),
                1 => Output::Value(Some(["a", "b", "ab", ""][rng.random_range(0..4)].to_owned())),
                2 => Output::Deleted(rng.random_bool(0.5)),
                _ => Output::Unit,
            };
        }
    }
    History { ops }
}

/// Tries every order: an op may go next if no required op still pending completed strictly
/// before it was invoked; unknown ops may be skipped; failed ops are ignored.
fn brute_force(ops: &[Operation]) -> bool {
    fn go(ops: &[&Operation], done: &mut Vec<bool>, state: &State) -> bool {
        let required = |o: &Operation| matches!(o.outcome, Outcome::Ok(_));
        if ops.iter().zip(done.iter()).all(|(o, &d)| d || !required(o)) {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            let blocked = (0..ops.len())
                .any(|j| j != i && !done[j] && required(ops[j]) && ops[j].completed < ops[i].invoked);
            if blocked {
                continue;
            }
            let mut next = state.clone();
            let out = model::run(&mut next, &ops[i].input);
            if let Outcome::Ok(expected) = &ops[i].outcome
                && *expected != out
            {
                continue;
            }
            done[i] = true;
            if go(ops, done, &next) {
                return true;
            }
            done[i] = false;
        }
        false
    }
    let kept: Vec<&Operation> = ops.iter().filter(|o| o.outcome != Outcome::Fail).collect();
    go(&kept, &mut vec![false; kept.len()], &None)
}

/// The history and the checker need nothing but `std` and `serde` (see [`crate::harness`]): every
/// `use` in their sources names one of those, or the checker's own modules, and no path names
/// another crate.
#[test]
fn the_history_and_the_checker_use_nothing_but_std_and_serde() {
    let sources = [
        ("history.rs", include_str!("../history.rs")),
        ("linearizability/mod.rs", include_str!("mod.rs")),
        ("linearizability/cache.rs", include_str!("cache.rs")),
        ("linearizability/explain.rs", include_str!("explain.rs")),
        ("linearizability/model.rs", include_str!("model.rs")),
        ("linearizability/search.rs", include_str!("search.rs")),
    ];
    let allowed = [
        "std::",
        "serde::",
        "super::",
        "crate::harness::history::",
        "cache::",
        "explain::",
        "model::",
        "search::",
    ];
    let other_crates = [
        "rand::",
        "tokio::",
        "anyhow::",
        "kv_client::",
        "kv_shard::",
        "serde_json::",
        "nix::",
        "hdrhistogram::",
    ];
    for (file, source) in sources {
        for line in source.lines().map(str::trim_start) {
            if let Some(path) = line.strip_prefix("use ").or_else(|| line.strip_prefix("pub use ")) {
                assert!(allowed.iter().any(|a| path.starts_with(a)), "{file}: {line}");
            }
            assert!(!other_crates.iter().any(|c| line.contains(c)), "{file}: {line}");
        }
    }
}
