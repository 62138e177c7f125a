//! The durable engine: values kept on disk by `fjall` (an LSM tree with a write-ahead journal),
//! written through one committer that shares each sync among every write waiting for it
//! (*group commit*).
//!
//! # Layout
//!
//! One fjall database per data directory, with two keyspaces:
//! - `values`: the stored key is the key's slot (two bytes, big-endian, from the `slot_of`
//!   function the engine is opened with) followed by the key's UTF-8 bytes, so one slot's keys
//!   are read in order without touching the others'; the stored value is the value's UTF-8
//!   bytes.
//! - `meta`: `format`, the layout's version ([`FORMAT`]). A directory written by another format
//!   is refused at open, and so is one whose records are not what this layout writes.
//!
//! # Writes
//!
//! A write takes its key's lock (one of [`STRIPES`] async locks, chosen by the key's hash: keys
//! of different stripes never wait for each other), reads the key, computes the new value with
//! [`crate::op::Op::apply`], hands the change to the committer and waits for its answer with the
//! lock held; only then does it answer. The committer drains everything queued, writes it as one
//! atomic fjall batch, makes the journal durable as the [`Durability`] says, and answers every
//! write of the batch.
//!
//! Invariants:
//! - a write is acknowledged only once its batch is committed, and with [`Durability::Always`]
//!   synced (`fsync`): an acknowledged write survives a crash of the process or of the machine;
//! - with [`Durability::Interval`] and [`Durability::Never`], a committed batch is handed to the
//!   operating system before it is acknowledged (a killed process loses nothing), and synced at
//!   least every interval (or whenever the operating system decides);
//! - a write holds its key's lock from its read to its answer, so two writes of a key never
//!   compute from the same old value; a read takes the lock too (shared), so it never sees a
//!   value whose write is not yet acknowledged (the committer makes a batch visible before it
//!   syncs it, and a crash in between would take back what such a read returned);
//! - a write the engine cannot commit or sync fails with [`Error::Storage`] and is not
//!   acknowledged; reads go on.
//!
//! Nothing a disk holds can panic the engine: a stored key or value that is not what this
//! layout writes is an [`Error::Storage`] naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{RwLock, oneshot};

use crate::{EngineStats, Error, Limits, Mutation, Output, Result, Storage};

/// The layout's version, kept in the `meta` keyspace.
pub const FORMAT: &str = "kv-disk 1";
/// How many key locks the engine keeps.
pub const STRIPES: usize = 4096;
/// The most changes one batch takes: a longer queue is written as several batches.
const MAX_BATCH: usize = 4096;

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Synced before it is acknowledged (writes waiting together share one sync).
    #[default]
    Always,
    /// Handed to the operating system before it is acknowledged, and synced at least this often.
    Interval(Duration),
    /// Handed to the operating system before it is acknowledged; synced when it decides.
    Never,
}

/// How to open a [`DiskStorage`].
#[derive(Debug, Clone, Copy)]
pub struct DiskOptions {
    /// The limits the engine enforces.
    pub limits: Limits,
    /// When an acknowledged write is on disk.
    pub durability: Durability,
    /// The slot of a key, which orders the keys on disk (`|_| 0` for an engine that has none).
    pub slot_of: fn(&str) -> u16,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions { limits: Limits::default(), durability: Durability::Always, slot_of: |_| 0 }
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The engine could not open or read it (damaged, or an I/O failure).
    #[error("cannot open the data directory {dir}: {reason}")]
    Engine {
        /// The directory.
        dir: PathBuf,
        /// What the engine said.
        reason: String,
    },
    /// It was written by another layout.
    #[error("the data directory {dir} holds format {found:?}, and this server reads {FORMAT:?}")]
    Format {
        /// The directory.
        dir: PathBuf,
        /// The format it holds.
        found: String,
    },
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    changes: AtomicU64,
    syncs: AtomicU64,
}

/// One change of a batch: a stored key set to a value, or removed.
type Change = (Vec<u8>, Option<String>);

/// A batch of changes for the committer, and where its answer goes.
struct Request {
    changes: Vec<Change>,
    answer: oneshot::Sender<Result<()>>,
}

/// A durable engine: see the module's documentation.
pub struct DiskStorage {
    values: Keyspace,
    limits: Limits,
    slot_of: fn(&str) -> u16,
    locks: Vec<RwLock<()>>,
    /// `None` once dropping.
    queue: Option<Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn storage_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{what}: {err}"))
}

impl DiskStorage {
    /// Opens the engine kept in `dir`, creating it if it is missing or empty.
    pub fn open(dir: &Path, options: DiskOptions) -> Result<Self, OpenError> {
        let engine = |err: fjall::Error| OpenError::Engine { dir: dir.to_owned(), reason: err.to_string() };
        let db = Database::builder(dir).manual_journal_persist(true).open().map_err(engine)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(engine)?;
        let values = db.keyspace("values", KeyspaceCreateOptions::default).map_err(engine)?;
        match meta.get("format").map_err(engine)? {
            Some(found) if &*found == FORMAT.as_bytes() => {}
            Some(found) => {
                let found = String::from_utf8_lossy(&found).into_owned();
                return Err(OpenError::Format { dir: dir.to_owned(), found });
            }
            None => {
                meta.insert("format", FORMAT).map_err(engine)?;
                db.persist(PersistMode::SyncAll).map_err(engine)?;
            }
        }
        let (queue, requests) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let committer = Committer {
            db,
            values: values.clone(),
            durability: options.durability,
            counters: Arc::clone(&counters),
        };
        let committer = std::thread::Builder::new()
            .name("kv-disk-commit".to_owned())
            .spawn(move || committer.run(requests))
            .map_err(|err| OpenError::Engine { dir: dir.to_owned(), reason: err.to_string() })?;
        Ok(DiskStorage {
            values,
            limits: options.limits,
            slot_of: options.slot_of,
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            queue: Some(queue),
            committer: Some(committer),
            counters,
        })
    }

    fn stored_key(&self, key: &str) -> Vec<u8> {
        let mut stored = Vec::with_capacity(2 + key.len());
        stored.extend_from_slice(&(self.slot_of)(key).to_be_bytes());
        stored.extend_from_slice(key.as_bytes());
        stored
    }

    fn lock_of(&self, key: &str) -> &RwLock<()> {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        &self.locks[(hash % STRIPES as u64) as usize]
    }

    fn read(&self, key: &str) -> Result<Option<String>> {
        let stored =
            self.values.get(self.stored_key(key)).map_err(|err| storage_error("cannot read", err))?;
        stored.map(|bytes| decode_value(key, &bytes)).transpose()
    }

    /// Commits `changes` as one batch, as the durability says; returns once it is done.
    async fn commit(&self, changes: Vec<Change>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let (answer, answered) = oneshot::channel();
        let queue = self.queue.as_ref().ok_or_else(|| Error::Storage("the engine is closing".to_owned()))?;
        queue
            .send(Request { changes, answer })
            .map_err(|_| Error::Storage("the engine's committer has stopped".to_owned()))?;
        answered
            .await
            .unwrap_or_else(|_| Err(Error::Storage("the engine's committer has stopped".to_owned())))
    }

    /// Every stored pair, decoded, that `select` picks by key.
    fn scan(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<Vec<(String, String)>> {
        let mut entries = Vec::new();
        for guard in self.values.iter() {
            let (stored, value) = guard.into_inner().map_err(|err| storage_error("cannot read", err))?;
            let key = decode_key(&stored)?;
            if select(&key) {
                let value = decode_value(&key, &value)?;
                entries.push((key, value));
            }
        }
        Ok(entries)
    }
}

/// The user key of a stored key: its bytes after the slot.
fn decode_key(stored: &[u8]) -> Result<String> {
    let bytes =
        stored.get(2..).ok_or_else(|| Error::Storage(format!("a stored key of {} bytes", stored.len())))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::Storage(format!("a stored key is not UTF-8: {:?}", String::from_utf8_lossy(bytes)))
    })
}

fn decode_value(key: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Storage(format!("the stored value of {key:?} is not UTF-8")))
}

impl Drop for DiskStorage {
    fn drop(&mut self) {
        // The committer ends once the queue closes, after what is queued; the database closes
        // with its last handle.
        self.queue = None;
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

#[async_trait]
impl Storage for DiskStorage {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.limits.check_key(key)?;
        let _locked = self.lock_of(key).read().await;
        self.read(key)
    }

    async fn apply(&self, mutation: Mutation) -> Result<Output> {
        let Mutation { key, op } = mutation;
        self.limits.check_key(&key)?;
        let _locked = self.lock_of(&key).write().await;
        let old = self.read(&key)?;
        let mut value = old.clone();
        let output = op.apply(&mut value, &self.limits)?;
        if value != old {
            self.commit(vec![(self.stored_key(&key), value)]).await?;
        }
        Ok(output)
    }

    async fn export(
        &self,
        select: &(dyn for<'k> Fn(&'k str) -> bool + Sync),
    ) -> Result<Vec<(String, String)>> {
        let mut entries = self.scan(select)?;
        // On disk in slot order; the trait's order is the keys'.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    async fn import(&self, entries: Vec<(String, String)>) -> Result<()> {
        let changes = entries.into_iter().map(|(key, value)| (self.stored_key(&key), Some(value))).collect();
        self.commit(changes).await
    }

    async fn remove_where(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<usize> {
        let changes: Vec<Change> =
            self.scan(select)?.into_iter().map(|(key, _)| (self.stored_key(&key), None)).collect();
        let removed = changes.len();
        self.commit(changes).await?;
        Ok(removed)
    }

    async fn key_count(&self) -> Result<usize> {
        self.values.len().map_err(|err| storage_error("cannot count the keys", err))
    }

    fn stats(&self) -> EngineStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EngineStats {
            durable: true,
            batches: read(&self.counters.batches),
            changes: read(&self.counters.changes),
            syncs: read(&self.counters.syncs),
        }
    }
}

/// The one thread that writes: drains the queue into batches.
struct Committer {
    db: Database,
    values: Keyspace,
    durability: Durability,
    counters: Arc<Counters>,
}

impl Committer {
    fn run(self, requests: Receiver<Request>) {
        let mut unsynced = false;
        let mut last_sync = Instant::now();
        loop {
            let first = match self.durability {
                Durability::Interval(every) if unsynced => {
                    match requests.recv_timeout(every.saturating_sub(last_sync.elapsed())) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => {
                            // A failed sync is tried again at the next interval.
                            if self.sync().is_ok() {
                                unsynced = false;
                                last_sync = Instant::now();
                            }
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
            let mut batch = vec![first];
            let mut changes = batch[0].changes.len();
            while changes < MAX_BATCH {
                let Ok(more) = requests.try_recv() else { break };
                changes += more.changes.len();
                batch.push(more);
            }
            let result = self.write(&batch);
            if result.is_ok() && self.durability != Durability::Always {
                unsynced = true;
                if let Durability::Interval(every) = self.durability
                    && last_sync.elapsed() >= every
                    && self.sync().is_ok()
                {
                    unsynced = false;
                    last_sync = Instant::now();
                }
            }
            for request in batch {
                let _ = request.answer.send(result.clone());
            }
        }
        // Closing: what was handed to the operating system is synced too.
        let _ = self.sync();
    }

    fn sync(&self) -> fjall::Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.db.persist(PersistMode::SyncAll)
    }

    /// Writes `batch` as one atomic fjall batch, and makes it as durable as the policy says.
    fn write(&self, batch: &[Request]) -> Result<()> {
        let mut writes = self.db.batch().durability(None);
        for (key, value) in batch.iter().flat_map(|request| &request.changes) {
            match value {
                Some(value) => writes.insert(&self.values, key.as_slice(), value.as_str()),
                None => writes.remove(&self.values, key.as_slice()),
            }
        }
        writes.commit().map_err(|err| storage_error("cannot write", err))?;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let changes = batch.iter().map(|request| request.changes.len() as u64).sum();
        self.counters.changes.fetch_add(changes, Ordering::Relaxed);
        match self.durability {
            Durability::Always => self.sync(),
            Durability::Interval(_) | Durability::Never => self.db.persist(PersistMode::Buffer),
        }
        .map_err(|err| storage_error("cannot sync", err))
    }
}

#[cfg(test)]
mod tests;
