//! Wiring the services into one gRPC server, and its lifecycle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_core::{Limits, MemoryStorage, Storage};
use kv_proto::{compat, v1};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::service::{CompatKvService, KeyValueService};

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
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        <v1::key_value_server::KeyValueServer<KeyValueService> as tonic::server::NamedService>::NAME,
        <compat::kv_store_server::KvStoreServer<CompatKvService> as tonic::server::NamedService>::NAME,
        "",
    ] {
        health.set_service_status(name, ServingStatus::Serving).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Room for the largest request the limits allow, plus framing; larger messages are refused
    // by the transport (OUT_OF_RANGE) before they are read into memory.
    let max_message = (config.limits.max_key_len + config.limits.max_value_len + 64 * 1024).max(4 << 20);
    let key_value =
        KeyValueService::new(Arc::clone(&storage)).into_server().max_decoding_message_size(max_message);
    let compat_kv = CompatKvService::new(storage).into_server().max_decoding_message_size(max_message);

    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        info!("shutting down: refusing new connections, finishing requests in flight");
        for name in [
            <v1::key_value_server::KeyValueServer<KeyValueService> as tonic::server::NamedService>::NAME,
            <compat::kv_store_server::KvStoreServer<CompatKvService> as tonic::server::NamedService>::NAME,
            "",
        ] {
            health.set_service_status(name, ServingStatus::NotServing).await;
        }
        let _ = draining_tx.send(true);
    };

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(key_value)
        .add_service(compat_kv)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = config.shutdown_grace;
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
