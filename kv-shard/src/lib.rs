//! Where keys live: consistent hashing over numbered cluster configurations, and (with the rest
//! of the sharding work) the protocol that moves data when membership changes.
//!
//! # Placement
//!
//! A key belongs to one of [`SLOTS`] hash slots: `xxh3_64(key) mod SLOTS` ([`slot_of`]), a
//! function of the key's bytes alone, stable across processes, platforms and versions. A
//! [`Config`] assigns every slot to one member server, or to none when there is no member. It is
//! numbered by its *epoch*, which grows by one at every change, and it is a pure, deterministic
//! function of the membership history: the same joins and leaves in the same order give the same
//! configuration everywhere.
//!
//! Changes move as little as they can:
//! - a **join** gives the new server `⌊SLOTS / (N+1)⌋` slots, each taken from a server holding the
//!   most slots at that moment; nothing else moves, and nothing moves anywhere but to the new
//!   server;
//! - a **leave** hands each of the leaver's slots to a server holding the fewest slots at that
//!   moment; nothing else moves.
//!
//! Ties go to the oldest member (the one that joined first). So slot counts never differ by more
//! than one between members, and with many slots per server the keys follow the slots: with
//! 4096 slots and up to 16 servers, the most loaded server holds within a few percent of the
//! mean, and a join moves about `K / (N+1)` of `K` keys (both held by the tests below over
//! 100,000 random keys).
//!
//! # Moving data (the protocol the storage servers and shard master follow)
//!
//! The shard master owns the sequence of configurations and changes it one step at a time: a
//! `Join` or `Leave` computes epoch `e+1` from `e`, and returns only when every slot that changed
//! owner is installed at its new owner (with replication, and every copy the change rebuilt has
//! caught up). Changes are serialised: the next one starts after the last has finished. Servers learn configurations by being told (`Node.Install`, pushed by the
//! shard master, which carries the new configuration and its predecessor); a server's slot table
//! is [`Ownership`].
//!
//! For a slot that moves from server `A` to server `B` at epoch `e+1`:
//! 1. The shard master installs `e+1` at every server that sends nothing, `B` among them: `B`
//!    now owns the slot but does not serve it until its data has arrived: requests get a
//!    retryable *moving* error. `A` still serves it under epoch `e`.
//! 2. Then it installs `e+1` at the senders. `A` stops serving the slot: requests for it fail
//!    with *wrong shard*, carrying epoch `e+1` and `B` as the owner. The ownership check and the
//!    operation happen under one read lock, and the switch takes the write lock, so the writes
//!    already admitted finish first: every write `A` *applied* — not only those it acknowledged —
//!    is in the snapshot it then takes, with its exactly-once record.
//! 3. `A` streams the slot to `B` in `Node.Transfer` batches (about 1 MiB of keys each): the
//!    keys, and, in the first batch, the exactly-once records of the moving slots (per client:
//!    the floor, and the answers tagged with these slots). Each batch names the slots it
//!    completes; `B` serves a slot as soon as the batch completing it is in. Merging a client's
//!    records takes the larger floor.
//! 4. Once `B` has acknowledged every batch, `A` drops its copy, and its `Install` returns. (With
//!    replication, `B` acknowledges the batch completing a slot only once the slot's secondaries
//!    have caught up with it: see `kv_replica`'s "Moves".)
//!
//! Invariants:
//! - **One server serves a slot at a time.** `B` starts after it has everything, and `A` stops
//!   before it snapshots. Slots that do not move are never refused; every request pauses only
//!   while a server switches its slot table (for the requests already running to finish) and
//!   while a batch's slots are marked complete. A moving slot is unavailable from `A`'s switch
//!   until its batch is installed at `B`.
//! - **Changes do not overtake each other, and run to their end.** A change is refused
//!   (`UNAVAILABLE`, retry) while a server that answers is behind the current epoch, or waits
//!   for slots, or owes them; a change runs on even if its caller gives up; and a server installs
//!   only the epoch after its own (a server that holds no slot excepted: one that never
//!   installed anything, or one failed over that joins again), so no slot's history is skipped.
//! - **No acknowledged write is lost or applied twice.** Every write `A` applied to the slot is in
//!   the snapshot; the exactly-once records travel with the data, so a client's retry of a write
//!   that `A` applied is answered from the record at `B`, not applied again.
//! - **Batches are idempotent and fenced.** `B` takes a batch only for a slot it is waiting for,
//!   at the batch's epoch, from the slot's previous owner; a resend of a slot already complete is
//!   acknowledged and ignored (so a late duplicate cannot overwrite newer writes); a batch for an
//!   older epoch, or from anyone else, is refused.
//! - **`A` never drops what `B` has not acknowledged**, so a `Leave` that has returned has put
//!   every key of the leaver at its new owners, and a leaver stays up (at shutdown) until its
//!   hand-offs are done.
//! - **Failures are repaired, or reported, never waited on forever.** Moves have timeouts
//!   (`--move-timeout-secs`, `--handoff-timeout-secs`). A hand-off that fails leaves the data at
//!   `A`, which keeps owing it; the change is reported incomplete (`ABORTED`). Every second the
//!   shard master brings members that missed epochs up to date, one epoch at a time from its
//!   history of configurations, and re-installs the current epoch where slots are still owed or
//!   awaited, which resumes the hand-offs. A hand-off still owed when a newer configuration
//!   arrives is carried over to the slots' owners in it, at its epoch (a receiver that already
//!   completed a slot answers "done"); a change does not wait for a server that stops answering. A sender that fails three probes a second apart is
//!   presumed dead: without replication its slots' data is lost with it, so the receivers drop
//!   what part of it arrived and serve them empty, refusing any later batch for them (a sender
//!   that was only cut off keeps its copy), and the change is reported as `DATA_LOSS`, not hidden.
//! - **Only the cluster moves data.** With a cluster token (`--cluster-token`), installs and
//!   transfers that do not carry it are refused (`PERMISSION_DENIED`).
//! - **The last member cannot leave while it holds keys** (nothing could take them): the leave is
//!   refused (`FAILED_PRECONDITION`), a server stopping then stops without leaving, and the shard
//!   master keeps naming it, so clients get errors, never a false "no value". A joiner must hold
//!   no keys unless it is the first member (whose data the cluster adopts), and must answer.
//!
//! Known limits (replication, in `kv_replica`, lifts the first for replication factors of 2 or
//! more: leases fence a server cut off, and secondaries keep copies of moving slots):
//! - Without replication, a server presumed dead while merely cut off keeps serving its old slots
//!   to clients whose map is old (clients refresh only on errors) until the shard master reaches
//!   it again, and the writes it takes meanwhile are not merged back.
//! - The last member's key count is checked just before its leave: a write landing between the
//!   check and the switch is kept in its memory, unserved, and lost when it stops (it is logged).
//! - Safety relies on the engine applying a write and its exactly-once record without yielding,
//!   as the in-memory engine does; a durable engine must keep the two atomic.
//! - The shard master saves what it must not forget ([`MasterState`]) through a [`MasterStore`]
//!   before it acts on it, and a restarted one goes on from there; but over the in-memory store
//!   ([`ShardMaster::new`]) a restart of its process forgets the cluster, and a lost store is
//!   not noticed by the servers (no cluster id yet).
//! - A server that crashes loses its data (the engine is in memory). With replication it is
//!   failed over and joins again when it restarts; without, it is refused as a member already,
//!   and an operator removes it (`kv cluster leave`) first.
//!
//! # The crate
//!
//! No I/O of its own: whoever runs it gives it the calls it makes to other processes
//! ([`transport`]) and a [`clock::Clock`].
//! - Placement: [`Config`] and [`slot_of`]; the roles a configuration gives each server
//!   ([`roles`]); replication settings ([`Replication`]).
//! - The storage servers' side of moving data: their slot table ([`Ownership`]), the cutting of
//!   a hand-off into batches ([`handoff`]), joining and leaving ([`member`]). The storage server
//!   that runs them is `kv_replica::Node`.
//! - The shard master: [`ShardMaster`], its decisions pure and tested with plain values (change
//!   checks, install order, the failure detector, failover planning, catch-up steps), its drivers
//!   carrying them out over [`transport::ServerCalls`]. `kv-server shardmaster` serves it.
//! - [`messages`] are what the shard master and the servers send each other, [`Error`] what can
//!   go wrong, with [`Error::is_retryable`]; [`retry`] is the one backoff policy of the calls.

pub mod clock;
mod config;
mod error;
pub mod handoff;
mod master;
pub mod member;
pub mod messages;
mod ownership;
mod replication;
pub mod retry;
pub mod roles;
pub mod signal;
pub mod transport;

pub use config::{Config, SLOTS, ServerId, Slot, SlotMove, slot_of};
pub use error::{Error, Result};
pub use master::{
    Failover, LONGEST_HOLD_OFF, MasterSettings, MasterState, MasterStore, MemoryMasterStore, ShardMaster,
};
pub use ownership::{Accept, Handoff, Ownership, Refused};
pub use replication::{Consistency, Replication};
