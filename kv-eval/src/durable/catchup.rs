//! What it costs to bring back a server that was down: a durable cluster of three storage servers
//! (strong consistency, three copies of each slot, `--fsync always`) is filled, then one server is
//! killed with `kill -9` while clients keep writing, and started again on its directory, at once
//! (it is taken back as the member it was) and after `down` seconds (it was failed over by then,
//! and joins again as a new member). For each: the bytes the servers sent to bring it back, from
//! their own counters (`kv.v1.Node/Status`: catch-up snapshots and digests, and hand-offs),
//! against the size of its data, and the time until every copy had caught up.
//!
//! Every server gets a fresh temporary data directory, removed at the end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_client::{Client, server_status};
use kv_shard::messages::CatchUpStats;
use serde::Serialize;

use crate::harness::cluster::{Cluster, ClusterConfig};
use crate::harness::cluster_chaos::settle::wait_healthy;

/// Bytes of each value.
const VALUE_BYTES: usize = 1024;

/// Writes in flight while filling, and while the server is down.
const IN_FLIGHT: usize = 16;

/// The longest the cluster may take to be whole again after a restart.
const SETTLE_BOUND: Duration = Duration::from_secs(180);

/// One server brought back.
#[derive(Debug, Clone, Serialize)]
pub struct Return {
    /// Seconds it was down (from the kill to its start again).
    pub down_secs: f64,
    /// Whether it came back as the member it was (otherwise it joined again as a new one).
    pub taken_back: bool,
    /// Writes acknowledged while it was down.
    pub writes_while_down: u64,
    /// MiB of keys and values it held (its copies and its own slots).
    pub data_mib: f64,
    /// MiB the catch-ups sent (keys and values), and of the digests answered.
    pub catch_up_mib: f64,
    /// MiB of digests.
    pub digest_mib: f64,
    /// MiB handed off to it (slots it owns again).
    pub handoff_mib: f64,
    /// Copies caught up, and those found equal (nothing sent).
    pub slots: u64,
    /// Of those, the copies found equal.
    pub slots_equal: u64,
    /// Seconds from its start until it was a member again and every copy had caught up.
    pub back_secs: f64,
}

impl Return {
    /// Everything sent to bring it back, against its data.
    pub fn ratio(&self) -> f64 {
        (self.catch_up_mib + self.digest_mib + self.handoff_mib) / self.data_mib.max(f64::MIN_POSITIVE)
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        format!(
            "back after {:.1} s down ({}): {} writes while down; sent {:.1} MiB to catch up ({:.2} MiB of \
             digests, {} of {} copies equal) and {:.1} MiB of hand-offs, for {:.1} MiB of data: {:.1}%; \
             caught up {:.1} s after its start",
            self.down_secs,
            if self.taken_back { "taken back" } else { "joined again" },
            self.writes_while_down,
            self.catch_up_mib,
            self.digest_mib,
            self.slots_equal,
            self.slots,
            self.handoff_mib,
            self.data_mib,
            100.0 * self.ratio(),
            self.back_secs,
        )
    }
}

fn key_of(i: u64) -> String {
    format!("catch-up-{i:08}")
}

fn value_of(i: u64, round: u64) -> String {
    let mut value = format!("{round}:{i}:");
    let fill = char::from(b'a' + ((i + round) % 26) as u8);
    value.extend(std::iter::repeat_n(fill, VALUE_BYTES - value.len()));
    value
}

/// Fills a cluster with `mib` MiB and brings a server back after each of `downs`.
pub(crate) fn run(bin: &Path, mib: u64, downs: &[Duration]) -> Result<Vec<Return>> {
    // The load runs while this thread waits: a runtime with threads of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let mut config = ClusterConfig::new(3)?;
    config.server_bin = bin.to_owned();
    config.server_args = vec!["--log".into(), "info".into()];
    config.proxies = false;
    config.shardmaster = true;
    config.replication_factor = 3;
    config.durable = true;
    let mut cluster = Cluster::start(&config)?;
    let master = cluster.shardmaster().context("no shard master")?.client_addr().to_string();
    let servers: Vec<String> = cluster.nodes().iter().map(|n| n.client_addr().to_string()).collect();
    let keys = (mib * 1024 * 1024).div_ceil(VALUE_BYTES as u64);
    runtime.block_on(async {
        wait_healthy(&master, &servers, SETTLE_BOUND).await.map_err(anyhow::Error::msg)?;
        let client = Arc::new(Client::connect_cluster(master.clone()).await.context("cannot connect")?);
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        fill(&client, keys, 0, &stop, &writes).await
    })?;
    let mut returns = Vec::new();
    for (round, &down) in (1..).zip(downs) {
        let victim = servers.len() - 1;
        // What the victim sent is counted afresh by its new process.
        let before = runtime.block_on(sent(&servers[..victim]))?;
        let data = runtime.block_on(server_status(&servers[victim], Duration::from_secs(5)))?.keys;
        // Writes go on while it is down, over every key, with the values of this round.
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let load = {
            let (stop, writes, master) = (Arc::clone(&stop), Arc::clone(&writes), master.clone());
            runtime.spawn(async move {
                let client = Arc::new(Client::connect_cluster(master).await?);
                fill(&client, keys, round, &stop, &writes).await
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        cluster.node_mut(victim).kill()?;
        let killed = Instant::now();
        let acked_before = writes.load(Ordering::Relaxed);
        std::thread::sleep(down);
        let writes_while_down = writes.load(Ordering::Relaxed) - acked_before;
        let down_secs = killed.elapsed().as_secs_f64();
        let log_before = cluster.nodes()[victim].log().len();
        let started = Instant::now();
        cluster.node_mut(victim).restart()?;
        let settled = runtime.block_on(wait_healthy(&master, &servers, SETTLE_BOUND));
        let back_secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        runtime.block_on(load).context("the load panicked")??;
        if let Err(why) = settled {
            bail!("the server killed did not come back: {why}");
        }
        let after = runtime.block_on(sent(&servers))?;
        let log = cluster.nodes()[victim].log().get(log_before..).unwrap_or_default().to_owned();
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let entry = (key_of(0).len() + VALUE_BYTES) as u64;
        returns.push(Return {
            down_secs,
            taken_back: log.contains("taken back as the member this server was")
                && !log.contains("not taken back as the member this server was"),
            writes_while_down,
            data_mib: mib(data * entry),
            catch_up_mib: mib(after.bytes - before.bytes),
            digest_mib: mib(after.digest_bytes - before.digest_bytes),
            handoff_mib: mib(after.handoff_bytes - before.handoff_bytes),
            slots: after.slots - before.slots,
            slots_equal: after.slots_equal - before.slots_equal,
            back_secs,
        });
    }
    Ok(returns)
}

/// What every server sent, in all.
async fn sent(servers: &[String]) -> Result<CatchUpStats> {
    let mut total = CatchUpStats::default();
    for server in servers {
        let status = server_status(server, Duration::from_secs(5)).await.with_context(|| server.clone())?;
        total.add(&status.catch_up);
    }
    Ok(total)
}

/// Writes keys `0..keys` with the values of `round`, `IN_FLIGHT` at a time: once each, or over
/// and over until `stop` (round > 0), counting the writes acknowledged. Failed writes (while a
/// server is down) are retried.
async fn fill(
    client: &Arc<Client>,
    keys: u64,
    round: u64,
    stop: &Arc<AtomicBool>,
    writes: &Arc<AtomicU64>,
) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next, stop, writes) =
            (Arc::clone(client), Arc::clone(&next), Arc::clone(stop), Arc::clone(writes));
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if (round == 0 && n >= keys) || stop.load(Ordering::Relaxed) {
                    return;
                }
                // Spread over the keys: a prime stride visits each once per `keys` writes.
                let i = n.wrapping_mul(7_919) % keys;
                while client.put(key_of(i), value_of(i, round)).await.is_err() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for writer in writers {
        writer.await.context("a writer panicked")?;
    }
    Ok(())
}
