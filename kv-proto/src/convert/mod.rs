//! Wire requests to data-model values, and cluster configurations both ways.

mod node;
mod shard;

pub use node::{session_from_wire, session_to_wire, slot_from_wire, slots_from_wire};
pub use shard::{config_from_wire, config_to_wire, replication_from_wire, replication_to_wire};

use kv_core::Mutation;

use crate::v1;

/// The native key a compatibility `uint32` key stands for: its decimal digits (`42` → `"42"`).
pub fn compat_key(key: u32) -> String {
    key.to_string()
}

/// The exactly-once identity of a write, if it has one (client 0 means none).
pub fn request_id(id: Option<&v1::RequestId>) -> Option<kv_core::RequestId> {
    id.filter(|id| id.client != 0).map(|id| kv_core::RequestId {
        client: id.client,
        seq: id.seq,
        first_unanswered: id.first_unanswered,
    })
}

impl From<v1::PutRequest> for Mutation {
    fn from(req: v1::PutRequest) -> Self {
        Mutation::put(req.key, req.value)
    }
}

impl From<v1::AppendRequest> for Mutation {
    fn from(req: v1::AppendRequest) -> Self {
        Mutation::append(req.key, req.value)
    }
}

impl From<v1::DeleteRequest> for Mutation {
    fn from(req: v1::DeleteRequest) -> Self {
        Mutation::delete(req.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_keys_are_decimal_strings() {
        assert_eq!(compat_key(0), "0");
        assert_eq!(compat_key(42), "42");
        assert_eq!(compat_key(u32::MAX), "4294967295");
    }
}
