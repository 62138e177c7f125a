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
//! owner is installed at its new owner. Changes are serialised: the next one starts after the
//! last has finished.
//!
//! For a slot that moves from server `A` to server `B` at epoch `e+1`:
//! 1. `A` learns epoch `e+1`, stops serving the slot (requests for it fail with *wrong shard*,
//!    carrying epoch `e+1` and `B` as the owner), and streams the slot's keys to `B` in batches,
//!    each with the slot's exactly-once table (the last sequence number and result per client).
//! 2. `B` installs the batches. Until the last batch of a slot is installed, requests for that
//!    slot at `B` fail with a retryable *moving* error; afterwards `B` serves it.
//! 3. Once `B` has acknowledged the whole slot, `A` drops its copy.
//!
//! Invariants:
//! - **One server serves a slot at a time.** `A` stops before it sends; `B` starts after it has
//!   everything. A slot is unavailable only while its own batches are in flight; slots that do
//!   not move are never blocked.
//! - **No acknowledged write is lost or applied twice.** Every write `A` acknowledged for the slot
//!   happened before it stopped, so it is in the snapshot it sends; the exactly-once table travels
//!   with the data, so a client's retry of a write that `A` applied is answered from the table at
//!   `B`, not applied again.
//! - **Configurations apply in epoch order**, and installs are idempotent per (slot, epoch): a
//!   batch sent twice (after a lost acknowledgement) changes nothing the second time.
//! - **`A` never drops what `B` has not acknowledged**, so a `Leave` that has returned has put
//!   every key of the leaver at its new owners, and the leaver may stop.
//!
//! This crate holds the placement and (next) the shard master's state machine, with no I/O; the
//! server crate runs them over gRPC.

mod config;
mod error;

pub use config::{Config, SLOTS, ServerId, Slot, SlotMove, slot_of};
pub use error::{Error, Result};
