//! The durable engine's one writer: a thread that drains the queue of changes into atomic fjall
//! batches, makes each as durable as the policy says, and answers every write of the batch.
//!
//! Invariants (with those of `kv_core::disk`):
//! - a request's key locks are released only once its batch is answered: a writer whose future
//!   was dropped while it waited still holds its keys until its change is written or refused;
//! - a batch is atomic: a write and its exactly-once record (`records`) are written together;
//! - a batch that fails (written or synced) taints its keys: the engine has made them visible,
//!   and cannot say whether they are on disk, so reads of them fail until a restart, which reads
//!   the journal back; after any failure the engine refuses every write;
//! - with [`Durability::Interval`], what was acknowledged is synced at the latest one interval
//!   after the first unsynced batch, whether writes go on or stop.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use fjall::{Database, Keyspace, PersistMode};
use tokio::sync::{OwnedRwLockWriteGuard, oneshot};

use super::Durability;
use crate::{Error, Result};

/// The most changes one batch takes: a longer queue is written as several batches.
const MAX_BATCH: usize = 4096;

/// The keyspace a change goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    /// The values.
    Values,
    /// The exactly-once records (`records`).
    Sessions,
    /// The server's own records ([`crate::Storage::set_state`]): a batch holding one is synced
    /// whatever the durability policy.
    Meta,
}

/// One change of a batch: a stored key set to a value, or removed.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) space: Space,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

impl Change {
    /// A stored key of the values set to `value`, or removed.
    pub(super) fn value(key: Vec<u8>, value: Option<String>) -> Self {
        Change { space: Space::Values, key, value: value.map(String::into_bytes) }
    }

    /// A record of the sessions set to `value`, or removed.
    pub(super) fn record(key: Vec<u8>, value: Option<Vec<u8>>) -> Self {
        Change { space: Space::Sessions, key, value }
    }

    /// A record of the server's own set to `value`, or removed.
    pub(super) fn meta(key: Vec<u8>, value: Option<Vec<u8>>) -> Self {
        Change { space: Space::Meta, key, value }
    }
}

/// A batch of changes for the committer, the locks of their keys, and where its answer goes.
pub(super) struct Request {
    pub(super) changes: Vec<Change>,
    pub(super) locks: Vec<OwnedRwLockWriteGuard<()>>,
    pub(super) answer: oneshot::Sender<Result<()>>,
}

/// What the engine and its committer share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) batches: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) syncs: AtomicU64,
    /// Requests handed to the committer.
    pub(super) queued: AtomicU64,
    /// Why the engine stopped taking writes, once it has.
    failed: Mutex<Option<String>>,
    /// Stored keys of the batches that failed.
    tainted: Mutex<HashSet<Vec<u8>>>,
    /// Held by a test to keep the committer from starting its next batch.
    #[cfg(test)]
    pub(super) hold: Mutex<()>,
    /// Set by a test: the next batch fails as an I/O error would (a full disk, say).
    #[cfg(test)]
    pub(super) fail_next: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Refuses writes once a batch failed.
    pub(super) fn check_writable(&self) -> Result<()> {
        match &*self.failed.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(reason) => Err(Error::Storage(format!(
                "the engine stopped taking writes after a failure ({reason}); restart the server"
            ))),
        }
    }

    /// Refuses a read of a key whose write failed.
    pub(super) fn check_readable(&self, stored: &[u8], key: &str) -> Result<()> {
        let tainted = self.tainted.lock().unwrap_or_else(PoisonError::into_inner);
        if tainted.is_empty() || !tainted.contains(stored) {
            return Ok(());
        }
        let reason = self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
        Err(Error::Storage(format!(
            "the value of {key:?} is unknown: a write of it failed ({reason}); restart the server"
        )))
    }

    fn fail(&self, reason: &str, batch: &[Request]) {
        let mut tainted = self.tainted.lock().unwrap_or_else(PoisonError::into_inner);
        let values = batch.iter().flat_map(|request| &request.changes).filter(|c| c.space == Space::Values);
        tainted.extend(values.map(|change| change.key.clone()));
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| reason.to_owned());
    }
}

/// The one thread that writes.
pub(super) struct Committer {
    pub(super) db: Database,
    pub(super) values: Keyspace,
    pub(super) sessions: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) durability: Durability,
    pub(super) shared: Arc<Shared>,
}

impl Committer {
    /// Runs until the engine closes its end of the queue, then syncs what it handed the OS.
    pub(super) fn run(self, requests: Receiver<Request>) {
        // When the oldest batch not yet synced was written (interval policy).
        let mut unsynced: Option<Instant> = None;
        loop {
            let first = match (self.durability, unsynced) {
                (Durability::Interval(every), Some(since)) => {
                    match requests.recv_timeout(every.saturating_sub(since.elapsed())) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => {
                            self.sync_acknowledged();
                            unsynced = None;
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            #[cfg(test)]
            let held = self.shared.hold.lock().unwrap_or_else(PoisonError::into_inner);
            #[cfg(test)]
            drop(held);
            let mut batch = vec![first];
            let mut changes = batch[0].changes.len();
            while changes < MAX_BATCH {
                let Ok(more) = requests.try_recv() else { break };
                changes += more.changes.len();
                batch.push(more);
            }
            let result = self.shared.check_writable().and_then(|()| self.write(&batch));
            if let Err(err) = &result {
                self.shared.fail(&err.to_string(), &batch);
            } else if let Durability::Interval(every) = self.durability {
                let since = *unsynced.get_or_insert_with(Instant::now);
                if since.elapsed() >= every {
                    self.sync_acknowledged();
                    unsynced = None;
                }
            }
            // Answered first, then the keys are free: the next write of a key reads this one.
            let locks: Vec<_> = batch
                .into_iter()
                .flat_map(|request| {
                    let _ = request.answer.send(result.clone());
                    request.locks
                })
                .collect();
            drop(locks);
        }
        // Closing: what was handed to the operating system is synced too.
        if self.shared.check_writable().is_ok() {
            let _ = self.sync();
        }
    }

    fn sync(&self) -> fjall::Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Syncs the batches acknowledged since the last sync (interval policy). A failure stops the
    /// engine taking writes: what it acknowledged may not be on disk, which the policy allows
    /// for a crash of the machine, but nothing more should be acknowledged on that promise.
    fn sync_acknowledged(&self) {
        if let Err(err) = self.sync() {
            self.shared.fail(&format!("cannot sync: {err}"), &[]);
        }
    }

    /// Writes `batch` as one atomic fjall batch, and makes it as durable as the policy says.
    fn write(&self, batch: &[Request]) -> Result<()> {
        #[cfg(test)]
        if self.shared.fail_next.swap(false, Ordering::Relaxed) {
            return Err(Error::Storage(
                "cannot write: injected I/O error (no space left on device)".to_owned(),
            ));
        }
        let mut writes = self.db.batch().durability(None);
        let mut synced = self.durability == Durability::Always;
        for change in batch.iter().flat_map(|request| &request.changes) {
            let space = match change.space {
                Space::Values => &self.values,
                Space::Sessions => &self.sessions,
                Space::Meta => {
                    synced = true;
                    &self.meta
                }
            };
            match &change.value {
                Some(value) => writes.insert(space, change.key.as_slice(), value.as_slice()),
                None => writes.remove(space, change.key.as_slice()),
            }
        }
        writes.commit().map_err(|err| Error::Storage(format!("cannot write: {err}")))?;
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if synced { self.sync() } else { self.db.persist(PersistMode::Buffer) }
            .map_err(|err| Error::Storage(format!("cannot sync: {err}")))
    }
}
