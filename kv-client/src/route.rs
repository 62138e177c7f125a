//! Where a client sends each request: its one server, or the owner of the key's slot in the
//! cached configuration of a cluster.

use rand::RngExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use kv_proto::v1::key_value_client::KeyValueClient;
use kv_shard::Config;
use tonic::transport::Channel;

use crate::channel::{endpoint, kv_client};
use crate::{Error, Result, ShardMaster};

/// The servers a client talks to.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// One storage server, for every key.
    Server(KeyValueClient<Channel>),
    /// The members of a cluster.
    Cluster(Arc<ClusterRoute>),
}

/// A cluster's cached configuration and a lazily dialled channel per member.
#[derive(Debug)]
pub(crate) struct ClusterRoute {
    master: ShardMaster,
    config: RwLock<Arc<Config>>,
    servers: Mutex<HashMap<String, KeyValueClient<Channel>>>,
    /// One refresh at a time: concurrent callers that saw the same stale epoch wait for it
    /// instead of all asking the shard master.
    refreshing: tokio::sync::Mutex<()>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Route {
    /// Reads the configuration from the shard master at `shardmaster`.
    pub(crate) async fn cluster(
        shardmaster: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Route> {
        let master = ShardMaster::connect_with(shardmaster, timeout, connect_timeout).await?;
        let config = master.config().await?;
        Ok(Route::Cluster(Arc::new(ClusterRoute {
            master,
            config: RwLock::new(Arc::new(config)),
            servers: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            timeout,
            connect_timeout,
        })))
    }

    /// The server for `key`, the epoch of the map that chose it (0 for a single server), and
    /// whether it is a secondary: the primary, or with `any_replica` one of the key's replicas
    /// at random.
    pub(crate) fn server_for(
        &self,
        key: &str,
        any_replica: bool,
    ) -> (Result<KeyValueClient<Channel>>, u64, bool) {
        match self {
            Route::Server(server) => (Ok(server.clone()), 0, false),
            Route::Cluster(cluster) => cluster.server_for(key, any_replica),
        }
    }
}

impl ClusterRoute {
    fn current(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn server_for(&self, key: &str, any_replica: bool) -> (Result<KeyValueClient<Channel>>, u64, bool) {
        let config = self.current();
        let replicas = config.replicas(key);
        if replicas.is_empty() {
            let none = tonic::Status::unavailable("no storage server is a member of the cluster");
            return (Err(Error::Rpc(none)), config.epoch(), false);
        }
        let chosen = if any_replica { rand::rng().random_range(0..replicas.len()) } else { 0 };
        (self.channel(replicas[chosen].1), config.epoch(), chosen > 0)
    }

    fn channel(&self, address: &str) -> Result<KeyValueClient<Channel>> {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = servers.get(address) {
            return Ok(server.clone());
        }
        let channel = endpoint(address, self.timeout, self.connect_timeout)?.connect_lazy();
        let server = kv_client(channel);
        servers.insert(address.to_owned(), server.clone());
        Ok(server)
    }

    /// Fetches the configuration again, unless one newer than `seen` is already cached. A shard
    /// master that cannot be reached leaves the cached map in place: requests go on with it.
    pub(crate) async fn refresh(&self, seen: u64) {
        let _one_at_a_time = self.refreshing.lock().await;
        if self.current().epoch() > seen {
            return;
        }
        if let Ok(config) = self.master.config().await {
            let mut current = self.config.write().unwrap_or_else(PoisonError::into_inner);
            if config.epoch() > current.epoch() {
                let members: Vec<&str> = config.members().map(|(_, address)| address).collect();
                self.servers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|address, _| members.contains(&address.as_str()));
                *current = Arc::new(config);
            }
        }
    }
}
