//! The recorded load that a cluster change runs under: the sharded runner's resharding phase and
//! the replicas runner's failover phase both drive it, and check it with [`crate::load::analysis`].
//!
//! A quarter of the keys take puts, the others only appends, and every value written is unique
//! and ends with `;`: an append key's final value then lists the appends it holds, which is what
//! [`crate::load::analysis::audit_appends`] reads. Nothing here decides when the load stops; the caller
//! says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::harness::history::{Input, Outcome, Output};
use crate::harness::mix::{Mix, OpKind};
use crate::harness::recorder::RecordingClient;

/// How long the final reads may keep retrying, all keys together.
const FINAL_READS_LIMIT: Duration = Duration::from_secs(30);

/// The keys of the load: put keys hold the last put, append keys every append.
pub(crate) struct KeySpace {
    pub(crate) all: Vec<String>,
    pub(crate) put: Vec<String>,
    pub(crate) append: Vec<String>,
}

impl KeySpace {
    /// `keys` keys (at least 2), named `{prefix}p0000` (puts) and `{prefix}a0001` (appends).
    pub(crate) fn new(keys: usize, prefix: &str) -> Self {
        let (mut all, mut put, mut append) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..keys.max(2) {
            let key = if i % 4 == 0 { format!("{prefix}p{i:04}") } else { format!("{prefix}a{i:04}") };
            if i % 4 == 0 { &mut put } else { &mut append }.push(key.clone());
            all.push(key);
        }
        KeySpace { all, put, append }
    }
}

/// The value a key is preloaded with; unique, like every value written.
pub(crate) fn initial_value(key: &str) -> String {
    format!("{key}:0;")
}

/// Writes every key once, each process its share, recorded.
pub(crate) async fn preload(clients: &[RecordingClient], keys: &[String]) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let mine: Vec<String> = keys.iter().skip(i).step_by(clients.len()).cloned().collect();
        tasks.spawn(async move {
            for key in mine {
                let outcome = client.run(&key, Input::Put(initial_value(&key))).await;
                if !matches!(outcome, Outcome::Ok(_)) {
                    bail!("preloading {key}: {outcome:?}");
                }
            }
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a preload task panicked")??;
    }
    Ok(())
}

/// One process: operations back to back for as long as `go_on` says, asked before each one.
pub(crate) async fn client_loop(
    client: RecordingClient,
    keys: Arc<KeySpace>,
    mix: Mix,
    seed: u64,
    go_on: impl Fn() -> bool,
) {
    let process = client.process();
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(process));
    let mut n = 0u64;
    let mut backoff = Duration::ZERO;
    while go_on() {
        n += 1;
        let pick = |rng: &mut SmallRng, keys: &[String]| keys[rng.random_range(0..keys.len())].clone();
        // Written values are unique, so a read (and a final value) tells which writes it holds.
        let (key, input) = match mix.pick(&mut rng) {
            OpKind::Put => (pick(&mut rng, &keys.put), Input::Put(format!("{process}.{n};"))),
            OpKind::Append => (pick(&mut rng, &keys.append), Input::Append(format!("{process}.{n};"))),
            _ => (pick(&mut rng, &keys.all), Input::Get),
        };
        if let Outcome::Ok(_) = client.run(&key, input).await {
            backoff = Duration::ZERO;
        } else {
            // As a real client would: 20 ms doubling to 200 ms. It also bounds the number of
            // unknown outcomes, which the checker pays for.
            backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Reads every key (recorded), retrying for up to [`FINAL_READS_LIMIT`] in all; returns the
/// values and the keys that could not be read.
pub(crate) async fn final_reads(
    reader: &RecordingClient,
    keys: &[String],
) -> (BTreeMap<String, Option<String>>, Vec<String>) {
    let deadline = Instant::now() + FINAL_READS_LIMIT;
    let (mut finals, mut unread) = (BTreeMap::new(), Vec::new());
    for key in keys {
        loop {
            if let Outcome::Ok(Output::Value(value)) = reader.run(key, Input::Get).await {
                finals.insert(key.clone(), value);
                break;
            }
            if Instant::now() >= deadline {
                unread.push(key.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (finals, unread)
}
