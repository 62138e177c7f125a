//! A deterministic simulator of the whole cluster: the real storage servers
//! ([`kv_replica::Node`]) and the real shard master ([`kv_shard::ShardMaster`]) in one process,
//! over a simulated network and simulated clocks, under a seeded schedule of faults, with a
//! workload of clients whose history is checked at the end. A run takes a fraction of a second
//! for about twenty seconds of the cluster's time, and every failure comes with the seed that
//! replays it exactly.
//!
//! # How it runs
//!
//! Each run gets a fresh **single-threaded tokio runtime at paused time**: nothing runs in
//! parallel, and when every task waits, time jumps to the next timer. The protocols read time
//! through their [`kv_shard::clock::Clock`] (a [`clock`] per process, at its own rate, stopped
//! while the process is paused) and talk through their transport traits, which [`calls`] binds
//! to the simulated [`net`]work. The gRPC layer is not simulated: the multi-process tests cover
//! it.
//!
//! Why tokio's paused clock rather than `turmoil` or `madsim`: the protocols already speak to
//! the world through traits (calls, clock), so there is no socket to simulate, which is what
//! turmoil does; madsim replaces tokio and builds the whole dependency tree under a cfg, twice
//! the build on a 2-core machine, for a scheduler that tokio's current-thread runtime already
//! gives: deterministic task order, and timers that fire in order at virtual time.
//!
//! # Determinism
//!
//! A run is a function of its seed and setting. What could leak in, and how it is kept out:
//! - *task order and time*: one thread, paused time, tasks polled in the order they woke;
//! - *message delays and losses*: drawn by the network from the seed, in the order calls are
//!   made (itself deterministic);
//! - *randomness of the protocol*: incarnations are given by the simulator; the clients'
//!   ids, keys, operations and backoff jitter come from their seeds;
//! - *`select!`*: the protocol's `select!`s are `biased` (tokio's otherwise pick a random branch
//!   among ready ones);
//! - *hash-map iteration*: the protocol keeps ordered maps where it iterates, and the in-memory
//!   engine exports a slot's keys in key order.
//!
//! Every message, fault and operation goes into the [`trace`], and a test runs one seed twice
//! and compares the hashes.
//!
//! # Faults and workload
//!
//! The [`schedule`] draws, from the seed: the cluster's size, each server's clock rate (within
//! 2% of real time; the leases allow 10%), and faults one at a time (a lossy link, slow links
//! that reorder, a link cut one way, two servers cut from each other while both reach the shard
//! master, a server cut from the shard master, an isolated server, a paused server or shard
//! master, a crashed server, restarted empty later; with two replicas or more, half the runs
//! add a crash amid message losses on every link, which leaves aborted writes behind a primary
//! that then dies, and half a long cut (3 to 5 s) of a server from the shard master only, which
//! outlasts the detector's patience with a member its peers still hear: it is failed over
//! alive, leases and all), with joins and leaves anywhere. Three runs in four with two
//! replicas or more add a fault *aimed* at one step of the protocol, built from stalled links
//! (requests of some kinds held for seconds each, then delivered even if their caller gave up,
//! as a connection stuck retransmitting does): installs and pings to a secondary stalled while a
//! change moves its slot (with a client whose map is out of date reading there); a primary's
//! replication stalled while its secondary leaves, then the primary crashes; a crash just after
//! a primary aborts a write amid losses; a joiner whose hand-offs are stalled past two of their
//! timeouts, cut off until it is failed over, then joining again while the first join's resends
//! are still on their way. A third of the runs with two replicas or more make slot counts uneven
//! (a member crashed and failed over, its successor holding its slots) and then have that
//! successor's first secondary leave while the replication to its replacement is stalled, and
//! the successor crash once the leave returns: the leave's hand-offs then do not wait for the
//! copies it reset, and only the shard master's wait for copies keeps the slot's data. Another
//! third of the runs with two replicas or more partition a hot key's primary from every server
//! and from the shard master while the clients still reach it (clients on both sides, one of
//! them cut from that primary), past its failover: clients with an old map go on writing at
//! the replaced primary, which must refuse them once its leases run out. A third
//! of all runs crash the shard master around a membership change; it restarts from the state it
//! saved (its store outlives the crash, as a disk would), and the run fails if it ever comes back
//! behind an epoch it had shown. A crashed process breaks the calls it was serving at once, as
//! the kernel resets a killed process's connections. Four
//! [`client`]s with the real client's retries and exactly-once ids run gets, puts and appends on
//! six hot keys. With two replicas or more, half the runs end on a *lasting cut*: the link
//! between a primary and one of its secondaries is cut both ways for 12 s, a fault the protocol
//! must route around (it fails one end over) rather than wait out. Then every fault heals, and
//! the workload goes on for the liveness window.
//!
//! **Durable runs** (`--durable`, and a budget of their own in CI): every server keeps a
//! [`disk`] that outlives its crashes (values, exactly-once records and its membership record,
//! each write on it once its call returns, as with `--fsync always`), and a restarted one reads it
//! back and asks to be taken back as the member it was. A crash is then a fault one replica
//! survives too, and three runs in four add a crash of every server at once while the clients
//! write: the checks are the same, across it.
//!
//! # Checks
//!
//! See [`checks`]: strong mode linearizable; appends exactly once, and none acknowledged lost
//! where promised; in every mode no split brain (no lost append acknowledged by a primary after
//! its replacement acknowledged a write of the key); replicas identical once writes stop; every
//! key written again within
//! [`checks::LIVENESS_BOUND`] (4 s) of the heal, and, under a lasting cut, no key without a
//! successful write for longer than that same bound while the cut holds.

mod calls;
pub mod checks;
mod client;
mod clock;
mod disk;
mod faults;
mod health;
mod net;
mod run;
pub mod schedule;
mod trace;
mod world;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use run::{RunOptions, RunReport, run};
pub use schedule::Setting;

/// Runs every `(seed, setting)` of `runs` on `threads` threads (each run on its own runtime:
/// the results do not depend on the threads), calling `done` as each finishes; returns the
/// reports in the order of `runs`.
pub fn run_many(
    runs: &[(u64, Setting)],
    options: RunOptions,
    threads: usize,
    done: &(dyn Fn(&RunReport) + Sync),
) -> Vec<RunReport> {
    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<Option<RunReport>>> = Mutex::new(vec![None; runs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(seed, setting)) = runs.get(i) else { return };
                    let report = run(seed, setting, options);
                    done(&report);
                    reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(report);
                }
            });
        }
    });
    reports.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().flatten().collect()
}
