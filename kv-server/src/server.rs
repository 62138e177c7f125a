//! Wiring the services into one gRPC server, and its lifecycle.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kv_core::disk::{DiskOptions, DiskStorage, Durability};
use kv_core::{Limits, MemoryStorage, Storage};
use kv_shard::Replication;
use kv_shard::clock::TokioClock;
use kv_shard::member::{self, Left};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::master_store::FileMasterStore;
use crate::service::{
    CompatKvService, CompatShardMasterService, KeyValueService, MasterSettings, NodeService, ShardMaster,
    ShardMasterService,
};
use crate::transport::{DialVia, GrpcMaster, GrpcTransport};
use kv_replica::{Node, NodeSettings};

/// How a storage server is set up.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Size limits on keys and values.
    pub limits: Limits,
    /// How long requests in flight may run on after shutdown begins, before they are dropped.
    pub shutdown_grace: Duration,
    /// The cluster to join at start-up and leave at shutdown; `None` for a server that is
    /// standalone until a shard master makes it a member.
    pub cluster: Option<ClusterMembership>,
    /// How long a hand-off of slots may keep retrying a peer that does not answer.
    pub handoff_timeout: Duration,
    /// A secret shared by the cluster's servers and shard master: installs and transfers
    /// without it are refused. `None` accepts them from anyone who can connect.
    pub cluster_token: Option<String>,
    /// Stand-ins to dial instead of peers' and the shard master's addresses (a test harness's
    /// link proxies); empty by default.
    pub dial_via: DialVia,
    /// Where the values are kept (in memory by default).
    pub data: StorageData,
}

/// Where a storage server keeps its values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageData {
    /// In memory: a restart loses them.
    #[default]
    Memory,
    /// In the durable engine ([`kv_core::disk::DiskStorage`]) in `dir`: a standalone server
    /// restarted with the same directory has every write it acknowledged (with
    /// [`Durability::Always`]); a cluster member comes back as the member it was, with its data,
    /// if the shard master can take it back in place (see `kv_replica`'s docs, "Restarts").
    Disk {
        /// The data directory.
        dir: PathBuf,
        /// When an acknowledged write is on disk.
        durability: Durability,
    },
}

/// A storage server's membership of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterMembership {
    /// The shard master's address, `host:port`.
    pub shardmaster: String,
    /// The address the server is known by (clients and peers dial it); by default the address it
    /// listens on.
    pub advertise: Option<String>,
    /// How long joining may keep retrying a shard master that does not answer yet (or is still
    /// settling an earlier change).
    pub join_timeout: Duration,
    /// How long leaving, with the hand-off of all this server's data, may take at shutdown.
    pub leave_timeout: Duration,
}

impl ClusterMembership {
    /// Joins the cluster of the shard master at `shardmaster`, with default timeouts.
    pub fn new(shardmaster: impl Into<String>) -> Self {
        ClusterMembership {
            shardmaster: shardmaster.into(),
            advertise: None,
            join_timeout: Duration::from_secs(120),
            leave_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(10),
            cluster: None,
            handoff_timeout: Duration::from_secs(30),
            cluster_token: None,
            dial_via: DialVia::default(),
            data: StorageData::Memory,
        }
    }
}

/// The engine `config` asks for, opened.
async fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, ServeError> {
    let StorageData::Disk { dir, durability } = &config.data else {
        return Ok(Arc::new(MemoryStorage::with_limits(config.limits)));
    };
    let options = DiskOptions { limits: config.limits, durability: *durability, slot_of: kv_shard::slot_of };
    let engine = DiskStorage::open(dir, options)?;
    let held = engine.key_count().await.unwrap_or_default();
    info!(dir = %dir.display(), keys = held, ?durability, "data directory opened");
    Ok(Arc::new(engine))
}

/// How a shard master is set up.
#[derive(Debug, Clone)]
pub struct ShardMasterConfig {
    /// How long requests in flight may run on after shutdown begins, before they are dropped.
    pub shutdown_grace: Duration,
    /// How long the data moves of one membership change may take before the change is reported
    /// as incomplete.
    pub move_timeout: Duration,
    /// The secret the storage servers expect on installs (see [`StorageConfig::cluster_token`]).
    pub cluster_token: Option<String>,
    /// How slots are replicated (the binary's default is 3 strong replicas; this one's is a
    /// single copy).
    pub replication: Replication,
    /// How long a member may go without answering pings before it is failed over (replication
    /// factor 2 or more).
    pub failure_timeout: Duration,
    /// Stand-ins to dial instead of the storage servers' addresses (a test harness's link
    /// proxies); empty by default.
    pub dial_via: DialVia,
    /// Where the shard master keeps its state, to go on from it after a restart (none: in
    /// memory, and a restart forgets the cluster).
    pub data_dir: Option<PathBuf>,
}

impl Default for ShardMasterConfig {
    fn default() -> Self {
        ShardMasterConfig {
            shutdown_grace: Duration::from_secs(10),
            move_timeout: Duration::from_secs(30),
            cluster_token: None,
            replication: Replication::default(),
            failure_timeout: Duration::from_millis(800),
            dial_via: DialVia::default(),
            data_dir: None,
        }
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    Address(#[from] std::io::Error),
    /// The replication settings are invalid.
    #[error("invalid replication settings: {0}")]
    Replication(#[from] kv_shard::Error),
    /// The storage server's data directory cannot be used.
    #[error("{0}")]
    Data(#[from] kv_core::disk::OpenError),
    /// The exactly-once records kept in the data directory cannot be read.
    #[error("cannot read the exactly-once records kept in the data directory: {0}")]
    Records(String),
    /// The membership kept in the data directory cannot be taken back.
    #[error("cannot come back as the member whose data the data directory holds: {0}")]
    Membership(String),
    /// The shard master's saved state cannot be used.
    #[error("cannot start from the shard master's state in {dir}: {reason}")]
    MasterState {
        /// Its data directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// The server could not join its cluster.
    #[error("cannot join the cluster of shard master {shardmaster}: {reason}")]
    Join {
        /// The shard master.
        shardmaster: String,
        /// Why.
        reason: String,
    },
}

/// Serves a storage server, with the engine [`StorageConfig::data`] says, on `listener` until
/// `shutdown` completes; then drains as the crate docs say. With [`StorageConfig::cluster`], it joins the cluster once
/// it serves, and at shutdown leaves it (handing its data off) before it stops serving.
pub async fn run_storage(
    listener: TcpListener,
    config: StorageConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cluster = config.cluster.clone();
    let storage = open_storage(&config).await?;
    let me = match cluster.as_ref().and_then(|c| c.advertise.clone()) {
        Some(advertise) => advertise,
        None => listener.local_addr()?.to_string(),
    };
    let settings = NodeSettings {
        me: me.clone(),
        joining: cluster.is_some(),
        handoff_timeout: config.handoff_timeout,
        incarnation: rand::random::<u64>(),
    };
    let peers =
        Arc::new(GrpcTransport::new(config.cluster_token.clone()).with_dial_via(config.dial_via.clone()));
    let node = Node::new(storage, settings, peers, Arc::new(TokioClock));
    let clients = node.restore_sessions().await.map_err(|err| ServeError::Records(err.to_string()))?;
    if clients > 0 {
        info!(clients, "took back the exactly-once records kept on disk");
    }
    if cluster.is_some() {
        let kept = node.restore_membership().await.map_err(|err| ServeError::Membership(err.to_string()))?;
        if let Some(resume) = kept {
            info!(
                member = resume.member.0,
                epoch = resume.epoch,
                whole = resume.whole,
                "restarted with the data of a member kept on disk: asking to be taken back as that member"
            );
        }
    }
    let leaver = Arc::clone(&node);
    // Room for the largest request the limits allow, plus framing; larger messages are refused
    // by the transport (OUT_OF_RANGE) before they are read into memory.
    let max_message = (config.limits.max_key_len + config.limits.max_value_len + 64 * 1024).max(4 << 20);
    let key_value =
        KeyValueService::new(Arc::clone(&node)).into_server().max_decoding_message_size(max_message);
    let compat_kv =
        CompatKvService::new(Arc::clone(&node)).into_server().max_decoding_message_size(max_message);
    // Transfer batches hold up to 1 MiB of keys plus one value, and the exactly-once records.
    let evicted = Arc::clone(&node);
    let node_rpc = NodeService::new(node, config.cluster_token.clone())
        .into_server()
        .max_decoding_message_size(max_message.max(256 << 20));
    let names = [service_name(&key_value), service_name(&compat_kv), service_name(&node_rpc)];
    let routes = Routes::new(key_value).add_service(compat_kv).add_service(node_rpc);
    let Some(cluster) = cluster else {
        return serve(listener, routes, &names, config.shutdown_grace, shutdown).await;
    };

    let master = GrpcMaster::new(cluster.shardmaster.clone()).with_dial_via(config.dial_via.clone());
    let leave = {
        let (cluster, master, me) = (cluster.clone(), master.clone(), me.clone());
        async move {
            shutdown.await;
            let started = tokio::time::Instant::now();
            let left = leave_cluster(&cluster, &master, &me).await;
            let patience = cluster.leave_timeout.saturating_sub(started.elapsed());
            if left {
                leaver.wait_until_left(patience).await;
            } else {
                leaver.wait_for_handoffs(patience).await;
            }
        }
    };
    let serving = serve(listener, routes, &names, config.shutdown_grace, leave);
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result,
        joined = join_cluster(&cluster, &master, &me) => joined?,
    }
    // A server failed over while cut off comes back empty: it joins again, as a new member.
    let rejoin = tokio::spawn(async move {
        loop {
            evicted.evicted().notified().await;
            warn!("this server was failed over while out of reach: joining the cluster again");
            if let Err(err) = join_cluster(&cluster, &master, &me).await {
                warn!(cause = %err, "could not join the cluster again");
            }
        }
    });
    let _stop_rejoining = AbortOnDrop(rejoin);
    serving.await
}

/// Joins the cluster, retrying while the shard master cannot be reached (or cannot reach us).
async fn join_cluster(cluster: &ClusterMembership, master: &GrpcMaster, me: &str) -> Result<(), ServeError> {
    match member::join(master, &TokioClock, me, cluster.join_timeout).await {
        Ok(epoch) => {
            info!(epoch, address = me, "joined the cluster");
            println!("kv-server storage joined the cluster as {me} at epoch {epoch}");
            Ok(())
        }
        Err(err) => {
            Err(ServeError::Join { shardmaster: cluster.shardmaster.clone(), reason: err.to_string() })
        }
    }
}

/// Leaves the cluster, handing this server's data to the others; logs what went wrong. Returns
/// whether this server is out of the membership (though it may still owe hand-offs).
async fn leave_cluster(cluster: &ClusterMembership, master: &GrpcMaster, me: &str) -> bool {
    info!(shardmaster = %cluster.shardmaster, "leaving the cluster: handing off this server's data");
    match member::leave(master, &TokioClock, me, cluster.leave_timeout).await {
        Ok(Left::Left(epoch)) => info!(epoch, "left the cluster"),
        Ok(Left::Earlier) => info!("left the cluster"),
        Ok(Left::NotMember) => info!("not a member any more"),
        Err(err @ kv_shard::Error::Incomplete { .. }) => {
            warn!(cause = %err, "left, with hand-offs still owed")
        }
        Err(err) => {
            warn!(cause = %err, "could not leave the cluster");
            return false;
        }
    }
    true
}

/// Serves a shard master on `listener` until `shutdown` completes, from the state saved in its
/// data directory if it has one.
pub async fn run_shardmaster(
    listener: TcpListener,
    config: ShardMasterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let settings = MasterSettings {
        move_timeout: config.move_timeout,
        failure_timeout: config.failure_timeout,
        replication: config.replication,
    };
    let servers = Arc::new(GrpcTransport::new(config.cluster_token.clone()).with_dial_via(config.dial_via));
    let master = match &config.data_dir {
        Some(dir) => {
            let refused = |reason: String| ServeError::MasterState { dir: dir.display().to_string(), reason };
            let store = FileMasterStore::open(dir).map_err(|err| refused(err.to_string()))?;
            let master = ShardMaster::open(settings, servers, Arc::new(TokioClock), Arc::new(store))
                .await
                .map_err(|err| refused(err.to_string()))?;
            let current = master.current();
            info!(dir = %dir.display(), epoch = current.epoch(), members = current.len(), "shard master state loaded");
            master
        }
        None => {
            warn!(
                "no --data-dir: the shard master keeps its state in memory, and a restart forgets the cluster"
            );
            ShardMaster::new(settings, servers, Arc::new(TokioClock))?
        }
    };
    // Fails over members that stop answering.
    let watcher = tokio::spawn({
        let master = master.clone();
        async move { master.watch().await }
    });
    let _stop_watcher = AbortOnDrop(watcher);
    // Repairs what failed moves left behind, for as long as the shard master serves.
    let reconciler = tokio::spawn({
        let master = master.clone();
        async move { master.repair().await }
    });
    let _stop_reconciler = AbortOnDrop(reconciler);
    let native = ShardMasterService::new(master.clone()).into_server();
    let compat = CompatShardMasterService::new(master).into_server();
    let names = [service_name(&native), service_name(&compat)];
    let routes = Routes::new(native).add_service(compat);
    serve(listener, routes, &names, config.shutdown_grace, shutdown).await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn service_name<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Serves `routes`, with health (for `names` and the whole server) and reflection, until
/// `shutdown` completes; then reports `NOT_SERVING`, stops accepting, lets requests in flight
/// finish, and drops what is left after `grace`.
async fn serve(
    listener: TcpListener,
    routes: Routes,
    names: &[&'static str],
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut names = names.to_vec();
    names.push("");
    for name in &names {
        health.set_service_status(*name, ServingStatus::Serving).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        info!("shutting down: refusing new connections, finishing requests in flight");
        for name in names {
            health.set_service_status(name, ServingStatus::NotServing).await;
        }
        let _ = draining_tx.send(true);
    };

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = Server::builder()
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace_over = async move {
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = serve => result?,
        () = grace_over => warn!(grace = ?grace, "grace period over; dropping requests still in flight"),
    }
    info!("stopped");
    Ok(())
}
