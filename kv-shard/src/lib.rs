//! Placement of keys on storage servers: consistent hashing over numbered cluster
//! configurations, and the shard master's join/leave/query logic, as a pure state machine.
//!
//! Not written yet: the single-node store does not need it. It comes with the sharding issue.
