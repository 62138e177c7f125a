//! The calls one storage server makes to another, as a trait: the protocol code makes them, a
//! binding carries them (gRPC in `kv-server`, memory in tests and the simulator).
//!
//! Every call names its target by its address as a member and takes the longest it may wait for
//! the answer: a call that gets none by then fails with [`Error::Interrupted`], one that cannot
//! reach its target with [`Error::Unavailable`], and the target's own refusals come back as the
//! other variants, with its message. Calls are not retried here: the protocol decides.

use std::time::Duration;

use async_trait::async_trait;
use kv_shard::Slot;
use kv_shard::messages::TransferBatch;

use crate::Error;
use crate::messages::{LeaseGrant, LeaseRequest, Replicate, ReplicateAck};

/// What one storage server sends another.
#[async_trait]
pub trait PeerCalls: Send + Sync + 'static {
    /// A replication batch, from a primary to a secondary (`Node.Replicate`).
    async fn replicate(&self, to: &str, batch: &Replicate, timeout: Duration) -> Result<ReplicateAck, Error>;

    /// A lease, asked of a peer (`Node.Lease`).
    async fn lease(&self, to: &str, request: &LeaseRequest, timeout: Duration) -> Result<LeaseGrant, Error>;

    /// The value of `key`, read at `to`, the primary of its slot (`KeyValue.Get`): a secondary
    /// that holds a write of the key uncommitted asks the primary.
    async fn read(&self, to: &str, key: &str, timeout: Duration) -> Result<Option<String>, Error>;

    /// One batch of a slot hand-off, to the slots' new owner (`Node.Transfer`); returns the
    /// slots it completed that the receiver took exactly as sent.
    async fn transfer(&self, to: &str, batch: &TransferBatch, timeout: Duration) -> Result<Vec<Slot>, Error>;
}
