//! Every conversion between wire and domain types: requests to data-model values, cluster
//! configurations, the messages of the sharding and replication protocols, and the records kept
//! on disk, both ways.

mod master;
mod node;
mod replica;
mod shard;
mod stored;

pub use master::{
    checked_slots, engine_stats_from_wire, hand_off_copy_from_wire, hand_off_copy_to_wire, install_from_wire,
    install_report_from_wire, install_report_to_wire, install_to_wire, pong_from_wire, pong_to_wire,
    server_status_from_wire, server_status_to_wire,
};
pub use node::{
    checked_sessions, session_from_wire, session_to_wire, slot_from_wire, slots_from_wire,
    transfer_from_wire, transfer_response_from_wire, transfer_response_to_wire, transfer_to_wire,
};
pub use replica::{
    lease_grant_from_wire, lease_grant_to_wire, lease_request_from_wire, lease_request_to_wire,
    replicate_ack_from_wire, replicate_ack_to_wire, replicate_from_wire, replicate_to_wire,
};
pub use shard::{config_from_wire, config_to_wire, replication_from_wire, replication_to_wire};
pub use stored::{decode_master_state, encode_master_state, master_state_from_wire, master_state_to_wire};

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
