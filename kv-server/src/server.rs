//! Wiring the services into one gRPC server, and its lifecycle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_core::{Limits, MemoryStorage, Storage};
use kv_proto::v1::{self, shard_master_client::ShardMasterClient};
use kv_shard::Replication;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::node::Node;
use crate::peers::Peers;
use crate::service::{
    CompatKvService, CompatShardMasterService, KeyValueService, Membership, NodeService, ShardMasterService,
};

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
        }
    }
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
}

impl Default for ShardMasterConfig {
    fn default() -> Self {
        ShardMasterConfig {
            shutdown_grace: Duration::from_secs(10),
            move_timeout: Duration::from_secs(30),
            cluster_token: None,
            replication: Replication::default(),
            failure_timeout: Duration::from_millis(800),
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
    /// The server could not join its cluster.
    #[error("cannot join the cluster of shard master {shardmaster}: {reason}")]
    Join {
        /// The shard master.
        shardmaster: String,
        /// Why.
        reason: String,
    },
}

/// Serves a storage server, with an in-memory engine, on `listener` until `shutdown` completes;
/// then drains as the crate docs say. With [`StorageConfig::cluster`], it joins the cluster once
/// it serves, and at shutdown leaves it (handing its data off) before it stops serving.
pub async fn run_storage(
    listener: TcpListener,
    config: StorageConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::with_limits(config.limits));
    let cluster = config.cluster.clone();
    let me = match cluster.as_ref().and_then(|c| c.advertise.clone()) {
        Some(advertise) => advertise,
        None => listener.local_addr()?.to_string(),
    };
    let peers = Peers::new(config.cluster_token.clone());
    let node = Node::new(storage, me.clone(), peers, config.handoff_timeout, cluster.is_some());
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

    let leave = {
        let (cluster, me) = (cluster.clone(), me.clone());
        async move {
            shutdown.await;
            let started = tokio::time::Instant::now();
            leave_cluster(&cluster, &me).await;
            let left = cluster.leave_timeout.saturating_sub(started.elapsed());
            leaver.wait_for_handoffs(left).await;
        }
    };
    let serving = serve(listener, routes, &names, config.shutdown_grace, leave);
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result,
        joined = join_cluster(&cluster, &me) => joined?,
    }
    // A server failed over while cut off comes back empty: it joins again, as a new member.
    let rejoin = tokio::spawn(async move {
        loop {
            evicted.evicted.notified().await;
            warn!("this server was failed over while out of reach: joining the cluster again");
            if let Err(err) = join_cluster(&cluster, &me).await {
                warn!(cause = %err, "could not join the cluster again");
            }
        }
    });
    let _stop_rejoining = AbortOnDrop(rejoin);
    serving.await
}

/// Joins the cluster, retrying while the shard master cannot be reached (or cannot reach us).
async fn join_cluster(cluster: &ClusterMembership, me: &str) -> Result<(), ServeError> {
    let failed = |reason: String| ServeError::Join { shardmaster: cluster.shardmaster.clone(), reason };
    let joined = |epoch: u64| {
        info!(epoch, address = me, "joined the cluster");
        println!("kv-server storage joined the cluster as {me} at epoch {epoch}");
    };
    match ask_shardmaster(cluster, Change::Join, me, cluster.join_timeout).await {
        (Ok(config), _) => joined(config.epoch),
        (Err(status), true) if status.code() == Code::AlreadyExists => joined(0),
        (Err(status), false) if status.code() == Code::AlreadyExists => {
            return Err(failed(format!(
                "{me} is a member already: it stopped without leaving, and the data it held is lost; \
                 remove it (kv cluster leave {me}) before starting it again"
            )));
        }
        (Err(status), _) => return Err(failed(status.message().to_owned())),
    }
    Ok(())
}

/// Leaves the cluster, handing this server's data to the others; logs what went wrong.
async fn leave_cluster(cluster: &ClusterMembership, me: &str) {
    info!(shardmaster = %cluster.shardmaster, "leaving the cluster: handing off this server's data");
    match ask_shardmaster(cluster, Change::Leave, me, cluster.leave_timeout).await {
        (Ok(config), _) => info!(epoch = config.epoch, "left the cluster"),
        (Err(status), true) if status.code() == Code::NotFound => info!("left the cluster"),
        (Err(status), false) if status.code() == Code::NotFound => info!("not a member any more"),
        (Err(status), _) => {
            warn!(code = ?status.code(), cause = %status.message(), "could not leave the cluster")
        }
    }
}

/// A membership change a storage server asks for itself.
#[derive(Debug, Clone, Copy)]
enum Change {
    Join,
    Leave,
}

/// Asks the shard master to make `me` join or leave, again and again while the shard master
/// cannot be reached or is settling an earlier change, for up to `patience`. Returns its last
/// answer, and whether an earlier attempt may have reached it (so a join answered "a member
/// already", or a leave answered "not a member", may be that attempt's doing).
async fn ask_shardmaster(
    cluster: &ClusterMembership,
    change: Change,
    me: &str,
    patience: Duration,
) -> (Result<v1::ClusterConfig, tonic::Status>, bool) {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(50);
    let mut sent = false;
    loop {
        let answer = match Peers::new(None).channel(&cluster.shardmaster) {
            Ok(channel) => {
                let mut master = ShardMasterClient::new(channel);
                let server = me.to_owned();
                match change {
                    Change::Join => {
                        let mut request = tonic::Request::new(v1::JoinRequest { server });
                        request.set_timeout(CHANGE_TIMEOUT);
                        master.join(request).await
                    }
                    Change::Leave => {
                        let mut request = tonic::Request::new(v1::LeaveRequest { server });
                        request.set_timeout(CHANGE_TIMEOUT.min(patience));
                        master.leave(request).await
                    }
                }
            }
            Err(status) => Err(status),
        };
        match answer {
            Err(status) if retry_change(&status) && tokio::time::Instant::now() + backoff < deadline => {
                sent |= status.code() != Code::Unavailable;
                warn!(?change, cause = %status.message(), "the shard master cannot take the change yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            answer => return (answer.map(tonic::Response::into_inner), sent),
        }
    }
}

/// The longest a join or leave call waits for the shard master: its moves have timeouts of their
/// own, and the change goes on even if the call gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether a join or leave that failed with `status` may succeed if sent again: the shard master
/// was unreachable, busy settling an earlier change, or the call was cut off.
fn retry_change(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown)
}

/// Serves a shard master on `listener` until `shutdown` completes.
pub async fn run_shardmaster(
    listener: TcpListener,
    config: ShardMasterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let membership = Arc::new(Membership::new(
        config.move_timeout,
        config.failure_timeout,
        config.cluster_token.clone(),
        config.replication,
    )?);
    // Fails over members that stop answering.
    let watcher = tokio::spawn(Arc::clone(&membership).watch());
    let _stop_watcher = AbortOnDrop(watcher);
    // Repairs what failed moves left behind, for as long as the shard master serves.
    let reconciler = tokio::spawn({
        let membership = Arc::clone(&membership);
        async move {
            loop {
                tokio::time::sleep(RECONCILE_INTERVAL).await;
                membership.reconcile().await;
            }
        }
    });
    let _stop_reconciler = AbortOnDrop(reconciler);
    let native = ShardMasterService::new(Arc::clone(&membership)).into_server();
    let compat = CompatShardMasterService::new(membership).into_server();
    let names = [service_name(&native), service_name(&compat)];
    let routes = Routes::new(native).add_service(compat);
    serve(listener, routes, &names, config.shutdown_grace, shutdown).await
}

/// How often the shard master checks that every member is at the current epoch and has all its
/// slots.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

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
