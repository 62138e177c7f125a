//! Random histories that are linearizable by construction, to test and time the checker (in
//! its tests only: the checker itself needs no randomness).
//!
//! Processes run operations back to back on random keys. Every operation that takes effect gets
//! a random instant inside its interval (an unknown one possibly after the client gave up); the
//! operations are then run one by one on the model in the order of those instants, which gives
//! each `Ok` operation its output. That order respects real time, so the history is
//! linearizable.

use std::collections::HashMap;
use std::time::Duration;

use rand::{RngExt, SeedableRng, rngs::SmallRng};

use super::model::{self, State};
use crate::harness::history::{History, Input, Operation, Outcome, Output};

/// The shape of a generated history.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistoryShape {
    /// Operations in all.
    pub(super) ops: usize,
    /// Keys, picked uniformly.
    pub(super) keys: usize,
    /// Processes running concurrently, each one operation at a time.
    pub(super) processes: usize,
    /// Shortest operation latency.
    pub(super) min_latency: Duration,
    /// Longest operation latency.
    pub(super) max_latency: Duration,
    /// Share of operations whose outcome is unknown; half of them take effect, up to a few
    /// latencies after the client gave up.
    pub(super) unknown: f64,
    /// Share of operations that fail, and so do not take effect.
    pub(super) fail: f64,
}

impl Default for HistoryShape {
    /// 10,000 operations over 100 keys by 16 processes, 0.1–2 ms each, 1 % unknown, 0.5 % failed.
    fn default() -> Self {
        HistoryShape {
            ops: 10_000,
            keys: 100,
            processes: 16,
            min_latency: Duration::from_micros(100),
            max_latency: Duration::from_millis(2),
            unknown: 0.01,
            fail: 0.005,
        }
    }
}

/// Characters values are made of, multi-byte ones included so that pops must respect them.
const ALPHABET: [char; 8] = ['a', 'b', 'c', 'd', 'x', 'y', 'é', '€'];

/// A random linearizable history of the given shape; the same seed gives the same history.
pub(super) fn random_history(shape: &HistoryShape, seed: u64) -> History {
    let mut rng = SmallRng::seed_from_u64(seed);
    let min = nanos(shape.min_latency);
    let max = nanos(shape.max_latency).max(min + 1);
    let mut clocks: Vec<u64> = (0..shape.processes.max(1)).map(|_| rng.random_range(0..min + 1)).collect();
    let mut ops = Vec::with_capacity(shape.ops);
    let mut effect_at = Vec::with_capacity(shape.ops);
    for _ in 0..shape.ops {
        let (process, clock) =
            clocks.iter().copied().enumerate().min_by_key(|&(p, c)| (c, p)).unwrap_or((0, 0));
        let invoked = clock + rng.random_range(0..min / 4 + 1);
        let completed = invoked + rng.random_range(min..max);
        clocks[process] = completed;
        let roll: f64 = rng.random();
        let (outcome, at) = if roll < shape.unknown {
            let at = rng.random_bool(0.5).then(|| rng.random_range(invoked..completed + 3 * max));
            (Outcome::Unknown, at)
        } else if roll < shape.unknown + shape.fail {
            (Outcome::Fail, None)
        } else {
            (Outcome::Ok(Output::Unit), Some(rng.random_range(invoked..=completed)))
        };
        ops.push(Operation {
            process: process as u64,
            key: format!("k{}", rng.random_range(0..shape.keys.max(1))),
            input: random_input(&mut rng),
            invoked: Duration::from_nanos(invoked),
            completed: Duration::from_nanos(completed),
            outcome,
        });
        effect_at.push(at);
    }

    let mut order: Vec<(u64, usize)> =
        effect_at.iter().enumerate().filter_map(|(i, at)| at.map(|t| (t, i))).collect();
    order.sort_unstable();
    let mut store: HashMap<String, State> = HashMap::new();
    for (_, i) in order {
        let op = &mut ops[i];
        let output = model::run(store.entry(op.key.clone()).or_default(), &op.input);
        if let Outcome::Ok(recorded) = &mut op.outcome {
            *recorded = output;
        }
    }
    History { ops }
}

fn random_input(rng: &mut SmallRng) -> Input {
    match rng.random_range(0..100) {
        0..35 => Input::Get,
        35..50 => Input::Put(random_value(rng)),
        50..75 => Input::Append(random_value(rng)),
        75..85 => Input::Lpop,
        85..95 => Input::Rpop,
        _ => Input::Delete,
    }
}

fn random_value(rng: &mut SmallRng) -> String {
    let len = rng.random_range(1..4);
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]).collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
