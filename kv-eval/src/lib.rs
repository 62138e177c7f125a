//! The kv store's evaluation runner, as a library that its binary and the workspace's
//! integration tests share.
//!
//! It measures real software: [`process`] starts `kv-server` binaries as separate processes on
//! free loopback ports and stops every one of them, also when a check fails or panics. On top:
//! - [`checks`]: the functional checks of the course assignment, through [`kv_client`], each
//!   returning a verdict rather than panicking, so that a failure is reported and the run
//!   exits non-zero;
//! - [`bench`](mod@bench): a closed-loop load generator (a fixed number of requests in flight) that
//!   reports throughput and latency percentiles per operation;
//! - [`single_node`]: subtask 1, which runs both against one storage server;
//! - [`sharded`]: subtask 2, a shard master and storage servers: the functional flows through
//!   cluster clients, throughput against the number of servers, and resharding under load,
//!   charted over time with [`chart`](mod@chart).
//!
//! And the cluster test harness, with which the distributed parts are checked:
//! - [`cluster`]: nodes to kill, restart, pause and resume, each behind fault-injecting
//!   [`proxy`]s (client paths and node-to-node links) to partition, delay and reset;
//! - [`recorder`] and [`history`]: every operation of every client, with invocation and
//!   completion times and an `ok` / `fail` / `unknown` outcome;
//! - [`linearizability`]: a checker of such histories against the store's per-key model;
//! - [`chaos`]: workloads under a nemesis schedule, healed, read back and checked.
//!
//! Anything that makes or reads randomness takes an explicit seed.

mod analysis;
pub mod bench;
pub mod chaos;
pub mod chart;
pub mod checks;
pub mod cluster;
pub mod history;
pub mod linearizability;
pub mod process;
pub mod proxy;
mod recorded_load;
pub mod recorder;
pub mod replicas;
pub mod report;
pub mod sharded;
pub mod single_node;
