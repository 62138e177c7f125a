//! Wiring the services into one gRPC server, and its lifecycle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_core::{Limits, MemoryStorage, Sessions, Storage};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::service::{
    CompatKvService, CompatShardMasterService, KeyValueService, Membership, ShardMasterService,
};

/// How a storage server is set up.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Size limits on keys and values.
    pub limits: Limits,
    /// How long requests in flight may run on after shutdown begins, before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { limits: Limits::default(), shutdown_grace: Duration::from_secs(10) }
    }
}

/// How a shard master is set up.
#[derive(Debug, Clone)]
pub struct ShardMasterConfig {
    /// How long requests in flight may run on after shutdown begins, before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ShardMasterConfig {
    fn default() -> Self {
        ShardMasterConfig { shutdown_grace: Duration::from_secs(10) }
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
}

/// Serves a standalone storage server, with an in-memory engine, on `listener` until
/// `shutdown` completes; then drains as the crate docs say.
pub async fn run_storage(
    listener: TcpListener,
    config: StorageConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::with_limits(config.limits));
    // Room for the largest request the limits allow, plus framing; larger messages are refused
    // by the transport (OUT_OF_RANGE) before they are read into memory.
    let max_message = (config.limits.max_key_len + config.limits.max_value_len + 64 * 1024).max(4 << 20);
    let key_value = KeyValueService::new(Arc::clone(&storage), Arc::new(Sessions::default()))
        .into_server()
        .max_decoding_message_size(max_message);
    let compat_kv = CompatKvService::new(storage).into_server().max_decoding_message_size(max_message);
    let names = [service_name(&key_value), service_name(&compat_kv)];
    let routes = Routes::new(key_value).add_service(compat_kv);
    serve(listener, routes, &names, config.shutdown_grace, shutdown).await
}

/// Serves a shard master on `listener` until `shutdown` completes.
pub async fn run_shardmaster(
    listener: TcpListener,
    config: ShardMasterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let membership = Arc::new(Membership::new());
    let native = ShardMasterService::new(Arc::clone(&membership)).into_server();
    let compat = CompatShardMasterService::new(membership).into_server();
    let names = [service_name(&native), service_name(&compat)];
    let routes = Routes::new(native).add_service(compat);
    serve(listener, routes, &names, config.shutdown_grace, shutdown).await
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
