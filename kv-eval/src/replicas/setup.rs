//! Starting a replicated cluster for one setting and waiting until it has settled, the clients
//! that talk to it, and the runtime they run on.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_client::{Client, ReadFrom, ShardMaster, server_status};
use kv_shard::Config;
use tokio::runtime::Runtime;

use super::{Options, Setting};
use crate::harness::cluster::{Cluster, ClusterConfig};

/// The longest a fresh cluster may take to settle: every member at the shard master's epoch,
/// every replica synced.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a shard master with `setting` and [`Options::servers`] storage servers that have
/// joined it, then waits until every secondary has caught up, so that what follows measures the
/// steady state. `rt` runs the wait.
pub(super) fn start_cluster(options: &Options, setting: Setting, rt: &Runtime) -> Result<Cluster> {
    let started = Instant::now();
    let mut config = ClusterConfig::new(options.servers)?;
    if let Some(bin) = &options.server_bin {
        config.server_bin = bin.clone();
    }
    // Proxies would add a hop of latency to every call; nothing here breaks the network.
    config.proxies = false;
    config.shardmaster = true;
    config.replication_factor = setting.factor();
    config.shardmaster_args = setting.shardmaster_args(options.sync_interval);
    config.seed = options.seed;
    config.durable = options.durable;
    let cluster = Cluster::start(&config).with_context(|| {
        format!("cannot start a cluster of {} storage servers at {setting}", options.servers)
    })?;
    let epoch = rt.block_on(wait_settled(&master_addr(&cluster)?)).with_context(|| {
        format!("the cluster at {setting} did not settle within {} s", SETTLE_TIMEOUT.as_secs())
    })?;
    println!(
        "  {setting} ({}): a shard master and {} {}storage servers, settled at epoch {epoch} in {:.2} s",
        setting.describe(),
        options.servers,
        if options.durable { "durable " } else { "" },
        started.elapsed().as_secs_f64()
    );
    Ok(cluster)
}

/// Waits until every member of the shard master's configuration reports its epoch, no slot
/// moving and no replica syncing; returns the epoch.
async fn wait_settled(master: &str) -> Result<u64> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let last_problem = match unsettled(master).await {
            Ok(Ok(epoch)) => return Ok(epoch),
            Ok(Err(problem)) => problem,
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{last_problem}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The epoch if the cluster has settled, else what has not.
async fn unsettled(master: &str) -> Result<std::result::Result<u64, String>> {
    let config = current_config(master).await?;
    for (_, server) in config.members() {
        let status = server_status(server, Duration::from_secs(2))
            .await
            .with_context(|| format!("cannot ask {server} for its status"))?;
        if status.epoch != config.epoch()
            || status.incoming_slots > 0
            || status.outgoing_slots > 0
            || status.syncing_slots > 0
        {
            return Ok(Err(format!(
                "{server} is at epoch {} (master: {}), {} slots incoming, {} outgoing, {} replicas syncing",
                status.epoch,
                config.epoch(),
                status.incoming_slots,
                status.outgoing_slots,
                status.syncing_slots
            )));
        }
    }
    Ok(Ok(config.epoch()))
}

/// The address clients reach the shard master at.
pub(super) fn master_addr(cluster: &Cluster) -> Result<String> {
    Ok(cluster.shardmaster().context("the cluster has no shard master")?.client_addr().to_string())
}

/// The shard master's current configuration.
pub(super) async fn current_config(master: &str) -> Result<Config> {
    let client = ShardMaster::connect(master).await.with_context(|| format!("cannot reach {master}"))?;
    client.config().await.context("cannot read the configuration")
}

/// A cluster client as an application would make one, reading from `read_from`, with calls
/// bounded by `timeout` per attempt.
pub(super) async fn cluster_client(master: &str, read_from: ReadFrom, timeout: Duration) -> Result<Client> {
    Client::cluster_builder(master)
        .read_from(read_from)
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the cluster at {master}"))
}

/// A runtime for the clients: one worker besides the thread that blocks on it, as the sharded
/// subtask runs its recorded clients.
pub(super) fn client_runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the client runtime")
}

/// Keeps the cluster's folder (logs, data) if the run failed and `KV_KEEP_CLUSTER` is set.
pub(super) fn keep_files_if_asked(cluster: &mut Cluster, failed: bool) {
    if failed && std::env::var_os("KV_KEEP_CLUSTER").is_some() {
        eprintln!("kept the cluster's files in {}", cluster.keep_files().display());
    }
}
