//! Subtask 2: a sharded store — a shard master and storage servers, all real `kv-server`
//! processes on loopback, without fault-injecting proxies (they add latency).
//!
//! Three phases, each on fresh clusters:
//! 1. `functional`: the course assignment's flows through cluster clients
//!    ([`kv_client::Client::connect_cluster`]): for 2, 4 and 8 servers the sequence and parallel
//!    tests, then every server stopping at once (each leaves and hands its data to the others;
//!    the last cannot, since nothing could take its keys, and stays a member holding them); with
//!    5 servers the parallel test through four leaves; with 5 servers the "MUDA" appends to key
//!    `81` through four leaves and five joins.
//! 2. `throughput`: the single-node benchmark's workload against 1, 2, 4, 8 servers. It
//!    measures what this machine does; more server processes on 2 cores add no throughput, and
//!    nothing here asserts speed.
//! 3. `resharding`: recorded clients load a cluster while servers join and leave on a schedule
//!    (`membership`); throughput over time, keys moved against the ideal, stalls, and the whole
//!    history checked for linearizability and for appends lost or applied twice (the crate's
//!    `analysis`, which the replicas runner's failover phase shares),
//!    shown as checks, a table and a chart (`presentation`).
//!
//! Every check is a [`CheckOutcome`]; [`Report::passed`] is false if any failed, and the binary
//! then exits non-zero. Every process started is stopped, also on failure: dropping a
//! [`Cluster`] kills what is left of it.

mod functional;
mod membership;
mod presentation;
mod resharding;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_client::{Client, ShardMaster};
use kv_shard::Config;
use serde::Serialize;

pub use crate::load::analysis::{AppendAudit, Bucket};
pub use membership::{ChangeKind, MemberStatus, MembershipChange};
pub use resharding::{LoadConfig, ReshardingReport};
pub use throughput::ThroughputRow;

use crate::harness::cluster::{Cluster, ClusterConfig};
use crate::load::bench::BenchConfig;
use crate::load::checks::CheckOutcome;
use crate::load::report;

/// Longest a server may take to leave (its data handed off) and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A phase of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The assignment's functional flows.
    Functional,
    /// Throughput against the number of servers.
    Throughput,
    /// Resharding under load.
    Resharding,
}

/// How to run subtask 2.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kv-server` binary (default: found by [`crate::harness::process::find_binary`]).
    pub server_bin: Option<PathBuf>,
    /// The phases to run, in the order of [`Phase`].
    pub phases: Vec<Phase>,
    /// The benchmark of the throughput phase: the single-node one's workload.
    pub bench: BenchConfig,
    /// Numbers of storage servers the benchmark runs against.
    pub server_counts: Vec<usize>,
    /// The load of the resharding phase.
    pub load: LoadConfig,
    /// Where the chart of throughput over time during resharding is written (SVG).
    pub chart: PathBuf,
    /// Show a progress bar while the benchmark runs.
    pub progress: bool,
}

/// Everything subtask 2 measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every pass/fail check: the functional flows, then the resharding phase's.
    pub checks: Vec<CheckOutcome>,
    /// Throughput and latency per number of servers.
    pub throughput: Vec<ThroughputRow>,
    /// The resharding phase.
    pub resharding: Option<ReshardingReport>,
    /// The chart of throughput over time during resharding, if drawn.
    pub chart: Option<PathBuf>,
    /// Whether every check passed and no benchmark saw an error.
    pub passed: bool,
}

/// Runs subtask 2 and prints its progress and tables on standard output.
pub fn run(options: &Options) -> Result<Report> {
    let mut checks = Vec::new();
    if options.phases.contains(&Phase::Functional) {
        println!("\nfunctional checks (cluster clients through the shard master)");
        checks.extend(functional::run(options)?);
        print!("{}", report::checks_table(&checks));
    }
    let mut throughput = Vec::new();
    if options.phases.contains(&Phase::Throughput) {
        println!("\nthroughput by number of servers");
        throughput = throughput::run(options)?;
        print!("{}", throughput::table(&throughput));
    }
    let (mut resharding, mut chart) = (None, None);
    if options.phases.contains(&Phase::Resharding) {
        println!("\nresharding under load");
        let (phase, phase_checks) = resharding::run(options)?;
        print!("{}", presentation::summary(&phase));
        print!("{}", report::checks_table(&phase_checks));
        let svg = presentation::chart(&phase)?;
        crate::load::chart::write_svg(&options.chart, &svg)?;
        println!("  chart of throughput over time: {}", options.chart.display());
        chart = Some(options.chart.clone());
        checks.extend(phase_checks);
        resharding = Some(phase);
    }
    let bench_ok = throughput.iter().all(|row| row.benchmark.total.errors == 0);
    let passed = checks.iter().all(|c| c.passed) && bench_ok;
    Ok(Report { checks, throughput, resharding, chart, passed })
}

/// The configuration of a cluster of `nodes` storage servers and a shard master, no proxies.
fn cluster_config(options: &Options, nodes: usize) -> Result<ClusterConfig> {
    // `new` looks for the default binary even when another is given: built together, it is there.
    let mut config = ClusterConfig::new(nodes)?;
    if let Some(bin) = &options.server_bin {
        config.server_bin = bin.clone();
    }
    config.proxies = false;
    config.shardmaster = true;
    config.seed = options.load.seed;
    Ok(config)
}

/// Starts a shard master and `nodes` storage servers that have joined it.
fn start_cluster(options: &Options, nodes: usize) -> Result<Cluster> {
    let started = Instant::now();
    let cluster = Cluster::start(&cluster_config(options, nodes)?)
        .with_context(|| format!("cannot start a cluster of {nodes} storage servers"))?;
    println!(
        "  started a shard master and {nodes} storage server(s) in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(cluster)
}

/// The address clients reach the shard master at.
fn master_addr(cluster: &Cluster) -> Result<String> {
    Ok(cluster.shardmaster().context("the cluster has no shard master")?.client_addr().to_string())
}

/// The shard master's current configuration.
async fn current_config(master: &str) -> Result<Config> {
    let client = ShardMaster::connect(master).await.with_context(|| format!("cannot reach {master}"))?;
    client.config().await.context("cannot read the configuration")
}

/// A cluster client with the default options, as an application would make one.
async fn cluster_client(master: &str) -> Result<Client> {
    Client::connect_cluster(master)
        .await
        .with_context(|| format!("cannot connect to the cluster at {master}"))
}

/// A runtime for clients whose calls interleave with blocking cluster operations: one worker
/// keeps connections alive while the calling thread is busy elsewhere.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the client runtime")
}

/// The id of the cluster node that joined as `addr`.
fn node_by_addr(cluster: &Cluster, addr: &str) -> Result<usize> {
    match cluster.nodes().iter().find(|n| n.client_addr().to_string() == addr) {
        Some(node) => Ok(node.id()),
        None => bail!("no node of this cluster is {addr}"),
    }
}

/// Stops every node of `cluster` at once with SIGTERM (each leaves the cluster, handing its data
/// to the others, then exits), one thread per node; returns whether each exited with status 0.
fn stop_all_at_once(cluster: &mut Cluster) -> Result<Vec<bool>> {
    std::thread::scope(|scope| {
        let stops: Vec<_> =
            cluster.nodes_mut().iter_mut().map(|node| scope.spawn(move || node.stop(STOP_TIMEOUT))).collect();
        stops.into_iter().map(|stop| stop.join().unwrap_or_else(|_| bail!("a stop panicked"))).collect()
    })
}

/// Keeps the cluster's folder (logs, data) if the run failed and `KV_KEEP_CLUSTER` is set.
fn keep_files_if_asked(cluster: &mut Cluster, failed: bool) {
    if failed && std::env::var_os("KV_KEEP_CLUSTER").is_some() {
        eprintln!("kept the cluster's files in {}", cluster.keep_files().display());
    }
}

/// Seconds since `start`, for reports.
fn secs_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
