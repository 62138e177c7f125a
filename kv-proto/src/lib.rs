//! The kv store's wire: protobuf messages and tonic services, generated at build time from
//! `proto/` (with protox, so no system `protoc` is needed), and the one place where wire types
//! meet the data model.
//!
//! - [`v1`]: the native API, package `kv.v1`.
//! - [`compat`]: the course assignment's services, without a package, served for its clients.
//! - [`status`]: [`kv_core::Error`] ⇄ [`tonic::Status`], in one pair of functions.
//! - [`convert`]: requests to [`kv_core::Mutation`]s, compatibility keys to native keys, and
//!   cluster configurations ([`kv_shard::Config`]) both ways.
//!
//! Domain crates never see these types: servers and clients convert at their edge.

pub mod convert;
pub mod status;

/// The native API, package `kv.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("kv.v1");
}

/// The course assignment's services (no protobuf package: RPC paths are `/KVStore/<Rpc>`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod compat {
    tonic::include_proto!("_");
}

/// The encoded `FileDescriptorSet` of every service, imports included, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_descriptor.bin"));
