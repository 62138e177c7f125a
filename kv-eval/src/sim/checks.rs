//! The checks at the end of a simulated run, over its recorded history, the final values read
//! at the primaries, and the replicas' engines.
//!
//! The history checks live in [`crate::harness::checks`], shared with the chaos runs against
//! real processes; the bound is the simulator's.
//!
//! - **Linearizable** (strong mode): the harness's checker over the whole history, final reads
//!   included.
//! - **Appends exactly once** (every mode): every append writes a unique token, so a key's final
//!   value lists the appends it holds. No token twice, none that failed definitely, none made
//!   up; and, where the store promises it (strong; eventual with a synchronous secondary), no
//!   acknowledged one missing.
//! - **Replicas identical** once writes have stopped and the background sync has run: every
//!   replica's engine holds the primary's value of every key.
//! - **Liveness**: after the heal, every key takes a successful write within the bound, and
//!   never waits longer than the bound for the next one while clients keep writing.

use std::time::Duration;

pub(crate) use crate::harness::checks::{Promises, check_history, longest_write_gap};

/// The longest a key may go without a successful write after the heal (the bound this
/// simulator enforces: failure detection takes 0.8 s, an install and a fence up to 0.5 s more,
/// and a restarted server's join moves its slots back).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(4);
