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
//! 1. `A` learns epoch `e+1` and stops serving the slot: requests for it fail with *wrong shard*,
//!    carrying epoch `e+1` and `B` as the owner. The ownership check and the write happen in one
//!    step, and `A` waits for the writes already past the check (in-progress tickets) before it
//!    takes the slot's snapshot: every write `A` *applied* — not only those it acknowledged — is in
//!    the snapshot, with its exactly-once record.
//! 2. `A` streams the snapshot to `B` in batches: the slot's keys, and the slot's part of the
//!    exactly-once tables (per client: the floor, and the recorded answers; never in-progress
//!    entries; ages rather than instants). So session records are kept per slot.
//! 3. `B` installs the batches. Until the last batch of a slot is installed, requests for that
//!    slot at `B` fail with a retryable *moving* error; afterwards `B` serves it. Merging a
//!    client's records takes the larger floor.
//! 4. Once `B` has acknowledged the whole slot, `A` drops its copy.
//!
//! Invariants:
//! - **One server serves a slot at a time.** `A` stops before it sends; `B` starts after it has
//!   everything. A slot is unavailable only while its own batches are in flight; slots that do
//!   not move are never blocked.
//! - **No acknowledged write is lost or applied twice.** Every write `A` applied for the slot is
//!   in the snapshot; the exactly-once records travel with the data, so a client's retry of a
//!   write that `A` applied is answered from the record at `B`, not applied again.
//! - **Configurations apply in epoch order.** A server that missed epochs fetches and applies
//!   every one in between, so the shard master keeps the history of configurations (and must
//!   keep it across its own restarts: epochs never go back and member ids are never reused).
//!   Installs are idempotent per (slot, epoch), and `B` refuses a batch for an epoch it has
//!   moved past, so a late resend cannot bring back stale data. Requests carry the client's
//!   epoch, so a lagging server learns that a newer one exists.
//! - **`A` never drops what `B` has not acknowledged**, so a `Leave` that has returned has put
//!   every key of the leaver at its new owners, and the leaver may stop.
//! - **A dead server does not wedge the cluster.** Moves have timeouts, and a change whose move
//!   cannot finish is reported, not waited on forever; without replication, the data of a
//!   server that died is lost, and the shard master says so rather than pretending it is served.
//!   Clients refresh their configuration on connection failures too, since a leaver may stop.
//!
//! This crate holds the placement and (next) the shard master's state machine, with no I/O; the
//! server crate runs them over gRPC.

mod config;
mod error;
mod ownership;

pub use config::{Config, SLOTS, ServerId, Slot, SlotMove, slot_of};
pub use error::{Error, Result};
pub use ownership::{Accept, Handoff, Ownership, Refused};
