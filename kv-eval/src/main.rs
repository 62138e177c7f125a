//! `kv-eval`: runs the evaluation subtasks against real server processes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use kv_eval::bench::{BenchConfig, Mix};
use kv_eval::chaos::{ChaosConfig, FaultKind};
use kv_eval::cluster::ClusterConfig;
use kv_eval::{report, single_node};
use serde::Serialize;

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
    /// Every subtask that exists (today: single-node).
    All(SingleNodeArgs),
    /// A workload under faults (kill/restart, pause, partition, flaky network) with a
    /// linearizability check of the recorded history.
    Chaos(ChaosArgs),
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// The `kv-server` binary to start (default: next to this executable, or $KV_SERVER_BIN).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds the clients run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Distinct keys (few, so that operations conflict).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Operation mix, as weights: get, put, append, lpop, rpop, delete.
    #[arg(long, default_value = kv_eval::chaos::DEFAULT_MIX)]
    mix: Mix,
    /// Seconds a call may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 0.5)]
    timeout: f64,
    /// Faults to draw from, comma-separated: kill, pause, partition, flaky; `none` for none.
    #[arg(long, default_value = "pause,partition,flaky")]
    faults: String,
    /// Seconds from one fault's start to the next's.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Seconds each fault lasts.
    #[arg(long, default_value_t = 1.0)]
    fault_duration: f64,
    /// Seconds the linearizability check may take before it answers unknown.
    #[arg(long, default_value_t = 60.0)]
    check_budget: f64,
    /// Seed of the workload and the nemesis.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report (verdict, counts, schedule) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the recorded history as JSON to this file.
    #[arg(long)]
    history: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SingleNodeArgs {
    /// Run against this server (`host:port`) instead of starting one.
    #[arg(long)]
    endpoint: Option<String>,
    /// The `kv-server` binary to start (default: next to this executable, or $KV_SERVER_BIN).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Runtime worker threads of the started server.
    #[arg(long, default_value_t = 1)]
    server_workers: usize,
    /// Runtime worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_workers: usize,
    /// HTTP/2 connections the benchmark's load is spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight during the benchmark.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Distinct keys (all written before the run).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Bytes per key.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Bytes per value written.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Operation mix, as weights: `get=50,put=50`; also append, lpop, rpop, delete.
    #[arg(long, default_value = "get=50,put=50")]
    mix: Mix,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Functional checks only; no benchmark.
    #[arg(long)]
    no_bench: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct AllReport {
    single_node: single_node::Report,
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
        Command::Chaos(args) => chaos(&args),
        Command::All(args) => {
            println!("== subtask 1: single node ==");
            let single_node = single_node::run(&options(&args)?)?;
            let passed = single_node.passed;
            if let Some(path) = &args.json {
                report::write_json(path, &AllReport { single_node, passed })?;
            }
            Ok(passed)
        }
    }
}

fn chaos(args: &ChaosArgs) -> Result<bool> {
    let seconds = |s: f64, what: &str| seconds(s, what, false);
    let faults = match args.faults.trim() {
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
    if let Some(bin) = &args.server_bin {
        cluster.server_bin = bin.clone();
    }
    println!(
        "chaos: 1 storage server, {} clients on {} keys for {:.1} s, faults: {}",
        config.clients,
        config.keys,
        config.duration.as_secs_f64(),
        if config.faults.is_empty() { "none".to_owned() } else { args.faults.clone() }
    );
    let report = kv_eval::chaos::run(&cluster, &config)?;
    println!("{report}");
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.history {
        report::write_json(path, &report.history)?;
    }
    Ok(report.passed)
}

fn options(args: &SingleNodeArgs) -> Result<single_node::Options> {
    let seconds = |s: f64, what: &str| seconds(s, what, true);
    anyhow::ensure!(args.server_workers > 0, "--server-workers must be at least 1");
    let bench = (!args.no_bench)
        .then(|| {
            Ok::<_, anyhow::Error>(BenchConfig {
                concurrency: args.concurrency,
                duration: seconds(args.duration, "duration")?,
                warmup: seconds(args.warmup, "warmup")?,
                keys: args.keys,
                key_size: args.key_size,
                value_size: args.value_size,
                mix: args.mix.clone(),
                seed: args.seed,
            })
        })
        .transpose()?;
    Ok(single_node::Options {
        endpoint: args.endpoint.clone(),
        server_bin: args.server_bin.clone(),
        server_workers: args.server_workers,
        client_workers: args.client_workers,
        connections: args.connections,
        bench,
        progress: !args.no_progress,
    })
}

/// The duration a `--what` flag gives in seconds, refused unless finite and positive (or zero,
/// where `zero_ok`).
fn seconds(value: f64, what: &str, zero_ok: bool) -> Result<Duration> {
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
    anyhow::ensure!(
        ok,
        "--{what} must be a {} number of seconds",
        if zero_ok { "non-negative" } else { "positive" }
    );
    Ok(Duration::from_secs_f64(value))
}
