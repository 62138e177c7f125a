//! From the flags to the library's options, refusing values that make no sense.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kv_eval::durable::{self, Policy};
use kv_eval::load::bench::BenchConfig;
use kv_eval::replicas::{self, ChartPaths, FailoverConfig, LevelsConfig, StalenessConfig, ThroughputConfig};
use kv_eval::sharded::{self, LoadConfig, Phase};
use kv_eval::single_node;

use crate::args::{
    BENCH_CONCURRENCY, BENCH_KEY_SIZE, BENCH_KEYS, BENCH_MIX, BENCH_SECS, BENCH_VALUE_SIZE,
    BENCH_WARMUP_SECS, DurableArgs, PhaseArg, ReplicasPhaseArg, ReplicasTuningArgs, ShardedPhaseArgs,
    SingleNodeArgs,
};

/// The flags `sharded` and `all` spell alike.
pub(crate) struct Common<'a> {
    pub(crate) server_bin: &'a Option<PathBuf>,
    pub(crate) seed: u64,
    pub(crate) json: &'a Option<PathBuf>,
}

/// The single-node benchmark's workload with its default flags.
pub(crate) fn default_bench(seed: u64) -> BenchConfig {
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

pub(crate) fn sharded_options(
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
pub(crate) fn replicas_options(
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
        durable: args.durable_replicas,
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

pub(crate) fn options(args: &SingleNodeArgs) -> Result<single_node::Options> {
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
pub(crate) fn seconds(value: f64, what: &str, zero_ok: bool) -> Result<Duration> {
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
    anyhow::ensure!(
        ok,
        "--{what} must be a {} number of seconds",
        if zero_ok { "non-negative" } else { "positive" }
    );
    Ok(Duration::from_secs_f64(value))
}

pub(crate) fn durable_options(args: &DurableArgs) -> Result<durable::Options> {
    let policies = args
        .policies
        .iter()
        .map(|name| match name.trim() {
            "memory" => Ok(Policy::Memory),
            "always" => Ok(Policy::Always),
            "interval" => Ok(Policy::Interval(args.fsync_interval_ms)),
            "never" => Ok(Policy::Never),
            other => anyhow::bail!("unknown policy {other:?} (memory, always, interval, never)"),
        })
        .collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(args.concurrency.iter().all(|&c| c > 0), "--concurrency values must be at least 1");
    Ok(durable::Options {
        server_bin: args.server_bin.clone(),
        server_workers: args.server_workers.max(1),
        client_workers: args.client_workers.max(1),
        connections: args.connections.max(1),
        policies,
        concurrencies: args.concurrency.clone(),
        bench: BenchConfig {
            duration: seconds(args.duration, "duration", false)?,
            warmup: seconds(args.warmup, "warmup", true)?,
            keys: args.keys,
            value_size: args.value_size,
            ..default_bench(args.seed)
        },
        restart_mib: args.restart_mib,
        catch_up_mib: args.catch_up_mib,
    })
}
