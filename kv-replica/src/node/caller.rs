//! The caller of a write, who may give up on it: a write waits (for its slot to be served, for
//! its turn in the slot, for a lease) only while its caller still wants it, and once it begins to
//! change state (the engine's wait for the key's lock is part of that), it runs to its end
//! whether or not anyone still waits for the answer.
//!
//! A write that began must end: a durable engine yields while it applies, and a write cut off
//! there could be applied while its exactly-once record, its abort or the keys it leaves owed
//! are forgotten. A write whose caller left before it began must not begin: it would take the
//! slot's turn from live writes, and delay what waits for the slot (an install, a snapshot)
//! with work no one will see.

use std::future::Future;

use kv_core::Error;
use tokio::sync::oneshot;

/// Held by the call that waits for a write's answer: dropping it (the call is dropped, its client
/// gave up) tells the write.
#[derive(Debug)]
pub(crate) struct Waiting {
    _tells_when_dropped: oneshot::Sender<()>,
}

/// The write's side: whether its caller still waits.
#[derive(Debug)]
pub(crate) struct Caller {
    /// Completes when the caller gives up; taken once it has.
    gone: Option<oneshot::Receiver<()>>,
}

impl Caller {
    /// A caller, and what it holds while it waits.
    pub(crate) fn new() -> (Waiting, Caller) {
        let (waiting, gone) = oneshot::channel();
        (Waiting { _tells_when_dropped: waiting }, Caller { gone: Some(gone) })
    }

    /// Runs `wait` unless the caller gives up first: then the write does not begin.
    pub(crate) async fn unless_gone<F: Future>(&mut self, wait: F) -> Result<F::Output, Error> {
        let Some(gone) = self.gone.as_mut() else {
            return Ok(wait.await);
        };
        tokio::select! {
            biased;
            out = wait => Ok(out),
            _ = gone => {
                self.gone = None;
                Err(Error::Replication("the caller gave up before the write began".to_owned()))
            }
        }
    }
}
