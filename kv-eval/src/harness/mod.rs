//! The cluster test harness, with which the distributed parts are checked; the runners and the
//! integration tests share it.
//!
//! - [`process`]: real `kv-server` processes on free loopback ports, always stopped;
//! - [`cluster`] and [`node`]: nodes to kill, restart, pause and resume, each behind fault-injecting
//!   [`proxy`]s (client paths and node-to-node links) to partition, delay and reset;
//! - [`recorder`] and [`history`]: every operation of every client, with invocation and
//!   completion times and an `ok` / `fail` / `unknown` outcome;
//! - [`linearizability`]: a checker of such histories against the store's per-key model;
//! - [`checks`]: the checks the simulator and the chaos runs share: linearizable where
//!   promised, appends exactly once, no acknowledged write lost, the longest write gap;
//! - [`chaos`]: workloads under a nemesis schedule, healed, read back and checked, with an
//!   operation [`mix`] that the benchmark and the recorded loads share; against one server;
//! - [`cluster_chaos`]: the same against a replicated cluster (a shard master, servers, every
//!   link behind a proxy), with the simulator's checks, convergence and liveness.
//!
//! The history and the checker need nothing but `std` and `serde` (a test holds them to it): a
//! history written out by a run can be checked anywhere, and the checker's verdict depends on
//! nothing but the history.

pub mod chaos;
pub mod checks;
pub mod cluster;
pub mod cluster_chaos;
pub mod history;
pub mod linearizability;
pub mod mix;
pub mod node;
pub mod process;
pub mod proxy;
pub mod recorder;
