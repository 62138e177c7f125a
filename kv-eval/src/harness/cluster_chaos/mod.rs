//! Chaos against a replicated cluster of real processes: a shard master and storage servers,
//! every path between them behind a fault-injecting proxy, a recorded workload, a
//! [`nemesis`] that breaks what a cluster can lose, and at the end the same checks as the
//! deterministic simulator ([`crate::harness::checks`]).
//!
//! The run, in order:
//! 1. start the cluster with its links routed ([`ClusterConfig::route_links`]: every
//!    server-to-server and server-to-master link is a proxy of its own), and preload the append
//!    keys;
//! 2. recorded cluster clients run gets, appends (to the append keys, each a unique token) and
//!    puts (to the put keys) back to back, while the nemesis injects one fault at a time for
//!    `duration`; the clients go on for `tail` after the last fault ended;
//! 3. heal everything, wait until the cluster is healthy, check that every replica of every key
//!    holds the same value, and read every key back at its primary (recorded);
//! 4. check: linearizable where promised (strong), every append exactly once and none
//!    acknowledged lost where promised (strong; eventual with a synchronous secondary), and
//!    liveness: from the end of each fault until the next began (or the clients stopped), no
//!    key went longer than `liveness_bound` without a successful write. Never during a fault:
//!    a cut link between a primary and a secondary may hold a slot's writes for as long as it
//!    lasts. The longest gap over the whole run is reported too.
//!
//! Invariant: faults never overlap, and the nemesis restarts what it killed before the next
//! one, so the cluster is only ever asked to survive one failure at a time.

pub mod nemesis;
pub(crate) mod settle;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_client::Client;
use kv_shard::Consistency;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::harness::checks::{CHECK_BUDGET, Promises, check_history_within, longest_write_gap};
use crate::harness::cluster::{Cluster, ClusterConfig};
use crate::harness::history::{History, Input, Outcome};
use crate::harness::recorder::{Recorder, RecordingClient};
pub use nemesis::{ClusterFault, Injected};

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterChaosConfig {
    /// Storage servers at the start.
    pub servers: usize,
    /// Copies of every slot.
    pub replication_factor: usize,
    /// Strong or eventual.
    #[serde(serialize_with = "as_string")]
    pub consistency: Consistency,
    /// Eventual: secondaries that apply a write before it is acknowledged.
    pub sync_replicas: usize,
    /// Concurrent clients (processes of the history).
    pub clients: usize,
    /// Keys written only by appends (after a preload), and keys written by puts. Few, so that
    /// operations conflict.
    pub append_keys: usize,
    /// Keys written by puts.
    pub put_keys: usize,
    /// How long one attempt of a call may take (the client retries, exactly once).
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// The faults the nemesis takes turns at; empty for none.
    pub faults: Vec<ClusterFault>,
    /// How long the nemesis injects faults.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Time from the end of one fault to the start of the next.
    #[serde(serialize_with = "as_secs")]
    pub interval: Duration,
    /// How long each fault lasts.
    #[serde(serialize_with = "as_secs")]
    pub fault_duration: Duration,
    /// How long the clients go on after the last fault.
    #[serde(serialize_with = "as_secs")]
    pub tail: Duration,
    /// The longest a key may go without a successful write once a fault has ended.
    #[serde(serialize_with = "as_secs")]
    pub liveness_bound: Duration,
    /// How long the cluster may take to be healthy, and its replicas to agree, after the heal.
    #[serde(serialize_with = "as_secs")]
    pub settle_bound: Duration,
    /// How long the linearizability checker may take over the history.
    #[serde(serialize_with = "as_secs")]
    pub check_budget: Duration,
    /// Seed of the workload and the nemesis.
    pub seed: u64,
    /// The storage servers keep their data on disk (fsync always): a killed one comes back
    /// with it.
    pub durable: bool,
}

impl Default for ClusterChaosConfig {
    fn default() -> Self {
        ClusterChaosConfig {
            servers: 4,
            replication_factor: 3,
            consistency: Consistency::Strong,
            sync_replicas: 0,
            clients: 4,
            append_keys: 4,
            put_keys: 2,
            timeout: Duration::from_millis(500),
            faults: ClusterFault::DEFAULT.to_vec(),
            duration: Duration::from_secs(30),
            interval: Duration::from_secs(2),
            fault_duration: Duration::from_secs(2),
            tail: Duration::from_secs(5),
            liveness_bound: Duration::from_secs(10),
            settle_bound: Duration::from_secs(30),
            check_budget: CHECK_BUDGET,
            seed: 1,
            durable: false,
        }
    }
}

impl ClusterChaosConfig {
    /// What the store promises in this setting, which decides the checks.
    pub fn promises(&self) -> Promises {
        Promises {
            linearizable: self.consistency == Consistency::Strong,
            keeps_acknowledged: self.consistency == Consistency::Strong || self.sync_replicas > 0,
        }
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn as_string<S: serde::Serializer>(c: &Consistency, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_string())
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterChaosReport {
    /// What was run.
    pub config: ClusterChaosConfig,
    /// The faults injected, in order, on the history's clock.
    pub faults: Vec<Injected>,
    /// Operations that succeeded, failed definitely, and whose outcome is unknown.
    pub ok: usize,
    /// Operations refused (known not to have happened).
    pub fail: usize,
    /// Operations of unknown outcome.
    pub unknown: usize,
    /// Seconds from the heal until the cluster was healthy.
    pub recovery_secs: Option<f64>,
    /// Seconds from healthy until every replica of every key agreed.
    pub convergence_secs: Option<f64>,
    /// The longest any key went without a successful write, over the whole run, in seconds,
    /// and the key.
    pub longest_write_gap: (f64, String),
    /// The longest any key went without one from the end of a fault to the start of the next.
    pub longest_gap_after_faults: (f64, String),
    /// What went wrong: nothing if the run passed.
    pub problems: Vec<String>,
    /// Whether every check passed.
    pub passed: bool,
    /// The recorded history.
    #[serde(skip)]
    pub history: History,
}

impl ClusterChaosReport {
    /// How many faults of `kind` were injected.
    pub fn injected(&self, kind: ClusterFault) -> usize {
        self.faults.iter().filter(|f| f.kind == kind).count()
    }
}

impl fmt::Display for ClusterChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "faults injected: {}", self.faults.len())?;
        for fault in &self.faults {
            writeln!(f, "  {:>7.3} – {:>7.3} s  {}: {}", fault.start, fault.end, fault.kind, fault.what)?;
        }
        let c = &self.config;
        writeln!(
            f,
            "operations: {} ok, {} fail, {} unknown ({} clients, {} append + {} put keys)",
            self.ok, self.fail, self.unknown, c.clients, c.append_keys, c.put_keys
        )?;
        let secs = |s: Option<f64>| s.map_or_else(|| "never".to_owned(), |s| format!("{s:.3} s"));
        writeln!(f, "healthy after the heal: {}", secs(self.recovery_secs))?;
        writeln!(f, "replicas agreed after that: {}", secs(self.convergence_secs))?;
        writeln!(
            f,
            "longest write gap: {:.3} s ({}); after the end of a fault: {:.3} s ({}), bound {:.0} s",
            self.longest_write_gap.0,
            self.longest_write_gap.1,
            self.longest_gap_after_faults.0,
            self.longest_gap_after_faults.1,
            c.liveness_bound.as_secs_f64()
        )?;
        let promises = c.promises();
        writeln!(
            f,
            "checks: linearizability {}, appends exactly once, acknowledged appends kept {}, convergence, liveness",
            if promises.linearizable { "(strong)" } else { "skipped (eventual)" },
            if promises.keeps_acknowledged { "(promised)" } else { "not promised" },
        )?;
        if self.problems.is_empty() {
            write!(f, "verdict: PASSED")
        } else {
            writeln!(f, "verdict: FAILED")?;
            for problem in &self.problems {
                writeln!(f, "  - {problem}")?;
            }
            Ok(())
        }
    }
}

/// The cluster `config` runs on: `base` (the binary, the seed, the servers' arguments) with
/// its servers, a shard master of its replication settings, and routed links. Refuses kills
/// of in-memory servers with one copy of each slot (its data is rightly lost with its server).
pub fn cluster_config(base: &ClusterConfig, config: &ClusterChaosConfig) -> Result<ClusterConfig> {
    if !config.durable && config.replication_factor < 2 && config.faults.iter().any(|f| f.kills_a_server()) {
        bail!(
            "killing servers needs --replication-factor 2 or more: a slot with one copy is lost with its server"
        );
    }
    if config.servers == 0 || config.clients == 0 || config.append_keys + config.put_keys == 0 {
        bail!("a cluster chaos run needs servers, clients and keys");
    }
    let mut cluster = base.clone();
    cluster.nodes = config.servers;
    cluster.proxies = true;
    cluster.shardmaster = true;
    cluster.route_links = true;
    cluster.durable = config.durable;
    cluster.replication_factor = config.replication_factor;
    cluster.shardmaster_args.extend(["--consistency".to_owned(), config.consistency.to_string()]);
    cluster.shardmaster_args.extend(["--sync-replicas".to_owned(), config.sync_replicas.to_string()]);
    Ok(cluster)
}

/// Starts the cluster of [`cluster_config`] and runs on it ([`run_on`]).
pub fn run(base: &ClusterConfig, config: &ClusterChaosConfig) -> Result<ClusterChaosReport> {
    let mut cluster = Cluster::start(&cluster_config(base, config)?)?;
    let report = run_on(&mut cluster, config);
    if report.as_ref().map_or(true, |r| !r.passed) && std::env::var_os("KV_KEEP_CLUSTER").is_some() {
        eprintln!("kept the cluster's files in {}", cluster.keep_files().display());
    }
    report
}

fn preload(key: &str) -> String {
    format!("init-{key};")
}

/// Runs the workload and the nemesis on `cluster` (started from [`cluster_config`]), heals,
/// checks. An error is a run that could not be carried out; a failed check is in the report.
pub fn run_on(cluster: &mut Cluster, config: &ClusterChaosConfig) -> Result<ClusterChaosReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let master = cluster.shardmaster().context("no shard master")?.client_addr().to_string();
    let append_keys: Vec<String> = (0..config.append_keys).map(|i| format!("a{i}")).collect();
    let put_keys: Vec<String> = (0..config.put_keys).map(|i| format!("p{i}")).collect();
    let keys: Vec<String> = append_keys.iter().chain(&put_keys).cloned().collect();
    let recorder = Recorder::new();
    let mut problems = Vec::new();

    let connect = |master: String| async move {
        Client::cluster_builder(master.clone())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the cluster of {master}"))
    };
    runtime.block_on(async {
        let loader = recorder.client(config.clients as u64 + 1, connect(master.clone()).await?);
        for key in &append_keys {
            if !matches!(loader.run(key, Input::Put(preload(key))).await, Outcome::Ok(_)) {
                bail!("the preload of {key} failed before any fault");
            }
        }
        Ok(())
    })?;
    let mut clients = Vec::new();
    for process in 0..config.clients as u64 {
        clients.push(recorder.client(process, runtime.block_on(connect(master.clone()))?));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + config.duration;
    let began = recorder.elapsed();
    let targets = nemesis::Targets {
        master: master.clone(),
        keys: &keys,
        factor: config.replication_factor,
        max_servers: config.servers + 2,
        runtime: runtime.handle().clone(),
    };
    let faults = std::thread::scope(|scope| {
        let nemesis = scope.spawn(|| {
            let faults = nemesis::run(
                cluster,
                &targets,
                &config.faults,
                config.interval,
                config.fault_duration,
                until,
                config.seed,
                &recorder,
                &stop,
            );
            // The clients go on for the tail, then stop (also if the nemesis failed).
            let tail_end = Instant::now().max(until) + config.tail;
            while Instant::now() < tail_end {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
            faults
        });
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for client in clients {
                let (append, put, stop) = (append_keys.clone(), put_keys.clone(), Arc::clone(&stop));
                tasks.spawn(client_loop(client, append, put, config.seed, stop));
            }
            while tasks.join_next().await.is_some() {}
        });
        stop.store(true, Ordering::Relaxed);
        nemesis.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the nemesis panicked")))
    })?;
    let stopped = recorder.elapsed();

    cluster.heal()?;
    let running: Vec<String> =
        cluster.nodes().iter().filter(|n| !n.is_stopped()).map(|n| n.client_addr().to_string()).collect();
    let (recovery, convergence, finals) = runtime.block_on(async {
        let recovery = settle::wait_healthy(&master, &running, config.settle_bound).await;
        let convergence = settle::converge(&master, &keys, config.settle_bound).await;
        let finals =
            settle::final_reads(&recorder, &master, &keys, config.clients as u64, config.settle_bound).await;
        (recovery, convergence, finals)
    });
    let recovery_secs = recovery.map_err(|why| problems.push(why)).ok().map(|d| d.as_secs_f64());
    let convergence_secs = convergence.map_err(|why| problems.push(why)).ok().map(|d| d.as_secs_f64());
    let finals = finals.unwrap_or_else(|err| {
        problems.push(format!("{err:#}"));
        BTreeMap::new()
    });

    let history = recorder.history();
    let (ok, fail, unknown) = history.counts();
    problems.extend(check_history_within(
        config.promises(),
        &history,
        &append_keys,
        &finals,
        preload,
        config.check_budget,
    ));
    let gap = longest_write_gap(&history, &keys, began, stopped);
    let after = gap_after_faults(&history, &keys, &faults, began, stopped);
    if after.0 > config.liveness_bound {
        problems.push(format!(
            "liveness: after a fault ended, {:?} went {:.2} s without a successful write (bound {:.0} s)",
            after.1,
            after.0.as_secs_f64(),
            config.liveness_bound.as_secs_f64()
        ));
    }
    Ok(ClusterChaosReport {
        config: config.clone(),
        faults,
        ok,
        fail,
        unknown,
        recovery_secs,
        convergence_secs,
        longest_write_gap: (gap.0.as_secs_f64(), gap.1),
        longest_gap_after_faults: (after.0.as_secs_f64(), after.1),
        passed: problems.is_empty(),
        problems,
        history,
    })
}

/// The longest write gap in the windows between faults: from the end of each (or the start)
/// to the start of the next (or the end).
fn gap_after_faults(
    history: &History,
    keys: &[String],
    faults: &[Injected],
    began: Duration,
    stopped: Duration,
) -> (Duration, String) {
    let ends = std::iter::once(began).chain(faults.iter().map(|f| Duration::from_secs_f64(f.end)));
    let starts = faults.iter().map(|f| Duration::from_secs_f64(f.start)).chain(std::iter::once(stopped));
    ends.zip(starts)
        .filter(|(from, to)| to > from)
        .map(|(from, to)| longest_write_gap(history, keys, from, to))
        .max_by_key(|(gap, _)| *gap)
        .unwrap_or_default()
}

/// One process: gets, appends of unique tokens to the append keys and puts to the put keys,
/// back to back until `stop`.
async fn client_loop(
    client: RecordingClient,
    append_keys: Vec<String>,
    put_keys: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let process = client.process();
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(process));
    let keys: Vec<&String> = append_keys.iter().chain(&put_keys).collect();
    let mut n = 0u64;
    let mut backoff = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = keys[rng.random_range(0..keys.len())];
        // Written values are unique, so a read tells which write it saw.
        let input = match (rng.random_range(0..10) < 4, key.starts_with('a')) {
            (true, _) => Input::Get,
            (false, true) => Input::Append(format!("c{process}.{n};")),
            (false, false) => Input::Put(format!("c{process}.{n};")),
        };
        if client.run(key, input).await == Outcome::Unknown {
            // Back off on a broken path, as a real client would: 20 ms doubling to 200 ms.
            backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
            tokio::time::sleep(backoff).await;
        } else {
            backoff = Duration::ZERO;
        }
    }
}
