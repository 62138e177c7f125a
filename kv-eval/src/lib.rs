//! The kv store's evaluation runner, as a library that its binary and the workspace's
//! integration tests share.
//!
//! It measures real software, and holds three groups of modules, each using only the ones
//! before it:
//! - [`harness`]: the reusable cluster test harness. [`harness::process`] starts `kv-server`
//!   binaries as separate processes on free loopback ports and stops every one of them, also
//!   when a check fails or panics; [`harness::cluster`] runs nodes to kill, restart, pause and
//!   resume, each behind fault-injecting [`harness::proxy`]s; [`harness::recorder`] and
//!   [`harness::history`] keep every operation of every client, which
//!   [`harness::linearizability`] checks against the store's per-key model; and
//!   [`harness::chaos`] runs workloads under a nemesis schedule, heals, reads back and checks.
//! - [`load`]: load and analysis shared by the runners: the course assignment's functional
//!   checks, a closed-loop benchmark, recorded load with its analysis, and the tables, JSON
//!   and SVG charts of the reports.
//! - The runners of the three subtasks: [`single_node`] (one storage server), [`sharded`] (a
//!   shard master and storage servers) and [`replicas`] (replicated clusters); and
//!   [`durable`], what each durability policy costs a storage server.
//!
//! - [`sim`]: the deterministic simulator, which runs the protocol crates themselves (no
//!   processes, no gRPC) over a simulated network and clocks, and checks what the harness checks.
//!
//! Anything that makes or reads randomness takes an explicit seed.

pub mod durable;
pub mod harness;
pub mod load;
pub mod replicas;
pub mod sharded;
pub mod sim;
pub mod single_node;
