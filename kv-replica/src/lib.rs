//! The primary/secondary replication protocol (strong and eventual consistency, failover), as a
//! pure state machine driven by messages and clock ticks.
//!
//! **Status: design only.** Nothing below is implemented yet; this is the design the replication
//! issue builds, written down first so that it can be reviewed before the code. The sharding
//! protocol it extends is in `kv_shard`'s documentation.
//!
//! # Replica sets
//!
//! A configuration gives every slot a *replica set* of `R` distinct members (`R` =
//! `--replication-factor`, default 3, capped by the number of members): the slot's owner as today
//! (balanced, minimal movement) is its **primary**, and its **secondaries** are the next `R − 1`
//! members after the primary in member-id order, wrapping around. So every server is primary for
//! about `1/N` of the slots and secondary for about `(R − 1)/N`: none idles as a pure backup
//! (Dynamo- and TiKV-like, rather than fixed groups). A join or leave changes the replica sets of
//! few slots; a new secondary catches up as a receiver does today (below).
//!
//! # Versions
//!
//! The primary numbers the writes of each slot: `(epoch, seq)`, growing. Every replica keeps, per
//! key, the version of its value, and applies a slot's writes in version order (a write whose
//! version it has already passed is a duplicate, acknowledged and dropped). Exactly-once records
//! travel with the writes, so a retry answered by a promoted secondary is not applied again.
//!
//! # Strong consistency (CRAQ-style)
//!
//! A write is acknowledged once the primary and every secondary in the slot's *sync set* (the
//! live secondaries; see failures) have applied it. A replica keeps, per key, the last
//! *committed* (clean) value and, while a write is in flight, the newer *dirty* one. The primary
//! marks a version committed when every replica of the sync set acknowledged it, then tells the
//! secondaries (piggybacked on the next write, or a short tick).
//!
//! A read at any replica:
//! - key clean → return the clean value;
//! - key dirty → ask the primary which version of the key is committed, and return that one
//!   (CRAQ's version query). So a reader never sees a write another reader could still miss:
//!   the "read going back in time" trap cannot happen.
//!
//! Only a replica holding a valid lease for the current epoch, and still in the sync set, serves
//! reads; one dropped from the sync set stops at once (its lease says so).
//!
//! # Eventual consistency
//!
//! A write is acknowledged after the primary and `k` secondaries (`--sync-replicas k`,
//! `0 ≤ k < R − 1`) applied it; the others receive the slot's writes in batches, in version order,
//! at least every `--sync-interval` (default 2 s). Reads at a secondary return what it has. After
//! writes stop, every replica is identical within one interval plus transfer time. What eventual
//! mode can lose: at a failover, writes acknowledged by the old primary that reached none of the
//! synchronous secondaries (with `k = 0`, the writes of the last interval).
//!
//! # Failures: leases and fencing
//!
//! Every storage server heartbeats the shard master every 100 ms; each answer renews a *lease*
//! of `T` (`--failure-timeout`, default 800 ms), measured from when the heartbeat was *sent*, so
//! the server's lease always ends before the master's view of it. A primary serves writes, and any
//! replica serves reads, only while its lease is valid for the current epoch.
//!
//! When a server's heartbeats stop for longer than `T` plus a margin for clock-rate drift, the
//! master knows its lease has run out — it can no longer acknowledge anything — and then:
//! - for each slot it was primary of, promotes a secondary: in strong mode any member of the sync
//!   set (each has every acknowledged write), in eventual mode the one with the highest applied
//!   version; the epoch grows, clients follow on their next *wrong shard* or timeout;
//! - for each slot it was a secondary of, drops it from the sync set (strong writes stop waiting
//!   for it) and, when the replica set is short, picks a new secondary, which catches up.
//!
//! A deposed primary, also one only cut off by a partition, cannot acknowledge a write after its
//! lease ends, which is before its successor starts; when it comes back it learns the new epoch
//! and rejoins as a secondary after catching up. Failover time ≈ `T` + margin + one install:
//! about 1 s with the defaults (the bar is 1.5 s).
//!
//! # Catching up
//!
//! A new (or returning) secondary is brought up like a resharding receiver: the primary starts
//! forwarding the slot's new writes to it (buffered, versioned), then streams a snapshot; the
//! secondary installs the snapshot, then the buffered writes whose versions are newer. Writes are
//! never paused. It joins the sync set once caught up.
//!
//! # The shard master
//!
//! Still one process: while it is down, reads and writes go on with the maps clients and servers
//! hold, but leases granted by the master cannot be renewed past `T`, so a master outage longer than
//! `T` stops writes. The replication issue must choose: leases granted by the master (safe,
//! master-bound availability), or primaries that keep serving on a lease renewed by their
//! secondaries' acknowledgements (available while the master is down, as the issue asks), with
//! failover and membership waiting for the master. The second is the target; its fencing argument
//! (a secondary promoted only by the master, after the old primary's secondary-granted lease ran
//! out) is the first thing to write down and review when the work starts.
