//! The command line: the flags of each subcommand, as clap parses them, with their defaults.

use std::path::PathBuf;

use clap::Args;
use kv_eval::harness::mix::Mix;
use kv_eval::replicas::Setting;

/// The benchmark's workload, shared by the single-node and sharded subtasks so that their
/// figures compare.
pub(crate) const BENCH_CONCURRENCY: usize = 64;
pub(crate) const BENCH_SECS: f64 = 10.0;
pub(crate) const BENCH_WARMUP_SECS: f64 = 2.0;
pub(crate) const BENCH_KEYS: usize = 10_000;
pub(crate) const BENCH_KEY_SIZE: usize = 16;
pub(crate) const BENCH_VALUE_SIZE: usize = 32;
pub(crate) const BENCH_MIX: &str = "get=50,put=50";

#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub(crate) clients: usize,
    /// Seconds the clients run (with `--servers`: seconds of faults, before the tail).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Distinct keys (few, so that operations conflict). With `--servers`, two thirds are
    /// written by appends only (audited exactly once), the rest by puts.
    #[arg(long, default_value_t = 5)]
    pub(crate) keys: usize,
    /// Operation mix, as weights: get, put, append, lpop, rpop, delete. One server only (a
    /// cluster run's clients read 40%, and append or put by key).
    #[arg(long, default_value = kv_eval::harness::chaos::DEFAULT_MIX)]
    pub(crate) mix: Mix,
    /// Seconds a call may take before its outcome counts as unknown (with `--servers`: one
    /// attempt; the cluster client retries, exactly once).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) timeout: f64,
    /// Faults to draw from, comma-separated; `none` for none. One server: kill, pause,
    /// partition, flaky (default pause,partition,flaky). A cluster (`--servers`): kill-primary,
    /// kill-secondary, kill-master, pause, pause-master, link, master-link, join, leave (default:
    /// all of them; the harness's shard master keeps its state in a data directory), and
    /// crash-all (with `--durable`: every storage server killed at once).
    #[arg(long)]
    pub(crate) faults: Option<String>,
    /// Break a replicated cluster of this many storage servers and a shard master, instead of
    /// one server; every link between them goes through a proxy of its own.
    #[arg(long)]
    pub(crate) servers: Option<usize>,
    /// With `--servers`: copies of every slot.
    #[arg(long, default_value_t = 3)]
    pub(crate) replication_factor: usize,
    /// With `--servers`: `strong` or `eventual`.
    #[arg(long, default_value = "strong")]
    pub(crate) consistency: kv_shard::Consistency,
    /// With `--servers` and eventual consistency: secondaries that apply a write before it is
    /// acknowledged.
    #[arg(long, default_value_t = 0)]
    pub(crate) sync_replicas: usize,
    /// The storage servers keep their data on disk (`--data-dir` in their folders, `--fsync
    /// always`), so a killed one comes back with it (otherwise `--in-memory`); with `--servers`,
    /// `crash-all` needs it.
    #[arg(long)]
    pub(crate) durable: bool,
    /// With `--servers`: seconds the clients go on after the last fault.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) tail: f64,
    /// With `--servers`: the longest, in seconds, a key may go without a successful write once
    /// a fault has ended.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) liveness_bound: f64,
    /// Seconds from one fault's start to the next's.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) interval: f64,
    /// Seconds each fault lasts.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) fault_duration: f64,
    /// Seconds the linearizability check may take before it answers unknown.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) check_budget: f64,
    /// Seed of the workload and the nemesis.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also write the report (verdict, counts, schedule) as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Also write the recorded history as JSON to this file.
    #[arg(long)]
    pub(crate) history: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DurableArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Runtime worker threads of each server.
    #[arg(long, default_value_t = 1)]
    pub(crate) server_workers: usize,
    /// Runtime worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) client_workers: usize,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 1)]
    pub(crate) connections: usize,
    /// Policies, comma-separated: memory, always, interval, never.
    #[arg(long, value_delimiter = ',', default_value = "memory,always,interval,never")]
    pub(crate) policies: Vec<String>,
    /// With the `interval` policy: its sync interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) fsync_interval_ms: u64,
    /// Requests in flight, comma-separated: one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub(crate) concurrency: Vec<usize>,
    /// Seconds measured, per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Seconds of load before measuring, per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Distinct keys written.
    #[arg(long, default_value_t = BENCH_KEYS)]
    pub(crate) keys: usize,
    /// Bytes per value written.
    #[arg(long, default_value_t = BENCH_VALUE_SIZE)]
    pub(crate) value_size: usize,
    /// MiB of values a server holds when it is killed and restarted (0: no restart measured).
    #[arg(long, default_value_t = 1024)]
    pub(crate) restart_mib: u64,
    /// MiB of values in the cluster whose server is killed and brought back (0: not measured).
    #[arg(long, default_value_t = 64)]
    pub(crate) catch_up_mib: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SingleNodeArgs {
    /// Run against this server (`host:port`) instead of starting one.
    #[arg(long)]
    pub(crate) endpoint: Option<String>,
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Runtime worker threads of the started server.
    #[arg(long, default_value_t = 1)]
    pub(crate) server_workers: usize,
    /// Runtime worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) client_workers: usize,
    /// HTTP/2 connections the benchmark's load is spread over.
    #[arg(long, default_value_t = 1)]
    pub(crate) connections: usize,
    /// Requests in flight during the benchmark.
    #[arg(long, default_value_t = BENCH_CONCURRENCY)]
    pub(crate) concurrency: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = BENCH_SECS)]
    pub(crate) duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = BENCH_WARMUP_SECS)]
    pub(crate) warmup: f64,
    /// Distinct keys (all written before the run).
    #[arg(long, default_value_t = BENCH_KEYS)]
    pub(crate) keys: usize,
    /// Bytes per key.
    #[arg(long, default_value_t = BENCH_KEY_SIZE)]
    pub(crate) key_size: usize,
    /// Bytes per value written.
    #[arg(long, default_value_t = BENCH_VALUE_SIZE)]
    pub(crate) value_size: usize,
    /// Operation mix, as weights: `get=50,put=50`; also append, lpop, rpop, delete.
    #[arg(long, default_value = BENCH_MIX)]
    pub(crate) mix: Mix,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Functional checks only; no benchmark.
    #[arg(long)]
    pub(crate) no_bench: bool,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ShardedArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Seconds the benchmark measures per server count (the single-node workload otherwise).
    #[arg(long, default_value_t = BENCH_SECS)]
    pub(crate) bench_secs: f64,
    /// Seconds of benchmark load before measuring.
    #[arg(long, default_value_t = BENCH_WARMUP_SECS)]
    pub(crate) warmup: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Also write the results as JSON to this file (and the chart beside it).
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) phases: ShardedPhaseArgs,
}

/// The sharded subtask's own flags (`kv-eval all` takes them too).
#[derive(Debug, Args)]
pub(crate) struct ShardedPhaseArgs {
    /// Phases of the sharded subtask to run: functional, throughput, resharding.
    #[arg(long, value_delimiter = ',', default_value = "functional,throughput,resharding")]
    pub(crate) phases: Vec<PhaseArg>,
    /// Numbers of storage servers the benchmark runs against.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub(crate) server_counts: Vec<usize>,
    /// Seconds of load while servers join and leave (it runs on until every change is done).
    #[arg(long, default_value_t = 12.0)]
    pub(crate) load_secs: f64,
    /// Recorded clients of the resharding load.
    #[arg(long, default_value_t = 16)]
    pub(crate) load_clients: usize,
    /// Distinct keys of the resharding load.
    #[arg(long, default_value_t = 300)]
    pub(crate) load_keys: usize,
    /// Seconds the linearizability check may take before it answers unknown (a failure).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) check_budget: f64,
    /// Write the chart of throughput during resharding (SVG) here [default: beside --json, as
    /// STEM-throughput.svg; else ./kv-eval-sharded-throughput.svg].
    #[arg(long)]
    pub(crate) chart: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum PhaseArg {
    Functional,
    Throughput,
    Resharding,
}

#[derive(Debug, Args)]
pub(crate) struct ReplicasArgs {
    /// The `kv-server` binary to start (default: $KV_SERVER_BIN, or next to this executable).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Phases of the replicas subtask to run: levels, throughput, staleness, failover.
    #[arg(long, value_delimiter = ',', default_value = REPLICAS_PHASES)]
    pub(crate) phases: Vec<ReplicasPhaseArg>,
    /// Seconds the linearizability check of a level may take before it answers unknown (a
    /// failure at the strong level).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) check_budget: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Also write the results as JSON to this file (and the charts beside it).
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tuning: ReplicasTuningArgs,
}

/// The replicas subtask's own flags (`kv-eval all` takes them too).
#[derive(Debug, Args)]
pub(crate) struct ReplicasTuningArgs {
    /// Storage servers of every replicated cluster (at least the largest replication factor).
    #[arg(long, default_value_t = 6)]
    pub(crate) replica_servers: usize,
    /// The replicated clusters' storage servers keep their data on disk (`--data-dir`, `--fsync
    /// always`) rather than in memory.
    #[arg(long)]
    pub(crate) durable_replicas: bool,
    /// Levels of the assignment's experiment (at R=3; 2 is strong, 0 and 1 eventual).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub(crate) levels: Vec<usize>,
    /// Seconds the assignment's clients loop over put-then-get pairs, per level.
    #[arg(long, default_value_t = 8.0)]
    pub(crate) level_secs: f64,
    /// Clients of the assignment's experiment.
    #[arg(long, default_value_t = 3)]
    pub(crate) level_clients: usize,
    /// Replication settings of the throughput benchmark, as FACTOR:LEVEL.
    #[arg(long, value_delimiter = ',', default_value = "1:0,3:0,3:1,3:2,5:0,5:2,5:4")]
    pub(crate) throughput_settings: Vec<Setting>,
    /// Seconds the benchmark measures puts, then gets, per setting.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) throughput_secs: f64,
    /// Seconds of benchmark load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) throughput_warmup: f64,
    /// Eventual levels (at R=3) whose stale reads and convergence are measured.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub(crate) staleness_levels: Vec<usize>,
    /// Seconds the writers and readers of the staleness phase run, per level.
    #[arg(long, default_value_t = 8.0)]
    pub(crate) staleness_secs: f64,
    /// Writers of the staleness phase.
    #[arg(long, default_value_t = 2)]
    pub(crate) writers: usize,
    /// Readers of the staleness phase (from any replica).
    #[arg(long, default_value_t = 4)]
    pub(crate) readers: usize,
    /// Replication settings at which a primary is killed under load, as FACTOR:LEVEL (each on a
    /// fresh cluster; the factor at least 2).
    #[arg(long, value_delimiter = ',', default_value = "3:2,3:1")]
    pub(crate) failover_settings: Vec<Setting>,
    /// Recorded clients of the failover load.
    #[arg(long, default_value_t = 8)]
    pub(crate) failover_clients: usize,
    /// Distinct keys of the failover load.
    #[arg(long, default_value_t = 300)]
    pub(crate) failover_keys: usize,
    /// Seconds of failover load before the kill.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) failover_before_secs: f64,
    /// Seconds of failover load after the kill (longer while the slots have not recovered).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) failover_after_secs: f64,
    /// Seconds between the background syncs of eventual replication (the shard master's
    /// `--sync-interval-ms`).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) sync_interval: f64,
    /// Write the charts (SVG) into this folder [default: beside --json, named after it; else the
    /// current folder, as kv-eval-replicas-*.svg].
    #[arg(long)]
    pub(crate) chart_dir: Option<PathBuf>,
}

/// Every phase of the replicas subtask.
pub(crate) const REPLICAS_PHASES: &str = "levels,throughput,staleness,failover";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ReplicasPhaseArg {
    Levels,
    Throughput,
    Staleness,
    Failover,
}

#[derive(Debug, Args)]
pub(crate) struct AllArgs {
    #[command(flatten)]
    pub(crate) single: SingleNodeArgs,
    #[command(flatten)]
    pub(crate) sharded: ShardedPhaseArgs,
    /// Phases of the replicas subtask to run: levels, throughput, staleness, failover.
    #[arg(long, value_delimiter = ',', default_value = REPLICAS_PHASES)]
    pub(crate) replicas_phases: Vec<ReplicasPhaseArg>,
    #[command(flatten)]
    pub(crate) replicas: ReplicasTuningArgs,
    /// Policies of the durability measurement, comma-separated (`none`: skip it).
    #[arg(long, value_delimiter = ',', default_value = "memory,always,interval,never")]
    pub(crate) durable_policies: Vec<String>,
    /// MiB of values the durability measurement restarts a server with (0: no restart).
    #[arg(long, default_value_t = 1024)]
    pub(crate) durable_restart_mib: u64,
}

impl AllArgs {
    /// The durability measurement's flags, at their defaults but for those `all` takes.
    pub(crate) fn durable(&self) -> DurableArgs {
        DurableArgs {
            server_bin: self.single.server_bin.clone(),
            server_workers: 1,
            client_workers: 1,
            connections: 1,
            policies: self.durable_policies.clone(),
            fsync_interval_ms: 1000,
            concurrency: vec![1, 16, 64, 256],
            duration: 5.0,
            warmup: 1.0,
            keys: BENCH_KEYS,
            value_size: BENCH_VALUE_SIZE,
            restart_mib: self.durable_restart_mib,
            catch_up_mib: 64,
            seed: self.single.seed,
            json: None,
        }
    }
}
