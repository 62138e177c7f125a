//! The primary/secondary replication protocol of the kv store, and the storage server that runs
//! it: replica sets, strong and eventual consistency, catching up, leases and failover, and the
//! hand-off of slots that move.
//!
//! # The crate
//!
//! - [`Node`] is a storage server: the engine, the exactly-once sessions, the slot table, and
//!   the replication and hand-off protocols, driven over [`transport::PeerCalls`] (its calls to
//!   other servers) and a [`kv_shard::clock::Clock`]. A binding serves its methods (`kv-server`
//!   over gRPC); `testing::MemoryNetwork` (feature `testing`) runs nodes and a shard master in
//!   one process.
//! - The decisions are pure, and tested with plain values: [`secondary`] (a secondary's state for
//!   one slot: prepared writes, dirty keys, catch-up), [`sequence`] (a primary's numbering and
//!   aborted writes), the roles a configuration gives each server ([`kv_shard::roles`]), and the
//!   node's plans at an install (what becomes of each copy, which slots are fenced until when,
//!   where owed hand-offs go).
//! - [`messages`] are what servers send each other, [`Error`] what can go wrong, with
//!   [`Error::is_retryable`].
//!
//! **Status.** Replica sets, both consistency levels, catch-up across joins and leaves, leases,
//! failover and rejoining are built; the known limits are listed at the end.
//!
//! # Replica sets
//!
//! A configuration gives every slot a *replica set* of `R` distinct members (`R` =
//! `--replication-factor`, default 3, fewer while there are fewer members): the slot's owner as
//! in sharding (balanced, minimal movement) is its **primary**, and its **secondaries** are the
//! next `R − 1` members after the primary in member-id order, wrapping around
//! ([`kv_shard::Config::replicas_of_slot`]). Every server is primary for about `1/N` of the slots
//! and secondary for about `(R − 1)/N`: none idles as a pure backup (as in Dynamo or TiKV,
//! rather than the assignment's fixed groups). The replication settings travel in every
//! configuration, so every server replicates the same way.
//!
//! Writes go to the primary, which is the only server that admits them (others answer *wrong
//! shard*, naming it). Reads may go to any *ready* replica.
//!
//! # Writes
//!
//! The primary serialises the writes of a slot (an async lock per slot, held while the write is
//! replicated) and numbers them: `seq`, growing. It sends each secondary the key's **value
//! after the write** (or its absence), never the operation: applying a write twice, or after a
//! snapshot that already holds it, changes nothing, and an append or a pop is computed once, at
//! the primary. The write's exactly-once record travels with it, so the secondaries know the
//! answer too.
//!
//! A secondary accepts a slot's writes only from the server that is the slot's primary in the
//! configuration the secondary holds, and only for slots it is a secondary of; a sender at a
//! newer epoch is told to retry once the secondary has caught up with it.
//!
//! # Strong consistency (CRAQ-style clean and dirty keys)
//!
//! 1. The primary computes the new value from its committed state, without applying it.
//! 2. It *prepares* the write at every secondary: each holds it as pending, and the key becomes
//!    **dirty** there.
//! 3. Once every secondary has acknowledged, the primary applies the write: this is the
//!    write's linearization point. It then answers the client, and tells the secondaries that
//!    `seq` is committed (in the background, batched). A secondary applies a committed write to
//!    its engine, and drops older pending writes of the same key (they were committed before,
//!    or never will be).
//!
//! So every engine, at the primary and at the secondaries, holds only committed values, and a
//! write the primary has applied is pending or applied at every secondary. A read:
//! - at the primary returns its engine's value;
//! - at a secondary whose key is clean returns its engine's value;
//! - at a secondary whose key is dirty asks the primary (CRAQ's version query, reduced to a
//!   read at the primary), and returns its answer.
//!
//! Why no read goes back in time: a clean read at a secondary returns a committed value, and
//! misses only writes the primary had not applied when the read checked the key (every write
//! the primary applied was pending here by then, which makes the key dirty). Such a write is
//! concurrent with the read, which is linearized before it. A read that found the key dirty is
//! a read at the primary. The checker in `kv-eval` tests this over real histories.
//!
//! A prepare that fails leaves the write unapplied at the primary (the client gets an error and
//! may retry). (A write runs on a task of its own, to its end, even if its client gives up and
//! the call is dropped: a durable engine yields while it applies.) The secondaries that
//! prepared it keep the key dirty, and reads ask the primary, until a later write of the key
//! commits. The primary remembers such an *aborted* write, and
//! the next prepare of the same key names it: every secondary that takes that prepare drops it.
//! Otherwise a takeover, which commits every prepared write in order, could commit it (with its
//! exactly-once record, which would answer its client's retry "done") under a later write that
//! was computed without it, and lose it. A secondary ignores a prepare older than the newest it
//! holds (the primary prepares a slot's writes one at a time: it is a late duplicate).
//! Nor does it take a write or a commit notice sent at an epoch before its copy began following
//! the slot's current primary (the epoch of its catch-up, or of the hand-off that made it
//! one): under the same address, that comes late from an earlier process there, one that
//! crashed and was restarted, whose numbers are not the current primary's.
//!
//! # Eventual consistency
//!
//! The primary applies the write at once, then sends its value to the first `k` secondaries
//! (`--sync-replicas k`, `0 ≤ k < R − 1`), which apply it at once, and answers when they have.
//! While one of those is still catching up (it is owed a snapshot of the slot), the write goes
//! synchronously to the next secondaries too, until `k` up-to-date copies hold it: a failover
//! promotes an up-to-date copy before one still catching up, and that copy must hold every
//! acknowledged write.
//! A retry answered from the exactly-once record (its first attempt was applied here but failed
//! to reach them) first sends them the key's value too: an acknowledged write is always held by
//! the synchronous secondaries, which a failover promotes first.
//! The other secondaries get the slot's written keys in the background: the primary remembers
//! which keys each of them is owed and, at least every `--sync-interval` (2 s), sends their
//! current values, one batch after the other, with the exactly-once records of their slots. A
//! slot's values and records are read together under its write lock, so they match: every write
//! a value holds comes with its record (a secondary promoted later answers its retry instead of
//! applying it again), and no record comes without its write's value (which would answer a
//! retry "done" without the write). So each replica applies each key's values in the
//! primary's order, and after writes stop every replica equals the primary within one interval
//! plus the transfer. Reads at a secondary return what it holds: they can be stale.
//!
//! # Catching up
//!
//! When a configuration makes a server the secondary of a slot whose copy it cannot keep up to
//! date (it is new to the slot, the slot has a new primary, the server was restarted, or in
//! eventual mode it becomes a synchronous secondary from a background one: [`keeps_copy`]), the
//! server starts **syncing** the slot, and the primary owes it a catch-up. What the server held
//! of the slot stays as the copy's *base*: it serves no reads, and only what differs from the
//! primary's data is sent (a server that held nothing gets everything).
//! 1. From the moment the primary installs the configuration, the syncing secondary receives
//!    every write of the slot, as any secondary does, and applies the committed ones. A key
//!    such a write reaches is *touched*: its value here is the primary's from then on.
//! 2. Once the primary serves the slot (after a resharding move, once the slot's data has
//!    arrived), it asks the secondary for a **digest** of its copy ([`digest`]): the copy's keys
//!    are spread over `B` buckets by a hash of the key (`B` grows with the copy's size, about
//!    a KiB of keys and values per bucket, up to 1024), and each bucket is summed by SHA-256 over its keys and values in key
//!    order. The primary sums its own data of the slot in the same buckets.
//! 3. Under the slot's write lock (that slot's writes wait, no other's), it sums its own data
//!    of the slot in the copy's buckets, and reads every key of each bucket whose sums differ
//!    (a slot without a digest, or when the secondary did not answer in time: every key), with
//!    the slot's exactly-once records. It sends them as *snapshot* entries, in batches, the
//!    slot's first one with its records and its *scope* (the buckets sent whole; the copy's
//!    keys in the others are the primary's from then on). A syncing secondary applies a
//!    snapshot entry only if its key is untouched (the write is newer than the entry, or as
//!    new), and notes the key as *received*.
//! 4. The last batch marks the slot *synced*. The secondary deletes every key of the buckets of
//!    the scope it holds that is neither touched nor received (the primary did not have it),
//!    and is ready: it serves reads. A copy taken over before that (its primary failed) keeps
//!    only the keys it holds as the primary had them: touched, received, prepared, or in a
//!    bucket found equal.
//!
//! Why the copy then equals the primary's data: take a key no write has reached since the
//! catch-up began. Its value at the primary has not changed since then either (every write of
//! the slot since reaches this secondary). If its bucket's sums were equal, the secondary's
//! bucket held exactly the primary's keys and values (SHA-256 does not collide), so its value
//! here, which nothing changed since (snapshot entries of it are the same value), is the
//! primary's, or both lack the key. If they differed, the entry sent is the primary's value, or,
//! if the primary did not have the key, it is deleted at step 4. A touched key holds the value of
//! the last write that reached it, which is the primary's (each key's writes arrive in the
//! primary's order). A key received from an earlier, interrupted send, and missing from a later
//! one, was deleted at the primary since: that was a write, so the key is touched.
//!
//! The copy's own exactly-once records are dropped when it starts syncing; the slot's come with
//! the first batch of its snapshot, read with its values (and the sums that decide what is sent)
//! under its write lock, so that they match: every write a value holds has its record (a copy
//! that was still handing the slot off refused the slot's writes until then, and gets them only
//! this way), and every record its write's value, sent or found equal. A slot whose first batch
//! is refused is not sent further. The keys of a slot that are sent are read into memory whole.
//!
//! A slot this server is handing off (it was the primary and now is a secondary) is *awaiting*
//! until the hand-off has dropped its old copy, and syncing after.
//!
//! # Failures: leases between replicas, failover by the shard master
//!
//! **Leases.** Every server that shares slots with another as primary and secondary (its
//! *peers*: with ring placement, the `R − 1` members on either side of it in id order) asks
//! each peer for a lease every 100 ms. A grantor answers only a requester that is its peer in the
//! configuration it holds *and at the same epoch*, and *promises* it `T` (the lease time,
//! 500 ms) from when it received the request; the requester counts its lease from when it *sent*
//! the request, so its lease ends before the promise does, and counts it only at that epoch. What
//! a promise means:
//! - a secondary's promise to its primary `P`: it will not take writes of `P`'s slots as their
//!   new primary before the promise ends;
//! - a primary's promise to its secondary `S`: it will not commit a write of a slot of `S`'s
//!   without `S` before the promise ends.
//!
//! So:
//! - a **primary** admits writes, and in strong mode serves reads, only while it holds a lease
//!   from every secondary of the slot at its epoch: none of them can have taken the slot over;
//! - a **secondary** serves strong reads only while it holds a lease from the slot's primary at
//!   its epoch, which cannot have committed a write it missed;
//! - when an install removes a secondary from a slot, or makes this server the slot's primary in
//!   place of a failed one, the slot's writes and reads wait until the promise to that server
//!   has ended (a *fence*, at most `T`); a primary hands a slot off (resharding) only once its
//!   promises to the slot's secondaries have ended, so the new owner cannot commit a write that
//!   an old secondary could miss.
//!
//! A grant reads the configuration and records its promise under the lock an install takes
//! (after switching its configuration) to set the fences: a promise is either made at the new
//! epoch or counted by the fences. A server cut off from its peers loses its leases within `T`
//! and stops; one cut off only from the shard master keeps them, and serves on.
//!
//! **Failover.** The shard master pings every member every 100 ms. A member that has not
//! answered for `--failure-timeout-ms` (800 ms) is *failed*: a new configuration without it
//! gives each of its primary slots to one of the slot's secondaries, and the replica sets refill
//! along the ring; the new primaries are told these slots are *promoted*: they serve them from
//! their copy, committing the writes they hold prepared (each may have been acknowledged). The
//! epoch grows; clients follow on their next error. With the default timeouts a failover takes
//! about the failure timeout plus one install: about 0.9 s.
//!
//! A member silent to the shard master that another member, which answers, heard from within
//! the last 300 ms (an answer to a lease renewal or a hand-off batch; every `Pong` lists the
//! peers heard lately) is *vouched for*, for half a timeout: it is failed only once silent for
//! three failure timeouts. A failover of a live member leaves its slots one up-to-date copy
//! short while the others catch up, so under message loss on the shard master's links, false
//! failovers followed by a real crash lost acknowledged writes. A crashed, paused or isolated
//! member is heard by no one, and is failed after the failure timeout as before. A failover
//! that waited for a change in progress pings the member once more first, and drops a verdict
//! the member has since answered.
//!
//! Which secondary ([`heirs`]): the shard master asks the members which of their copies are
//! still catching up (`Status`; only answers at the epoch being failed over count, and a slow
//! server is asked again, longer), and gives each slot to its first secondary whose copy is up to
//! date — in eventual mode a synchronous one first, then any. A copy catching up (a server that
//! has just joined, say) is passed over while an up-to-date one exists. In eventual mode a
//! background copy is never promoted while a synchronous secondary of the slot gives no answer:
//! that one may be slow only, and hold the last acknowledged writes alone. The failover is
//! refused and tried again by the detector, which decides once that secondary answers (a copy
//! restarted empty answers too) or is failed itself. A secondary whose slot
//! leaves it at a change (the slot moves, or the change gives it another secondary) keeps its
//! copy until the next configuration: if no secondary of a failed primary's slot is up to date
//! (with two copies of each slot, a join or leave replaces the only one), such a former
//! secondary sends its copy to the first secondary as the snapshot the primary would have sent,
//! which makes it up to date, before the failover. With neither, the slot goes to its first
//! secondary and what its copy had not received yet is lost (logged as an error).
//!
//! Catch-up snapshots carry the slots' exactly-once records, so a promoted copy answers the
//! retry of a write it only ever saw in a snapshot.
//!
//! Strong mode loses no acknowledged write: a write is acknowledged only after every secondary
//! held it (prepared or applied). Eventual mode promotes an up-to-date synchronous secondary,
//! which holds every acknowledged write, when `--sync-replicas` is 1 or more; with 0 it loses the
//! writes the old primary acknowledged that no background flush had carried yet (up to one sync
//! interval).
//!
//! With a replication factor of 1 no member is failed (its slots have no other copy): they are
//! unavailable until it comes back, as in sharding.
//!
//! **A link cut between two live servers.** Leases stop both ends of a cut link: a primary that
//! cannot reach a secondary admits no writes of the slots they share, and the secondary serves
//! no strong reads of them, while both answer the shard master's pings, which alone would fail
//! neither. So every server tells the shard master, in each answer to its pings, which of its
//! peers it has heard nothing from (not even a refusal) and for how long, counted between the
//! lease requests sent one after the other that went unanswered (a process paused in the middle
//! of a request was not cut off: its next request is answered). When a member that answers
//! reports another member that answers as unheard for longer than the failure timeout, the
//! shard master fails one of the two over, as if it had gone silent (a change in progress does
//! not wait for it either): the one cut off from the most members, and between equals the newer
//! member (the later in member order; a joiner rather than a member holding data). A sender
//! that hears nothing from its receiver while both answer the shard master is presumed dead for
//! the change, as a silent one: its slots' secondaries send their copies in its place. The slots of the cut pair go
//! without writes for about the failure timeout, a lease and a failover (2 to 3 s with the
//! defaults; the simulator holds it to 4 s). The server failed over learns it and joins again,
//! but not at once: the shard master refuses the join of a server it failed for a cut link for
//! 2 s, twice as long each time it does so again within two minutes, up to 30 s. A link
//! that stays cut costs the slots of the pair a gap of writes per round, never a stall.
//!
//! **Moves.** A failure in the middle of a move loses nothing, whichever server it hits:
//! - *The sender dies.* When a slot moves away from its primary (a join or a leave), its
//!   secondaries keep a copy of it (prepared writes included) until the next configuration. If
//!   the primary dies before its hand-off is done, the shard master has one of them send that
//!   copy to the new owner in its place.
//! - *The receiver dies.* A sender keeps a slot's data until the receiver acknowledges it, and a
//!   receiver acknowledges a hand-off's last batch only once the slot's secondaries (but the
//!   sender) have caught up with it: so at every moment either the sender still holds the slot,
//!   or an up-to-date secondary does (and is promoted, as above). Every sender reports what it
//!   still owes (`Status.owed`; one that has not switched to the change yet counts as owing its
//!   moves). When the receiver fails, those slots go to its heir *carried*: the heir expects them
//!   from the sender, not from the failed receiver (or serves them at once if it is the sender
//!   itself). The heir's own copy of such a slot holds the writes the receiver took after the
//!   data arrived (prepared at every secondary, in strong mode), so it keeps its value for every
//!   key written since its catch-up began and takes the sender's for the others: the sender's
//!   copy is exactly what the receiver started from. An heir whose copy is up to date keeps it
//!   whole, and acknowledges the sender's batches without applying them.
//! - *The sender stays a secondary.* In strong mode, a sender that stays a secondary of a slot
//!   it sent keeps the data as its copy, up to date at once, when the receiver says it took the
//!   slot exactly as sent (`TransferResponse.verbatim`, told on every answer, a resend's too):
//!   the receiver could commit no write of the slot meanwhile, since that secondary refused to
//!   prepare them while its hand-off ran. (In eventual mode the receiver applies a write before
//!   replicating it, so the sender's copy catches up instead.)
//! - *Another member dies.* A hand-off still owed when a configuration arrives carries over to
//!   the slot's owner in it (the same receiver, mostly), at the new epoch; a hand-off of an older
//!   epoch that is still retrying gives way to the newer install at once. A receiver that had
//!   already completed a slot answers the carried-over batches "done". The shard master installs
//!   a failover's configuration at every server that still owes slots, members or not (a leaver
//!   handing off), and watches those until they owe nothing.
//! - A change does not wait for a server that stops answering in the middle of it, or answers
//!   as a new process (it restarted empty): it is reported incomplete, and the failover follows
//!   at once. A change is over once the copies it
//!   reset have caught up (the next one is refused until then), so that the copies former
//!   secondaries kept, a leaver's among them, are there for as long as they may be needed.
//!
//! **Restarts.** A server draws a random *incarnation* when its process starts, and the shard
//! master records it when the server joins. A member answering with another incarnation has
//! restarted. One that kept nothing (in memory, or a new data directory) lost what it held: it is
//! failed over (never caught up as if it were its former self), installs meant for its former
//! self are refused, and it joins again as a new member.
//!
//! A durable server (one that keeps its data on disk) writes, with each configuration it
//! installs, a *membership record* beside its data: its address, its member id, the epoch, and
//! whether its data was *whole* then (every slot it owns had arrived, it owed no hand-off); it
//! writes it again once its hand-offs end. Restarted over such a record, it serves nothing and
//! says what it kept in its pings and status; the shard master does not fail it over for the
//! restart, and its join asks to be **taken back in place**. The shard master does so only if it
//! is still that member, its data was whole, and it has owned exactly the same slots in every
//! configuration since its record's epoch (all kept): then no write of its slots was committed
//! anywhere without it (a primary applies a strong or synchronous write before it is
//! acknowledged, and the engine syncs it first with `--fsync always`; a killed process loses
//! nothing the engine was handed, at any policy), so its disk holds every acknowledged write of
//! its slots. The new configuration has the same members and slots, with the member marked as
//! taken back at its epoch ([`kv_shard::Config::restarted_at`]); [`keeps_copy`] is false for
//! every copy the member held, or fed as primary, across that mark. So, at the install:
//! - the member serves its primary slots from its disk at once (the slots are its own in both
//!   configurations), drops the keys of slots it has no role in, and catches its copies up from
//!   their primaries (only what they changed while it was down is sent); its exactly-once
//!   records were read back from the disk at start-up;
//! - the secondaries of its slots catch up from its data (dropping whatever the old process left
//!   prepared there, applied or not: a write the old process had prepared but not applied was
//!   never acknowledged), and are sent only what differs;
//! - nothing is fenced: the old process's promises died with it, and the new one commits only
//!   with prepares at the new epoch, which a secondary takes only once it has reset its copy.
//!
//! Otherwise (its slots changed meanwhile, it stopped in the middle of a hand-off, it is no longer
//! a member), it is failed over if still a member, and joins as a new member: at that install it
//! drops everything it kept, exactly-once records included.
//!
//! **A whole-cluster crash.** With every member down at once, no failover can run: a slot goes to
//! a secondary only if one that answers is up to date, and when none is, and the members keep
//! their data on disk, the failover waits for the member to come back rather than promote a copy
//! that lacks what its disk holds. Each member that restarts is taken back in place; the copies
//! catch up once their primaries are back. A server given a data directory written under another
//! address refuses to start.
//!
//! A failed server that was only cut off learns it was failed from the next configuration it is
//! given, drops its stale copies, and joins again too: the shard master keeps trying to bring it
//! up to the epoch that failed it over until it answers there.
//!
//! # Determinism
//!
//! Given the same calls, answers and times, a node does the same thing: its `select!`s are
//! `biased` (the first ready branch wins, where tokio would pick at random), and the maps and
//! sets it iterates are ordered. This is what lets the simulator in `kv-eval` replay a run from
//! its seed.
//!
//! # Known limits
//!
//! - A failover with no up-to-date copy of a slot left loses what the promoted copy had not
//!   received yet. Under one failure this does not happen: after a join or leave, every slot
//!   has an up-to-date secondary, or its sender still holds it, or a former secondary kept its
//!   copy (see "Failover" and "Moves").
//! - A sender that is cut off only from the shard master, during its hand-off, is presumed dead:
//!   its batches and a secondary's copy may both reach the new owner (the copy holds every
//!   write the sender acknowledged). Likewise a receiver cut off only from the shard master may
//!   finish receiving a slot after the shard master asked who still owes it: its heir then serves
//!   the slot from its own copy, which is up to date (the receiver acknowledged only once it was).
//! - The guarantees above are for one failure at a time: a second failure in the middle of a
//!   first one's repair (say, the sender of a carried hand-off dying before it is done, or not
//!   answering the failover's questions) can lose the slots concerned.
//! - A storage error in the middle of an install (impossible with the in-memory engine) could
//!   leave its replication state half switched.
//! - A catch-up reads the keys of a slot it sends into memory, under the slot's write lock (the
//!   slot's writes wait meanwhile); a slot is about 1/4096 of a server's data. A server that
//!   joins again as a new member after a failover is sent the slots it owns whole (hand-offs
//!   move whole slots); only its copies catch up by digest.
//! - A copy catching up that also gets a former secondary's kept copy (sent whole, for a primary
//!   that died during a move) takes its entries for keys no write has reached, in buckets the
//!   primary found equal too.
//! - Taking a member back trusts its disk: with `--fsync interval` or `never`, a crash of its
//!   machine (not of its process) may have lost its last acknowledged writes, which its
//!   secondaries, reset from its data, then lose too. `always` (the default) has no such window.
//! - A member taken back while a hand-off elsewhere is unfinished ends the copies kept for that
//!   hand-off's sender (the next configuration ends them), and the failover that follows plans
//!   from the moves of the taking back, which are none: if that sender then dies, the slots it
//!   still owed are lost (two failures at once, as below). A durable member that never
//!   comes back, when no up-to-date copy of some of its slots answers, holds those slots (and
//!   every later change) until it does.
//! - A strong write prepared at a secondary is held in memory there, not on its disk: a
//!   secondary that restarts never counts on what it held (its copies are rebuilt from their
//!   primaries), but a whole-cluster crash that also takes a primary's disk loses the writes only
//!   its secondaries held prepared.
//! - Eventual mode applies a key's background values in the order they arrive, not by a version:
//!   a flush read before a synchronous write of the same key but arriving after it (at a
//!   synchronous secondary that was owed the key: one that missed a write, or was background until
//!   a change) sets the key back one value, until the key is written again; promoted then, it
//!   would miss that write.
//! - A failover in eventual mode falls back to any up-to-date secondary when no synchronous one
//!   is up to date, before a former synchronous secondary's kept copy: with four or more
//!   replicas, that can promote a background copy that misses the last sync interval.
//! - The shard master is a single process that keeps its state in memory.
//! - A strong write waits for a prepare round trip to every secondary, holding its slot's write
//!   lock, and costs a commit message after: measured at about a third of eventual mode's write
//!   throughput (`kv-eval replicas`).
//!
//! While the shard master is down, reads and writes go on with the maps clients and servers
//! hold (leases are between the servers); membership changes and failovers wait for it.

pub mod digest;
mod error;
pub mod messages;
mod node;
#[cfg(test)]
mod scenarios;
pub mod secondary;
pub mod sequence;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;

pub use error::{Error, Result};
pub use kv_shard::roles::{Role, heirs, keeps_copy, peers, role, secondaries};
pub use node::{Node, NodeSettings};
pub use secondary::{ReplicatedWrite, SlotReplica, SlotState, Takeover};
pub use sequence::SlotSequence;
