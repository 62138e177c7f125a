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

/// The longest a join or leave call waits for the shard master (or the server's patience, if
/// shorter: a shard master that vanished without closing its connections must not hold a join
/// past it): its moves have timeouts of their own, and the change goes on even if the call gives
/// up.
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
/// did), also when the join's data moves did not all finish (the server is a member then). A server that is a member already, without an earlier attempt of this join, stopped
/// without leaving and lost its data: that is refused.
pub async fn join(
    master: &dyn MasterCalls,
    clock: &dyn Clock,
    me: &str,
    patience: Duration,
) -> Result<u64, Error> {
    match ask(master, clock, Change::Join, me, patience).await {
        (Ok(epoch), _) => Ok(epoch),
        // The change was made: this server is a member at `epoch`, only some of the data moves
        // did not finish (a member stopped answering meanwhile); the shard master's failover and
        // repairs see to them. Giving up here would leave a member that never serves.
        (Err(Error::Incomplete { epoch, reason, .. }), _) => {
            warn!(epoch, %reason, "joined, though some data moves of the join did not finish");
            Ok(epoch)
        }
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
            Change::Join => master.join(me, CHANGE_TIMEOUT.min(patience)).await,
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

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::clock::TokioClock;

    /// A shard master that answers every join and leave with `answer`.
    struct Answers(Error);

    #[async_trait]
    impl MasterCalls for Answers {
        async fn join(&self, _server: &str, _timeout: Duration) -> Result<u64, Error> {
            Err(self.0.clone())
        }

        async fn leave(&self, _server: &str, _timeout: Duration) -> Result<u64, Error> {
            Err(self.0.clone())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_whose_moves_did_not_all_finish_is_a_join() {
        let incomplete = Error::Incomplete { epoch: 5, reason: "a sender died".to_owned(), lost: false };
        let joined = join(&Answers(incomplete), &TokioClock, "10.0.0.3:1", Duration::from_secs(1)).await;
        assert_eq!(joined, Ok(5), "a member at epoch 5");
        let refused = Error::InvalidAddress("no".to_owned());
        assert!(join(&Answers(refused), &TokioClock, "10.0.0.3:1", Duration::from_secs(1)).await.is_err());
    }
}
