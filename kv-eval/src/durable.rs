//! What durability costs: one storage server per `--fsync` policy (and one in memory, for
//! reference), each loaded with puts at several numbers of requests in flight. For each: puts per
//! second, latency percentiles, and the writes each sync to disk carried (group commit), from the
//! server's own counters (`kv.v1.Node/Status`) read before and after.
//!
//! Then the restart: a server with `--fsync never` is filled with `--restart-mib` MiB of values,
//! killed with `kill -9`, and started again on its directory; the time until it answers a read,
//! and a sample of the values checked.
//!
//! Then the catch-up: a cluster of three durable servers, one killed under writes and started
//! again, at once and after 5 s down; the bytes sent to bring it back against its data
//! (`--catch-up-mib`).
//!
//! Every server gets a fresh temporary data directory, removed when its turn ends.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kv_client::{Client, server_status};
use serde::Serialize;

use crate::harness::mix::Mix;
use crate::harness::process::{self, ServerProcess};
use crate::load::bench::{self, BenchConfig};

mod catchup;
mod restart;

/// Where a server keeps its values, and when a write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Policy {
    /// `--in-memory`: nothing on disk (the reference).
    Memory,
    /// `--fsync always`: synced before it is acknowledged.
    Always,
    /// `--fsync interval --fsync-interval-ms MS`.
    Interval(u64),
    /// `--fsync never`.
    Never,
}

impl Policy {
    /// The policy's name in the tables.
    pub fn name(&self) -> String {
        match self {
            Policy::Memory => "memory".to_owned(),
            Policy::Always => "always".to_owned(),
            Policy::Interval(ms) => format!("interval {ms} ms"),
            Policy::Never => "never".to_owned(),
        }
    }

    fn flags(&self, dir: &std::path::Path) -> Vec<String> {
        let data = ["--data-dir".to_owned(), dir.display().to_string()];
        match self {
            Policy::Memory => Vec::new(),
            Policy::Always => data.into_iter().chain(["--fsync".into(), "always".into()]).collect(),
            Policy::Interval(ms) => data
                .into_iter()
                .chain(["--fsync".into(), "interval".into(), "--fsync-interval-ms".into(), ms.to_string()])
                .collect(),
            Policy::Never => data.into_iter().chain(["--fsync".into(), "never".into()]).collect(),
        }
    }
}

/// How to run the durability measurement.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kv-server` binary (default: found by [`process::find_binary`]).
    pub server_bin: Option<PathBuf>,
    /// Runtime worker threads of each server.
    pub server_workers: usize,
    /// Runtime worker threads of the load generator (1: a current-thread runtime).
    pub client_workers: usize,
    /// HTTP/2 connections the load is spread over.
    pub connections: usize,
    /// The policies, in order.
    pub policies: Vec<Policy>,
    /// Requests in flight, one measurement each.
    pub concurrencies: Vec<usize>,
    /// The load of each measurement (its concurrency is set from `concurrencies`; its mix is
    /// puts only).
    pub bench: BenchConfig,
    /// MiB of values to restart a server with (0: no restart measured).
    pub restart_mib: u64,
    /// MiB of values in the cluster whose server is brought back (0: not measured).
    pub catch_up_mib: u64,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The policy's name.
    pub policy: String,
    /// Requests in flight.
    pub concurrency: usize,
    /// Puts acknowledged per second.
    pub puts_per_sec: f64,
    /// Median latency, in microseconds.
    pub p50_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
    /// Puts that failed.
    pub errors: u64,
    /// Changes written per sync to disk (warm-up included), where the server synced.
    pub writes_per_sync: Option<f64>,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One row per policy and concurrency.
    pub rows: Vec<Row>,
    /// The restart, if measured.
    pub restart: Option<restart::Restart>,
    /// A cluster's server brought back at once, and after 5 s down, if measured.
    pub catch_up: Vec<catchup::Return>,
    /// Whether no put failed, and the restarted server had every value checked.
    pub passed: bool,
}

/// Runs every policy at every concurrency, printing each row as it is measured.
pub fn run(options: &Options) -> Result<Report> {
    let bin = match &options.server_bin {
        // Absolute: each server runs in a folder of its own.
        Some(bin) => {
            std::fs::canonicalize(bin).with_context(|| format!("no kv-server at {}", bin.display()))?
        }
        None => process::find_binary("kv-server")?,
    };
    let mut runtime = if options.client_workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(options.client_workers);
        builder
    };
    let runtime = runtime.enable_all().build().context("cannot start the client runtime")?;
    let bench = &options.bench;
    println!(
        "puts of {} B values over {} keys, {:.0} s each (+{:.0} s warm-up), server with {} worker(s)",
        bench.value_size,
        bench.keys,
        bench.duration.as_secs_f64(),
        bench.warmup.as_secs_f64(),
        options.server_workers
    );
    println!("{}", header());
    let mut rows = Vec::new();
    for policy in &options.policies {
        let dir =
            tempfile::Builder::new().prefix("kv-eval-durable-").tempdir().context("no temporary folder")?;
        let mut args = vec!["--workers".to_owned(), options.server_workers.to_string()];
        args.extend(["--log".to_owned(), "warn".to_owned()]);
        args.extend(policy.flags(&dir.path().join("data")));
        let server = ServerProcess::start_storage(&bin, &args)?;
        let endpoint = server.addr().to_string();
        let measured = runtime.block_on(measure(&endpoint, *policy, options));
        let _ = server.stop(Duration::from_secs(15));
        for row in measured? {
            println!("{}", line(&row));
            rows.push(row);
        }
    }
    let restart = if options.restart_mib > 0 {
        let restart = restart::run(&bin, options.restart_mib, &runtime)?;
        println!("{}", restart.summary());
        Some(restart)
    } else {
        None
    };
    let catch_up = if options.catch_up_mib > 0 {
        println!(
            "a cluster of 3 durable servers (strong, 3 copies) holding {} MiB; one killed with kill -9 under \
             writes, then started again:",
            options.catch_up_mib
        );
        let downs = [Duration::ZERO, Duration::from_secs(5)];
        let returns = catchup::run(&bin, options.catch_up_mib, &downs)?;
        for r in &returns {
            println!("  {}", r.summary());
        }
        returns
    } else {
        Vec::new()
    };
    let passed = rows.iter().all(|row| row.errors == 0) && restart.as_ref().is_none_or(|r| r.wrong == 0);
    Ok(Report { rows, restart, catch_up, passed })
}

async fn measure(endpoint: &str, policy: Policy, options: &Options) -> Result<Vec<Row>> {
    let mut clients = Vec::new();
    for _ in 0..options.connections.max(1) {
        clients.push(
            Client::connect(endpoint.to_owned())
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))?,
        );
    }
    let mix: Mix = "put=1".parse().context("the put-only mix")?;
    let mut rows = Vec::new();
    for &concurrency in &options.concurrencies {
        let config = BenchConfig { concurrency, mix: mix.clone(), ..options.bench.clone() };
        let before = server_status(endpoint, Duration::from_secs(10)).await?.engine;
        let report = bench::run(&clients, &config, false).await?;
        let after = server_status(endpoint, Duration::from_secs(10)).await?.engine;
        let syncs = after.syncs - before.syncs;
        rows.push(Row {
            policy: policy.name(),
            concurrency,
            puts_per_sec: report.total.ops_per_sec,
            p50_us: report.total.p50_us,
            p99_us: report.total.p99_us,
            errors: report.total.errors,
            writes_per_sync: (syncs > 0).then(|| (after.writes - before.writes) as f64 / syncs as f64),
        });
    }
    Ok(rows)
}

fn header() -> String {
    format!(
        "  {:<18} {:>9} {:>10} {:>8} {:>8} {:>7} {:>15}",
        "policy", "in flight", "puts/s", "p50 ms", "p99 ms", "errors", "writes per sync"
    )
}

fn line(row: &Row) -> String {
    let mut out = String::new();
    let per_sync = row.writes_per_sync.map_or_else(|| "-".to_owned(), |n| format!("{n:.1}"));
    let _ = write!(
        out,
        "  {:<18} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>15}",
        row.policy,
        row.concurrency,
        row.puts_per_sec,
        row.p50_us / 1_000.0,
        row.p99_us / 1_000.0,
        row.errors,
        per_sync
    );
    out
}
