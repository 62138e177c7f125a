//! The gRPC services, one per file. Each converts wire to domain types at its edge, calls the
//! engine, and maps errors with [`kv_proto::status::status_from_error`], the one mapping.

mod compat_kv;
mod compat_shard_master;
mod key_value;
mod node;
mod shard_master;

pub use compat_kv::CompatKvService;
pub use compat_shard_master::CompatShardMasterService;
pub use key_value::KeyValueService;
pub use node::NodeService;
pub use shard_master::ShardMasterService;

pub use kv_shard::{MasterSettings, ShardMaster};

use kv_core::Error;
use tonic::Status;

/// Maps a data-model error to the status the client gets.
fn to_status(err: Error) -> Status {
    kv_proto::status::status_from_error(&err)
}
