//! The primary/secondary replication protocol (strong and eventual consistency, failover), as a
//! pure state machine driven by messages and clock ticks.
//!
//! Not written yet: the single-node store does not need it. It comes with the replication issue.
