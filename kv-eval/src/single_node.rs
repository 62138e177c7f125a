//! Subtask 1: one storage server, no sharding, no replication.
//!
//! Starts a real `kv-server storage` process on a free loopback port (or uses `--endpoint`),
//! runs the course assignment's functional checks and the throughput/latency benchmark through
//! the client library, then stops the server with SIGTERM and checks that it shut down cleanly.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kv_client::Client;
use serde::Serialize;

use crate::harness::process::{self, ServerProcess};
use crate::load::bench::{self, BenchConfig, BenchReport};
use crate::load::checks::{self, CheckOutcome, Keys};
use crate::load::report;

/// How to run subtask 1.
#[derive(Debug, Clone)]
pub struct Options {
    /// Use this running server instead of starting one.
    pub endpoint: Option<String>,
    /// The `kv-server` binary to start (default: found by [`process::find_binary`]).
    pub server_bin: Option<PathBuf>,
    /// Runtime worker threads of the started server.
    pub server_workers: usize,
    /// Runtime worker threads of the load generator (1: a current-thread runtime).
    pub client_workers: usize,
    /// HTTP/2 connections the load is spread over.
    pub connections: usize,
    /// The benchmark, or `None` to run the functional checks only.
    pub bench: Option<BenchConfig>,
    /// Show a progress bar while the benchmark runs.
    pub progress: bool,
}

/// Everything subtask 1 measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server's address.
    pub server: String,
    /// Whether the server was started by this run (else `--endpoint`).
    pub started_server: bool,
    /// Runtime workers of the started server.
    pub server_workers: Option<usize>,
    /// Runtime workers of the load generator.
    pub client_workers: usize,
    /// Connections the load used.
    pub connections: usize,
    /// The functional checks, and the clean shutdown of a started server.
    pub checks: Vec<CheckOutcome>,
    /// The benchmark.
    pub benchmark: Option<BenchReport>,
    /// Whether every check passed and the benchmark saw no error.
    pub passed: bool,
}

/// Runs subtask 1 and prints its progress and tables on standard output.
pub fn run(options: &Options) -> Result<Report> {
    let server = match &options.endpoint {
        Some(_) => None,
        None => {
            let bin = match &options.server_bin {
                Some(bin) => bin.clone(),
                None => process::find_binary("kv-server")?,
            };
            let args = vec![
                "--workers".to_owned(),
                options.server_workers.to_string(),
                "--log".to_owned(),
                "warn".to_owned(),
            ];
            let server = ServerProcess::start_storage(&bin, &args)?;
            println!(
                "started kv-server (pid {}) on {} with {} runtime worker(s)",
                server.pid(),
                server.addr(),
                options.server_workers
            );
            Some(server)
        }
    };
    let endpoint = match (&options.endpoint, &server) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(server)) => server.addr().to_string(),
        (None, None) => unreachable!("a server is started when no endpoint is given"),
    };

    let mut runtime = if options.client_workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(options.client_workers);
        b
    };
    let runtime = runtime.enable_all().build().context("cannot start the client runtime")?;
    let (mut checks, benchmark) = runtime.block_on(checks_and_bench(&endpoint, options))?;
    drop(runtime);

    if let Some(server) = server {
        let started = std::time::Instant::now();
        let stopped = server.stop(Duration::from_secs(15));
        let outcome = CheckOutcome {
            name: "graceful shutdown (SIGTERM)".to_owned(),
            passed: matches!(&stopped, Ok(status) if status.success()),
            detail: match stopped {
                Ok(status) if status.success() => "ok".to_owned(),
                Ok(status) => format!("the server exited with {status}"),
                Err(err) => format!("{err:#}"),
            },
            seconds: started.elapsed().as_secs_f64(),
        };
        let verdict = if outcome.passed { "pass".to_owned() } else { format!("FAIL: {}", outcome.detail) };
        println!("\n{}: {verdict}", outcome.name);
        checks.push(outcome);
    }
    let passed = checks.iter().all(|c| c.passed) && benchmark.as_ref().is_none_or(|b| b.total.errors == 0);
    Ok(Report {
        server: endpoint,
        started_server: options.endpoint.is_none(),
        server_workers: options.endpoint.is_none().then_some(options.server_workers),
        client_workers: options.client_workers.max(1),
        connections: options.connections.max(1),
        checks,
        benchmark,
        passed,
    })
}

async fn checks_and_bench(
    endpoint: &str,
    options: &Options,
) -> Result<(Vec<CheckOutcome>, Option<BenchReport>)> {
    let connect = || async {
        Client::connect(endpoint.to_owned()).await.with_context(|| format!("cannot connect to {endpoint}"))
    };
    let run_id =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let keys = Keys::new(format!("eval-{run_id}-"));
    println!("\nfunctional checks");
    let one = connect().await?;
    let mut three = Vec::new();
    for _ in 0..3 {
        three.push(connect().await?);
    }
    let checks = vec![
        checks::verdict("sequence (1 client)", checks::sequence(&one, &keys)).await,
        checks::verdict("parallel (3 clients, distinct keys)", checks::parallel(&three, &keys)).await,
        checks::verdict("race (3 clients x 5 appends to one key)", checks::race(&three, &keys)).await,
    ];
    print!("{}", report::checks_table(&checks));

    let Some(config) = &options.bench else {
        return Ok((checks, None));
    };
    let mut clients = Vec::new();
    for _ in 0..options.connections.max(1) {
        clients.push(connect().await?);
    }
    println!("\nbenchmark: preloading {} keys", config.keys);
    bench::preload(&clients, config).await?;
    println!("benchmark: running");
    let report = bench::run(&clients, config, options.progress).await?;
    print!("{}", report::bench_table(&report));
    Ok((checks, Some(report)))
}
