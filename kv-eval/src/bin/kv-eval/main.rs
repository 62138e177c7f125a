//! `kv-eval`: runs the evaluation subtasks against real server processes.
//!
//! `main` parses the command line ([`args`]), turns it into the library's options
//! ([`options`]) and runs the subtasks.

mod args;
mod options;
mod sim;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kv_eval::harness::chaos::{ChaosConfig, FaultKind};
use kv_eval::harness::cluster::ClusterConfig;
use kv_eval::harness::cluster_chaos::{self, ClusterChaosConfig, ClusterFault};
use kv_eval::load::bench::BenchConfig;
use kv_eval::load::report;
use kv_eval::replicas;
use kv_eval::sharded::{self, Phase};
use kv_eval::single_node;
use serde::Serialize;

use args::{AllArgs, ChaosArgs, DurableArgs, ReplicasArgs, ShardedArgs, SingleNodeArgs};
use options::{Common, default_bench, options, replicas_options, seconds, sharded_options};

/// Evaluation runner of the kv store: functional checks and benchmarks of real server processes.
///
/// Exits 0 if every check passed, 1 if any failed, 2 on a bad command line.
#[derive(Debug, Parser)]
#[command(name = "kv-eval", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subtask 1: one storage server; functional checks, then throughput and latency.
    SingleNode(SingleNodeArgs),
    /// Subtask 2: a shard master and storage servers; the functional flows through cluster
    /// clients, throughput by number of servers, and resharding under load (with a chart).
    Sharded(ShardedArgs),
    /// Subtask 3: replicated clusters; the assignment's put-then-get experiment by level,
    /// throughput by replication factor and level, stale reads and convergence, failover.
    Replicas(ReplicasArgs),
    /// Every subtask that exists: single-node, then sharded, then replicas (which start their
    /// own servers, also with `--endpoint`).
    All(Box<AllArgs>),
    /// What durability costs one storage server: puts per second, latency and writes per sync
    /// for each `--fsync` policy (and in memory), at several numbers of requests in flight.
    Durable(DurableArgs),
    /// A workload under faults (kill/restart, pause, partition, flaky network) with a
    /// linearizability check of the recorded history.
    Chaos(ChaosArgs),
    /// The deterministic simulator: the real protocol code of a whole cluster in one process,
    /// under seeded fault schedules, with its history checked; prints the failing seeds, or one
    /// seed's plan and trace.
    Sim(sim::SimArgs),
}

#[derive(Serialize)]
struct AllReport {
    single_node: single_node::Report,
    sharded: sharded::Report,
    replicas: replicas::Report,
    durable: Option<kv_eval::durable::Report>,
    passed: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("kv-eval: some checks FAILED");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("kv-eval: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::SingleNode(args) => {
            let report = single_node::run(&options(&args)?)?;
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.passed)
        }
        Command::Sharded(args) => {
            let bench = BenchConfig {
                duration: seconds(args.bench_secs, "bench-secs", false)?,
                warmup: seconds(args.warmup, "warmup", true)?,
                ..default_bench(args.seed)
            };
            let common = Common { server_bin: &args.server_bin, seed: args.seed, json: &args.json };
            let options = sharded_options(&args.phases, &common, bench, !args.no_progress)?;
            let report = sharded::run(&options)?;
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.passed)
        }
        Command::Replicas(args) => {
            let common = Common { server_bin: &args.server_bin, seed: args.seed, json: &args.json };
            let bench = default_bench(args.seed);
            let check_budget = seconds(args.check_budget, "check-budget", false)?;
            let progress = !args.no_progress;
            let options =
                replicas_options(&args.phases, &args.tuning, &common, bench, check_budget, progress, false)?;
            let report = replicas::run(&options)?;
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.passed)
        }
        Command::Durable(args) => {
            let report = kv_eval::durable::run(&options::durable_options(&args)?)?;
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.passed)
        }
        Command::Chaos(args) => chaos(&args),
        Command::Sim(args) => sim::main(&args),
        Command::All(args) => {
            let single = &args.single;
            // The sharded benchmark runs the single-node workload, as its flags say.
            let bench = options(single)?.bench.unwrap_or_else(|| default_bench(single.seed));
            let common = Common { server_bin: &single.server_bin, seed: single.seed, json: &single.json };
            let mut sharded_options =
                sharded_options(&args.sharded, &common, bench.clone(), !single.no_progress)?;
            // The replicas benchmark, too, runs the single-node workload, for its own durations.
            let check_budget = seconds(args.sharded.check_budget, "check-budget", false)?;
            let mut replicas_options = replicas_options(
                &args.replicas_phases,
                &args.replicas,
                &common,
                bench,
                check_budget,
                !single.no_progress,
                true,
            )?;
            if single.no_bench {
                sharded_options.phases.retain(|p| *p != Phase::Throughput);
                replicas_options.phases.retain(|p| *p != replicas::Phase::Throughput);
            }
            println!("== subtask 1: single node ==");
            let single_node = single_node::run(&options(single)?)?;
            println!("\n== subtask 2: sharded ==");
            let sharded = sharded::run(&sharded_options)?;
            println!("\n== subtask 3: replicas ==");
            let replicas = replicas::run(&replicas_options)?;
            let durable_args = args.durable();
            let durable = if durable_args.policies.iter().any(|p| p.trim() == "none") {
                None
            } else {
                println!("\n== durability ==");
                Some(kv_eval::durable::run(&options::durable_options(&durable_args)?)?)
            };
            let passed = single_node.passed
                && sharded.passed
                && replicas.passed
                && durable.as_ref().is_none_or(|report| report.passed);
            if let Some(path) = &single.json {
                report::write_json(path, &AllReport { single_node, sharded, replicas, durable, passed })?;
            }
            Ok(passed)
        }
    }
}

fn chaos(args: &ChaosArgs) -> Result<bool> {
    if let Some(servers) = args.servers {
        return chaos_cluster(args, servers);
    }
    let seconds = |s: f64, what: &str| seconds(s, what, false);
    let names = args.faults.as_deref().unwrap_or("pause,partition,flaky");
    let faults = match names.trim() {
        "none" | "" => Vec::new(),
        list => list.split(',').map(str::parse).collect::<Result<Vec<FaultKind>>>()?,
    };
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let config = ChaosConfig {
        clients: args.clients,
        duration: seconds(args.duration, "duration")?,
        keys: args.keys.max(1),
        mix: args.mix.clone(),
        timeout: seconds(args.timeout, "timeout")?,
        faults,
        interval: seconds(args.interval, "interval")?,
        fault_duration: seconds(args.fault_duration, "fault-duration")?,
        check_budget: seconds(args.check_budget, "check-budget")?,
        seed: args.seed,
    };
    let mut cluster = ClusterConfig::new(1)?;
    cluster.seed = args.seed;
    cluster.durable = args.durable;
    if let Some(bin) = &args.server_bin {
        cluster.server_bin = bin.clone();
    }
    println!(
        "chaos: 1 {}storage server, {} clients on {} keys for {:.1} s, faults: {}",
        if args.durable { "durable " } else { "" },
        config.clients,
        config.keys,
        config.duration.as_secs_f64(),
        if config.faults.is_empty() { "none" } else { names }
    );
    let report = kv_eval::harness::chaos::run(&cluster, &config)?;
    println!("{report}");
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.history {
        report::write_json(path, &report.history)?;
    }
    Ok(report.passed)
}

/// `kv-eval chaos --servers N`: a replicated cluster under the cluster nemesis.
fn chaos_cluster(args: &ChaosArgs, servers: usize) -> Result<bool> {
    let seconds = |s: f64, what: &str| seconds(s, what, false);
    let faults = match args.faults.as_deref().map(str::trim) {
        None => ClusterFault::DEFAULT
            .into_iter()
            .filter(|f| args.durable || args.replication_factor >= 2 || !f.kills_a_server())
            .collect(),
        Some("none" | "") => Vec::new(),
        Some(list) => list.split(',').map(str::parse).collect::<Result<Vec<ClusterFault>>>()?,
    };
    anyhow::ensure!(args.clients > 0 && servers > 0, "--clients and --servers must be at least 1");
    let keys = args.keys.max(2);
    let append_keys = (keys * 2).div_ceil(3);
    let config = ClusterChaosConfig {
        servers,
        replication_factor: args.replication_factor,
        consistency: args.consistency,
        sync_replicas: args.sync_replicas,
        clients: args.clients,
        append_keys,
        put_keys: keys - append_keys,
        timeout: seconds(args.timeout, "timeout")?,
        faults,
        duration: seconds(args.duration, "duration")?,
        interval: seconds(args.interval, "interval")?,
        fault_duration: seconds(args.fault_duration, "fault-duration")?,
        tail: seconds(args.tail, "tail")?,
        liveness_bound: seconds(args.liveness_bound, "liveness-bound")?,
        check_budget: seconds(args.check_budget, "check-budget")?,
        seed: args.seed,
        durable: args.durable,
        ..ClusterChaosConfig::default()
    };
    let mut base = ClusterConfig::new(servers)?;
    base.seed = args.seed;
    if let Some(bin) = &args.server_bin {
        base.server_bin = bin.clone();
    }
    let names: Vec<&str> = config.faults.iter().map(|f| f.name()).collect();
    println!(
        "chaos: {servers} {}storage servers and a shard master, R = {} {}{}, {} clients on {} keys, \
         {:.1} s of faults: {}",
        if config.durable { "durable " } else { "" },
        config.replication_factor,
        config.consistency,
        if config.sync_replicas > 0 { format!(" (sync {})", config.sync_replicas) } else { String::new() },
        config.clients,
        keys,
        config.duration.as_secs_f64(),
        if names.is_empty() { "none".to_owned() } else { names.join(",") }
    );
    let report = cluster_chaos::run(&base, &config)?;
    println!("{report}");
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.history {
        report::write_json(path, &report.history)?;
    }
    Ok(report.passed)
}
