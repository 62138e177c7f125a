//! The conformance suite every [`Storage`] engine must pass, written once.
//!
//! Engines call [`run_all`] from a `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`
//! and [`check_against_model`] from a proptest over [`ops_strategy`]. The model is a plain
//! `BTreeMap<String, String>` with the semantics written out again, independently of
//! [`crate::op::Op::apply`], so a mistake in one does not hide in the other.
//!
//! The concurrency scenarios run several tasks on one key at once, on the runtime's worker
//! threads, and refuse to run on a single-threaded runtime: there an engine whose `apply` never
//! awaits cannot interleave two operations, and the scenarios would pass whatever it does. Their
//! own tests hold them against engines made racy on purpose, which they must catch.
//!
//! Failures panic: this module is test code, shipped in the library (behind the `conformance`
//! feature) so that engines in other crates can use it.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use crate::{Error, Limits, Mutation, Output, Storage};

/// Limits small enough that random sequences hit them.
pub const MODEL_LIMITS: Limits = Limits { max_key_len: 8, max_value_len: 12 };

/// One step of a random sequence.
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// `get(key)`.
    Get(String),
    /// A mutation.
    Write(Mutation),
}

/// Random operations over a few keys (one over [`MODEL_LIMITS`]) with multi-byte characters.
pub fn ops_strategy() -> impl Strategy<Value = Vec<ModelOp>> {
    let key = prop_oneof![
        Just("a".to_owned()),
        Just("ключ".to_owned()),
        Just("".to_owned()),
        Just("toolongkey".to_owned()),
    ];
    let value = "[ab\u{e9}\u{20ac}\u{1f600}]{0,6}";
    let op = (0..6u8, key, value).prop_map(|(kind, key, value)| match kind {
        0 => ModelOp::Get(key),
        1 => ModelOp::Write(Mutation::put(key, value)),
        2 => ModelOp::Write(Mutation::append(key, value)),
        3 => ModelOp::Write(Mutation::lpop(key)),
        4 => ModelOp::Write(Mutation::rpop(key)),
        _ => ModelOp::Write(Mutation::delete(key)),
    });
    proptest::collection::vec(op, 0..64)
}

/// Result of one step, comparable between engine and model.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Read(Option<String>),
    Wrote(Output),
    Refused(Error),
}

fn model_step(model: &mut BTreeMap<String, String>, op: &ModelOp, limits: &Limits) -> Step {
    let key = match op {
        ModelOp::Get(key) => key,
        ModelOp::Write(m) => &m.key,
    };
    if key.len() > limits.max_key_len {
        return Step::Refused(Error::KeyTooLarge { len: key.len(), max: limits.max_key_len });
    }
    let too_large = |len: usize| Step::Refused(Error::ValueTooLarge { len, max: limits.max_value_len });
    let ModelOp::Write(m) = op else {
        return Step::Read(model.get(key).cloned());
    };
    match &m.op {
        crate::op::Op::Put(value) => {
            if value.len() > limits.max_value_len {
                return too_large(value.len());
            }
            model.insert(key.clone(), value.clone());
            Step::Wrote(Output::Unit)
        }
        crate::op::Op::Append(value) => {
            let new = format!("{}{}", model.get(key).map_or("", String::as_str), value);
            if new.len() > limits.max_value_len {
                return too_large(new.len());
            }
            model.insert(key.clone(), new);
            Step::Wrote(Output::Unit)
        }
        crate::op::Op::LPop | crate::op::Op::RPop => {
            let Some(old) = model.get_mut(key) else {
                return Step::Wrote(Output::Popped(None));
            };
            let mut chars: Vec<char> = old.chars().collect();
            let popped = if chars.is_empty() {
                String::new()
            } else if matches!(m.op, crate::op::Op::LPop) {
                chars.remove(0).to_string()
            } else {
                chars.pop().map(String::from).unwrap_or_default()
            };
            *old = chars.into_iter().collect();
            Step::Wrote(Output::Popped(Some(popped)))
        }
        crate::op::Op::Delete => Step::Wrote(Output::Deleted(model.remove(key).is_some())),
    }
}

/// Runs `ops` against `engine` (which must start empty and have [`MODEL_LIMITS`]) and against
/// the model, and panics at the first step where they differ, or if the final contents differ.
pub async fn check_against_model<S: Storage>(engine: &S, ops: Vec<ModelOp>) {
    assert_eq!(engine.limits(), &MODEL_LIMITS, "the engine must use MODEL_LIMITS");
    let mut model = BTreeMap::new();
    let mut keys = std::collections::BTreeSet::new();
    for (i, op) in ops.into_iter().enumerate() {
        let expected = model_step(&mut model, &op, &MODEL_LIMITS);
        let actual = match &op {
            ModelOp::Get(key) => {
                keys.insert(key.clone());
                engine.get(key).await.map(Step::Read)
            }
            ModelOp::Write(m) => {
                keys.insert(m.key.clone());
                engine.apply(m.clone()).await.map(Step::Wrote)
            }
        }
        .unwrap_or_else(Step::Refused);
        assert_eq!(actual, expected, "step {i}: {op:?}");
    }
    for key in keys.iter().filter(|k| k.len() <= MODEL_LIMITS.max_key_len) {
        assert_eq!(engine.get(key).await.ok().flatten(), model.get(key).cloned(), "final {key:?}");
    }
}

/// Runs every scenario of the suite; `make` builds a fresh, empty engine with the given limits.
/// Call it on a multi-threaded runtime with two or more workers (more than the machine's cores
/// is better: the operating system then interleaves them too); on any other it panics.
pub async fn run_all<S, F>(make: F)
where
    S: Storage,
    F: Fn(Limits) -> S,
{
    sequence(&make(Limits::default())).await;
    limits_change_nothing(&make(Limits { max_key_len: 4, max_value_len: 8 })).await;
    concurrent_appends_are_atomic(Arc::new(make(Limits::default()))).await;
    concurrent_pops_return_each_character_once(Arc::new(make(Limits::default()))).await;
    export_import_and_remove(&make(Limits::default()), &make(Limits::default())).await;
    states_are_kept_apart_from_the_values(&make(Limits::default())).await;
}

/// The server's own records: set, read back, replaced, removed; never values.
async fn states_are_kept_apart_from_the_values<S: Storage>(s: &S) {
    assert_eq!(s.state("member").await.expect("the engine answers"), None);
    s.set_state("member", Some(b"one".to_vec())).await.expect("the engine answers");
    s.set_state("other", Some(Vec::new())).await.expect("the engine answers");
    s.set_state("member", Some(b"two".to_vec())).await.expect("the engine answers");
    assert_eq!(s.state("member").await.expect("the engine answers").as_deref(), Some(&b"two"[..]));
    assert_eq!(s.state("other").await.expect("the engine answers").as_deref(), Some(&b""[..]));
    assert_eq!(s.key_count().await.expect("the engine answers"), 0, "records are not values");
    assert_eq!(s.get("member").await.expect("the engine answers"), None);
    s.set_state("member", None).await.expect("the engine answers");
    assert_eq!(s.state("member").await.expect("the engine answers"), None);
}

/// Moving keys between engines: export what a predicate picks, import it elsewhere, remove it.
async fn export_import_and_remove<S: Storage>(from: &S, to: &S) {
    let ok = "the engine refused a valid operation";
    for i in 0..50 {
        from.put(format!("k{i}"), format!("v{i}")).await.expect(ok);
    }
    from.put("empty".into(), String::new()).await.expect(ok);
    let moving = |key: &str| key.ends_with('7') || key == "empty";
    let exported = from.export(&moving).await.expect(ok);
    let expected: Vec<(String, String)> = [7, 17, 27, 37, 47]
        .iter()
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .chain([("empty".to_owned(), String::new())])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(exported, expected, "the keys it picks, in key order");
    to.put("k7".into(), "stale".into()).await.expect(ok);
    to.import(exported).await.expect(ok);
    assert_eq!(to.get("k7").await.expect(ok).as_deref(), Some("v7"), "import overwrites");
    assert_eq!(to.get("empty").await.expect(ok).as_deref(), Some(""), "an empty value is a value");
    assert_eq!(to.key_count().await.expect(ok), 6);
    assert_eq!(from.remove_where(&moving).await.expect(ok), 6);
    assert_eq!(from.get("k17").await.expect(ok), None);
    assert_eq!(from.get("k16").await.expect(ok).as_deref(), Some("v16"));
    assert_eq!(from.key_count().await.expect(ok), 45);
    assert_eq!(from.remove_where(&moving).await.expect(ok), 0);
}

/// Reading slots back in batches ([`Storage::export_slots`]) and removing them
/// ([`Storage::remove_slots`]), for an engine that orders its keys by `slot_of` (any function
/// for one that takes it as given): every batch is at most about `max_bytes` past its first
/// pair, the batches together are the slots' pairs in slot then key order, each once, and
/// removing slots removes exactly their keys.
pub async fn export_slots_in_batches<S: Storage>(s: &S, slot_of: fn(&str) -> u16) {
    let ok = "the engine refused a valid operation";
    for i in 0..300 {
        s.put(format!("key{i}"), "v".repeat(i % 40)).await.expect(ok);
    }
    let mut slots: Vec<u16> = (0..300).map(|i| slot_of(&format!("key{i}"))).collect();
    slots.sort_unstable();
    slots.dedup();
    let wanted: Vec<u16> = slots.iter().copied().step_by(2).collect();
    let mut expected: Vec<(u16, String, String)> = (0..300)
        .map(|i| (format!("key{i}"), "v".repeat(i % 40)))
        .filter(|(key, _)| wanted.contains(&slot_of(key)))
        .map(|(key, value)| (slot_of(&key), key, value))
        .collect();
    expected.sort();
    let (mut read, mut from, mut batches) = (Vec::new(), None, 0);
    loop {
        let (entries, next) = s.export_slots(slot_of, &wanted, from.clone(), 200).await.expect(ok);
        if let (Some(next), Some((last, _))) = (&next, entries.last()) {
            // Every slot before the next batch's was read whole, and the batch's last key is
            // before where the next starts.
            assert!(slot_of(last) <= next.slot, "the next batch starts back in slot {}", next.slot);
            if next.after.is_none() {
                assert!(slot_of(last) < next.slot, "a slot said whole goes on");
            }
        }
        batches += 1;
        let first_bytes = entries.first().map_or(0, |(k, v)| k.len() + v.len() + 2);
        let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        assert!(next.is_none() || bytes <= 200 + 2 * first_bytes.max(60), "a batch of {bytes} bytes");
        read.extend(entries.into_iter().map(|(key, value)| (slot_of(&key), key, value)));
        let Some(next) = next else { break };
        from = Some(next);
        assert!(batches <= 300, "the batches never end");
    }
    assert_eq!(read, expected, "every pair of the slots, once, in slot then key order");
    let removed = s.remove_slots(slot_of, &wanted).await.expect(ok);
    assert_eq!(removed, expected.len());
    assert_eq!(s.key_count().await.expect(ok), 300 - expected.len());
    let (left, next) = s.export_slots(slot_of, &wanted, None, 1 << 20).await.expect(ok);
    assert!(left.is_empty() && next.is_none(), "removed slots export nothing");
    let others: Vec<u16> = slots.iter().copied().filter(|slot| !wanted.contains(slot)).collect();
    let (kept, _) = s.export_slots(slot_of, &others, None, 1 << 20).await.expect(ok);
    assert_eq!(kept.len(), 300 - expected.len(), "the other slots are untouched");
}

/// The course assignment's sequence test, plus delete.
async fn sequence<S: Storage>(s: &S) {
    let ok = "the engine refused a valid operation";
    assert_eq!(s.get("10").await.expect(ok), None);
    s.put("33".into(), "?!?!?".into()).await.expect(ok);
    assert_eq!(s.get("33").await.expect(ok).as_deref(), Some("?!?!?"));
    s.append("45".into(), "huh?".into()).await.expect(ok);
    assert_eq!(s.get("45").await.expect(ok).as_deref(), Some("huh?"));
    s.put("45".into(), "huh!".into()).await.expect(ok);
    s.append("45".into(), "?".into()).await.expect(ok);
    assert_eq!(s.get("45").await.expect(ok).as_deref(), Some("huh!?"));
    assert_eq!(s.lpop("3".into()).await.expect(ok), None);
    assert_eq!(s.get("3").await.expect(ok), None, "a pop of a missing key created it");
    for (left, expected) in [(true, "h"), (false, "?"), (true, "u"), (false, "!"), (false, "h")] {
        let popped = if left { s.lpop("45".into()).await } else { s.rpop("45".into()).await };
        assert_eq!(popped.expect(ok).as_deref(), Some(expected));
    }
    assert_eq!(s.lpop("45".into()).await.expect(ok).as_deref(), Some(""));
    assert_eq!(s.rpop("45".into()).await.expect(ok).as_deref(), Some(""));
    assert_eq!(s.get("45").await.expect(ok).as_deref(), Some(""));
    s.put("h".into(), "héllo".into()).await.expect(ok);
    assert_eq!(s.lpop("h".into()).await.expect(ok).as_deref(), Some("h"));
    assert_eq!(s.lpop("h".into()).await.expect(ok).as_deref(), Some("é"));
    assert!(s.delete("h".into()).await.expect(ok));
    assert!(!s.delete("h".into()).await.expect(ok));
    assert_eq!(s.get("h").await.expect(ok), None);
}

async fn limits_change_nothing<S: Storage>(s: &S) {
    let limits = *s.limits();
    assert_eq!(limits, Limits { max_key_len: 4, max_value_len: 8 });
    let too_long_key = "12345".to_owned();
    assert_eq!(s.get(&too_long_key).await, Err(Error::KeyTooLarge { len: 5, max: 4 }));
    assert!(s.put(too_long_key.clone(), "v".into()).await.is_err());
    assert!(s.append(too_long_key.clone(), "v".into()).await.is_err());
    s.put("k".into(), "1234567".into()).await.expect("within limits");
    assert_eq!(s.put("k".into(), "123456789".into()).await, Err(Error::ValueTooLarge { len: 9, max: 8 }));
    assert_eq!(s.append("k".into(), "89".into()).await, Err(Error::ValueTooLarge { len: 9, max: 8 }));
    assert_eq!(s.get("k").await.expect("valid").as_deref(), Some("1234567"));
    assert!(s.append("new".into(), "123456789".into()).await.is_err());
    assert_eq!(s.get("new").await.expect("valid"), None, "a refused append created its key");
    s.append("k".into(), "8".into()).await.expect("exactly at the limit");
    assert_eq!(s.get("k").await.expect("valid").as_deref(), Some("12345678"));
}

/// Tasks the concurrency scenarios run at once on one key: more than the runtime's worker
/// threads, so that every worker has one and the operating system interleaves them.
const TASKS: usize = 8;
/// Appends per task in [`concurrent_appends_are_atomic`].
const APPENDS: usize = 200;

/// Panics unless the caller runs on a multi-threaded runtime with two or more workers. On one
/// thread, an engine whose `apply` never awaits anything cannot interleave two operations, so the
/// concurrency scenarios would pass whatever the engine does.
fn assert_parallel_runtime() {
    let handle = tokio::runtime::Handle::current();
    assert!(
        handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && handle.metrics().num_workers() >= 2,
        "the conformance suite's concurrency scenarios need a multi-threaded runtime with two or \
         more workers, e.g. #[tokio::test(flavor = \"multi_thread\", worker_threads = 4)]"
    );
}

/// Spawns `TASKS` tasks running `body(task)`, released together by a barrier so that they
/// contend from the start, and returns what each returned, in task order.
async fn contend<T, F, Fut>(body: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    assert_parallel_runtime();
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (start, work) = (Arc::clone(&start), body(task));
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(TASKS);
    for task in tasks {
        results.push(task.await.expect("a task of the scenario panicked"));
    }
    results
}

/// Tasks on several threads append numbered tokens to one key: the final value holds every
/// token exactly once, and each task's tokens in the order it appended them.
async fn concurrent_appends_are_atomic<S: Storage>(s: Arc<S>) {
    contend(|task| {
        let s = Arc::clone(&s);
        async move {
            for round in 0..APPENDS {
                s.append("15".into(), format!("{task}.{round};")).await.expect("valid append");
            }
        }
    })
    .await;
    let value = s.get("15").await.expect("valid").unwrap_or_default();
    let mut next = [0usize; TASKS];
    let mut wrong = Vec::new();
    for token in value.split_terminator(';') {
        let parsed = token
            .split_once('.')
            .and_then(|(t, r)| Some((t.parse::<usize>().ok()?, r.parse::<usize>().ok()?)));
        match parsed {
            Some((task, round)) if task < TASKS && next[task] == round => next[task] += 1,
            _ => wrong.push(token),
        }
    }
    assert!(
        wrong.is_empty() && next == [APPENDS; TASKS],
        "concurrent appends lost, repeated or reordered: tokens appended per task {next:?} \
         (each should be {APPENDS}), out of place {:?}",
        &wrong[..wrong.len().min(8)]
    );
}

/// Tasks on several threads pop one key's characters from both ends until it is empty: every
/// character comes out exactly once, and the key is left holding `""`.
async fn concurrent_pops_return_each_character_once<S: Storage>(s: Arc<S>) {
    // Distinct characters of one, two, three and four bytes.
    let original: String = ('a'..='z')
        .chain('α'..='ω')
        .chain('\u{4e00}'..='\u{4fff}')
        .chain('\u{1f600}'..='\u{1f64f}')
        .collect();
    s.put("p".into(), original.clone()).await.expect("valid put");
    let popped = contend(|task| {
        let s = Arc::clone(&s);
        async move {
            let mut got = Vec::new();
            loop {
                let popped = if task % 2 == 0 { s.lpop("p".into()).await } else { s.rpop("p".into()).await };
                match popped.expect("valid pop") {
                    Some(c) if !c.is_empty() => got.push(c),
                    _ => return got,
                }
            }
        }
    })
    .await;
    let mut all: Vec<String> = popped.into_iter().flatten().collect();
    let mut expected: Vec<String> = original.chars().map(String::from).collect();
    expected.sort();
    all.sort();
    if all != expected {
        let total = all.len();
        all.dedup();
        panic!(
            "concurrent pops returned {total} characters, {} of them distinct, of the {} held: \
             every character must be popped exactly once",
            all.len(),
            expected.len()
        );
    }
    assert_eq!(s.get("p").await.expect("valid").as_deref(), Some(""));
}

#[cfg(test)]
mod tests;
