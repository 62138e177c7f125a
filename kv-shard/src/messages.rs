//! The messages of the sharding protocol, in domain types: what the shard master sends storage
//! servers (installs, questions, pings, copy hand-offs), what they answer, and the batches one
//! storage server sends another when a slot moves.
//!
//! These are what the transport traits ([`crate::transport`]) carry; their wire forms, and the
//! checks that turn a wire message into one of these, live in `kv-proto`. A value of these types
//! is well formed (every slot is below [`crate::SLOTS`]), whoever built it.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_core::SessionRecord;

use crate::{Config, ServerId, Slot};

/// A configuration to switch to (`Node.Install`), as the shard master pushes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// The configuration to switch to.
    pub next: Config,
    /// Its predecessor at the shard master: where the slots the server gains come from.
    pub previous: Config,
    /// Slots incoming to the server whose sender is gone: serve them without their data.
    pub abandoned: Vec<Slot>,
    /// Slots of a failed primary given to new owners (one of their secondaries): served from
    /// the copy held there, committing the writes prepared, but those in `carried`.
    pub promoted: Vec<Slot>,
    /// Slots whose owner failed before their move to it was over, by the server that still
    /// holds their data and sends them (it may be the new owner itself).
    pub carried: BTreeMap<String, Vec<Slot>>,
    /// The incarnation of the process the shard master means (0: any).
    pub incarnation: u64,
}

/// What an install (or a copy hand-off) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Slots handed off.
    pub slots_sent: u64,
    /// Keys handed off.
    pub keys_sent: u64,
    /// Slots the server lost before their data arrived there.
    pub never_arrived: Vec<Slot>,
}

/// What a storage server holds (`Node.Status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStatus {
    /// Its address as a member ("" for a standalone server).
    pub address: String,
    /// The epoch of the configuration it holds (0: none, or standalone).
    pub epoch: u64,
    /// Whether it is standalone (serves every key, belongs to no cluster).
    pub standalone: bool,
    /// Random, drawn when the process started: tells a restarted server from the one that
    /// joined.
    pub incarnation: u64,
    /// Keys it holds.
    pub keys: u64,
    /// Slots it serves.
    pub serving_slots: u32,
    /// Slots it is waiting for.
    pub incoming_slots: u32,
    /// Slots it stopped serving and still has to hand off.
    pub outgoing_slots: u32,
    /// Slots it is an up-to-date secondary of.
    pub replica_slots: u32,
    /// Slots it is a secondary of still catching up.
    pub syncing_slots: u32,
    /// The hand-offs it still owes, per new owner.
    pub owed: BTreeMap<String, Vec<Slot>>,
    /// The slots it is a secondary of whose copy is not up to date yet.
    pub unready: Vec<Slot>,
    /// Copies it keeps of slots it stopped being a secondary of, by the primary they were
    /// copies of.
    pub retired: BTreeMap<String, Vec<Slot>>,
    /// What its engine has written since it started.
    pub engine: kv_core::EngineStats,
    /// Set while it waits to be taken back as the member it was, with the data it kept.
    pub resume: Option<Resume>,
    /// What the catch-ups it sent its secondaries came to, since it started.
    pub catch_up: CatchUpStats,
}

/// What the catch-ups a primary sent its secondaries came to (see `kv_replica`'s docs,
/// "Catching up"), and the hand-offs it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpStats {
    /// Slots caught up.
    pub slots: u64,
    /// Of those, slots whose copy was equal to the primary's data: nothing was sent.
    pub slots_equal: u64,
    /// Keys sent.
    pub keys: u64,
    /// Bytes of the keys and values sent.
    pub bytes: u64,
    /// Bytes of the digests the secondaries answered.
    pub digest_bytes: u64,
    /// Keys it handed off to slots' new owners (moves, and kept copies sent for a dead primary).
    pub handoff_keys: u64,
    /// Bytes of those keys and values.
    pub handoff_bytes: u64,
}

impl CatchUpStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &CatchUpStats) {
        self.slots += other.slots;
        self.slots_equal += other.slots_equal;
        self.keys += other.keys;
        self.bytes += other.bytes;
        self.digest_bytes += other.digest_bytes;
        self.handoff_keys += other.handoff_keys;
        self.handoff_bytes += other.handoff_bytes;
    }
}

/// What a server restarted with its data kept says of it: the member it was, and where it
/// stood when it stopped. The shard master takes it back in place ([`Config::readmit`]) if its
/// slots are still where they were then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The member id it had.
    pub member: ServerId,
    /// The epoch of the last configuration it installed.
    pub epoch: u64,
    /// Whether, at that epoch, every slot it owned had arrived and it owed no hand-off: only
    /// then is its data that of its slots, whole.
    pub whole: bool,
}

/// A storage server's answer to a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The epoch it holds.
    pub epoch: u64,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its peers it has heard nothing from lately, not even a refusal (see `kv_replica`'s docs,
    /// "A link cut between two live servers").
    pub unheard: Vec<UnheardPeer>,
    /// Its peers that answered it lately (an answer or a refusal from the process), and how
    /// long ago: a member that does not answer the shard master may still be alive.
    pub heard: Vec<HeardPeer>,
    /// Set while it waits to be taken back as the member it was ([`ServerStatus::resume`]).
    pub resume: Option<Resume>,
}

/// A peer a storage server heard from lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeardPeer {
    /// Its address as a member.
    pub peer: String,
    /// How long ago its last answer came.
    pub ago: Duration,
}

/// A peer a storage server has heard nothing from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnheardPeer {
    /// Its address as a member.
    pub peer: String,
    /// For how long: from the first unanswered request since its last answer to the latest.
    pub unheard_for: Duration,
}

/// Asks a former secondary of `slots` to send the copy it kept (`Node.HandOffCopy`), in place of
/// their primary `sender`, which died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOffCopy {
    /// The epoch of the move.
    pub epoch: u64,
    /// The primary that died.
    pub sender: String,
    /// The new owner.
    pub to: String,
    /// The slots.
    pub slots: Vec<Slot>,
    /// Instead: the slots did not move; `to` is a secondary of them still catching up under
    /// `sender`, and the copy goes to it as the snapshot `sender` would have sent.
    pub as_snapshot: bool,
}

/// One batch of a slot hand-off (`Node.Transfer`), from the slots' previous owner to the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferBatch {
    /// The epoch the move belongs to.
    pub epoch: u64,
    /// The sender's address, as a member.
    pub from: String,
    /// Keys of the slots being moved, with their values.
    pub entries: Vec<(String, String)>,
    /// Exactly-once records of the slots being moved.
    pub sessions: Vec<SessionRecord>,
    /// The slots whose data is complete with this batch.
    pub complete: Vec<Slot>,
}
