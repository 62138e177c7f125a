//! The course assignment's experiment, level by level: clients each loop over a `put` of a fresh
//! 4-character value to a random key in `0..=100` and a `get` of the same key, through cluster
//! clients that read from any replica. A get that does not return the value just written is the
//! assignment's *error*; the recorded history tells the errors apart (`analysis`): stale reads,
//! which no linearizable store returns, from gets that rightly returned another client's newer
//! put. The linearizability checker judges each level's whole history.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kv_client::ReadFrom;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::task::JoinSet;

use super::analysis::{self, PairTally};
use super::setup::{client_runtime, cluster_client, keep_files_if_asked, master_addr, start_cluster};
use super::workload::{UniqueValues, random_key};
use super::{Options, Setting, as_secs};
use crate::harness::history::{History, Input, Outcome};
use crate::harness::linearizability;
use crate::harness::recorder::{Recorder, RecordingClient};

/// How the assignment's experiment runs.
#[derive(Debug, Clone, Serialize)]
pub struct LevelsConfig {
    /// Replication factor (the assignment's 3).
    pub factor: usize,
    /// Levels run, each on a fresh cluster: synchronous secondaries, `factor − 1` being strong.
    pub levels: Vec<usize>,
    /// Concurrent clients, each looping over put-then-get pairs.
    pub clients: usize,
    /// How long the clients loop.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// The longest one attempt of a call may take.
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// How long the linearizability check of a level may take before it answers unknown.
    #[serde(serialize_with = "as_secs")]
    pub check_budget: Duration,
}

impl Default for LevelsConfig {
    fn default() -> Self {
        LevelsConfig {
            factor: 3,
            levels: vec![0, 1, 2],
            clients: 3,
            duration: Duration::from_secs(8),
            timeout: Duration::from_secs(2),
            check_budget: Duration::from_secs(60),
        }
    }
}

/// One level of the experiment.
#[derive(Debug, Clone, Serialize)]
pub struct LevelRow {
    /// The replication factor and level.
    pub setting: Setting,
    /// How long the clients ran, to the end of their last pair.
    pub secs: f64,
    /// Put-then-get pairs per second.
    pub pairs_per_sec: f64,
    /// The assignment's errors per second.
    pub errors_per_sec: f64,
    /// Errors per pair.
    pub error_fraction: f64,
    /// The pairs, by how their get went.
    pub tally: PairTally,
    /// The checker's verdict on the level's history.
    pub linearizability: linearizability::Report,
    /// The recorded history.
    #[serde(skip)]
    pub history: History,
}

/// Runs every level of [`LevelsConfig::levels`], each on a fresh cluster.
pub(super) fn run(options: &Options) -> Result<Vec<LevelRow>> {
    let config = &options.levels;
    let mut rows = Vec::new();
    for &level in &config.levels {
        let setting = Setting::new(config.factor, level)?;
        let row = run_level(options, setting)?;
        let t = &row.tally;
        println!(
            "    {} pairs in {:.2} s ({:.0}/s); {} errors ({:.1}%): {} stale, {} another client's newer value, \
             {} failed, {} unexplained; {}",
            t.pairs,
            row.secs,
            row.pairs_per_sec,
            t.errors(),
            row.error_fraction * 100.0,
            t.stale,
            t.newer,
            t.failed,
            t.unexplained,
            verdict_word(&row.linearizability)
        );
        rows.push(row);
    }
    Ok(rows)
}

/// `linearizable`, `NOT linearizable` or `undecided`.
pub(super) fn verdict_word(report: &linearizability::Report) -> &'static str {
    match report.verdict {
        linearizability::Verdict::Linearizable => "linearizable",
        linearizability::Verdict::NotLinearizable { .. } => "NOT linearizable",
        linearizability::Verdict::Unknown { .. } => "undecided",
    }
}

fn run_level(options: &Options, setting: Setting) -> Result<LevelRow> {
    let config = &options.levels;
    let rt = client_runtime()?;
    let mut cluster = start_cluster(options, setting, &rt)?;
    let master = master_addr(&cluster)?;
    let recorder = Recorder::new();
    let values = UniqueValues::default();
    let secs = rt.block_on(async {
        let mut clients = Vec::new();
        for process in 0..config.clients as u64 {
            let client = cluster_client(&master, ReadFrom::AnyReplica, config.timeout).await?;
            clients.push(recorder.client(process, client));
        }
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for client in clients {
            let seed = options.seed ^ ((setting.level() as u64) << 32);
            tasks.spawn(pairs(client, values.clone(), seed, start + config.duration));
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a client task panicked")?;
        }
        Ok::<_, anyhow::Error>(start.elapsed().as_secs_f64())
    })?;
    drop(rt);
    let history = recorder.history();
    let tally = analysis::tally_pairs(&history);
    let linearizability = linearizability::check_with_budget(&history, config.check_budget);
    let failed = setting.is_strong() && (tally.stale > 0 || !linearizability.is_linearizable());
    keep_files_if_asked(&mut cluster, failed || tally.unexplained > 0 || tally.failed > 0);
    let secs = secs.max(1e-9);
    Ok(LevelRow {
        setting,
        secs,
        pairs_per_sec: tally.pairs as f64 / secs,
        errors_per_sec: tally.errors() as f64 / secs,
        error_fraction: tally.errors() as f64 / tally.pairs.max(1) as f64,
        tally,
        linearizability,
        history,
    })
}

/// One client: a put of a fresh value to a random key, then a get of the key, until `deadline`.
async fn pairs(client: RecordingClient, values: UniqueValues, seed: u64, deadline: Instant) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(client.process()));
    let mut backoff = Duration::ZERO;
    while Instant::now() < deadline {
        let key = random_key(&mut rng);
        let put = client.run(&key, Input::Put(values.draw(&mut rng))).await;
        let get = client.run(&key, Input::Get).await;
        if matches!((put, get), (Outcome::Ok(_), Outcome::Ok(_))) {
            backoff = Duration::ZERO;
        } else {
            // As a real client would, and so that a broken cluster does not flood the history.
            backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
            tokio::time::sleep(backoff).await;
        }
    }
}
