//! Throughput and latency against the number of storage servers: the single-node benchmark's
//! closed-loop workload, through one cluster client, on a fresh cluster per server count.
//!
//! On a machine with few cores every server process competes with the others and with the load
//! generator, so more servers need not mean more throughput: this reports what it measures.

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Options, cluster_client, master_addr, start_cluster};
use crate::load::bench::{self, BenchReport};
use crate::load::report::{self, Align};

/// The benchmark against one number of servers.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    /// Storage servers in the cluster.
    pub servers: usize,
    /// What the benchmark measured.
    pub benchmark: BenchReport,
}

/// Runs the benchmark against each of [`Options::server_counts`].
pub(super) fn run(options: &Options) -> Result<Vec<ThroughputRow>> {
    let config = &options.bench;
    let mut rows = Vec::new();
    for &servers in &options.server_counts {
        let cluster = start_cluster(options, servers)?;
        let master = master_addr(&cluster)?;
        // As in the single-node benchmark: the load generator on one runtime thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client runtime")?;
        let benchmark = rt.block_on(async {
            let clients = vec![cluster_client(&master).await?];
            bench::preload(&clients, config).await.context("preloading")?;
            bench::run(&clients, config, options.progress).await
        })?;
        drop(rt);
        drop(cluster);
        let t = &benchmark.total;
        println!(
            "  {servers} server(s): {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
            t.ops_per_sec,
            t.p50_us / 1e3,
            t.p99_us / 1e3,
            t.errors
        );
        rows.push(ThroughputRow { servers, benchmark });
    }
    Ok(rows)
}

/// The rows as a table, with the workload above it.
pub(super) fn table(rows: &[ThroughputRow]) -> String {
    let Some(first) = rows.first() else { return "  (no server count measured)\n".to_owned() };
    let c = &first.benchmark.config;
    let mut out = format!(
        "  {} in flight, {:.1} s (+{:.1} s warm-up) per server count, {} keys of {} B, values of {} B, \
         mix {}, one cluster client\n",
        c.concurrency,
        c.duration.as_secs_f64(),
        c.warmup.as_secs_f64(),
        c.keys,
        c.key_size,
        c.value_size,
        c.mix
    );
    let ms = |us: f64| format!("{:.3}", us / 1e3);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let t = &row.benchmark.total;
            vec![
                row.servers.to_string(),
                format!("{:.0}", t.ops_per_sec),
                ms(t.p50_us),
                ms(t.p99_us),
                ms(t.p999_us),
                ms(t.max_us),
                t.errors.to_string(),
            ]
        })
        .collect();
    out.push_str(&report::table(
        &["servers", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"],
        &[Align::Right; 7],
        &cells,
    ));
    for row in rows {
        for e in &row.benchmark.sample_errors {
            out.push_str(&format!("  error with {} server(s): {e}\n", row.servers));
        }
    }
    out
}
