//! Throughput and latency of writes, then of reads, by replication factor and level: the
//! single-node benchmark's closed loop (requests in flight, keys, sizes), puts only and then gets
//! only, through one cluster client that reads from any replica, on a fresh cluster per setting.
//!
//! A write waits for the primary and the level's secondaries; a read is served by one replica
//! (at a strong secondary whose key is being written, by the primary). On a machine with few
//! cores every server process competes with the others and with the load generator: this reports
//! what it measures and asserts no speed.

use std::time::Duration;

use anyhow::{Context, Result};
use kv_client::ReadFrom;
use serde::Serialize;

use super::setup::{cluster_client, master_addr, start_cluster};
use super::{Options, Setting};
use crate::load::bench::{self, BenchConfig, BenchReport};

/// The longest one attempt of a call may take: the client library's default, since a benchmark
/// measures what calls take rather than giving up on slow ones.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the phase runs.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputConfig {
    /// The settings measured, each on a fresh cluster.
    pub settings: Vec<Setting>,
    /// The load: its mix is replaced by puts only, then gets only.
    pub bench: BenchConfig,
}

/// The benchmark at one setting.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    /// The replication factor and level.
    pub setting: Setting,
    /// Puts only.
    pub puts: BenchReport,
    /// Gets only, of keys every one of which was written first.
    pub gets: BenchReport,
}

/// Runs the benchmark at each of [`ThroughputConfig::settings`].
pub(super) fn run(options: &Options) -> Result<Vec<ThroughputRow>> {
    let config = &options.throughput;
    let puts = BenchConfig { mix: "put=1".parse()?, ..config.bench.clone() };
    let gets = BenchConfig { mix: "get=1".parse()?, ..config.bench.clone() };
    let mut rows = Vec::new();
    for &setting in &config.settings {
        // As in the single-node benchmark: the load generator on one runtime thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client runtime")?;
        let cluster = start_cluster(options, setting, &rt)?;
        let master = master_addr(&cluster)?;
        let (puts, gets) = rt.block_on(async {
            let clients = vec![cluster_client(&master, ReadFrom::AnyReplica, CALL_TIMEOUT).await?];
            bench::preload(&clients, &gets).await.context("preloading")?;
            let puts = bench::run(&clients, &puts, options.progress).await.context("puts only")?;
            let gets = bench::run(&clients, &gets, options.progress).await.context("gets only")?;
            Ok::<_, anyhow::Error>((puts, gets))
        })?;
        drop(rt);
        drop(cluster);
        let (p, g) = (&puts.total, &gets.total);
        println!(
            "    puts {:.0}/s (p50 {:.3} ms, p99 {:.3} ms), gets {:.0}/s (p50 {:.3} ms, p99 {:.3} ms), {} errors",
            p.ops_per_sec,
            p.p50_us / 1e3,
            p.p99_us / 1e3,
            g.ops_per_sec,
            g.p50_us / 1e3,
            g.p99_us / 1e3,
            p.errors + g.errors
        );
        rows.push(ThroughputRow { setting, puts, gets });
    }
    Ok(rows)
}
