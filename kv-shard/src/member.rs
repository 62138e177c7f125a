//! A storage server's side of membership: asking its shard master to let it join the cluster,
//! and to let it leave (handing its data to the others), patiently.
//!
//! A join or leave is retried while the shard master cannot be reached, is settling an earlier
//! change, or the call was cut off, until the server's patience runs out. A retried call may
//! find its earlier attempt's work done: a join answered "a member already", or a leave "not a
//! member", is then success, but only if an earlier attempt may have reached the shard master
//! (one that never got there cannot have made the change).

use std::time::Duration;

use tracing::warn;

use crate::Error;
use crate::clock::Clock;
use crate::transport::MasterCalls;

/// The longest a join or leave call waits for the shard master: its moves have timeouts of their
/// own, and the change goes on even if the call gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// A membership change a storage server asks for itself.
#[derive(Debug, Clone, Copy)]
enum Change {
    Join,
    Leave,
}

/// How a leave ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// The server left: the configuration of this epoch is without it.
    Left(u64),
    /// An earlier attempt of this leave removed it.
    Earlier,
    /// It was not a member (any more).
    NotMember,
}

/// Joins the cluster as `me`; returns the epoch that made it a member (0: an earlier attempt
/// did). A server that is a member already, without an earlier attempt of this join, stopped
/// without leaving and lost its data: that is refused.
pub async fn join(
    master: &dyn MasterCalls,
    clock: &dyn Clock,
    me: &str,
    patience: Duration,
) -> Result<u64, Error> {
    match ask(master, clock, Change::Join, me, patience).await {
        (Ok(epoch), _) => Ok(epoch),
        (Err(Error::AlreadyMember(_)), true) => Ok(0),
        (Err(Error::AlreadyMember(_)), false) => Err(Error::FailedPrecondition(format!(
            "{me} is a member already: it stopped without leaving, and the data it held is lost; remove it \
             (kv cluster leave {me}) before starting it again"
        ))),
        (Err(err), _) => Err(err),
    }
}

/// Leaves the cluster as `me`, which hands its data to the others.
pub async fn leave(
    master: &dyn MasterCalls,
    clock: &dyn Clock,
    me: &str,
    patience: Duration,
) -> Result<Left, Error> {
    match ask(master, clock, Change::Leave, me, patience).await {
        (Ok(epoch), _) => Ok(Left::Left(epoch)),
        (Err(Error::NotMember(_)), true) => Ok(Left::Earlier),
        (Err(Error::NotMember(_)), false) => Ok(Left::NotMember),
        (Err(err), _) => Err(err),
    }
}

/// Asks the shard master to make `me` join or leave, again and again while the shard master
/// cannot be reached or is settling an earlier change, for up to `patience`. Returns its last
/// answer, and whether an earlier attempt may have reached it.
async fn ask(
    master: &dyn MasterCalls,
    clock: &dyn Clock,
    change: Change,
    me: &str,
    patience: Duration,
) -> (Result<u64, Error>, bool) {
    let deadline = clock.now() + patience;
    let mut backoff = Duration::from_millis(50);
    let mut sent = false;
    loop {
        let answer = match change {
            Change::Join => master.join(me, CHANGE_TIMEOUT).await,
            Change::Leave => master.leave(me, CHANGE_TIMEOUT.min(patience)).await,
        };
        match answer {
            Err(err) if err.is_retryable() && clock.now() + backoff < deadline => {
                sent |= !matches!(err, Error::Unavailable(_));
                warn!(?change, cause = %err, "the shard master cannot take the change yet; retrying");
                clock.sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            answer => return (answer, sent),
        }
    }
}
