//! The storage engine interface.
//!
//! An engine keeps the values, and a durable one also the exactly-once records of the writes it
//! applied ([`crate::session`]), each written atomically with its write: after a restart, a
//! write is either there with its record (a retry is answered from it) or missing with it (a
//! retry applies it afresh), never one without the other.

use async_trait::async_trait;

use crate::session::RequestId;
use crate::{Limits, Mutation, Output, Result, SessionRecord};

/// Where the next [`Storage::export_slots`] batch starts: in `slot`, after the key `after` (from
/// the slot's first key if `None`). Every slot before `slot` has been read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    /// The slot the next batch starts in.
    pub slot: u16,
    /// The key of `slot` it starts after.
    pub after: Option<String>,
}

/// The exactly-once record a write leaves ([`Storage::apply_recorded`]): its answer is kept
/// under `id`, and the client's answers numbered in `forget` are forgotten with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The write's id.
    pub id: RequestId,
    /// What it does ([`crate::Mutation::fingerprint`]).
    pub fingerprint: u64,
    /// The partition of its key.
    pub tag: u16,
    /// The client's answers to forget ([`crate::session::Ticket::forgotten`]: below its new
    /// floor, which the client has).
    pub forget: Vec<u64>,
}

/// What an engine reports about its writes since it opened (all zero for an engine that keeps
/// nothing on disk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Whether it keeps the values on disk.
    pub durable: bool,
    /// Batches written (a durable engine writes concurrent writes together).
    pub batches: u64,
    /// Writes committed: one per write, with its exactly-once record (an import of moved data,
    /// a part of a slot removal, or a forgetting of expired records counts once).
    pub writes: u64,
    /// Syncs to disk (`fsync`) made.
    pub syncs: u64,
}

/// A key-value storage engine.
///
/// Implementations apply each [`Mutation`] atomically with respect to every other operation on
/// the same key, and must not serialise operations on different keys behind one lock. The
/// meaning of every operation is [`crate::op::Op::apply`]'s; an engine only keeps the values.
///
/// The provided methods (`put`, `append`, ...) are shorthands over [`Storage::apply`].
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The limits this engine enforces.
    fn limits(&self) -> &Limits;

    /// The value of `key`, or `None` if the key is missing.
    async fn get(&self, key: &str) -> Result<Option<String>>;

    /// Applies one mutation atomically. On error nothing changed.
    async fn apply(&self, mutation: Mutation) -> Result<Output>;

    /// Applies one mutation atomically, as [`Storage::apply`], and keeps its exactly-once record
    /// with it, in the same atomic write, if the engine keeps anything across a restart (the
    /// default keeps nothing: the caller's [`crate::Sessions`] remember the answer).
    async fn apply_recorded(&self, mutation: Mutation, record: Option<Recording>) -> Result<Output> {
        let _ = record;
        self.apply(mutation).await
    }

    /// The exactly-once records kept across a restart (none by default), per client in client
    /// order, for [`crate::Sessions::import`].
    async fn sessions(&self) -> Result<Vec<SessionRecord>> {
        Ok(Vec::new())
    }

    /// Keeps `records` across a restart as they are (none by default): the exactly-once records
    /// of writes applied elsewhere, which came with their values (a slot handed over, or the copy
    /// of a slot this server now serves as its primary).
    async fn keep_sessions(&self, records: Vec<SessionRecord>) -> Result<()> {
        let _ = records;
        Ok(())
    }

    /// Forgets the kept records of each client of `clients` up to and including the write number
    /// given with it (their sessions expired: [`crate::Sessions::take_expired`]).
    async fn forget_sessions(&self, clients: Vec<(u64, u64)>) -> Result<()> {
        let _ = clients;
        Ok(())
    }

    /// Every key `select` picks, with its value, in key order. Each pair is a value the key held;
    /// the pairs are not one atomic snapshot, so callers export keys no one is writing (a slot that has
    /// stopped being served, when moving data between servers).
    async fn export(
        &self,
        select: &(dyn for<'k> Fn(&'k str) -> bool + Sync),
    ) -> Result<Vec<(String, String)>>;

    /// Up to about `max_bytes` (an engine may end a batch sooner, at a slot's end) of the pairs of
    /// the keys whose
    /// slot (by `slot_of`) is one of `slots` (sorted, distinct), in slot order and each slot's
    /// keys in key order, starting at `from` (where the previous batch said to go on; `None`: at
    /// the first slot); with where the next batch starts, or `None` once every pair was read. A
    /// batch that ends with a slot's last key says so: the next starts at the next slot. For
    /// slots no one writes (as [`Storage::export`]).
    ///
    /// The default reads through [`Storage::export`], all in one batch: for an engine that keeps
    /// its data in memory anyway. A durable engine reads one batch at a time from its disk, so a
    /// slot never has to fit in memory.
    async fn export_slots(
        &self,
        slot_of: for<'k> fn(&'k str) -> u16,
        slots: &[u16],
        from: Option<ExportCursor>,
        max_bytes: usize,
    ) -> Result<(Vec<(String, String)>, Option<ExportCursor>)> {
        let _ = max_bytes;
        let picked = |key: &str| slots.binary_search(&slot_of(key)).is_ok();
        let mut entries = self.export(&picked).await?;
        entries.sort_by(|(a, _), (b, _)| (slot_of(a), a).cmp(&(slot_of(b), b)));
        if let Some(ExportCursor { slot, after }) = from {
            entries.retain(|(k, _)| match &after {
                Some(after) => (slot_of(k), k.as_str()) > (slot, after.as_str()),
                None => slot_of(k) >= slot,
            });
        }
        Ok((entries, None))
    }

    /// Removes every key whose slot (by `slot_of`) is one of `slots` (sorted, distinct); returns
    /// how many there were. The default is [`Storage::remove_where`].
    async fn remove_slots(&self, slot_of: for<'k> fn(&'k str) -> u16, slots: &[u16]) -> Result<usize> {
        self.remove_where(&|key: &str| slots.binary_search(&slot_of(key)).is_ok()).await
    }

    /// Sets every key of `entries` to its value, as they came from another server's
    /// [`Storage::export`] (so the size limits, checked when the values were written, are not
    /// checked again).
    async fn import(&self, entries: Vec<(String, String)>) -> Result<()>;

    /// Removes every key `select` picks; returns how many there were.
    async fn remove_where(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<usize>;

    /// How many keys are held.
    async fn key_count(&self) -> Result<usize>;

    /// What the engine has written since it opened.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }

    /// The small record kept under `name` beside the data ([`Storage::set_state`]), if any: what
    /// a server must know about its own data after a restart (whose member it is, where its
    /// copies stood). The default keeps none.
    async fn state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let _ = name;
        Ok(None)
    }

    /// Keeps `value` under `name` (`None` removes it), made durable before this returns whatever
    /// the engine's durability policy: such records are written rarely, and a server relies on
    /// them after a crash. Writes made before this call are as durable once it returns. The
    /// default keeps nothing.
    async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        let _ = (name, value);
        Ok(())
    }

    /// Sets `key` to `value`.
    async fn put(&self, key: String, value: String) -> Result<()> {
        self.apply(Mutation::put(key, value)).await.map(drop)
    }

    /// Appends `value` to the right end of `key`'s value, creating the key.
    async fn append(&self, key: String, value: String) -> Result<()> {
        self.apply(Mutation::append(key, value)).await.map(drop)
    }

    /// Removes and returns the first character of `key`'s value.
    async fn lpop(&self, key: String) -> Result<Option<String>> {
        self.apply(Mutation::lpop(key)).await.map(Output::into_popped)
    }

    /// Removes and returns the last character of `key`'s value.
    async fn rpop(&self, key: String) -> Result<Option<String>> {
        self.apply(Mutation::rpop(key)).await.map(Output::into_popped)
    }

    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: String) -> Result<bool> {
        self.apply(Mutation::delete(key)).await.map(|out| out.deleted())
    }
}
