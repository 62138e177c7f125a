//! A storage server's replication calls to its peers, with the retries they get.

use std::time::{Duration, Instant};

use crate::Error;
use crate::messages::{Replicate, ReplicateAck};
use crate::transport::PeerCalls;
use kv_shard::clock::Clock;
use kv_shard::retry::retry_until;

/// Longest one replication call may take before it is tried again.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// One replication batch to `to`, retried while it is unreachable or behind, until `deadline`.
pub(crate) async fn replicate_until(
    peers: &dyn PeerCalls,
    clock: &dyn Clock,
    to: &str,
    batch: &Replicate,
    deadline: Instant,
) -> Result<ReplicateAck, Error> {
    retry_until(clock, deadline, ATTEMPT_TIMEOUT, |timeout| peers.replicate(to, batch, timeout)).await
}
