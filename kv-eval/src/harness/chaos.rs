//! Workloads under faults: concurrent clients on a small key space, a nemesis breaking the
//! cluster on a schedule, then healing, final reads, and a linearizability check. This breaks
//! one server (`kv-eval chaos`); [`crate::harness::cluster_chaos`] breaks a replicated cluster
//! (`kv-eval chaos --servers N`).
//!
//! The run, in order:
//! 1. start the cluster (each node behind a fault-injecting proxy) and one recorded client per
//!    process, each with a short call timeout so a broken path yields an `unknown` operation
//!    instead of a stall;
//! 2. for the configured time, every client runs random operations back to back over a few keys
//!    (so they conflict), while the nemesis, on its own thread, injects a fault every
//!    `interval` and ends it `fault_duration` later (kill/restart, pause/resume, partition,
//!    or a flaky path with random delays and resets);
//! 3. heal everything, wait until every node answers, and read every key once more (recorded, so
//!    the checker holds the final state to the history: an acknowledged write that was lost shows
//!    up as a read no order can explain);
//! 4. check the whole history for linearizability.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_client::Client;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::harness::cluster::{Cluster, ClusterConfig};
use crate::harness::history::{History, Input, Outcome};
use crate::harness::linearizability;
use crate::harness::mix::{Mix, OpKind};
use crate::harness::proxy::Faults;
use crate::harness::recorder::{Recorder, RecordingClient};

/// A kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL a node, restart it (same address and folder) when the fault ends.
    Kill,
    /// SIGSTOP a node, SIGCONT it when the fault ends.
    Pause,
    /// Cut the clients off from a node, both ways; heal when the fault ends.
    Partition,
    /// Make the clients' path to a node unreliable: 0–27 ms of delay each way and a few
    /// connection resets (the MIT 6.824 labs' order of magnitude).
    Flaky,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Flaky];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Flaky => "flaky",
        }
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .with_context(|| format!("unknown fault {s:?} (kill, pause, partition, flaky)"))
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosConfig {
    /// Concurrent clients (processes of the history).
    pub clients: usize,
    /// How long the clients run.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Distinct keys; few, so that operations conflict.
    pub keys: usize,
    /// The operation mix. Written values are unique per operation.
    pub mix: Mix,
    /// How long a call may take before it counts as `unknown`.
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// The faults the nemesis draws from; empty for none.
    pub faults: Vec<FaultKind>,
    /// Time from one fault's start to the next's.
    #[serde(serialize_with = "as_secs")]
    pub interval: Duration,
    /// How long each fault lasts.
    #[serde(serialize_with = "as_secs")]
    pub fault_duration: Duration,
    /// How long the linearizability check may take before it answers `unknown`.
    #[serde(serialize_with = "as_secs")]
    pub check_budget: Duration,
    /// Seed of the workload and the nemesis.
    pub seed: u64,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            clients: 8,
            duration: Duration::from_secs(10),
            keys: 5,
            mix: DEFAULT_MIX.parse().expect("the default mix parses"),
            timeout: Duration::from_millis(500),
            faults: vec![FaultKind::Pause, FaultKind::Partition, FaultKind::Flaky],
            interval: Duration::from_secs(2),
            fault_duration: Duration::from_secs(1),
            check_budget: Duration::from_secs(60),
            seed: 1,
        }
    }
}

/// The default operation mix of a chaos run: every operation, writes and reads about even.
pub const DEFAULT_MIX: &str = "get=30,put=15,append=30,lpop=10,rpop=10,delete=5";

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One entry of the fault schedule, as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds since the workload started.
    pub at: f64,
    /// What happened, e.g. `kill node 0` or `heal node 0`.
    pub event: String,
}

/// Everything a chaos run found.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// What was run.
    pub config: ChaosConfig,
    /// Operations that succeeded.
    pub ok: usize,
    /// Operations the server refused (known not to have happened).
    pub fail: usize,
    /// Operations whose outcome is unknown (timeouts, broken connections).
    pub unknown: usize,
    /// The faults injected and healed, in order.
    pub schedule: Vec<FaultEvent>,
    /// Seconds from the final heal until every node answered.
    pub recovery_secs: f64,
    /// The checker's verdict.
    pub linearizability: linearizability::Report,
    /// Whether the history is linearizable.
    pub passed: bool,
    /// The recorded history.
    #[serde(skip)]
    pub history: History,
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault schedule:")?;
        if self.schedule.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for e in &self.schedule {
            writeln!(f, "  {:>7.3} s  {}", e.at, e.event)?;
        }
        writeln!(
            f,
            "operations: {} ok, {} fail, {} unknown ({} clients, {} keys, {:.1} s)",
            self.ok,
            self.fail,
            self.unknown,
            self.config.clients,
            self.config.keys,
            self.config.duration.as_secs_f64()
        )?;
        writeln!(f, "recovery after the final heal: {:.3} s", self.recovery_secs)?;
        write!(f, "{}", self.linearizability)
    }
}

/// Starts a cluster as `cluster_config` says and runs the workload against node 0.
pub fn run(cluster_config: &ClusterConfig, config: &ChaosConfig) -> Result<ChaosReport> {
    let mut cluster = Cluster::start(cluster_config)?;
    let report = run_on(&mut cluster, config);
    if report.as_ref().map_or(true, |r| !r.passed) && std::env::var_os("KV_KEEP_CLUSTER").is_some() {
        eprintln!("kept the cluster's files in {}", cluster.keep_files().display());
    }
    report
}

/// Runs the workload against node 0 of a running cluster, breaking its nodes as `config` says.
pub fn run_on(cluster: &mut Cluster, config: &ChaosConfig) -> Result<ChaosReport> {
    if cluster.nodes().is_empty() {
        bail!("the cluster has no node");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let target = cluster.nodes()[0].client_addr().to_string();
    let recorder = Recorder::new();
    let clients = runtime.block_on(connect_all(&recorder, &target, config))?;
    let keys: Arc<[String]> = (0..config.keys.max(1)).map(|i| format!("k{i}")).collect();

    let start = Instant::now();
    let done = AtomicBool::new(false);
    let schedule = std::thread::scope(|scope| {
        let nemesis = scope.spawn(|| nemesis(cluster, config, start, &done));
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for client in clients {
                let keys = Arc::clone(&keys);
                let (mix, seed, deadline) = (config.mix.clone(), config.seed, start + config.duration);
                tasks.spawn(async move { client_loop(client, keys, mix, seed, deadline).await });
            }
            while tasks.join_next().await.is_some() {}
        });
        done.store(true, Ordering::Relaxed);
        nemesis.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the nemesis panicked")))
    })?;

    let mut schedule = schedule;
    cluster.heal()?;
    schedule.push(FaultEvent { at: start.elapsed().as_secs_f64(), event: "heal everything".into() });
    let healed = Instant::now();
    let final_process = config.clients as u64;
    runtime.block_on(final_reads(&recorder, &target, &keys, final_process, config.timeout))?;
    let recovery_secs = healed.elapsed().as_secs_f64();

    let history = recorder.history();
    let (ok, fail, unknown) = history.counts();
    let linearizability = linearizability::check_with_budget(&history, config.check_budget);
    let passed = matches!(linearizability.verdict, linearizability::Verdict::Linearizable);
    Ok(ChaosReport {
        config: config.clone(),
        ok,
        fail,
        unknown,
        schedule,
        recovery_secs,
        linearizability,
        passed,
        history,
    })
}

async fn connect_all(
    recorder: &Recorder,
    target: &str,
    config: &ChaosConfig,
) -> Result<Vec<RecordingClient>> {
    let mut clients = Vec::new();
    for process in 0..config.clients as u64 {
        clients.push(recorder.client(process, connect(target, config.timeout).await?));
    }
    Ok(clients)
}

async fn connect(target: &str, timeout: Duration) -> Result<Client> {
    Client::builder(target)
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}"))
}

/// One process: random operations back to back until the deadline.
async fn client_loop(client: RecordingClient, keys: Arc<[String]>, mix: Mix, seed: u64, deadline: Instant) {
    let process = client.process();
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(process));
    let mut n = 0u64;
    let mut backoff = Duration::ZERO;
    while Instant::now() < deadline {
        n += 1;
        let key = &keys[rng.random_range(0..keys.len())];
        // Written values are unique, so a read tells which write it saw.
        let input = match mix.pick(&mut rng) {
            OpKind::Get => Input::Get,
            OpKind::Put => Input::Put(format!("{process}.{n};")),
            OpKind::Append => Input::Append(format!("{process}.{n};")),
            OpKind::Lpop => Input::Lpop,
            OpKind::Rpop => Input::Rpop,
            OpKind::Delete => Input::Delete,
        };
        if client.run(key, input).await == Outcome::Unknown {
            // Back off on a broken path, as a real client would: 20 ms doubling to 200 ms. It
            // also keeps the number of unknown outcomes, which the checker pays for, in bounds.
            backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
            tokio::time::sleep(backoff).await;
        } else {
            backoff = Duration::ZERO;
        }
    }
}

/// After healing: wait until the node answers, then read every key (recorded).
async fn final_reads(
    recorder: &Recorder,
    target: &str,
    keys: &[String],
    process: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match connect(target, timeout).await {
            Ok(client) if client.get("__probe").await.is_ok() => break client,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(_) | Err(_) => bail!("the cluster did not answer within 30 s of healing"),
        }
    };
    let reader = recorder.client(process, client);
    for key in keys {
        loop {
            if let Outcome::Ok(_) = reader.run(key, Input::Get).await {
                break;
            }
            if Instant::now() >= deadline {
                bail!("could not read {key} back within 30 s of healing");
            }
        }
    }
    Ok(())
}

/// Injects a fault every `interval`, each lasting `fault_duration`, until `done`. Returns the
/// schedule as it happened.
fn nemesis(
    cluster: &mut Cluster,
    config: &ChaosConfig,
    start: Instant,
    done: &AtomicBool,
) -> Result<Vec<FaultEvent>> {
    let mut schedule = Vec::new();
    if config.faults.is_empty() {
        return Ok(schedule);
    }
    let mut rng = SmallRng::seed_from_u64(config.seed ^ 0xfa17);
    let at = |start: Instant| start.elapsed().as_secs_f64();
    let sleep_until = |when: Instant| {
        while Instant::now() < when && !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(when.saturating_duration_since(Instant::now())));
        }
    };
    let mut next = start + config.interval;
    loop {
        sleep_until(next);
        if done.load(Ordering::Relaxed) || Instant::now() >= start + config.duration {
            return Ok(schedule);
        }
        let kind = config.faults[rng.random_range(0..config.faults.len())];
        let id = rng.random_range(0..cluster.nodes().len());
        let node = cluster.node_mut(id);
        match kind {
            FaultKind::Kill => node.kill()?,
            FaultKind::Pause => node.pause()?,
            FaultKind::Partition => {
                if let Some(proxy) = node.proxy() {
                    proxy.set_faults(Faults::partition());
                }
            }
            FaultKind::Flaky => {
                if let Some(proxy) = node.proxy() {
                    proxy.set_faults(Faults::flaky());
                }
            }
        }
        schedule.push(FaultEvent { at: at(start), event: format!("{kind} node {id}") });
        sleep_until(Instant::now() + config.fault_duration);
        let node = cluster.node_mut(id);
        match kind {
            FaultKind::Kill => node.restart()?,
            FaultKind::Pause => node.resume()?,
            FaultKind::Partition | FaultKind::Flaky => {
                if let Some(proxy) = node.proxy() {
                    proxy.heal();
                }
            }
        }
        schedule.push(FaultEvent { at: at(start), event: format!("end {kind} node {id}") });
        next += config.interval;
    }
}
