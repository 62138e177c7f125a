//! Stale reads under eventual consistency, and how long the replicas take to agree once writes
//! stop.
//!
//! Per level, on a fresh cluster: writers put fresh values to random keys of `0..=100` while
//! readers get random keys from any replica, all recorded; `analysis` finds the stale reads and
//! their lag. Then the writers stop, and every replica of every key written is polled directly
//! (a client of one server does not route: a secondary answers from what it holds) until each
//! key's replicas all hold the primary's value. The convergence time runs from the completion of
//! the last write to the end of the polling round that found every key agreeing: at most one
//! sync interval plus the transfer, by the protocol, within the round's resolution.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kv_client::{Client, ReadFrom};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::task::JoinSet;

use super::analysis::{self, StaleReads};
use super::setup::{
    client_runtime, cluster_client, current_config, keep_files_if_asked, master_addr, start_cluster,
};
use super::workload::{UniqueValues, random_key};
use super::{Options, Setting, as_secs};
use crate::harness::history::{History, Input, Outcome};
use crate::harness::recorder::{Recorder, RecordingClient};

/// How the staleness phase runs.
#[derive(Debug, Clone, Serialize)]
pub struct StalenessConfig {
    /// Replication factor.
    pub factor: usize,
    /// Levels run, each on a fresh cluster (below `factor − 1`: eventual).
    pub levels: Vec<usize>,
    /// Clients that only put.
    pub writers: usize,
    /// Clients that only get, from any replica.
    pub readers: usize,
    /// How long they run.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// The longest one attempt of a call may take.
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// Pause between two rounds of polling the replicas.
    #[serde(serialize_with = "as_secs")]
    pub poll: Duration,
}

impl Default for StalenessConfig {
    fn default() -> Self {
        StalenessConfig {
            factor: 3,
            levels: vec![0, 1],
            writers: 2,
            readers: 4,
            duration: Duration::from_secs(8),
            timeout: Duration::from_secs(2),
            poll: Duration::from_millis(50),
        }
    }
}

/// The staleness phase at one level.
#[derive(Debug, Clone, Serialize)]
pub struct StalenessRow {
    /// The replication factor and level.
    pub setting: Setting,
    /// How long the load ran.
    pub load_secs: f64,
    /// Successful puts per second.
    pub writes_per_sec: f64,
    /// Successful gets per second.
    pub reads_per_sec: f64,
    /// Calls that failed or whose outcome is unknown.
    pub failed: usize,
    /// The stale reads.
    pub stale: StaleReads,
    /// How long the replicas took to agree after the last write.
    pub convergence: Convergence,
    /// The recorded history.
    #[serde(skip)]
    pub history: History,
}

/// The replicas' convergence once writes stopped.
#[derive(Debug, Clone, Serialize)]
pub struct Convergence {
    /// Keys written, each polled at every replica.
    pub keys: usize,
    /// Seconds from the last write's completion until every replica of every key held the
    /// primary's value; `None` if that did not happen within `bound_secs`.
    pub secs: Option<f64>,
    /// The longest it may take: three sync intervals and 5 s.
    pub bound_secs: f64,
    /// Seconds from the last write's completion to the end of the first round of polling: no
    /// shorter convergence time can be seen.
    pub first_round_secs: f64,
    /// Rounds of polling.
    pub rounds: usize,
    /// Keys whose replicas still disagreed when polling gave up (the first few).
    pub unconverged: Vec<String>,
    /// Direct reads that failed (the key was polled again in the next round).
    pub read_errors: usize,
    /// The first such failure, for diagnosis.
    pub sample_error: Option<String>,
}

/// Runs every level of [`StalenessConfig::levels`], each on a fresh cluster.
pub(super) fn run(options: &Options) -> Result<Vec<StalenessRow>> {
    let config = &options.staleness;
    let mut rows = Vec::new();
    for &level in &config.levels {
        let row = run_level(options, Setting::new(config.factor, level)?)?;
        let (s, c) = (&row.stale, &row.convergence);
        println!(
            "    {:.0} puts/s, {:.0} gets/s, {} failed; {} of {} reads stale ({:.1}%), lag median {:.0} ms, \
             max {:.0} ms; {}",
            row.writes_per_sec,
            row.reads_per_sec,
            row.failed,
            s.stale,
            s.reads,
            s.fraction * 100.0,
            s.median_lag_ms,
            s.max_lag_ms,
            match c.secs {
                Some(secs) => format!("{} keys converged {secs:.2} s after the last write", c.keys),
                None => format!("NOT converged within {:.1} s", c.bound_secs),
            }
        );
        rows.push(row);
    }
    Ok(rows)
}

fn run_level(options: &Options, setting: Setting) -> Result<StalenessRow> {
    let config = &options.staleness;
    let rt = client_runtime()?;
    let mut cluster = start_cluster(options, setting, &rt)?;
    let master = master_addr(&cluster)?;
    let recorder = Recorder::new();
    // The recorder's clock started just now: history times are measured from here.
    let clock = Instant::now();
    let values = UniqueValues::default();
    let load_secs = rt.block_on(async {
        let mut tasks = JoinSet::new();
        let mut clients = Vec::new();
        for process in 0..(config.writers + config.readers) as u64 {
            let client = cluster_client(&master, ReadFrom::AnyReplica, config.timeout).await?;
            clients.push(recorder.client(process, client));
        }
        let start = Instant::now();
        let deadline = start + config.duration;
        for client in clients {
            let seed = options.seed ^ ((setting.level() as u64) << 32);
            let writer = (client.process() as usize) < config.writers;
            tasks.spawn(load(client, writer.then(|| values.clone()), seed, deadline));
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a client task panicked")?;
        }
        Ok::<_, anyhow::Error>(start.elapsed().as_secs_f64().max(1e-9))
    })?;
    let history = recorder.history();
    let last_write = history
        .ops
        .iter()
        .filter(|op| matches!((&op.input, &op.outcome), (Input::Put(_), Outcome::Ok(_))))
        .map(|op| op.completed)
        .max()
        .map_or_else(Instant::now, |completed| clock + completed);
    let keys: BTreeSet<String> = history
        .ops
        .iter()
        .filter(|op| matches!(op.input, Input::Put(_)) && !matches!(op.outcome, Outcome::Fail))
        .map(|op| op.key.clone())
        .collect();
    let bound = options.sync_interval * 3 + Duration::from_secs(5);
    let convergence = rt.block_on(converge(&master, keys, last_write, bound, config.poll))?;
    drop(rt);

    let stale = analysis::stale_reads(&history);
    let succeeded = |put: bool| {
        let ops = history.ops.iter();
        ops.filter(|op| matches!(op.input, Input::Put(_)) == put && matches!(op.outcome, Outcome::Ok(_)))
            .count()
    };
    let failed = history.ops.iter().filter(|op| !matches!(op.outcome, Outcome::Ok(_))).count();
    keep_files_if_asked(&mut cluster, convergence.secs.is_none() || stale.unexplained > 0);
    Ok(StalenessRow {
        setting,
        load_secs,
        writes_per_sec: succeeded(true) as f64 / load_secs,
        reads_per_sec: succeeded(false) as f64 / load_secs,
        failed,
        stale,
        convergence,
        history,
    })
}

/// One client until `deadline`: with `values`, a writer of fresh values to random keys; without,
/// a reader of random keys.
async fn load(client: RecordingClient, values: Option<UniqueValues>, seed: u64, deadline: Instant) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(client.process()));
    let mut backoff = Duration::ZERO;
    while Instant::now() < deadline {
        let key = random_key(&mut rng);
        let input = match &values {
            Some(values) => Input::Put(values.draw(&mut rng)),
            None => Input::Get,
        };
        if let Outcome::Ok(_) = client.run(&key, input).await {
            backoff = Duration::ZERO;
        } else {
            backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Polls every replica of every key in `keys` directly, a round at a time, until each key's
/// replicas all hold its primary's value, or until `bound` after `last_write`.
async fn converge(
    master: &str,
    keys: BTreeSet<String>,
    last_write: Instant,
    bound: Duration,
    poll: Duration,
) -> Result<Convergence> {
    let config = current_config(master).await?;
    let timeout = Duration::from_secs(1);
    let mut direct: HashMap<&str, Client> = HashMap::new();
    for (_, server) in config.members() {
        // One attempt: a failed read is tried again in the next round anyway.
        let client = Client::builder(server)
            .attempts(1)
            .timeout(timeout)
            .connect_timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
        direct.insert(server, client);
    }
    let mut pending: Vec<(String, Vec<Client>)> = Vec::new();
    for key in keys {
        let replicas = config
            .replicas(&key)
            .into_iter()
            .map(|(_, server)| direct.get(server).cloned().with_context(|| format!("no client for {server}")))
            .collect::<Result<Vec<Client>>>()?;
        pending.push((key, replicas));
    }
    let mut out = Convergence {
        keys: pending.len(),
        secs: None,
        bound_secs: bound.as_secs_f64(),
        first_round_secs: 0.0,
        rounds: 0,
        unconverged: Vec::new(),
        read_errors: 0,
        sample_error: None,
    };
    let deadline = last_write + bound;
    loop {
        let mut reads = JoinSet::new();
        for (i, (key, replicas)) in pending.iter().enumerate() {
            let (key, replicas) = (key.clone(), replicas.clone());
            reads.spawn(async move {
                let mut values = Vec::new();
                for replica in &replicas {
                    values.push(replica.get(key.clone()).await);
                }
                (i, values)
            });
        }
        let mut agreed = vec![false; pending.len()];
        while let Some(done) = reads.join_next().await {
            let (i, values) = done.context("a polling task panicked")?;
            let mut first = None;
            agreed[i] = true;
            for value in values {
                match value {
                    Ok(value) => {
                        agreed[i] &= *first.get_or_insert_with(|| value.clone()) == value;
                    }
                    Err(err) => {
                        agreed[i] = false;
                        out.read_errors += 1;
                        out.sample_error.get_or_insert_with(|| format!("{}: {err}", pending[i].0));
                    }
                }
            }
        }
        let now = Instant::now();
        out.rounds += 1;
        if out.rounds == 1 {
            out.first_round_secs = now.saturating_duration_since(last_write).as_secs_f64();
        }
        let mut agreed = agreed.into_iter();
        pending.retain(|_| !agreed.next().unwrap_or(false));
        if pending.is_empty() {
            out.secs = Some(now.saturating_duration_since(last_write).as_secs_f64());
            return Ok(out);
        }
        if now >= deadline {
            out.unconverged = pending.into_iter().take(10).map(|(key, _)| key).collect();
            return Ok(out);
        }
        tokio::time::sleep(poll).await;
    }
}
