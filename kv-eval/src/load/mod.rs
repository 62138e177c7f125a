//! Load and analysis that the subtask runners share:
//! - [`checks`]: the functional checks of the course assignment, through [`kv_client`], each
//!   returning a verdict rather than panicking, so that a failure is reported and the run
//!   exits non-zero;
//! - [`bench`](mod@bench): a closed-loop load generator (a fixed number of requests in flight)
//!   that reports throughput and latency percentiles per operation;
//! - `recorded_load` and `analysis`: recorded clients running gets, puts and appends, and what
//!   their history shows (throughput over time, stalls, every acknowledged append kept once);
//! - [`report`] and [`chart`](mod@chart): tables, JSON files and SVG charts of the results.

pub(crate) mod analysis;
pub mod bench;
pub mod chart;
pub mod checks;
pub(crate) mod recorded_load;
pub mod report;
