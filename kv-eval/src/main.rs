//! `kv-eval`: runs the evaluation subtasks against real server processes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kv_eval::harness::chaos::{ChaosConfig, FaultKind};
use kv_eval::harness::cluster::ClusterConfig;
use kv_eval::load::bench::{BenchConfig, Mix};
use kv_eval::load::report;
use kv_eval::replicas::{
    self, ChartPaths, FailoverConfig, LevelsConfig, Setting, StalenessConfig, ThroughputConfig,
};
use kv_eval::sharded::{self, LoadConfig, Phase};
use kv_eval::single_node;
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
    /// Subtask 2: a shard master and storage servers; the functional flows through cluster
    /// clients, throughput by number of servers, and resharding under load (with a chart).
    Sharded(ShardedArgs),
    /// Subtask 3: replicated clusters; the assignment's put-then-get experiment by level,
    /// throughput by replication factor and level, stale reads and convergence, failover.
    Replicas(ReplicasArgs),
    /// Every subtask that exists: single-node, then sharded, then replicas (which start their
    /// own servers, also with `--endpoint`).
    All(Box<AllArgs>),
    /// A workload under faults (kill/restart, pause, partition, flaky network) with a
    /// linearizability check of the recorded history.
    Chaos(ChaosArgs),
}

/// The benchmark's workload, shared by the single-node and sharded subtasks so that their
/// figures compare.
const BENCH_CONCURRENCY: usize = 64;
const BENCH_SECS: f64 = 10.0;
const BENCH_WARMUP_SECS: f64 = 2.0;
const BENCH_KEYS: usize = 10_000;
const BENCH_KEY_SIZE: usize = 16;
const BENCH_VALUE_SIZE: usize = 32;
const BENCH_MIX: &str = "get=50,put=50";

#[derive(Debug, Args)]
struct ChaosArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
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
    #[arg(long, default_value = kv_eval::harness::chaos::DEFAULT_MIX)]
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
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
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
    #[arg(long, default_value_t = BENCH_CONCURRENCY)]
    concurrency: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = BENCH_SECS)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = BENCH_WARMUP_SECS)]
    warmup: f64,
    /// Distinct keys (all written before the run).
    #[arg(long, default_value_t = BENCH_KEYS)]
    keys: usize,
    /// Bytes per key.
    #[arg(long, default_value_t = BENCH_KEY_SIZE)]
    key_size: usize,
    /// Bytes per value written.
    #[arg(long, default_value_t = BENCH_VALUE_SIZE)]
    value_size: usize,
    /// Operation mix, as weights: `get=50,put=50`; also append, lpop, rpop, delete.
    #[arg(long, default_value = BENCH_MIX)]
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

#[derive(Debug, Args)]
struct ShardedArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Seconds the benchmark measures per server count (the single-node workload otherwise).
    #[arg(long, default_value_t = BENCH_SECS)]
    bench_secs: f64,
    /// Seconds of benchmark load before measuring.
    #[arg(long, default_value_t = BENCH_WARMUP_SECS)]
    warmup: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Also write the results as JSON to this file (and the chart beside it).
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    phases: ShardedPhaseArgs,
}

/// The sharded subtask's own flags (`kv-eval all` takes them too).
#[derive(Debug, Args)]
struct ShardedPhaseArgs {
    /// Phases of the sharded subtask to run: functional, throughput, resharding.
    #[arg(long, value_delimiter = ',', default_value = "functional,throughput,resharding")]
    phases: Vec<PhaseArg>,
    /// Numbers of storage servers the benchmark runs against.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    server_counts: Vec<usize>,
    /// Seconds of load while servers join and leave (it runs on until every change is done).
    #[arg(long, default_value_t = 12.0)]
    load_secs: f64,
    /// Recorded clients of the resharding load.
    #[arg(long, default_value_t = 16)]
    load_clients: usize,
    /// Distinct keys of the resharding load.
    #[arg(long, default_value_t = 300)]
    load_keys: usize,
    /// Seconds the linearizability check may take before it answers unknown (a failure).
    #[arg(long, default_value_t = 60.0)]
    check_budget: f64,
    /// Write the chart of throughput during resharding (SVG) here [default: beside --json, as
    /// STEM-throughput.svg; else ./kv-eval-sharded-throughput.svg].
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PhaseArg {
    Functional,
    Throughput,
    Resharding,
}

#[derive(Debug, Args)]
struct ReplicasArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Phases of the replicas subtask to run: levels, throughput, staleness, failover.
    #[arg(long, value_delimiter = ',', default_value = REPLICAS_PHASES)]
    phases: Vec<ReplicasPhaseArg>,
    /// Seconds the linearizability check of a level may take before it answers unknown (a
    /// failure at the strong level).
    #[arg(long, default_value_t = 60.0)]
    check_budget: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Also write the results as JSON to this file (and the charts beside it).
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    tuning: ReplicasTuningArgs,
}

/// The replicas subtask's own flags (`kv-eval all` takes them too).
#[derive(Debug, Args)]
struct ReplicasTuningArgs {
    /// Storage servers of every replicated cluster (at least the largest replication factor).
    #[arg(long, default_value_t = 6)]
    replica_servers: usize,
    /// Levels of the assignment's experiment (at R=3; 2 is strong, 0 and 1 eventual).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    levels: Vec<usize>,
    /// Seconds the assignment's clients loop over put-then-get pairs, per level.
    #[arg(long, default_value_t = 8.0)]
    level_secs: f64,
    /// Clients of the assignment's experiment.
    #[arg(long, default_value_t = 3)]
    level_clients: usize,
    /// Replication settings of the throughput benchmark, as FACTOR:LEVEL.
    #[arg(long, value_delimiter = ',', default_value = "1:0,3:0,3:1,3:2,5:0,5:2,5:4")]
    throughput_settings: Vec<Setting>,
    /// Seconds the benchmark measures puts, then gets, per setting.
    #[arg(long, default_value_t = 5.0)]
    throughput_secs: f64,
    /// Seconds of benchmark load before measuring.
    #[arg(long, default_value_t = 1.0)]
    throughput_warmup: f64,
    /// Eventual levels (at R=3) whose stale reads and convergence are measured.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    staleness_levels: Vec<usize>,
    /// Seconds the writers and readers of the staleness phase run, per level.
    #[arg(long, default_value_t = 8.0)]
    staleness_secs: f64,
    /// Writers of the staleness phase.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Readers of the staleness phase (from any replica).
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Replication settings at which a primary is killed under load, as FACTOR:LEVEL (each on a
    /// fresh cluster; the factor at least 2).
    #[arg(long, value_delimiter = ',', default_value = "3:2,3:1")]
    failover_settings: Vec<Setting>,
    /// Recorded clients of the failover load.
    #[arg(long, default_value_t = 8)]
    failover_clients: usize,
    /// Distinct keys of the failover load.
    #[arg(long, default_value_t = 300)]
    failover_keys: usize,
    /// Seconds of failover load before the kill.
    #[arg(long, default_value_t = 2.0)]
    failover_before_secs: f64,
    /// Seconds of failover load after the kill (longer while the slots have not recovered).
    #[arg(long, default_value_t = 5.0)]
    failover_after_secs: f64,
    /// Seconds between the background syncs of eventual replication (the shard master's
    /// `--sync-interval-ms`).
    #[arg(long, default_value_t = 2.0)]
    sync_interval: f64,
    /// Write the charts (SVG) into this folder [default: beside --json, named after it; else the
    /// current folder, as kv-eval-replicas-*.svg].
    #[arg(long)]
    chart_dir: Option<PathBuf>,
}

/// Every phase of the replicas subtask.
const REPLICAS_PHASES: &str = "levels,throughput,staleness,failover";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReplicasPhaseArg {
    Levels,
    Throughput,
    Staleness,
    Failover,
}

#[derive(Debug, Args)]
struct AllArgs {
    #[command(flatten)]
    single: SingleNodeArgs,
    #[command(flatten)]
    sharded: ShardedPhaseArgs,
    /// Phases of the replicas subtask to run: levels, throughput, staleness, failover.
    #[arg(long, value_delimiter = ',', default_value = REPLICAS_PHASES)]
    replicas_phases: Vec<ReplicasPhaseArg>,
    #[command(flatten)]
    replicas: ReplicasTuningArgs,
}

#[derive(Serialize)]
struct AllReport {
    single_node: single_node::Report,
    sharded: sharded::Report,
    replicas: replicas::Report,
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
        Command::Chaos(args) => chaos(&args),
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
            let passed = single_node.passed && sharded.passed && replicas.passed;
            if let Some(path) = &single.json {
                report::write_json(path, &AllReport { single_node, sharded, replicas, passed })?;
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

/// The flags `sharded` and `all` spell alike.
struct Common<'a> {
    server_bin: &'a Option<PathBuf>,
    seed: u64,
    json: &'a Option<PathBuf>,
}

/// The single-node benchmark's workload with its default flags.
fn default_bench(seed: u64) -> BenchConfig {
    BenchConfig {
        concurrency: BENCH_CONCURRENCY,
        duration: Duration::from_secs_f64(BENCH_SECS),
        warmup: Duration::from_secs_f64(BENCH_WARMUP_SECS),
        keys: BENCH_KEYS,
        key_size: BENCH_KEY_SIZE,
        value_size: BENCH_VALUE_SIZE,
        mix: BENCH_MIX.parse().expect("the default mix parses"),
        seed,
    }
}

fn sharded_options(
    args: &ShardedPhaseArgs,
    common: &Common<'_>,
    bench: BenchConfig,
    progress: bool,
) -> Result<sharded::Options> {
    anyhow::ensure!(args.server_counts.iter().all(|&n| n > 0), "--server-counts must all be at least 1");
    anyhow::ensure!(args.load_clients > 0, "--load-clients must be at least 1");
    let chart = match (&args.chart, common.json) {
        (Some(chart), _) => chart.clone(),
        (None, Some(json)) => {
            let stem =
                json.file_stem().map_or_else(|| "kv-eval".into(), |s| s.to_string_lossy().into_owned());
            json.with_file_name(format!("{stem}-throughput.svg"))
        }
        (None, None) => PathBuf::from("kv-eval-sharded-throughput.svg"),
    };
    let load = LoadConfig {
        clients: args.load_clients,
        keys: args.load_keys.max(2),
        duration: seconds(args.load_secs, "load-secs", false)?,
        check_budget: seconds(args.check_budget, "check-budget", false)?,
        seed: common.seed,
        ..LoadConfig::default()
    };
    let phases = args
        .phases
        .iter()
        .map(|p| match p {
            PhaseArg::Functional => Phase::Functional,
            PhaseArg::Throughput => Phase::Throughput,
            PhaseArg::Resharding => Phase::Resharding,
        })
        .collect();
    Ok(sharded::Options {
        server_bin: common.server_bin.clone(),
        phases,
        bench,
        server_counts: args.server_counts.clone(),
        load,
        chart,
        progress,
    })
}

/// The replicas subtask's options from its flags; `bench` gives the throughput phase's workload
/// (its mix and durations are the phase's own); `shared_json` says the JSON file holds the other
/// subtasks' results too.
fn replicas_options(
    phases: &[ReplicasPhaseArg],
    args: &ReplicasTuningArgs,
    common: &Common<'_>,
    bench: BenchConfig,
    check_budget: Duration,
    progress: bool,
    shared_json: bool,
) -> Result<replicas::Options> {
    anyhow::ensure!(args.level_clients > 0, "--level-clients must be at least 1");
    anyhow::ensure!(args.writers > 0 && args.readers > 0, "--writers and --readers must be at least 1");
    anyhow::ensure!(args.failover_clients > 0, "--failover-clients must be at least 1");
    // Beside the JSON, named after it: STEM-levels.svg, or STEM-replicas-levels.svg where the
    // JSON holds every subtask; else kv-eval-replicas-levels.svg.
    let (dir, prefix) = match common.json {
        Some(json) => {
            let stem =
                json.file_stem().map_or_else(|| "kv-eval".into(), |s| s.to_string_lossy().into_owned());
            let prefix = if shared_json { format!("{stem}-replicas") } else { stem };
            (json.parent().map(PathBuf::from).unwrap_or_default(), prefix)
        }
        None => (PathBuf::new(), "kv-eval-replicas".to_owned()),
    };
    let dir = args.chart_dir.clone().unwrap_or(dir);
    let phases = phases
        .iter()
        .map(|p| match p {
            ReplicasPhaseArg::Levels => replicas::Phase::Levels,
            ReplicasPhaseArg::Throughput => replicas::Phase::Throughput,
            ReplicasPhaseArg::Staleness => replicas::Phase::Staleness,
            ReplicasPhaseArg::Failover => replicas::Phase::Failover,
        })
        .collect();
    // Servers run in folders of their own: a relative path must not be taken from there.
    let server_bin = match common.server_bin {
        Some(bin) => {
            Some(std::path::absolute(bin).with_context(|| format!("bad --server-bin {}", bin.display()))?)
        }
        None => None,
    };
    Ok(replicas::Options {
        server_bin,
        phases,
        servers: args.replica_servers,
        sync_interval: seconds(args.sync_interval, "sync-interval", false)?,
        levels: LevelsConfig {
            levels: args.levels.clone(),
            clients: args.level_clients,
            duration: seconds(args.level_secs, "level-secs", false)?,
            check_budget,
            ..LevelsConfig::default()
        },
        throughput: ThroughputConfig {
            settings: args.throughput_settings.clone(),
            bench: BenchConfig {
                duration: seconds(args.throughput_secs, "throughput-secs", false)?,
                warmup: seconds(args.throughput_warmup, "throughput-warmup", true)?,
                ..bench
            },
        },
        staleness: StalenessConfig {
            levels: args.staleness_levels.clone(),
            writers: args.writers,
            readers: args.readers,
            duration: seconds(args.staleness_secs, "staleness-secs", false)?,
            ..StalenessConfig::default()
        },
        failover: FailoverConfig {
            settings: args.failover_settings.clone(),
            clients: args.failover_clients,
            keys: args.failover_keys.max(2),
            before_kill: seconds(args.failover_before_secs, "failover-before-secs", false)?,
            after_kill: seconds(args.failover_after_secs, "failover-after-secs", false)?,
            check_budget,
            ..FailoverConfig::default()
        },
        charts: ChartPaths::in_dir(&dir, &prefix),
        progress,
        seed: common.seed,
    })
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
