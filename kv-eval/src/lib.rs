//! The kv store's evaluation runner, as a library that its binary and the workspace's
//! integration tests share.
//!
//! It measures real software: [`process`] starts `kv-server` binaries as separate processes on
//! free loopback ports and stops every one of them, also when a check fails or panics. On top:
//! - [`checks`]: the functional checks of the course assignment, through [`kv_client`], each
//!   returning a verdict rather than panicking, so that a failure is reported and the run
//!   exits non-zero;
//! - [`bench`]: a closed-loop load generator (a fixed number of requests in flight) that
//!   reports throughput and latency percentiles per operation;
//! - [`single_node`]: subtask 1, which runs both against one storage server.
//!
//! Anything that makes or reads randomness takes an explicit seed.

pub mod bench;
pub mod chaos;
pub mod checks;
pub mod cluster;
pub mod history;
pub mod linearizability;
pub mod process;
pub mod proxy;
pub mod recorder;
pub mod report;
pub mod single_node;
