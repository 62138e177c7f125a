//! The durable engine: values kept on disk by `fjall` (an LSM tree with a write-ahead journal),
//! written through one committer that shares each sync among every write waiting for it
//! (*group commit*).
//!
//! # Layout
//!
//! One fjall database per data directory, with three keyspaces:
//! - `values`: the stored key is the key's slot (two bytes, big-endian, from the `slot_of`
//!   function the engine is opened with) followed by the key's UTF-8 bytes, so one slot's keys
//!   are read in order without touching the others'; the stored value is the value's UTF-8
//!   bytes.
//! - `sessions`: the exactly-once records of the writes applied with
//!   [`Storage::apply_recorded`], each written in the same atomic batch as its write (`records`
//!   has their layout); [`Storage::sessions`] reads them back at start-up.
//! - `meta`: `format`, the layout's version ([`FORMAT`]), and `slots`, the slots `slot_of` gives
//!   a few fixed keys. A directory written by another format, or by another `slot_of` (its keys
//!   would be looked for under other slots), is refused at open, before anything is written.
//!   And the server's own records ([`Storage::set_state`]) under `state:` and their name, each
//!   write of one synced whatever the policy.
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
//! - a write holds its key's lock from its read until its change is written (the committer
//!   releases it, so a writer whose future is dropped while it waits still holds it), so two
//!   writes of a key never compute from the same old value; a read takes the lock too (shared),
//!   so it never sees a value whose write is not yet acknowledged (the committer makes a batch
//!   visible before it syncs it, and a crash in between would take back what such a read
//!   returned);
//! - a write the engine cannot commit or sync fails with [`Error::Storage`] and is not
//!   acknowledged; from then on the engine refuses writes, and reads of the keys of the failed
//!   batch (whose values it cannot vouch for) fail, while other reads go on (`committer`).
//!
//! `export`, `export_slots`, `import`, `remove_where` and `remove_slots` take no key locks: they
//! are for slots no one writes (a slot that has stopped being served, when data moves between
//! servers).
//!
//! Nothing a disk holds can panic the engine: a stored key or value that is not what this
//! layout writes is an [`Error::Storage`] naming it, and a directory fjall cannot read is an
//! [`OpenError`] (a folder fjall would panic on is looked for before it reads the directory).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock, oneshot};

use self::committer::{Change, Committer, Request, Shared, Space};

use crate::{
    EngineStats, Error, ExportCursor, Limits, Mutation, Output, Recording, Result, SessionRecord, Storage,
};

/// The layout's version, kept in the `meta` keyspace.
pub const FORMAT: &str = "kv-disk 1";
/// How many key locks the engine keeps.
pub const STRIPES: usize = 4096;
/// The longest key the engine stores: fjall keeps keys up to 65,535 bytes, and the slot takes 2.
pub const MAX_KEY_LEN: usize = 65_533;
/// Keys whose slots, kept in `meta` as `slots`, tell whether `slot_of` is the one that wrote.
const SLOT_PROBES: [&str; 4] = ["", "a", "kv", "slot-probe"];

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
    /// It was written by another `slot_of`.
    #[error(
        "the data directory {dir} was written with another key-to-slot function: its keys would not \
         be found"
    )]
    Slots {
        /// The directory.
        dir: PathBuf,
    },
    /// The limits ask for keys longer than the engine stores.
    #[error("keys of up to {asked} bytes were asked for; the durable engine stores up to {MAX_KEY_LEN}")]
    KeyLimit {
        /// The key limit asked for.
        asked: usize,
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

/// Where the server's record `name` is kept in `meta`.
fn state_key(name: &str) -> Vec<u8> {
    format!("state:{name}").into_bytes()
}

/// A durable engine: see the module's documentation.
pub struct DiskStorage {
    values: Keyspace,
    sessions: Keyspace,
    meta: Keyspace,
    limits: Limits,
    slot_of: fn(&str) -> u16,
    locks: Vec<Arc<RwLock<()>>>,
    /// `None` once dropping.
    queue: Option<Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
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
        if options.limits.max_key_len > MAX_KEY_LEN {
            return Err(OpenError::KeyLimit { asked: options.limits.max_key_len });
        }
        let engine = |reason: String| OpenError::Engine { dir: dir.to_owned(), reason };
        let fjall = |err: fjall::Error| engine(err.to_string());
        check_keyspace_folders(dir).map_err(engine)?;
        let db = Database::builder(dir).manual_journal_persist(true).open().map_err(fjall)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(fjall)?;
        let slots: String = SLOT_PROBES.map(|probe| (options.slot_of)(probe).to_string()).join(",");
        match (meta.get("format").map_err(fjall)?, meta.get("slots").map_err(fjall)?) {
            (Some(found), _) if &*found != FORMAT.as_bytes() => {
                let found = String::from_utf8_lossy(&found).into_owned();
                return Err(OpenError::Format { dir: dir.to_owned(), found });
            }
            (Some(_), Some(written)) if &*written != slots.as_bytes() => {
                return Err(OpenError::Slots { dir: dir.to_owned() });
            }
            (Some(_), Some(_)) => {}
            (None, _) | (Some(_), None) => {
                meta.insert("format", FORMAT).map_err(fjall)?;
                meta.insert("slots", slots.as_str()).map_err(fjall)?;
                db.persist(PersistMode::SyncAll).map_err(fjall)?;
            }
        }
        let values = db.keyspace("values", KeyspaceCreateOptions::default).map_err(fjall)?;
        let sessions = db.keyspace("sessions", KeyspaceCreateOptions::default).map_err(fjall)?;
        let (queue, requests) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let committer = Committer {
            db,
            values: values.clone(),
            sessions: sessions.clone(),
            meta: meta.clone(),
            durability: options.durability,
            shared: Arc::clone(&shared),
        };
        let committer = std::thread::Builder::new()
            .name("kv-disk-commit".to_owned())
            .spawn(move || committer.run(requests))
            .map_err(|err| engine(err.to_string()))?;
        Ok(DiskStorage {
            values,
            sessions,
            meta,
            limits: options.limits,
            slot_of: options.slot_of,
            locks: (0..STRIPES).map(|_| Arc::new(RwLock::new(()))).collect(),
            queue: Some(queue),
            committer: Some(committer),
            shared,
        })
    }

    fn stored_key(&self, key: &str) -> Vec<u8> {
        let mut stored = Vec::with_capacity(2 + key.len());
        stored.extend_from_slice(&(self.slot_of)(key).to_be_bytes());
        stored.extend_from_slice(key.as_bytes());
        stored
    }

    fn lock_of(&self, key: &str) -> &Arc<RwLock<()>> {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        &self.locks[(hash % STRIPES as u64) as usize]
    }

    fn read(&self, key: &str) -> Result<Option<String>> {
        let stored_key = self.stored_key(key);
        self.shared.check_readable(&stored_key, key)?;
        let stored = self.values.get(stored_key).map_err(|err| storage_error("cannot read", err))?;
        stored.map(|bytes| decode_value(key, &bytes)).transpose()
    }

    /// Commits `changes` as one batch, as the durability says, holding `locks` until it is
    /// written; returns once it is done.
    async fn commit(&self, changes: Vec<Change>, locks: Vec<OwnedRwLockWriteGuard<()>>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let too_long = |change: &&Change| change.space == Space::Values && change.key.len() > MAX_KEY_LEN + 2;
        if let Some(change) = changes.iter().find(too_long) {
            return Err(Error::Storage(format!(
                "a key of {} bytes: the durable engine stores keys up to {MAX_KEY_LEN} bytes",
                change.key.len() - 2
            )));
        }
        let (answer, answered) = oneshot::channel();
        let queue = self.queue.as_ref().ok_or_else(|| Error::Storage("the engine is closing".to_owned()))?;
        queue
            .send(Request { changes, locks, answer })
            .map_err(|_| Error::Storage("the engine's committer has stopped".to_owned()))?;
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        answered
            .await
            .unwrap_or_else(|_| Err(Error::Storage("the engine's committer has stopped".to_owned())))
    }

    /// The changes that keep `record`'s answer `output` (with the client's floor), and forget
    /// the client's answers it names.
    fn record_changes(record: Recording, output: &Output) -> Vec<Change> {
        let Recording { id, fingerprint, tag, forget } = record;
        let answer = records::encode_answer(fingerprint, tag, id.first_unanswered, output);
        let mut changes = vec![Change::record(records::answer_key(id.client, id.seq), Some(answer))];
        changes
            .extend(forget.into_iter().map(|seq| Change::record(records::answer_key(id.client, seq), None)));
        changes
    }

    /// Refuses a key-to-slot function other than the one the engine orders its keys by.
    fn check_slot_of(&self, slot_of: fn(&str) -> u16) -> Result<()> {
        if SLOT_PROBES.iter().all(|probe| slot_of(probe) == (self.slot_of)(probe)) {
            Ok(())
        } else {
            Err(Error::Storage(
                "slots were asked for by another key-to-slot function than the engine's".to_owned(),
            ))
        }
    }

    /// The stored pairs of `slot`, after the stored key `after` if given, in order.
    fn slot_range(&self, slot: u16, after: Option<Vec<u8>>) -> fjall::Iter {
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(slot.to_be_bytes().to_vec()),
        };
        let end = match slot.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.values.range((start, end))
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

/// fjall names its keyspaces' folders by number and panics on a folder it cannot parse (and the
/// panic cannot be caught: its destructors panic again while unwinding): such a folder is an
/// error here, before fjall reads the directory.
fn check_keyspace_folders(dir: &Path) -> Result<(), String> {
    let folder = dir.join("keyspaces");
    let Ok(entries) = std::fs::read_dir(&folder) else { return Ok(()) };
    for entry in entries {
        let entry = entry.map_err(|err| format!("cannot read {}: {err}", folder.display()))?;
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        let name = entry.file_name();
        let numbered = name.to_str().is_some_and(|name| name.parse::<u64>().is_ok());
        if is_dir && !numbered {
            return Err(format!("{} is not one of the engine's keyspaces", entry.path().display()));
        }
    }
    Ok(())
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
        self.apply_recorded(mutation, None).await
    }

    async fn apply_recorded(&self, mutation: Mutation, record: Option<Recording>) -> Result<Output> {
        let Mutation { key, op } = mutation;
        self.limits.check_key(&key)?;
        let locked = Arc::clone(self.lock_of(&key)).write_owned().await;
        self.shared.check_writable()?;
        let old = self.read(&key)?;
        let mut value = old.clone();
        let output = op.apply(&mut value, &self.limits)?;
        let mut changes = Vec::new();
        if value != old {
            changes.push(Change::value(self.stored_key(&key), value));
        }
        if let Some(record) = record {
            changes.extend(Self::record_changes(record, &output));
        }
        self.commit(changes, vec![locked]).await?;
        Ok(output)
    }

    async fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut gather = records::Gather::default();
        for guard in self.sessions.iter() {
            let (key, value) =
                guard.into_inner().map_err(|err| storage_error("cannot read a record", err))?;
            gather.take(&key, &value)?;
        }
        Ok(gather.records())
    }

    async fn keep_sessions(&self, records: Vec<SessionRecord>) -> Result<()> {
        let changes = records
            .into_iter()
            .flat_map(|record| {
                let (client, floor) = (record.client, record.floor);
                record.answers.into_iter().map(move |answer| {
                    let value = records::encode_answer(answer.fingerprint, answer.tag, floor, &answer.output);
                    Change::record(records::answer_key(client, answer.seq), Some(value))
                })
            })
            .collect();
        self.commit(changes, Vec::new()).await
    }

    async fn forget_sessions(&self, clients: Vec<(u64, u64)>) -> Result<()> {
        let mut changes = Vec::new();
        for (client, through) in clients {
            let upto = records::answer_key(client, 0)..=records::answer_key(client, through);
            for guard in self.sessions.range(upto) {
                let key = guard.key().map_err(|err| storage_error("cannot read a record", err))?;
                changes.push(Change::record(key.to_vec(), None));
            }
        }
        self.commit(changes, Vec::new()).await
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

    async fn export_slots(
        &self,
        slot_of: for<'k> fn(&'k str) -> u16,
        slots: &[u16],
        from: Option<ExportCursor>,
        max_bytes: usize,
    ) -> Result<(Vec<(String, String)>, Option<ExportCursor>)> {
        self.check_slot_of(slot_of)?;
        let first = from.as_ref().map_or(0, |cursor| slots.partition_point(|&s| s < cursor.slot));
        let mut after = from.and_then(|cursor| Some((cursor.slot, self.stored_key(&cursor.after?))));
        let (mut entries, mut bytes) = (Vec::new(), 0);
        for (i, &slot) in slots.iter().enumerate().skip(first) {
            let start = after.take().and_then(|(at, key)| (at == slot).then_some(key));
            let mut pairs = self.slot_range(slot, start).peekable();
            while let Some(guard) = pairs.next() {
                let (stored, value) = guard.into_inner().map_err(|err| storage_error("cannot read", err))?;
                let key = decode_key(&stored)?;
                let value = decode_value(&key, &value)?;
                bytes += stored.len() + value.len();
                entries.push((key, value));
                if bytes >= max_bytes {
                    let next = if pairs.peek().is_some() {
                        Some(ExportCursor { slot, after: entries.last().map(|(key, _)| key.clone()) })
                    } else {
                        // This slot is read whole: the next batch starts at the next one.
                        slots.get(i + 1).map(|&slot| ExportCursor { slot, after: None })
                    };
                    return Ok((entries, next));
                }
            }
        }
        Ok((entries, None))
    }

    async fn remove_slots(&self, slot_of: for<'k> fn(&'k str) -> u16, slots: &[u16]) -> Result<usize> {
        self.check_slot_of(slot_of)?;
        let mut removed = 0;
        for &slot in slots {
            // In batches, so that a slot never has to fit in memory; each reads on from the last.
            let mut last = None;
            loop {
                let mut changes = Vec::new();
                for guard in self.slot_range(slot, last.take()).take(4096) {
                    let stored = guard.key().map_err(|err| storage_error("cannot read", err))?;
                    changes.push(Change::value(stored.to_vec(), None));
                }
                let Some(end) = changes.last() else { break };
                last = Some(end.key.clone());
                removed += changes.len();
                self.commit(changes, Vec::new()).await?;
            }
        }
        Ok(removed)
    }

    async fn import(&self, entries: Vec<(String, String)>) -> Result<()> {
        let changes = entries
            .into_iter()
            .map(|(key, value)| Change::value(self.stored_key(&key), Some(value)))
            .collect();
        self.commit(changes, Vec::new()).await
    }

    async fn remove_where(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<usize> {
        let changes: Vec<Change> = self
            .scan(select)?
            .into_iter()
            .map(|(key, _)| Change::value(self.stored_key(&key), None))
            .collect();
        let removed = changes.len();
        self.commit(changes, Vec::new()).await?;
        Ok(removed)
    }

    async fn key_count(&self) -> Result<usize> {
        // It reads every key: off the runtime's workers.
        let values = self.values.clone();
        tokio::task::spawn_blocking(move || values.len())
            .await
            .map_err(|err| storage_error("cannot count the keys", err))?
            .map_err(|err| storage_error("cannot count the keys", err))
    }

    async fn state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let stored =
            self.meta.get(state_key(name)).map_err(|err| storage_error("cannot read a record", err))?;
        Ok(stored.map(|bytes| bytes.to_vec()))
    }

    async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        self.shared.check_writable()?;
        self.commit(vec![Change::meta(state_key(name), value)], Vec::new()).await
    }

    fn stats(&self) -> EngineStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EngineStats {
            durable: true,
            batches: read(&self.shared.batches),
            writes: read(&self.shared.writes),
            syncs: read(&self.shared.syncs),
        }
    }
}

mod committer;
mod records;
#[cfg(test)]
mod tests;
