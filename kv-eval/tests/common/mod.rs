//! What the cluster tests share: starting a cluster with a shard master, and reaching it.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)] // Not every test crate that includes this module uses all of it.

pub(crate) mod replicated;

use std::time::Duration;

use kv_client::ShardMaster;
use kv_eval::harness::cluster::{Cluster, ClusterConfig};
use kv_shard::Config;

/// Upper bound for a clean stop, leave and hand-off included.
pub(crate) const STOP: Duration = Duration::from_secs(60);

/// A cluster of `nodes` storage servers, each behind a proxy, and a shard master keeping
/// `factor` copies of every slot, with extra shard master flags.
pub(crate) fn with_shardmaster(nodes: usize, factor: usize, flags: &[&str]) -> Cluster {
    let mut config = ClusterConfig::new(nodes).unwrap();
    config.shardmaster = true;
    config.replication_factor = factor;
    config.shardmaster_args = flags.iter().map(|&f| f.to_owned()).collect();
    Cluster::start(&config).unwrap()
}

/// A runtime for the test's clients.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The shard master's address, as clients dial it.
pub(crate) fn master_addr(cluster: &Cluster) -> String {
    cluster.shardmaster().unwrap().client_addr().to_string()
}

/// The shard master's current configuration.
pub(crate) async fn config(cluster: &Cluster) -> Config {
    ShardMaster::connect(master_addr(cluster)).await.unwrap().config().await.unwrap()
}
