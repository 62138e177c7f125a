//! The kv store's server: binds the storage node ([`kv_replica::Node`]) and the shard master
//! ([`kv_shard::ShardMaster`]) to gRPC, and nothing else.
//!
//! This is the only crate that owns sockets. The protocols live in their crates, behind traits:
//! each service here converts the wire to domain types (`kv_proto::convert`), calls the library,
//! and maps its answer back (`kv_proto::status`); [`transport::GrpcTransport`] carries the
//! libraries' calls to other servers over tonic clients, with the cluster token.
//!
//! A storage server serves, on one port:
//! - `kv.v1.KeyValue`, the native API ([`service::KeyValueService`]);
//! - `kv.v1.Node`, the cluster's internal RPCs ([`service::NodeService`]);
//! - `KVStore`, the course assignment's API, for its clients ([`service::CompatKvService`]);
//! - `grpc.health.v1.Health`, and server reflection (v1 and v1alpha), so that standard tools
//!   (`grpcurl`, `grpc_health_probe`, load balancers) work against it.
//!
//! A storage server keeps its values in memory, or durably in a data directory
//! ([`StorageData`], `kv_core::disk`).
//!
//! A shard master serves `kv.v1.ShardMaster` and the assignment's `ShardMaster`
//! ([`service::ShardMasterService`], [`service::CompatShardMasterService`]) over one
//! [`service::ShardMaster`], with the same health and reflection services; with a data directory
//! it keeps its state there ([`master_store::FileMasterStore`]) and goes on from it when it
//! restarts.
//!
//! [`run_storage`] and [`run_shardmaster`] take a bound listener and a shutdown future, so tests start servers on
//! `127.0.0.1:0` and stop them on cue; the `kv-server` binary parses flags, binds, and calls it.
//!
//! Shutdown is graceful: when the shutdown future completes the health service reports
//! `NOT_SERVING`, the listener stops accepting, requests in flight finish, and after
//! [`StorageConfig::shutdown_grace`] whatever is left is dropped.

pub mod master_store;
pub mod service;

mod server;
pub mod transport;

pub use server::{
    ClusterMembership, ServeError, ShardMasterConfig, StorageConfig, StorageData, run_shardmaster,
    run_storage,
};
