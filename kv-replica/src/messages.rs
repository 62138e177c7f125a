//! The messages one storage server sends another to keep copies in step, in domain types:
//! replication batches and leases. (The hand-off of a moving slot, `TransferBatch`, is
//! sharding's: [`kv_shard::messages`].)
//!
//! These are what [`crate::transport::PeerCalls`] carries; their wire forms, and the checks that
//! turn a wire message into one of these, live in `kv-proto`. A value of these types is well
//! formed (every slot below [`kv_shard::SLOTS`]), whoever built it.

use std::time::Duration;

use kv_core::SessionRecord;
use kv_shard::Slot;

use crate::digest::{SlotDigest, SnapshotScope};
use crate::secondary::ReplicatedWrite;

/// How a secondary takes the writes of a [`Replicate`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteKind {
    /// Apply at once (eventual mode, and background flushes).
    #[default]
    Apply,
    /// Strong mode: hold as uncommitted until a commit names it.
    Prepare,
    /// Catch-up snapshot: apply unless the key was written since the catch-up began.
    Snapshot,
}

/// One write of a slot, as a primary sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWrite {
    /// The slot the key is in.
    pub slot: Slot,
    /// The write: the key's value after it, its number, its exactly-once record.
    pub write: ReplicatedWrite,
    /// Strong mode: earlier writes of the same key the primary prepared but never applied;
    /// the secondary drops them.
    pub aborted: Vec<u64>,
}

/// A prepared write the primary has committed (and applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Its slot.
    pub slot: Slot,
    /// Its number in the slot.
    pub seq: u64,
}

/// One replication batch from a primary (`Node.Replicate`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicate {
    /// The sender's epoch.
    pub epoch: u64,
    /// The sender's address as a member.
    pub from: String,
    /// The writes, in the primary's order.
    pub writes: Vec<SlotWrite>,
    /// How to take `writes`.
    pub kind: WriteKind,
    /// Strong mode: prepared writes the primary has committed.
    pub commits: Vec<Committed>,
    /// Catch-up: slots whose snapshot is complete once this batch is in.
    pub synced: Vec<Slot>,
    /// Catch-up: the exactly-once records of the slots of the snapshot (in its first batch).
    pub sessions: Vec<SessionRecord>,
    /// Catch-up: slots whose copy's digest the primary asks for, before it sends what differs.
    pub digest: Vec<Slot>,
    /// Catch-up: what the snapshot of each slot in `synced` sent whole (a slot without one:
    /// every key, [`SnapshotScope::whole`]).
    pub scopes: Vec<SnapshotScope>,
}

/// What a secondary answers a [`Replicate`] batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicateAck {
    /// Snapshot batches: the slots it did not take, because it still hands them off; the
    /// primary sends their snapshot again later, whole.
    pub refused: Vec<Slot>,
    /// The digests asked for (`Replicate::digest`) of the copies catching up that take the
    /// sender's snapshot; a slot left out gets every key.
    pub digests: Vec<SlotDigest>,
}

/// A request for a lease (`Node.Lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The caller's address as a member.
    pub from: String,
    /// The caller's epoch.
    pub epoch: u64,
}

/// A lease granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The epoch the grantor holds.
    pub epoch: u64,
    /// How long the lease lasts, from when the caller sent the request.
    pub lease: Duration,
}
