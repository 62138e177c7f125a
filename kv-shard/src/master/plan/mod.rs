//! The shard master's decisions, as pure functions and state machines of plain values: the
//! drivers beside this module ask the servers, pass what they heard here, and carry out what
//! comes back. Each is tested here with plain values.

pub(crate) mod catch_up;
pub(crate) mod checks;
pub(crate) mod detector;
pub(crate) mod failover;
pub(crate) mod moves;
pub(crate) mod readmit;
